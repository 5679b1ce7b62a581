/**
 * Relay options: types, defaults, parsing of durations and sizes, and
 * validation with messages that name the flag, the value and what is accepted.
 */

import type { LogFormat, LogLevel, Logger } from "./log.ts";
import type { MessageHook } from "./pair.ts";

export const DEFAULT_HOSTNAME = "127.0.0.1";
export const DEFAULT_PORT = 8080;
export const DEFAULT_DIAL_TIMEOUT_MS = 10_000;
export const DEFAULT_PING_INTERVAL_MS = 30_000;
export const DEFAULT_PONG_TIMEOUT_MS = 10_000;
export const DEFAULT_TCP_KEEPALIVE_MS = 15_000;
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
export const DEFAULT_HIGH_WATER_BYTES = 1024 * 1024;
export const DEFAULT_SHUTDOWN_GRACE_MS = 10_000;

/**
 * Bun's WebSocket client rejects any message over 128 MiB (fixed in Bun
 * 1.4.4), so the relay cannot carry larger ones from the upstream.
 */
export const MAX_MESSAGE_CEILING_BYTES = 128 * 1024 * 1024;
/** Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32,767 s. */
export const MAX_TCP_KEEPALIVE_MS = 32_767_000;

/** Options of `createRelay`. Durations are in milliseconds, sizes in bytes. */
export interface RelayOptions {
  /** Address to listen on. Default `127.0.0.1`. */
  hostname?: string;
  /** Port to listen on; `0` picks a free one (read it from `relay.port`). Default 8080. */
  port?: number;
  /**
   * Upstream `ws://` or `wss://` URL; the client's path and query are
   * appended to its path. Unset: a built-in echo server on 127.0.0.1.
   */
  upstream?: string;
  /** Deadline for the upstream's handshake; past it the client gets 504. Default 10 s. */
  dialTimeoutMs?: number;
  /** Period of the ws ping sent to both sides; `0` turns pings off. Default 30 s. */
  pingIntervalMs?: number;
  /** Time a side has to answer a ping before it is closed. Default 10 s. */
  pongTimeoutMs?: number;
  /**
   * TCP keepalive idle time and probe interval on the listener, inherited by
   * every accepted socket; whole seconds; `0` leaves it off. Default 15 s.
   */
  tcpKeepAliveMs?: number;
  /** Largest message either side may send; larger ones close the sender with 1009. Default 16 MiB. */
  maxMessageBytes?: number;
  /**
   * Bytes queued toward one side above which the relay stops reading from
   * the other side; reading resumes below a quarter of it. Default 1 MiB.
   */
  highWaterBytes?: number;
  /** Time open pairs get after `stop()` before they are closed with 1001. Default 10 s. */
  shutdownGraceMs?: number;
  /** Listen with SO_REUSEPORT so several processes can share the port. Default false. */
  reusePort?: boolean;
  /** Where log lines go. Default: JSON lines on standard error at level info. */
  logger?: Logger;
  /** Called with every message before it is forwarded; must not throw. */
  onMessage?: MessageHook;
}

/** `RelayOptions` with every default applied and every value checked. */
export interface ResolvedRelayOptions {
  hostname: string;
  port: number;
  upstream: string | undefined;
  dialTimeoutMs: number;
  pingIntervalMs: number;
  pongTimeoutMs: number;
  tcpKeepAliveMs: number;
  maxMessageBytes: number;
  highWaterBytes: number;
  lowWaterBytes: number;
  shutdownGraceMs: number;
  reusePort: boolean;
  onMessage: MessageHook | undefined;
}

/** A bad option value; `option` is the flag name (`--max-message`) or the field name. */
export class ConfigError extends Error {
  readonly code = "invalid_option";
  constructor(
    readonly option: string,
    readonly value: string,
    message: string,
  ) {
    super(message);
    this.name = "ConfigError";
  }
}

const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 };
const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000 };

/** Parses `16MiB`, `64KiB`, `512` (bytes) into bytes; throws `ConfigError`. */
export function parseSize(option: string, text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = SIZE_UNITS[(match?.[2] ?? "").toLowerCase()];
  if (match === null || unit === undefined) {
    throw new ConfigError(
      option,
      text,
      `${option}: invalid size "${text}"; use a number of bytes with an optional unit B, KiB, MiB or GiB, e.g. 16MiB`,
    );
  }
  return Math.round(Number(match[1]) * unit);
}

/** Parses `10s`, `500ms`, `2m` or `0` into milliseconds; throws `ConfigError`. */
export function parseDuration(option: string, text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unitText = (match?.[2] ?? "").toLowerCase();
  const unit = DURATION_UNITS[unitText];
  const isZero = match !== null && Number(match[1]) === 0 && unitText === "";
  if (isZero) return 0;
  if (match === null || unit === undefined) {
    throw new ConfigError(
      option,
      text,
      `${option}: invalid duration "${text}"; use a number with a unit ms, s or m, e.g. 10s`,
    );
  }
  const ms = Math.round(Number(match[1]) * unit);
  if (ms === 0) {
    // Rounded to 0 it would turn the feature off instead of setting a short time.
    throw new ConfigError(option, text, `${option}: "${text}" is under 1ms; use 0 for off or at least 1ms`);
  }
  return ms;
}

/** Splits `HOST:PORT` (or `[IPv6]:PORT`, or `:PORT` for all addresses); throws `ConfigError`. */
export function parseListen(option: string, text: string): { hostname: string; port: number } {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  const port = Number(match?.[3]);
  if (match === null || port > 65535) {
    throw new ConfigError(
      option,
      text,
      `${option}: invalid address "${text}"; use HOST:PORT with a port from 0 to 65535, e.g. 127.0.0.1:8080 or [::1]:8080`,
    );
  }
  const hostname = match[1] ?? (match[2] === "" ? "0.0.0.0" : (match[2] ?? DEFAULT_HOSTNAME));
  return { hostname, port };
}

/** Checks that `text` is a ws:// or wss:// URL and returns it normalised; throws `ConfigError`. */
export function parseUpstream(option: string, text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(option, text, `${option}: invalid URL "${text}"; use ws://HOST:PORT/PATH or wss://...`);
  }
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new ConfigError(
      option,
      text,
      `${option}: unsupported scheme "${url.protocol}" in "${text}"; use ws:// or wss://`,
    );
  }
  if (url.hash !== "") {
    throw new ConfigError(option, text, `${option}: "${text}" has a fragment, which WebSocket URLs may not have; remove the "#..." part`);
  }
  return url.toString();
}

function checkRange(option: string, value: number, min: number, max: number, shown: string, accepted: string): void {
  if (!Number.isFinite(value) || !Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(option, shown, `${option}: ${shown} is out of range; ${accepted}`);
  }
}

/** How an option is named in error messages: the field name, or the CLI flag. */
export type OptionNames = Partial<Record<keyof RelayOptions, string>>;

/**
 * Applies defaults to `options` and checks every value; throws `ConfigError`
 * naming the option as `names` spells it.
 */
export function resolveOptions(options: RelayOptions = {}, names: OptionNames = {}): ResolvedRelayOptions {
  const resolved: ResolvedRelayOptions = {
    hostname: options.hostname ?? DEFAULT_HOSTNAME,
    port: options.port ?? DEFAULT_PORT,
    upstream: options.upstream === undefined ? undefined : parseUpstream(names.upstream ?? "upstream", options.upstream),
    dialTimeoutMs: options.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS,
    pingIntervalMs: options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS,
    pongTimeoutMs: options.pongTimeoutMs ?? DEFAULT_PONG_TIMEOUT_MS,
    tcpKeepAliveMs: options.tcpKeepAliveMs ?? DEFAULT_TCP_KEEPALIVE_MS,
    maxMessageBytes: options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    highWaterBytes: options.highWaterBytes ?? DEFAULT_HIGH_WATER_BYTES,
    lowWaterBytes: 0,
    shutdownGraceMs: options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS,
    reusePort: options.reusePort ?? false,
    onMessage: options.onMessage,
  };
  validate(resolved, (field) => names[field] ?? field);
  resolved.lowWaterBytes = Math.floor(resolved.highWaterBytes / 4);
  return resolved;
}

function validate(o: ResolvedRelayOptions, name: (field: keyof RelayOptions) => string): void {
  checkRange(name("port"), o.port, 0, 65535, String(o.port), "use a port from 0 to 65535");
  checkRange(name("dialTimeoutMs"), o.dialTimeoutMs, 1, 600_000, `${o.dialTimeoutMs}ms`, "use 1ms to 10m");
  checkRange(name("pingIntervalMs"), o.pingIntervalMs, 0, 3_600_000, `${o.pingIntervalMs}ms`, "use 0 (off) or up to 1h");
  checkRange(name("pongTimeoutMs"), o.pongTimeoutMs, 1, 3_600_000, `${o.pongTimeoutMs}ms`, "use 1ms to 1h");
  if (o.pingIntervalMs > 0 && o.pongTimeoutMs >= o.pingIntervalMs) {
    throw new ConfigError(
      name("pongTimeoutMs"),
      `${o.pongTimeoutMs}ms`,
      `${name("pongTimeoutMs")}: ${o.pongTimeoutMs}ms must be shorter than ${name("pingIntervalMs")} (${o.pingIntervalMs}ms); lower the one or raise the other`,
    );
  }
  checkRange(name("tcpKeepAliveMs"), o.tcpKeepAliveMs, 0, MAX_TCP_KEEPALIVE_MS, `${o.tcpKeepAliveMs}ms`, "use 0 (off) or 1s to 32767s");
  if (o.tcpKeepAliveMs % 1000 !== 0) {
    throw new ConfigError(
      name("tcpKeepAliveMs"),
      `${o.tcpKeepAliveMs}ms`,
      `${name("tcpKeepAliveMs")}: ${o.tcpKeepAliveMs}ms is not a whole number of seconds; the kernel counts it in seconds, e.g. 15s`,
    );
  }
  checkRange(name("maxMessageBytes"),
    o.maxMessageBytes,
    1,
    MAX_MESSAGE_CEILING_BYTES,
    `${o.maxMessageBytes} bytes`,
    "use 1 B to 128 MiB (Bun's WebSocket client cannot receive larger messages)",
  );
  checkRange(name("highWaterBytes"), o.highWaterBytes, 1024, 1024 ** 3, `${o.highWaterBytes} bytes`, "use 1 KiB to 1 GiB");
  checkRange(name("shutdownGraceMs"), o.shutdownGraceMs, 0, 3_600_000, `${o.shutdownGraceMs}ms`, "use 0 to 1h");
}

export type { LogFormat, LogLevel };
