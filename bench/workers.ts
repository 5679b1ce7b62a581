/**
 * Compares small-message echo throughput through wsbridge with 1 and with 2
 * worker processes (`--workers`), with nothing pinned: the workers, the
 * upstream and the load generator share every core, as they would on a
 * small machine. Runs `bun bench/workers.ts`; prints one line per run and a
 * summary, alternating 1 and 2 workers so drift on a shared machine hits
 * both alike.
 */

import { join } from "node:path";
import type { Subprocess } from "bun";
import type { LoadResult } from "./load/common.ts";

const REPO_ROOT = new URL("../", import.meta.url).pathname;
const BUN = process.execPath;
const ROUNDS = 3;
const LOAD = { mode: "echo", size: 64, connections: 50, inFlight: 16, warmupMs: 1000, measureMs: 3000 };
const START_TIMEOUT_MS = 10_000;

const children = new Set<Subprocess>();

function spawn(argv: string[]): Subprocess<"ignore", "pipe", "pipe"> {
  const proc = Bun.spawn(argv, { cwd: REPO_ROOT, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  children.add(proc);
  return proc;
}

async function firstLine(stream: ReadableStream<Uint8Array>, match: (line: string) => boolean): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  const deadline = performance.now() + START_TIMEOUT_MS;
  for await (const chunk of stream) {
    text += decoder.decode(chunk, { stream: true });
    const line = text.split("\n").find(match);
    if (line !== undefined) return line;
    if (performance.now() > deadline) break;
  }
  throw new Error(`no matching line within ${START_TIMEOUT_MS} ms; got:\n${text}`);
}

async function freePort(): Promise<number> {
  const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
  const port = probe.port as number;
  await probe.stop(true);
  return port;
}

async function measure(workers: number, upstreamUrl: string): Promise<number> {
  const port = await freePort();
  const relay = spawn([
    BUN, join(REPO_ROOT, "src/main.ts"), "--listen", `127.0.0.1:${port}`, "--upstream", upstreamUrl,
    "--workers", String(workers), "--log-level", "warn",
  ]);
  try {
    // With --log-level warn the relay is silent; wait until it accepts.
    const deadline = performance.now() + START_TIMEOUT_MS;
    while (performance.now() < deadline) {
      const ok = await fetch(`http://127.0.0.1:${port}/`).then((r) => r.status === 426, () => false);
      if (ok) break;
      await Bun.sleep(50);
    }
    await Bun.sleep(workers * 300);
    const load = spawn([BUN, join(REPO_ROOT, "bench/load/main.ts"), JSON.stringify({ ...LOAD, port, watch: {} })]);
    const [out, code] = await Promise.all([new Response(load.stdout).text(), load.exited]);
    const result = JSON.parse(out) as LoadResult;
    if (code !== 0 || result.errors.length > 0 || result.window === undefined) {
      throw new Error(`load failed (exit ${code}): ${result.errors.join("; ")}`);
    }
    return result.window.messages / result.window.seconds;
  } finally {
    relay.kill("SIGTERM");
    await relay.exited;
  }
}

const upstream = spawn([BUN, join(REPO_ROOT, "bench/servers/upstream.ts")]);
try {
  const line = await firstLine(upstream.stdout, (l) => l.startsWith("{"));
  const upstreamUrl = `ws://127.0.0.1:${(JSON.parse(line) as { port: number }).port}`;
  const rates: Record<number, number[]> = { 1: [], 2: [] };
  for (let round = 0; round < ROUNDS; round++) {
    for (const workers of [1, 2]) {
      const rate = await measure(workers, upstreamUrl);
      rates[workers]?.push(rate);
      console.log(`round ${round + 1}, ${workers} worker(s): ${Math.round(rate).toLocaleString("en-US")} round trips/s`);
    }
  }
  const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;
  const one = median(rates[1] ?? []);
  const two = median(rates[2] ?? []);
  console.log(`median: 1 worker ${Math.round(one).toLocaleString("en-US")}/s, 2 workers ${Math.round(two).toLocaleString("en-US")}/s, ratio ${(two / one).toFixed(2)}`);
} finally {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
}
