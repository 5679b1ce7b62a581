/**
 * The load generator process, started as `bun bench/load/main.ts 'CONFIG'`
 * with CONFIG a JSON `LoadConfig`. It prints one JSON `LoadResult` line on
 * stdout and exits 0. On failure it prints the error on stderr and exits 1.
 */

import type { LoadConfig, LoadResult } from "./common.ts";
import { runEcho } from "./echo.ts";
import { runHandshake } from "./handshake.ts";
import { runIdle } from "./idle.ts";
import { runLatency } from "./latency.ts";
import { runSlowReader, runStream } from "./stream.ts";

const MODES: Record<string, (config: LoadConfig) => Promise<LoadResult>> = {
  echo: runEcho,
  stream: runStream,
  latency: runLatency,
  handshake: runHandshake,
  idle: runIdle,
  "slow-reader": runSlowReader,
};

const config = JSON.parse(process.argv[2] ?? "{}") as LoadConfig;
const run = MODES[config.mode];
if (run === undefined) {
  process.stderr.write(`load: unknown mode ${JSON.stringify(config.mode)}; expected one of ${Object.keys(MODES).join(", ")}\n`);
  process.exit(1);
}
try {
  const result = await run(config);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
} catch (error) {
  process.stderr.write(`load: ${config.mode} failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
}
