/**
 * Access control for upgrade requests: allowed origins, bearer tokens,
 * header size and connection slots, checked in that order before the relay
 * dials the upstream.
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { ConfigError } from "./config.ts";
import { HandshakeError } from "./handshake.ts";
import { type ConnectionLimiter, type ConnectionSlot, headerBytes } from "./limits.ts";
import type { Logger } from "./log.ts";
import { READ_ERROR_REASONS } from "./tls.ts";

/** An invalid access option; `value` is the part at fault, never a token. */
export class InvalidAccessOption extends Error {
  constructor(
    readonly value: string,
    message: string,
  ) {
    super(message);
    this.name = "InvalidAccessOption";
  }
}

/** The `--allow-origin` entry that turns away requests without an Origin header. */
export const REQUIRE_ORIGIN = "require-origin";

/** The longest Origin value copied into a log line. */
const MAX_LOGGED_ORIGIN = 200;

/**
 * Headers sent with every rejection. Bun 1.4.4 then closes the connection
 * right after the response instead of keeping it for its 10 s idle
 * timeout, so a rejected client keeps no socket open that the connection
 * limits cannot count.
 */
const CLOSE = { Connection: "close" } as const;

interface ParsedOrigin {
  scheme: string;
  host: string;
  /** The port as written, or "" for the scheme's default port. */
  port: string;
}

/**
 * Parses `scheme://host[:port]` as browsers serialize an origin. The WHATWG
 * URL parser lower-cases the scheme and host, turns Unicode hosts into
 * punycode and drops default ports, so equal origins compare equal.
 */
function parseOrigin(text: string): ParsedOrigin | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  const hasExtra = url.username !== "" || url.password !== "" || url.search !== "" || url.hash !== "";
  if (hasExtra || (url.pathname !== "/" && url.pathname !== "") || url.hostname === "" || url.hostname.includes("*")) {
    return null;
  }
  return { scheme: url.protocol.slice(0, -1), host: url.hostname, port: url.port };
}

function originKey(origin: ParsedOrigin): string {
  return origin.port === "" ? `${origin.scheme}://${origin.host}` : `${origin.scheme}://${origin.host}:${origin.port}`;
}

interface OriginPattern {
  scheme: string;
  /** ".example.com" for `*.example.com`. */
  suffix: string;
  port: string;
}

/** Allowed origins: exact ones, `*.` patterns, and whether an Origin header is required. */
export class OriginPolicy {
  private readonly exact = new Set<string>();
  private readonly patterns: OriginPattern[] = [];
  requireOrigin = false;

  /**
   * Builds the policy from `--allow-origin` entries. Throws
   * `InvalidAccessOption` for an entry that is neither an origin, a
   * `scheme://*.domain[:port]` pattern, `null` nor `require-origin`.
   */
  constructor(entries: readonly string[]) {
    for (const raw of entries) {
      const entry = raw.trim();
      if (entry === "") continue;
      if (entry === REQUIRE_ORIGIN) {
        this.requireOrigin = true;
      } else if (entry === "null") {
        // Browsers send "null" from sandboxed frames and file: pages.
        this.exact.add("null");
      } else {
        this.addEntry(entry);
      }
    }
    if (this.exact.size === 0 && this.patterns.length === 0) {
      throw new InvalidAccessOption(
        entries.join(","),
        `no origin listed; give origins such as https://app.example.com or https://*.example.com, separated by commas (leave the option out to allow any origin)`,
      );
    }
  }

  /** Reports whether a request with this Origin header value (null: none) may connect. */
  allows(origin: string | null): boolean {
    if (origin === null) return !this.requireOrigin;
    if (this.exact.has(origin)) return true;
    const parsed = parseOrigin(origin);
    if (parsed === null) return false;
    if (this.exact.has(originKey(parsed))) return true;
    return this.patterns.some((pattern) => matchesPattern(pattern, parsed));
  }

  private addEntry(entry: string): void {
    const wildcard = /^([a-zA-Z][a-zA-Z0-9+.-]*:\/\/)\*\.(.*)$/.exec(entry);
    const parsed = parseOrigin(wildcard === null ? entry : `${wildcard[1]}${wildcard[2]}`);
    const isIpHost = parsed !== null && (parsed.host.startsWith("[") || /^[\d.]+$/.test(parsed.host));
    if (parsed === null || (wildcard !== null && isIpHost)) {
      throw new InvalidAccessOption(
        entry,
        `invalid origin "${entry}"; use scheme://host[:port] such as https://app.example.com, a pattern such as https://*.example.com, null or ${REQUIRE_ORIGIN}`,
      );
    }
    if (wildcard === null) this.exact.add(originKey(parsed));
    else this.patterns.push({ scheme: parsed.scheme, suffix: `.${parsed.host}`, port: parsed.port });
  }
}

/** `*.example.com` matches one or more labels before `.example.com`, never `example.com` itself. */
function matchesPattern(pattern: OriginPattern, origin: ParsedOrigin): boolean {
  if (origin.scheme !== pattern.scheme || origin.port !== pattern.port) return false;
  if (!origin.host.endsWith(pattern.suffix)) return false;
  const labels = origin.host.slice(0, -pattern.suffix.length);
  return labels !== "" && labels.split(".").every((label) => label !== "");
}

/** token68 of RFC 7235, the syntax of a Bearer credential (RFC 6750 section 2.1). */
const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*$/;

function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

/**
 * The relay's bearer tokens, kept as SHA-256 digests so that every
 * comparison is between equal-length buffers.
 */
export class TokenSet {
  private readonly digests: Buffer[];

  /** Builds the set from the tokens; throws `InvalidAccessOption` when there are none. */
  constructor(tokens: readonly string[]) {
    const unique = new Set(tokens);
    if (unique.size === 0) throw new InvalidAccessOption("", "no token given");
    this.digests = [...unique].map(sha256);
  }

  /**
   * Reads tokens from a file, one a line; blank lines and whitespace around
   * a token are ignored. Errors name the file and the line, never a token.
   */
  static fromFile(path: string): TokenSet {
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      const reason = (code !== undefined ? READ_ERROR_REASONS[code] : undefined) ?? code ?? (error as Error).message;
      throw new InvalidAccessOption(path, `cannot read "${path}" (${reason}); give a readable file with one token per line`);
    }
    const tokens: string[] = [];
    const lines = text.split(/\r?\n/);
    for (let i = 0; i < lines.length; i++) {
      const token = (lines[i] as string).trim();
      if (token === "") continue;
      if (!TOKEN68.test(token)) {
        throw new InvalidAccessOption(
          path,
          `line ${i + 1} of "${path}" is not a valid bearer token; use letters, digits and - . _ ~ + / with optional trailing =`,
        );
      }
      tokens.push(token);
    }
    if (tokens.length === 0) {
      throw new InvalidAccessOption(path, `"${path}" contains no token; put one token per line`);
    }
    return new TokenSet(tokens);
  }

  /**
   * Reports whether `candidate` is one of the tokens. It hashes the
   * candidate and compares the digest with every token's digest in
   * constant time, without stopping at a match.
   */
  has(candidate: string): boolean {
    const digest = sha256(candidate);
    let found = false;
    for (const known of this.digests) {
      if (timingSafeEqual(digest, known)) found = true;
    }
    return found;
  }
}

/** Returns the credential of `Authorization: Bearer TOKEN`, or null for any other value. */
export function bearerToken(authorization: string | null): string | null {
  if (authorization === null) return null;
  const match = /^\s*bearer +(\S+)\s*$/i.exec(authorization);
  return match?.[1] ?? null;
}

function queryName(pair: string): string {
  const name = pair.split("=")[0] ?? "";
  try {
    return decodeURIComponent(name.replaceAll("+", " "));
  } catch {
    return name;
  }
}

/**
 * Returns the values of query parameter `name` in `url`, and `url` without
 * that parameter; the other parameters keep their encoding and order.
 */
export function takeQueryParameter(url: string, name: string): { values: string[]; url: string } {
  const mark = url.indexOf("?");
  if (mark < 0) return { values: [], url };
  const kept: string[] = [];
  const values: string[] = [];
  for (const pair of url.slice(mark + 1).split("&")) {
    if (pair === "") continue;
    if (queryName(pair) !== name) {
      kept.push(pair);
      continue;
    }
    const raw = pair.includes("=") ? pair.slice(pair.indexOf("=") + 1) : "";
    try {
      values.push(decodeURIComponent(raw.replaceAll("+", " ")));
    } catch {
      values.push(raw);
    }
  }
  const base = url.slice(0, mark);
  return { values, url: kept.length === 0 ? base : `${base}?${kept.join("&")}` };
}

/**
 * Builds the origin policy and reads the token file of `options`; throws
 * `ConfigError` naming the option as `name` spells it.
 */
export function resolveAccess(
  options: { allowedOrigins?: readonly string[]; authTokenFile?: string },
  name: (field: "allowedOrigins" | "authTokenFile") => string,
): { allowedOrigins: OriginPolicy | null; authTokens: TokenSet | null } {
  const origins = options.allowedOrigins;
  const tokenFile = options.authTokenFile;
  return {
    allowedOrigins: origins === undefined ? null : asConfigError(name("allowedOrigins"), () => new OriginPolicy(origins)),
    authTokens: tokenFile === undefined ? null : asConfigError(name("authTokenFile"), () => TokenSet.fromFile(tokenFile)),
  };
}

function asConfigError<T>(option: string, build: () => T): T {
  try {
    return build();
  } catch (error) {
    if (!(error instanceof InvalidAccessOption)) throw error;
    throw new ConfigError(option, error.value, `${option}: ${error.message}`);
  }
}

/** The access options of a relay, resolved and checked. */
export interface AccessOptions {
  allowedOrigins: OriginPolicy | null;
  authTokens: TokenSet | null;
  maxHeaderBytes: number;
}

/** An admitted upgrade request: what to forward, and the connection slot it holds. */
export class Admission {
  constructor(
    /** The request URL to relay, without the relay's `token` query parameter. */
    readonly url: string,
    private readonly dropAuthorization: boolean,
    private slot: ConnectionSlot | null,
  ) {}

  /** Deletes the relay's own credential from headers bound for the upstream. */
  stripCredentials(headers: Record<string, string>): void {
    if (this.dropAuthorization) delete headers.authorization;
  }

  /** Gives the connection slot back; later calls do nothing. */
  release(): void {
    this.slot?.release();
    this.slot = null;
  }
}

/**
 * Decides whether an upgrade request may reach the upstream. Each rejection
 * is logged through `logger.error`, whose repeats of one kind within 10 s
 * are folded into one line, so a flood of bad requests stays a few lines.
 */
export class AccessControl {
  constructor(
    private readonly options: AccessOptions,
    private readonly limiter: ConnectionLimiter | null,
    private readonly logger: Logger,
  ) {}

  /**
   * Checks header size (431), origin (403), token (401) and connection
   * limits (503, with `Retry-After: 1`), in that order. Returns the
   * admission, which keeps a connection slot until released, or the error
   * to respond with.
   */
  admit(req: Request, clientIp: string, clientAddress: string): Admission | HandshakeError {
    const { allowedOrigins, authTokens, maxHeaderBytes } = this.options;
    const size = headerBytes(req.headers);
    if (size > maxHeaderBytes) {
      this.logger.error("header_too_large", "request headers over the size limit; rejected with 431", {
        client: clientAddress,
        header_bytes: size,
        max_header_bytes: maxHeaderBytes,
      });
      const message = `request header fields total ${size} bytes, over the ${maxHeaderBytes}-byte limit`;
      return new HandshakeError("header_too_large", 431, message, CLOSE);
    }
    if (allowedOrigins !== null) {
      const origin = req.headers.get("origin");
      if (!allowedOrigins.allows(origin)) {
        this.logger.error("origin_rejected", "origin not allowed; rejected with 403", {
          client: clientAddress,
          origin: origin === null ? null : origin.slice(0, MAX_LOGGED_ORIGIN),
        });
        const message = origin === null ? "an Origin header is required" : "origin not allowed";
        return new HandshakeError("origin_not_allowed", 403, message, CLOSE);
      }
    }
    let url = req.url;
    let dropAuthorization = false;
    if (authTokens !== null) {
      const query = takeQueryParameter(req.url, "token");
      url = query.url;
      const headerToken = bearerToken(req.headers.get("authorization"));
      dropAuthorization = headerToken !== null && authTokens.has(headerToken);
      const queryAccepted = query.values.some((value) => authTokens.has(value));
      if (!dropAuthorization && !queryAccepted) {
        let presented = "none";
        if (headerToken !== null) presented = "authorization";
        else if (query.values.length > 0) presented = "query";
        this.logger.error("unauthorized", "missing or unknown token; rejected with 401", { client: clientAddress, presented });
        return new HandshakeError("unauthorized", 401, "a valid bearer token is required", { ...CLOSE, "WWW-Authenticate": "Bearer" });
      }
    }
    let slot: ConnectionSlot | null = null;
    if (this.limiter !== null) {
      const acquired = this.limiter.acquire(clientIp);
      if (typeof acquired === "string") return this.overCapacity(acquired, clientAddress);
      slot = acquired;
    }
    return new Admission(url, dropAuthorization, slot);
  }

  private overCapacity(limit: "max_connections" | "max_connections_per_ip", clientAddress: string): HandshakeError {
    const limiter = this.limiter as ConnectionLimiter;
    const perIp = limit === "max_connections_per_ip";
    const max = perIp ? limiter.maxConnectionsPerIp : limiter.maxConnections;
    const what = perIp ? "connections from this address" : "connections";
    this.logger.error(limit, `${what} at the limit of ${max}; rejected with 503`, { client: clientAddress, max });
    return new HandshakeError("over_capacity", 503, `too many ${what}; retry later`, { ...CLOSE, "Retry-After": "1" });
  }
}
