/**
 * Frames that break RFC 6455 section 5, written by a raw client and by a raw
 * upstream. The relay never parses frames itself. Bun's server (client leg)
 * and Bun's client (upstream leg) reject them, and the relay then closes the
 * other leg and logs the end. Each case checks four things:
 *
 * - the close frame that Bun puts on the wire toward the offender, and that
 *   the offender's TCP connection ends;
 * - the close that the relay sends to the other leg (1001 toward the
 *   upstream, 1014 toward the client);
 * - the `pair closed` log line, and the error line for the upstream leg;
 * - a well-behaved pair, opened before the bad one, keeps echoing the whole
 *   time.
 *
 * The expected codes and reasons are what Bun 1.4.4 did when these tests were
 * written. Bun sent a close frame in every case; none ended in a bare TCP
 * close. Where Bun departs from RFC 6455 the case says so.
 *
 * close.test.ts covers invalid UTF-8, messages over the size limit, invalid
 * close codes and valid fragmentation.
 */

import { describe, expect, test } from "bun:test";
import type { EndCause } from "../src/close.ts";
import { type LogRecord, type TestRelay, TestClient, recordingLogger, startRelay, waitFor } from "./helpers/peers.ts";
import { type RawConnection, Opcode, encodeFrame, parseClose, rawConnect, startRawUpstream } from "./helpers/raw.ts";
import { type EchoLoop, startEchoLoop } from "./helpers/resources.ts";

/** Request path of the well-behaved pair; its upstream connection echoes text. */
const GOOD_PATH = "/good";
/** Request path of the pair that gets the bad frames. */
const BAD_PATH = "/bad";

interface CloseFrame {
  code: number;
  reason: string;
}

interface BadFrameCase {
  name: string;
  /** The bytes the offender writes; `masked` is true when the offender is the client. */
  frames(masked: boolean): Buffer[];
  /** What Bun's server sends to a client that writes these frames. */
  serverAnswer: CloseFrame;
  /** What the relay then sends to that client's upstream. */
  upstreamGets: CloseFrame;
  /** The end cause logged when the client is the offender. */
  clientCause: EndCause;
  /** What Bun's client sends to an upstream that writes these frames. */
  clientAnswer: CloseFrame;
  /** The `code` of the error event that Bun's client raises; it names the error in the 1014 reason. */
  errorCode: string;
  /** The message of that error event, as the relay logs it. */
  errorMessage: string;
  /** The end cause and the client's 1014 reason when the upstream is the offender; by default a protocol error naming `errorCode`. */
  upstreamOffence?: { cause: EndCause; clientReason: string };
}

/** Builds a binary frame whose length uses the 64-bit form with its top bit set (RFC 6455 requires it clear). */
function frameWithTopLengthBit(masked: boolean): Buffer {
  const payload = Buffer.from("hello");
  const head = Buffer.from([0x80 | Opcode.BINARY, (masked ? 0x80 : 0) | 127, 0x80, 0, 0, 0, 0, 0, 0, payload.length]);
  if (!masked) return Buffer.concat([head, payload]);
  const key = Buffer.from([0x11, 0x22, 0x33, 0x44]);
  const body = Buffer.from(payload.map((byte, i) => byte ^ (key[i & 3] as number)));
  return Buffer.concat([head, key, body]);
}

/** Builds a case that Bun's server closes with 1002 and `serverReason`, and Bun's client with a 1002 without a reason. */
function protocolError(
  name: string,
  frames: (masked: boolean) => Buffer[],
  serverReason: string,
  errorCode: string,
  errorMessage: string,
): BadFrameCase {
  return {
    name,
    frames,
    serverAnswer: { code: 1002, reason: serverReason },
    upstreamGets: { code: 1001, reason: `client protocol error: ${serverReason}` },
    clientCause: "protocol_error",
    // Bun's client puts no reason in its 1002.
    clientAnswer: { code: 1002, reason: "" },
    errorCode,
    errorMessage,
  };
}

const RESERVED_OPCODES = [0x3, 0x4, 0x5, 0x6, 0x7, 0xb, 0xc, 0xd, 0xe, 0xf];

const CASES: BadFrameCase[] = [
  protocolError(
    "wrongly masked frame",
    // A client must mask every frame and a server must mask none (RFC 6455 section 5.1).
    (masked) => [encodeFrame(Opcode.TEXT, "hi", { mask: !masked })],
    "Received an incorrectly masked frame",
    "WS_ERR_UNEXPECTED_MASK",
    "Protocol error - unexpected mask from server",
  ),
  ...RESERVED_OPCODES.map((opcode) =>
    protocolError(
      `reserved opcode 0x${opcode.toString(16)}`,
      (masked) => [encodeFrame(opcode, "x", { mask: masked })],
      "Received invalid opcode",
      "WS_ERR_INVALID_OPCODE",
      // Bun's client calls every reserved opcode a control frame, 0x3 to 0x7 included.
      `Protocol error - unsupported control frame: ${opcode}`,
    ),
  ),
  protocolError(
    "ping with a 126-byte payload",
    (masked) => [encodeFrame(Opcode.PING, Buffer.alloc(126, 0x61), { mask: masked })],
    "Received too big control frame",
    "WS_ERR_INVALID_CONTROL_PAYLOAD_LENGTH",
    "Protocol error - invalid control frame: 126",
  ),
  protocolError(
    "ping with fin clear",
    (masked) => [encodeFrame(Opcode.PING, "p", { mask: masked, fin: false })],
    "Received fragmented control frame",
    "WS_ERR_EXPECTED_FIN",
    "Protocol error - control frame is fragmented",
  ),
  protocolError(
    "RSV1 without an extension",
    (masked) => [encodeFrame(Opcode.TEXT, "r", { mask: masked, rsv: 0b100 })],
    "Received unexpected RSV1 bit",
    "WS_ERR_UNEXPECTED_RSV_1",
    "Protocol error - RSV1 must be clear",
  ),
  protocolError(
    "RSV2 without an extension",
    (masked) => [encodeFrame(Opcode.TEXT, "r", { mask: masked, rsv: 0b010 })],
    "Received unexpected RSV2 or RSV3 bit",
    "WS_ERR_UNEXPECTED_RSV_2_3",
    "Protocol error - RSV2 and RSV3 must be clear",
  ),
  protocolError(
    "RSV3 without an extension",
    (masked) => [encodeFrame(Opcode.TEXT, "r", { mask: masked, rsv: 0b001 })],
    "Received unexpected RSV2 or RSV3 bit",
    "WS_ERR_UNEXPECTED_RSV_2_3",
    "Protocol error - RSV2 and RSV3 must be clear",
  ),
  protocolError(
    "continuation with no message",
    (masked) => [encodeFrame(Opcode.CONTINUATION, "c", { mask: masked })],
    "Received continuation frame outside a fragmented message",
    "WS_ERR_INVALID_OPCODE",
    "Protocol error - unexpected opcode: 0",
  ),
  protocolError(
    "new text frame inside a fragmented message",
    (masked) => [encodeFrame(Opcode.TEXT, "a", { mask: masked, fin: false }), encodeFrame(Opcode.TEXT, "b", { mask: masked })],
    "Received new message inside a fragmented message",
    "WS_ERR_INVALID_OPCODE",
    "Protocol error - unexpected opcode: 1",
  ),
  protocolError(
    "close with a 1-byte payload",
    (masked) => [encodeFrame(Opcode.CLOSE, Buffer.from([0x03]), { mask: masked })],
    "Received invalid close payload",
    "WS_ERR_INVALID_CONTROL_PAYLOAD_LENGTH",
    "Protocol error - invalid control frame: 1",
  ),
  {
    // RFC 6455 section 5.2 requires the top bit to be 0, so this is a
    // protocol error (1002). Bun reads the length as it is (over 2^63) and
    // treats the frame as a message that is too big, with 1009 on both legs.
    name: "64-bit length with its top bit set",
    frames: (masked) => [frameWithTopLengthBit(masked)],
    serverAnswer: { code: 1009, reason: "Received too big message" },
    upstreamGets: { code: 1001, reason: "client message too big" },
    clientCause: "message_too_big",
    clientAnswer: { code: 1009, reason: "" },
    errorCode: "WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH",
    errorMessage: "Payload length over 2^53 - 1",
    upstreamOffence: { cause: "message_too_big", clientReason: "upstream message too big" },
  },
];

// ---------------------------------------------------------------------------
// Peers

/** Makes a raw upstream echo text frames, and reply to a close frame with one of its own and end the connection. */
function serveRawConnection(connection: RawConnection, path: string): void {
  let echoed = 0;
  let closed = false;
  connection.socket.on("data", () => {
    const frames = connection.frames;
    if (path === GOOD_PATH) {
      const texts = frames.filter((frame) => frame.opcode === Opcode.TEXT);
      for (; echoed < texts.length; echoed++) connection.send(Opcode.TEXT, texts[echoed]?.payload);
    }
    const close = frames.find((frame) => frame.opcode === Opcode.CLOSE);
    if (close !== undefined && !closed) {
      closed = true;
      connection.send(Opcode.CLOSE, close.payload);
      connection.socket.end();
    }
  });
}

async function startUpstream() {
  return startRawUpstream((connection, requestHead) => serveRawConnection(connection, requestHead.split(" ")[1] ?? ""));
}

/** Opens a raw client on `path`; disposal destroys its socket. */
async function openRawClient(relay: TestRelay, path: string): Promise<RawConnection & AsyncDisposable> {
  const { handshake, connection } = await rawConnect(relay.port, { path });
  if (connection === null) throw new Error(`relay answered ${handshake.status}, expected 101: ${handshake.body}`);
  return Object.assign(connection, { [Symbol.asyncDispose]: async () => connection.destroy() });
}

/** Waits until the raw upstream has accepted `count` connections and returns the last of them. */
async function upstreamConnection(upstream: { connections: RawConnection[] }, count: number): Promise<RawConnection> {
  expect(await waitFor(() => upstream.connections.length >= count)).toBe(true);
  return upstream.connections[count - 1] as RawConnection;
}

/** Returns the first close frame a raw peer received, decoded, or undefined when none came within 5 s. */
async function closeFrameOf(connection: RawConnection): Promise<CloseFrame | undefined> {
  const frame = await connection.waitForFrame((f) => f.opcode === Opcode.CLOSE);
  return frame === undefined ? undefined : parseClose(frame.payload);
}

/** Waits up to 5 s for the raw peer's TCP connection to end; returns whether it did. */
async function connectionEnded(connection: RawConnection): Promise<boolean> {
  await Promise.race([connection.endedPromise, Bun.sleep(5000)]);
  return connection.ended;
}

/** Data frames a raw peer received (text, binary or continuation). */
function dataFrames(connection: RawConnection): number {
  return connection.frames.filter((frame) => frame.opcode <= Opcode.BINARY).length;
}

// ---------------------------------------------------------------------------
// The well-behaved pair

/** Opens the well-behaved pair and starts its echo loop. */
async function openGoodPair(relay: TestRelay): Promise<{ client: TestClient; loop: EchoLoop } & AsyncDisposable> {
  const client = TestClient.bun(relay.url + GOOD_PATH);
  await client.opened;
  const loop = startEchoLoop(client);
  expect(await waitFor(() => loop.echoed >= 3)).toBe(true);
  return {
    client,
    loop,
    [Symbol.asyncDispose]: async () => {
      await loop.stop();
      await client[Symbol.asyncDispose]();
    },
  };
}

/** Checks that the good pair echoed through the bad case and keeps echoing after it. */
async function expectGoodPairUnharmed(good: { client: TestClient; loop: EchoLoop }, echoedBefore: number): Promise<void> {
  const after = good.loop.echoed;
  expect(after).toBeGreaterThan(echoedBefore);
  expect(await waitFor(() => good.loop.echoed >= after + 3)).toBe(true);
  expect(await good.loop.stop()).toEqual([]);
  expect(good.client.closeEvent).toBeUndefined();
}

function pairClosedLines(records: LogRecord[]): LogRecord["fields"][] {
  return records.filter((record) => record.msg === "pair closed").map((record) => record.fields);
}

// ---------------------------------------------------------------------------

describe("bad frame from the client", () => {
  for (const badCase of CASES) {
    test(`${badCase.name} -> client ${badCase.serverAnswer.code}, upstream 1001`, async () => {
      const logger = recordingLogger();
      await using upstream = await startUpstream();
      await using relay = await startRelay({ upstream: upstream.url, logger });
      await using good = await openGoodPair(relay);
      await using offender = await openRawClient(relay, BAD_PATH);
      const upstreamSide = await upstreamConnection(upstream, 2);
      const echoedBefore = good.loop.echoed;

      for (const frame of badCase.frames(true)) offender.write(frame);

      expect(await closeFrameOf(offender)).toEqual(badCase.serverAnswer);
      expect(await connectionEnded(offender)).toBe(true);
      expect(await closeFrameOf(upstreamSide)).toEqual(badCase.upstreamGets);
      expect(dataFrames(upstreamSide)).toBe(0);
      expect(relay.stats().endCauses).toEqual({ [badCase.clientCause]: 1 });
      const closedLines = pairClosedLines(logger.records);
      expect(closedLines).toHaveLength(1);
      expect(closedLines[0]).toMatchObject({
        cause: badCase.clientCause,
        closed_by: "client",
        // Bun's server reports its own protocol-error closes as 1006 with its reason.
        code: 1006,
        reason: badCase.serverAnswer.reason,
      });
      expect(logger.records.filter((record) => record.level === "error")).toEqual([]);
      await expectGoodPairUnharmed(good, echoedBefore);
      expect(relay.stats().activePairs).toBe(1);
    });
  }
});

describe("bad frame from the upstream", () => {
  for (const badCase of CASES) {
    test(`${badCase.name} -> upstream ${badCase.clientAnswer.code}, client 1014`, async () => {
      const logger = recordingLogger();
      await using upstream = await startUpstream();
      await using relay = await startRelay({ upstream: upstream.url, logger });
      await using good = await openGoodPair(relay);
      await using client = await openRawClient(relay, BAD_PATH);
      const offender = await upstreamConnection(upstream, 2);
      const echoedBefore = good.loop.echoed;

      for (const frame of badCase.frames(false)) offender.write(frame);

      expect(await closeFrameOf(offender)).toEqual(badCase.clientAnswer);
      expect(await connectionEnded(offender)).toBe(true);
      const offence = badCase.upstreamOffence ?? {
        cause: "protocol_error",
        clientReason: `upstream protocol error: ${badCase.errorCode}`,
      };
      expect(await closeFrameOf(client)).toEqual({ code: 1014, reason: offence.clientReason });
      expect(dataFrames(client)).toBe(0);
      expect(relay.stats().endCauses).toEqual({ [offence.cause]: 1 });
      const closedLines = pairClosedLines(logger.records);
      expect(closedLines).toHaveLength(1);
      expect(closedLines[0]).toMatchObject({ cause: offence.cause, closed_by: "upstream", code: 1006 });
      const errors = logger.records.filter((record) => record.level === "error");
      expect(errors).toHaveLength(1);
      expect(errors[0]?.fields.kind).toBe("upstream_error");
      expect(errors[0]?.msg).toBe(`upstream connection failed: ${badCase.errorMessage}`);
      await expectGoodPairUnharmed(good, echoedBefore);
      expect(relay.stats().activePairs).toBe(1);
    });
  }
});
