/**
 * The single binary from `bun build --compile`, end to end: a `ws` client
 * relays through it to a `ws` upstream. The binary is built into a temporary
 * folder from the current sources, so the test never runs a stale build.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { WebSocket as WsWebSocket } from "ws";
import { TestClient, startWsUpstream, waitFor } from "./helpers/peers.ts";
import { MAIN, RelayProcess } from "./helpers/process.ts";
import { tcpTimers } from "./helpers/tcp.ts";

let folder = "";
let binary = "";

beforeAll(async () => {
  folder = mkdtempSync(join(tmpdir(), "wsbridge-binary-"));
  binary = join(folder, "wsbridge");
  const build = Bun.spawnSync([process.execPath, "build", "--compile", MAIN, "--outfile", binary], {
    stdout: "pipe",
    stderr: "pipe",
  });
  if (build.exitCode !== 0) throw new Error(`bun build --compile failed:\n${build.stderr.toString()}`);
});

afterAll(() => {
  if (folder !== "") rmSync(folder, { recursive: true, force: true });
});

describe("compiled binary", () => {
  test("ws client -> binary -> ws upstream keeps messages and close codes", async () => {
    const upstreamCloses: Array<[number, string]> = [];
    const sockets: WsWebSocket[] = [];
    await using upstream = await startWsUpstream((socket) => {
      sockets.push(socket);
      socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }));
      socket.on("close", (code, reason) => upstreamCloses.push([code, reason.toString()]));
    });
    await using relay = await RelayProcess.start([binary, "--listen", "127.0.0.1:0", "--upstream", upstream.url]);

    await using first = TestClient.ws(`${relay.url}/room?x=1`);
    await first.opened;
    first.send("héllo");
    first.send(new Uint8Array([0, 1, 255]));
    first.send("");
    const got = await first.waitForMessages(3);
    expect(got[0]).toEqual({ type: "text", text: "héllo" });
    expect([...(got[1]?.bytes ?? [])]).toEqual([0, 1, 255]);
    expect(got[2]).toEqual({ type: "text", text: "" });
    first.close(4001, "bye");
    expect((await first.closed).code).toBe(4001);
    expect(await waitFor(() => upstreamCloses.length === 1)).toBe(true);
    expect(upstreamCloses[0]).toEqual([4001, "bye"]);

    await using second = TestClient.ws(relay.url);
    await second.opened;
    expect(await waitFor(() => sockets.length === 2)).toBe(true);
    sockets[1]?.close(4404, "Document deleted");
    expect(await second.closed).toEqual({ code: 4404, reason: "Document deleted", wasClean: true });
  });

  test("--version from the binary -> same as from source", async () => {
    const fromBinary = Bun.spawnSync([binary, "--version"]).stdout.toString();
    const fromSource = Bun.spawnSync([process.execPath, MAIN, "--version"]).stdout.toString();
    expect(fromBinary).toBe(fromSource);
  });

  for (const runner of ["binary", "bun run"] as const) {
    test.if(process.platform === "linux")(`${runner}: accepted socket -> 9 s keepalive timer`, async () => {
      await using upstream = await startWsUpstream();
      const command = runner === "binary" ? [binary] : [process.execPath, "run", MAIN];
      await using relay = await RelayProcess.start([
        ...command,
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream.url,
        "--tcp-keepalive",
        "9s",
      ]);
      await using client = TestClient.ws(relay.url);
      await client.opened;
      const accepted = tcpTimers().find((t) => t.localPort === relay.port);
      expect(accepted?.timer).toBe(2);
      expect(accepted?.whenSeconds).toBeGreaterThan(7);
      expect(accepted?.whenSeconds).toBeLessThanOrEqual(9);
      const outbound = () => tcpTimers().some((t) => t.remotePort === upstream.port && t.timer === 2);
      expect(await waitFor(outbound, 4000)).toBe(true);
    });
  }
});
