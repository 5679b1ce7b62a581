/**
 * The client's upgrade request and the upstream dial: request checks
 * (RFC 6455 section 4.2.1), the upstream URL and headers, and waiting for the
 * upstream's open with a deadline, since Bun's client has none.
 */

import { describeTlsFailure } from "./tls.ts";

/** The reason a handshake did not reach the 101; `status` is the HTTP status sent to the client. */
export type HandshakeErrorCode =
  | "not_websocket"
  | "method_not_allowed"
  | "bad_request"
  | "unsupported_version"
  | "header_too_large"
  | "origin_not_allowed"
  | "unauthorized"
  | "over_capacity"
  | "upstream_refused"
  | "upstream_tls_failed"
  | "upstream_rejected"
  | "upstream_no_subprotocol"
  | "upstream_timeout"
  | "client_left";

export class HandshakeError extends Error {
  constructor(
    readonly code: HandshakeErrorCode,
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "HandshakeError";
  }

  /** Builds the HTTP response for the client: the status and a one-line body. */
  toResponse(): Response {
    return new Response(`${this.message}\n`, {
      status: this.status,
      headers: { "Content-Type": "text/plain; charset=utf-8", ...this.headers },
    });
  }
}

const WEBSOCKET_VERSION = "13";

function hasToken(header: string | null, token: string): boolean {
  if (header === null) return false;
  return header.split(",").some((part) => part.trim().toLowerCase() === token);
}

/** Returns the error that an upgrade request deserves, or null for a valid one. */
export function checkUpgradeRequest(req: Request): HandshakeError | null {
  const headers = req.headers;
  if (!hasToken(headers.get("upgrade"), "websocket")) {
    return new HandshakeError(
      "not_websocket",
      426,
      "this is a WebSocket relay; connect with a WebSocket client (Upgrade: websocket)",
      { Upgrade: "websocket" },
    );
  }
  if (req.method !== "GET") {
    return new HandshakeError(
      "method_not_allowed",
      405,
      `a WebSocket upgrade must use GET, not ${req.method}`,
      { Allow: "GET" },
    );
  }
  if (!hasToken(headers.get("connection"), "upgrade")) {
    return new HandshakeError("bad_request", 400, "the upgrade request lacks Connection: Upgrade");
  }
  const version = headers.get("sec-websocket-version");
  if (version?.trim() !== WEBSOCKET_VERSION) {
    return new HandshakeError(
      "unsupported_version",
      426,
      `unsupported Sec-WebSocket-Version "${version ?? ""}"; only 13 is supported`,
      { "Sec-WebSocket-Version": WEBSOCKET_VERSION },
    );
  }
  const key = headers.get("sec-websocket-key")?.trim() ?? "";
  if (!/^[A-Za-z0-9+/]{22}==$/.test(key)) {
    return new HandshakeError(
      "bad_request",
      400,
      "Sec-WebSocket-Key is missing or is not 16 bytes in base64",
    );
  }
  return null;
}

/**
 * Builds the upstream URL: the client's path appended to the upstream's path,
 * and both queries joined. A request for `/` maps to the upstream path as
 * given. Client parameters whose names the upstream URL already sets are
 * dropped, so a client cannot override what the operator configured.
 */
export function upstreamUrl(base: URL, requestUrl: string): string {
  const request = new URL(requestUrl, "http://relay.invalid");
  let path: string;
  if (request.pathname === "/") {
    path = base.pathname;
  } else {
    const basePath = base.pathname.endsWith("/") ? base.pathname.slice(0, -1) : base.pathname;
    path = basePath + request.pathname;
  }
  const fixed = new Set(base.searchParams.keys());
  const clientQuery = request.search
    .slice(1)
    .split("&")
    .filter((pair) => pair !== "" && !fixed.has(decodeQueryName(pair)))
    .join("&");
  const queries = [base.search.slice(1), clientQuery].filter((q) => q !== "");
  const query = queries.length > 0 ? `?${queries.join("&")}` : "";
  // Bun's client sends the URL's user info as Basic authorization, so it is kept.
  const userInfo = base.password === "" ? base.username : `${base.username}:${base.password}`;
  const auth = userInfo === "" ? "" : `${userInfo}@`;
  return `${base.protocol}//${auth}${base.host}${path}${query}`;
}

function decodeQueryName(pair: string): string {
  const name = pair.split("=")[0] ?? "";
  try {
    return decodeURIComponent(name.replaceAll("+", " "));
  } catch {
    return name;
  }
}

/**
 * Headers that describe one hop and are never forwarded (RFC 9110 section
 * 7.6.1), plus the WebSocket handshake fields that each leg negotiates on
 * its own. The subprotocol offer is forwarded, through the client's
 * `protocols` option.
 */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authorization",
  "proxy-authenticate",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host",
  "content-length",
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-extensions",
  "sec-websocket-protocol",
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  // Client identity headers that a client could forge; the relay sets
  // X-Forwarded-* instead.
  "forwarded",
  "x-real-ip",
]);

/**
 * Returns the headers for the upstream request: end-to-end headers of the
 * client's request, and X-Forwarded-For (extended), -Proto and -Host (set).
 */
export function forwardedHeaders(req: Request, clientIp: string, secure: boolean): Record<string, string> {
  const dropped = new Set(HOP_BY_HOP);
  for (const name of (req.headers.get("connection") ?? "").split(",")) {
    dropped.add(name.trim().toLowerCase());
  }
  const out: Record<string, string> = {};
  req.headers.forEach((value, name) => {
    if (!dropped.has(name)) out[name] = value;
  });
  const priorFor = req.headers.get("x-forwarded-for");
  const forwardedFor = priorFor !== null && priorFor.trim() !== "" ? `${priorFor}, ${clientIp}` : clientIp;
  if (clientIp !== "") out["x-forwarded-for"] = forwardedFor;
  out["x-forwarded-proto"] = secure ? "https" : "http";
  const host = req.headers.get("host");
  if (host !== null) out["x-forwarded-host"] = host;
  return out;
}

/** Splits a Sec-WebSocket-Protocol header into the offered subprotocols. */
export function offeredProtocols(header: string | null): string[] {
  if (header === null) return [];
  return header
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p !== "");
}

/**
 * Waits for `upstream` to open. Rejects with a `HandshakeError`: 504 past
 * `timeoutMs` (the socket is terminated), the upstream's own 4xx status when
 * Bun reports one, 502 for any other failure, and `client_left` when
 * `signal` aborts first.
 */
export function waitForOpen(upstream: WebSocket, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      settle(new HandshakeError("upstream_timeout", 504, `upstream did not complete its handshake within ${timeoutMs} ms`));
      upstream.terminate();
    }, timeoutMs);
    const onOpen = (): void => settle(null);
    const onError = (event: Event): void => {
      // Bun 1.4.4 puts an OpenSSL-style code (CERT_HAS_EXPIRED, say) on the error of a TLS failure.
      const errorEvent = event as ErrorEvent;
      const code = (errorEvent.error as NodeJS.ErrnoException | undefined)?.code;
      settle(dialError(errorEvent.message ?? "", code));
    };
    const onClose = (event: CloseEvent): void =>
      settle(new HandshakeError("upstream_refused", 502, `upstream closed during its handshake (code ${event.code})`));
    const onAbort = (): void => {
      settle(new HandshakeError("client_left", 499, "client disconnected before the upstream opened"));
      upstream.terminate();
    };

    function settle(error: HandshakeError | null): void {
      clearTimeout(timer);
      upstream.removeEventListener("open", onOpen);
      upstream.removeEventListener("error", onError);
      upstream.removeEventListener("close", onClose);
      signal?.removeEventListener("abort", onAbort);
      if (error === null) resolve();
      else reject(error);
    }

    upstream.addEventListener("open", onOpen);
    upstream.addEventListener("error", onError);
    upstream.addEventListener("close", onClose);
    if (signal?.aborted === true) onAbort();
    else signal?.addEventListener("abort", onAbort);
  });
}

/**
 * Removes the URL from a Bun client error message ("WebSocket connection to
 * 'ws://...' failed: reason"), since the URL's query may carry a token.
 */
export function errorDetail(message: string): string {
  return message.replace(/^WebSocket connection to '[^']*' failed: /, "").replace(/wss?:\/\/\S+/g, "(url)");
}

/** Maps Bun's dial error text to the HTTP status and message for the client. */
function dialError(message: string, code?: string): HandshakeError {
  // Bun 1.4.4 reports a non-101 response only in the text: "... Expected 101 status code: 403".
  const status = Number(/Expected 101 status code: (\d{3})/.exec(message)?.[1]);
  if (status >= 400 && status <= 499) {
    return new HandshakeError("upstream_rejected", status, `upstream rejected the handshake with ${status}`);
  }
  const detail = errorDetail(message);
  if (detail === "Missing client protocol") {
    return new HandshakeError(
      "upstream_no_subprotocol",
      502,
      "upstream accepted none of the offered subprotocols",
    );
  }
  const tlsFailure = describeTlsFailure(detail, code);
  if (tlsFailure !== null) return new HandshakeError("upstream_tls_failed", 502, tlsFailure);
  return new HandshakeError("upstream_refused", 502, `upstream handshake failed: ${detail || "unknown error"}`);
}
