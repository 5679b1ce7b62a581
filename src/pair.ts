/**
 * One client socket and its upstream socket: forwarding, flow control,
 * liveness bookkeeping and teardown. The pair is the only place that maps one
 * side to the other.
 */

import type { ServerWebSocket } from "bun";
import {
  type CloseAction,
  type EndCause,
  CloseCode,
  clampReason,
  closeForClient,
  closeForUpstream,
} from "./close.ts";
import type { FlowPoller } from "./flow.ts";
import { errorDetail } from "./handshake.ts";
import { TokenBucket } from "./limits.ts";

/** The direction a message travels through the relay. */
export type Direction = "client-to-upstream" | "upstream-to-client";

/** A message as Bun delivers it: text as `string`, binary as `Buffer`. */
export type Message = string | Buffer;

/**
 * Observes each message before it is forwarded. It runs on the hot path and
 * must not throw or keep a reference to a `Buffer` it does not copy.
 */
export type MessageHook = (direction: Direction, data: Message) => void;

/** The side that decided the end of a pair. */
export type Closer = "client" | "upstream" | "relay";

/** The end of a pair, as logged and counted. */
export interface PairEnd {
  cause: EndCause;
  closedBy: Closer;
  /** The close code that started the teardown, as reported by Bun (1005, 1006 included). */
  code: number;
  reason: string;
}

/** Counters of one pair; plain fields, bumped on the hot path. */
export interface PairCounters {
  messagesToUpstream: number;
  /** Text messages among `messagesToUpstream`; the rest are binary. */
  textMessagesToUpstream: number;
  bytesToUpstream: number;
  messagesToClient: number;
  /** Text messages among `messagesToClient`; the rest are binary. */
  textMessagesToClient: number;
  bytesToClient: number;
  /** Times the client reader was paused because the upstream queue was full. */
  clientPauses: number;
  /** Times the upstream reader was paused because the client queue was full. */
  upstreamPauses: number;
  /** Time the client reader spent paused, in ms (pauses still running not included). */
  clientPausedMs: number;
  /** Time the upstream reader spent paused, in ms (pauses still running not included). */
  upstreamPausedMs: number;
}

/** Callbacks through which a pair reports to its owner. */
export interface PairEvents {
  /** The client was attached; messages flow from now on. */
  onOpen?(pair: Pair): void;
  /** The first close on either side decided how the pair ends. */
  onEnd?(pair: Pair, end: PairEnd): void;
  /** Both sockets are closed; nothing of the pair is left to release. */
  onRelease?(pair: Pair): void;
  /** Something went wrong that an operator should see. */
  onError?(pair: Pair, kind: string, message: string): void;
  /** A pong arrived; `rttMs` is the time since the matching ping. */
  onPong?(pair: Pair, side: "client" | "upstream", rttMs: number): void;
}

/** Limits of a pair: flow control and message size in bytes, and the client's message rate. */
export interface PairLimits {
  highWaterBytes: number;
  lowWaterBytes: number;
  maxMessageBytes: number;
  /** Client messages per second, also the burst, before the pair is closed; 0 or unset is off. */
  rateLimitPerSecond?: number;
}

const enum State {
  /** Upstream open, client not yet attached. */
  Dialled,
  Open,
  /** Teardown started; both sockets are closing. */
  Ending,
}

const enum Side {
  Open,
  Closed,
}

let nextId = 1;

/** Pairs with upstream messages to flush, in the order they got their first. */
let pendingFlush: Pair[] = [];
let flushScheduled = false;

function flushAll(): void {
  const pairs = pendingFlush;
  pendingFlush = [];
  flushScheduled = false;
  for (const pair of pairs) {
    // One pair's failure must not leave the pairs after it unflushed.
    try {
      pair.flushToClient();
    } catch (error) {
      pair.flushFailed(error);
    }
  }
}

/**
 * Flushes `pair` once the current batch of socket events has run:
 * `setImmediate` callbacks run after the I/O events of a loop iteration.
 */
function scheduleFlush(pair: Pair): void {
  pendingFlush.push(pair);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flushAll);
  }
}

/**
 * Reports whether a side with a backlog is reading. A ping to such a side
 * waits behind the kernel's buffer and the relay's queue, so its pong can
 * be late while the side is healthy. The relay's queue (`queued*`, from
 * `bufferedAmount`) only moves into the kernel when the kernel buffer has
 * room, which with a backlog means the side read something since the ping.
 * A side with no backlog must send a pong or another frame, because outgoing
 * traffic that the kernel absorbs proves nothing about the peer.
 *
 * NOTE: bytes already in the kernel's buffers are invisible here. A ping
 * behind megabytes of kernel-buffered data reaches a slow reader late, and
 * when the relay's own queue is empty meanwhile, that reader must still
 * reply within the pong timeout. At the default 10 s that misjudges only a
 * reader slower than its kernel backlog divided by 10 s (about 400 KB/s
 * behind the 4 MB that loopback buffers hold; an estimate).
 */
function isDraining(queuedAtPing: number, bytesSincePing: number, queuedNow: number): boolean {
  const backlogged = queuedAtPing > 0 || queuedNow > 0;
  return backlogged && queuedAtPing + bytesSincePing - queuedNow > 0;
}

/**
 * A client socket accepted by `Bun.serve` joined to one upstream `WebSocket`.
 *
 * Create it as soon as the upstream `WebSocket` exists (before it opens): it
 * pauses the upstream reader at once and keeps anything the upstream sends
 * until `attach()` joins the client, so no early message is lost.
 */
export class Pair {
  readonly id: string;
  readonly startedAt = performance.now();
  readonly counters: PairCounters = {
    messagesToUpstream: 0,
    textMessagesToUpstream: 0,
    bytesToUpstream: 0,
    messagesToClient: 0,
    textMessagesToClient: 0,
    bytesToClient: 0,
    clientPauses: 0,
    upstreamPauses: 0,
    clientPausedMs: 0,
    upstreamPausedMs: 0,
  };
  client: ServerWebSocket<unknown> | null = null;
  end: PairEnd | null = null;
  /** The client's `ip:port`, for logs. */
  clientAddress = "";
  /** The upstream URL without its query, for logs. */
  target = "";
  /** Time from creating the upstream socket to its open, in ms. */
  dialMs = 0;
  /**
   * Set when the client hop negotiates permessage-deflate. Bun's server
   * compresses a message only when `send()` is called with `compress` true.
   */
  compressToClient = false;

  /** Set by any frame from that side; cleared when a ping is sent to it. */
  clientSeen = true;
  upstreamSeen = true;
  /** Set when that side's reader was paused since the last ping, which may hide its pong. */
  clientPausedSincePing = false;
  upstreamPausedSincePing = false;
  private pingSentAt = 0;
  private clientQueuedAtPing = 0;
  private upstreamQueuedAtPing = 0;
  private clientBytesAtPing = 0;
  private upstreamBytesAtPing = 0;
  private clientPongPending = false;
  private upstreamPongPending = false;

  private state = State.Dialled;
  private clientSide = Side.Open;
  private upstreamSide = Side.Open;
  private clientPaused = false;
  private upstreamPaused = false;
  private clientPausedAt = 0;
  private upstreamPausedAt = 0;
  private early: Message[] = [];
  /** Upstream messages waiting for the next `flushToClient`. */
  private toClient: Message[] = [];
  private earlyClose: CloseEvent | null = null;
  private upstreamErrorCode: string | undefined;
  /** Client message budget; null when `--rate-limit` is off. */
  private readonly rateLimit: TokenBucket | null;

  constructor(
    readonly upstream: WebSocket,
    private readonly limits: PairLimits,
    private readonly flow: FlowPoller,
    private readonly events: PairEvents = {},
    private readonly onMessage: MessageHook | undefined = undefined,
  ) {
    this.id = (nextId++).toString(36);
    const rate = limits.rateLimitPerSecond ?? 0;
    this.rateLimit = rate > 0 ? new TokenBucket(rate) : null;
    upstream.binaryType = "nodebuffer";
    // Bun drops messages that arrive before a listener is attached, and the
    // client is not attached until Bun calls `open` after the 101, so the
    // upstream reader waits until then.
    upstream.pause();
    upstream.onmessage = (event) => this.fromUpstream(event.data);
    upstream.onclose = (event) => this.upstreamClosed(event);
    upstream.onerror = (event) => this.upstreamFailed(event);
    upstream.addEventListener("pong", () => this.upstreamPonged());
    upstream.addEventListener("ping", () => {
      this.upstreamSeen = true;
    });
  }

  /** Time since the pair was created, in ms. */
  get ageMs(): number {
    return performance.now() - this.startedAt;
  }

  /** True once teardown has started. */
  get ending(): boolean {
    return this.state === State.Ending;
  }

  /**
   * Joins the accepted client socket: forwards what the upstream sent so far,
   * then resumes the upstream reader. Call it from the `open` handler.
   */
  attach(client: ServerWebSocket<unknown>): void {
    this.client = client;
    if (this.state !== State.Dialled) return;
    this.state = State.Open;
    this.events.onOpen?.(this);
    const early = this.early;
    this.early = [];
    for (const data of early) this.fromUpstream(data);
    if (this.earlyClose !== null) {
      this.upstreamClosed(this.earlyClose);
      return;
    }
    if (this.state === State.Open && !this.upstreamPaused) this.upstream.resume();
  }

  /** Forwards one client message to the upstream. Call it from the `message` handler. */
  fromClient(data: Message): void {
    this.clientSeen = true;
    if (this.state !== State.Open) return;
    if (this.rateLimit !== null && !this.rateLimit.take()) {
      this.rateLimited();
      return;
    }
    const counters = this.counters;
    counters.messagesToUpstream++;
    if (typeof data === "string") {
      counters.textMessagesToUpstream++;
      counters.bytesToUpstream += Buffer.byteLength(data);
    } else {
      counters.bytesToUpstream += data.byteLength;
    }
    if (this.onMessage !== undefined) this.observe("client-to-upstream", data);
    const upstream = this.upstream;
    upstream.send(data);
    if (upstream.bufferedAmount > this.limits.highWaterBytes && !this.clientPaused) {
      this.pauseClient();
    }
  }

  /** Forwards one upstream message to the client. */
  fromUpstream(data: Message): void {
    this.upstreamSeen = true;
    if (this.state !== State.Open) {
      if (this.state === State.Dialled) this.early.push(data);
      return;
    }
    const isText = typeof data === "string";
    const size = isText ? Buffer.byteLength(data) : data.byteLength;
    if (size > this.limits.maxMessageBytes) {
      this.upstreamTooBig(size);
      return;
    }
    const counters = this.counters;
    counters.messagesToClient++;
    if (isText) counters.textMessagesToClient++;
    counters.bytesToClient += size;
    if (this.onMessage !== undefined) this.observe("upstream-to-client", data);
    if (this.toClient.length === 0) scheduleFlush(this);
    this.toClient.push(data);
  }

  /**
   * Sends the upstream messages gathered since the last flush to the client,
   * under one `cork()`, so that they leave in one write. Bun's client
   * dispatches each message of a socket read as its own event, and Bun's
   * server writes each `send()` from such an event at once.
   */
  flushToClient(): void {
    const batch = this.toClient;
    if (batch.length === 0) return;
    this.toClient = [];
    const client = this.client;
    if (client === null || this.clientSide === Side.Closed) return;
    let queued = false;
    let dropped = -1;
    const compress = this.compressToClient;
    client.cork(() => {
      for (const data of batch) {
        const status = compress ? client.send(data, true) : client.send(data);
        if (status === -1) {
          queued = true;
        } else if (status === 0 && dropped < 0) {
          // Bun also returns 0 for an empty message, which is sent.
          const size = typeof data === "string" ? Buffer.byteLength(data) : data.byteLength;
          if (size > 0) dropped = size;
        }
      }
    });
    if (queued && !this.upstreamPaused && this.state === State.Open) this.pauseUpstream();
    // A closing socket also returns 0; its close handler ends the pair.
    if (dropped >= 0 && client.readyState === WebSocket.OPEN) this.dropped(dropped);
  }

  /** Reports a flush that threw and closes the pair with 1011 rather than stall it. */
  flushFailed(error: unknown): void {
    this.events.onError?.(this, "flush_failed", `sending to the client failed: ${String(error)}`);
    this.close(CloseCode.INTERNAL_ERROR, "relay error", "protocol_error");
  }

  /** Resumes the upstream reader once the client queue is short. Call it from `drain`. */
  clientDrained(): void {
    if (this.upstreamPaused) this.resumeIfDrained();
  }

  /** Records a pong from the client. Call it from the `pong` handler. */
  clientPonged(): void {
    this.clientSeen = true;
    if (!this.clientPongPending) return;
    this.clientPongPending = false;
    this.events.onPong?.(this, "client", performance.now() - this.pingSentAt);
  }

  /** Handles the client's close as Bun reports it. Call it from the `close` handler. */
  clientClosed(code: number, reason: string): void {
    this.clientSide = Side.Closed;
    if (this.state !== State.Ending) {
      const action = closeForUpstream(code, reason);
      this.finish({ cause: action.cause, closedBy: "client", code, reason });
      this.closeUpstream(action);
    }
    this.releaseIfClosed();
  }

  /**
   * Abandons a pair whose client left before the upgrade completed: closes
   * the upstream with 1001.
   */
  abandon(reason: string): void {
    this.clientSide = Side.Closed;
    if (this.state === State.Ending) return;
    this.finish({ cause: "client_lost", closedBy: "client", code: CloseCode.ABNORMAL, reason });
    this.closeUpstream({ code: CloseCode.GOING_AWAY, reason, cause: "client_lost" });
    this.releaseIfClosed();
  }

  /**
   * Closes both sides with the same code and reason, as the relay's own
   * decision (shutdown, for instance).
   */
  close(code: number, reason: string, cause: EndCause): void {
    if (this.state === State.Ending) return;
    this.finish({ cause, closedBy: "relay", code, reason });
    const action: CloseAction = { code, reason, cause };
    this.closeClient(action);
    this.closeUpstream(action);
  }

  /**
   * Terminates the side that missed its pong and closes the other with 1001
   * "peer timed out".
   */
  timedOut(side: "client" | "upstream"): void {
    if (this.state === State.Ending) return;
    const cause = side === "client" ? "client_timed_out" : "upstream_timed_out";
    const reason = `${side} did not answer ping`;
    this.finish({ cause, closedBy: "relay", code: CloseCode.ABNORMAL, reason });
    const action: CloseAction = { code: CloseCode.GOING_AWAY, reason: "peer timed out", cause };
    if (side === "client") {
      this.client?.terminate();
      this.closeUpstream(action);
    } else {
      this.upstream.terminate();
      this.closeClient(action);
    }
  }

  /**
   * Sends a ping to each side whose reader is running, and clears its sign
   * of life. A paused side is skipped: its pong could not be read. The bytes
   * queued toward each side are noted, because a ping waits behind them.
   */
  ping(): void {
    // Gathered messages go first: they are counted as sent already, and the
    // ping must not overtake them.
    this.flushToClient();
    if (this.state !== State.Open) return;
    const client = this.client as ServerWebSocket<unknown>;
    this.pingSentAt = performance.now();
    this.clientPausedSincePing = this.clientPaused;
    this.upstreamPausedSincePing = this.upstreamPaused;
    this.clientQueuedAtPing = client.getBufferedAmount();
    this.upstreamQueuedAtPing = this.upstream.bufferedAmount;
    this.clientBytesAtPing = this.counters.bytesToClient;
    this.upstreamBytesAtPing = this.counters.bytesToUpstream;
    // A paused side gets no ping, but its sign of life is cleared too, so
    // that `silentSide` can judge it by its backlog.
    this.clientSeen = false;
    this.upstreamSeen = false;
    if (!this.clientPaused) {
      this.clientPongPending = true;
      client.ping();
    }
    if (!this.upstreamPaused) {
      this.upstreamPongPending = true;
      this.upstream.ping();
    }
  }

  /**
   * Returns the side that gave no sign of life since the last ping, if any.
   * A side counts as alive when it sent any frame, when it has a backlog
   * that moved (see `isDraining`), or when the relay paused its reader and
   * nothing is queued toward it (its pong may be unread). A paused side with
   * a backlog is judged by that backlog, or two stalled peers would keep
   * their pair open forever.
   */
  silentSide(): "client" | "upstream" | null {
    if (this.state !== State.Open) return null;
    // Gathered messages are already counted as sent; put them in the queue
    // so that the backlog check finds them there.
    this.flushToClient();
    const client = this.client as ServerWebSocket<unknown>;
    const c = this.counters;
    const clientQueued = client.getBufferedAmount();
    const clientPaused = this.clientPausedSincePing || this.clientPaused;
    const clientAlive =
      this.clientSeen ||
      isDraining(this.clientQueuedAtPing, c.bytesToClient - this.clientBytesAtPing, clientQueued) ||
      (clientPaused && this.clientQueuedAtPing === 0 && clientQueued === 0);
    if (!clientAlive) return "client";
    const upstreamQueued = this.upstream.bufferedAmount;
    const upstreamPaused = this.upstreamPausedSincePing || this.upstreamPaused;
    const upstreamAlive =
      this.upstreamSeen ||
      isDraining(this.upstreamQueuedAtPing, c.bytesToUpstream - this.upstreamBytesAtPing, upstreamQueued) ||
      (upstreamPaused && this.upstreamQueuedAtPing === 0 && upstreamQueued === 0);
    if (!upstreamAlive) return "upstream";
    return null;
  }

  /** Resumes whichever reader may resume; returns true while one is still paused. */
  resumeIfDrained(): boolean {
    const { lowWaterBytes } = this.limits;
    if (this.state === State.Ending) return false;
    if (this.clientPaused && this.upstream.bufferedAmount <= lowWaterBytes) {
      this.resumeClient();
    }
    const client = this.client;
    if (this.upstreamPaused && client !== null && client.getBufferedAmount() <= lowWaterBytes) {
      this.resumeUpstream();
    }
    return this.clientPaused || this.upstreamPaused;
  }

  /** Runs the message hook; a hook that throws is logged, and the message is still forwarded. */
  private observe(direction: Direction, data: Message): void {
    try {
      (this.onMessage as MessageHook)(direction, data);
    } catch (error) {
      this.events.onError?.(this, "message_hook_failed", `onMessage threw: ${String(error)}`);
    }
  }

  private pauseClient(): void {
    this.clientPaused = true;
    this.clientPausedAt = performance.now();
    this.clientPausedSincePing = true;
    this.counters.clientPauses++;
    this.client?.pause();
    this.flow.watch(this);
  }

  private pauseUpstream(): void {
    this.upstreamPaused = true;
    this.upstreamPausedAt = performance.now();
    this.upstreamPausedSincePing = true;
    this.counters.upstreamPauses++;
    this.upstream.pause();
    this.flow.watch(this);
  }

  private resumeClient(): void {
    this.clientPaused = false;
    this.counters.clientPausedMs += performance.now() - this.clientPausedAt;
    this.client?.resume();
  }

  private resumeUpstream(): void {
    this.upstreamPaused = false;
    this.counters.upstreamPausedMs += performance.now() - this.upstreamPausedAt;
    this.upstream.resume();
  }

  private upstreamPonged(): void {
    this.upstreamSeen = true;
    if (!this.upstreamPongPending) return;
    this.upstreamPongPending = false;
    this.events.onPong?.(this, "upstream", performance.now() - this.pingSentAt);
  }

  private upstreamFailed(event: Event): void {
    const error = (event as ErrorEvent).error as { code?: unknown } | undefined;
    const code = typeof error?.code === "string" ? error.code : undefined;
    this.upstreamErrorCode ??= code ?? "";
    if (this.state === State.Open) {
      const detail = errorDetail((event as ErrorEvent).message ?? "");
      this.events.onError?.(this, "upstream_error", `upstream connection failed: ${detail || code || "unknown error"}`);
    }
  }

  private upstreamClosed(event: CloseEvent): void {
    if (this.state === State.Dialled && this.client === null) {
      // The upstream closed between its open and the client's; the close is
      // passed on once the client is attached, after the early messages.
      this.earlyClose = event;
      return;
    }
    this.upstreamSide = Side.Closed;
    if (this.state !== State.Ending) {
      const action = closeForClient(event.code, event.reason, this.upstreamErrorCode);
      this.finish({ cause: action.cause, closedBy: "upstream", code: event.code, reason: event.reason });
      this.closeClient(action);
    }
    this.releaseIfClosed();
  }

  private upstreamTooBig(size: number): void {
    const reason = `upstream message of ${size} bytes is over the ${this.limits.maxMessageBytes}-byte limit`;
    this.finish({ cause: "message_too_big", closedBy: "relay", code: CloseCode.MESSAGE_TOO_BIG, reason });
    this.closeUpstream({ code: CloseCode.MESSAGE_TOO_BIG, reason: "message too big", cause: "message_too_big" });
    this.closeClient({ code: CloseCode.BAD_GATEWAY, reason: "upstream message too big", cause: "message_too_big" });
  }

  /**
   * Closes a client that sent faster than `rateLimitPerSecond` with 1008,
   * and its upstream with 1001. The message over the limit, and any the
   * client sends after it, are not forwarded.
   */
  private rateLimited(): void {
    const limit = this.limits.rateLimitPerSecond;
    this.events.onError?.(this, "rate_limited", `client sent over ${limit} messages per second; closing the pair with 1008`);
    const reason = "rate limit exceeded";
    this.finish({ cause: "rate_limited", closedBy: "relay", code: CloseCode.POLICY_VIOLATION, reason });
    this.closeClient({ code: CloseCode.POLICY_VIOLATION, reason, cause: "rate_limited" });
    this.closeUpstream({ code: CloseCode.GOING_AWAY, reason: "client exceeded the message rate limit", cause: "rate_limited" });
  }

  private dropped(size: number): void {
    // Unreachable while the server runs with backpressureLimit 0 (no limit):
    // a 0 status on a non-empty message would mean Bun dropped it.
    const message = `Bun dropped a ${size}-byte message to the client; closing the pair rather than lose data silently`;
    this.events.onError?.(this, "message_dropped", message);
    this.close(CloseCode.INTERNAL_ERROR, "relay dropped a message", "protocol_error");
  }

  private finish(end: PairEnd): void {
    this.state = State.Ending;
    this.end = end;
    this.early = [];
    this.flow.forget(this);
    // The pair is ending: resume paused readers so that the pause time is
    // counted and the flow poller lets go of the pair.
    if (this.clientPaused) this.resumeClient();
    if (this.upstreamPaused) this.resumeUpstream();
    // A pair whose client never attached was never reported open.
    if (this.client !== null) this.events.onEnd?.(this, end);
  }

  private closeClient(action: CloseAction): void {
    const client = this.client;
    if (client === null || this.clientSide === Side.Closed) return;
    // Messages that arrived before the close go out before it.
    this.flushToClient();
    // Bun's server sends an empty close frame (no status) for code 1005.
    client.close(action.code ?? CloseCode.NO_STATUS, clampReason(action.reason));
  }

  private closeUpstream(action: CloseAction): void {
    const upstream = this.upstream;
    if (this.upstreamSide === Side.Closed) return;
    if (upstream.readyState === WebSocket.CLOSING || upstream.readyState === WebSocket.CLOSED) return;
    try {
      if (action.code === undefined) upstream.close();
      else upstream.close(action.code, clampReason(action.reason));
    } catch (error) {
      this.events.onError?.(this, "upstream_close_failed", String(error));
      upstream.terminate();
    }
  }

  private releaseIfClosed(): void {
    if (this.clientSide === Side.Closed && this.upstreamSide === Side.Closed && this.client !== null) {
      this.events.onRelease?.(this);
    }
  }
}
