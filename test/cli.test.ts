/**
 * The command line: help, bad values, environment twins, the built-in echo
 * upstream and shutdown on SIGTERM, with the relay as a real child process.
 */

import { describe, expect, test } from "bun:test";
import { TestClient, startBunUpstream } from "./helpers/peers.ts";
import { MAIN, RelayProcess, runCli } from "./helpers/process.ts";

const FLAGS = [
  "--listen",
  "--upstream",
  "--dial-timeout",
  "--ping-interval",
  "--pong-timeout",
  "--tcp-keepalive",
  "--max-message",
  "--high-water",
  "--shutdown-grace",
  "--deflate",
  "--admin",
  "--workers",
  "--log-level",
  "--log-format",
];

describe("help", () => {
  test("--help lists every option with its default", async () => {
    const { code, stdout } = await runCli(["--help"]);
    expect(code).toBe(0);
    for (const flag of FLAGS) expect(stdout).toContain(flag);
    expect(stdout).toContain("default 127.0.0.1:8080");
    expect(stdout).toContain("default 16MiB");
    expect(stdout).toContain("default 15s");
    expect(stdout).toContain("env WSBRIDGE_MAX_MESSAGE");
  });

  test("--help after a bad value -> help, exit 0", async () => {
    const { code, stdout } = await runCli(["--pong-timeout", "40s", "--help"], { WSBRIDGE_MAX_MESSAGE: "16MB" });
    expect(code).toBe(0);
    expect(stdout).toContain("Usage: wsbridge");
  });

  test("--version prints the version", async () => {
    const { code, stdout } = await runCli(["--version"]);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^wsbridge \d+\.\d+\.\d+ \(bun 1\.4\.4\)/);
  });
});

describe("bad values", () => {
  const cases: Array<[string[], string[]]> = [
    [["--max-message", "16MB"], ["--max-message", '"16MB"', "KiB, MiB or GiB"]],
    [["--max-message", "5GiB"], ["--max-message", "128 MiB"]],
    [["--listen", "localhost"], ["--listen", '"localhost"', "HOST:PORT"]],
    [["--listen", "127.0.0.1:70000"], ["--listen", "0 to 65535"]],
    [["--upstream", "http://example.test"], ["--upstream", '"http:"', "ws:// or wss://"]],
    [["--upstream", "not a url"], ["--upstream", '"not a url"']],
    [["--ping-interval", "0.4ms"], ["--ping-interval", '"0.4ms"', "under 1ms"]],
    [["--dial-timeout", "10"], ["--dial-timeout", '"10"', "ms, s or m"]],
    [["--tcp-keepalive", "1500ms"], ["--tcp-keepalive", "whole number of seconds"]],
    [["--ping-interval", "5s", "--pong-timeout", "5s"], ["--pong-timeout", "must be shorter than --ping-interval"]],
    [["--log-level", "loud"], ["--log-level", '"loud"', "debug, info, warn, error"]],
    [["--high-water", "10"], ["--high-water", "1 KiB to 1 GiB"]],
    [["--listen"], ["--listen", "missing value"]],
    [["--workers", "0"], ["--workers", '"0"', "1 to 256, or auto"]],
    [["--workers", "two"], ["--workers", '"two"']],
    [["--workers", "2", "--listen", "127.0.0.1:0"], ["--workers", "fixed port"]],
    [["--admin", "9090"], ["--admin", '"9090"', "HOST:PORT"]],
    [["--deflate", "yes"], ["--deflate", '"yes"', "off, client, upstream, both"]],
    [["--deflate="], ["--deflate", '""']],
    [["--frobnicate"], ['"--frobnicate"', "--help"]],
  ];

  for (const [args, expected] of cases) {
    test(`${args.join(" ")} -> exit 2 naming the flag`, async () => {
      const { code, stderr } = await runCli(args);
      expect(code).toBe(2);
      for (const part of expected) expect(stderr).toContain(part);
      expect(stderr).not.toContain(":pw@");
    });
  }

  test("bad variable overridden by its flag -> not parsed", async () => {
    const { code, stdout } = await runCli(["--listen", "127.0.0.1:0", "--version"], { WSBRIDGE_LISTEN: "bogus" });
    expect(code).toBe(0);
    expect(stdout).toStartWith("wsbridge ");
  });

  test("bad environment value -> exit 2 naming the variable", async () => {
    const { code, stderr } = await runCli([], { WSBRIDGE_MAX_MESSAGE: "lots" });
    expect(code).toBe(2);
    expect(stderr).toContain("WSBRIDGE_MAX_MESSAGE");
    expect(stderr).toContain('"lots"');
  });

  test("port in use -> exit 2 with a hint", async () => {
    await using holder = startBunUpstream();
    const { code, stderr } = await runCli(["--listen", `127.0.0.1:${holder.port}`]);
    expect(code).toBe(2);
    expect(stderr).toContain(`cannot listen on 127.0.0.1:${holder.port}`);
  });
});

describe("running", () => {
  test("no upstream -> relays to the built-in echo and says so", async () => {
    await using relay = await RelayProcess.start([process.execPath, MAIN, "--listen", "127.0.0.1:0"]);
    const notice = relay.lines.find((line) => line.msg.includes("built-in echo"));
    expect(notice).toBeDefined();
    await using client = TestClient.ws(relay.url);
    await client.opened;
    client.send("hello");
    client.send(new Uint8Array([1, 2, 3]));
    const got = await client.waitForMessages(2);
    expect(got[0]).toEqual({ type: "text", text: "hello" });
    expect([...(got[1]?.bytes ?? [])]).toEqual([1, 2, 3]);
  });

  test("environment twin sets the option; the flag wins", async () => {
    await using relay = await RelayProcess.start(
      [process.execPath, MAIN, "--listen", "127.0.0.1:0"],
      { WSBRIDGE_LISTEN: "127.0.0.1:1", WSBRIDGE_LOG_FORMAT: "json", WSBRIDGE_MAX_MESSAGE: "1KiB" },
    );
    await using client = TestClient.bun(relay.url);
    await client.opened;
    client.send("x".repeat(2048));
    const closed = await client.closed;
    expect(closed.code).toBe(1009);
  });

  test("SIGTERM with an open pair -> 1001 to both sides and exit 0", async () => {
    const closes: Array<[number, string]> = [];
    await using upstream = startBunUpstream({
      close(_ws, code, reason) {
        closes.push([code, reason]);
      },
    });
    await using relay = await RelayProcess.start([
      process.execPath,
      MAIN,
      "--listen",
      "127.0.0.1:0",
      "--upstream",
      upstream.url,
      "--shutdown-grace",
      "200ms",
    ]);
    await using client = TestClient.bun(relay.url);
    await client.opened;
    relay.proc.kill("SIGTERM");
    const closed = await client.closed;
    expect(closed).toEqual({ code: 1001, reason: "relay shutting down", wasClean: true });
    expect(await relay.exited()).toBe(0);
    expect(closes).toEqual([[1001, "relay shutting down"]]);
  });
});
