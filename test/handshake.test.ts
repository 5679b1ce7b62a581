/**
 * The relay's handshake on real sockets: what the upstream request carries,
 * which subprotocol the client is told, how failed dials are answered, and
 * that messages sent the moment either side opens are not lost.
 */

import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { type Server as NetServer, type Socket, connect, createServer } from "node:net";
import {
  TestClient,
  type TestRelay,
  recordingLogger,
  startBunEcho,
  startBunUpstream,
  startRelay,
  startWsUpstream,
  waitFor,
} from "./helpers/peers.ts";
import { Opcode, type RawConnection, type RawHandshake, rawConnect, startRawUpstream } from "./helpers/raw.ts";

const WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** Lines of a raw HTTP head whose field name is `name`, case-insensitively. */
function headerLines(handshake: RawHandshake, name: string): string[] {
  const prefix = `${name.toLowerCase()}:`;
  return handshake.rawHeaderLines.filter((line) => line.toLowerCase().startsWith(prefix));
}

/** Sends every text and binary frame back and answers a close frame with the same payload. */
function echoFrames(connection: RawConnection): void {
  let seen = connection.frames.length;
  connection.socket.on("data", () => {
    for (; seen < connection.frames.length; seen++) {
      const frame = connection.frames[seen];
      if (frame === undefined) continue;
      if (frame.opcode === Opcode.TEXT || frame.opcode === Opcode.BINARY) connection.send(frame.opcode, frame.payload);
      if (frame.opcode === Opcode.CLOSE) {
        connection.send(Opcode.CLOSE, frame.payload);
        connection.socket.end();
      }
    }
  });
}

/** Connects a Bun client through `relay`, sends one message and returns what came back. */
async function relayRoundTrip(relay: TestRelay, path = "/"): Promise<string | undefined> {
  await using client = TestClient.bun(`${relay.url}${path}`);
  await client.opened;
  client.send("still relaying");
  const [message] = await client.waitForMessages(1);
  return message?.text;
}

/**
 * A TCP server that reads each request head and then, per request path,
 * sends nothing ("mute"), completes the WebSocket handshake and echoes
 * ("accept"), or writes the given HTTP text and keeps the socket open so the
 * test can see whether the relay closes it.
 */
interface ScriptedUpstream extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  readonly requests: string[];
  /** Sockets accepted so far, in order. */
  readonly sockets: Socket[];
  /** Number of accepted sockets that have closed. */
  readonly closedCount: () => number;
}

type Script = "mute" | "accept" | { answer: string };

async function startScriptedUpstream(script: (path: string) => Script): Promise<ScriptedUpstream> {
  const requests: string[] = [];
  const sockets: Socket[] = [];
  let closed = 0;
  const server: NetServer = createServer((socket) => {
    sockets.push(socket);
    socket.on("close", () => closed++);
    socket.on("error", () => {});
    let head = "";
    const onData = (chunk: Buffer): void => {
      head += chunk.toString("latin1");
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      socket.off("data", onData);
      const requestHead = head.slice(0, end);
      requests.push(requestHead);
      const path = /^GET (\S+)/.exec(requestHead)?.[1] ?? "";
      const action = script(path);
      if (action === "mute") return;
      if (action === "accept") {
        const key = /sec-websocket-key:\s*(\S+)/i.exec(requestHead)?.[1] ?? "";
        const accept = createHash("sha1").update(key + WEBSOCKET_GUID).digest("base64");
        socket.write(
          `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
        );
        socket.on("data", (frameBytes: Buffer) => echoRawFrames(socket, frameBytes));
        return;
      }
      socket.write(action.answer);
    };
    socket.on("data", onData);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const port = (server.address() as { port: number }).port;
  return {
    url: `ws://127.0.0.1:${port}`,
    port,
    requests,
    sockets,
    closedCount: () => closed,
    [Symbol.asyncDispose]: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Echoes single-chunk masked text frames of under 126 bytes, which is all
 * `relayRoundTrip` sends; anything else is ignored.
 */
function echoRawFrames(socket: Socket, bytes: Buffer): void {
  const opcode = (bytes[0] ?? 0) & 0x0f;
  const length = (bytes[1] ?? 0) & 0x7f;
  if (opcode !== Opcode.TEXT || length >= 126 || bytes.length < 6 + length) return;
  const mask = bytes.subarray(2, 6);
  const payload = Buffer.alloc(length);
  for (let i = 0; i < length; i++) payload[i] = (bytes[6 + i] as number) ^ (mask[i & 3] as number);
  socket.write(Buffer.concat([Buffer.from([0x81, length]), payload]));
}

/** Returns a 127.0.0.1 port on which nothing listens any more. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe("upstream request", () => {
  test("path and query -> appended to upstream path", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: `${upstream.url}/base` });
    const { handshake, socket } = await rawConnect(relay.port, { path: "/chat/room1?user=7&x=%20y" });
    socket.destroy();
    expect(handshake.status).toBe(101);
    const seen = new URL(upstream.requests[0]?.url ?? "");
    expect(seen.pathname + seen.search).toBe("/base/chat/room1?user=7&x=%20y");
  });

  test("upstream query and client query -> merged", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: `${upstream.url}/base?key=a` });
    const { socket } = await rawConnect(relay.port, { path: "/chat?user=7" });
    socket.destroy();
    const seen = new URL(upstream.requests[0]?.url ?? "");
    expect(seen.pathname + seen.search).toBe("/base/chat?key=a&user=7");
  });

  describe("headers", () => {
    const sent = {
      Host: "chat.example.test:8080",
      Connection: "Upgrade, X-Hop",
      "X-Hop": "1",
      "Keep-Alive": "timeout=5",
      "Proxy-Authorization": "Basic cHJveHk6cHc=",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
      "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
      "X-Forwarded-For": "203.0.113.9",
      Cookie: "session=abc; theme=dark",
      Authorization: "Bearer t0k3n",
      Origin: "https://app.example.test",
      "User-Agent": "handshake-test/1.0",
      "X-Trace-Id": "trace-42",
    };
    let seen: Headers;

    /** Sends `sent` through a fresh relay and returns the headers the upstream received. */
    async function upstreamHeaders(): Promise<Headers> {
      await using upstream = startBunEcho();
      await using relay = await startRelay({ upstream: upstream.url });
      const { handshake, socket } = await rawConnect(relay.port, { path: "/", headers: sent });
      socket.destroy();
      expect(handshake.status).toBe(101);
      return upstream.requests[0]?.headers ?? new Headers();
    }

    test.each([
      ["cookie", "session=abc; theme=dark"],
      ["authorization", "Bearer t0k3n"],
      ["origin", "https://app.example.test"],
      ["user-agent", "handshake-test/1.0"],
      ["x-trace-id", "trace-42"],
    ])("end-to-end %s -> forwarded", async (name, value) => {
      seen ??= await upstreamHeaders();
      expect(seen.get(name)).toBe(value);
    });

    test.each(["x-hop", "keep-alive", "proxy-authorization", "sec-websocket-extensions"])(
      "hop-by-hop %s -> not forwarded",
      async (name) => {
        seen ??= await upstreamHeaders();
        expect(seen.get(name)).toBeNull();
      },
    );

    test("Connection -> the upstream leg's own", async () => {
      seen ??= await upstreamHeaders();
      expect(seen.get("connection")?.toLowerCase()).toBe("upgrade");
    });

    test("client Sec-WebSocket-Key -> not reused upstream", async () => {
      seen ??= await upstreamHeaders();
      const upstreamKey = seen.get("sec-websocket-key");
      expect(upstreamKey).not.toBeNull();
      expect(upstreamKey).not.toBe(sent["Sec-WebSocket-Key"]);
    });

    test("X-Forwarded-For -> client ip appended", async () => {
      seen ??= await upstreamHeaders();
      expect(seen.get("x-forwarded-for")).toBe("203.0.113.9, 127.0.0.1");
    });

    test("X-Forwarded-Proto -> http", async () => {
      seen ??= await upstreamHeaders();
      expect(seen.get("x-forwarded-proto")).toBe("http");
    });

    test("X-Forwarded-Host -> client Host", async () => {
      seen ??= await upstreamHeaders();
      expect(seen.get("x-forwarded-host")).toBe("chat.example.test:8080");
    });

    test("no incoming X-Forwarded-For -> client ip", async () => {
      await using upstream = startBunEcho();
      await using relay = await startRelay({ upstream: upstream.url });
      const { socket } = await rawConnect(relay.port);
      socket.destroy();
      expect(upstream.requests[0]?.headers.get("x-forwarded-for")).toBe("127.0.0.1");
    });
  });
});

describe("subprotocol", () => {
  const offer = { "Sec-WebSocket-Protocol": "ocpp1.6, ocpp2.0.1" };

  test("Bun upstream picks second -> one header line", async () => {
    await using upstream = startBunUpstream({}, { upgradeHeaders: () => ({ "Sec-WebSocket-Protocol": "ocpp2.0.1" }) });
    await using relay = await startRelay({ upstream: upstream.url });
    const { handshake, socket } = await rawConnect(relay.port, { headers: offer });
    socket.destroy();
    expect(handshake.status).toBe(101);
    expect(headerLines(handshake, "sec-websocket-protocol")).toEqual(["Sec-WebSocket-Protocol: ocpp2.0.1"]);
  });

  test("client offer -> forwarded upstream", async () => {
    await using upstream = startBunUpstream({}, { upgradeHeaders: () => ({ "Sec-WebSocket-Protocol": "ocpp2.0.1" }) });
    await using relay = await startRelay({ upstream: upstream.url });
    const { socket } = await rawConnect(relay.port, { headers: offer });
    socket.destroy();
    expect(upstream.requests[0]?.headers.get("sec-websocket-protocol")).toBe("ocpp1.6, ocpp2.0.1");
  });

  test.each(["bun", "ws"] as const)("Bun upstream picks second -> %s client sees it", async (kind) => {
    await using upstream = startBunUpstream({}, { upgradeHeaders: () => ({ "Sec-WebSocket-Protocol": "ocpp2.0.1" }) });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.of(kind, relay.url, ["ocpp1.6", "ocpp2.0.1"]);
    await client.opened;
    expect(client.protocol).toBe("ocpp2.0.1");
  });

  test("Bun upstream picks none -> no header line", async () => {
    await using upstream = startBunUpstream({}, { upgradeHeaders: () => ({ "Sec-WebSocket-Protocol": "" }) });
    await using relay = await startRelay({ upstream: upstream.url });
    const { handshake, socket } = await rawConnect(relay.port, { headers: offer });
    socket.destroy();
    expect(handshake.status).toBe(101);
    expect(headerLines(handshake, "sec-websocket-protocol")).toEqual([]);
  });

  test.each(["bun", "ws"] as const)("Bun upstream picks none -> %s client protocol empty", async (kind) => {
    await using upstream = startBunUpstream({}, { upgradeHeaders: () => ({ "Sec-WebSocket-Protocol": "" }) });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.of(kind, relay.url, ["ocpp1.6", "ocpp2.0.1"]);
    await client.opened;
    expect(client.protocol).toBe("");
  });

  test("ws upstream picks second -> one header line", async () => {
    await using upstream = await startWsUpstream(undefined, {
      handleProtocols: (protocols) => (protocols.has("ocpp2.0.1") ? "ocpp2.0.1" : false),
    });
    await using relay = await startRelay({ upstream: upstream.url });
    const { handshake, socket } = await rawConnect(relay.port, { headers: offer });
    socket.destroy();
    expect(handshake.status).toBe(101);
    expect(headerLines(handshake, "sec-websocket-protocol")).toEqual(["Sec-WebSocket-Protocol: ocpp2.0.1"]);
  });

  test("ws upstream picks none -> no header line", async () => {
    await using upstream = await startWsUpstream(undefined, { handleProtocols: () => false });
    await using relay = await startRelay({ upstream: upstream.url });
    const { handshake, socket } = await rawConnect(relay.port, { headers: offer });
    socket.destroy();
    expect(handshake.status).toBe(101);
    expect(headerLines(handshake, "sec-websocket-protocol")).toEqual([]);
  });

  test("ws upstream picks none -> Bun client protocol empty", async () => {
    await using upstream = await startWsUpstream(undefined, { handleProtocols: () => false });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.bun(relay.url, ["ocpp1.6", "ocpp2.0.1"]);
    await client.opened;
    expect(client.protocol).toBe("");
  });
});

describe("upstream rejects the handshake", () => {
  const answers: Record<string, string> = {
    "/status/403": "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
    "/status/404": "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    "/status/500": "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
  };

  test.each([
    ["/status/403", 403],
    ["/status/404", 404],
    ["/status/500", 502],
  ])("upstream answers %s -> client gets %d", async (path, expected) => {
    await using upstream = await startRawUpstream(echoFrames, {
      answer: (head) => answers[/^GET (\S+)/.exec(head)?.[1] ?? ""],
    });
    await using relay = await startRelay({ upstream: upstream.url, dialTimeoutMs: 20_000 });
    const { handshake, socket } = await rawConnect(relay.port, { path });
    socket.destroy();
    expect(handshake.status).toBe(expected);
    expect(relay.stats().activePairs).toBe(0);
    expect(await relayRoundTrip(relay)).toBe("still relaying");
  });

  test.each(["/status/403", "/status/500"])("upstream answers %s -> relay closes upstream socket", async (path) => {
    await using upstream = await startScriptedUpstream((requested) => {
      const answer = answers[requested];
      return answer === undefined ? "accept" : { answer };
    });
    await using relay = await startRelay({ upstream: upstream.url, dialTimeoutMs: 20_000 });
    const { socket } = await rawConnect(relay.port, { path });
    socket.destroy();
    expect(await waitFor(() => upstream.closedCount() === 1)).toBe(true);
    expect(relay.stats().activePairs).toBe(0);
  });
});

describe("dial failures and bad requests", () => {
  test("upstream port closed -> 502", async () => {
    const port = await closedPort();
    await using relay = await startRelay({ upstream: `ws://127.0.0.1:${port}` });
    const { handshake, socket } = await rawConnect(relay.port);
    socket.destroy();
    expect(handshake.status).toBe(502);
    expect(relay.stats().activePairs).toBe(0);
  });

  test("upstream port closed twice -> 502 both times", async () => {
    const port = await closedPort();
    await using relay = await startRelay({ upstream: `ws://127.0.0.1:${port}` });
    const first = await rawConnect(relay.port);
    first.socket.destroy();
    const second = await rawConnect(relay.port);
    second.socket.destroy();
    expect(second.handshake.status).toBe(502);
    expect(relay.stats().handshakes["502"]).toBe(2);
  });

  test("mute upstream -> 504 and upstream socket closed", async () => {
    await using upstream = await startScriptedUpstream((path) => (path === "/mute" ? "mute" : "accept"));
    await using relay = await startRelay({ upstream: upstream.url, dialTimeoutMs: 300 });
    const { handshake, socket } = await rawConnect(relay.port, { path: "/mute" });
    socket.destroy();
    expect(handshake.status).toBe(504);
    expect(await waitFor(() => upstream.closedCount() === 1, 5_000)).toBe(true);
    expect(relay.stats().activePairs).toBe(0);
    expect(await relayRoundTrip(relay)).toBe("still relaying");
  });

  describe("bad requests", () => {
    const good = {
      Host: "relay.test",
      Upgrade: "websocket",
      Connection: "Upgrade",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
      "Sec-WebSocket-Version": "13",
    };
    const head = (method: string, headers: Record<string, string>): string =>
      `${method} / HTTP/1.1\r\n${Object.entries(headers)
        .map(([name, value]) => `${name}: ${value}\r\n`)
        .join("")}\r\n`;
    const { Upgrade: _upgrade, Connection: _connection, ...plain } = good;
    const { "Sec-WebSocket-Key": _key, ...keyless } = good;

    test.each([
      ["plain GET", head("GET", { ...plain, Connection: "keep-alive" }), 426],
      ["POST upgrade", head("POST", { ...good, "Content-Length": "0" }), 405],
      ["missing key", head("GET", keyless), 400],
      ["malformed key", head("GET", { ...good, "Sec-WebSocket-Key": "not-a-key" }), 400],
      ["version 8", head("GET", { ...good, "Sec-WebSocket-Version": "8" }), 426],
    ])("%s -> %d", async (_case, request, expected) => {
      await using upstream = startBunEcho();
      await using relay = await startRelay({ upstream: upstream.url });
      const { handshake, socket } = await rawConnect(relay.port, { request });
      socket.destroy();
      expect(handshake.status).toBe(expected);
      expect(upstream.requests.length).toBe(0);
      expect(await relayRoundTrip(relay)).toBe("still relaying");
    });

    test("plain GET -> Upgrade websocket header", async () => {
      await using upstream = startBunEcho();
      await using relay = await startRelay({ upstream: upstream.url });
      const { handshake, socket } = await rawConnect(relay.port, { request: head("GET", plain) });
      socket.destroy();
      expect(headerLines(handshake, "upgrade")).toEqual(["Upgrade: websocket"]);
    });

    test("version 8 -> Sec-WebSocket-Version 13 header", async () => {
      await using upstream = startBunEcho();
      await using relay = await startRelay({ upstream: upstream.url });
      const request = head("GET", { ...good, "Sec-WebSocket-Version": "8" });
      const { handshake, socket } = await rawConnect(relay.port, { request });
      socket.destroy();
      expect(headerLines(handshake, "sec-websocket-version")).toEqual(["Sec-WebSocket-Version: 13"]);
    });
  });
});

describe("messages at open", () => {
  const numbered = Array.from({ length: 100 }, (_, i) => `m${i}`);

  test.each(["bun", "ws"] as const)("Bun upstream sends 100 at open -> %s client gets all", async (kind) => {
    await using upstream = startBunUpstream({
      open(ws) {
        for (const text of numbered) ws.send(text);
      },
    });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.of(kind, relay.url);
    const got = await client.waitForMessages(100);
    expect(got.map((m) => m.text)).toEqual(numbered);
  });

  test.each(["bun", "ws"] as const)("ws upstream sends 100 at connection -> %s client gets all", async (kind) => {
    await using upstream = await startWsUpstream((socket) => {
      for (const text of numbered) socket.send(text);
    });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.of(kind, relay.url);
    const got = await client.waitForMessages(100);
    expect(got.map((m) => m.text)).toEqual(numbered);
  });

  test.each(["bun", "ws"] as const)("%s client sends 100 at open -> upstream gets all", async (kind) => {
    const received: string[] = [];
    await using upstream = startBunUpstream({
      message(_ws, message) {
        received.push(String(message));
      },
    });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.of(kind, relay.url);
    void client.opened.then(() => {
      for (const text of numbered) client.send(text);
    });
    await waitFor(() => received.length >= 100);
    expect(received).toEqual(numbered);
  });

  test.each(["bun", "ws"] as const)("upstream closes at open -> %s client gets 3 then 4000", async (kind) => {
    await using upstream = startBunUpstream({
      open(ws) {
        ws.send("a");
        ws.send("b");
        ws.send("c");
        ws.close(4000, "go away");
      },
    });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.of(kind, relay.url);
    const closed = await client.closed;
    expect(client.received.map((m) => m.text)).toEqual(["a", "b", "c"]);
    expect(closed.code).toBe(4000);
    expect(closed.reason).toBe("go away");
  });

  test("ws upstream closes at connection -> client gets 3 then 4000", async () => {
    await using upstream = await startWsUpstream((socket) => {
      socket.send("a");
      socket.send("b");
      socket.send("c");
      socket.close(4000, "go away");
    });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.bun(relay.url);
    const closed = await client.closed;
    expect(client.received.map((m) => m.text)).toEqual(["a", "b", "c"]);
    expect(closed.code).toBe(4000);
    expect(closed.reason).toBe("go away");
  });
});

describe("many pairs", () => {
  test("200 pairs x 20 messages -> no cross-talk", async () => {
    const PAIRS = 200;
    const MESSAGES = 20;
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url });
    const clients = Array.from({ length: PAIRS }, () => TestClient.bun(relay.url));
    try {
      await Promise.all(clients.map((client) => client.opened));
      expect(relay.stats().activePairs).toBe(PAIRS);

      const expected = (id: number): string[] => Array.from({ length: MESSAGES }, (_, i) => `${id}:${i}`);
      clients.forEach((client, id) => {
        for (const text of expected(id)) client.send(text);
      });
      await Promise.all(clients.map((client) => client.waitForMessages(MESSAGES, 15_000)));

      const wrong = clients.flatMap((client, id) => {
        const got = client.received.map((m) => m.text);
        return Bun.deepEquals(got, expected(id)) ? [] : [{ id, got }];
      });
      expect(wrong).toEqual([]);
    } finally {
      await Promise.all(clients.map((client) => client[Symbol.asyncDispose]()));
    }
    expect(await waitFor(() => relay.stats().activePairs === 0)).toBe(true);
  });
});

describe("client leaves during the dial", () => {
  test("client socket destroyed -> upstream dial ended", async () => {
    await using upstream = await startScriptedUpstream(() => "mute");
    await using relay = await startRelay({ upstream: upstream.url, dialTimeoutMs: 20_000 });
    const socket = connect(relay.port, "127.0.0.1");
    socket.on("error", () => {});
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    socket.write(
      "GET /pending HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    expect(await waitFor(() => upstream.requests.length === 1)).toBe(true);
    socket.destroy();
    expect(await waitFor(() => upstream.closedCount() === 1, 5_000)).toBe(true);
    expect(relay.stats().activePairs).toBe(0);
    expect(relay.stats().handshakes.client_left).toBe(1);
  });
});

describe("logs", () => {
  test("one pair -> open and closed lines with fields", async () => {
    const logger = recordingLogger();
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: `${upstream.url}/base?key=upstream-s3cret`, logger });
    const client = TestClient.bun(`${relay.url}/room?token=s3cret`);
    await client.opened;
    client.send("hello");
    client.send("wörld");
    await client.waitForMessages(2);
    client.close(1000, "done");
    await client.closed;
    await waitFor(() => logger.records.some((r) => r.msg === "pair closed"));

    const opened = logger.records.filter((r) => r.msg === "pair open");
    const closed = logger.records.filter((r) => r.msg === "pair closed");
    expect(opened.length).toBe(1);
    expect(closed.length).toBe(1);
    expect(opened[0]?.fields.client).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(opened[0]?.fields.upstream).toBe(`${upstream.url}/base/room`);

    const fields = closed[0]?.fields ?? {};
    expect(fields.client).toBe(opened[0]?.fields.client);
    expect(fields.upstream).toBe(`${upstream.url}/base/room`);
    expect(fields.cause).toBe("client_closed");
    expect(fields.closed_by).toBe("client");
    expect(fields.code).toBe(1000);
    expect(typeof fields.duration_ms).toBe("number");
    expect(fields.messages_to_upstream).toBe(2);
    expect(fields.bytes_to_upstream).toBe(11);
    expect(fields.messages_to_client).toBe(2);
    expect(fields.bytes_to_client).toBe(11);

    const leaking = logger.records.filter((r) => JSON.stringify(r).includes("s3cret"));
    expect(leaking).toEqual([]);
  });

  test("failed dials -> no query in any line", async () => {
    const logger = recordingLogger();
    const port = await closedPort();
    await using refusedRelay = await startRelay({ upstream: `ws://127.0.0.1:${port}/base?key=upstream-s3cret`, logger });
    const refused = await rawConnect(refusedRelay.port, { path: "/room?token=s3cret" });
    refused.socket.destroy();

    await using upstream = await startRawUpstream(() => {}, {
      answer: () => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    });
    await using rejectedRelay = await startRelay({ upstream: `${upstream.url}/base?key=upstream-s3cret`, logger });
    const rejected = await rawConnect(rejectedRelay.port, { path: "/room?token=s3cret" });
    rejected.socket.destroy();

    expect(logger.records.filter((r) => r.level === "error").length).toBe(2);
    const leaking = logger.records.filter((r) => JSON.stringify(r).includes("s3cret"));
    expect(leaking).toEqual([]);
  });
});
