/**
 * `--workers N`: N relay processes share the listening port through
 * SO_REUSEPORT, so the kernel spreads connections across them and every core
 * is used. The parent process only supervises: it restarts a worker that
 * exits unexpectedly, forwards SIGTERM and SIGINT, and serves the admin
 * endpoint with each worker's metrics under a `worker` label.
 */

import type { Subprocess } from "bun";
import { startAdmin } from "./admin.ts";
import type { Logger } from "./log.ts";
import { renderRelayMetrics } from "./metrics.ts";
import type { RelayStats } from "./relay.ts";

/** Set in a worker's environment to its index; its presence makes a process a worker. */
export const WORKER_INDEX_ENV = "WSBRIDGE_WORKER_INDEX";

/** Exit status of a process that could not start (bad option, port in use). */
const EXIT_USAGE = 2;
/** First restart delay after a worker exits; it doubles per quick exit, up to the maximum. */
const RESTART_DELAY_MS = 250;
const MAX_RESTART_DELAY_MS = 10_000;
/** A worker that ran this long before exiting is restarted after the first delay again. */
const STABLE_RUN_MS = 30_000;
/** How long a `/metrics` scrape waits for a worker's stats. */
const STATS_TIMEOUT_MS = 1_000;
/** Time workers get after the grace period to finish closing before SIGKILL. */
const EXIT_MARGIN_MS = 5_000;

/** Messages between the parent and a worker over Bun's IPC channel. */
export type WorkerMessage =
  | { type: "ready" }
  | { type: "stats-request"; id: number }
  | { type: "stats"; id: number; stats: RelayStats };

interface Worker {
  index: number;
  proc: Subprocess;
  startedAt: number;
  ready: boolean;
  restartDelayMs: number;
}

export interface SupervisorOptions {
  count: number;
  /** The command that starts one worker (this program and its flags). */
  command: string[];
  admin: { hostname: string; port: number } | null;
  /** The workers' --shutdown-grace, which bounds how long the parent waits for them. */
  shutdownGraceMs: number;
  logger: Logger;
}

/** Returns the command line that starts this same program again with `flags`. */
export function selfCommand(flags: string[]): string[] {
  // A binary from `bun build --compile` runs its embedded entry point itself.
  const compiled = Bun.main.startsWith("/$bunfs/");
  return compiled ? [process.execPath, ...flags] : [process.execPath, Bun.main, ...flags];
}

/** Starts the workers and supervises them until SIGTERM or SIGINT. */
export function runSupervisor(options: SupervisorOptions): void {
  const { logger } = options;
  const workers = new Map<number, Worker>();
  const pendingStats = new Map<number, (stats: RelayStats | null) => void>();
  let nextRequestId = 1;
  let stopping = false;
  /** The supervisor's exit status once every worker has exited. */
  let exitCode = 0;

  function spawn(index: number, restartDelayMs: number): void {
    const proc = Bun.spawn(options.command, {
      env: { ...process.env, [WORKER_INDEX_ENV]: String(index) },
      stdio: ["ignore", "inherit", "inherit"],
      ipc: (message: WorkerMessage) => onMessage(index, message),
      onExit: (_proc, code, signal) => onExit(index, code, signal),
    });
    workers.set(index, { index, proc, startedAt: performance.now(), ready: false, restartDelayMs });
  }

  function onMessage(index: number, message: WorkerMessage): void {
    const worker = workers.get(index);
    if (message.type === "ready" && worker !== undefined) {
      worker.ready = true;
      logger.info("worker ready", { worker: index, pid: worker.proc.pid });
    } else if (message.type === "stats") {
      pendingStats.get(message.id)?.(message.stats);
    }
  }

  function onExit(index: number, code: number | null, signal: number | string | null): void {
    const worker = workers.get(index);
    workers.delete(index);
    if (stopping || worker === undefined) {
      if (stopping && workers.size === 0) process.exit(exitCode);
      return;
    }
    if (!worker.ready && code === EXIT_USAGE) {
      // A worker that exits 2 before it is ready cannot start at all (a
      // port in use, say); restarting it would only repeat the failure.
      logger.error("worker_start_failed", "worker could not start; stopping the other workers", {
        worker: index,
        exit_code: code,
      });
      stopping = true;
      for (const other of workers.values()) other.proc.kill("SIGTERM");
      if (workers.size === 0) process.exit(EXIT_USAGE);
      setTimeout(() => process.exit(EXIT_USAGE), EXIT_MARGIN_MS).unref();
      exitCode = EXIT_USAGE;
      return;
    }
    const ranMs = performance.now() - worker.startedAt;
    const delayMs = ranMs >= STABLE_RUN_MS ? RESTART_DELAY_MS : worker.restartDelayMs;
    logger.error("worker_exited", "worker exited unexpectedly; restarting it", {
      worker: index,
      pid: worker.proc.pid,
      exit_code: code,
      signal,
      restart_in_ms: delayMs,
    });
    setTimeout(() => {
      if (!stopping) spawn(index, Math.min(delayMs * 2, MAX_RESTART_DELAY_MS));
    }, delayMs);
  }

  function requestStats(worker: Worker): Promise<RelayStats | null> {
    const id = nextRequestId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => settle(null), STATS_TIMEOUT_MS);
      function settle(stats: RelayStats | null): void {
        clearTimeout(timer);
        pendingStats.delete(id);
        resolve(stats);
      }
      pendingStats.set(id, settle);
      try {
        worker.proc.send({ type: "stats-request", id } satisfies WorkerMessage);
      } catch {
        settle(null);
      }
    });
  }

  async function renderMetrics(): Promise<string> {
    const live = [...workers.values()];
    const answers = await Promise.all(live.map(requestStats));
    const entries = live.flatMap((worker, i) => {
      const stats = answers[i];
      return stats ? [{ labels: { worker: String(worker.index) }, stats }] : [];
    });
    const header = [
      "# HELP wsbridge_workers Worker processes running.",
      "# TYPE wsbridge_workers gauge",
      `wsbridge_workers ${workers.size}`,
      "",
    ].join("\n");
    return header + renderRelayMetrics(entries);
  }

  function stop(signal: NodeJS.Signals): void {
    if (stopping) {
      logger.warn("second signal: killing workers without waiting", { signal });
      for (const worker of workers.values()) worker.proc.kill("SIGKILL");
      process.exit(1);
    }
    stopping = true;
    logger.info("signal received: stopping workers", { signal, workers: workers.size });
    for (const worker of workers.values()) worker.proc.kill("SIGTERM");
    if (workers.size === 0) process.exit(0);
    setTimeout(() => {
      for (const worker of workers.values()) worker.proc.kill("SIGKILL");
      process.exit(0);
    }, options.shutdownGraceMs + EXIT_MARGIN_MS).unref();
  }

  // The admin listener starts first, so that a bad --admin address stops
  // the supervisor before any worker exists.
  if (options.admin !== null) {
    try {
      startAdmin(options.admin.hostname, options.admin.port, {
        isReady: () => !stopping && [...workers.values()].some((w) => w.ready),
        renderMetrics,
      }, logger);
    } catch (error) {
      process.stderr.write(`wsbridge: ${(error as Error).message}\n`);
      process.exit(EXIT_USAGE);
    }
  }
  for (let index = 0; index < options.count; index++) spawn(index, RESTART_DELAY_MS);
  logger.info("supervisor started", { workers: options.count, pid: process.pid });
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
