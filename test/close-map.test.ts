/**
 * Unit tests of src/close.ts: which codes may be sent, how reasons are cut to
 * fit a close frame, and how a close on one leg maps to the other leg.
 */

import { describe, expect, test } from "bun:test";
import {
  type CloseAction,
  CloseCode,
  MAX_REASON_BYTES,
  clampReason,
  closeForClient,
  closeForUpstream,
  isSendableCloseCode,
} from "../src/close.ts";

/** Codes that RFC 6455 section 7.4.1 forbids in a close frame. */
const NEVER_ON_WIRE = [1005, 1006, 1015];

const utf8Length = (text: string): number => Buffer.byteLength(text, "utf8");

describe("CloseCode", () => {
  test("named codes -> RFC 6455 values", () => {
    expect(CloseCode.NORMAL).toBe(1000);
    expect(CloseCode.GOING_AWAY).toBe(1001);
    expect(CloseCode.NO_STATUS).toBe(1005);
    expect(CloseCode.ABNORMAL).toBe(1006);
    expect(CloseCode.INVALID_PAYLOAD).toBe(1007);
    expect(CloseCode.MESSAGE_TOO_BIG).toBe(1009);
    expect(CloseCode.BAD_GATEWAY).toBe(1014);
    expect(CloseCode.TLS_HANDSHAKE).toBe(1015);
  });

  test("MAX_REASON_BYTES -> 123", () => {
    expect(MAX_REASON_BYTES).toBe(123);
  });
});

describe("isSendableCloseCode", () => {
  const cases: Array<[number, boolean]> = [
    [0, false],
    [999, false],
    [1000, true],
    [1001, true],
    [1002, true],
    [1003, true],
    [1004, false],
    [1005, false],
    [1006, false],
    [1007, true],
    [1008, true],
    [1011, true],
    [1014, true],
    [1015, false],
    [1016, false],
    [2999, false],
    [3000, true],
    [4999, true],
    [5000, false],
  ];

  for (const [code, sendable] of cases) {
    test(`${code} -> ${sendable}`, () => {
      expect(isSendableCloseCode(code)).toBe(sendable);
    });
  }
});

describe("clampReason", () => {
  const cases: Array<[string, string, string]> = [
    ["empty", "", ""],
    ["short ASCII", "bye", "bye"],
    ["123 ASCII bytes", "a".repeat(123), "a".repeat(123)],
    ["124 ASCII bytes", "a".repeat(124), "a".repeat(123)],
    ["41 three-byte characters", "終".repeat(41), "終".repeat(41)],
    ["42 three-byte characters", "終".repeat(42), "終".repeat(41)],
    ["62 two-byte characters", "é".repeat(62), "é".repeat(61)],
    ["cut inside a four-byte character", `ab${"😀".repeat(31)}`, `ab${"😀".repeat(30)}`],
    ["mixed text of 123 bytes", `${"é".repeat(60)}終`, `${"é".repeat(60)}終`],
  ];

  for (const [name, input, expected] of cases) {
    test(`${name} -> ${utf8Length(expected)} bytes`, () => {
      const clamped = clampReason(input);
      expect(clamped).toBe(expected);
      expect(utf8Length(clamped)).toBeLessThanOrEqual(MAX_REASON_BYTES);
      expect(clamped).not.toContain("\ufffd");
    });
  }
});

describe("closeForUpstream", () => {
  const cases: Array<[string, number, string, CloseAction]> = [
    ["client 4001 'bye'", 4001, "bye", { code: 4001, reason: "bye", cause: "client_closed" }],
    ["client 1000", 1000, "", { code: 1000, reason: "", cause: "client_closed" }],
    ["client 1007 with a reason", 1007, "bad input", { code: 1007, reason: "bad input", cause: "client_closed" }],
    ["client 1005", 1005, "", { code: undefined, reason: "", cause: "client_closed" }],
    ["1006 without a reason", 1006, "", { code: 1001, reason: "client connection lost", cause: "client_lost" }],
    ["1015", 1015, "", { code: 1001, reason: "client connection lost", cause: "client_lost" }],
    [
      "1006 'Received invalid UTF-8'",
      1006,
      "Received invalid UTF-8",
      { code: 1001, reason: "client sent invalid UTF-8", cause: "invalid_payload" },
    ],
    [
      "1006 'Received too big message'",
      1006,
      "Received too big message",
      { code: 1001, reason: "client message too big", cause: "message_too_big" },
    ],
    [
      "1006 Bun idle timeout",
      1006,
      "WebSocket timed out from inactivity",
      { code: 1001, reason: "peer timed out", cause: "client_timed_out" },
    ],
    [
      "1006 other Bun error",
      1006,
      "Received invalid close code",
      { code: 1001, reason: "client protocol error: Received invalid close code", cause: "protocol_error" },
    ],
  ];

  for (const [name, code, reason, expected] of cases) {
    test(`${name} -> ${expected.code ?? "no status"} ${expected.cause}`, () => {
      expect(closeForUpstream(code, reason)).toEqual(expected);
    });
  }

  test("long Bun error text -> reason within 123 bytes", () => {
    const action = closeForUpstream(1006, "x".repeat(200));
    expect(utf8Length(action.reason)).toBe(MAX_REASON_BYTES);
    expect(action.reason.startsWith("client protocol error: x")).toBe(true);
  });
});

describe("closeForClient", () => {
  const cases: Array<[string, number, string, string | undefined, CloseAction]> = [
    [
      "upstream 4404",
      4404,
      "Document deleted",
      undefined,
      { code: 4404, reason: "Document deleted", cause: "upstream_closed" },
    ],
    ["upstream 1007 with a reason", 1007, "bad input", undefined, { code: 1007, reason: "bad input", cause: "upstream_closed" }],
    ["upstream 1005", 1005, "", undefined, { code: undefined, reason: "", cause: "upstream_closed" }],
    ["1006 without an error", 1006, "", undefined, { code: 1014, reason: "upstream connection lost", cause: "upstream_lost" }],
    ["1006 after an error without a code", 1006, "", "", { code: 1014, reason: "upstream connection lost", cause: "upstream_lost" }],
    ["1015", 1015, "", undefined, { code: 1014, reason: "upstream connection lost", cause: "upstream_lost" }],
    [
      "1006 after WS_ERR_INVALID_UTF8",
      1006,
      "",
      "WS_ERR_INVALID_UTF8",
      { code: 1014, reason: "upstream sent invalid UTF-8", cause: "invalid_payload" },
    ],
    [
      "1006 after WS_ERR_UNSUPPORTED_MESSAGE_LENGTH",
      1006,
      "",
      "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH",
      { code: 1014, reason: "upstream message too big", cause: "message_too_big" },
    ],
    [
      "1006 after WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH",
      1006,
      "",
      "WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH",
      { code: 1014, reason: "upstream message too big", cause: "message_too_big" },
    ],
    [
      "1006 after WS_ERR_INVALID_CLOSE_CODE",
      1006,
      "",
      "WS_ERR_INVALID_CLOSE_CODE",
      { code: 1014, reason: "upstream protocol error: WS_ERR_INVALID_CLOSE_CODE", cause: "protocol_error" },
    ],
    [
      "1000 after WS_ERR_INVALID_UTF8",
      1000,
      "",
      "WS_ERR_INVALID_UTF8",
      { code: 1014, reason: "upstream sent invalid UTF-8", cause: "invalid_payload" },
    ],
  ];

  for (const [name, code, reason, errorCode, expected] of cases) {
    test(`${name} -> ${expected.code ?? "no status"} ${expected.cause}`, () => {
      expect(closeForClient(code, reason, errorCode)).toEqual(expected);
    });
  }
});

describe("both mappings", () => {
  const reasons = ["", "bye", "Received invalid UTF-8", "Received too big message", "WebSocket timed out from inactivity"];
  const errorCodes = [undefined, "", "WS_ERR_INVALID_UTF8", "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH", "WS_ERR_INVALID_CLOSE_CODE"];

  test("codes 0-5999 -> never 1005, 1006 or 1015", () => {
    const forbidden: string[] = [];
    for (let code = 0; code < 6000; code++) {
      for (const reason of reasons) {
        const toUpstream = closeForUpstream(code, reason).code;
        if (toUpstream !== undefined && NEVER_ON_WIRE.includes(toUpstream)) forbidden.push(`upstream ${code} '${reason}'`);
        for (const errorCode of errorCodes) {
          const toClient = closeForClient(code, reason, errorCode).code;
          if (toClient !== undefined && NEVER_ON_WIRE.includes(toClient)) forbidden.push(`client ${code} '${reason}' ${errorCode}`);
        }
      }
    }
    expect(forbidden).toEqual([]);
  });

  test("codes 0-5999 -> a sendable code or no status", () => {
    const unsendable: string[] = [];
    for (let code = 0; code < 6000; code++) {
      for (const reason of reasons) {
        const toUpstream = closeForUpstream(code, reason).code;
        if (toUpstream !== undefined && !isSendableCloseCode(toUpstream)) unsendable.push(`upstream ${code}`);
        const toClient = closeForClient(code, reason, undefined).code;
        if (toClient !== undefined && !isSendableCloseCode(toClient)) unsendable.push(`client ${code}`);
      }
    }
    expect(unsendable).toEqual([]);
  });
});
