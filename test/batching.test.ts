/**
 * Upstream messages gathered per read and sent to the client under one
 * cork(): order, closes after gathered messages, and a failing flush that
 * must not stall other pairs.
 */

import { describe, expect, test } from "bun:test";
import { TestClient, recordingLogger, startBunUpstream, startRelay, waitFor } from "./helpers/peers.ts";

describe("batched sends to the client", () => {
  test("burst then close in one turn -> all messages, then the close", async () => {
    await using upstream = startBunUpstream({
      message(ws) {
        for (let i = 0; i < 500; i++) ws.send(`m${i}`);
        ws.close(4000, "done");
      },
    });
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = TestClient.bun(relay.url);
    await client.opened;
    client.send("go");
    const closed = await client.closed;
    expect(client.received.length).toBe(500);
    expect(client.received.every((m, i) => m.text === `m${i}`)).toBe(true);
    expect(closed.code).toBe(4000);
  });

  test("one pair's flush throws -> that pair closed 1011, others still served", async () => {
    await using upstream = startBunUpstream({
      message(ws, message) {
        ws.send(message);
      },
    });
    const logger = recordingLogger();
    await using relay = await startRelay({ upstream: upstream.url, logger });
    await using broken = TestClient.bun(relay.url);
    await using healthy = TestClient.bun(relay.url);
    await broken.opened;
    await healthy.opened;
    // Make the next cork() of the broken pair's server socket throw once.
    const pairs = (relay as unknown as { open: Set<{ client: { cork: unknown } }> }).open;
    const first = [...pairs][0];
    expect(first).toBeDefined();
    if (first === undefined) return;
    const socket = first.client as { cork: (fn: () => void) => void };
    const original = socket.cork.bind(socket);
    socket.cork = () => {
      socket.cork = original;
      throw new Error("injected failure");
    };
    broken.send("a");
    healthy.send("b");
    expect(await waitFor(() => healthy.received.length === 1)).toBe(true);
    expect(healthy.received[0]?.text).toBe("b");
    expect((await broken.closed).code).toBe(1011);
    expect(logger.records.some((r) => r.fields.kind === "flush_failed")).toBe(true);
    healthy.send("c");
    expect(await waitFor(() => healthy.received.length === 2)).toBe(true);
  });
});
