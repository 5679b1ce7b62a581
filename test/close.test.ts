/**
 * Close handling through the relay, on real sockets on 127.0.0.1. A close on
 * one leg must reach the other leg as follows:
 *
 * - code C with reason R: C and R.
 * - no status (an empty close frame): an empty close frame.
 * - upstream lost without a close frame: the client gets 1014 "upstream connection lost".
 * - client lost without a close frame: the upstream gets 1001 "client connection lost".
 * - invalid UTF-8 text, which Bun itself closes with 1007: the upstream gets 1001
 *   "client sent invalid UTF-8", or the client gets 1014 "upstream sent invalid UTF-8".
 * - a message over maxMessageBytes: the sender gets 1009, and the other leg gets
 *   1001 "client message too big" or 1014 "upstream message too big".
 *
 * Raw peers read the close frames byte for byte. The relay runs in this
 * process, so an uncaught exception in it fails the run.
 */

import { describe, expect, test } from "bun:test";
import type { WebSocket as WsWebSocket } from "ws";
import {
  type Closed,
  type Received,
  type TestRelay,
  type TestUpstream,
  TestClient,
  recordingLogger,
  startBunUpstream,
  startRelay,
  startWsUpstream,
  waitFor,
} from "./helpers/peers.ts";
import { type RawConnection, Opcode, closePayload, rawConnect, startRawUpstream } from "./helpers/raw.ts";

/** Codes that RFC 6455 section 7.4.1 forbids in a close frame. */
const NEVER_ON_WIRE = [1005, 1006, 1015];
/** Request path of the well-behaved pair that each bad case opens first. */
const GOOD_PATH = "/good";
const MAX_MESSAGE_BYTES = 1024;
const NON_ASCII_REASON = "café ☕ 終了";
/** 61 two-byte characters and one ASCII byte, which is 123 bytes: the max that fits a close frame. */
const MAX_LENGTH_REASON = `${"é".repeat(61)}!`;

type Kind = "bun" | "ws";

// ---------------------------------------------------------------------------
// Raw peers

/** Opens a raw client through the relay; disposal destroys its socket. */
async function openRawClient(relay: TestRelay, path = "/"): Promise<RawConnection & AsyncDisposable> {
  const { handshake, connection } = await rawConnect(relay.port, { path });
  if (connection === null) throw new Error(`relay responded with status ${handshake.status}, expected 101: ${handshake.body}`);
  return Object.assign(connection, { [Symbol.asyncDispose]: async () => connection.destroy() });
}

/** Connections that sent their own close frame first, so they only wait for the reply. */
const closeInitiators = new WeakSet<RawConnection>();

/** Sends a close frame from a raw peer (`payload` empty for no status). */
function sendClose(connection: RawConnection, payload: Buffer = Buffer.alloc(0)): void {
  closeInitiators.add(connection);
  connection.send(Opcode.CLOSE, payload);
}

/**
 * Makes a raw upstream finish the close handshake as a server does: it echoes
 * a close frame it did not start, then ends the TCP connection.
 */
function finishCloseHandshakes(connection: RawConnection): void {
  let done = false;
  connection.socket.on("data", () => {
    if (done || !connection.frames.some((frame) => frame.opcode === Opcode.CLOSE)) return;
    done = true;
    const received = connection.frames.find((frame) => frame.opcode === Opcode.CLOSE);
    if (!closeInitiators.has(connection)) connection.send(Opcode.CLOSE, received?.payload);
    connection.socket.end();
  });
}

/** Makes a raw upstream echo every text frame. */
function echoTextFrames(connection: RawConnection): void {
  let echoed = 0;
  connection.socket.on("data", () => {
    const texts = connection.frames.filter((frame) => frame.opcode === Opcode.TEXT);
    for (; echoed < texts.length; echoed++) connection.send(Opcode.TEXT, texts[echoed]?.payload);
  });
}

function requestPath(requestHead: string): string {
  return requestHead.split(" ")[1] ?? "";
}

/**
 * Starts a raw upstream that runs `scripts[path]` on each connection. Every
 * connection finishes close handshakes, and the good path echoes text.
 */
async function startScriptedRawUpstream(scripts: Record<string, (connection: RawConnection) => void> = {}) {
  return startRawUpstream((connection, requestHead) => {
    finishCloseHandshakes(connection);
    const path = requestPath(requestHead);
    if (path === GOOD_PATH) echoTextFrames(connection);
    scripts[path]?.(connection);
  });
}

/** Waits for the close frame that a raw peer receives and returns its code and reason, or undefined if none came. */
async function closeFrameOf(connection: RawConnection | undefined): Promise<{ code: number; reason: string } | undefined> {
  return connection?.waitForClose();
}

/** Waits for the close frame that a raw peer receives and returns it undecoded, or undefined if none came. */
async function rawCloseFrame(connection: RawConnection | undefined) {
  return connection?.waitForFrame((frame) => frame.opcode === Opcode.CLOSE);
}

/** Waits until a raw upstream has accepted `count` connections, and returns the last. */
async function upstreamConnection(upstream: { connections: RawConnection[] }, count: number): Promise<RawConnection | undefined> {
  await waitFor(() => upstream.connections.length >= count);
  return upstream.connections[count - 1];
}

// ---------------------------------------------------------------------------
// Bun and ws upstreams that record how each socket closed

interface BunSocketRecord {
  closed: { code: number; reason: string } | undefined;
}

/** Starts a Bun upstream that echoes and stores each socket's close on `socket.data`. */
function startRecordingBunUpstream(): TestUpstream<BunSocketRecord> {
  return startBunUpstream<BunSocketRecord>(
    {
      message(ws, message) {
        ws.send(message);
      },
      close(ws, code, reason) {
        ws.data.closed = { code, reason };
      },
    },
    { data: () => ({ closed: undefined }) },
  );
}

async function bunUpstreamClose(upstream: TestUpstream<BunSocketRecord>, index: number) {
  await waitFor(() => upstream.sockets[index]?.data.closed !== undefined);
  return upstream.sockets[index]?.data.closed;
}

interface WsSocketRecord {
  socket: WsWebSocket;
  path: string;
  closed: Closed | undefined;
}

/** Starts a `ws` upstream that echoes and records each socket's close, `wasClean` included. */
async function startRecordingWsUpstream(onOpen: (record: WsSocketRecord) => void = () => {}) {
  const records: WsSocketRecord[] = [];
  const upstream = await startWsUpstream((socket, request) => {
    const record: WsSocketRecord = { socket, path: request.url ?? "", closed: undefined };
    records.push(record);
    socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }));
    socket.addEventListener("close", (event) => {
      record.closed = { code: event.code, reason: event.reason, wasClean: event.wasClean };
    });
    onOpen(record);
  });
  return Object.assign(upstream, { records });
}

async function wsUpstreamClose(records: WsSocketRecord[], index: number): Promise<Closed | undefined> {
  await waitFor(() => records[index]?.closed !== undefined);
  return records[index]?.closed;
}

// ---------------------------------------------------------------------------
// Clients

async function openClient(kind: Kind, url: string): Promise<TestClient> {
  const client = TestClient.of(kind, url);
  await client.opened;
  return client;
}

/** Opens the well-behaved pair that must keep working after a bad case. */
function openGoodClient(relay: TestRelay): Promise<TestClient> {
  return openClient("bun", relay.url + GOOD_PATH);
}

/** Sends `text` and returns the next message that comes back. */
async function roundTrip(client: TestClient, text: string): Promise<Received | undefined> {
  const before = client.received.length;
  client.send(text);
  const received = await client.waitForMessages(before + 1);
  return received[before];
}

/** Waits up to 5 s for the client's close event, and returns undefined if none came. */
async function closeEventOf(client: TestClient): Promise<Closed | undefined> {
  return Promise.race([client.closed, Bun.sleep(5000).then(() => undefined)]);
}

// ---------------------------------------------------------------------------

describe("code and reason cross", () => {
  for (const clientKind of ["bun", "ws"] as const) {
    test(`${clientKind} client closes 4001 'bye' -> Bun upstream sees it`, async () => {
      await using upstream = startRecordingBunUpstream();
      await using relay = await startRelay({ upstream: upstream.url });
      await using client = await openClient(clientKind, relay.url);

      client.close(4001, "bye");

      expect(await bunUpstreamClose(upstream, 0)).toEqual({ code: 4001, reason: "bye" });
      expect(await closeEventOf(client)).toEqual({ code: 4001, reason: "bye", wasClean: true });
      expect(relay.stats().endCauses).toEqual({ client_closed: 1 });
    });

    test(`${clientKind} client closes 4001 'bye' -> ws upstream sees it, clean`, async () => {
      await using upstream = await startRecordingWsUpstream();
      await using relay = await startRelay({ upstream: upstream.url });
      await using client = await openClient(clientKind, relay.url);

      client.close(4001, "bye");

      expect(await wsUpstreamClose(upstream.records, 0)).toEqual({ code: 4001, reason: "bye", wasClean: true });
      expect(await closeEventOf(client)).toEqual({ code: 4001, reason: "bye", wasClean: true });
    });

    test(`Bun upstream closes 4404 -> ${clientKind} client sees it`, async () => {
      await using upstream = startRecordingBunUpstream();
      await using relay = await startRelay({ upstream: upstream.url });
      await using client = await openClient(clientKind, relay.url);
      await waitFor(() => upstream.sockets.length === 1);

      upstream.sockets[0]?.close(4404, "Document deleted");

      expect(await closeEventOf(client)).toEqual({ code: 4404, reason: "Document deleted", wasClean: true });
      expect(relay.stats().endCauses).toEqual({ upstream_closed: 1 });
    });

    test(`ws upstream closes 4404 -> ${clientKind} client sees it, both clean`, async () => {
      await using upstream = await startRecordingWsUpstream();
      await using relay = await startRelay({ upstream: upstream.url });
      await using client = await openClient(clientKind, relay.url);
      await waitFor(() => upstream.records.length === 1);

      upstream.records[0]?.socket.close(4404, "Document deleted");

      expect(await closeEventOf(client)).toEqual({ code: 4404, reason: "Document deleted", wasClean: true });
      expect(await wsUpstreamClose(upstream.records, 0)).toEqual({ code: 4404, reason: "Document deleted", wasClean: true });
    });
  }

  test("upstream sends 'hi' and closes 4404 on open -> client gets both", async () => {
    await using upstream = await startScriptedRawUpstream({
      "/early": (connection) => {
        connection.send(Opcode.TEXT, "hi");
        sendClose(connection, closePayload(4404, "Document deleted"));
      },
    });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.bun(`${relay.url}/early`);

    const closed = await closeEventOf(client);

    expect(client.received).toEqual([{ type: "text", text: "hi" }]);
    expect(closed).toEqual({ code: 4404, reason: "Document deleted", wasClean: true });
  });

  test("Bun client closes with non-ASCII reason -> ws upstream sees it, both clean", async () => {
    await using upstream = await startRecordingWsUpstream();
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = await openClient("bun", relay.url);

    client.close(4001, NON_ASCII_REASON);

    expect(await wsUpstreamClose(upstream.records, 0)).toEqual({ code: 4001, reason: NON_ASCII_REASON, wasClean: true });
    expect(await closeEventOf(client)).toEqual({ code: 4001, reason: NON_ASCII_REASON, wasClean: true });
  });

  test("ws upstream closes with non-ASCII reason -> Bun client sees it, both clean", async () => {
    await using upstream = await startRecordingWsUpstream();
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = await openClient("bun", relay.url);
    await waitFor(() => upstream.records.length === 1);

    upstream.records[0]?.socket.close(4404, NON_ASCII_REASON);

    expect(await closeEventOf(client)).toEqual({ code: 4404, reason: NON_ASCII_REASON, wasClean: true });
    expect(await wsUpstreamClose(upstream.records, 0)).toEqual({ code: 4404, reason: NON_ASCII_REASON, wasClean: true });
  });

  for (const [name, reason] of [
    ["non-ASCII reason", NON_ASCII_REASON],
    ["123-byte reason", MAX_LENGTH_REASON],
  ] as const) {
    test(`raw client closes with ${name} -> upstream gets identical bytes`, async () => {
      await using upstream = await startScriptedRawUpstream();
      await using relay = await startRelay({ upstream: upstream.url });
      await using client = await openRawClient(relay);
      const upstreamSide = await upstreamConnection(upstream, 1);

      sendClose(client, closePayload(4001, reason));

      const frame = await rawCloseFrame(upstreamSide);
      expect(frame?.payload.toString("hex")).toBe(closePayload(4001, reason).toString("hex"));
      expect((await rawCloseFrame(client))?.payload.toString("hex")).toBe(closePayload(4001, reason).toString("hex"));
    });

    test(`raw upstream closes with ${name} -> client gets identical bytes`, async () => {
      await using upstream = await startScriptedRawUpstream({
        "/close": (connection) => sendClose(connection, closePayload(4404, reason)),
      });
      await using relay = await startRelay({ upstream: upstream.url });
      await using client = await openRawClient(relay, "/close");

      const frame = await rawCloseFrame(client);

      expect(frame?.payload.toString("hex")).toBe(closePayload(4404, reason).toString("hex"));
      const upstreamSide = await upstreamConnection(upstream, 1);
      expect((await rawCloseFrame(upstreamSide))?.payload.toString("hex")).toBe(closePayload(4404, reason).toString("hex"));
    });
  }
});

describe("each sendable code crosses", () => {
  const codes = [1000, 1001, 1003, 1007, 1008, 1011, 1012, 1013, 1014, 3000, 4999];

  for (const code of codes) {
    test(`client closes ${code} -> upstream sees ${code}`, async () => {
      await using upstream = startRecordingBunUpstream();
      await using relay = await startRelay({ upstream: upstream.url });
      await using client = await openClient("bun", relay.url);

      client.close(code, `code ${code}`);

      expect(await bunUpstreamClose(upstream, 0)).toEqual({ code, reason: `code ${code}` });
    });

    test(`upstream closes ${code} -> client sees ${code}`, async () => {
      await using upstream = startRecordingBunUpstream();
      await using relay = await startRelay({ upstream: upstream.url });
      await using client = await openClient("bun", relay.url);
      await waitFor(() => upstream.sockets.length === 1);

      upstream.sockets[0]?.close(code, `code ${code}`);

      expect(await closeEventOf(client)).toEqual({ code, reason: `code ${code}`, wasClean: true });
    });
  }
});

describe("close with no status", () => {
  test("raw client sends empty close -> upstream gets empty close frame", async () => {
    await using upstream = await startScriptedRawUpstream();
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = await openRawClient(relay);
    const upstreamSide = await upstreamConnection(upstream, 1);

    sendClose(client);

    expect((await rawCloseFrame(upstreamSide))?.payload.length).toBe(0);
    expect(relay.stats().endCauses).toEqual({ client_closed: 1 });
  });

  test("raw upstream sends empty close -> client gets empty close frame", async () => {
    await using upstream = await startScriptedRawUpstream({ "/close": (connection) => sendClose(connection) });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = await openRawClient(relay, "/close");

    expect((await rawCloseFrame(client))?.payload.length).toBe(0);
    expect(relay.stats().endCauses).toEqual({ upstream_closed: 1 });
  });

  for (const kind of ["bun", "ws"] as const) {
    test(`${kind} client close() -> Bun upstream sees 1005`, async () => {
      await using upstream = startRecordingBunUpstream();
      await using relay = await startRelay({ upstream: upstream.url });
      await using client = await openClient(kind, relay.url);

      client.close();

      expect(await bunUpstreamClose(upstream, 0)).toEqual({ code: 1005, reason: "" });
    });

    test(`Bun upstream close(1005) -> ${kind} client sees 1005`, async () => {
      await using upstream = startRecordingBunUpstream();
      await using relay = await startRelay({ upstream: upstream.url });
      await using client = await openClient(kind, relay.url);
      await waitFor(() => upstream.sockets.length === 1);

      upstream.sockets[0]?.close(1005);

      expect(await closeEventOf(client)).toEqual({ code: 1005, reason: "", wasClean: true });
    });
  }

  test("ws upstream close() -> Bun client sees 1005", async () => {
    await using upstream = await startRecordingWsUpstream();
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = await openClient("bun", relay.url);
    await waitFor(() => upstream.records.length === 1);

    upstream.records[0]?.socket.close();

    expect(await closeEventOf(client)).toEqual({ code: 1005, reason: "", wasClean: true });
  });
});

describe("client lost without a close frame", () => {
  const vanishings: Array<[string, (connection: RawConnection) => void]> = [
    ["raw client destroys its socket", (connection) => connection.destroy()],
    ["raw client resets its socket", (connection) => connection.socket.resetAndDestroy()],
  ];

  for (const [name, vanish] of vanishings) {
    test(`${name} -> upstream gets 1001`, async () => {
      const logger = recordingLogger();
      await using upstream = await startScriptedRawUpstream();
      await using relay = await startRelay({ upstream: upstream.url, logger });
      await using good = await openGoodClient(relay);
      await using client = await openRawClient(relay);
      const upstreamSide = await upstreamConnection(upstream, 2);

      vanish(client);

      const close = await closeFrameOf(upstreamSide);
      expect(close).toEqual({ code: 1001, reason: "client connection lost" });
      expect(NEVER_ON_WIRE).not.toContain(close?.code);
      expect(relay.stats().endCauses).toEqual({ client_lost: 1 });
      expect(logger.records.filter((record) => record.level === "error")).toEqual([]);
      expect(await roundTrip(good, "still relaying")).toEqual({ type: "text", text: "still relaying" });
    });
  }

  test("Bun client terminate() -> Bun upstream sees 1001", async () => {
    await using upstream = startRecordingBunUpstream();
    await using relay = await startRelay({ upstream: upstream.url });
    await using good = await openGoodClient(relay);
    await using client = await openClient("bun", relay.url);

    client.terminate();

    expect(await bunUpstreamClose(upstream, 1)).toEqual({ code: 1001, reason: "client connection lost" });
    expect(await roundTrip(good, "still relaying")).toEqual({ type: "text", text: "still relaying" });
  });

  test("ws client terminate() -> ws upstream sees 1001, clean", async () => {
    await using upstream = await startRecordingWsUpstream();
    await using relay = await startRelay({ upstream: upstream.url });
    await using good = await openGoodClient(relay);
    await using client = await openClient("ws", relay.url);

    client.terminate();

    expect(await wsUpstreamClose(upstream.records, 1)).toEqual({ code: 1001, reason: "client connection lost", wasClean: true });
    expect(await roundTrip(good, "still relaying")).toEqual({ type: "text", text: "still relaying" });
  });
});

describe("upstream lost without a close frame", () => {
  const vanishings: Array<[string, string, (connection: RawConnection) => void]> = [
    ["raw upstream destroys its socket", "/destroy", (connection) => setTimeout(() => connection.destroy(), 10)],
    ["raw upstream resets its socket", "/reset", (connection) => setTimeout(() => connection.socket.resetAndDestroy(), 10)],
    ["raw upstream vanishes right after its 101", "/vanish", (connection) => connection.destroy()],
  ];

  for (const [name, path, vanish] of vanishings) {
    test(`${name} -> raw client gets 1014`, async () => {
      const logger = recordingLogger();
      await using upstream = await startScriptedRawUpstream({ [path]: vanish });
      await using relay = await startRelay({ upstream: upstream.url, logger });
      await using good = await openGoodClient(relay);
      await using client = await openRawClient(relay, path);

      const close = await closeFrameOf(client);

      expect(close).toEqual({ code: 1014, reason: "upstream connection lost" });
      expect(NEVER_ON_WIRE).not.toContain(close?.code);
      expect(relay.stats().endCauses).toEqual({ upstream_lost: 1 });
      expect(logger.records.filter((record) => record.level === "error")).toEqual([]);
      expect(await roundTrip(good, "still relaying")).toEqual({ type: "text", text: "still relaying" });
    });
  }

  test("raw upstream dies mid-session -> raw client gets messages, then 1014", async () => {
    await using upstream = await startScriptedRawUpstream({
      "/die": (connection) => {
        for (let i = 0; i < 3; i++) connection.send(Opcode.TEXT, `m${i}`);
        setTimeout(() => connection.destroy(), 10);
      },
    });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = await openRawClient(relay, "/die");

    const close = await closeFrameOf(client);

    const texts = client.frames.filter((frame) => frame.opcode === Opcode.TEXT).map((frame) => frame.payload.toString());
    expect(texts).toEqual(["m0", "m1", "m2"]);
    expect(close).toEqual({ code: 1014, reason: "upstream connection lost" });
  });

  test("ws upstream terminate() -> raw client gets 1014", async () => {
    await using upstream = await startRecordingWsUpstream((record) => {
      if (record.path === "/terminate") setTimeout(() => record.socket.terminate(), 10);
    });
    await using relay = await startRelay({ upstream: upstream.url });
    await using good = await openGoodClient(relay);
    await using client = await openRawClient(relay, "/terminate");

    const close = await closeFrameOf(client);

    expect(close).toEqual({ code: 1014, reason: "upstream connection lost" });
    expect(NEVER_ON_WIRE).not.toContain(close?.code);
    expect(await roundTrip(good, "still relaying")).toEqual({ type: "text", text: "still relaying" });
  });

  test("Bun upstream terminate() -> Bun client sees 1014", async () => {
    await using upstream = startRecordingBunUpstream();
    await using relay = await startRelay({ upstream: upstream.url });
    await using good = await openGoodClient(relay);
    await using client = await openClient("bun", relay.url);
    await waitFor(() => upstream.sockets.length === 2);

    upstream.sockets[1]?.terminate();

    expect(await closeEventOf(client)).toEqual({ code: 1014, reason: "upstream connection lost", wasClean: true });
    expect(await roundTrip(good, "still relaying")).toEqual({ type: "text", text: "still relaying" });
  });

  test("upstream process killed -> raw client gets 1014", async () => {
    await using echo = await startEchoProcess();
    await using relay = await startRelay({ upstream: echo.url });
    await using client = await openRawClient(relay);
    client.send(Opcode.TEXT, "before");
    await client.waitForFrame((frame) => frame.opcode === Opcode.TEXT);

    echo.kill();

    const close = await closeFrameOf(client);
    expect(close).toEqual({ code: 1014, reason: "upstream connection lost" });
    expect(relay.stats().endCauses).toEqual({ upstream_lost: 1 });
  });
});

/**
 * Starts a Bun echo server in a child process, so that a test can kill it
 * with SIGKILL as a crash would. Disposal kills it by its PID if it still runs.
 */
async function startEchoProcess(): Promise<{ url: string; kill(): void } & AsyncDisposable> {
  const script = `
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req, srv) => (srv.upgrade(req) ? undefined : new Response("upgrade expected", { status: 426 })),
      websocket: { message: (ws, message) => ws.send(message) },
    });
    console.log(server.port);
  `;
  const child = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "inherit" });
  const reader = child.stdout.getReader();
  const { value } = await reader.read();
  reader.releaseLock();
  const port = Number(new TextDecoder().decode(value).trim());
  const kill = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  return {
    url: `ws://127.0.0.1:${port}`,
    kill,
    [Symbol.asyncDispose]: async () => {
      kill();
      await child.exited;
    },
  };
}

describe("invalid UTF-8", () => {
  const INVALID = Buffer.from([0xff, 0xfe]);

  test("raw client sends ff fe -> client 1007, upstream 1001", async () => {
    await using upstream = await startScriptedRawUpstream();
    await using relay = await startRelay({ upstream: upstream.url });
    await using good = await openGoodClient(relay);
    await using client = await openRawClient(relay);
    const upstreamSide = await upstreamConnection(upstream, 2);

    client.send(Opcode.TEXT, INVALID);

    expect((await closeFrameOf(client))?.code).toBe(1007);
    expect(await closeFrameOf(upstreamSide)).toEqual({ code: 1001, reason: "client sent invalid UTF-8" });
    expect(relay.stats().endCauses).toEqual({ invalid_payload: 1 });
    expect(await roundTrip(good, "still relaying")).toEqual({ type: "text", text: "still relaying" });
  });

  test("raw upstream sends ff fe -> upstream 1007, client 1014", async () => {
    await using upstream = await startScriptedRawUpstream({ "/invalid": (connection) => connection.send(Opcode.TEXT, INVALID) });
    await using relay = await startRelay({ upstream: upstream.url });
    await using good = await openGoodClient(relay);
    await using client = await openRawClient(relay, "/invalid");

    expect(await closeFrameOf(client)).toEqual({ code: 1014, reason: "upstream sent invalid UTF-8" });
    expect((await closeFrameOf(await upstreamConnection(upstream, 2)))?.code).toBe(1007);
    expect(relay.stats().endCauses).toEqual({ invalid_payload: 1 });
    expect(await roundTrip(good, "still relaying")).toEqual({ type: "text", text: "still relaying" });
  });

  test("raw upstream sends ff fe -> Bun client sees 1014, clean", async () => {
    await using upstream = await startScriptedRawUpstream({ "/invalid": (connection) => connection.send(Opcode.TEXT, INVALID) });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.bun(`${relay.url}/invalid`);

    expect(await closeEventOf(client)).toEqual({ code: 1014, reason: "upstream sent invalid UTF-8", wasClean: true });
  });

  test("client text fragments cut a character short -> client 1007, upstream 1001", async () => {
    await using upstream = await startScriptedRawUpstream();
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = await openRawClient(relay);
    const upstreamSide = await upstreamConnection(upstream, 1);

    client.send(Opcode.TEXT, Buffer.from([0x61, 0xe2, 0x82]), { fin: false });
    client.send(Opcode.CONTINUATION, Buffer.from([0x61]));

    expect((await closeFrameOf(client))?.code).toBe(1007);
    expect(await closeFrameOf(upstreamSide)).toEqual({ code: 1001, reason: "client sent invalid UTF-8" });
  });
});

describe("message over maxMessageBytes", () => {
  const relayOptions = (upstream: string) => ({ upstream, maxMessageBytes: MAX_MESSAGE_BYTES });
  const overLimit = Buffer.alloc(MAX_MESSAGE_BYTES + 1, 0x61);

  test("client sends limit + 1 bytes -> client 1009, upstream 1001", async () => {
    await using upstream = await startScriptedRawUpstream();
    await using relay = await startRelay(relayOptions(upstream.url));
    await using good = await openGoodClient(relay);
    await using client = await openRawClient(relay);
    const upstreamSide = await upstreamConnection(upstream, 2);

    client.send(Opcode.BINARY, overLimit);

    expect((await closeFrameOf(client))?.code).toBe(1009);
    expect(await closeFrameOf(upstreamSide)).toEqual({ code: 1001, reason: "client message too big" });
    expect(relay.stats().endCauses).toEqual({ message_too_big: 1 });
    expect(await roundTrip(good, "still relaying")).toEqual({ type: "text", text: "still relaying" });
  });

  test("upstream sends limit + 1 bytes -> upstream 1009, client 1014", async () => {
    await using upstream = await startScriptedRawUpstream({ "/big": (connection) => connection.send(Opcode.BINARY, overLimit) });
    await using relay = await startRelay(relayOptions(upstream.url));
    await using good = await openGoodClient(relay);
    await using client = await openRawClient(relay, "/big");

    expect(await closeFrameOf(client)).toEqual({ code: 1014, reason: "upstream message too big" });
    expect((await closeFrameOf(await upstreamConnection(upstream, 2)))?.code).toBe(1009);
    expect(relay.stats().endCauses).toEqual({ message_too_big: 1 });
    expect(await roundTrip(good, "still relaying")).toEqual({ type: "text", text: "still relaying" });
  });

  test("upstream sends limit + 1 bytes -> Bun client sees 1014, clean", async () => {
    await using upstream = await startScriptedRawUpstream({ "/big": (connection) => connection.send(Opcode.BINARY, overLimit) });
    await using relay = await startRelay(relayOptions(upstream.url));
    await using client = TestClient.bun(`${relay.url}/big`);

    expect(await closeEventOf(client)).toEqual({ code: 1014, reason: "upstream message too big", wasClean: true });
  });

  test("client fragments over the limit in total -> client 1009, upstream 1001", async () => {
    await using upstream = await startScriptedRawUpstream();
    await using relay = await startRelay(relayOptions(upstream.url));
    await using client = await openRawClient(relay);
    const upstreamSide = await upstreamConnection(upstream, 1);

    client.send(Opcode.BINARY, Buffer.alloc(800), { fin: false });
    client.send(Opcode.CONTINUATION, Buffer.alloc(800));

    expect((await closeFrameOf(client))?.code).toBe(1009);
    expect(await closeFrameOf(upstreamSide)).toEqual({ code: 1001, reason: "client message too big" });
  });

  test("upstream fragments over the limit in total -> client 1014", async () => {
    await using upstream = await startScriptedRawUpstream({
      "/big": (connection) => {
        connection.send(Opcode.BINARY, Buffer.alloc(800), { fin: false });
        connection.send(Opcode.CONTINUATION, Buffer.alloc(800));
      },
    });
    await using relay = await startRelay(relayOptions(upstream.url));
    await using client = await openRawClient(relay, "/big");

    expect(await closeFrameOf(client)).toEqual({ code: 1014, reason: "upstream message too big" });
  });

  test("upstream text of 600 'é' (1200 bytes) -> client 1014", async () => {
    await using upstream = await startScriptedRawUpstream({ "/big": (connection) => connection.send(Opcode.TEXT, "é".repeat(600)) });
    await using relay = await startRelay(relayOptions(upstream.url));
    await using client = await openRawClient(relay, "/big");

    expect(await closeFrameOf(client)).toEqual({ code: 1014, reason: "upstream message too big" });
  });

  test("message of exactly the limit -> crosses both ways", async () => {
    await using upstream = startRecordingBunUpstream();
    await using relay = await startRelay(relayOptions(upstream.url));
    await using client = await openClient("bun", relay.url);
    const atLimit = "a".repeat(MAX_MESSAGE_BYTES);

    expect(await roundTrip(client, atLimit)).toEqual({ type: "text", text: atLimit });
    expect(client.closeEvent).toBeUndefined();
  });
});

describe("fragmented upstream message", () => {
  function sendHelloWorld(connection: RawConnection): void {
    connection.send(Opcode.TEXT, "Hello", { fin: false });
    connection.send(Opcode.CONTINUATION, ", ", { fin: false });
    connection.send(Opcode.PING, "mid");
    connection.send(Opcode.CONTINUATION, "world");
    connection.send(Opcode.TEXT, "end");
  }

  test("three fragments with a ping -> Bun client gets one 'Hello, world'", async () => {
    await using upstream = await startScriptedRawUpstream({ "/fragments": sendHelloWorld });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.bun(`${relay.url}/fragments`);

    const received = await client.waitForMessages(2);

    expect(received).toEqual([
      { type: "text", text: "Hello, world" },
      { type: "text", text: "end" },
    ]);
  });

  test("three fragments with a ping -> raw client gets one text frame", async () => {
    await using upstream = await startScriptedRawUpstream({ "/fragments": sendHelloWorld });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = await openRawClient(relay, "/fragments");

    await client.waitForFrame((frame) => frame.payload.toString() === "end");

    const dataFrames = client.frames.filter((frame) => frame.opcode !== Opcode.PING && frame.opcode !== Opcode.PONG);
    expect(dataFrames.map((frame) => [frame.opcode, frame.fin, frame.payload.toString()])).toEqual([
      [Opcode.TEXT, true, "Hello, world"],
      [Opcode.TEXT, true, "end"],
    ]);
    const pong = await (await upstreamConnection(upstream, 1))?.waitForFrame((frame) => frame.opcode === Opcode.PONG);
    expect(pong?.payload.toString()).toBe("mid");
  });
});
