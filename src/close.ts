/**
 * Close codes and how a close on one leg of a pair is passed to the other.
 *
 * Both Bun APIs report a lost connection and every protocol error that Bun
 * detects itself as 1006, telling them apart only by the reason text, so the
 * mapping below reads that text. The strings are Bun 1.4.4's own.
 */

/** Close codes with a fixed meaning (RFC 6455 section 7.4.1, IANA registry). */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  /** Never on the wire: the close frame carried no status code. */
  NO_STATUS: 1005,
  /** Never on the wire: the connection ended without a close frame. */
  ABNORMAL: 1006,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  /** Sent by a gateway whose upstream sent an invalid response or went away. */
  BAD_GATEWAY: 1014,
  /** Never on the wire: the TLS handshake failed. */
  TLS_HANDSHAKE: 1015,
} as const;

/** Maximum close reason that fits a control frame: 125 bytes less the 2-byte code. */
export const MAX_REASON_BYTES = 123;

/** Why a pair ended: one value per pair, in its end log line and in the stats. */
export type EndCause =
  | "client_closed"
  | "upstream_closed"
  | "client_lost"
  | "upstream_lost"
  | "client_timed_out"
  | "upstream_timed_out"
  | "message_too_big"
  | "invalid_payload"
  | "protocol_error"
  | "rate_limited"
  | "shutdown";

/** The close to send to the surviving leg: a code and reason, or `code: undefined` for no status. */
export interface CloseAction {
  code: number | undefined;
  reason: string;
  cause: EndCause;
}

/**
 * Reports whether an endpoint may put `code` in a close frame. Bun's client
 * throws on any other code and Bun's server sends it verbatim, which a
 * conforming peer then rejects, so every code is checked before `close()`.
 */
export function isSendableCloseCode(code: number): boolean {
  if (code >= 3000 && code <= 4999) return true;
  return code >= 1000 && code <= 1014 && (code < 1004 || code > 1006);
}

/** Cuts `reason` to at most 123 UTF-8 bytes without splitting a character. */
export function clampReason(reason: string): string {
  if (reason.length * 3 <= MAX_REASON_BYTES) return reason;
  const bytes = Buffer.from(reason, "utf8");
  if (bytes.length <= MAX_REASON_BYTES) return reason;
  let end = MAX_REASON_BYTES;
  // Step back over continuation bytes (10xxxxxx) to a character boundary.
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end).toString("utf8");
}

// Reasons that Bun 1.4.4 puts beside 1006 when it closed a socket itself.
const BUN_INVALID_UTF8 = "Received invalid UTF-8";
const BUN_TOO_BIG = "Received too big message";
const BUN_IDLE = "WebSocket timed out from inactivity";

/**
 * Maps the close that the client leg reported (server `close` handler) to the
 * close that the upstream leg gets.
 */
export function closeForUpstream(code: number, reason: string): CloseAction {
  if (isSendableCloseCode(code)) return { code, reason, cause: "client_closed" };
  if (code === CloseCode.NO_STATUS) return { code: undefined, reason: "", cause: "client_closed" };
  if (code !== CloseCode.ABNORMAL || reason === "") {
    return { code: CloseCode.GOING_AWAY, reason: "client connection lost", cause: "client_lost" };
  }
  if (reason === BUN_INVALID_UTF8) {
    return { code: CloseCode.GOING_AWAY, reason: "client sent invalid UTF-8", cause: "invalid_payload" };
  }
  if (reason === BUN_TOO_BIG) {
    return { code: CloseCode.GOING_AWAY, reason: "client message too big", cause: "message_too_big" };
  }
  if (reason === BUN_IDLE) {
    return { code: CloseCode.GOING_AWAY, reason: "peer timed out", cause: "client_timed_out" };
  }
  return {
    code: CloseCode.GOING_AWAY,
    reason: clampReason(`client protocol error: ${reason}`),
    cause: "protocol_error",
  };
}

/**
 * Maps the close event of the upstream leg (Bun's client `WebSocket`) to the
 * close that the client leg gets. `errorCode` is the `code` of the error
 * event that came before the close, if any: Bun's client reports the cause of
 * a failure only there.
 */
export function closeForClient(code: number, reason: string, errorCode: string | undefined): CloseAction {
  if (errorCode === "WS_ERR_INVALID_UTF8") {
    return { code: CloseCode.BAD_GATEWAY, reason: "upstream sent invalid UTF-8", cause: "invalid_payload" };
  }
  if (errorCode === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH" || errorCode === "WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH") {
    return { code: CloseCode.BAD_GATEWAY, reason: "upstream message too big", cause: "message_too_big" };
  }
  if (isSendableCloseCode(code)) return { code, reason, cause: "upstream_closed" };
  if (code === CloseCode.NO_STATUS) return { code: undefined, reason: "", cause: "upstream_closed" };
  if (errorCode !== undefined && errorCode !== "") {
    return {
      code: CloseCode.BAD_GATEWAY,
      reason: clampReason(`upstream protocol error: ${errorCode}`),
      cause: "protocol_error",
    };
  }
  return { code: CloseCode.BAD_GATEWAY, reason: "upstream connection lost", cause: "upstream_lost" };
}
