#!/usr/bin/env bun
/**
 * wsbridge command: parses options, starts the relay (or, with --workers,
 * a supervisor of relay processes), and stops gracefully on SIGTERM or
 * SIGINT. Exit codes: 0 after a clean stop, 1 on a second signal, 2 for a
 * bad option or a failed start.
 */

import packageJson from "../package.json" with { type: "json" };
import { startAdmin } from "./admin.ts";
import { type CommandLine, FLAG_NAMES, helpText, parseCommandLine } from "./cli.ts";
import { ConfigError, DEFAULT_SHUTDOWN_GRACE_MS, resolveOptions } from "./config.ts";
import { type Logger, createLogger } from "./log.ts";
import { renderRelayMetrics } from "./metrics.ts";
import { type Relay, createRelay } from "./relay.ts";
import { WORKER_INDEX_ENV, type WorkerMessage, runSupervisor, selfCommand } from "./workers.ts";

const EXIT_USAGE = 2;

function fail(message: string): never {
  process.stderr.write(`wsbridge: ${message}\n`);
  process.exit(EXIT_USAGE);
}

function parse(): CommandLine {
  try {
    const line = parseCommandLine(process.argv.slice(2), process.env);
    if (line.action !== "run") return line;
    resolveOptions(line.relay, FLAG_NAMES);
    if (line.workers > 1 && line.relay.port === 0) {
      fail("--workers: several workers cannot share port 0; give --listen a fixed port");
    }
    return line;
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    fail(error.message);
  }
}

async function startRelay(line: CommandLine, logger: Logger, worker: string | undefined): Promise<Relay> {
  const relay = createRelay({ ...line.relay, logger, reusePort: worker !== undefined });
  try {
    await relay.start();
  } catch (error) {
    const where = `${line.relay.hostname ?? "127.0.0.1"}:${line.relay.port ?? 8080}`;
    logger.error("listen_failed", `cannot listen on ${where}: ${(error as Error).message}`, {
      hint: "choose another --listen address or stop the process that holds the port",
    });
    process.exit(EXIT_USAGE);
  }
  return relay;
}

/** Replies to the supervisor's stats requests when this process is a worker. */
function serveWorkerRequests(relay: Relay): void {
  process.on("message", (message: WorkerMessage) => {
    if (message.type === "stats-request") {
      process.send?.({ type: "stats", id: message.id, stats: relay.stats() } satisfies WorkerMessage);
    }
  });
  process.send?.({ type: "ready" } satisfies WorkerMessage);
}

/**
 * Stops the relay on the first signal and exits at once on a second. A
 * worker listens to SIGTERM only: Ctrl-C sends SIGINT to the whole process
 * group, and the supervisor forwards it as SIGTERM, which would otherwise
 * count as a second signal.
 */
function stopOnSignals(relay: Relay, logger: Logger, isWorker: boolean): void {
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
  process.on("SIGINT", isWorker ? () => {} : onSignal);
}

async function main(): Promise<void> {
  const line = parse();
  if (line.action === "help") {
    process.stdout.write(helpText());
    return;
  }
  if (line.action === "version") {
    process.stdout.write(`wsbridge ${packageJson.version} (bun ${Bun.version})\n`);
    return;
  }

  const worker = process.env[WORKER_INDEX_ENV];
  const base = createLogger({ level: line.logLevel, format: line.logFormat });
  const logger = worker === undefined ? base : withWorker(base, worker);
  if (worker === undefined && line.workers > 1) {
    runSupervisor({
      count: line.workers,
      command: selfCommand(process.argv.slice(2)),
      admin: line.admin,
      shutdownGraceMs: line.relay.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS,
      logger,
    });
    return;
  }

  const relay = await startRelay(line, logger, worker);
  if (worker !== undefined) {
    serveWorkerRequests(relay);
  } else if (line.admin !== null) {
    try {
      startAdmin(line.admin.hostname, line.admin.port, {
        isReady: () => relay.isReady(),
        renderMetrics: () => renderRelayMetrics([{ labels: {}, stats: relay.stats() }]),
      }, logger);
    } catch (error) {
      await relay.stop({ graceMs: 0 });
      fail((error as Error).message);
    }
  }
  stopOnSignals(relay, logger, worker !== undefined);
}

/** Adds the worker index to every log line of a worker process. */
function withWorker(logger: Logger, worker: string): Logger {
  return {
    debug: (msg, fields) => logger.debug(msg, { worker, ...fields }),
    info: (msg, fields) => logger.info(msg, { worker, ...fields }),
    warn: (msg, fields) => logger.warn(msg, { worker, ...fields }),
    error: (kind, msg, fields) => logger.error(kind, msg, { worker, ...fields }),
  };
}

await main();
