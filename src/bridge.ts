/**
 * Relaying inside another Bun server: `dialUpstream` opens an upstream the
 * way the relay does, `bridge` joins it to an accepted socket, and
 * `bridgeHandlers` are ready-made `websocket` handlers for `Bun.serve`.
 */

import type { ServerWebSocket, WebSocketHandler } from "bun";
import {
  resolveOptions,
  DEFAULT_DIAL_TIMEOUT_MS,
  DEFAULT_HIGH_WATER_BYTES,
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_PONG_TIMEOUT_MS,
} from "./config.ts";
import { FlowPoller } from "./flow.ts";
import { waitForOpen } from "./handshake.ts";
import { KeepaliveSweeper } from "./keepalive.ts";
import { type MessageHook, type PairEnd, Pair } from "./pair.ts";
import type { UpstreamTls } from "./tls.ts";

/** Options of `bridge`. Sizes in bytes, durations in ms. */
export interface BridgeOptions {
  /** Called with every message before it is forwarded; must not throw. */
  onMessage?: MessageHook;
  /** Called once, when the first side closes, with the cause. */
  onEnd?: (end: PairEnd) => void;
  /** Queue size above which the other side's reader pauses. Default 1 MiB. */
  highWaterBytes?: number;
  /** Largest upstream message forwarded; larger ones close the pair with 1009/1014. Default 16 MiB. */
  maxMessageBytes?: number;
  /** Ping period for both sides; 0 turns pings off. Default 30 s. */
  pingIntervalMs?: number;
  /** Time a side has to send a pong (or any frame) after a ping. Default 10 s, or half the ping interval if shorter. */
  pongTimeoutMs?: number;
  /** Client messages per second, also the burst, before the pair is closed with 1008; 0 or unset is off. */
  rateLimitPerSecond?: number;
}

/** A joined pair; forward the client socket's events to it from your handlers. */
export type Bridge = Pick<
  Pair,
  "id" | "counters" | "end" | "fromClient" | "clientDrained" | "clientClosed" | "clientPonged" | "close"
>;

const flow = new FlowPoller();
const sweepers = new Map<string, KeepaliveSweeper<Pair>>();

function sweeperFor(intervalMs: number, timeoutMs: number): KeepaliveSweeper<Pair> | null {
  if (intervalMs <= 0) return null;
  const key = `${intervalMs}/${timeoutMs}`;
  let sweeper = sweepers.get(key);
  if (sweeper === undefined) {
    sweeper = new KeepaliveSweeper<Pair>(intervalMs, timeoutMs);
    sweepers.set(key, sweeper);
  }
  return sweeper;
}

/**
 * Opens a client `WebSocket` to `url` with its reader paused, so nothing the
 * upstream sends is lost before `bridge` attaches. Rejects with a
 * `HandshakeError` (status 504 past `timeoutMs`, else the upstream's 4xx or
 * 502; code `upstream_tls_failed` when a wss:// certificate fails to verify).
 * `tls` verifies a wss:// upstream as the relay does: against the default
 * CAs, or `tls.ca` in their place, and `rejectUnauthorized: false` verifies nothing.
 */
export async function dialUpstream(
  url: string,
  options: { protocols?: string[]; headers?: Record<string, string>; timeoutMs?: number; tls?: UpstreamTls } = {},
): Promise<WebSocket> {
  const upstream = new WebSocket(url, {
    protocols: options.protocols,
    headers: options.headers,
    perMessageDeflate: false,
    // Set explicitly, because Bun's default follows NODE_TLS_REJECT_UNAUTHORIZED.
    tls: { ...options.tls, rejectUnauthorized: options.tls?.rejectUnauthorized ?? true },
  });
  upstream.pause();
  await waitForOpen(upstream, options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS);
  return upstream;
}

/**
 * Joins `client` (accepted by your `Bun.serve`) and an open `upstream`, and
 * starts forwarding. Call it from the `open` handler, and pass the client's
 * `message`, `drain`, `close` and `pong` events to the returned bridge.
 */
export function bridge(client: ServerWebSocket<unknown>, upstream: WebSocket, options: BridgeOptions = {}): Bridge {
  const pingIntervalMs = options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS;
  // The relay's own checks, so that a NaN or negative size cannot turn flow
  // control off; they throw ConfigError naming the BridgeOptions field.
  const checked = resolveOptions({
    highWaterBytes: options.highWaterBytes ?? DEFAULT_HIGH_WATER_BYTES,
    maxMessageBytes: options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    pingIntervalMs,
    pongTimeoutMs: options.pongTimeoutMs ?? Math.max(1, Math.min(DEFAULT_PONG_TIMEOUT_MS, Math.floor(pingIntervalMs / 2))),
    rateLimitPerSecond: options.rateLimitPerSecond ?? 0,
  });
  const limits = {
    highWaterBytes: checked.highWaterBytes,
    lowWaterBytes: checked.lowWaterBytes,
    maxMessageBytes: checked.maxMessageBytes,
    rateLimitPerSecond: checked.rateLimitPerSecond,
  };
  const sweeper = sweeperFor(checked.pingIntervalMs, checked.pongTimeoutMs);
  const pair = new Pair(
    upstream,
    limits,
    flow,
    {
      onOpen: (p) => {
        sweeper?.add(p);
        sweeper?.start();
      },
      onEnd: (p, end) => {
        sweeper?.delete(p);
        if (sweeper?.size === 0) sweeper.stop();
        options.onEnd?.(end);
      },
    },
    options.onMessage,
  );
  pair.attach(client);
  return pair;
}

/** Data that `bridgeHandlers` expects on each socket: pass it to `server.upgrade`. */
export interface BridgeData {
  upstream: WebSocket;
  options?: BridgeOptions;
  bridge?: Bridge;
}

/** `websocket` handlers for `Bun.serve` that bridge each socket to `ws.data.upstream`. */
export const bridgeHandlers: WebSocketHandler<BridgeData> = {
  open(ws) {
    ws.data.bridge = bridge(ws, ws.data.upstream, ws.data.options);
  },
  message(ws, message) {
    ws.data.bridge?.fromClient(message);
  },
  drain(ws) {
    ws.data.bridge?.clientDrained();
  },
  close(ws, code, reason) {
    ws.data.bridge?.clientClosed(code, reason);
  },
  pong(ws) {
    ws.data.bridge?.clientPonged();
  },
  backpressureLimit: 0,
  idleTimeout: 0,
  sendPings: false,
};
