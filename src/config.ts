/**
 * Relay options: types, defaults, parsing of durations and sizes, and
 * validation with messages that name the flag, the value and what is accepted.
 */

import type { LogFormat, LogLevel, Logger } from "./log.ts";
import { maxHeaderSize as bunMaxHeaderSize } from "node:http";
import { type OriginPolicy, type TokenSet, resolveAccess } from "./access.ts";
import type { MessageHook } from "./pair.ts";
import { type ServerTls, type UpstreamTls, resolveTls } from "./tls.ts";

export const DEFAULT_HOSTNAME = "127.0.0.1";
export const DEFAULT_PORT = 8080;
export const DEFAULT_DIAL_TIMEOUT_MS = 10_000;
export const DEFAULT_PING_INTERVAL_MS = 30_000;
export const DEFAULT_PONG_TIMEOUT_MS = 10_000;
export const DEFAULT_TCP_KEEPALIVE_MS = 15_000;
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
export const DEFAULT_HIGH_WATER_BYTES = 1024 * 1024;
export const DEFAULT_SHUTDOWN_GRACE_MS = 10_000;

/** Hops on which the relay negotiates permessage-deflate (RFC 7692). */
export type DeflateMode = "off" | "client" | "upstream" | "both";
export const DEFLATE_MODES: readonly DeflateMode[] = ["off", "client", "upstream", "both"];

/** Reports whether `mode` turns permessage-deflate on for the hop between clients and the relay. */
export function deflatesClientHop(mode: DeflateMode): boolean {
  return mode === "client" || mode === "both";
}

/** Reports whether `mode` turns permessage-deflate on for the hop between the relay and the upstream. */
export function deflatesUpstreamHop(mode: DeflateMode): boolean {
  return mode === "upstream" || mode === "both";
}

/**
 * Bun's WebSocket client rejects any message over 128 MiB (fixed in Bun
 * 1.4.4), so the relay cannot carry larger ones from the upstream.
 */
export const MAX_MESSAGE_CEILING_BYTES = 128 * 1024 * 1024;
/** Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32,767 s. */
export const MAX_TCP_KEEPALIVE_MS = 32_767_000;
/** Bun's own default limit on a request head. */
export const DEFAULT_MAX_HEADER_BYTES = 16 * 1024;
/** Largest value of the connection and rate limits. */
export const MAX_LIMIT_COUNT = 1_000_000;
/**
 * Bun's limit on a whole request head (request line, fields and CRLFs):
 * 16 KiB unless bun runs with --max-http-header-size, which `node:http`
 * reports. Bun 1.4.4 rejects a larger head with 431 before `fetch` runs.
 */
export const BUN_MAX_HEADER_BYTES = bunMaxHeaderSize;

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
  /** Time a side has to send a pong (or any frame) after a ping before it is closed. Default 10 s. */
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
  /**
   * Path of the PEM certificate chain (leaf first) to serve wss:// with;
   * give it together with `tlsKeyFile`. Both files are read and checked by
   * `createRelay`. Default: none, the relay serves ws://.
   */
  tlsCertFile?: string;
  /** Path of the unencrypted PEM private key of `tlsCertFile`. */
  tlsKeyFile?: string;
  /**
   * Path of a PEM bundle of CA certificates that a wss:// upstream's
   * certificate must chain to, in place of the default trust store (Bun's
   * bundled roots plus the system's certificates). Default: the default store.
   */
  upstreamCaFile?: string;
  /** Accept any certificate from a wss:// upstream; the relay logs a warning at start. Default false. */
  upstreamInsecure?: boolean;
  /**
   * Origins whose browsers may connect; others get 403. Each entry is an
   * origin (`https://app.example.com`), a pattern (`https://*.example.com`,
   * one or more labels before the domain, not the domain itself), `null`,
   * or `require-origin` to turn away requests without an Origin header,
   * which are allowed otherwise. Default: any origin, and none.
   */
  allowedOrigins?: string[];
  /**
   * Path of a file of bearer tokens, one a line, read by `createRelay`. A
   * client must present one (`Authorization: Bearer TOKEN` or a `token`
   * query parameter) or gets 401. Default: no token needed.
   */
  authTokenFile?: string;
  /** Maximum of open pairs plus dials in progress; more get 503. `0` is no limit. Default 0. */
  maxConnections?: number;
  /** Maximum of open pairs plus dials in progress from one client IP; more get 503. `0` is no limit. Default 0. */
  maxConnectionsPerIp?: number;
  /**
   * Largest sum of a request's header fields, each counted as name, value
   * and 4 bytes for ": " and CRLF; larger requests get 431. At most Bun's
   * own limit on the whole head. Default 16 KiB.
   */
  maxHeaderBytes?: number;
  /**
   * Messages per second each client may send, with bursts of as many; a
   * client over it is closed with 1008. `0` is off. Default 0.
   */
  rateLimitPerSecond?: number;
  /**
   * Hops on which to negotiate permessage-deflate: `client` (with clients
   * that offer it), `upstream` (offered to the upstream), `both`, or `off`.
   * Each compressing socket costs a zlib stream. Default `off`.
   */
  deflate?: DeflateMode;
  /** Listen with SO_REUSEPORT so several processes can share the port. Default false. */
  reusePort?: boolean;
  /** Destination of log lines. Default: JSON lines on standard error at level info. */
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
  /** Certificate and key read from `tlsCertFile` and `tlsKeyFile`; undefined serves ws://. */
  serverTls: ServerTls | undefined;
  /** The `tls` option of every upstream dial. */
  upstreamTls: UpstreamTls;
  /** Parsed `allowedOrigins`; null allows any origin. */
  allowedOrigins: OriginPolicy | null;
  /** Tokens read from `authTokenFile`; null needs none. */
  authTokens: TokenSet | null;
  maxConnections: number;
  maxConnectionsPerIp: number;
  maxHeaderBytes: number;
  rateLimitPerSecond: number;
  deflate: DeflateMode;
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
  // Shown in errors: a URL may carry a password or a key in its query.
  const shown = text.replace(/\/\/[^/@?#]*@/, "//***@").replace(/\?[^#]*/, "?***");
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(option, shown, `${option}: invalid URL "${shown}"; use ws://HOST:PORT/PATH or wss://...`);
  }
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new ConfigError(
      option,
      shown,
      `${option}: unsupported scheme "${url.protocol}" in "${shown}"; use ws:// or wss://`,
    );
  }
  if (url.hash !== "") {
    throw new ConfigError(option, shown, `${option}: "${shown}" has a fragment, which WebSocket URLs may not have; remove the "#..." part`);
  }
  return url.toString();
}

function checkRange(option: string, value: number, min: number, max: number, shown: string, accepted: string): void {
  if (!Number.isFinite(value) || !Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(option, shown, `${option}: ${shown} is out of range; ${accepted}`);
  }
}

/** Option names used in error messages: the field name, or the CLI flag. */
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
    serverTls: undefined,
    upstreamTls: {},
    allowedOrigins: null,
    authTokens: null,
    maxConnections: options.maxConnections ?? 0,
    maxConnectionsPerIp: options.maxConnectionsPerIp ?? 0,
    // Bun run with a lower --max-http-header-size lowers the default with it.
    maxHeaderBytes: options.maxHeaderBytes ?? Math.min(DEFAULT_MAX_HEADER_BYTES, BUN_MAX_HEADER_BYTES),
    rateLimitPerSecond: options.rateLimitPerSecond ?? 0,
    deflate: options.deflate ?? "off",
    reusePort: options.reusePort ?? false,
    onMessage: options.onMessage,
  };
  validate(resolved, (field) => names[field] ?? field);
  resolved.lowWaterBytes = Math.floor(resolved.highWaterBytes / 4);
  const access = resolveAccess(options, (field) => names[field] ?? field);
  resolved.allowedOrigins = access.allowedOrigins;
  resolved.authTokens = access.authTokens;
  // The TLS files are read last, so a cheaper mistake is reported first.
  const tls = resolveTls(options, resolved.upstream, (field) => names[field] ?? field);
  resolved.serverTls = tls.serverTls;
  resolved.upstreamTls = tls.upstreamTls;
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
  if (!DEFLATE_MODES.includes(o.deflate)) {
    throw new ConfigError(
      name("deflate"),
      String(o.deflate),
      `${name("deflate")}: invalid value "${o.deflate}"; use one of ${DEFLATE_MODES.join(", ")}`,
    );
  }
  const count = `use a whole number from 0 (no limit) to ${MAX_LIMIT_COUNT}`;
  checkRange(name("maxConnections"), o.maxConnections, 0, MAX_LIMIT_COUNT, String(o.maxConnections), count);
  checkRange(name("maxConnectionsPerIp"), o.maxConnectionsPerIp, 0, MAX_LIMIT_COUNT, String(o.maxConnectionsPerIp), count);
  checkRange(name("rateLimitPerSecond"), o.rateLimitPerSecond, 0, MAX_LIMIT_COUNT, `${o.rateLimitPerSecond}/s`, `use 0 (off) or 1/s to ${MAX_LIMIT_COUNT}/s`);
  checkRange(name("maxHeaderBytes"),
    o.maxHeaderBytes,
    1024,
    BUN_MAX_HEADER_BYTES,
    `${o.maxHeaderBytes} bytes`,
    `use 1 KiB to ${BUN_MAX_HEADER_BYTES / 1024} KiB, Bun's own limit on a request head, which the relay cannot raise (bun --max-http-header-size sets it)`,
  );
}

export type { LogFormat, LogLevel };
