/**
 * The benchmark's WebSocket server, run as its own process on 127.0.0.1 and
 * a free port, which it prints as `{"port":N}` on stdout.
 *
 * - Any path but /stream echoes each message back. It pauses its reader while
 *   its send queue is full, so a fast client cannot grow its memory.
 * - `/stream?size=BYTES&bytes=TOTAL&seconds=S` sends binary messages of
 *   `size` bytes as fast as the client reads them, each starting with its
 *   sequence number (uint32, little-endian), until `bytes` are sent (then it
 *   closes with 1000), `seconds` pass or the client closes.
 *
 * The same program is the upstream of direct and relayed runs and, pinned to
 * the relay's core, the platform floor.
 */

import type { ServerWebSocket } from "bun";

/** Queue size above which the echo handler stops reading from its client. */
const ECHO_HIGH_WATER_BYTES = 1024 * 1024;
const MAX_MESSAGE_BYTES = 128 * 1024 * 1024;
/** A stream ends after this long when the request sets no `seconds`. */
const DEFAULT_STREAM_SECONDS = 60;
/** Messages a stream sends between two looks at its deadline. */
const DEADLINE_CHECK_EVERY = 1024;
const NORMAL_CLOSURE = 1000;
const INTERNAL_ERROR = 1011;

interface StreamPlan {
  size: number;
  /** Messages to send; Infinity until the deadline. */
  count: number;
  deadline: number;
}

interface Connection {
  stream: StreamPlan | null;
  paused: boolean;
  sent: number;
  payload: Buffer | null;
}

function parseStreamPlan(url: URL): StreamPlan {
  const size = Number(url.searchParams.get("size") ?? "4096");
  const bytes = Number(url.searchParams.get("bytes") ?? "Infinity");
  const seconds = Number(url.searchParams.get("seconds") ?? DEFAULT_STREAM_SECONDS);
  if (!Number.isInteger(size) || size < 4) throw new Error(`size must be an integer of at least 4 bytes, got ${size}`);
  return { size, count: Math.ceil(bytes / size), deadline: performance.now() + seconds * 1000 };
}

function echo(ws: ServerWebSocket<Connection>, message: string | Buffer): void {
  if (ws.send(message) === -1 && !ws.data.paused) {
    ws.data.paused = true;
    ws.pause();
  }
}

function resumeEcho(ws: ServerWebSocket<Connection>): void {
  if (ws.data.paused && ws.getBufferedAmount() < ECHO_HIGH_WATER_BYTES / 4) {
    ws.data.paused = false;
    ws.resume();
  }
}

/** Sends stream messages until the send queue is full, the count is reached or time is up. */
function pump(ws: ServerWebSocket<Connection>): void {
  const state = ws.data;
  const plan = state.stream as StreamPlan;
  const payload = state.payload as Buffer;
  while (state.sent < plan.count) {
    if (state.sent % DEADLINE_CHECK_EVERY === 0 && performance.now() > plan.deadline) break;
    // send() copies the bytes, so one buffer serves every message.
    payload.writeUInt32LE(state.sent >>> 0, 0);
    const status = ws.send(payload);
    if (status === 0) {
      ws.close(INTERNAL_ERROR, "stream message dropped");
      return;
    }
    state.sent++;
    if (status === -1) return;
  }
  ws.close(NORMAL_CLOSURE, "stream complete");
}

function upgrade(req: Request, server: Bun.Server<Connection>): Response | undefined {
  const url = new URL(req.url);
  let stream: StreamPlan | null = null;
  if (url.pathname === "/stream") {
    try {
      stream = parseStreamPlan(url);
    } catch (error) {
      return new Response(`invalid stream request: ${(error as Error).message}\n`, { status: 400 });
    }
  }
  const payload = stream === null ? null : Buffer.alloc(stream.size, 0x5a);
  if (server.upgrade(req, { data: { stream, paused: false, sent: 0, payload } })) return undefined;
  return new Response("expected a WebSocket upgrade\n", { status: 426 });
}

const server = Bun.serve<Connection>({
  hostname: "127.0.0.1",
  port: 0,
  fetch: upgrade,
  websocket: {
    open: (ws) => {
      if (ws.data.stream !== null) pump(ws);
    },
    message: (ws, message) => {
      if (ws.data.stream === null) echo(ws, message);
    },
    drain: (ws) => {
      if (ws.data.stream === null) resumeEcho(ws);
      else if (ws.readyState === WebSocket.OPEN) pump(ws);
    },
    // No limit here: the handlers above stop sending when the queue is full,
    // and at a limit Bun would drop messages (send() returns 0).
    backpressureLimit: 0,
    closeOnBackpressureLimit: false,
    maxPayloadLength: MAX_MESSAGE_BYTES,
    idleTimeout: 0,
    sendPings: false,
    perMessageDeflate: false,
  },
});

process.stdout.write(`${JSON.stringify({ port: server.port })}\n`);
