/**
 * Abuse limits on real sockets. Connection limits reject with 503 before
 * any dial, and their counts do not drift after many connections end in
 * every way. Oversized headers get 431 and message floods 1008. Bun bounds
 * a request head that arrives one byte at a time on its own.
 */

import { describe, expect, test } from "bun:test";
import { type Socket, connect } from "node:net";
import type { Server } from "bun";
import { FLAG_NAMES } from "../src/cli.ts";
import { ConfigError, resolveOptions } from "../src/config.ts";
import { ConnectionLimiter, TokenBucket, headerBytes, parseCount, parseRate } from "../src/limits.ts";
import {
  TestClient,
  type TestRelay,
  recordingLogger,
  startBunEcho,
  startBunUpstream,
  startRelay,
  waitFor,
} from "./helpers/peers.ts";
import { runCli } from "./helpers/process.ts";
import { rawConnect } from "./helpers/raw.ts";

const UPGRADE_REQUEST = (port: number, path: string): string =>
  `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/** Opens a Bun client through `relay` and checks that it echoes. */
async function openEchoingClient(relay: TestRelay): Promise<TestClient> {
  const client = TestClient.bun(relay.url);
  await client.opened;
  expect(await echoOnce(client, "before")).toBe("before");
  return client;
}

/** Sends one message on an open client and returns the echo. */
async function echoOnce(client: TestClient, text: string): Promise<string | undefined> {
  const before = client.received.length;
  client.send(text);
  const messages = await client.waitForMessages(before + 1);
  return messages[before]?.text;
}

/** Sends an upgrade request, closes the socket and returns the response status. */
async function upgradeStatus(port: number, options: { path?: string; localAddress?: string } = {}): Promise<number> {
  const { handshake, connection, socket } = await rawConnect(port, options);
  connection?.destroy();
  socket.destroy();
  return handshake.status;
}

/**
 * A Bun upstream that acts by path: `/refuse` responds 403, `/slow` waits
 * 400 ms before its 101, `/bye` closes with 4000 as soon as it opens, and
 * anything else opens and echoes.
 */
function startScriptedUpstream(): { url: string; paths: string[]; close(): void } & AsyncDisposable {
  const paths: string[] = [];
  const server: Server<{ path: string }> = Bun.serve<{ path: string }>({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req, srv) {
      const path = new URL(req.url).pathname;
      paths.push(path);
      if (path === "/refuse") return new Response("refused\n", { status: 403 });
      if (path === "/slow") await Bun.sleep(400);
      if (srv.upgrade(req, { data: { path } })) return undefined;
      return new Response("upgrade expected\n", { status: 426 });
    },
    websocket: {
      open(ws) {
        if (ws.data.path === "/bye") ws.close(4000, "bye");
      },
      message(ws, message) {
        ws.send(message);
      },
      idleTimeout: 0,
      sendPings: false,
      backpressureLimit: 0,
    },
  });
  const close = (): void => void server.stop(true);
  return { url: `ws://127.0.0.1:${server.port}`, paths, close, [Symbol.asyncDispose]: async () => close() };
}

/** Writes an upgrade request for `path` and destroys the socket after `afterMs`, before any response. */
async function leaveDuringDial(port: number, path: string, afterMs: number): Promise<void> {
  const socket: Socket = connect(port, "127.0.0.1");
  socket.on("error", () => {});
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  socket.write(UPGRADE_REQUEST(port, path));
  await Bun.sleep(afterMs);
  socket.destroy();
}

function totalHandshakes(relay: TestRelay): number {
  return Object.values(relay.stats().handshakes).reduce((sum, n) => sum + n, 0);
}

describe("limit parsing", () => {
  test("parseCount -> whole numbers only", () => {
    expect(parseCount("--max-connections", "0")).toBe(0);
    expect(parseCount("--max-connections", " 250 ")).toBe(250);
    for (const bad of ["-1", "1.5", "ten", "", "1000001"]) {
      expect(() => parseCount("--max-connections", bad)).toThrow(ConfigError);
    }
  });

  test("parseRate -> N/s or 0", () => {
    expect(parseRate("--rate-limit", "100/s")).toBe(100);
    expect(parseRate("--rate-limit", "5 / s")).toBe(5);
    expect(parseRate("--rate-limit", "0")).toBe(0);
    for (const bad of ["10", "10/m", "1.5/s", "/s", "-1/s", "fast"]) {
      expect(() => parseRate("--rate-limit", bad)).toThrow(ConfigError);
    }
  });

  test("headerBytes -> name, value and 4 per field", () => {
    const headers = new Headers({ Host: "a:1", "X-Long": "v".repeat(10) });
    expect(headerBytes(headers)).toBe(4 + 3 + 4 + (6 + 10 + 4));
  });

  const ranges: Array<[Parameters<typeof resolveOptions>[0], string, string]> = [
    [{ maxConnections: -1 }, "--max-connections", "0 (no limit)"],
    [{ maxConnectionsPerIp: 2.5 }, "--max-connections-per-ip", "0 (no limit)"],
    [{ rateLimitPerSecond: 2_000_000 }, "--rate-limit", "1/s"],
    [{ maxHeaderBytes: 32 * 1024 }, "--max-header-size", "Bun's own limit"],
    [{ maxHeaderBytes: 512 }, "--max-header-size", "1 KiB"],
  ];

  for (const [options, flag, hint] of ranges) {
    test(`${JSON.stringify(options)} -> ConfigError naming ${flag}`, () => {
      let error: unknown;
      try {
        resolveOptions(options, FLAG_NAMES);
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).option).toBe(flag);
      expect((error as Error).message).toContain(hint);
    });
  }

  test("defaults -> limits off, 16 KiB headers", () => {
    const resolved = resolveOptions({});
    expect(resolved.maxConnections).toBe(0);
    expect(resolved.maxConnectionsPerIp).toBe(0);
    expect(resolved.rateLimitPerSecond).toBe(0);
    expect(resolved.maxHeaderBytes).toBe(16 * 1024);
  });
});

describe("token bucket", () => {
  test("burst of N, then refill at N per second", async () => {
    const bucket = new TokenBucket(5);
    const burst = Array.from({ length: 6 }, () => bucket.take());
    expect(burst).toEqual([true, true, true, true, true, false]);
    await Bun.sleep(300);
    expect(bucket.take()).toBe(true);
    expect(bucket.take()).toBe(false);
  });
});

describe("connection limiter", () => {
  test("slots -> counted per IP and released once", () => {
    const limiter = new ConnectionLimiter(3, 2);
    const a1 = limiter.acquire("10.0.0.1");
    const a2 = limiter.acquire("10.0.0.1");
    expect(limiter.acquire("10.0.0.1")).toBe("max_connections_per_ip");
    const b1 = limiter.acquire("10.0.0.2");
    expect(limiter.acquire("10.0.0.3")).toBe("max_connections");
    expect(limiter.active).toBe(3);
    if (typeof a1 === "string" || typeof a2 === "string" || typeof b1 === "string") throw new Error("expected slots");
    a1.release();
    a1.release();
    expect(limiter.active).toBe(2);
    expect(limiter.activeFor("10.0.0.1")).toBe(1);
    a2.release();
    b1.release();
    expect(limiter.active).toBe(0);
    expect(limiter.activeFor("10.0.0.1")).toBe(0);
  });
});

describe("max connections", () => {
  test("over global limit -> 503 before any dial", async () => {
    await using upstream = startBunEcho();
    const logger = recordingLogger();
    await using relay = await startRelay({ upstream: upstream.url, maxConnections: 2, logger });
    await using first = await openEchoingClient(relay);
    await using second = await openEchoingClient(relay);

    const { handshake, socket } = await rawConnect(relay.port);
    socket.destroy();

    expect(handshake.status).toBe(503);
    expect(handshake.headers["retry-after"]).toBe("1");
    expect(handshake.headers.connection).toBe("close");
    expect(upstream.requests.length).toBe(2);
    expect(relay.stats().handshakes["503"]).toBe(1);
    expect(logger.records.find((r) => r.fields.kind === "max_connections")?.fields.max).toBe(2);
    expect(await echoOnce(first, "first")).toBe("first");
    expect(await echoOnce(second, "second")).toBe("second");
  });

  test("closed pair -> slot free again", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, maxConnections: 1 });
    const first = await openEchoingClient(relay);
    expect(await upgradeStatus(relay.port)).toBe(503);
    first.close(1000, "done");
    await first.closed;
    expect(await waitFor(() => relay.stats().activePairs === 0)).toBe(true);
    expect(await upgradeStatus(relay.port)).toBe(101);
  });

  test("dial in progress -> holds a slot", async () => {
    await using upstream = startScriptedUpstream();
    await using relay = await startRelay({ upstream: upstream.url, maxConnections: 1 });
    const slow = upgradeStatus(relay.port, { path: "/slow" });
    expect(await waitFor(() => upstream.paths.length === 1)).toBe(true);
    expect(await upgradeStatus(relay.port)).toBe(503);
    expect(await slow).toBe(101);
    expect(upstream.paths).toEqual(["/slow"]);
  });

  test("over per-IP limit -> 503, other IP admitted", async () => {
    await using upstream = startBunEcho();
    const logger = recordingLogger();
    await using relay = await startRelay({ upstream: upstream.url, maxConnectionsPerIp: 2, logger });
    await using first = await openEchoingClient(relay);
    await using second = await openEchoingClient(relay);

    const { handshake, socket } = await rawConnect(relay.port);
    socket.destroy();
    expect(handshake.status).toBe(503);
    expect(handshake.headers["retry-after"]).toBe("1");
    expect(upstream.requests.length).toBe(2);
    expect(logger.records.find((r) => r.fields.kind === "max_connections_per_ip")?.fields.max).toBe(2);

    const other = await rawConnect(relay.port, { localAddress: "127.0.0.2" });
    expect(other.handshake.status).toBe(101);
    other.socket.destroy();
    expect(await echoOnce(first, "first")).toBe("first");
    expect(await echoOnce(second, "second")).toBe("second");
  });

  test("many ended connections -> no drift", async () => {
    await using upstream = startScriptedUpstream();
    const limit = 7;
    await using relay = await startRelay({
      upstream: upstream.url,
      maxConnections: limit,
      maxConnectionsPerIp: limit,
      dialTimeoutMs: 250,
      rateLimitPerSecond: 50,
    });
    // One connection of each way a pair or a dial can end, `limit` at a time.
    const endings: Array<() => Promise<string>> = [
      async () => {
        const client = TestClient.bun(relay.url);
        await client.opened;
        await echoOnce(client, "hello");
        client.close(1000, "done");
        return `closed ${(await client.closed).code}`;
      },
      async () => `destroyed after ${await upgradeStatus(relay.port)}`,
      async () => `refused ${await upgradeStatus(relay.port, { path: "/refuse" })}`,
      async () => {
        await leaveDuringDial(relay.port, "/slow", 100);
        return "left during dial";
      },
      async () => `timed out ${await upgradeStatus(relay.port, { path: "/slow" })}`,
      async () => {
        const client = TestClient.bun(`${relay.url}/bye`);
        return `upstream closed ${(await client.closed).code}`;
      },
      async () => {
        const client = TestClient.bun(relay.url);
        await client.opened;
        for (let i = 0; i < 200; i++) client.send(`flood ${i}`);
        return `rate limited ${(await client.closed).code}`;
      },
    ];
    expect(endings.length).toBe(limit);
    const rounds = 8;
    for (let round = 0; round < rounds; round++) {
      const results = await Promise.all(endings.map((ending) => ending()));
      expect(results).toEqual([
        "closed 1000",
        "destroyed after 101",
        "refused 403",
        "left during dial",
        "timed out 504",
        "upstream closed 4000",
        "rate limited 1008",
      ]);
      const settled = await waitFor(() => totalHandshakes(relay) === (round + 1) * limit && relay.stats().activePairs === 0);
      expect(settled).toBe(true);
    }
    expect(relay.stats().handshakes.client_left).toBe(rounds);
    expect(relay.stats().handshakes["503"]).toBeUndefined();

    // Every slot is free again: exactly `limit` connections fit, one more does not.
    const held = await Promise.all(Array.from({ length: limit }, () => rawConnect(relay.port)));
    expect(held.map((h) => h.handshake.status)).toEqual(Array(limit).fill(101));
    expect(await upgradeStatus(relay.port)).toBe(503);
    for (const h of held) h.socket.destroy();
    expect(await waitFor(() => relay.stats().activePairs === 0)).toBe(true);
    expect(await upgradeStatus(relay.port)).toBe(101);
  });
});

describe("max header size", () => {
  /** Header bytes of rawConnect's default upgrade request to `port`, by the relay's rule. */
  function baseHeaderBytes(port: number): number {
    return headerBytes(
      new Headers({
        Host: `127.0.0.1:${port}`,
        Upgrade: "websocket",
        Connection: "Upgrade",
        "Sec-WebSocket-Key": "x".repeat(24),
        "Sec-WebSocket-Version": "13",
      }),
    );
  }

  test("at the limit -> 101, one byte over -> 431", async () => {
    await using upstream = startBunEcho();
    const logger = recordingLogger();
    const limit = 2048;
    await using relay = await startRelay({ upstream: upstream.url, maxHeaderBytes: limit, logger });
    await using good = await openEchoingClient(relay);
    const seenBefore = upstream.requests.length;
    // "X-Pad" counts 5 for its name and 4 for ": " and CRLF.
    const padFor = (total: number): string => "p".repeat(total - baseHeaderBytes(relay.port) - 9);

    const over = await rawConnect(relay.port, { headers: { "X-Pad": padFor(limit + 1) } });
    over.socket.destroy();
    expect(over.handshake.status).toBe(431);
    expect(over.handshake.headers.connection).toBe("close");
    expect(over.handshake.body).toContain(`${limit + 1} bytes`);
    expect(upstream.requests.length).toBe(seenBefore);
    expect(relay.stats().handshakes["431"]).toBe(1);
    expect(logger.records.find((r) => r.fields.kind === "header_too_large")?.fields.header_bytes).toBe(limit + 1);

    const at = await rawConnect(relay.port, { headers: { "X-Pad": padFor(limit) } });
    at.socket.destroy();
    expect(at.handshake.status).toBe(101);
    expect(await echoOnce(good, "after")).toBe("after");
  });

  test("head over Bun's limit -> Bun's own 431", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url });
    const { handshake, socket } = await rawConnect(relay.port, { headers: { "X-Pad": "p".repeat(17 * 1024) } });
    socket.destroy();
    expect(handshake.status).toBe(431);
    // Bun answered before fetch(), so the relay neither counted nor dialled.
    expect(relay.stats().handshakes["431"]).toBeUndefined();
    expect(upstream.requests.length).toBe(0);
  });
});

describe("rate limit", () => {
  test("flooding client -> 1008, upstream 1001, good pair unharmed", async () => {
    const upstreamCloses: Array<{ code: number; reason: string }> = [];
    await using upstream = startBunUpstream({
      message(ws, message) {
        ws.send(message);
      },
      close(_ws, code, reason) {
        upstreamCloses.push({ code, reason });
      },
    });
    const logger = recordingLogger();
    await using relay = await startRelay({ upstream: upstream.url, rateLimitPerSecond: 20, logger });
    await using good = await openEchoingClient(relay);

    await using flooder = TestClient.bun(relay.url);
    await flooder.opened;
    for (let i = 0; i < 100; i++) flooder.send(`flood ${i}`);
    const closed = await flooder.closed;

    expect(closed.code).toBe(1008);
    expect(closed.reason).toBe("rate limit exceeded");
    expect(await waitFor(() => upstreamCloses.length === 1)).toBe(true);
    expect(upstreamCloses[0]).toEqual({ code: 1001, reason: "client exceeded the message rate limit" });
    expect(relay.stats().endCauses.rate_limited).toBe(1);
    expect(logger.records.find((r) => r.fields.kind === "rate_limited")?.level).toBe("error");
    const end = logger.records.find((r) => r.msg === "pair closed" && r.fields.cause === "rate_limited");
    expect(end?.fields.code).toBe(1008);
    // The burst of 20 went through, plus at most one token refilled meanwhile.
    expect(Number(end?.fields.messages_to_upstream)).toBeGreaterThanOrEqual(20);
    expect(Number(end?.fields.messages_to_upstream)).toBeLessThanOrEqual(21);
    expect(await echoOnce(good, "after")).toBe("after");
  });

  test("full burst, then steady rate -> stays open", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, rateLimitPerSecond: 20 });
    await using client = TestClient.bun(relay.url);
    await client.opened;
    for (let i = 0; i < 20; i++) client.send(`burst ${i}`);
    expect((await client.waitForMessages(20)).length).toBe(20);
    await Bun.sleep(1000);
    for (let i = 0; i < 15; i++) {
      client.send(`steady ${i}`);
      await Bun.sleep(80);
    }
    expect((await client.waitForMessages(35)).length).toBe(35);
    expect(client.closeEvent).toBeUndefined();
    expect(relay.stats().endCauses.rate_limited).toBeUndefined();
  });

  test("off by default -> burst of 2000 relayed", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.bun(relay.url);
    await client.opened;
    for (let i = 0; i < 2000; i++) client.send(`m${i}`);
    expect((await client.waitForMessages(2000)).length).toBe(2000);
    expect(client.closeEvent).toBeUndefined();
  });
});

describe("slow request head", () => {
  test("one byte a second -> Bun closes it, upstream sees nothing", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url });
    await using good = await openEchoingClient(relay);
    const seenBefore = upstream.requests.length;

    const socket = connect(relay.port, "127.0.0.1");
    socket.on("error", () => {});
    let received = "";
    socket.on("data", (chunk: Buffer) => {
      received += chunk.toString("latin1");
    });
    const closed = new Promise<number>((resolve) => socket.once("close", () => resolve(performance.now())));
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    const openedAt = performance.now();
    const head = UPGRADE_REQUEST(relay.port, "/");
    // At most 20 bytes, one a second; the complete head would be about 150.
    let sent = 0;
    const drip = setInterval(() => {
      if (sent < 20 && !socket.destroyed) socket.write(head[sent++] as string);
    }, 1000);
    const closedAt = await Promise.race([closed, Bun.sleep(20_000).then(() => Number.NaN)]);
    clearInterval(drip);
    socket.destroy();

    const seconds = (closedAt - openedAt) / 1000;
    // Bun 1.4.4 closed such connections 12.0 to 12.3 s after they opened.
    expect(seconds).toBeLessThan(16);
    expect(received).toBe("");
    expect(upstream.requests.length).toBe(seenBefore);
    expect(await echoOnce(good, "after")).toBe("after");
  });
});

describe("command line", () => {
  test("--help lists the limit flags", async () => {
    const { code, stdout } = await runCli(["--help"]);
    expect(code).toBe(0);
    for (const flag of ["--max-connections N", "--max-connections-per-ip N", "--max-header-size SIZE", "--rate-limit N/s"]) {
      expect(stdout).toContain(flag);
    }
    expect(stdout).toContain("default 16KiB; env WSBRIDGE_MAX_HEADER_SIZE");
  });

  const cases: Array<[string[], string[]]> = [
    [["--max-connections", "-1"], ["--max-connections", '"-1"', "whole number"]],
    [["--max-connections-per-ip", "lots"], ["--max-connections-per-ip", '"lots"']],
    [["--rate-limit", "10"], ["--rate-limit", '"10"', "N/s"]],
    [["--rate-limit", "10/m"], ["--rate-limit", '"10/m"']],
    [["--max-header-size", "64KiB"], ["--max-header-size", "Bun's own limit"]],
    [["--max-header-size", "512B"], ["--max-header-size", "1 KiB"]],
    [["--max-header-size", "big"], ["--max-header-size", '"big"']],
  ];

  for (const [args, expected] of cases) {
    test(`${args.join(" ")} -> exit 2 naming the flag`, async () => {
      const { code, stderr } = await runCli(["--listen", "127.0.0.1:0", ...args]);
      expect(code).toBe(2);
      for (const part of expected) expect(stderr).toContain(part);
    });
  }

  test("bad environment value -> exit 2 naming the variable", async () => {
    const { code, stderr } = await runCli(["--listen", "127.0.0.1:0"], { WSBRIDGE_RATE_LIMIT: "fast" });
    expect(code).toBe(2);
    expect(stderr).toContain("WSBRIDGE_RATE_LIMIT");
  });
});
