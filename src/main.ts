#!/usr/bin/env bun
/**
 * wsbridge command: parses options, starts the relay, and stops it
 * gracefully on SIGTERM or SIGINT. Exit codes: 0 after a clean stop, 1 on
 * a second signal, 2 for a bad option or a failed start.
 */

import packageJson from "../package.json" with { type: "json" };
import { FLAG_NAMES, helpText, parseCommandLine } from "./cli.ts";
import { ConfigError, resolveOptions } from "./config.ts";
import { createLogger } from "./log.ts";
import { createRelay } from "./relay.ts";

const EXIT_USAGE = 2;

async function main(): Promise<void> {
  let line;
  try {
    line = parseCommandLine(process.argv.slice(2), process.env);
    resolveOptions(line.relay, FLAG_NAMES);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`wsbridge: ${error.message}\n`);
    process.exit(EXIT_USAGE);
  }
  if (line.action === "help") {
    process.stdout.write(helpText());
    return;
  }
  if (line.action === "version") {
    process.stdout.write(`wsbridge ${packageJson.version} (bun ${Bun.version})\n`);
    return;
  }

  const logger = createLogger({ level: line.logLevel, format: line.logFormat });
  const relay = createRelay({ ...line.relay, logger });
  try {
    await relay.start();
  } catch (error) {
    const where = `${line.relay.hostname ?? "127.0.0.1"}:${line.relay.port ?? 8080}`;
    logger.error("listen_failed", `cannot listen on ${where}: ${(error as Error).message}`, {
      hint: "choose another --listen address or stop the process that holds the port",
    });
    process.exit(EXIT_USAGE);
  }

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      logger.warn("second signal: exiting without waiting for pairs", { signal });
      process.exit(1);
    }
    logger.info("signal received: stopping", { signal });
    void relay.stop().then(() => process.exit(0));
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}

await main();
