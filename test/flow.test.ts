/**
 * Flow control under load, on real sockets on 127.0.0.1. When one side stops
 * reading, the relay must hold back the other side's sender instead of
 * dropping messages or buffering them all. Once the reader resumes, every
 * message must arrive exactly once, in order and intact.
 *
 * Messages are numbered: a 4-byte big-endian sequence number followed by a
 * pattern derived from it, so a receiver can check each message as it
 * arrives without keeping the payloads.
 */

import { afterEach, expect, test } from "bun:test";
import type { ServerWebSocket, Subprocess } from "bun";
import { readFileSync } from "node:fs";
import { type LogRecord, type TestUpstream, recordingLogger, startBunUpstream, startRelay, waitFor } from "./helpers/peers.ts";
import { type Frame, Opcode, rawConnect } from "./helpers/raw.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * Per-test timeout, passed to each test. Bun 1.4.4 applies its 5 s default
 * despite `timeout = 30000` in bunfig.toml (measured).
 */
const TEST_TIMEOUT_MS = 40_000;
/** How long a stalled reader stays stalled in the stall tests. */
const STALL_MS = 2_000;
/** Maximum wait for one transfer. A healthy run needs a few seconds. */
const TRANSFER_TIMEOUT_MS = 20_000;
/** A Bun client sender waits while more than this is queued in its socket. */
const CLIENT_SEND_QUEUE_BYTES = 1 * MiB;

// ---------------------------------------------------------------------------
// Numbered messages

/** Period of the payload pattern. It is prime, so a chunk shifted by a power of two does not match. */
const PATTERN_PERIOD = 251;
const MAX_MESSAGE_BYTES = 256 * KiB;
/** Byte i is i % 251. Message `seq` copies its payload from offset seq % 251 + 4. */
const patternSource = Buffer.from(
  Uint8Array.from({ length: MAX_MESSAGE_BYTES + PATTERN_PERIOD }, (_, i) => i % PATTERN_PERIOD),
);

/** Returns bytes 4.. of message `seq`: byte i is (seq + i) % 251. */
function expectedPayload(seq: number, size: number): Buffer {
  const start = (seq % PATTERN_PERIOD) + 4;
  return patternSource.subarray(start, start + size - 4);
}

/** Builds message `seq` of `size` bytes. */
function numberedMessage(seq: number, size: number): Buffer {
  const message = Buffer.allocUnsafe(size);
  message.writeUInt32BE(seq, 0);
  expectedPayload(seq, size).copy(message, 4);
  return message;
}

/** Checks numbered messages as they arrive and keeps only their sequence numbers. */
class NumberedReceiver {
  readonly seqs: number[] = [];
  /** Descriptions of the first few damaged messages. */
  readonly damaged: string[] = [];

  constructor(private readonly size: number) {}

  get count(): number {
    return this.seqs.length;
  }

  accept(data: string | Buffer): void {
    if (typeof data === "string" || data.length < 4) {
      this.seqs.push(-1);
      this.noteDamage(`message #${this.count - 1} is not a numbered binary message`);
      return;
    }
    const seq = data.readUInt32BE(0);
    this.seqs.push(seq);
    const intact = data.length === this.size && data.subarray(4).equals(expectedPayload(seq, this.size));
    if (!intact) this.noteDamage(`seq ${seq}: ${data.length} bytes, payload does not match its pattern`);
  }

  /** Records a message that could not be checked, e.g. a fragmented frame. */
  reject(description: string): void {
    this.seqs.push(-1);
    this.noteDamage(description);
  }

  private noteDamage(description: string): void {
    if (this.damaged.length < 5) this.damaged.push(description);
  }
}

/** Lists the first positions where `seqs` differs from 0, 1, 2, ... */
function outOfPlace(seqs: number[]): string[] {
  const found: string[] = [];
  for (let i = 0; i < seqs.length && found.length < 5; i++) {
    if (seqs[i] !== i) found.push(`#${i} carried seq ${seqs[i]}`);
  }
  return found;
}

function range(count: number): number[] {
  return Array.from({ length: count }, (_, i) => i);
}

/** Returns the relay's "message_dropped" error records: the sign that Bun's send() returned 0. */
function dropRecords(records: LogRecord[]): LogRecord[] {
  return records.filter((record) => record.fields.kind === "message_dropped");
}

// ---------------------------------------------------------------------------
// Peers

interface OriginOptions {
  /** Numbered messages the origin streams to the first client, starting at its open. */
  sendCount?: number;
  sendSize?: number;
  /** Close with 1000 once every streamed message has left the origin's queue. */
  closeWhenSent?: boolean;
  /** Size of the numbered messages the origin expects from the client. */
  receiveSize?: number;
  /** Pause the origin's reader once it has received this many numbered messages (0: at open). */
  pauseAfter?: number;
}

/**
 * A Bun upstream that streams numbered messages and respects its own
 * backpressure. After send() returns -1, it waits for drain before sending more.
 */
class Origin implements AsyncDisposable {
  readonly upstream: TestUpstream;
  readonly receiver: NumberedReceiver;
  /** Text messages received, in order. */
  readonly texts: string[] = [];
  /** Numbered messages handed to send(). */
  sent = 0;
  /** Times send() returned -1 (queued under backpressure). */
  backpressured = 0;
  /** Times send() returned 0 for a non-empty message (dropped). */
  dropped = 0;
  socket: ServerWebSocket<unknown> | undefined;
  /** True while the origin's reader is paused by `pauseAfter`. */
  paused = false;
  private wakeOnDrain: (() => void) | undefined;

  constructor(private readonly options: OriginOptions = {}) {
    this.receiver = new NumberedReceiver(options.receiveSize ?? 0);
    this.upstream = startBunUpstream({
      open: (ws) => {
        this.socket = ws as ServerWebSocket<unknown>;
        if (options.pauseAfter === 0) this.pause();
        void this.stream(this.socket);
      },
      drain: () => {
        this.wakeOnDrain?.();
        this.wakeOnDrain = undefined;
      },
      message: (_ws, message) => {
        if (typeof message === "string") {
          this.texts.push(message);
          return;
        }
        this.receiver.accept(message);
        if (this.receiver.count === options.pauseAfter) this.pause();
      },
    });
  }

  get url(): string {
    return this.upstream.url;
  }

  /** Bytes queued in the origin's own socket, not yet taken by the kernel. */
  get buffered(): number {
    return this.socket?.getBufferedAmount() ?? 0;
  }

  pause(): void {
    this.paused = true;
    this.socket?.pause();
  }

  resume(): void {
    this.paused = false;
    this.socket?.resume();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.upstream.close();
  }

  private async stream(ws: ServerWebSocket<unknown>): Promise<void> {
    const count = this.options.sendCount ?? 0;
    const size = this.options.sendSize ?? 0;
    const deadline = performance.now() + TRANSFER_TIMEOUT_MS;
    const open = (): boolean => ws.readyState === WebSocket.OPEN && performance.now() < deadline;
    for (let seq = 0; seq < count && open(); seq++) {
      const status = ws.send(numberedMessage(seq, size));
      this.sent++;
      if (status === 0) this.dropped++;
      if (status !== -1) continue;
      this.backpressured++;
      // Drain may fire while more than a message is still queued, so the
      // queue is checked again after each drain (or every 50 ms).
      while (ws.getBufferedAmount() > size && open()) await this.drainOrTimeout(50);
    }
    if (!this.options.closeWhenSent) return;
    while (ws.getBufferedAmount() > 0 && open()) await this.drainOrTimeout(50);
    if (ws.readyState === WebSocket.OPEN) ws.close(1000, "all sent");
  }

  private drainOrTimeout(ms: number): Promise<void> {
    return Promise.race([new Promise<void>((resolve) => (this.wakeOnDrain = resolve)), Bun.sleep(ms)]);
  }
}

/** A Bun client that checks numbered messages as they arrive and can stream them itself. */
class NumberedClient implements AsyncDisposable {
  readonly socket: WebSocket;
  readonly receiver: NumberedReceiver;
  readonly opened: Promise<void>;
  /** Resolves with the close code. */
  readonly closed: Promise<number>;
  closeCode: number | undefined;
  /** Numbered messages handed to send(). */
  sent = 0;
  /** Largest bufferedAmount seen after a send, in bytes. */
  peakBuffered = 0;
  /** True while the reader is paused. */
  paused = false;

  constructor(url: string, options: { receiveSize?: number; pauseAfter?: number } = {}) {
    this.receiver = new NumberedReceiver(options.receiveSize ?? 0);
    const socket = new WebSocket(url, { perMessageDeflate: false } as Bun.WebSocketOptions);
    socket.binaryType = "nodebuffer";
    this.socket = socket;
    this.opened = new Promise((resolve, reject) => {
      socket.onopen = () => resolve();
      socket.onerror = (event) => reject(new Error(`client socket error: ${(event as ErrorEvent).message}`));
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => {
      socket.onclose = (event) => {
        this.closeCode = event.code;
        resolve(event.code);
      };
    });
    socket.onmessage = (event) => {
      this.receiver.accept(event.data as string | Buffer);
      if (this.receiver.count === options.pauseAfter) this.pause();
    };
  }

  get isClosed(): boolean {
    return this.closeCode !== undefined;
  }

  pause(): void {
    this.paused = true;
    this.socket.pause();
  }

  resume(): void {
    this.paused = false;
    this.socket.resume();
  }

  send(data: string | Buffer): void {
    this.socket.send(data);
  }

  /**
   * Sends `count` numbered messages of `size` bytes, waiting while more than
   * 1 MiB is queued in the socket (Bun's client has no drain event).
   */
  async stream(count: number, size: number): Promise<void> {
    const deadline = performance.now() + TRANSFER_TIMEOUT_MS;
    const open = (): boolean => this.socket.readyState === WebSocket.OPEN && performance.now() < deadline;
    for (let seq = 0; seq < count && open(); seq++) {
      while (this.socket.bufferedAmount > CLIENT_SEND_QUEUE_BYTES && open()) await Bun.sleep(2);
      this.socket.send(numberedMessage(seq, size));
      this.sent++;
      this.peakBuffered = Math.max(this.peakBuffered, this.socket.bufferedAmount);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.closeCode === undefined) this.socket.terminate();
    await Promise.race([this.closed, Bun.sleep(1000)]);
  }
}

// ---------------------------------------------------------------------------
// The relay as a subprocess, so that its RSS is its own

interface RelayProcess {
  pid: number;
  url: string;
  /** Standard error lines so far (JSON log lines). */
  logLines: string[];
}

const REPO_ROOT = `${import.meta.dir}/..`;
const relayProcesses = new Set<Subprocess>();

afterEach(async () => {
  for (const child of relayProcesses) {
    if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, "SIGKILL");
    await child.exited;
  }
  relayProcesses.clear();
});

async function collectLines(stream: ReadableStream<Uint8Array>, lines: string[]): Promise<void> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of stream) {
    pending += decoder.decode(chunk, { stream: true });
    let newline = pending.indexOf("\n");
    while (newline >= 0) {
      lines.push(pending.slice(0, newline));
      pending = pending.slice(newline + 1);
      newline = pending.indexOf("\n");
    }
  }
}

/** Returns the port from the "relay listening" JSON line, or undefined. */
function listeningPort(lines: string[]): number | undefined {
  for (const line of lines) {
    try {
      const record = JSON.parse(line) as { msg?: string; listen?: string };
      if (record.msg === "relay listening" && record.listen !== undefined) return Number(record.listen.split(":").pop());
    } catch {
      // Bun itself may print lines that are not JSON to standard error.
    }
  }
  return undefined;
}

/** Starts `src/main.ts` on 127.0.0.1 port 0 with a 256 KiB high-water mark; afterEach kills it by PID. */
async function spawnRelay(upstreamUrl: string): Promise<RelayProcess> {
  const child = Bun.spawn(
    [process.execPath, "src/main.ts", "--listen", "127.0.0.1:0", "--upstream", upstreamUrl, "--high-water", "256KiB", "--log-level", "info"],
    { cwd: REPO_ROOT, stdin: "ignore", stdout: "ignore", stderr: "pipe" },
  );
  relayProcesses.add(child);
  const logLines: string[] = [];
  void collectLines(child.stderr, logLines);
  await waitFor(() => listeningPort(logLines) !== undefined || child.exitCode !== null, 10_000);
  const port = listeningPort(logLines);
  if (port === undefined) throw new Error(`relay subprocess did not report its port; stderr: ${logLines.join("\n")}`);
  return { pid: child.pid, url: `ws://127.0.0.1:${port}`, logLines };
}

/** Returns the "message_dropped" error lines among the subprocess's JSON log lines. */
function dropLines(lines: string[]): string[] {
  return lines.filter((line) => line.includes('"kind":"message_dropped"'));
}

/** Returns the resident set size of process `pid`, in bytes, from /proc/PID/status. */
function readRss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
  if (kib === undefined) throw new Error(`no VmRSS line in /proc/${pid}/status`);
  return Number(kib) * KiB;
}

/** Samples the RSS of `pid` every 20 ms for `ms` and returns the largest value, in bytes. */
async function peakRssOver(pid: number, ms: number): Promise<number> {
  let peak = readRss(pid);
  const end = performance.now() + ms;
  while (performance.now() < end) {
    await Bun.sleep(20);
    peak = Math.max(peak, readRss(pid));
  }
  return peak;
}

function inMiB(bytes: number): string {
  return (bytes / MiB).toFixed(1);
}

// ---------------------------------------------------------------------------
// A stalled client, 200 x 256 KiB

const BIG_COUNT = 200;
const BIG_SIZE = 256 * KiB;

test("Bun client paused 2 s -> 200 x 256 KiB arrive once, intact", async () => {
  const logger = recordingLogger();
  await using origin = new Origin({ sendCount: BIG_COUNT, sendSize: BIG_SIZE, closeWhenSent: true });
  await using relay = await startRelay({ upstream: origin.url, logger });
  await using client = new NumberedClient(relay.url, { receiveSize: BIG_SIZE });
  client.pause();
  await client.opened;

  await Bun.sleep(STALL_MS);
  const receivedDuringStall = client.receiver.count;
  client.resume();
  await Promise.race([client.closed, Bun.sleep(TRANSFER_TIMEOUT_MS)]);

  // The stall was real: the paused client did not read everything.
  expect(receivedDuringStall).toBeLessThan(BIG_COUNT);
  expect(client.receiver.seqs).toEqual(range(BIG_COUNT));
  expect(client.receiver.damaged).toEqual([]);
  expect(client.closeCode).toBe(1000);
  expect(origin.dropped).toBe(0);
  expect(dropRecords(logger.records)).toEqual([]);
}, TEST_TIMEOUT_MS);

test("raw client stops reading 2 s -> 200 x 256 KiB arrive once, intact", async () => {
  const logger = recordingLogger();
  await using origin = new Origin({ sendCount: BIG_COUNT, sendSize: BIG_SIZE, closeWhenSent: true });
  await using relay = await startRelay({ upstream: origin.url, logger });
  const { connection, socket } = await rawConnect(relay.port);
  try {
    expect(connection).not.toBeNull();
    if (connection === null) return;
    socket.pause();

    await Bun.sleep(STALL_MS);
    const framesDuringStall = connection.frames.length;
    socket.resume();
    const close = await connection.waitForClose(TRANSFER_TIMEOUT_MS);

    const receiver = new NumberedReceiver(BIG_SIZE);
    const dataFrames = connection.frames.filter((frame: Frame) => frame.opcode < Opcode.CLOSE);
    for (const frame of dataFrames) {
      if (frame.fin && frame.opcode === Opcode.BINARY) receiver.accept(frame.payload);
      else receiver.reject(`frame with opcode ${frame.opcode}, fin ${frame.fin}`);
    }
    expect(framesDuringStall).toBeLessThan(BIG_COUNT);
    expect(receiver.seqs).toEqual(range(BIG_COUNT));
    expect(receiver.damaged).toEqual([]);
    expect(close?.code).toBe(1000);
    expect(dropRecords(logger.records)).toEqual([]);
  } finally {
    socket.destroy();
  }
}, TEST_TIMEOUT_MS);

// ---------------------------------------------------------------------------
// Both directions at once

/** Maximum time the client keeps sending chatter. */
const CHATTER_LIMIT_MS = 30_000;

test("10,000 x 16 KiB down, chatter up -> both complete in order", async () => {
  const count = 10_000;
  const size = 16 * KiB;
  const logger = recordingLogger();
  await using origin = new Origin({ sendCount: count, sendSize: size });
  await using relay = await startRelay({ upstream: origin.url, highWaterBytes: 64 * KiB, logger });
  await using client = new NumberedClient(relay.url, { receiveSize: size });
  await client.opened;

  // Send one short text message every 10 ms until the stream has arrived, for at most 30 s.
  const chatter: string[] = [];
  const deadline = performance.now() + CHATTER_LIMIT_MS;
  while (client.receiver.count < count && !client.isClosed && performance.now() < deadline) {
    const text = `up-${chatter.length}`;
    client.send(text);
    chatter.push(text);
    await Bun.sleep(10);
  }
  await waitFor(() => origin.texts.length >= chatter.length, 5_000);

  expect(chatter.length).toBeGreaterThan(0);
  expect(client.receiver.count).toBe(count);
  expect(outOfPlace(client.receiver.seqs)).toEqual([]);
  expect(client.receiver.damaged).toEqual([]);
  expect(origin.texts).toEqual(chatter);
  expect(relay.stats().upstreamPauses).toBeGreaterThan(0);
  expect(dropRecords(logger.records)).toEqual([]);
}, TEST_TIMEOUT_MS);

// ---------------------------------------------------------------------------
// Backpressure reaches the sender, and the pause counters move

const STALL_COUNT = 400;
const STALL_SIZE = 64 * KiB;

test("client stalls, 64 KiB high water -> origin held back", async () => {
  const logger = recordingLogger();
  await using origin = new Origin({ sendCount: STALL_COUNT, sendSize: STALL_SIZE });
  await using relay = await startRelay({ upstream: origin.url, highWaterBytes: 64 * KiB, logger });
  await using client = new NumberedClient(relay.url, { receiveSize: STALL_SIZE });
  client.pause();
  await client.opened;

  await Bun.sleep(STALL_MS);
  const sentDuringStall = origin.sent;
  const originQueueAtStallEnd = origin.buffered;
  client.resume();
  await waitFor(() => client.receiver.count >= STALL_COUNT || client.isClosed, TRANSFER_TIMEOUT_MS);

  expect(origin.backpressured).toBeGreaterThan(0);
  // At the end of the stall the origin was still blocked, with data in its
  // own queue and messages left to send.
  expect(originQueueAtStallEnd).toBeGreaterThan(0);
  expect(sentDuringStall).toBeLessThan(STALL_COUNT);
  expect(relay.stats().upstreamPauses).toBeGreaterThan(0);
  expect(client.receiver.count).toBe(STALL_COUNT);
  expect(outOfPlace(client.receiver.seqs)).toEqual([]);
  expect(client.receiver.damaged).toEqual([]);
  expect(dropRecords(logger.records)).toEqual([]);
}, TEST_TIMEOUT_MS);

test("upstream stalls, 64 KiB high water -> client held back", async () => {
  const logger = recordingLogger();
  await using origin = new Origin({ receiveSize: STALL_SIZE, pauseAfter: 0 });
  await using relay = await startRelay({ upstream: origin.url, highWaterBytes: 64 * KiB, logger });
  await using client = new NumberedClient(relay.url);
  await client.opened;

  const streaming = client.stream(STALL_COUNT, STALL_SIZE);
  await Bun.sleep(STALL_MS);
  const sentDuringStall = client.sent;
  origin.resume();
  await waitFor(() => origin.receiver.count >= STALL_COUNT || client.isClosed, TRANSFER_TIMEOUT_MS);
  await streaming;

  expect(sentDuringStall).toBeLessThan(STALL_COUNT);
  expect(client.peakBuffered).toBeGreaterThan(CLIENT_SEND_QUEUE_BYTES);
  expect(relay.stats().clientPauses).toBeGreaterThan(0);
  expect(origin.receiver.count).toBe(STALL_COUNT);
  expect(outOfPlace(origin.receiver.seqs)).toEqual([]);
  expect(origin.receiver.damaged).toEqual([]);
  expect(dropRecords(logger.records)).toEqual([]);
}, TEST_TIMEOUT_MS);

// ---------------------------------------------------------------------------
// Relay memory while 100 MiB meets a stalled reader

const HUNDRED_MIB_COUNT = 1_600;
const HUNDRED_MIB_SIZE = 64 * KiB;
/** Maximum RSS growth of the relay process during the stall, well below the 100 MiB streamed. */
const RSS_GROWTH_LIMIT = 48 * MiB;
/** Messages delivered before the stall, so the baseline includes a running pair. */
const WARMUP_COUNT = 16;

test("client stalls during 100 MiB -> relay RSS bounded, all arrive", async () => {
  await using origin = new Origin({ sendCount: HUNDRED_MIB_COUNT, sendSize: HUNDRED_MIB_SIZE });
  const relay = await spawnRelay(origin.url);
  await using client = new NumberedClient(relay.url, { receiveSize: HUNDRED_MIB_SIZE, pauseAfter: WARMUP_COUNT });
  await waitFor(() => client.paused || client.isClosed, TRANSFER_TIMEOUT_MS);

  const baseline = readRss(relay.pid);
  const stallPeak = await peakRssOver(relay.pid, STALL_MS);
  const sentDuringStall = origin.sent;
  client.resume();
  let drainPeak = baseline;
  await waitFor(() => {
    drainPeak = Math.max(drainPeak, readRss(relay.pid));
    return client.receiver.count >= HUNDRED_MIB_COUNT || client.isClosed;
  }, TRANSFER_TIMEOUT_MS);
  console.log(
    `relay RSS, client stalled: baseline ${inMiB(baseline)} MiB, stall peak ${inMiB(stallPeak)} MiB ` +
      `(+${inMiB(stallPeak - baseline)} MiB), peak while draining ${inMiB(drainPeak)} MiB; ` +
      `origin had sent ${sentDuringStall} of ${HUNDRED_MIB_COUNT} messages at the end of the stall`,
  );

  // The stall was real: the origin could not get the whole stream out.
  expect(sentDuringStall).toBeLessThan(HUNDRED_MIB_COUNT);
  expect(stallPeak - baseline).toBeLessThan(RSS_GROWTH_LIMIT);
  expect(client.receiver.count).toBe(HUNDRED_MIB_COUNT);
  expect(outOfPlace(client.receiver.seqs)).toEqual([]);
  expect(client.receiver.damaged).toEqual([]);
  expect(dropLines(relay.logLines)).toEqual([]);
}, TEST_TIMEOUT_MS);

test("upstream stalls during 100 MiB -> relay RSS bounded, all arrive", async () => {
  await using origin = new Origin({ receiveSize: HUNDRED_MIB_SIZE, pauseAfter: WARMUP_COUNT });
  const relay = await spawnRelay(origin.url);
  await using client = new NumberedClient(relay.url);
  await client.opened;
  const streaming = client.stream(HUNDRED_MIB_COUNT, HUNDRED_MIB_SIZE);
  await waitFor(() => origin.paused || client.isClosed, TRANSFER_TIMEOUT_MS);

  const baseline = readRss(relay.pid);
  const stallPeak = await peakRssOver(relay.pid, STALL_MS);
  const sentDuringStall = client.sent;
  origin.resume();
  let drainPeak = baseline;
  await waitFor(() => {
    drainPeak = Math.max(drainPeak, readRss(relay.pid));
    return origin.receiver.count >= HUNDRED_MIB_COUNT || client.isClosed;
  }, TRANSFER_TIMEOUT_MS);
  await streaming;
  console.log(
    `relay RSS, upstream stalled: baseline ${inMiB(baseline)} MiB, stall peak ${inMiB(stallPeak)} MiB ` +
      `(+${inMiB(stallPeak - baseline)} MiB), peak while draining ${inMiB(drainPeak)} MiB; ` +
      `client had sent ${sentDuringStall} of ${HUNDRED_MIB_COUNT} messages at the end of the stall`,
  );

  // The stall was real: the client could not get the whole stream out.
  expect(sentDuringStall).toBeLessThan(HUNDRED_MIB_COUNT);
  expect(stallPeak - baseline).toBeLessThan(RSS_GROWTH_LIMIT);
  expect(origin.receiver.count).toBe(HUNDRED_MIB_COUNT);
  expect(outOfPlace(origin.receiver.seqs)).toEqual([]);
  expect(origin.receiver.damaged).toEqual([]);
  expect(dropLines(relay.logLines)).toEqual([]);
}, TEST_TIMEOUT_MS);
