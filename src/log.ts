/**
 * Structured logging: one line per pair start and end, one per operator
 * problem. The relay core writes only through these methods; the CLI
 * writes its usage errors and help text directly.
 */

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFormat = "json" | "text";
export type LogFields = Record<string, string | number | boolean | null | undefined>;

const LEVEL_RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** How long repeats of one error kind are folded into a count. */
export const ERROR_REPEAT_WINDOW_MS = 10_000;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  /**
   * Logs an error. Lines with the same `kind` within 10 s are folded: the
   * first is written at once, and when the window ends the last one left
   * out is written with `repeated`, the number of lines left out.
   */
  error(kind: string, msg: string, fields?: LogFields): void;
}

export interface LoggerOptions {
  level?: LogLevel;
  format?: LogFormat;
  /** Where lines go; defaults to standard error. */
  write?: (line: string) => void;
  /** Clock for the repeat window, in ms. */
  now?: () => number;
  /** How long repeats of one error kind are folded, in ms. Default 10 s. */
  repeatWindowMs?: number;
}

interface RepeatState {
  windowStart: number;
  suppressed: number;
  /** The last suppressed line, reported with the count when the window ends. */
  last: { msg: string; fields: LogFields } | null;
  timer: ReturnType<typeof setTimeout> | undefined;
}

function writeStderr(line: string): void {
  process.stderr.write(line);
}

function formatText(level: LogLevel, msg: string, fields: LogFields): string {
  let line = `${new Date().toISOString()} ${level.toUpperCase()} ${msg}`;
  for (const key in fields) {
    const value = fields[key];
    if (value === undefined) continue;
    const text = typeof value === "string" ? JSON.stringify(value) : String(value);
    line += ` ${key}=${text}`;
  }
  return line + "\n";
}

function formatJson(level: LogLevel, msg: string, fields: LogFields): string {
  return JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }) + "\n";
}

/** Creates a logger that writes JSON (default) or `key=value` text lines. */
export function createLogger(options: LoggerOptions = {}): Logger {
  const threshold = LEVEL_RANK[options.level ?? "info"];
  const format = options.format === "text" ? formatText : formatJson;
  const write = options.write ?? writeStderr;
  const now = options.now ?? Date.now;
  const windowMs = options.repeatWindowMs ?? ERROR_REPEAT_WINDOW_MS;
  const repeats = new Map<string, RepeatState>();

  function emit(level: LogLevel, msg: string, fields: LogFields = {}): void {
    if (LEVEL_RANK[level] < threshold) return;
    write(format(level, msg, fields));
  }

  function flush(kind: string, state: RepeatState): void {
    state.timer = undefined;
    if (state.suppressed === 0 || state.last === null) return;
    emit("error", state.last.msg, { kind, ...state.last.fields, repeated: state.suppressed });
    state.suppressed = 0;
    state.last = null;
  }

  function error(kind: string, msg: string, fields: LogFields = {}): void {
    const time = now();
    const state = repeats.get(kind);
    if (state !== undefined && time - state.windowStart < windowMs) {
      state.suppressed++;
      state.last = { msg, fields };
      if (state.timer === undefined) {
        state.timer = setTimeout(() => flush(kind, state), state.windowStart + windowMs - time);
        state.timer.unref?.();
      }
      return;
    }
    if (state !== undefined) {
      clearTimeout(state.timer);
      flush(kind, state);
    }
    repeats.set(kind, { windowStart: time, suppressed: 0, last: null, timer: undefined });
    emit("error", msg, { kind, ...fields });
  }

  return {
    debug: (msg, fields) => emit("debug", msg, fields),
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warn", msg, fields),
    error,
  };
}

/** A logger that drops every line, for embedders that log elsewhere. */
export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

/** Strips credentials and the query from a URL, which may carry tokens. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.username = "";
    parsed.password = "";
    parsed.search = "";
    parsed.hash = "";
    return parsed.toString();
  } catch {
    return "(invalid URL)";
  }
}
