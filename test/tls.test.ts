/**
 * TLS on both legs: a wss:// listener (`--tls-cert`, `--tls-key`), wss://
 * upstreams verified against the default CAs, `--upstream-ca` or nothing
 * (`--upstream-insecure`), and the option checks. Certificates are made by
 * `openssl` in a temporary directory when the file loads: a throwaway CA, a
 * server certificate for 127.0.0.1 and localhost signed by it, a
 * self-signed one, and one signed by the CA for another host name.
 */

import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, HandshakeError, createRelay, dialUpstream, silentLogger } from "../src/index.ts";
import { INSECURE_UPSTREAM_WARNING } from "../src/tls.ts";
import {
  type Closed,
  TestClient,
  type TestUpstream,
  recordingLogger,
  startBunUpstream,
  startRelay,
  waitFor,
} from "./helpers/peers.ts";
import { MAIN, RelayProcess, runCli } from "./helpers/process.ts";
import { rawConnect } from "./helpers/raw.ts";

const dir = mkdtempSync(join(tmpdir(), "wsbridge-tls-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function openssl(args: string[]): void {
  const result = Bun.spawnSync(["openssl", ...args], { cwd: dir, stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) {
    throw new Error(`openssl ${args.join(" ")} exited with ${result.exitCode}: ${result.stderr.toString()}`);
  }
}

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/** Makes NAME.key and NAME.pem, signed by the test CA, for the subjectAltName `san`. */
function issueCertificate(name: string, san: string): void {
  openssl(["req", ...EC_KEY, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`]);
  writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`);
  openssl([
    "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
    "-days", "2", "-extfile", `${name}.ext`, "-out", `${name}.pem`,
  ]);
}

openssl(["req", "-x509", ...EC_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=wsbridge test CA"]);
issueCertificate("server", "DNS:localhost,IP:127.0.0.1");
issueCertificate("other", "DNS:other.invalid");
openssl([
  "req", "-x509", ...EC_KEY, "-keyout", "self.key", "-out", "self.pem", "-days", "2", "-subj", "/CN=self-signed",
  "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
]);
openssl(["pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key"]);
writeFileSync(join(dir, "empty.pem"), "not a PEM file\n");

const path = (name: string): string => join(dir, name);
const pem = (name: string): string => readFileSync(path(name), "utf8");
const CA = pem("ca.pem");
const SERVER_TLS = { tlsCertFile: path("server.pem"), tlsKeyFile: path("server.key") };

type Kind = "bun" | "ws";

/** Connects a client of `kind` that trusts the test CA. */
function connect(kind: Kind, url: string): TestClient {
  return kind === "bun" ? TestClient.bun(url, undefined, undefined, CA) : TestClient.ws(url, undefined, undefined, CA);
}

/**
 * Starts an upstream that echoes, closes with 4002 "upstream done" when it
 * gets "close", and records the close it receives. `certificate` picks NAME.pem
 * and NAME.key for wss://; without it the upstream serves ws://.
 */
function startUpstream(certificate?: string): TestUpstream & { closes: Array<[number, string]> } {
  const closes: Array<[number, string]> = [];
  const tls = certificate === undefined ? undefined : { cert: pem(`${certificate}.pem`), key: pem(`${certificate}.key`) };
  const upstream = startBunUpstream(
    {
      message(ws, message) {
        if (message === "close") ws.close(4002, "upstream done");
        else ws.send(message);
      },
      close(_ws, code, reason) {
        closes.push([code, reason]);
      },
    },
    { tls },
  );
  return Object.assign(upstream, { closes });
}

/** Sends text and binary through `client` and checks that both come back unchanged. */
async function expectEcho(client: TestClient): Promise<void> {
  client.send("hello over TLS");
  client.send(new Uint8Array([0, 1, 2, 255]));
  const received = await client.waitForMessages(2);
  expect(received[0]).toEqual({ type: "text", text: "hello over TLS" });
  expect(received[1]?.type).toBe("binary");
  expect([...(received[1]?.bytes ?? [])]).toEqual([0, 1, 2, 255]);
}

describe("wss listener", () => {
  for (const kind of ["bun", "ws"] as const) {
    test(`${kind} client -> wss relay -> ws upstream`, async () => {
      await using upstream = startUpstream();
      await using relay = await startRelay({ upstream: upstream.url, ...SERVER_TLS });
      expect(relay.url).toBe(`wss://127.0.0.1:${relay.port}`);
      await using client = connect(kind, relay.url);
      await client.opened;
      await expectEcho(client);
      client.send("close");
      const closed: Closed = await client.closed;
      expect(closed.code).toBe(4002);
      expect(closed.reason).toBe("upstream done");
    });

    test(`${kind} client close code crosses a wss relay`, async () => {
      await using upstream = startUpstream();
      await using relay = await startRelay({ upstream: upstream.url, ...SERVER_TLS });
      await using client = connect(kind, relay.url);
      await client.opened;
      client.close(4001, "client done");
      expect(await waitFor(() => upstream.closes.length === 1)).toBe(true);
      expect(upstream.closes[0]).toEqual([4001, "client done"]);
    });
  }

  test("100 messages cross in order", async () => {
    await using upstream = startUpstream();
    await using relay = await startRelay({ upstream: upstream.url, ...SERVER_TLS });
    await using client = connect("bun", relay.url);
    await client.opened;
    const sent = Array.from({ length: 100 }, (_, i) => `message ${i}`);
    for (const text of sent) client.send(text);
    const received = await client.waitForMessages(sent.length);
    expect(received.map((m) => m.text)).toEqual(sent);
  });

  test("X-Forwarded-Proto is https behind TLS", async () => {
    await using upstream = startUpstream();
    await using relay = await startRelay({ upstream: upstream.url, ...SERVER_TLS });
    await using client = connect("ws", relay.url);
    await client.opened;
    expect(upstream.requests.length).toBe(1);
    expect(upstream.requests[0]?.headers.get("x-forwarded-proto")).toBe("https");
  });

  test("X-Forwarded-Proto stays http without TLS", async () => {
    await using upstream = startUpstream();
    await using relay = await startRelay({ upstream: upstream.url });
    await using client = connect("ws", relay.url);
    await client.opened;
    expect(upstream.requests[0]?.headers.get("x-forwarded-proto")).toBe("http");
  });

  test("client without the CA is rejected", async () => {
    await using upstream = startUpstream();
    await using relay = await startRelay({ upstream: upstream.url, ...SERVER_TLS });
    await using client = TestClient.ws(relay.url);
    const closed = await client.closed;
    expect(closed.code).toBe(1006);
    expect(client.error).toContain("unable to verify the first certificate");
    expect(upstream.requests.length).toBe(0);
  });
});

describe("wss upstream", () => {
  for (const kind of ["bun", "ws"] as const) {
    test(`${kind} client -> ws relay -> wss upstream with CA`, async () => {
      await using upstream = startUpstream("server");
      await using relay = await startRelay({ upstream: upstream.url, upstreamCaFile: path("ca.pem") });
      await using client = connect(kind, relay.url);
      await client.opened;
      await expectEcho(client);
      client.send("close");
      const closed = await client.closed;
      expect(closed.code).toBe(4002);
      expect(closed.reason).toBe("upstream done");
    });
  }

  test("client close code reaches a wss upstream", async () => {
    await using upstream = startUpstream("server");
    await using relay = await startRelay({ upstream: upstream.url, upstreamCaFile: path("ca.pem") });
    await using client = connect("ws", relay.url);
    await client.opened;
    client.close(4001, "client done");
    expect(await waitFor(() => upstream.closes.length === 1)).toBe(true);
    expect(upstream.closes[0]).toEqual([4001, "client done"]);
  });

  test("TLS on both legs", async () => {
    await using upstream = startUpstream("server");
    await using relay = await startRelay({ upstream: upstream.url, upstreamCaFile: path("ca.pem"), ...SERVER_TLS });
    await using client = connect("bun", relay.url);
    await client.opened;
    await expectEcho(client);
  });

  test("unknown CA -> 502 naming the TLS failure", async () => {
    const logger = recordingLogger();
    await using upstream = startUpstream("server");
    await using relay = await startRelay({ upstream: upstream.url, logger });
    const { handshake, socket } = await rawConnect(relay.port, { path: "/room?token=hunter2" });
    socket.destroy();
    expect(handshake.status).toBe(502);
    expect(handshake.body).toContain("upstream TLS handshake failed");
    expect(handshake.body).toContain("unable to verify the first certificate");
    expect(handshake.body).toContain("UNABLE_TO_VERIFY_LEAF_SIGNATURE");
    expect(handshake.body).not.toContain("hunter2");
    expect(handshake.body).not.toContain("token");
    expect(upstream.requests.length).toBe(0);
    expect(upstream.sockets.length).toBe(0);
    expect(relay.stats().pairsTotal).toBe(0);
    expect(relay.stats().handshakes["502"]).toBe(1);
    const logged = logger.records.find((r) => r.level === "error");
    expect(logged?.fields.kind).toBe("upstream_tls_failed");
    expect(JSON.stringify(logged)).not.toContain("hunter2");
  });

  test("self-signed upstream with CA -> 502", async () => {
    await using upstream = startUpstream("self");
    await using relay = await startRelay({ upstream: upstream.url, upstreamCaFile: path("ca.pem") });
    const { handshake, socket } = await rawConnect(relay.port);
    socket.destroy();
    expect(handshake.status).toBe(502);
    expect(handshake.body).toContain("self signed certificate");
    expect(upstream.sockets.length).toBe(0);
  });

  test("host name mismatch -> 502", async () => {
    await using upstream = startUpstream("other");
    await using relay = await startRelay({ upstream: upstream.url, upstreamCaFile: path("ca.pem") });
    const { handshake, socket } = await rawConnect(relay.port);
    socket.destroy();
    expect(handshake.status).toBe(502);
    expect(handshake.body).toContain("does not match");
    expect(handshake.body).toContain("ERR_TLS_CERT_ALTNAME_INVALID");
    expect(upstream.sockets.length).toBe(0);
  });

  test("upstreamInsecure accepts self-signed, warns once", async () => {
    const logger = recordingLogger();
    await using upstream = startUpstream("self");
    await using relay = await startRelay({ upstream: upstream.url, upstreamInsecure: true, logger });
    const warnings = logger.records.filter((r) => r.level === "warn");
    expect(warnings.map((r) => r.msg)).toEqual([INSECURE_UPSTREAM_WARNING]);
    await using client = connect("ws", relay.url);
    await client.opened;
    await expectEcho(client);
    await using second = connect("bun", relay.url);
    await second.opened;
    expect(logger.records.filter((r) => r.level === "warn").length).toBe(1);
  });

  test("no warning while verification is on", async () => {
    const logger = recordingLogger();
    await using upstream = startUpstream("server");
    await using relay = await startRelay({ upstream: upstream.url, upstreamCaFile: path("ca.pem"), logger });
    expect(logger.records.filter((r) => r.level === "warn")).toEqual([]);
  });
});

describe("dialUpstream", () => {
  test("tls.ca -> opens", async () => {
    await using upstream = startUpstream("server");
    const socket = await dialUpstream(upstream.url, { tls: { ca: CA } });
    expect(socket.readyState).toBe(WebSocket.OPEN);
    socket.close();
  });

  test("no CA -> HandshakeError 502", async () => {
    await using upstream = startUpstream("server");
    const error = await dialUpstream(upstream.url).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HandshakeError);
    expect((error as HandshakeError).status).toBe(502);
    expect((error as HandshakeError).code).toBe("upstream_tls_failed");
    expect((error as HandshakeError).message).toContain("unable to verify the first certificate");
    expect(upstream.requests.length).toBe(0);
  });

  test("rejectUnauthorized false -> opens", async () => {
    await using upstream = startUpstream("self");
    const socket = await dialUpstream(upstream.url, { tls: { rejectUnauthorized: false } });
    expect(socket.readyState).toBe(WebSocket.OPEN);
    socket.close();
  });
});

describe("createRelay options", () => {
  function configError(options: Parameters<typeof createRelay>[0]): ConfigError {
    try {
      createRelay({ logger: silentLogger, ...options });
    } catch (error) {
      if (error instanceof ConfigError) return error;
      throw error;
    }
    throw new Error("createRelay accepted the options");
  }

  test("cert without key -> ConfigError", () => {
    const error = configError({ tlsCertFile: path("server.pem") });
    expect(error.option).toBe("tlsCertFile");
    expect(error.message).toContain("tlsKeyFile");
    expect(error.message).toContain(path("server.pem"));
  });

  test("mismatched key -> ConfigError", () => {
    const error = configError({ tlsCertFile: path("server.pem"), tlsKeyFile: path("self.key") });
    expect(error.option).toBe("tlsKeyFile");
    expect(error.value).toBe(path("self.key"));
    expect(error.message).toContain("does not match");
  });

  test("CA bundle of several certificates -> accepted", () => {
    const bundle = path("bundle.pem");
    writeFileSync(bundle, pem("self.pem") + pem("ca.pem"));
    expect(() => createRelay({ logger: silentLogger, upstream: "wss://127.0.0.1:9", upstreamCaFile: bundle })).not.toThrow();
  });
});

describe("command line", () => {
  test("--help lists the TLS flags", async () => {
    const { code, stdout } = await runCli(["--help"]);
    expect(code).toBe(0);
    for (const flag of ["--tls-cert", "--tls-key", "--upstream-ca", "--upstream-insecure"]) expect(stdout).toContain(flag);
    expect(stdout).toContain("env WSBRIDGE_UPSTREAM_INSECURE");
  });

  test("wss listener and wss upstream", async () => {
    await using upstream = startUpstream("server");
    await using relay = await RelayProcess.start([
      process.execPath, MAIN, "--listen", "127.0.0.1:0",
      "--tls-cert", path("server.pem"), "--tls-key", path("server.key"),
      "--upstream", upstream.url, "--upstream-ca", path("ca.pem"),
    ]);
    expect(relay.lines.find((l) => l.msg === "relay listening")?.tls).toBe(true);
    await using client = connect("bun", `wss://127.0.0.1:${relay.port}`);
    await client.opened;
    await expectEcho(client);
    expect(upstream.requests[0]?.headers.get("x-forwarded-proto")).toBe("https");
  });

  test("environment twins serve wss to the echo", async () => {
    await using relay = await RelayProcess.start(
      [process.execPath, MAIN, "--listen", "127.0.0.1:0"],
      { WSBRIDGE_TLS_CERT: path("server.pem"), WSBRIDGE_TLS_KEY: path("server.key") },
    );
    await using client = connect("ws", `wss://127.0.0.1:${relay.port}`);
    await client.opened;
    await expectEcho(client);
  });

  test("--upstream-insecure relays and warns once", async () => {
    await using upstream = startUpstream("self");
    await using relay = await RelayProcess.start([
      process.execPath, MAIN, "--listen", "127.0.0.1:0", "--upstream", upstream.url, "--upstream-insecure",
    ]);
    await using client = connect("ws", relay.url);
    await client.opened;
    await expectEcho(client);
    const warnings = relay.lines.filter((l) => l.level === "warn");
    expect(warnings.length).toBe(1);
    expect(warnings[0]?.msg).toBe(INSECURE_UPSTREAM_WARNING);
  });

  test("NODE_TLS_REJECT_UNAUTHORIZED=0 keeps verification", async () => {
    await using upstream = startUpstream("self");
    await using relay = await RelayProcess.start(
      [process.execPath, MAIN, "--listen", "127.0.0.1:0", "--upstream", upstream.url],
      { NODE_TLS_REJECT_UNAUTHORIZED: "0" },
    );
    const { handshake, socket } = await rawConnect(relay.port);
    socket.destroy();
    expect(handshake.status).toBe(502);
    expect(handshake.body).toContain("self signed certificate");
    expect(upstream.sockets.length).toBe(0);
  });

  const cases: Array<[string, string[], string[]]> = [
    ["cert without key", ["--tls-cert", path("server.pem")], ["--tls-cert", path("server.pem"), "without --tls-key"]],
    ["key without cert", ["--tls-key", path("server.key")], ["--tls-key", path("server.key"), "without --tls-cert"]],
    [
      "missing cert file",
      ["--tls-cert", path("missing.pem"), "--tls-key", path("server.key")],
      ["--tls-cert", path("missing.pem"), "file not found"],
    ],
    [
      "directory as key",
      ["--tls-cert", path("server.pem"), "--tls-key", dir],
      ["--tls-key", dir, "is a directory"],
    ],
    [
      "swapped files",
      ["--tls-cert", path("server.key"), "--tls-key", path("server.pem")],
      ["--tls-cert", path("server.key"), "no PEM certificate", "swapped"],
    ],
    [
      "key of another certificate",
      ["--tls-cert", path("server.pem"), "--tls-key", path("self.key")],
      ["--tls-key", path("self.key"), path("server.pem"), "does not match"],
    ],
    [
      "encrypted key",
      ["--tls-cert", path("server.pem"), "--tls-key", path("encrypted.key")],
      ["--tls-key", path("encrypted.key"), "encrypted", "openssl pkey"],
    ],
    [
      "CA file without certificates",
      ["--upstream", "wss://127.0.0.1:9", "--upstream-ca", path("empty.pem")],
      ["--upstream-ca", path("empty.pem"), "no PEM certificate"],
    ],
    [
      "missing CA file",
      ["--upstream", "wss://127.0.0.1:9", "--upstream-ca", path("missing.pem")],
      ["--upstream-ca", path("missing.pem"), "file not found"],
    ],
    [
      "CA with insecure",
      ["--upstream", "wss://127.0.0.1:9", "--upstream-ca", path("ca.pem"), "--upstream-insecure"],
      ["--upstream-insecure", "--upstream-ca", "cannot be combined"],
    ],
    [
      "CA with ws:// upstream",
      ["--upstream", "ws://127.0.0.1:9", "--upstream-ca", path("ca.pem")],
      ["--upstream-ca", "not a wss:// URL"],
    ],
    ["insecure without upstream", ["--upstream-insecure"], ["--upstream-insecure", "no upstream is given"]],
    ["insecure with a value", ["--upstream-insecure=maybe"], ["--upstream-insecure", '"maybe"', "true or 1"]],
  ];

  for (const [name, args, expected] of cases) {
    test(`${name} -> exit 2`, async () => {
      const { code, stderr } = await runCli(args);
      expect(code).toBe(2);
      for (const part of expected) expect(stderr).toContain(part);
    });
  }

  test("cert without key in environment -> exit 2", async () => {
    const { code, stderr } = await runCli([], { WSBRIDGE_TLS_CERT: path("server.pem") });
    expect(code).toBe(2);
    expect(stderr).toContain("--tls-cert");
    expect(stderr).toContain("without --tls-key");
  });
});
