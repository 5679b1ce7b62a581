/**
 * WebSocket-level keepalive: one timer for all pairs pings both sides every
 * interval and, one pong timeout later, closes the pairs with a side that
 * showed no sign of life since its ping (`Pair.silentSide` defines what counts).
 *
 * Bun's own `idleTimeout` and `sendPings` are turned off on the relay's
 * server because outgoing data alone keeps Bun's idle timer running: a client
 * that stopped answering would stay open as long as the upstream streams to
 * it (measured with Bun 1.4.4). Bun's client never pings at all.
 */

import type { Pair } from "./pair.ts";

/** Delay of a judgement put off because its timer fired late. */
const STALL_RETRY_MS = 50;

/** Anything the sweeper can ping and judge; `Pair` in the relay. */
export interface Pingable {
  ping(): void;
  silentSide(): "client" | "upstream" | null;
  timedOut(side: "client" | "upstream"): void;
}

/**
 * Pings every registered pair on one timer. The timer alternates between two
 * phases: ping all, then after `pongTimeoutMs` judge all, then wait out the
 * rest of the interval.
 */
export class KeepaliveSweeper<T extends Pingable = Pair> {
  private readonly members = new Set<T>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private running = false;
  /** When the current phase was due, to tell whether this process stalled. */
  private dueAt = 0;
  private judgementDeferred = false;

  constructor(
    private readonly pingIntervalMs: number,
    private readonly pongTimeoutMs: number,
    private readonly onTimedOut?: (member: T, side: "client" | "upstream") => void,
  ) {}

  add(member: T): void {
    this.members.add(member);
  }

  delete(member: T): void {
    this.members.delete(member);
  }

  get size(): number {
    return this.members.size;
  }

  /** Starts the timer; a ping interval of 0 leaves it off. */
  start(): void {
    if (this.running || this.pingIntervalMs <= 0) return;
    this.running = true;
    this.schedule(this.pingAll, this.pingIntervalMs);
  }

  stop(): void {
    this.running = false;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(phase: () => void, delayMs: number): void {
    if (!this.running) return;
    this.dueAt = performance.now() + delayMs;
    this.timer = setTimeout(phase, delayMs);
  }

  // Each phase schedules the next one first, so that an exception from one
  // member cannot stop liveness checks for every pair.
  private readonly pingAll = (): void => {
    this.judgementDeferred = false;
    this.schedule(this.judgeAll, this.pongTimeoutMs);
    for (const member of this.members) member.ping();
  };

  private readonly judgeAll = (): void => {
    // A timer that fires late means this process was stalled (a long GC, a
    // busy CPU), and pongs may be waiting unread in socket buffers. The
    // judgement waits one short turn, so that they are read first.
    const lateMs = performance.now() - this.dueAt;
    if (!this.judgementDeferred && lateMs > this.pongTimeoutMs / 2) {
      this.judgementDeferred = true;
      this.schedule(this.judgeAll, Math.min(this.pongTimeoutMs, STALL_RETRY_MS));
      return;
    }
    this.schedule(this.pingAll, Math.max(0, this.pingIntervalMs - this.pongTimeoutMs - lateMs));
    for (const member of this.members) {
      const side = member.silentSide();
      if (side === null) continue;
      this.members.delete(member);
      this.onTimedOut?.(member, side);
      member.timedOut(side);
    }
  };
}

/** Handle returned by `keepAlive`. */
export interface KeepAliveHandle {
  /** Records a sign of life; call it from a `pong` or `message` handler of a server socket. */
  alive(): void;
  stop(): void;
}

/** The parts of Bun's server and client WebSocket that `keepAlive` uses. */
export interface PingableSocket {
  ping(data?: string): unknown;
  terminate(): void;
  readonly readyState: number;
}

/**
 * Pings `socket` every `intervalMs` and terminates it when no sign of life
 * came in a whole interval. For a Bun client `WebSocket`, pongs and messages
 * are seen through its events; for a `ServerWebSocket`, whose events go to the
 * server's handlers, call `alive()` from the `pong` and `message` handlers.
 */
export function keepAlive(socket: PingableSocket, intervalMs: number): KeepAliveHandle {
  let seen = true;
  const alive = (): void => {
    seen = true;
  };
  const target = socket as unknown as Partial<EventTarget>;
  target.addEventListener?.("pong", alive);
  target.addEventListener?.("message", alive);

  const timer = setInterval(() => {
    if (socket.readyState !== WebSocket.OPEN) {
      stop();
      return;
    }
    if (!seen) {
      stop();
      socket.terminate();
      return;
    }
    seen = false;
    socket.ping();
  }, intervalMs);

  function stop(): void {
    clearInterval(timer);
    target.removeEventListener?.("pong", alive);
    target.removeEventListener?.("message", alive);
  }

  return { alive, stop };
}
