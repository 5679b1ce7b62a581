/**
 * A WebSocket client made by hand on `Bun.connect`: it sends the upgrade
 * request, checks the 101, replies to pings and closes, and hands each data
 * message to a handler as (opcode, length, sequence number) without copying
 * its payload. Writes that the kernel does not take at once are queued and
 * sent on `drain`, in order.
 */

import { createHash } from "node:crypto";
import type { Socket, SocketHandler } from "bun";
import { FrameReader, type FrameSink, MessageTemplate, Opcode, closePayload, encodeClientFrame } from "./frames.ts";

/** Any 16 bytes in base64 will do; the server only hashes it. */
const HANDSHAKE_KEY = "d3NicmlkZ2UgYmVuY2ggIQ==";
const WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const EXPECTED_ACCEPT = createHash("sha1").update(HANDSHAKE_KEY + WEBSOCKET_GUID).digest("base64");
const HEADER_END = "\r\n\r\n";
/** Largest HTTP response head the client accepts before it gives up on the handshake. */
const MAX_RESPONSE_HEAD_BYTES = 16 * 1024;
const INITIAL_BATCH_BYTES = 64 * 1024;
const NORMAL_CLOSURE = 1000;

/** Callbacks through which a connection reports to the code that drives it. */
export interface ClientHandler {
  /** One whole data message; `seq` is its first 4 payload bytes as uint32, or -1. */
  onData(client: RawClient, opcode: number, length: number, seq: number): void;
  /** Called after each chunk read from the socket, once its messages were handled. */
  onReadEnd?(client: RawClient): void;
}

const NO_HANDLER: ClientHandler = { onData() {} };

export interface ClientTarget {
  port: number;
  /** Request path with query, e.g. `/` or `/stream?size=4096`. */
  path: string;
}

type State = "connecting" | "handshake" | "open" | "closing" | "closed";

const socketHandlers: SocketHandler<RawClient> = {
  open: (socket) => socket.data.attach(socket),
  data: (socket, chunk) => socket.data.read(chunk),
  drain: (socket) => socket.data.writeQueued(),
  close: (socket, error) => socket.data.socketClosed(error),
  error: (socket, error) => socket.data.fail(error),
};

/** One client connection; create it with `RawClient.open`. */
export class RawClient implements FrameSink {
  handler: ClientHandler = NO_HANDLER;
  /** Close code from the server's close frame; 1005 when it had none, 0 before one arrived. */
  closeCode = 0;
  /** Protocol problems seen on this connection; the benchmark fails when any occur. */
  readonly errors: string[] = [];
  private state: State = "connecting";
  private socket: Socket<RawClient> | null = null;
  private head: Uint8Array = new Uint8Array(0);
  private readonly reader = new FrameReader(this);
  private readonly queue: Uint8Array[] = [];
  private queueOffset = 0;
  private batch = new Uint8Array(INITIAL_BATCH_BYTES);
  private batchLength = 0;
  private resolveOpen!: () => void;
  private rejectOpen!: (error: Error) => void;
  private resolveClosed!: () => void;
  /** Settles once the 101 arrived, or rejects when the handshake fails. */
  readonly opened = new Promise<void>((resolve, reject) => {
    this.resolveOpen = resolve;
    this.rejectOpen = reject;
  });
  /** Settles when the TCP connection is gone. */
  readonly closed = new Promise<void>((resolve) => {
    this.resolveClosed = resolve;
  });

  private constructor(private readonly target: ClientTarget) {}

  /** Connects to 127.0.0.1 and completes the upgrade. */
  static async open(target: ClientTarget, handler: ClientHandler = NO_HANDLER): Promise<RawClient> {
    const client = new RawClient(target);
    client.handler = handler;
    try {
      await Bun.connect({ hostname: "127.0.0.1", port: target.port, socket: socketHandlers, data: client });
    } catch (error) {
      client.fail(error as Error);
    }
    await client.opened;
    return client;
  }

  get isOpen(): boolean {
    return this.state === "open";
  }

  /** Bytes waiting in user space for the kernel to take them. */
  get queuedBytes(): number {
    let total = -this.queueOffset;
    for (const chunk of this.queue) total += chunk.length;
    return total;
  }

  attach(socket: Socket<RawClient>): void {
    this.socket = socket;
    this.state = "handshake";
    socket.setNoDelay(true);
    const request =
      `GET ${this.target.path} HTTP/1.1\r\nHost: 127.0.0.1:${this.target.port}\r\n` +
      `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${HANDSHAKE_KEY}\r\n` +
      `Sec-WebSocket-Version: 13\r\n\r\n`;
    this.write(new TextEncoder().encode(request));
  }

  read(chunk: Uint8Array): void {
    if (this.state === "handshake") {
      const rest = this.readResponseHead(chunk);
      if (rest === null || rest.length === 0) return;
      chunk = rest;
    }
    this.reader.push(chunk);
    this.handler.onReadEnd?.(this);
  }

  /** Appends one message from `template` to the batch that `flush` sends. */
  append(template: MessageTemplate, seq: number): void {
    const needed = this.batchLength + template.frame.length;
    if (needed > this.batch.length) this.growBatch(needed);
    this.batchLength = template.writeTo(this.batch, this.batchLength, seq);
  }

  /** Sends the batched messages. */
  flush(): void {
    if (this.batchLength === 0) return;
    this.write(this.batch, 0, this.batchLength);
    this.batchLength = 0;
  }

  /** Sends one message at once; same as `append` then `flush`. */
  send(template: MessageTemplate, seq: number): void {
    this.append(template, seq);
    this.flush();
  }

  pause(): void {
    this.socket?.pause();
  }

  resume(): void {
    this.socket?.resume();
  }

  /** Sends a close frame; `closed` settles once the server replied and the socket ended. */
  close(code = NORMAL_CLOSURE): Promise<void> {
    if (this.state === "open") {
      this.state = "closing";
      this.flush();
      this.write(encodeClientFrame(Opcode.CLOSE, closePayload(code)));
    } else if (this.state !== "closing") {
      this.socket?.end();
    }
    return this.closed;
  }

  /** Ends the TCP connection without a closing handshake. */
  terminate(): void {
    this.socket?.terminate();
  }

  writeQueued(): void {
    const socket = this.socket;
    while (socket !== null && this.queue.length > 0) {
      const head = this.queue[0] as Uint8Array;
      const left = head.length - this.queueOffset;
      const written = socket.write(head, this.queueOffset, left);
      if (written < left) {
        this.queueOffset += Math.max(written, 0);
        return;
      }
      this.queue.shift();
      this.queueOffset = 0;
    }
  }

  socketClosed(error?: Error): void {
    const wasHandshaking = this.state === "connecting" || this.state === "handshake";
    this.state = "closed";
    if (wasHandshaking) this.rejectOpen(error ?? new Error(`connection to port ${this.target.port} closed during the handshake`));
    this.resolveClosed();
  }

  fail(error: Error): void {
    this.errors.push(error.message);
    if (this.state === "connecting" || this.state === "handshake") this.rejectOpen(error);
    this.state = "closed";
    this.socket?.terminate();
    this.resolveClosed();
  }

  onData(opcode: number, length: number, seq: number): void {
    this.handler.onData(this, opcode, length, seq);
  }

  onControl(opcode: number, payload: Uint8Array): void {
    if (opcode === Opcode.PING) {
      this.write(encodeClientFrame(Opcode.PONG, payload));
    } else if (opcode === Opcode.CLOSE) {
      this.closeCode = payload.length >= 2 ? ((payload[0] as number) << 8) | (payload[1] as number) : 1005;
      if (this.state === "open") this.write(encodeClientFrame(Opcode.CLOSE, payload.subarray(0, 2)));
      this.state = "closing";
      this.socket?.end();
    }
  }

  onProtocolError(message: string): void {
    this.errors.push(message);
  }

  private write(bytes: Uint8Array, offset = 0, length = bytes.length - offset): void {
    const socket = this.socket;
    if (socket === null || this.state === "closed") return;
    if (this.queue.length > 0) {
      this.queue.push(bytes.slice(offset, offset + length));
      return;
    }
    const written = socket.write(bytes, offset, length);
    if (written >= 0 && written < length) this.queue.push(bytes.slice(offset + written, offset + length));
  }

  private growBatch(needed: number): void {
    const grown = new Uint8Array(Math.max(needed, this.batch.length * 2));
    grown.set(this.batch.subarray(0, this.batchLength));
    this.batch = grown;
  }

  /** Collects the HTTP response head; returns the bytes after it, or null while it is incomplete. */
  private readResponseHead(chunk: Uint8Array): Uint8Array | null {
    const joined = new Uint8Array(this.head.length + chunk.length);
    joined.set(this.head);
    joined.set(chunk, this.head.length);
    const text = Buffer.from(joined.buffer, joined.byteOffset, joined.length).toString("latin1");
    const end = text.indexOf(HEADER_END);
    if (end < 0) {
      this.head = joined;
      if (joined.length > MAX_RESPONSE_HEAD_BYTES) this.fail(new Error("HTTP response head too long"));
      return null;
    }
    this.head = new Uint8Array(0);
    const status = text.slice(0, text.indexOf("\r\n"));
    if (!status.startsWith("HTTP/1.1 101")) {
      this.fail(new Error(`upgrade to port ${this.target.port} rejected: ${status}`));
      return null;
    }
    if (!text.slice(0, end).toLowerCase().includes(`sec-websocket-accept: ${EXPECTED_ACCEPT.toLowerCase()}`)) {
      this.fail(new Error("101 response has a wrong or missing Sec-WebSocket-Accept"));
      return null;
    }
    this.state = "open";
    this.resolveOpen();
    return joined.subarray(end + HEADER_END.length);
  }
}
