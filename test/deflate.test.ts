/**
 * permessage-deflate (RFC 7692) on each hop, `deflate: "client" | "upstream"
 * | "both"`, and off by default. Raw peers read the extension headers and
 * the RSV1 bit on the wire, and inflate payloads with node:zlib. `ws` peers
 * use their default settings, which keep the compression context between
 * messages ("context takeover"). Bun's server has had inflation bugs with
 * context takeover, so every mode also carries 300 messages of mixed sizes
 * both ways, some larger than the 32 KiB window.
 */

import { describe, expect, test } from "bun:test";
import { constants, deflateRawSync, inflateRawSync } from "node:zlib";
import { WebSocketServer, WebSocket as WsWebSocket } from "ws";
import { type DeflateMode, createRelay } from "../src/index.ts";
import { type Received, type TestRelay, TestClient, startRelay, waitFor } from "./helpers/peers.ts";
import { type Frame, type RawConnection, Opcode, rawConnect, startRawUpstream } from "./helpers/raw.ts";

/** The 4 bytes that end every deflate block flushed with Z_SYNC_FLUSH; RFC 7692 drops them from the payload. */
const SYNC_TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
const RSV1 = 0b100;

/** Builds a 1 KiB JSON-like text that compresses well and differs from message to message. */
function compressibleText(index: number): string {
  const item = (i: number) => `{"id":${index * 100 + i},"method":"tools/call","params":{"name":"search","query":"relay ${index}"}},`;
  let text = "[";
  for (let i = 0; text.length < 1024; i++) text += item(i);
  return text.slice(0, 1024);
}

/** Inflates one permessage-deflate payload that was compressed without context from earlier messages. */
function inflatePayload(payload: Buffer): Buffer {
  return inflateRawSync(Buffer.concat([payload, SYNC_TAIL]), { finishFlush: constants.Z_SYNC_FLUSH });
}

/** Compresses `data` as one permessage-deflate payload, with no context from earlier messages. */
function deflatePayload(data: string): Buffer {
  const out = deflateRawSync(Buffer.from(data), { finishFlush: constants.Z_SYNC_FLUSH });
  return out.subarray(0, out.length - SYNC_TAIL.length);
}

/** Builds mixed messages from a fixed recipe: mostly small, some past the 32 KiB deflate window, some binary. */
function mixedMessages(count: number): Array<string | Buffer> {
  const words = Array.from({ length: 200 }, (_, i) => `w${i.toString(36)}${"xyz".repeat(i % 4)}`);
  let state = 7;
  const next = (): number => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state;
  };
  return Array.from({ length: count }, (_, index) => {
    const size = 1 + (index % 10 === 9 ? next() % 100_000 : next() % 4000);
    let text = "";
    while (text.length < size) text += `${words[next() % words.length]}${next() % 20 === 0 ? "é☕" : " "}`;
    text = text.slice(0, size);
    return index % 5 === 4 ? Buffer.from(text) : text;
  });
}

function asBuffer(message: string | Buffer): Buffer {
  return typeof message === "string" ? Buffer.from(message) : message;
}

// ---------------------------------------------------------------------------
// ws peers with their default permessage-deflate settings

interface WsPeer {
  socket: WsWebSocket;
  received: Buffer[];
  /** Sec-WebSocket-Extensions of the 101 as the client read it. */
  extensions: string;
}

/** Opens a `ws` client with its default permessage-deflate offer (context takeover on both sides). */
async function openWsClient(url: string): Promise<WsPeer & AsyncDisposable> {
  const socket = new WsWebSocket(url, { maxPayload: 256 * 1024 * 1024 });
  const peer: WsPeer = { socket, received: [], extensions: "" };
  socket.on("upgrade", (response) => {
    peer.extensions = String(response.headers["sec-websocket-extensions"] ?? "");
  });
  socket.on("message", (data: Buffer) => peer.received.push(data));
  await new Promise<void>((resolve, reject) => {
    socket.once("open", () => resolve());
    socket.once("error", reject);
  });
  return Object.assign(peer, { [Symbol.asyncDispose]: async () => socket.terminate() });
}

interface WsUpstream extends AsyncDisposable {
  url: string;
  /** Messages received on the first connection, as bytes. */
  received: Buffer[];
  /** The upgrade requests' Sec-WebSocket-Extensions, one per connection ("" for none). */
  offers: string[];
  /** The extensions each connection negotiated. */
  negotiated: string[];
}

/**
 * Starts a `ws` echo upstream. With `deflate`, it accepts permessage-deflate
 * with its default context takeover and compresses every message (threshold 0).
 */
async function startWsEcho(deflate: boolean): Promise<WsUpstream> {
  const server = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    maxPayload: 256 * 1024 * 1024,
    perMessageDeflate: deflate ? { threshold: 0 } : false,
  });
  await new Promise<void>((resolve) => server.once("listening", () => resolve()));
  const upstream = { received: [] as Buffer[], offers: [] as string[], negotiated: [] as string[] };
  server.on("connection", (socket, request) => {
    const first = upstream.offers.length === 0;
    upstream.offers.push(String(request.headers["sec-websocket-extensions"] ?? ""));
    upstream.negotiated.push(socket.extensions);
    socket.on("message", (data: Buffer, isBinary) => {
      if (first) upstream.received.push(data);
      socket.send(data, { binary: isBinary });
    });
  });
  const port = (server.address() as { port: number }).port;
  return Object.assign(upstream, {
    url: `ws://127.0.0.1:${port}`,
    [Symbol.asyncDispose]: async () => {
      for (const client of server.clients) client.terminate();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
}

async function relayWith(upstream: string, deflate?: DeflateMode): Promise<TestRelay> {
  return startRelay(deflate === undefined ? { upstream } : { upstream, deflate });
}

/** Sends `messages` from a `ws` client through the relay and checks both directions byte for byte. */
async function expectRoundTrips(client: WsPeer, upstream: WsUpstream, messages: Array<string | Buffer>): Promise<void> {
  for (const message of messages) client.socket.send(message, { binary: typeof message !== "string" });
  await waitFor(() => client.received.length >= messages.length, 20_000);
  expect(upstream.received).toHaveLength(messages.length);
  expect(client.received).toHaveLength(messages.length);
  for (let i = 0; i < messages.length; i++) {
    const sent = asBuffer(messages[i] as string | Buffer);
    expect({ index: i, upstream: upstream.received[i]?.equals(sent) }).toEqual({ index: i, upstream: true });
    expect({ index: i, client: client.received[i]?.equals(sent) }).toEqual({ index: i, client: true });
  }
}

// ---------------------------------------------------------------------------
// Raw peers

/** Opens a raw client that offers permessage-deflate (or not); disposal destroys its socket. */
async function openRawClient(relay: TestRelay, offer: boolean) {
  const headers: Record<string, string> = offer ? { "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits" } : {};
  const { handshake, connection } = await rawConnect(relay.port, { headers });
  if (connection === null) throw new Error(`relay answered ${handshake.status}, expected 101: ${handshake.body}`);
  return Object.assign(connection, { handshake, [Symbol.asyncDispose]: async () => connection.destroy() });
}

async function dataFramesOf(connection: RawConnection, count: number): Promise<Frame[]> {
  const isData = (frame: Frame): boolean => frame.opcode === Opcode.TEXT || frame.opcode === Opcode.BINARY;
  await waitFor(() => connection.frames.filter(isData).length >= count);
  return connection.frames.filter(isData);
}

/** Makes a raw upstream reply to the relay's close frame and end the connection, as a server does. */
function answerClose(connection: RawConnection): void {
  connection.socket.on("data", () => {
    const close = connection.frames.find((frame) => frame.opcode === Opcode.CLOSE);
    if (close === undefined || connection.socket.writableEnded) return;
    connection.send(Opcode.CLOSE, close.payload);
    connection.socket.end();
  });
}

/**
 * Starts a raw upstream that replies to close frames and runs `onOpen` on
 * each connection. `extensions` goes into its 101.
 */
async function startRawPeer(onOpen: (connection: RawConnection) => void = () => {}, extensions?: string) {
  return startRawUpstream(
    (connection) => {
      answerClose(connection);
      onOpen(connection);
    },
    extensions === undefined ? {} : { extensions },
  );
}

/** Starts a raw upstream that sends each text in `texts`, uncompressed, when a connection opens. */
async function startRawSender(texts: string[]) {
  return startRawPeer((connection) => {
    for (const text of texts) connection.send(Opcode.TEXT, text);
  });
}

// ---------------------------------------------------------------------------

describe("deflate off (default)", () => {
  test("client offer -> no extension, no RSV1 either way", async () => {
    const texts = [compressibleText(0), compressibleText(1)];
    await using upstream = await startRawSender(texts);
    await using relay = await relayWith(upstream.url);
    await using client = await openRawClient(relay, true);

    const frames = await dataFramesOf(client, 2);

    expect(client.handshake.headers["sec-websocket-extensions"]).toBeUndefined();
    expect(frames.map((frame) => frame.rsv)).toEqual([0, 0]);
    expect(frames.map((frame) => frame.payload.toString())).toEqual(texts);
    expect(upstream.requests[0]).not.toMatch(/sec-websocket-extensions/i);
  });

  test("ws client and deflating ws upstream -> plain frames, intact", async () => {
    await using upstream = await startWsEcho(true);
    await using relay = await relayWith(upstream.url);
    await using client = await openWsClient(relay.url);

    await expectRoundTrips(client, upstream, [0, 1, 2, 3].map(compressibleText));

    expect(client.extensions).toBe("");
    expect(upstream.offers).toEqual([""]);
    expect(upstream.negotiated).toEqual([""]);
  });
});

describe("deflate client", () => {
  test("ws client with context takeover -> four 1 KiB texts intact", async () => {
    await using upstream = await startWsEcho(false);
    await using relay = await relayWith(upstream.url, "client");
    await using client = await openWsClient(relay.url);

    await expectRoundTrips(client, upstream, [0, 1, 2, 3].map(compressibleText));

    expect(client.extensions).toContain("permessage-deflate");
    // The client may keep its context (the relay inflates with a window per socket).
    expect(client.extensions).not.toContain("client_no_context_takeover");
    // The relay's shared compressor resets after each message.
    expect(client.extensions).toContain("server_no_context_takeover");
    expect(upstream.offers).toEqual([""]);
  });

  test("relay compresses what it sends: RSV1 set, payload inflates", async () => {
    const texts = [compressibleText(0), compressibleText(1)];
    await using upstream = await startRawSender(texts);
    await using relay = await relayWith(upstream.url, "client");
    await using client = await openRawClient(relay, true);

    const frames = await dataFramesOf(client, 2);

    expect(client.handshake.headers["sec-websocket-extensions"]).toContain("permessage-deflate");
    expect(frames.map((frame) => frame.rsv)).toEqual([RSV1, RSV1]);
    for (const frame of frames) expect(frame.payload.length).toBeLessThan(512);
    expect(frames.map((frame) => inflatePayload(frame.payload).toString())).toEqual(texts);
  });

  test("raw client compressed frame -> upstream gets the text", async () => {
    const text = compressibleText(3);
    await using upstream = await startRawPeer();
    await using relay = await relayWith(upstream.url, "client");
    await using client = await openRawClient(relay, true);
    await waitFor(() => upstream.connections.length === 1);

    client.send(Opcode.TEXT, deflatePayload(text), { rsv: RSV1 });

    const frame = await upstream.connections[0]?.waitForFrame((f) => f.opcode === Opcode.TEXT);
    expect(frame?.payload.toString()).toBe(text);
    expect(frame?.rsv).toBe(0);
  });

  test("client without an offer -> no extension, plain frames", async () => {
    const text = compressibleText(0);
    await using upstream = await startRawSender([text]);
    await using relay = await relayWith(upstream.url, "client");
    await using client = await openRawClient(relay, false);

    const frames = await dataFramesOf(client, 1);

    expect(client.handshake.headers["sec-websocket-extensions"]).toBeUndefined();
    expect(frames.map((frame) => [frame.rsv, frame.payload.toString()])).toEqual([[0, text]]);
  });

  test("300 mixed messages with context takeover -> intact both ways", async () => {
    await using upstream = await startWsEcho(false);
    await using relay = await relayWith(upstream.url, "client");
    await using client = await openWsClient(relay.url);

    await expectRoundTrips(client, upstream, mixedMessages(300));
  });
});

describe("deflate upstream", () => {
  test("upstream sees the offer -> four 1 KiB texts intact", async () => {
    await using upstream = await startWsEcho(true);
    await using relay = await relayWith(upstream.url, "upstream");
    await using client = TestClient.bun(relay.url);
    await client.opened;
    const texts = [0, 1, 2, 3].map(compressibleText);

    for (const text of texts) client.send(text);
    const received: Received[] = await client.waitForMessages(4);

    expect(upstream.offers[0]).toContain("permessage-deflate");
    expect(upstream.negotiated[0]).toContain("permessage-deflate");
    expect(upstream.received.map((data) => data.toString())).toEqual(texts);
    expect(received).toEqual(texts.map((text) => ({ type: "text", text })));
  });

  test("relay compresses toward the upstream: RSV1 set, payload inflates", async () => {
    const texts = [compressibleText(0), compressibleText(1)];
    // client_no_context_takeover makes each message inflate on its own.
    await using upstream = await startRawPeer(() => {}, "permessage-deflate; client_no_context_takeover");
    await using relay = await relayWith(upstream.url, "upstream");
    await using client = TestClient.bun(relay.url);
    await client.opened;
    const upstreamSide = upstream.connections[0] as RawConnection;

    for (const text of texts) client.send(text);
    const frames = await dataFramesOf(upstreamSide, 2);

    expect(frames.map((frame) => frame.rsv)).toEqual([RSV1, RSV1]);
    expect(frames.map((frame) => inflatePayload(frame.payload).toString())).toEqual(texts);
  });

  test("compressed frame from the upstream -> client gets the text", async () => {
    const text = compressibleText(2);
    await using upstream = await startRawPeer(
      (connection) => connection.send(Opcode.TEXT, deflatePayload(text), { rsv: RSV1 }),
      "permessage-deflate; server_no_context_takeover",
    );
    await using relay = await relayWith(upstream.url, "upstream");
    await using client = TestClient.bun(relay.url);

    expect(await client.waitForMessages(1)).toEqual([{ type: "text", text }]);
  });

  test("300 mixed messages with context takeover -> intact both ways", async () => {
    await using upstream = await startWsEcho(true);
    await using relay = await relayWith(upstream.url, "upstream");
    await using client = await openWsClient(relay.url);

    await expectRoundTrips(client, upstream, mixedMessages(300));

    // The relay negotiated with the upstream only.
    expect(client.extensions).toBe("");
    expect(upstream.negotiated[0]).toBe("permessage-deflate");
  });
});

describe("deflate both", () => {
  test("four 1 KiB texts with context takeover -> intact", async () => {
    await using upstream = await startWsEcho(true);
    await using relay = await relayWith(upstream.url, "both");
    await using client = await openWsClient(relay.url);

    await expectRoundTrips(client, upstream, [0, 1, 2, 3].map(compressibleText));

    expect(client.extensions).toContain("permessage-deflate");
    expect(client.extensions).not.toContain("client_no_context_takeover");
    expect(upstream.negotiated[0]).toContain("permessage-deflate");
  });

  test("300 mixed messages with context takeover -> intact both ways", async () => {
    await using upstream = await startWsEcho(true);
    await using relay = await relayWith(upstream.url, "both");
    await using client = await openWsClient(relay.url);

    await expectRoundTrips(client, upstream, mixedMessages(300));
  });
});

test("createRelay with an unknown deflate mode -> ConfigError naming it", () => {
  expect(() => createRelay({ deflate: "always" as DeflateMode })).toThrow('deflate: invalid value "always"; use one of off, client, upstream, both');
});
