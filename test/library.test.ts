/**
 * wsbridge embedded in another Bun server: `dialUpstream`, `bridge`,
 * `bridgeHandlers` and the `onMessage` hook, plus `createRelay`'s surface.
 */

import { describe, expect, test } from "bun:test";
import type { ServerWebSocket } from "bun";
import {
  type Bridge,
  type BridgeData,
  type Direction,
  HandshakeError,
  bridge,
  bridgeHandlers,
  createRelay,
  dialUpstream,
  serveWithKeepAlive,
  silentLogger,
} from "../src/index.ts";
import { TestClient, recordingLogger, startBunEcho, startBunUpstream, waitFor } from "./helpers/peers.ts";
import { startRawUpstream } from "./helpers/raw.ts";
import { tcpTimers } from "./helpers/tcp.ts";

describe("createRelay", () => {
  test("port 0 -> bound port and url after start", async () => {
    const relay = createRelay({ port: 0, logger: silentLogger });
    expect(() => relay.port).toThrow("not started");
    await relay.start();
    expect(relay.port).toBeGreaterThan(0);
    expect(relay.url).toBe(`ws://127.0.0.1:${relay.port}`);
    expect(relay.upstream).toStartWith("ws://127.0.0.1:");
    await relay.stop({ graceMs: 0 });
  });

  test("port in use -> start rejects and stops the echo server", async () => {
    const holder = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("taken") });
    const relay = createRelay({ port: holder.port as number, logger: silentLogger });
    const error = await relay.start().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Error);
    expect(() => relay.upstream).not.toThrow();
    const echoUrl = relay.upstream;
    const probe = new WebSocket(echoUrl);
    const outcome = await new Promise<string>((resolve) => {
      probe.onopen = () => resolve("open");
      probe.onerror = () => resolve("refused");
    });
    expect(outcome).toBe("refused");
    void holder.stop(true);
  });

  test("stop before start -> a later start serves", async () => {
    const relay = createRelay({ port: 0, logger: silentLogger });
    await relay.stop();
    await relay.start();
    await using client = TestClient.bun(relay.url);
    await client.opened;
    client.send("works");
    expect((await client.waitForMessages(1))[0]?.text).toBe("works");
    await relay.stop({ graceMs: 0 });
  });

  test("onMessage hook that throws -> message still forwarded, error logged", async () => {
    await using upstream = startBunEcho();
    const logger = recordingLogger();
    const relay = createRelay({
      port: 0,
      upstream: upstream.url,
      logger,
      onMessage: (_direction, data) => {
        if (data === "boom") throw new Error("hook failed");
      },
    });
    await relay.start();
    await using client = TestClient.bun(relay.url);
    await client.opened;
    for (const text of ["a", "boom", "b"]) client.send(text);
    const got = await client.waitForMessages(3);
    expect(got.map((m) => m.text)).toEqual(["a", "boom", "b"]);
    expect(logger.records.some((r) => r.fields.kind === "message_hook_failed")).toBe(true);
    await relay.stop({ graceMs: 0 });
  });

  test("upstream that ignores the close -> stop() still releases it", async () => {
    await using upstream = await startRawUpstream();
    const relay = createRelay({ port: 0, upstream: upstream.url, logger: silentLogger });
    await relay.start();
    const client = TestClient.bun(relay.url);
    await client.opened;
    await relay.stop({ graceMs: 0 });
    expect(await waitFor(() => upstream.connections[0]?.ended === true, 3000)).toBe(true);
  });

  test("bad option -> ConfigError naming the field", () => {
    expect(() => createRelay({ maxMessageBytes: 2 ** 32 })).toThrow("maxMessageBytes");
    expect(() => createRelay({ upstream: "http://x" })).toThrow("ws:// or wss://");
  });

  test("onMessage hook -> sees both directions in order", async () => {
    await using upstream = startBunEcho();
    const seen: Array<[Direction, string]> = [];
    const relay = createRelay({
      port: 0,
      upstream: upstream.url,
      logger: silentLogger,
      onMessage: (direction, data) => seen.push([direction, typeof data === "string" ? data : `bin:${data.length}`]),
    });
    await relay.start();
    await using client = TestClient.bun(relay.url);
    await client.opened;
    client.send("one");
    client.send(new Uint8Array(3));
    await client.waitForMessages(2);
    expect(seen).toEqual([
      ["client-to-upstream", "one"],
      ["client-to-upstream", "bin:3"],
      ["upstream-to-client", "one"],
      ["upstream-to-client", "bin:3"],
    ]);
    await relay.stop({ graceMs: 0 });
  });
});

describe("embedding", () => {
  test("bridgeHandlers in a user's Bun.serve -> relays and reports the end", async () => {
    const upstreamGreeting = "welcome";
    await using upstream = startBunUpstream({
      open(ws) {
        ws.send(upstreamGreeting);
      },
      message(ws, message) {
        ws.send(message);
      },
    });
    const ends: string[] = [];
    const server = Bun.serve<BridgeData>({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(req, srv) {
        const dialled = await dialUpstream(upstream.url);
        const options = { onEnd: (end: { cause: string }) => void ends.push(end.cause) };
        if (srv.upgrade(req, { data: { upstream: dialled, options } })) return undefined;
        dialled.close();
        return new Response("expected a WebSocket upgrade", { status: 426 });
      },
      websocket: bridgeHandlers,
    });
    try {
      const client = TestClient.bun(`ws://127.0.0.1:${server.port}`);
      await client.opened;
      client.send("ping me");
      const got = await client.waitForMessages(2);
      expect(got.map((m) => m.text)).toEqual([upstreamGreeting, "ping me"]);
      client.close(4002, "done");
      await client.closed;
      expect(await waitFor(() => ends.length === 1)).toBe(true);
      expect(ends).toEqual(["client_closed"]);
    } finally {
      void server.stop(true);
    }
  });

  test("bridge with own handlers -> forwards and closes both ways", async () => {
    const upstreamCloses: Array<[number, string]> = [];
    await using upstream = startBunUpstream({
      message(ws, message) {
        ws.send(`echo:${message}`);
      },
      close(_ws, code, reason) {
        upstreamCloses.push([code, reason]);
      },
    });
    interface Data {
      upstream: WebSocket;
      bridge?: Bridge;
    }
    const server = Bun.serve<Data>({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(req, srv) {
        const dialled = await dialUpstream(upstream.url);
        return srv.upgrade(req, { data: { upstream: dialled } }) ? undefined : new Response(null, { status: 400 });
      },
      websocket: {
        open(ws: ServerWebSocket<Data>) {
          ws.data.bridge = bridge(ws, ws.data.upstream);
        },
        message: (ws, message) => ws.data.bridge?.fromClient(message),
        drain: (ws) => ws.data.bridge?.clientDrained(),
        close: (ws, code, reason) => ws.data.bridge?.clientClosed(code, reason),
      },
    });
    try {
      const client = TestClient.bun(`ws://127.0.0.1:${server.port}`);
      await client.opened;
      client.send("x");
      const [reply] = await client.waitForMessages(1);
      expect(reply?.text).toBe("echo:x");
      client.close(4003, "finished");
      await client.closed;
      expect(await waitFor(() => upstreamCloses.length === 1)).toBe(true);
      expect(upstreamCloses[0]).toEqual([4003, "finished"]);
    } finally {
      void server.stop(true);
    }
  });

  test("bridge with NaN high water -> ConfigError naming the field", async () => {
    await using upstream = startBunEcho();
    const dialled = await dialUpstream(upstream.url);
    const fakeClient = {} as unknown as Parameters<typeof bridge>[0];
    expect(() => bridge(fakeClient, dialled, { highWaterBytes: Number.NaN })).toThrow("highWaterBytes");
    expect(() => bridge(fakeClient, dialled, { pingIntervalMs: 1000, pongTimeoutMs: 2000 })).toThrow("pongTimeoutMs");
    dialled.close();
  });

  test("dialUpstream to a closed port -> HandshakeError 502", async () => {
    const probe = startBunUpstream();
    const port = probe.port;
    probe.close();
    const error = await dialUpstream(`ws://127.0.0.1:${port}`).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HandshakeError);
    expect((error as HandshakeError).status).toBe(502);
  });

  test.if(process.platform === "linux")("serveWithKeepAlive -> accepted sockets get keepalive", async () => {
    const { server, keepAlive } = await serveWithKeepAlive(
      {
        hostname: "127.0.0.1",
        port: 0,
        fetch: () => new Response("ok"),
      },
      11_000,
    );
    try {
      expect(keepAlive.ok).toBe(true);
      const socket = await Bun.connect({ hostname: "127.0.0.1", port: server.port as number, socket: { data() {} } });
      // Bun's listener defers the accept until the first bytes arrive.
      socket.write("GET / HTTP/1.1\r\nHost: test\r\n\r\n");
      await Bun.sleep(50);
      const accepted = tcpTimers().find((t) => t.localPort === server.port);
      expect(accepted?.timer).toBe(2);
      expect(accepted?.whenSeconds).toBeGreaterThan(9);
      socket.end();
    } finally {
      void server.stop(true);
    }
  });
});
