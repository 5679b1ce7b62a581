/**
 * Liveness: ws pings on both legs from one sweeping timer, pong timeouts,
 * paused readers, and TCP keepalive on accepted and upstream sockets.
 * Intervals are shortened (200 ms ping, 100 ms pong timeout).
 */

import { describe, expect, test } from "bun:test";
import { WebSocket as WsWebSocket } from "ws";
import { keepAlive } from "../src/index.ts";
import {
  TestClient,
  startBunEcho,
  startBunUpstream,
  startRelay,
  startWsUpstream,
  waitFor,
} from "./helpers/peers.ts";
import { Opcode, rawConnect, startRawUpstream } from "./helpers/raw.ts";
import { startForwarder, tcpTimers } from "./helpers/tcp.ts";
import { REPO_ROOT } from "./helpers/process.ts";

const PING_MS = 200;
const PONG_MS = 100;
/** Generous bound for detection: two whole cycles, so a slow machine does not flake. */
const DETECT_BOUND_MS = 2 * (PING_MS + PONG_MS) + 1000;

const fastKeepalive = { pingIntervalMs: PING_MS, pongTimeoutMs: PONG_MS };

describe("healthy pairs", () => {
  for (const kind of ["bun", "ws"] as const) {
    test(`${kind} peers idle for 4 ping intervals -> pair stays open`, async () => {
      await using upstream = kind === "bun" ? startBunEcho() : await startWsUpstream();
      await using relay = await startRelay({ upstream: upstream.url, ...fastKeepalive });
      await using client = TestClient.of(kind, relay.url);
      await client.opened;
      await Bun.sleep(4 * PING_MS);
      client.send("still here");
      const [echo] = await client.waitForMessages(1);
      expect(echo?.text).toBe("still here");
      expect(client.closeEvent).toBeUndefined();
      const stats = relay.stats();
      expect(stats.pongRtt.client.count).toBeGreaterThanOrEqual(2);
      expect(stats.pongRtt.upstream.count).toBeGreaterThanOrEqual(2);
      expect(stats.missedPongs).toEqual({ client: 0, upstream: 0 });
    });
  }

  test("relay process stalled past the pong timeout -> healthy pair kept", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, ...fastKeepalive });
    const socket = new WebSocket(relay.url);
    let stalls = 0;
    socket.addEventListener("ping", () => {
      if (stalls++ > 0) return;
      // Block this process (relay included) for three pong timeouts.
      const until = performance.now() + 3 * PONG_MS;
      while (performance.now() < until) {}
    });
    await new Promise((resolve) => (socket.onopen = resolve));
    await Bun.sleep(3 * (PING_MS + PONG_MS));
    expect(stalls).toBeGreaterThan(1);
    expect(relay.stats().missedPongs).toEqual({ client: 0, upstream: 0 });
    expect(socket.readyState).toBe(WebSocket.OPEN);
    socket.close();
  });

  test("peer ping -> answered with the same payload, not forwarded", async () => {
    const upstreamPings: string[] = [];
    await using upstream = startBunUpstream({ ping: (_ws, data) => void upstreamPings.push(String(data)) });
    await using relay = await startRelay({ upstream: upstream.url });
    const { connection } = await rawConnect(relay.port);
    expect(connection).not.toBeNull();
    connection?.send(Opcode.PING, "are-you-there");
    const pong = await connection?.waitForFrame((f) => f.opcode === Opcode.PONG);
    expect(pong?.payload.toString()).toBe("are-you-there");
    await Bun.sleep(100);
    expect(upstreamPings).toEqual([]);
    connection?.destroy();
  });
});

describe("dead peers", () => {
  test("raw client that stops reading -> upstream gets 1001 'peer timed out'", async () => {
    const closes: Array<[number, string]> = [];
    await using upstream = startBunUpstream({ close: (_ws, code, reason) => void closes.push([code, reason]) });
    await using relay = await startRelay({ upstream: upstream.url, ...fastKeepalive });
    await using healthy = TestClient.bun(relay.url);
    await healthy.opened;
    const { connection } = await rawConnect(relay.port);
    connection?.socket.pause();
    expect(await waitFor(() => closes.length === 1, DETECT_BOUND_MS)).toBe(true);
    expect(closes[0]).toEqual([1001, "peer timed out"]);
    expect(relay.stats().missedPongs.client).toBe(1);
    expect(relay.stats().endCauses.client_timed_out).toBe(1);
    connection?.destroy();
    expect(healthy.closeEvent).toBeUndefined();
  });

  test("ws client with auto-pong off -> upstream gets 1001 'peer timed out'", async () => {
    const closes: Array<[number, string]> = [];
    await using upstream = startBunUpstream({ close: (_ws, code, reason) => void closes.push([code, reason]) });
    await using relay = await startRelay({ upstream: upstream.url, ...fastKeepalive });
    const mute = new WsWebSocket(relay.url, { autoPong: false, perMessageDeflate: false });
    mute.on("error", () => {});
    expect(await waitFor(() => closes.length === 1, DETECT_BOUND_MS)).toBe(true);
    expect(closes[0]).toEqual([1001, "peer timed out"]);
    mute.terminate();
  });

  test("client that reads but never pongs while upstream streams -> detected", async () => {
    const closes: Array<[number, string]> = [];
    let ticker: ReturnType<typeof setInterval> | undefined;
    await using upstream = startBunUpstream({
      open(ws) {
        ticker = setInterval(() => ws.send("tick"), 50);
      },
      close(_ws, code, reason) {
        clearInterval(ticker);
        closes.push([code, reason]);
      },
    });
    await using relay = await startRelay({ upstream: upstream.url, ...fastKeepalive });
    const { connection } = await rawConnect(relay.port);
    expect(await waitFor(() => closes.length === 1, DETECT_BOUND_MS)).toBe(true);
    clearInterval(ticker);
    expect(closes[0]).toEqual([1001, "peer timed out"]);
    const ticks = connection?.frames.filter((f) => f.opcode === Opcode.TEXT).length ?? 0;
    expect(ticks).toBeGreaterThan(0);
    connection?.destroy();
  });

  test("ws upstream with auto-pong off -> client gets 1001 'peer timed out'", async () => {
    await using upstream = await startWsUpstream(() => {}, {});
    upstream.server.options.autoPong = false;
    await using relay = await startRelay({ upstream: upstream.url, ...fastKeepalive });
    await using client = TestClient.bun(relay.url);
    await client.opened;
    const closed = await Promise.race([client.closed, Bun.sleep(DETECT_BOUND_MS).then(() => undefined)]);
    expect(closed).toEqual({ code: 1001, reason: "peer timed out", wasClean: true });
    expect(relay.stats().endCauses.upstream_timed_out).toBe(1);
  });

  test("upstream path goes silent -> client gets 1001 and the pair is freed", async () => {
    await using upstream = startBunEcho();
    await using forwarder = await startForwarder(upstream.port);
    await using relay = await startRelay({ upstream: `ws://127.0.0.1:${forwarder.port}`, ...fastKeepalive });
    await using client = TestClient.bun(relay.url);
    await client.opened;
    client.send("before");
    await client.waitForMessages(1);
    forwarder.freeze();
    const closed = await Promise.race([client.closed, Bun.sleep(DETECT_BOUND_MS).then(() => undefined)]);
    expect(closed).toEqual({ code: 1001, reason: "peer timed out", wasClean: true });
    expect(await waitFor(() => relay.stats().activePairs === 0)).toBe(true);
    expect(relay.stats().missedPongs.upstream).toBe(1);
  });

  test("raw upstream that never pongs -> client gets 1001", async () => {
    await using upstream = await startRawUpstream();
    await using relay = await startRelay({ upstream: upstream.url, ...fastKeepalive });
    await using client = TestClient.ws(relay.url);
    await client.opened;
    const closed = await Promise.race([client.closed, Bun.sleep(DETECT_BOUND_MS).then(() => undefined)]);
    expect(closed?.code).toBe(1001);
    expect(closed?.reason).toBe("peer timed out");
    const pings = upstream.connections[0]?.frames.filter((f) => f.opcode === Opcode.PING).length ?? 0;
    expect(pings).toBeGreaterThanOrEqual(1);
  });
});

describe("paused readers", () => {
  test("both peers stop reading -> pair closed, not kept forever", async () => {
    const closes: Array<[number, string]> = [];
    await using upstream = startBunUpstream({
      open(ws) {
        ws.pause();
        const chunk = new Uint8Array(64 * 1024);
        for (let i = 0; i < 200; i++) ws.send(chunk);
      },
      close: (_ws, code, reason) => void closes.push([code, reason]),
    });
    await using relay = await startRelay({ upstream: upstream.url, highWaterBytes: 64 * 1024, ...fastKeepalive });
    const { connection } = await rawConnect(relay.port);
    connection?.socket.pause();
    const chunk = Buffer.alloc(64 * 1024);
    for (let i = 0; i < 200; i++) connection?.send(Opcode.BINARY, chunk);
    expect(await waitFor(() => relay.stats().activePairs === 0, 4 * DETECT_BOUND_MS)).toBe(true);
    const causes = relay.stats().endCauses;
    expect((causes.client_timed_out ?? 0) + (causes.upstream_timed_out ?? 0)).toBe(1);
    connection?.destroy();
  });

  test("client paused by backpressure for whole intervals -> not declared dead", async () => {
    // A raw upstream reads one chunk every 120 ms (about 0.5 MB/s), so the
    // relay's 1 MiB queue toward it takes over a second to fall to the
    // low-water mark: the client's reader stays paused through whole
    // ping-and-pong windows. The upstream answers pings and sends a message
    // every 20 ms, so its own liveness is never in doubt here, and the pong
    // timeout is longer than elsewhere so that timer jitter on a busy
    // machine cannot put it in doubt either.
    const timers: Array<ReturnType<typeof setInterval>> = [];
    await using upstream = await startRawUpstream((connection) => {
      connection.socket.pause();
      let answered = 0;
      timers.push(
        setInterval(() => {
          connection.socket.once("data", () => connection.socket.pause());
          connection.socket.resume();
        }, 120),
        setInterval(() => {
          const frames = connection.frames;
          for (; answered < frames.length; answered++) {
            const frame = frames[answered];
            if (frame?.opcode === Opcode.PING) connection.send(Opcode.PONG, frame.payload);
          }
          connection.send(Opcode.TEXT, "progress");
        }, 20),
      );
    });
    const keepalive = { pingIntervalMs: 300, pongTimeoutMs: 200 };
    await using relay = await startRelay({ upstream: upstream.url, highWaterBytes: 1024 * 1024, ...keepalive });
    await using client = TestClient.bun(relay.url);
    await client.opened;
    const chunk = new Uint8Array(16 * 1024);
    for (let i = 0; i < 1500; i++) client.send(chunk);
    const pausedLongEnough = await waitFor(() => relay.stats().clientPauses >= 2, 15_000);
    await Bun.sleep(4 * (keepalive.pingIntervalMs + keepalive.pongTimeoutMs));
    for (const timer of timers) clearInterval(timer);
    expect(pausedLongEnough).toBe(true);
    expect(relay.stats().missedPongs).toEqual({ client: 0, upstream: 0 });
    expect(relay.stats().activePairs).toBe(1);
    expect(client.closeEvent).toBeUndefined();
  });
});

describe("TCP keepalive", () => {
  const linux = process.platform === "linux";

  test.if(linux)("accepted and upstream sockets -> keepalive timer of the configured period", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, tcpKeepAliveMs: 7000 });
    await using client = TestClient.bun(relay.url);
    await client.opened;
    const accepted = tcpTimers().find((t) => t.localPort === relay.port);
    expect(accepted?.timer).toBe(2);
    expect(accepted?.whenSeconds).toBeGreaterThan(5);
    expect(accepted?.whenSeconds).toBeLessThanOrEqual(7);
    const outboundHasKeepalive = () =>
      tcpTimers().some((t) => t.remotePort === upstream.port && t.timer === 2 && t.whenSeconds <= 7);
    expect(await waitFor(outboundHasKeepalive, 4000)).toBe(true);
  });

  test.if(linux)("tcpKeepAliveMs 0 -> no keepalive timer", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, tcpKeepAliveMs: 0 });
    await using client = TestClient.bun(relay.url);
    await client.opened;
    const accepted = tcpTimers().find((t) => t.localPort === relay.port);
    expect(accepted?.timer).toBe(0);
  });
});

describe("keepAlive helper", () => {
  test("Bun client to a server that never pongs -> terminated", async () => {
    await using upstream = await startRawUpstream();
    const socket = new WebSocket(upstream.url);
    await new Promise((resolve) => (socket.onopen = resolve));
    const closed = new Promise<number>((resolve) => (socket.onclose = (e) => resolve(e.code)));
    const handle = keepAlive(socket, 100);
    expect(await Promise.race([closed, Bun.sleep(2000).then(() => -1)])).toBe(1006);
    handle.stop();
  });

  test("Bun client to an echo server -> stays open", async () => {
    await using upstream = startBunEcho();
    const socket = new WebSocket(upstream.url);
    await new Promise((resolve) => (socket.onopen = resolve));
    const handle = keepAlive(socket, 100);
    await Bun.sleep(500);
    expect(socket.readyState).toBe(WebSocket.OPEN);
    handle.stop();
    socket.close();
  });
});

describe("stop", () => {
  test("relay stopped after a pair -> process exits by itself", async () => {
    const proc = Bun.spawn([process.execPath, `${REPO_ROOT}test/fixtures/stop-exits.ts`], {
      cwd: REPO_ROOT,
      stdout: "pipe",
      stderr: "pipe",
    });
    const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    const code = await proc.exited;
    clearTimeout(timer);
    expect(await new Response(proc.stdout).text()).toContain("relay stopped");
    expect(proc.signalCode).toBeNull();
    expect(code).toBe(0);
  });
});
