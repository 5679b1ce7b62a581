/**
 * Operating the relay: the admin endpoint and its Prometheus metrics, logs
 * without secrets, graceful shutdown, workers sharing a port, and the
 * container and Kubernetes files.
 */

import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { TestClient, startBunEcho, waitFor } from "./helpers/peers.ts";
import { startRawUpstream } from "./helpers/raw.ts";
import { MAIN, REPO_ROOT, RelayProcess, runCli } from "./helpers/process.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * Parses Prometheus text format 0.0.4 strictly enough to catch mistakes:
 * every sample belongs to a family declared by # TYPE, and each family's
 * samples are contiguous.
 */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  const finished = new Set<string>();
  let current = "";
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type !== null) {
      const family = type[1] as string;
      if (types.has(family)) throw new Error(`family ${family} declared twice`);
      types.set(family, type[2] as string);
      continue;
    }
    if (line.startsWith("# HELP ")) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (sample === null) throw new Error(`malformed line: ${line}`);
    const name = sample[1] as string;
    const family = [...types.keys()].find((f) => name === f || /^_(bucket|sum|count)$/.test(name.slice(f.length)) && name.startsWith(f));
    if (family === undefined) throw new Error(`sample ${name} has no # TYPE`);
    if (family !== current) {
      if (finished.has(family)) throw new Error(`samples of ${family} are not contiguous`);
      if (current !== "") finished.add(current);
      current = family;
    }
    const labels: Record<string, string> = {};
    for (const match of (sample[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[match[1] as string] = match[2] as string;
    }
    const value = Number(sample[4] === "+Inf" ? Infinity : sample[4]);
    if (Number.isNaN(value)) throw new Error(`bad value in: ${line}`);
    samples.push({ name, labels, value });
  }
  return { samples, types };
}

function valueOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.find(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  return found?.value;
}

async function freePort(): Promise<number> {
  const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
  const port = probe.port as number;
  await probe.stop(true);
  return port;
}

describe("admin endpoint", () => {
  test("known workload -> exact counts in /metrics", async () => {
    await using upstream = startBunEcho();
    const adminPort = await freePort();
    await using relay = await RelayProcess.start([
      process.execPath, MAIN, "--listen", "127.0.0.1:0", "--upstream", upstream.url, "--admin", `127.0.0.1:${adminPort}`,
    ]);
    for (let i = 0; i < 3; i++) {
      const client = TestClient.bun(relay.url);
      await client.opened;
      client.send("one");
      client.send("two");
      client.send(new Uint8Array(5));
      await client.waitForMessages(3);
      client.close(4001, "bye");
      await client.closed;
    }
    const refused = await fetch(`http://127.0.0.1:${relay.port}/`);
    expect(refused.status).toBe(426);
    await waitFor(() => relay.lines.filter((l) => l.msg === "pair closed").length === 3);

    const response = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
    expect(response.headers.get("content-type")).toContain("text/plain; version=0.0.4");
    const { samples, types } = parseExposition(await response.text());
    expect(types.get("wsbridge_pairs_total")).toBe("counter");
    expect(types.get("wsbridge_upstream_dial_seconds")).toBe("histogram");
    expect(valueOf(samples, "wsbridge_pairs_total")).toBe(3);
    expect(valueOf(samples, "wsbridge_pairs_active")).toBe(0);
    expect(valueOf(samples, "wsbridge_handshakes_total", { outcome: "101" })).toBe(3);
    expect(valueOf(samples, "wsbridge_handshakes_total", { outcome: "426" })).toBe(1);
    const text = { direction: "client_to_upstream", opcode: "text" };
    expect(valueOf(samples, "wsbridge_messages_total", text)).toBe(6);
    expect(valueOf(samples, "wsbridge_messages_total", { direction: "client_to_upstream", opcode: "binary" })).toBe(3);
    expect(valueOf(samples, "wsbridge_messages_total", { direction: "upstream_to_client", opcode: "text" })).toBe(6);
    expect(valueOf(samples, "wsbridge_bytes_total", { direction: "client_to_upstream" })).toBe(33);
    expect(valueOf(samples, "wsbridge_pair_ends_total", { cause: "client_closed" })).toBe(3);
    expect(valueOf(samples, "wsbridge_close_codes_total", { side: "client", code: "4001" })).toBe(3);
    expect(valueOf(samples, "wsbridge_upstream_dial_seconds_count")).toBe(3);
    expect(valueOf(samples, "wsbridge_upstream_dial_seconds_bucket", { le: "+Inf" })).toBe(3);
    expect(valueOf(samples, "wsbridge_missed_pongs_total", { side: "client" })).toBe(0);
  });

  test("healthz, readyz, unknown path and POST -> 200, 200, 404, 405", async () => {
    const adminPort = await freePort();
    await using relay = await RelayProcess.start([
      process.execPath, MAIN, "--listen", "127.0.0.1:0", "--admin", `127.0.0.1:${adminPort}`,
    ]);
    const base = `http://127.0.0.1:${adminPort}`;
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    expect((await fetch(`${base}/nope`)).status).toBe(404);
    expect((await fetch(`${base}/metrics`, { method: "POST" })).status).toBe(405);
    expect(relay.port).toBeGreaterThan(0);
  });
});

describe("graceful shutdown", () => {
  test("SIGTERM with open pairs -> readyz 503, 1001 after the grace, exit 0", async () => {
    await using upstream = startBunEcho();
    const adminPort = await freePort();
    await using relay = await RelayProcess.start([
      process.execPath, MAIN, "--listen", "127.0.0.1:0", "--upstream", upstream.url,
      "--admin", `127.0.0.1:${adminPort}`, "--shutdown-grace", "1s",
    ]);
    const clients = [TestClient.bun(relay.url), TestClient.ws(relay.url)];
    for (const client of clients) await client.opened;
    const signalledAt = performance.now();
    relay.proc.kill("SIGTERM");
    await Bun.sleep(200);
    expect((await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status).toBe(503);
    clients[0]?.send("during grace");
    expect((await clients[0]?.waitForMessages(1))?.[0]?.text).toBe("during grace");
    for (const client of clients) {
      expect(await client.closed).toEqual({ code: 1001, reason: "relay shutting down", wasClean: true });
    }
    expect(performance.now() - signalledAt).toBeGreaterThanOrEqual(900);
    expect(await relay.exited()).toBe(0);
    expect(performance.now() - signalledAt).toBeLessThan(1000 + 2000 + 1000);
  });

  test("SIGTERM during a pending dial -> 101, then 1001 after the grace", async () => {
    // The upstream answers the handshake only after 800 ms.
    await using upstream = await startRawUpstream(() => {}, { delayMs: 800 });
    await using relay = await RelayProcess.start([
      process.execPath, MAIN, "--listen", "127.0.0.1:0", "--upstream", upstream.url, "--shutdown-grace", "300ms",
    ]);
    const client = TestClient.bun(relay.url);
    await Bun.sleep(200);
    relay.proc.kill("SIGTERM");
    await client.opened;
    expect(await client.closed).toEqual({ code: 1001, reason: "relay shutting down", wasClean: true });
    expect(await relay.exited()).toBe(0);
    expect(relay.lines.some((l) => l.msg.includes("client disconnected"))).toBe(false);
  });

  test("second SIGTERM -> exits at once with 1", async () => {
    await using upstream = startBunEcho();
    await using relay = await RelayProcess.start([
      process.execPath, MAIN, "--listen", "127.0.0.1:0", "--upstream", upstream.url, "--shutdown-grace", "20s",
    ]);
    await using client = TestClient.bun(relay.url);
    await client.opened;
    relay.proc.kill("SIGTERM");
    await relay.waitForLine((l) => l.msg === "relay stopping");
    relay.proc.kill("SIGTERM");
    expect(await relay.exited()).toBe(1);
  });
});

describe("logs", () => {
  test("query and header secrets -> never in any line", async () => {
    await using upstream = startBunEcho();
    await using relay = await RelayProcess.start([
      process.execPath, MAIN, "--listen", "127.0.0.1:0", "--upstream", `${upstream.url}/base?key=up-s3cret`,
    ]);
    const headers = { Authorization: "Bearer s3cret-token", Cookie: "session=s3cret-cookie" };
    const client = TestClient.bun(`${relay.url}/chat?token=s3cret-query`, undefined, headers);
    await client.opened;
    client.close(1000, "done");
    await client.closed;
    await relay.waitForLine((l) => l.msg === "pair closed");
    const closedLine = relay.lines.find((l) => l.msg === "pair closed");
    for (const field of ["pair", "client", "upstream", "cause", "closed_by", "code", "reason", "duration_ms"]) {
      expect(closedLine?.[field]).toBeDefined();
    }
    expect(relay.raw.every((line) => line.trim() === "" || JSON.parse(line) !== null)).toBe(true);
    expect(relay.raw.join("\n")).not.toContain("s3cret");
  });
});

describe("workers", () => {
  test("two workers -> both serve; a killed worker is replaced", async () => {
    const port = await freePort();
    const adminPort = await freePort();
    await using supervisor = await RelayProcess.start([
      process.execPath, MAIN, "--listen", `127.0.0.1:${port}`, "--workers", "2", "--admin", `127.0.0.1:${adminPort}`,
    ]);
    expect(await supervisor.waitForLine((l) => l.msg === "worker ready" && l.worker === 1)).toBeDefined();
    const served = async (count: number): Promise<Set<unknown>> => {
      for (let i = 0; i < count; i++) {
        const client = TestClient.bun(`ws://127.0.0.1:${port}`);
        await client.opened;
        client.send("x");
        await client.waitForMessages(1);
        client.close();
        await client.closed;
      }
      await Bun.sleep(100);
      return new Set(supervisor.lines.filter((l) => l.msg === "pair open").map((l) => l.worker));
    };
    expect([...(await served(40))].sort()).toEqual(["0", "1"]);

    const listening = supervisor.lines.filter((l) => l.msg === "relay listening");
    const victim = Number(listening.find((l) => l.worker === "0")?.pid);
    expect(victim).toBeGreaterThan(0);
    process.kill(victim, "SIGKILL");
    expect(await supervisor.waitForLine((l) => l.msg === "worker_exited" || l.kind === "worker_exited")).toBeDefined();
    const restarted = await supervisor.waitForLine(
      (l) => l.msg === "relay listening" && l.worker === "0" && Number(l.pid) !== victim,
    );
    expect(restarted).toBeDefined();
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    expect(metrics).toContain("wsbridge_workers 2");
    const client = TestClient.bun(`ws://127.0.0.1:${port}`);
    await client.opened;
    client.close();
    supervisor.proc.kill("SIGTERM");
    expect(await supervisor.exited()).toBe(0);
  });
});

describe("start failures", () => {
  async function holdPort(): Promise<{ port: number; stop: () => void }> {
    const holder = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("taken") });
    return { port: holder.port as number, stop: () => void holder.stop(true) };
  }

  test("admin port in use with workers -> exit 2, no worker left", async () => {
    const held = await holdPort();
    const port = await freePort();
    const { code, stderr } = await runCli(["--listen", `127.0.0.1:${port}`, "--workers", "2", "--admin", `127.0.0.1:${held.port}`]);
    held.stop();
    expect(code).toBe(2);
    expect(stderr).toContain(`--admin: cannot listen on 127.0.0.1:${held.port}`);
    const probe = await fetch(`http://127.0.0.1:${port}/`).then((r) => r.status, () => "refused");
    expect(probe).toBe("refused");
  });

  test("listen port in use with workers -> exit 2, not restarted forever", async () => {
    const held = await holdPort();
    const { code, stderr } = await runCli(["--listen", `127.0.0.1:${held.port}`, "--workers", "2"]);
    held.stop();
    expect(code).toBe(2);
    expect(stderr).toContain("worker_start_failed");
  });

  test("upstream URL with a password in a bad value -> password not printed", async () => {
    const { code, stderr } = await runCli(["--upstream", "ftp://user:PASSW0RD@h/?apikey=UPSECRET"]);
    expect(code).toBe(2);
    expect(stderr).not.toContain("PASSW0RD");
    expect(stderr).not.toContain("UPSECRET");
  });
});

describe("deployment files", () => {
  test("kubernetes.yaml -> Deployment with probes and matching grace, Service", () => {
    const documents = Bun.YAML.parse(readFileSync(`${REPO_ROOT}deploy/kubernetes.yaml`, "utf8")) as Array<Record<string, any>>;
    const deployment = documents.find((d) => d.kind === "Deployment");
    const service = documents.find((d) => d.kind === "Service");
    expect(deployment?.apiVersion).toBe("apps/v1");
    const spec = deployment?.spec.template.spec;
    const container = spec.containers[0];
    expect(container.readinessProbe.httpGet).toEqual({ path: "/readyz", port: "admin" });
    expect(container.livenessProbe.httpGet).toEqual({ path: "/healthz", port: "admin" });
    expect(container.ports.map((p: { containerPort: number }) => p.containerPort)).toEqual([8080, 9090]);
    const graceArg = container.args[container.args.indexOf("--shutdown-grace") + 1];
    const preStopSeconds = container.lifecycle.preStop.sleep.seconds;
    expect(spec.terminationGracePeriodSeconds).toBeGreaterThan(parseInt(graceArg, 10) + preStopSeconds);
    expect(spec.securityContext.runAsNonRoot).toBe(true);
    expect(deployment?.spec.selector.matchLabels).toEqual(deployment?.spec.template.metadata.labels);
    expect(service?.spec.selector).toEqual(deployment?.spec.selector.matchLabels);
    expect(service?.spec.ports[0].targetPort).toBe("ws");
  });

  test("Dockerfile -> multi-stage, non-root, compiled binary with admin", () => {
    const dockerfile = readFileSync(`${REPO_ROOT}Dockerfile`, "utf8");
    expect(dockerfile.match(/^FROM /gm)?.length).toBe(2);
    expect(dockerfile).toContain("bun build --compile");
    expect(dockerfile).toMatch(/^USER nonroot$/m);
    expect(dockerfile).toMatch(/^EXPOSE 8080 9090$/m);
    expect(dockerfile).toContain('"--admin", "0.0.0.0:9090"');
  });
});
