/**
 * Abuse limits: connection counts (global and per client IP), the size of a
 * request's header fields, and the per-connection message rate.
 */

import { ConfigError, MAX_LIMIT_COUNT } from "./config.ts";

/** Parses a count such as `--max-connections 500`; `0` means no limit. Throws `ConfigError`. */
export function parseCount(option: string, text: string): number {
  const value = Number(text.trim());
  if (!/^\s*\d+\s*$/.test(text) || value > MAX_LIMIT_COUNT) {
    throw new ConfigError(option, text, `${option}: invalid count "${text}"; use a whole number from 0 (no limit) to ${MAX_LIMIT_COUNT}`);
  }
  return value;
}

/** Parses `--rate-limit`: `N/s` messages per second, or `0` for off. Throws `ConfigError`. */
export function parseRate(option: string, text: string): number {
  const match = /^\s*(\d+)\s*(?:\/\s*s)?\s*$/.exec(text);
  const value = Number(match?.[1]);
  const hasUnit = text.includes("/");
  if (match === null || value > MAX_LIMIT_COUNT || (!hasUnit && value !== 0)) {
    throw new ConfigError(
      option,
      text,
      `${option}: invalid rate "${text}"; use N/s with a whole N from 1 to ${MAX_LIMIT_COUNT} (messages per second, also the burst), or 0 for off, e.g. 100/s`,
    );
  }
  return value;
}

/**
 * Counts a request's header bytes: for each field, its name, its value and
 * 4 bytes for ": " and CRLF. The request line is not counted. Bun joins
 * repeated fields into one value (with ", ") before the relay sees them, so
 * a repeated field counts as one.
 */
export function headerBytes(headers: Headers): number {
  let total = 0;
  headers.forEach((value, name) => {
    total += name.length + value.length + 4;
  });
  return total;
}

/**
 * A token bucket that refills `ratePerSecond` tokens a second up to
 * `ratePerSecond` (the burst); each message takes one.
 */
export class TokenBucket {
  private tokens: number;
  private updatedAt = performance.now();

  constructor(private readonly ratePerSecond: number) {
    this.tokens = ratePerSecond;
  }

  /** Takes one token; returns false when the bucket is empty. */
  take(): boolean {
    const now = performance.now();
    const refill = ((now - this.updatedAt) * this.ratePerSecond) / 1000;
    this.updatedAt = now;
    this.tokens = Math.min(this.ratePerSecond, this.tokens + refill);
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** The limit that turned a connection away. */
export type ConnectionLimit = "max_connections" | "max_connections_per_ip";

/** A connection slot; `release()` gives it back once, and later calls do nothing. */
export interface ConnectionSlot {
  release(): void;
}

/**
 * Counts connections (open pairs and dials in progress) in total and per
 * client IP, against two maximums where 0 means no limit.
 */
export class ConnectionLimiter {
  private total = 0;
  private readonly perIp = new Map<string, number>();

  constructor(
    readonly maxConnections: number,
    readonly maxConnectionsPerIp: number,
  ) {}

  /** Slots held now, in total. */
  get active(): number {
    return this.total;
  }

  /** Slots held now by `ip`. */
  activeFor(ip: string): number {
    return this.perIp.get(ip) ?? 0;
  }

  /** Takes a slot for `ip`, or returns the limit that is full. */
  acquire(ip: string): ConnectionSlot | ConnectionLimit {
    if (this.maxConnections > 0 && this.total >= this.maxConnections) return "max_connections";
    const held = this.perIp.get(ip) ?? 0;
    if (this.maxConnectionsPerIp > 0 && held >= this.maxConnectionsPerIp) return "max_connections_per_ip";
    this.total++;
    this.perIp.set(ip, held + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.releaseFor(ip);
      },
    };
  }

  private releaseFor(ip: string): void {
    this.total--;
    const held = (this.perIp.get(ip) ?? 1) - 1;
    // Entries at zero are removed, so the map holds only clients with a slot.
    if (held === 0) this.perIp.delete(ip);
    else this.perIp.set(ip, held);
  }
}
