/**
 * Command-line options: flags, their `WSBRIDGE_*` environment twins, help
 * text and parsing. Flags win over the environment.
 */

import {
  ConfigError,
  DEFLATE_MODES,
  DEFAULT_DIAL_TIMEOUT_MS,
  DEFAULT_HIGH_WATER_BYTES,
  DEFAULT_MAX_HEADER_BYTES,
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_PONG_TIMEOUT_MS,
  DEFAULT_SHUTDOWN_GRACE_MS,
  DEFAULT_TCP_KEEPALIVE_MS,
  type OptionNames,
  type RelayOptions,
  parseDuration,
  parseListen,
  parseSize,
  parseUpstream,
} from "./config.ts";
import { parseCount, parseRate } from "./limits.ts";
import type { LogFormat, LogLevel } from "./log.ts";

/** The parsed command line: what to do and with which options. */
export interface CommandLine {
  action: "run" | "help" | "version";
  relay: RelayOptions;
  logLevel: LogLevel;
  logFormat: LogFormat;
  /** Admin listener address, or null when off. */
  admin: { hostname: string; port: number } | null;
  /** Relay processes to run; 1 runs the relay in this process. */
  workers: number;
}

interface FlagSpec {
  flag: string;
  value: string;
  defaultText: string;
  help: string;
  /** True for an on/off flag that takes no value: `--flag` is `--flag=true`. */
  isSwitch?: boolean;
  apply(line: CommandLine, text: string, flag: string): void;
}

const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];
const LOG_FORMATS: readonly LogFormat[] = ["json", "text"];

function oneOf<T extends string>(flag: string, text: string, allowed: readonly T[]): T {
  if ((allowed as readonly string[]).includes(text)) return text as T;
  throw new ConfigError(flag, text, `${flag}: invalid value "${text}"; use one of ${allowed.join(", ")}`);
}

/** Parses the value of an on/off flag or its environment twin. */
function parseSwitch(flag: string, text: string): boolean {
  if (text === "true" || text === "1") return true;
  if (text === "false" || text === "0") return false;
  throw new ConfigError(flag, text, `${flag}: invalid value "${text}"; use true or 1 to turn it on, false or 0 to leave it off`);
}

/** Most worker processes accepted; far more than cores only adds scheduling. */
export const MAX_WORKERS = 256;

/** Parses `--workers`: a count from 1 to 256, or `auto` for one per core. */
export function parseWorkers(flag: string, text: string): number {
  if (text === "auto") return Math.max(1, navigator.hardwareConcurrency);
  const count = Number(text);
  if (!/^\d+$/.test(text) || count < 1 || count > MAX_WORKERS) {
    throw new ConfigError(flag, text, `${flag}: invalid value "${text}"; use a count from 1 to ${MAX_WORKERS}, or auto`);
  }
  return count;
}

const FLAGS: FlagSpec[] = [
  {
    flag: "--listen",
    value: "HOST:PORT",
    defaultText: "127.0.0.1:8080",
    help: "address for clients; :PORT listens on all IPv4 addresses, port 0 picks a free one",
    apply(line, text, flag) {
      const { hostname, port } = parseListen(flag, text);
      line.relay.hostname = hostname;
      line.relay.port = port;
    },
  },
  {
    flag: "--tls-cert",
    value: "FILE",
    defaultText: "off (ws://)",
    help: "PEM certificate chain, leaf first, to serve wss:// with; needs --tls-key",
    apply(line, text) {
      line.relay.tlsCertFile = text;
    },
  },
  {
    flag: "--tls-key",
    value: "FILE",
    defaultText: "off (ws://)",
    help: "unencrypted PEM private key of --tls-cert",
    apply(line, text) {
      line.relay.tlsKeyFile = text;
    },
  },
  {
    flag: "--upstream",
    value: "URL",
    defaultText: "built-in echo",
    help: "ws:// or wss:// server to relay to; the client's path and query are appended",
    apply(line, text, flag) {
      line.relay.upstream = parseUpstream(flag, text);
    },
  },
  {
    flag: "--upstream-ca",
    value: "FILE",
    defaultText: "system and Bun's bundled CAs",
    help: "PEM bundle of the CA certificates that a wss:// upstream's certificate must chain to; replaces the default CAs",
    apply(line, text) {
      line.relay.upstreamCaFile = text;
    },
  },
  {
    flag: "--upstream-insecure",
    value: "",
    defaultText: "off",
    help: "accept any certificate from a wss:// upstream, verifying nothing; logs a warning at start; the env twin takes true or 1",
    isSwitch: true,
    apply(line, text, flag) {
      line.relay.upstreamInsecure = parseSwitch(flag, text);
    },
  },
  {
    flag: "--dial-timeout",
    value: "DURATION",
    defaultText: `${DEFAULT_DIAL_TIMEOUT_MS / 1000}s`,
    help: "time the upstream has to accept the handshake; past it the client gets 504",
    apply(line, text, flag) {
      line.relay.dialTimeoutMs = parseDuration(flag, text);
    },
  },
  {
    flag: "--ping-interval",
    value: "DURATION",
    defaultText: `${DEFAULT_PING_INTERVAL_MS / 1000}s`,
    help: "period of the ws ping sent to both sides; 0 turns pings off",
    apply(line, text, flag) {
      line.relay.pingIntervalMs = parseDuration(flag, text);
    },
  },
  {
    flag: "--pong-timeout",
    value: "DURATION",
    defaultText: `${DEFAULT_PONG_TIMEOUT_MS / 1000}s`,
    help: "time a side has to send a pong (or any frame) after a ping before the pair is closed",
    apply(line, text, flag) {
      line.relay.pongTimeoutMs = parseDuration(flag, text);
    },
  },
  {
    flag: "--tcp-keepalive",
    value: "DURATION",
    defaultText: `${DEFAULT_TCP_KEEPALIVE_MS / 1000}s`,
    help: "TCP keepalive idle time and probe interval on accepted sockets, whole seconds; 0 is off",
    apply(line, text, flag) {
      line.relay.tcpKeepAliveMs = parseDuration(flag, text);
    },
  },
  {
    flag: "--max-message",
    value: "SIZE",
    defaultText: `${DEFAULT_MAX_MESSAGE_BYTES / 1024 / 1024}MiB`,
    help: "largest message either side may send; larger ones close the sender with 1009",
    apply(line, text, flag) {
      line.relay.maxMessageBytes = parseSize(flag, text);
    },
  },
  {
    flag: "--high-water",
    value: "SIZE",
    defaultText: `${DEFAULT_HIGH_WATER_BYTES / 1024 / 1024}MiB`,
    help: "bytes queued toward one side before the relay stops reading the other; resumes at a quarter",
    apply(line, text, flag) {
      line.relay.highWaterBytes = parseSize(flag, text);
    },
  },
  {
    flag: "--allow-origin",
    value: "LIST",
    defaultText: "any origin",
    help: "comma-separated origins (https://app.example.com) and patterns (https://*.example.com) whose browsers may connect; others get 403; add require-origin to turn away requests without Origin",
    apply(line, text) {
      line.relay.allowedOrigins = text.split(",");
    },
  },
  {
    flag: "--auth-token-file",
    value: "FILE",
    defaultText: "off",
    help: "file of bearer tokens, one a line; clients must send one as Authorization: Bearer TOKEN or ?token=TOKEN, or get 401",
    apply(line, text) {
      line.relay.authTokenFile = text;
    },
  },
  {
    flag: "--max-connections",
    value: "N",
    defaultText: "0 (no limit)",
    help: "maximum of open pairs plus dials in progress; more get 503 with Retry-After: 1",
    apply(line, text, flag) {
      line.relay.maxConnections = parseCount(flag, text);
    },
  },
  {
    flag: "--max-connections-per-ip",
    value: "N",
    defaultText: "0 (no limit)",
    help: "maximum of open pairs plus dials in progress from one client IP (the TCP peer, not X-Forwarded-For); more get 503",
    apply(line, text, flag) {
      line.relay.maxConnectionsPerIp = parseCount(flag, text);
    },
  },
  {
    flag: "--max-header-size",
    value: "SIZE",
    defaultText: `${DEFAULT_MAX_HEADER_BYTES / 1024}KiB`,
    help: "largest sum of header fields (name, value and 4 bytes each); larger requests get 431; at most Bun's own limit",
    apply(line, text, flag) {
      line.relay.maxHeaderBytes = parseSize(flag, text);
    },
  },
  {
    flag: "--rate-limit",
    value: "N/s",
    defaultText: "off",
    help: "messages per second each client may send, with bursts of N; a faster client is closed with 1008; 0 is off",
    apply(line, text, flag) {
      line.relay.rateLimitPerSecond = parseRate(flag, text);
    },
  },
  {
    flag: "--shutdown-grace",
    value: "DURATION",
    defaultText: `${DEFAULT_SHUTDOWN_GRACE_MS / 1000}s`,
    help: "on SIGTERM or SIGINT, time pairs get to end before they are closed with 1001",
    apply(line, text, flag) {
      line.relay.shutdownGraceMs = parseDuration(flag, text);
    },
  },
  {
    flag: "--deflate",
    value: "MODE",
    defaultText: "off",
    help: "permessage-deflate compression on the client hop, the upstream hop or both: off, client, upstream, both",
    apply(line, text, flag) {
      line.relay.deflate = oneOf(flag, text, DEFLATE_MODES);
    },
  },
  {
    flag: "--admin",
    value: "HOST:PORT",
    defaultText: "off",
    help: "address for /healthz, /readyz and /metrics (Prometheus); keep it off the public network",
    apply(line, text, flag) {
      line.admin = parseListen(flag, text);
    },
  },
  {
    flag: "--workers",
    value: "N",
    defaultText: "1",
    help: `relay processes sharing the port (SO_REUSEPORT); "auto" is one per core (${navigator.hardwareConcurrency} here)`,
    apply(line, text, flag) {
      line.workers = parseWorkers(flag, text);
    },
  },
  {
    flag: "--log-level",
    value: "LEVEL",
    defaultText: "info",
    help: `minimum level of the lines written: ${LOG_LEVELS.join(", ")}`,
    apply(line, text, flag) {
      line.logLevel = oneOf(flag, text, LOG_LEVELS);
    },
  },
  {
    flag: "--log-format",
    value: "FORMAT",
    defaultText: "json",
    help: `log line format: ${LOG_FORMATS.join(", ")}`,
    apply(line, text, flag) {
      line.logFormat = oneOf(flag, text, LOG_FORMATS);
    },
  },
];

/** CLI flag for each relay option, so validation errors name the flag. */
export const FLAG_NAMES: OptionNames = {
  port: "--listen",
  upstream: "--upstream",
  tlsCertFile: "--tls-cert",
  tlsKeyFile: "--tls-key",
  upstreamCaFile: "--upstream-ca",
  upstreamInsecure: "--upstream-insecure",
  dialTimeoutMs: "--dial-timeout",
  pingIntervalMs: "--ping-interval",
  pongTimeoutMs: "--pong-timeout",
  tcpKeepAliveMs: "--tcp-keepalive",
  maxMessageBytes: "--max-message",
  highWaterBytes: "--high-water",
  allowedOrigins: "--allow-origin",
  authTokenFile: "--auth-token-file",
  maxConnections: "--max-connections",
  maxConnectionsPerIp: "--max-connections-per-ip",
  maxHeaderBytes: "--max-header-size",
  rateLimitPerSecond: "--rate-limit",
  shutdownGraceMs: "--shutdown-grace",
  deflate: "--deflate",
};

/** `--max-message` -> `WSBRIDGE_MAX_MESSAGE` */
export function envName(flag: string): string {
  return `WSBRIDGE_${flag.slice(2).toUpperCase().replaceAll("-", "_")}`;
}

/** Builds the `--help` text from the flag table. */
export function helpText(): string {
  const rows = FLAGS.map((spec) => {
    const left = `  ${spec.flag} ${spec.value}`;
    // A left column too long for the padding gets its help on the next line.
    const head = left.length < 28 ? left.padEnd(28) : `${left}\n${" ".repeat(28)}`;
    return `${head}${spec.help}\n${" ".repeat(28)}default ${spec.defaultText}; env ${envName(spec.flag)}`;
  });
  return [
    "wsbridge: a WebSocket relay that forwards every message unchanged",
    "",
    "Usage: wsbridge [options]",
    "",
    "Options:",
    ...rows,
    `  ${"-h, --help".padEnd(26)}print this help and exit`,
    `  ${"--version".padEnd(26)}print the version and exit`,
    "",
    "Durations take ms, s or m (10s); sizes take B, KiB, MiB or GiB (16MiB).",
    "With no --upstream, a built-in echo server is started and used as the upstream.",
    "",
  ].join("\n");
}

/**
 * Parses flags (`--flag VALUE`, `--flag=VALUE`, or `--flag` alone for a
 * switch) over the environment; throws `ConfigError`.
 */
export function parseCommandLine(argv: string[], env: Record<string, string | undefined>): CommandLine {
  const line: CommandLine = { action: "run", relay: {}, logLevel: "info", logFormat: "json", admin: null, workers: 1 };
  // Help and version win over any bad value, so they are looked for first.
  for (const arg of argv) {
    if (arg === "-h" || arg === "--help") return { ...line, action: "help" };
    if (arg === "--version") return { ...line, action: "version" };
  }
  // A flag wins over its variable, so a variable that a flag overrides is not parsed.
  const given = new Set(argv.map((arg) => (arg.indexOf("=") > 0 ? arg.slice(0, arg.indexOf("=")) : arg)));
  for (const spec of FLAGS) {
    const text = env[envName(spec.flag)];
    if (text !== undefined && text !== "" && !given.has(spec.flag)) spec.apply(line, text, envName(spec.flag));
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const eq = arg.indexOf("=");
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const spec = FLAGS.find((s) => s.flag === flag);
    if (spec === undefined) {
      throw new ConfigError(arg, arg, `unknown option "${arg}"; run with --help to list the options`);
    }
    let text: string | undefined;
    if (eq > 0) text = arg.slice(eq + 1);
    else if (spec.isSwitch === true) text = "true";
    else text = argv[++i];
    if (text === undefined) {
      throw new ConfigError(flag, "", `${flag}: missing value; expected ${spec.value}, e.g. ${spec.flag} ${spec.defaultText}`);
    }
    spec.apply(line, text, flag);
  }
  return line;
}
