/**
 * Helpers for tests that look for leaks. A snapshot reads the process's open
 * file descriptors, RSS and live WebSocket objects. The echo upstream keeps
 * no reference to its sockets, and the echo loop keeps one pair busy while
 * a test does something else.
 */

import { heapStats } from "bun:jsc";
import { readdirSync } from "node:fs";
import type { TestClient } from "./peers.ts";

/**
 * Resources held by this process; the relay under test runs in it too.
 *
 * NOTE: the object counts are for log lines, not assertions. In one fuzz run
 * out of about 25, every relay socket stayed alive after `Bun.gc(true)`,
 * although its descriptor was closed and the relay had released the pair.
 * A rerun with the same seed did not repeat it.
 */
export interface ResourceSnapshot {
  /** Entries of /proc/self/fd. */
  fds: number;
  rssBytes: number;
  /** Live `WebSocket` objects (Bun's client: the relay's upstream legs and test clients). */
  webSockets: number;
  /** Live `ServerWebSocket` objects (the relay's client legs and the echo upstream's sockets). */
  serverWebSockets: number;
}

/** Runs a full garbage collection, then reads the process's resources. */
export function resourceSnapshot(): ResourceSnapshot {
  Bun.gc(true);
  const counts = heapStats().objectTypeCounts as Record<string, number>;
  return {
    fds: readdirSync("/proc/self/fd").length,
    rssBytes: process.memoryUsage().rss,
    webSockets: counts.WebSocket ?? 0,
    serverWebSockets: counts.ServerWebSocket ?? 0,
  };
}

/**
 * Takes snapshots 100 ms apart until the descriptor count stays the same
 * three times in a row, or `timeoutMs` passes, and returns the last one.
 * Sockets closed just before finish closing in the background.
 */
export async function settledSnapshot(timeoutMs = 5000): Promise<ResourceSnapshot> {
  const deadline = performance.now() + timeoutMs;
  let snapshot = resourceSnapshot();
  let unchanged = 0;
  while (unchanged < 2 && performance.now() < deadline) {
    await Bun.sleep(100);
    const next = resourceSnapshot();
    unchanged = next.fds === snapshot.fds ? unchanged + 1 : 0;
    snapshot = next;
  }
  return snapshot;
}

/** Formats a snapshot for a log line, RSS in MiB. */
export function describeSnapshot(snapshot: ResourceSnapshot): string {
  const rssMiB = (snapshot.rssBytes / 2 ** 20).toFixed(1);
  return `fds=${snapshot.fds} rss=${rssMiB}MiB WebSocket=${snapshot.webSockets} ServerWebSocket=${snapshot.serverWebSockets}`;
}

/**
 * Starts a Bun echo server on 127.0.0.1 that, unlike `startBunEcho`, keeps
 * no list of its sockets, so the sockets it served can be collected.
 * `behaviour` may end a socket on a given message instead of echoing it.
 */
export function startPlainEcho(
  behaviour: (ws: Bun.ServerWebSocket<undefined>, message: string | Buffer) => boolean = () => false,
): { url: string } & AsyncDisposable {
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: (req, srv) => (srv.upgrade(req) ? undefined : new Response("upgrade expected", { status: 426 })),
    websocket: {
      message(ws, message) {
        if (!behaviour(ws, message)) ws.send(message);
      },
      idleTimeout: 0,
      sendPings: false,
      backpressureLimit: 0,
    },
  });
  return {
    url: `ws://127.0.0.1:${server.port}`,
    [Symbol.asyncDispose]: async () => {
      await server.stop(true);
    },
  };
}

/** A loop that sends numbered text messages on one client, each after the echo of the one before. */
export interface EchoLoop {
  /** Round trips completed so far. */
  readonly echoed: number;
  /** Stops the loop after its current round trip; returns the failures, empty when every echo came back right. */
  stop(): Promise<string[]>;
}

/**
 * Starts an echo loop on `client`, whose upstream must echo text. A missing
 * or wrong echo (5 s deadline) is recorded as a failure and ends the loop.
 */
export function startEchoLoop(client: TestClient, pauseMs = 2): EchoLoop {
  const failures: string[] = [];
  let echoed = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      const text = `tick ${echoed}`;
      client.send(text);
      const received = await client.waitForMessages(echoed + 1, 5000);
      const got = received[echoed];
      if (got?.text !== text) {
        failures.push(`round trip ${echoed}: sent "${text}", got ${JSON.stringify(got)}, close ${JSON.stringify(client.closeEvent)}`);
        return;
      }
      echoed++;
      await Bun.sleep(pauseMs);
    }
  })();
  return {
    get echoed() {
      return echoed;
    },
    async stop() {
      running = false;
      await loop;
      return failures;
    },
  };
}
