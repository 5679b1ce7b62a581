/**
 * The built-in echo upstream: used when no upstream is given, so a new user
 * sees the relay carry messages at once. It sends every message back with its
 * opcode, and replies to a close with the same code and reason.
 */

import type { Server, ServerWebSocket } from "bun";
import { isSendableCloseCode } from "./close.ts";

/** Queue size above which the echo server stops reading from a client. */
const ECHO_HIGH_WATER_BYTES = 1024 * 1024;

export interface EchoServer {
  /** `ws://127.0.0.1:PORT` */
  readonly url: string;
  readonly port: number;
  stop(): void;
}

interface EchoState {
  paused: boolean;
}

function echoOnMessage(ws: ServerWebSocket<EchoState>, message: string | Buffer): void {
  if (ws.send(message) === -1 && !ws.data.paused) {
    ws.data.paused = true;
    ws.pause();
  }
}

function echoOnDrain(ws: ServerWebSocket<EchoState>): void {
  if (ws.data.paused && ws.getBufferedAmount() < ECHO_HIGH_WATER_BYTES / 4) {
    ws.data.paused = false;
    ws.resume();
  }
}

function echoOnClose(ws: ServerWebSocket<EchoState>, code: number, reason: string): void {
  // Bun has already replied to the close frame; this only matters for the
  // rare case where the server side is still open.
  if (ws.readyState === WebSocket.OPEN && isSendableCloseCode(code)) ws.close(code, reason);
}

/** Starts the echo server on `hostname` (default 127.0.0.1) and a free port. */
export function startEchoServer(hostname = "127.0.0.1"): EchoServer {
  const server: Server<EchoState> = Bun.serve<EchoState>({
    hostname,
    port: 0,
    fetch(req, srv) {
      const protocols = req.headers.get("sec-websocket-protocol");
      // Choose the first offered subprotocol, as a permissive server would.
      const chosen = protocols?.split(",")[0]?.trim() ?? "";
      if (srv.upgrade(req, { data: { paused: false }, headers: { "Sec-WebSocket-Protocol": chosen } })) {
        return undefined;
      }
      return new Response("wsbridge echo upstream: connect with a WebSocket client\n", { status: 426 });
    },
    websocket: {
      message: echoOnMessage,
      drain: echoOnDrain,
      close: echoOnClose,
      backpressureLimit: 0,
      maxPayloadLength: 128 * 1024 * 1024,
      idleTimeout: 0,
      sendPings: false,
    },
  });
  const port = server.port as number;
  return {
    url: `ws://${hostname}:${port}`,
    port,
    stop: () => void server.stop(true),
  };
}
