/**
 * Shapes and helpers shared by the load generator's modes: the JSON a mode
 * reads and prints, error collection, timeouts and the measurement window.
 */

import { coreBusyTicks, cpuDelta, cpuSnapshot } from "../lib/proc.ts";

/** Options every mode takes; the mode's own options sit beside them. */
export interface LoadConfig {
  mode: string;
  /** Port on 127.0.0.1 of the server under test (direct upstream, relay, floor or peer). */
  port: number;
  /** Processes to read CPU and memory of, by name; the generator adds itself as `load`. */
  watch: Record<string, number>;
  [option: string]: unknown;
}

/** Output of a mode; fields that the mode does not measure are absent. */
export interface LoadResult {
  mode: string;
  /** Verification failures; a non-empty list fails the benchmark. */
  errors: string[];
  window?: WindowResult;
  [field: string]: unknown;
}

/** CPU use over a stretch of time. */
export interface Usage {
  seconds: number;
  /** CPU each watched process used, in ns. */
  cpuNs: Record<string, number>;
  /**
   * Share of each core that was busy, in percent, counting every process.
   * Much more than the watched processes' share means other work ran on the
   * machine meanwhile.
   */
  coreBusyPercent: number[];
}

/** Counts and CPU use over the measurement window. */
export interface WindowResult extends Usage {
  messages: number;
  /** Payload bytes of those messages. */
  bytes: number;
}

/** Errors reported by a run, capped so a broken run prints a readable list. */
export class ErrorLog {
  static readonly MAX_KEPT = 20;
  readonly messages: string[] = [];
  count = 0;

  add(message: string): void {
    this.count++;
    if (this.messages.length < ErrorLog.MAX_KEPT) this.messages.push(message);
  }

  /** Returns the kept messages, plus a line counting the rest. */
  list(): string[] {
    const hidden = this.count - this.messages.length;
    return hidden > 0 ? [...this.messages, `${hidden} more errors`] : [...this.messages];
  }
}

/** Rejects when `promise` has not settled after `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits until `done()` returns true or `timeoutMs` passes; returns the last result. */
export async function waitFor(done: () => boolean, timeoutMs: number, pollMs = 10): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!done()) {
    if (performance.now() > deadline) return false;
    await Bun.sleep(pollMs);
  }
  return true;
}

/** Linux's USER_HZ, the unit of /proc/stat. */
const CLOCK_TICKS_PER_S = 100;

/**
 * Starts measuring the CPU use of the watched processes (and of this one, as
 * `load`) and of each core; the returned function ends the measurement.
 */
export function startUsage(watch: Record<string, number>): () => Usage {
  const pids = { ...watch, load: process.pid };
  const startedAt = performance.now();
  const cpu = cpuSnapshot(pids);
  const cores = coreBusyTicks();
  return () => {
    const cpuNs = cpuDelta(cpu, cpuSnapshot(pids));
    const endCores = coreBusyTicks();
    const seconds = (performance.now() - startedAt) / 1000;
    const coreBusyPercent = endCores.map((ticks, core) => ((ticks - (cores[core] ?? 0)) / CLOCK_TICKS_PER_S / seconds) * 100);
    return { seconds, cpuNs, coreBusyPercent };
  };
}

/** Running totals that a window samples at its start and end. */
export interface Totals {
  messages: number;
  bytes: number;
}

/**
 * Lets load run for `warmupMs`, then measures for `measureMs`: messages,
 * bytes and the CPU of every watched process between the two instants.
 */
export async function measureWindow(
  totals: Totals,
  watch: Record<string, number>,
  warmupMs: number,
  measureMs: number,
): Promise<WindowResult> {
  await Bun.sleep(warmupMs);
  const start = { messages: totals.messages, bytes: totals.bytes };
  const stopUsage = startUsage(watch);
  await Bun.sleep(measureMs);
  const usage = stopUsage();
  return { ...usage, messages: totals.messages - start.messages, bytes: totals.bytes - start.bytes };
}

/** Reads a numeric option, with a default. */
export function numberOption(config: LoadConfig, name: string, fallback: number): number {
  const value = config[name];
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value)) throw new Error(`option ${name} must be a number, got ${String(value)}`);
  return value;
}
