/**
 * Access control on real sockets: allowed origins (403) and bearer tokens
 * (401), checked before any upstream dial, with the relay's token removed
 * from what the upstream sees and kept out of every log line.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OriginPolicy, TokenSet, bearerToken, takeQueryParameter } from "../src/access.ts";
import { ConfigError, resolveOptions } from "../src/config.ts";
import { FLAG_NAMES } from "../src/cli.ts";
import { TestClient, type TestRelay, recordingLogger, startBunEcho, startRelay, waitFor } from "./helpers/peers.ts";
import { MAIN, RelayProcess, runCli } from "./helpers/process.ts";
import { rawConnect } from "./helpers/raw.ts";

const TOKEN_A = "relay-token-A1b2C3d4E5f6G7h8";
const TOKEN_B = "relay.token_B~9+8/7==";
const UPSTREAM_TOKEN = "upstream-own-token-XYZ";
const WRONG_TOKEN = "relay-token-A1b2C3d4E5f6G7h9";

let dir = "";
let tokenFile = "";

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "wsbridge-access-"));
  tokenFile = join(dir, "tokens");
  writeFileSync(tokenFile, `\n  ${TOKEN_A}  \n\n\t${TOKEN_B}\r\n\n`);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function writeFile(name: string, content: string): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

/** Opens a Bun client through `relay`, waits for its open and checks that it echoes. */
async function openEchoingClient(relay: TestRelay, path = "/", headers?: Record<string, string>): Promise<TestClient> {
  const client = TestClient.bun(`${relay.url}${path}`, undefined, headers);
  await client.opened;
  client.send("before");
  const [message] = await client.waitForMessages(1);
  expect(message?.text).toBe("before");
  return client;
}

/** Sends one message on an open client and returns the echo. */
async function echoOnce(client: TestClient, text: string): Promise<string | undefined> {
  const before = client.received.length;
  client.send(text);
  const messages = await client.waitForMessages(before + 1);
  return messages[before]?.text;
}

describe("origin list", () => {
  const policy = new OriginPolicy([
    "https://app.example.com",
    "https://*.example.org",
    "http://localhost:3000",
    "https://*.example.net:8443",
  ]);

  const cases: Array<[string | null, boolean]> = [
    [null, true],
    ["https://app.example.com", true],
    ["HTTPS://APP.EXAMPLE.COM", true],
    ["https://app.example.com:443", true],
    ["https://app.example.com:444", false],
    ["http://app.example.com", false],
    ["https://other.example.com", false],
    ["https://a.example.org", true],
    ["https://a.b.example.org", true],
    ["https://example.org", false],
    ["https://evilexample.org", false],
    ["https://example.org.evil.test", false],
    ["http://a.example.org", false],
    ["https://a.example.org:8443", false],
    ["https://a.example.net:8443", true],
    ["https://a.example.net", false],
    ["http://localhost:3000", true],
    ["http://localhost", false],
    ["null", false],
    ["https://app.example.com, https://evil.test", false],
    ["https://app.example.com/path", false],
    ["not an origin", false],
  ];

  for (const [origin, allowed] of cases) {
    test(`${origin ?? "(none)"} -> ${allowed ? "allowed" : "rejected"}`, () => {
      expect(policy.allows(origin)).toBe(allowed);
    });
  }

  test("require-origin -> missing Origin rejected", () => {
    const strict = new OriginPolicy(["https://app.example.com", "require-origin"]);
    expect(strict.allows(null)).toBe(false);
    expect(strict.allows("https://app.example.com")).toBe(true);
  });

  test("null entry -> opaque origin allowed", () => {
    const withNull = new OriginPolicy(["null", "https://app.example.com"]);
    expect(withNull.allows("null")).toBe(true);
  });

  test("unicode host -> matches its punycode form", () => {
    const unicode = new OriginPolicy(["https://*.bücher.example"]);
    expect(unicode.allows("https://shop.xn--bcher-kva.example")).toBe(true);
  });

  const invalid: Array<[string[], string]> = [
    [["ftp://x/path"], '"ftp://x/path"'],
    [["https://*."], '"https://*."'],
    [["https://*"], '"https://*"'],
    [["https://a.*.example.com"], '"https://a.*.example.com"'],
    [["https://*.127.0.0.1"], '"https://*.127.0.0.1"'],
    [["https://app.example.com?x=1"], '"https://app.example.com?x=1"'],
    [["https://user@app.example.com"], '"https://user@app.example.com"'],
    [["require-origin"], "no origin listed"],
    [[], "no origin listed"],
  ];

  for (const [entries, expected] of invalid) {
    test(`[${entries.join(",")}] -> ConfigError naming the flag`, () => {
      let error: unknown;
      try {
        resolveOptions({ allowedOrigins: entries }, FLAG_NAMES);
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).option).toBe("--allow-origin");
      expect((error as Error).message).toStartWith("--allow-origin: ");
      expect((error as Error).message).toContain(expected);
    });
  }
});

describe("origin check", () => {
  test("foreign origin -> 403, never dialled", async () => {
    await using upstream = startBunEcho();
    const logger = recordingLogger();
    await using relay = await startRelay({ upstream: upstream.url, allowedOrigins: ["https://app.example.com"], logger });
    await using good = await openEchoingClient(relay, "/", { Origin: "https://app.example.com" });
    const seenBefore = upstream.requests.length;

    const { handshake, socket } = await rawConnect(relay.port, { headers: { Origin: "https://evil.example.com" } });
    socket.destroy();

    expect(handshake.status).toBe(403);
    expect(handshake.body).toContain("origin not allowed");
    expect(handshake.headers.connection).toBe("close");
    expect(upstream.requests.length).toBe(seenBefore);
    expect(relay.stats().handshakes["403"]).toBe(1);
    const line = logger.records.find((record) => record.fields.kind === "origin_rejected");
    expect(line?.level).toBe("error");
    expect(line?.fields.origin).toBe("https://evil.example.com");
    expect(await echoOnce(good, "after")).toBe("after");
  });

  test("allowed origins -> 101 with Bun and ws clients", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, allowedOrigins: ["https://app.example.com", "https://*.example.org"] });
    await using bun = TestClient.bun(relay.url, undefined, { Origin: "https://app.example.com" });
    await bun.opened;
    await using ws = TestClient.ws(relay.url, undefined, { Origin: "https://chat.eu.example.org" });
    await ws.opened;
    expect(await echoOnce(bun, "one")).toBe("one");
    expect(await echoOnce(ws, "two")).toBe("two");
    expect(upstream.requests[0]?.headers.get("origin")).toBe("https://app.example.com");
  });

  test("pattern -> bare domain gets 403", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, allowedOrigins: ["https://*.example.org"] });
    const { handshake, socket } = await rawConnect(relay.port, { headers: { Origin: "https://example.org" } });
    socket.destroy();
    expect(handshake.status).toBe(403);
    expect(upstream.requests.length).toBe(0);
  });

  test("no Origin header -> allowed by default", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, allowedOrigins: ["https://app.example.com"] });
    const { handshake, socket } = await rawConnect(relay.port);
    socket.destroy();
    expect(handshake.status).toBe(101);
  });

  test("no Origin header with require-origin -> 403", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, allowedOrigins: ["https://app.example.com", "require-origin"] });
    const { handshake, socket } = await rawConnect(relay.port);
    socket.destroy();
    expect(handshake.status).toBe(403);
    expect(handshake.body).toContain("Origin header is required");
    expect(upstream.requests.length).toBe(0);
  });

  test("option unset -> any origin allowed", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url });
    const { handshake, socket } = await rawConnect(relay.port, { headers: { Origin: "https://anywhere.test" } });
    socket.destroy();
    expect(handshake.status).toBe(101);
  });
});

describe("token file", () => {
  test("blank lines and whitespace -> both tokens read", () => {
    const tokens = TokenSet.fromFile(tokenFile);
    expect(tokens.has(TOKEN_A)).toBe(true);
    expect(tokens.has(TOKEN_B)).toBe(true);
    expect(tokens.has(WRONG_TOKEN)).toBe(false);
    expect(tokens.has("")).toBe(false);
    expect(tokens.has(`${TOKEN_A}x`)).toBe(false);
    expect(tokens.has(TOKEN_A.slice(0, -1))).toBe(false);
  });

  const bad: Array<[string, string | null, string]> = [
    ["empty", "", "contains no token"],
    ["blank", "\n   \n\t\n", "contains no token"],
    ["spaced", `${TOKEN_A}\nsecret with-space\n`, "line 2"],
    ["missing", null, "cannot read"],
  ];

  for (const [name, content, expected] of bad) {
    test(`${name} file -> ConfigError without token text`, () => {
      const path = content === null ? join(dir, "does-not-exist") : writeFile(name, content);
      let error: unknown;
      try {
        resolveOptions({ authTokenFile: path }, FLAG_NAMES);
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(ConfigError);
      const message = (error as Error).message;
      expect(message).toStartWith("--auth-token-file: ");
      expect(message).toContain(expected);
      expect(message).not.toContain(TOKEN_A);
      expect(message).not.toContain("secret");
    });
  }

  test("bearerToken -> scheme case-insensitive", () => {
    expect(bearerToken("Bearer abc")).toBe("abc");
    expect(bearerToken("bearer   abc ")).toBe("abc");
    expect(bearerToken("Basic abc")).toBeNull();
    expect(bearerToken("Bearer a b")).toBeNull();
    expect(bearerToken(null)).toBeNull();
  });

  test("takeQueryParameter -> others keep encoding and order", () => {
    expect(takeQueryParameter("/a?x=1&token=t%2B1&y=%20z&token=u", "token")).toEqual({
      values: ["t+1", "u"],
      url: "/a?x=1&y=%20z",
    });
    expect(takeQueryParameter("/a?token=t", "token")).toEqual({ values: ["t"], url: "/a" });
    expect(takeQueryParameter("/a", "token")).toEqual({ values: [], url: "/a" });
  });
});

describe("bearer token check", () => {
  test("header token -> 101, upstream sees no Authorization", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, authTokenFile: tokenFile });
    await using client = await openEchoingClient(relay, "/room?x=1", { Authorization: `Bearer ${TOKEN_A}` });
    const seen = upstream.requests[0];
    expect(seen?.headers.get("authorization")).toBeNull();
    expect(new URL(seen?.url ?? "").search).toBe("?x=1");
    expect(await echoOnce(client, "ok")).toBe("ok");
  });

  test("query token -> 101, upstream URL without it", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, authTokenFile: tokenFile });
    const query = `?a=1&token=${encodeURIComponent(TOKEN_B)}&b=%20two`;
    await using client = TestClient.ws(`${relay.url}/chat${query}`);
    await client.opened;
    const seen = new URL(upstream.requests[0]?.url ?? "");
    expect(seen.pathname).toBe("/chat");
    expect(seen.search).toBe("?a=1&b=%20two");
    expect(upstream.requests[0]?.url).not.toContain("token");
  });

  test("query token beside upstream Authorization -> header forwarded", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, authTokenFile: tokenFile });
    const headers = { Authorization: `Bearer ${UPSTREAM_TOKEN}` };
    const { handshake, socket } = await rawConnect(relay.port, { path: `/?token=${TOKEN_A}`, headers });
    socket.destroy();
    expect(handshake.status).toBe(101);
    expect(upstream.requests[0]?.headers.get("authorization")).toBe(`Bearer ${UPSTREAM_TOKEN}`);
    expect(upstream.requests[0]?.url).not.toContain(TOKEN_A);
  });

  const rejected: Array<[string, { path?: string; headers?: Record<string, string> }]> = [
    ["no token", {}],
    ["wrong header token", { headers: { Authorization: `Bearer ${WRONG_TOKEN}` } }],
    ["wrong query token", { path: `/?token=${WRONG_TOKEN}` }],
    ["relay token as Basic", { headers: { Authorization: `Basic ${TOKEN_A}` } }],
    ["token in another parameter", { path: `/?access_token=${TOKEN_A}` }],
  ];

  for (const [name, request] of rejected) {
    test(`${name} -> 401 with WWW-Authenticate`, async () => {
      await using upstream = startBunEcho();
      await using relay = await startRelay({ upstream: upstream.url, authTokenFile: tokenFile });
      const { handshake, socket } = await rawConnect(relay.port, request);
      socket.destroy();
      expect(handshake.status).toBe(401);
      expect(handshake.headers["www-authenticate"]).toBe("Bearer");
      expect(handshake.headers.connection).toBe("close");
      expect(upstream.requests.length).toBe(0);
      expect(relay.stats().handshakes["401"]).toBe(1);
    });
  }

  test("rejected client -> open pair keeps relaying", async () => {
    await using upstream = startBunEcho();
    await using relay = await startRelay({ upstream: upstream.url, authTokenFile: tokenFile });
    await using good = await openEchoingClient(relay, "/", { Authorization: `Bearer ${TOKEN_A}` });
    for (let i = 0; i < 5; i++) {
      const { handshake, socket } = await rawConnect(relay.port, { headers: { Authorization: `Bearer ${WRONG_TOKEN}` } });
      socket.destroy();
      expect(handshake.status).toBe(401);
    }
    expect(await echoOnce(good, "still here")).toBe("still here");
    expect(upstream.requests.length).toBe(1);
  });

  test("tokens -> never in log lines", async () => {
    await using upstream = startBunEcho();
    const logger = recordingLogger();
    await using relay = await startRelay({ upstream: upstream.url, authTokenFile: tokenFile, logger });
    const attempts = [
      { headers: { Authorization: `Bearer ${TOKEN_A}` } },
      { path: `/p?token=${encodeURIComponent(TOKEN_B)}&q=1` },
      { headers: { Authorization: `Bearer ${WRONG_TOKEN}` } },
      { path: `/p?token=${WRONG_TOKEN}` },
    ];
    for (const attempt of attempts) {
      const { connection, socket } = await rawConnect(relay.port, attempt);
      connection?.destroy();
      socket.destroy();
    }
    await waitFor(() => relay.stats().activePairs === 0 && logger.records.filter((r) => r.msg === "pair closed").length === 2);
    const logged = JSON.stringify(logger.records);
    expect(logger.records.filter((r) => r.fields.kind === "unauthorized").length).toBe(2);
    for (const secret of [TOKEN_A, TOKEN_B, encodeURIComponent(TOKEN_B), WRONG_TOKEN]) {
      expect(logged).not.toContain(secret);
    }
  });
});

describe("command line", () => {
  test("--help lists the access flags", async () => {
    const { code, stdout } = await runCli(["--help"]);
    expect(code).toBe(0);
    expect(stdout).toContain("--allow-origin LIST");
    expect(stdout).toContain("--auth-token-file FILE");
    expect(stdout).toContain("env WSBRIDGE_AUTH_TOKEN_FILE");
  });

  const cases: Array<[string[], string[]]> = [
    [["--allow-origin", "ftp://x/path"], ["--allow-origin", '"ftp://x/path"']],
    [["--allow-origin", "require-origin"], ["--allow-origin", "no origin listed"]],
    [["--allow-origin", ""], ["--allow-origin", "no origin listed"]],
    [["--auth-token-file", "/nonexistent/wsbridge-tokens"], ["--auth-token-file", "cannot read"]],
  ];

  for (const [args, expected] of cases) {
    test(`${args.join(" ")} -> exit 2 naming the flag`, async () => {
      const { code, stderr } = await runCli(["--listen", "127.0.0.1:0", ...args]);
      expect(code).toBe(2);
      for (const part of expected) expect(stderr).toContain(part);
    });
  }

  test("empty token file -> exit 2 naming the flag", async () => {
    const { code, stderr } = await runCli(["--listen", "127.0.0.1:0", "--auth-token-file", writeFile("cli-empty", "\n\n")]);
    expect(code).toBe(2);
    expect(stderr).toContain("--auth-token-file");
    expect(stderr).toContain("contains no token");
  });

  test("relay process -> checks both, logs no token", async () => {
    await using upstream = startBunEcho();
    await using relay = await RelayProcess.start([
      process.execPath,
      MAIN,
      "--listen=127.0.0.1:0",
      `--upstream=${upstream.url}`,
      `--auth-token-file=${tokenFile}`,
      "--allow-origin=https://app.example.com,https://*.example.org",
      "--log-level=debug",
    ]);
    const good = { Origin: "https://a.example.org", Authorization: `Bearer ${TOKEN_A}` };
    const wrongToken = { Origin: "https://a.example.org", Authorization: `Bearer ${WRONG_TOKEN}` };
    const wrongOrigin = { Origin: "https://evil.test", Authorization: `Bearer ${TOKEN_A}` };

    // The query token is valid, so only the origin decides the second and third.
    const statuses: number[] = [];
    for (const headers of [good, wrongToken, wrongOrigin]) {
      const { handshake, connection, socket } = await rawConnect(relay.port, { path: `/?token=${encodeURIComponent(TOKEN_B)}`, headers });
      statuses.push(handshake.status);
      connection?.destroy();
      socket.destroy();
    }
    expect(statuses).toEqual([101, 101, 403]);

    const { handshake, socket } = await rawConnect(relay.port, { headers: wrongToken });
    socket.destroy();
    expect(handshake.status).toBe(401);

    await relay.waitForLine((line) => line.msg === "pair closed" && relay.lines.filter((l) => l.msg === "pair closed").length === 2);
    const output = relay.raw.join("\n");
    expect(output).toContain("origin_rejected");
    expect(output).toContain("unauthorized");
    for (const secret of [TOKEN_A, TOKEN_B, encodeURIComponent(TOKEN_B), WRONG_TOKEN]) {
      expect(output).not.toContain(secret);
    }
  });
});
