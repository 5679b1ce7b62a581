/**
 * Streams from the server's /stream path to one client. `runStream`
 * measures throughput; `runSlowReader` stops reading for a while, samples
 * the relay's memory meanwhile, then reads the whole stream and checks its
 * byte count.
 */

import { type ClientHandler, RawClient } from "../lib/client.ts";
import { Opcode } from "../lib/frames.ts";
import { rssKiB } from "../lib/proc.ts";
import { closeAll } from "./echo.ts";
import { ErrorLog, type LoadConfig, type LoadResult, measureWindow, numberOption, withTimeout } from "./common.ts";

const OPEN_TIMEOUT_MS = 10_000;
const RSS_SAMPLE_INTERVAL_MS = 100;
const NORMAL_CLOSURE = 1000;
const KIB = 1024;

/** Counts stream messages and checks each one's opcode, size and sequence number. */
class StreamCounter implements ClientHandler {
  readonly totals = { messages: 0, bytes: 0 };

  constructor(
    private readonly size: number,
    private readonly errors: ErrorLog,
  ) {}

  onData(_client: RawClient, opcode: number, length: number, seq: number): void {
    const expected = this.totals.messages >>> 0;
    if (opcode !== Opcode.BINARY || length !== this.size || seq !== expected) {
      this.errors.add(`stream message ${expected}: got opcode ${opcode}, ${length} bytes, sequence ${seq}`);
    }
    this.totals.messages++;
    this.totals.bytes += length;
  }
}

export async function runStream(config: LoadConfig): Promise<LoadResult> {
  const size = numberOption(config, "size", 4096);
  const warmupMs = numberOption(config, "warmupMs", 1000);
  const measureMs = numberOption(config, "measureMs", 3000);
  // The server's own time bound, with room for the close after the window.
  const seconds = Math.ceil((warmupMs + measureMs) / 1000) + 30;
  const errors = new ErrorLog();
  const counter = new StreamCounter(size, errors);
  const path = `/stream?size=${size}&seconds=${seconds}`;
  const client = await withTimeout(RawClient.open({ port: config.port, path }, counter), OPEN_TIMEOUT_MS, "opening the stream");
  try {
    const window = await measureWindow(counter.totals, config.watch, warmupMs, measureMs);
    await closeAll([client]);
    for (const message of client.errors) errors.add(message);
    return { mode: "stream", errors: errors.list(), window };
  } finally {
    client.terminate();
  }
}

/** Largest RSS seen while `during` runs, sampled every 100 ms. */
async function peakRss(pid: number, during: Promise<unknown>): Promise<number> {
  let peak = rssKiB(pid);
  let running = true;
  void during.finally(() => {
    running = false;
  });
  while (running) {
    await Promise.race([Bun.sleep(RSS_SAMPLE_INTERVAL_MS), during.catch(() => undefined)]);
    peak = Math.max(peak, rssKiB(pid));
  }
  return peak;
}

interface SlowReaderPlan {
  relayPid: number;
  pauseMs: number;
  /** Time (performance.now() value) by which the whole stream must be read. */
  deadline: number;
}

/** Keeps the client paused for `pauseMs`, then reads until the stream closes; samples the relay's RSS meanwhile. */
async function pauseThenRead(client: RawClient, counter: StreamCounter, plan: SlowReaderPlan, errors: ErrorLog) {
  client.pause();
  const pausedPeakKiB = await peakRss(plan.relayPid, Bun.sleep(plan.pauseMs));
  const bytesWhilePaused = counter.totals.bytes;

  client.resume();
  const readStart = performance.now();
  const reading = withTimeout(client.closed, Math.max(plan.deadline - readStart, 0), "reading the stream");
  const readingPeakKiB = await peakRss(plan.relayPid, reading.catch((error: Error) => errors.add(error.message)));
  const readSeconds = (performance.now() - readStart) / 1000;
  return { pausedPeakKiB, bytesWhilePaused, readingPeakKiB, readSeconds };
}

export async function runSlowReader(config: LoadConfig): Promise<LoadResult> {
  const size = numberOption(config, "size", 64 * KIB);
  const totalBytes = numberOption(config, "bytes", KIB ** 3);
  const limitMs = numberOption(config, "limitMs", 60_000);
  const relayPid = config.watch.server as number;
  const errors = new ErrorLog();
  const counter = new StreamCounter(size, errors);

  const baselineKiB = rssKiB(relayPid);
  const plan = { relayPid, pauseMs: numberOption(config, "pauseMs", 5000), deadline: performance.now() + limitMs };
  const path = `/stream?size=${size}&bytes=${totalBytes}&seconds=${Math.ceil(limitMs / 1000)}`;
  const client = await withTimeout(RawClient.open({ port: config.port, path }, counter), OPEN_TIMEOUT_MS, "opening the stream");
  try {
    const phases = await pauseThenRead(client, counter, plan, errors);
    checkStreamEnd(client, counter.totals.bytes, totalBytes, errors);
    return {
      mode: "slow-reader",
      errors: errors.list(),
      baselineKiB,
      ...phases,
      bytes: counter.totals.bytes,
      messages: counter.totals.messages,
    };
  } finally {
    client.terminate();
  }
}

function checkStreamEnd(client: RawClient, received: number, expected: number, errors: ErrorLog): void {
  for (const message of client.errors) errors.add(message);
  if (received !== expected) errors.add(`received ${received} bytes of ${expected}`);
  if (client.closeCode !== NORMAL_CLOSURE) errors.add(`stream ended with close code ${client.closeCode}, expected ${NORMAL_CLOSURE}`);
}
