/**
 * Real peers for tests: relays, Bun and `ws` upstreams, and clients whose
 * messages and close events can be awaited. Everything listens on 127.0.0.1
 * port 0 and is released by `await using` or `close()`.
 */

import type { Server, ServerWebSocket, WebSocketHandler } from "bun";
import { WebSocket as WsWebSocket, WebSocketServer } from "ws";
import { type Relay, type RelayOptions, createRelay, silentLogger } from "../../src/index.ts";
import type { LogFields, Logger } from "../../src/log.ts";

/** One received message, reduced to what fidelity tests compare. */
export interface Received {
  type: "text" | "binary";
  text?: string;
  bytes?: Uint8Array;
}

/** The close as a peer saw it. */
export interface Closed {
  code: number;
  reason: string;
  wasClean: boolean;
}

export interface LogRecord {
  level: string;
  msg: string;
  fields: LogFields;
}

/** Creates a logger that keeps every line for assertions. */
export function recordingLogger(): Logger & { records: LogRecord[] } {
  const records: LogRecord[] = [];
  const keep = (level: string) => (msg: string, fields: LogFields = {}) => records.push({ level, msg, fields });
  return {
    records,
    debug: keep("debug"),
    info: keep("info"),
    warn: keep("warn"),
    error: (kind: string, msg: string, fields: LogFields = {}) => records.push({ level: "error", msg, fields: { kind, ...fields } }),
  };
}

export type TestRelay = Relay & AsyncDisposable;

/** Starts a relay on 127.0.0.1 port 0 with a silent logger unless one is given. */
export async function startRelay(options: RelayOptions = {}): Promise<TestRelay> {
  const relay = createRelay({ hostname: "127.0.0.1", port: 0, logger: silentLogger, shutdownGraceMs: 0, ...options });
  await relay.start();
  return Object.assign(relay, {
    [Symbol.asyncDispose]: () => relay.stop({ graceMs: 0 }),
  });
}

export interface TestUpstream<T = unknown> extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  /** Sockets accepted so far, in order. */
  readonly sockets: ServerWebSocket<T>[];
  /** Requests that reached the upstream, in order. */
  readonly requests: Request[];
  server: Server<T>;
  close(): void;
}

/**
 * Starts a Bun WebSocket server. `handlers` are the usual `websocket`
 * handlers; `upgradeHeaders` picks the 101's extra headers (subprotocol).
 * With `tls` (PEM certificate and key) it serves wss://.
 */
export function startBunUpstream<T = Record<string, unknown>>(
  handlers: Partial<WebSocketHandler<T>> = {},
  options: {
    upgradeHeaders?: (req: Request) => Record<string, string>;
    fetch?: (req: Request) => Response | undefined;
    data?: () => T;
    tls?: { cert: string; key: string };
  } = {},
): TestUpstream<T> {
  const sockets: ServerWebSocket<T>[] = [];
  const requests: Request[] = [];
  const userOpen = handlers.open;
  const server = Bun.serve<T>({
    hostname: "127.0.0.1",
    port: 0,
    tls: options.tls,
    fetch(req, srv) {
      requests.push(req);
      const answer = options.fetch?.(req);
      if (answer !== undefined) return answer;
      const headers = options.upgradeHeaders?.(req) ?? { "Sec-WebSocket-Protocol": "" };
      const data = (options.data?.() ?? {}) as T;
      if ((srv as Server<unknown>).upgrade(req, { data, headers })) return undefined;
      return new Response("upgrade expected", { status: 426 });
    },
    websocket: {
      message() {},
      ...handlers,
      open(ws) {
        sockets.push(ws);
        userOpen?.(ws);
      },
      backpressureLimit: 0,
      idleTimeout: 0,
      sendPings: false,
      maxPayloadLength: 128 * 1024 * 1024,
    } as WebSocketHandler<T>,
  });
  const close = (): void => void server.stop(true);
  return {
    url: `${options.tls === undefined ? "ws" : "wss"}://127.0.0.1:${server.port}`,
    port: server.port as number,
    sockets,
    requests,
    server,
    close,
    [Symbol.asyncDispose]: async () => close(),
  };
}

/** Starts a Bun upstream that sends every message back. */
export function startBunEcho(): TestUpstream {
  return startBunUpstream({
    message(ws, message) {
      ws.send(message);
    },
    close(ws, code, reason) {
      if (ws.readyState === 1 && code >= 1000) ws.close(code, reason);
    },
  }, {
    upgradeHeaders: (req) => ({
      "Sec-WebSocket-Protocol": req.headers.get("sec-websocket-protocol")?.split(",")[0]?.trim() ?? "",
    }),
  });
}

/** Starts an upstream built on the `ws` package, which echoes by default. */
export async function startWsUpstream(
  onConnection: (socket: WsWebSocket, request: import("node:http").IncomingMessage) => void = (socket) => {
    socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }));
  },
  options: { handleProtocols?: (protocols: Set<string>) => string | false } = {},
): Promise<{ url: string; port: number; server: WebSocketServer } & AsyncDisposable> {
  const server = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    perMessageDeflate: false,
    maxPayload: 128 * 1024 * 1024,
    handleProtocols: options.handleProtocols ?? ((protocols) => [...protocols][0] ?? false),
  });
  await new Promise<void>((resolve) => server.once("listening", () => resolve()));
  server.on("connection", onConnection);
  const port = (server.address() as { port: number }).port;
  return {
    url: `ws://127.0.0.1:${port}`,
    port,
    server,
    [Symbol.asyncDispose]: async () => {
      for (const client of server.clients) client.terminate();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Resolves after `ms` and rejects nothing; a test's own deadline comes from bun test. */
export const sleep = (ms: number): Promise<void> => Bun.sleep(ms);

/** Polls `check` every 10 ms until it is true or `timeoutMs` passes; returns the last result. */
export async function waitFor(check: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) return false;
    await Bun.sleep(10);
  }
  return true;
}

function toReceived(data: unknown, isText: boolean): Received {
  if (isText) return { type: "text", text: typeof data === "string" ? data : Buffer.from(data as Buffer).toString("utf8") };
  if (data instanceof ArrayBuffer) return { type: "binary", bytes: new Uint8Array(data) };
  return { type: "binary", bytes: new Uint8Array(data as Uint8Array) };
}

/**
 * A client whose messages queue up until awaited. Works over Bun's
 * `WebSocket` (`kind: "bun"`) or the `ws` package (`kind: "ws"`).
 */
export class TestClient implements AsyncDisposable {
  readonly received: Received[] = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<Closed>;
  error: string | undefined;
  private waiters: Array<() => void> = [];
  private closeInfo: Closed | undefined;

  private constructor(
    readonly kind: "bun" | "ws",
    private readonly bun: WebSocket | undefined,
    private readonly ws: WsWebSocket | undefined,
  ) {
    let openResolve!: () => void;
    let openReject!: (error: Error) => void;
    let closeResolve!: (closed: Closed) => void;
    this.opened = new Promise((resolve, reject) => {
      openResolve = resolve;
      openReject = reject;
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => (closeResolve = resolve));
    const onClose = (closed: Closed): void => {
      this.closeInfo = closed;
      openReject(new Error(`closed before open: ${closed.code} ${this.error ?? ""}`));
      closeResolve(closed);
      this.wake();
    };
    if (bun !== undefined) {
      bun.binaryType = "nodebuffer";
      bun.onopen = () => openResolve();
      bun.onmessage = (event) => this.push(toReceived(event.data, typeof event.data === "string"));
      bun.onerror = (event) => {
        this.error = (event as ErrorEvent).message;
      };
      bun.onclose = (event) => onClose({ code: event.code, reason: event.reason, wasClean: event.wasClean });
    } else if (ws !== undefined) {
      ws.on("open", () => openResolve());
      ws.on("message", (data, isBinary) => this.push(toReceived(data, !isBinary)));
      ws.on("error", (error) => {
        this.error = error.message;
      });
      ws.on("unexpected-response", (_req, res) => {
        this.error = `Unexpected server response: ${res.statusCode}`;
        ws.terminate();
      });
      ws.on("close", (code, reason) => onClose({ code, reason: reason.toString("utf8"), wasClean: code !== 1006 }));
    }
  }

  /** Connects with Bun's client; `ca` is the PEM CA to trust for a wss:// URL. */
  static bun(url: string, protocols?: string | string[], headers?: Record<string, string>, ca?: string): TestClient {
    const tls = ca === undefined ? undefined : { ca, rejectUnauthorized: true };
    const socket = new WebSocket(url, { protocols, headers, perMessageDeflate: false, tls } as Bun.WebSocketOptions);
    return new TestClient("bun", socket, undefined);
  }

  /** Connects with the `ws` package; `ca` is the PEM CA to trust for a wss:// URL. */
  static ws(url: string, protocols?: string | string[], headers?: Record<string, string>, ca?: string): TestClient {
    const socket = new WsWebSocket(url, protocols ?? [], { perMessageDeflate: false, headers, maxPayload: 256 * 1024 * 1024, ca });
    return new TestClient("ws", undefined, socket);
  }

  static of(kind: "bun" | "ws", url: string, protocols?: string | string[]): TestClient {
    return kind === "bun" ? TestClient.bun(url, protocols) : TestClient.ws(url, protocols);
  }

  get protocol(): string {
    return this.bun?.protocol ?? this.ws?.protocol ?? "";
  }

  get closeEvent(): Closed | undefined {
    return this.closeInfo;
  }

  send(data: string | Uint8Array): void {
    if (this.bun !== undefined) this.bun.send(data);
    else this.ws?.send(data, { binary: typeof data !== "string" });
  }

  close(code?: number, reason?: string): void {
    if (this.bun !== undefined) this.bun.close(code, reason);
    else this.ws?.close(code, reason);
  }

  terminate(): void {
    if (this.bun !== undefined) this.bun.terminate();
    else this.ws?.terminate();
  }

  pause(): void {
    if (this.bun !== undefined) this.bun.pause();
    else this.ws?.pause();
  }

  resume(): void {
    if (this.bun !== undefined) this.bun.resume();
    else this.ws?.resume();
  }

  /** Waits until `count` messages have arrived in total, or the socket closed. */
  async waitForMessages(count: number, timeoutMs = 10_000): Promise<Received[]> {
    const deadline = performance.now() + timeoutMs;
    while (this.received.length < count && this.closeInfo === undefined && performance.now() < deadline) {
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
    return this.received;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.closeInfo === undefined) this.terminate();
    await Promise.race([this.closed, Bun.sleep(1000)]);
  }

  private push(message: Received): void {
    this.received.push(message);
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}

/** Shortens a received message list for readable assertion output. */
export function summarize(messages: Received[]): string[] {
  return messages.map((m) => (m.type === "text" ? `text:${m.text}` : `binary:${Buffer.from(m.bytes ?? []).toString("hex")}`));
}
