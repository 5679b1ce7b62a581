/**
 * One behaviour suite, run against echo upstreams directly and through the
 * relay, with Bun's client and the `ws` package on the client side and Bun
 * and `ws` servers upstream: the relay must change nothing.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type TestRelay, type TestUpstream, TestClient, startBunEcho, startRelay, startWsUpstream } from "./helpers/peers.ts";

type Path = "direct" | "relay";
type Kind = "bun" | "ws";

const EIGHT_MIB = 8 * 1024 * 1024;

interface Setup {
  url: string;
}

function suite(path: Path, clientKind: Kind, upstreamKind: Kind): void {
  describe(`${path}, ${clientKind} client, ${upstreamKind} upstream`, () => {
    const setup: Setup = { url: "" };
    let upstream: (TestUpstream | { url: string }) & AsyncDisposable;
    let relay: TestRelay | undefined;

    beforeAll(async () => {
      upstream = upstreamKind === "bun" ? startBunEcho() : await startWsUpstream();
      if (path === "relay") {
        relay = await startRelay({ upstream: upstream.url });
        setup.url = relay.url;
      } else {
        setup.url = upstream.url;
      }
    });

    afterAll(async () => {
      await relay?.[Symbol.asyncDispose]();
      await upstream[Symbol.asyncDispose]();
    });

    const open = async (protocols?: string[]): Promise<TestClient> => {
      const client = TestClient.of(clientKind, setup.url, protocols);
      await client.opened;
      return client;
    };

    test("text and binary keep their types in order", async () => {
      await using client = await open();
      client.send("a");
      client.send(new Uint8Array([0x61]));
      client.send("b");
      client.send(new Uint8Array([0x62]));
      const got = await client.waitForMessages(4);
      expect(got.map((m) => m.type)).toEqual(["text", "binary", "text", "binary"]);
      expect(got.map((m) => m.text ?? Buffer.from(m.bytes ?? []).toString())).toEqual(["a", "a", "b", "b"]);
    });

    test("all 256 byte values arrive as binary", async () => {
      await using client = await open();
      const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
      client.send(bytes);
      const [message] = await client.waitForMessages(1);
      expect(message?.type).toBe("binary");
      expect(Buffer.from(message?.bytes ?? []).equals(Buffer.from(bytes))).toBe(true);
    });

    test("multi-byte UTF-8 text arrives as text", async () => {
      await using client = await open();
      client.send("héllo");
      client.send("日本語 🎉 ∑");
      const got = await client.waitForMessages(2);
      expect(got).toEqual([
        { type: "text", text: "héllo" },
        { type: "text", text: "日本語 🎉 ∑" },
      ]);
    });

    test("empty text and empty binary stay messages", async () => {
      await using client = await open();
      client.send("");
      client.send(new Uint8Array(0));
      client.send("end");
      const got = await client.waitForMessages(3);
      expect(got.map((m) => m.type)).toEqual(["text", "binary", "text"]);
      expect(got[0]?.text).toBe("");
      expect(got[1]?.bytes?.length).toBe(0);
    });

    test("1000 numbered messages keep their order", async () => {
      await using client = await open();
      for (let i = 0; i < 1000; i++) client.send(`m${i}`);
      const got = await client.waitForMessages(1000);
      expect(got.length).toBe(1000);
      expect(got.every((m, i) => m.text === `m${i}`)).toBe(true);
    });

    test("8 MiB binary and 8 MiB text arrive intact", async () => {
      await using client = await open();
      const binary = Buffer.alloc(EIGHT_MIB);
      for (let i = 0; i < binary.length; i += 4096) binary[i] = i & 0xff;
      binary[binary.length - 1] = 0x7f;
      const text = "é".repeat(EIGHT_MIB / 2);
      client.send(binary);
      client.send(text);
      const got = await client.waitForMessages(2, 20_000);
      expect(got.length).toBe(2);
      expect(got[0]?.type).toBe("binary");
      expect(Buffer.from(got[0]?.bytes ?? []).equals(binary)).toBe(true);
      expect(got[1]?.type).toBe("text");
      expect(got[1]?.text === text).toBe(true);
    });

    test("subprotocol choice reaches the client", async () => {
      await using client = await open(["ocpp1.6", "ocpp2.0.1"]);
      expect(client.protocol).toBe("ocpp1.6");
    });

    test("close 4001 'bye' comes back clean", async () => {
      const client = await open();
      client.close(4001, "bye");
      const closed = await client.closed;
      expect(closed).toEqual({ code: 4001, reason: "bye", wasClean: true });
    });
  });
}

for (const path of ["direct", "relay"] as const) {
  for (const clientKind of ["bun", "ws"] as const) {
    for (const upstreamKind of ["bun", "ws"] as const) suite(path, clientKind, upstreamKind);
  }
}
