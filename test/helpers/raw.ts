/**
 * Raw WebSocket peers over node:net for crafted frames (RFC 6455 section
 * 5.2): a client that performs the handshake by hand and an upstream server
 * that answers it by hand. Both expose the frames they receive.
 */

import { createHash, randomBytes } from "node:crypto";
import { type Server, type Socket, connect, createServer } from "node:net";

export const Opcode = {
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa,
} as const;

export interface Frame {
  fin: boolean;
  rsv: number;
  opcode: number;
  masked: boolean;
  payload: Buffer;
}

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** Encodes one frame; client frames must be masked (`mask: true`). */
export function encodeFrame(
  opcode: number,
  payload: Buffer | string = Buffer.alloc(0),
  options: { fin?: boolean; mask?: boolean; rsv?: number } = {},
): Buffer {
  const data = typeof payload === "string" ? Buffer.from(payload, "utf8") : payload;
  const fin = options.fin ?? true;
  const mask = options.mask ?? false;
  const head: number[] = [(fin ? 0x80 : 0) | ((options.rsv ?? 0) << 4) | opcode];
  const maskBit = mask ? 0x80 : 0;
  if (data.length < 126) {
    head.push(maskBit | data.length);
  } else if (data.length < 65536) {
    head.push(maskBit | 126, data.length >> 8, data.length & 0xff);
  } else {
    const length = Buffer.alloc(8);
    length.writeBigUInt64BE(BigInt(data.length));
    head.push(maskBit | 127, ...length);
  }
  if (!mask) return Buffer.concat([Buffer.from(head), data]);
  const key = randomBytes(4);
  const body = Buffer.alloc(data.length);
  for (let i = 0; i < data.length; i++) body[i] = (data[i] as number) ^ (key[i & 3] as number);
  return Buffer.concat([Buffer.from(head), key, body]);
}

/** Builds a close frame payload: 2-byte code and UTF-8 reason. */
export function closePayload(code: number, reason = ""): Buffer {
  const out = Buffer.alloc(2 + Buffer.byteLength(reason));
  out.writeUInt16BE(code, 0);
  out.write(reason, 2, "utf8");
  return out;
}

/** Reads a close frame payload; `code` is 1005 when it is empty. */
export function parseClose(payload: Buffer): { code: number; reason: string } {
  if (payload.length < 2) return { code: 1005, reason: "" };
  return { code: payload.readUInt16BE(0), reason: payload.subarray(2).toString("utf8") };
}

/** Incremental frame parser. */
export class FrameParser {
  private buffer: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    const frames: Frame[] = [];
    for (;;) {
      const frame = this.next();
      if (frame === null) return frames;
      frames.push(frame);
    }
  }

  private next(): Frame | null {
    const b = this.buffer;
    if (b.length < 2) return null;
    const b0 = b[0] as number;
    const b1 = b[1] as number;
    let length = b1 & 0x7f;
    let offset = 2;
    if (length === 126) {
      if (b.length < 4) return null;
      length = b.readUInt16BE(2);
      offset = 4;
    } else if (length === 127) {
      if (b.length < 10) return null;
      length = Number(b.readBigUInt64BE(2));
      offset = 10;
    }
    const masked = (b1 & 0x80) !== 0;
    const keyStart = offset;
    if (masked) offset += 4;
    if (b.length < offset + length) return null;
    let payload = Buffer.from(b.subarray(offset, offset + length));
    if (masked) {
      const key = b.subarray(keyStart, keyStart + 4);
      for (let i = 0; i < payload.length; i++) payload[i] = (payload[i] as number) ^ (key[i & 3] as number);
    }
    this.buffer = b.subarray(offset + length);
    return { fin: (b0 & 0x80) !== 0, rsv: (b0 >> 4) & 7, opcode: b0 & 0x0f, masked, payload };
  }
}

/** One side of a raw connection after the handshake. */
export class RawConnection {
  readonly frames: Frame[] = [];
  /** True once the TCP connection ended. */
  ended = false;
  readonly endedPromise: Promise<void>;
  private readonly parser = new FrameParser();
  private readonly masking: boolean;

  constructor(
    readonly socket: Socket,
    masking: boolean,
    leftover: Buffer,
  ) {
    this.masking = masking;
    let endResolve!: () => void;
    this.endedPromise = new Promise((resolve) => (endResolve = resolve));
    socket.on("data", (chunk: Buffer) => this.frames.push(...this.parser.push(chunk)));
    socket.on("close", () => {
      this.ended = true;
      endResolve();
    });
    socket.on("error", () => {});
    if (leftover.length > 0) this.frames.push(...this.parser.push(leftover));
    socket.resume();
  }

  /** Sends one frame, masked when this is the client side. */
  send(opcode: number, payload: Buffer | string = Buffer.alloc(0), options: { fin?: boolean; rsv?: number } = {}): void {
    this.socket.write(encodeFrame(opcode, payload, { ...options, mask: this.masking }));
  }

  /** Writes bytes as they are. */
  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Waits until a frame matching `match` has arrived, or the connection ended. */
  async waitForFrame(match: (frame: Frame) => boolean, timeoutMs = 5000): Promise<Frame | undefined> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const found = this.frames.find(match);
      if (found !== undefined || this.ended || performance.now() > deadline) return found;
      await Bun.sleep(5);
    }
  }

  /** Waits for the close frame and returns its code and reason. */
  async waitForClose(timeoutMs = 5000): Promise<{ code: number; reason: string } | undefined> {
    const frame = await this.waitForFrame((f) => f.opcode === Opcode.CLOSE, timeoutMs);
    return frame === undefined ? undefined : parseClose(frame.payload);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

function acceptKey(key: string): string {
  return createHash("sha1").update(key + GUID).digest("base64");
}

/** The raw HTTP response to a raw client's upgrade request. */
export interface RawHandshake {
  status: number;
  headers: Record<string, string>;
  /** Header lines as sent, for counting repeated fields. */
  rawHeaderLines: string[];
  body: string;
}

/**
 * Connects to `port`, sends `request` (an upgrade by default) and reads the
 * answer. `connection` is set when the answer was 101. `localAddress` picks
 * the source address, another loopback address such as 127.0.0.2 for a
 * second client IP.
 */
export async function rawConnect(
  port: number,
  options: { path?: string; headers?: Record<string, string>; request?: string; localAddress?: string } = {},
): Promise<{ handshake: RawHandshake; connection: RawConnection | null; socket: Socket }> {
  const socket = connect({ port, host: "127.0.0.1", localAddress: options.localAddress });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", () => resolve());
    socket.once("error", reject);
  });
  const key = randomBytes(16).toString("base64");
  const headers = {
    Host: `127.0.0.1:${port}`,
    Upgrade: "websocket",
    Connection: "Upgrade",
    "Sec-WebSocket-Key": key,
    "Sec-WebSocket-Version": "13",
    ...options.headers,
  };
  const request =
    options.request ??
    `GET ${options.path ?? "/"} HTTP/1.1\r\n${Object.entries(headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join("")}\r\n`;
  socket.write(request);
  const { head, rest } = await readHead(socket);
  const handshake = parseHead(head);
  if (handshake.status !== 101) {
    handshake.body = rest.toString("utf8") + (await readRest(socket));
    return { handshake, connection: null, socket };
  }
  return { handshake, connection: new RawConnection(socket, true, rest), socket };
}

function parseHead(head: string): RawHandshake {
  const lines = head.split("\r\n");
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(lines[0] ?? "")?.[1] ?? 0);
  const headers: Record<string, string> = {};
  const rawHeaderLines = lines.slice(1).filter((l) => l !== "");
  for (const line of rawHeaderLines) {
    const colon = line.indexOf(":");
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { status, headers, rawHeaderLines, body: "" };
}

function readHead(socket: Socket): Promise<{ head: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf("\r\n\r\n");
      if (end < 0) return;
      socket.off("data", onData);
      socket.off("close", onClose);
      socket.pause();
      resolve({ head: buffered.subarray(0, end).toString("latin1"), rest: buffered.subarray(end + 4) });
    };
    const onClose = (): void => reject(new Error(`connection closed before the HTTP head; got ${JSON.stringify(buffered.toString())}`));
    socket.on("data", onData);
    socket.once("close", onClose);
  });
}

function readRest(socket: Socket, timeoutMs = 1000): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    const done = (): void => {
      clearTimeout(timer);
      resolve(text);
    };
    const timer = setTimeout(done, timeoutMs);
    socket.on("data", (chunk: Buffer) => {
      text += chunk.toString("utf8");
    });
    socket.once("close", done);
    socket.resume();
  });
}

/** A hand-written upstream server; `onConnection` gets each connection after its 101. */
export interface RawUpstream extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  readonly connections: RawConnection[];
  /** Request heads received, as text. */
  readonly requests: string[];
  close(): void;
}

/**
 * Starts a raw upstream. `answer` may replace the 101 with any HTTP text
 * (for a 403, say); `protocol` and `extensions` are put in the 101 when
 * given; `delayMs` delays the response by that long.
 */
export async function startRawUpstream(
  onConnection: (connection: RawConnection, requestHead: string) => void = () => {},
  options: {
    answer?: (requestHead: string) => string | undefined;
    protocol?: string;
    extensions?: string;
    delayMs?: number;
  } = {},
): Promise<RawUpstream> {
  const connections: RawConnection[] = [];
  const requests: string[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    void readHead(socket).then(async ({ head, rest }) => {
      requests.push(head);
      if (options.delayMs !== undefined) await Bun.sleep(options.delayMs);
      const custom = options.answer?.(head);
      if (custom !== undefined) {
        socket.end(custom);
        return;
      }
      const key = /sec-websocket-key:\s*(\S+)/i.exec(head)?.[1] ?? "";
      const protocolLine = options.protocol !== undefined ? `Sec-WebSocket-Protocol: ${options.protocol}\r\n` : "";
      const extensionsLine = options.extensions !== undefined ? `Sec-WebSocket-Extensions: ${options.extensions}\r\n` : "";
      socket.write(
        `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey(key)}\r\n${protocolLine}${extensionsLine}\r\n`,
      );
      const connection = new RawConnection(socket, false, rest);
      socket.resume();
      connections.push(connection);
      onConnection(connection, head);
    }, () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const port = (server.address() as { port: number }).port;
  const close = (): void => {
    for (const socket of sockets) socket.destroy();
    server.close();
  };
  return {
    url: `ws://127.0.0.1:${port}`,
    port,
    connections,
    requests,
    close,
    [Symbol.asyncDispose]: async () => close(),
  };
}
