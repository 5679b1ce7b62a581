/**
 * The benchmark's child processes, each pinned to one core with `taskset`:
 * the upstream or floor server, the relay, an optional peer relay, and the
 * load generator. Every process started here is recorded and ended by PID
 * (with its descendants) in `stopAll`.
 */

import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Subprocess } from "bun";
import type { LoadConfig, LoadResult } from "../load/common.ts";
import { processTree } from "./proc.ts";

export const REPO_ROOT = new URL("../../", import.meta.url).pathname;
const BUN = process.execPath;
const UPSTREAM_SCRIPT = join(REPO_ROOT, "bench/servers/upstream.ts");
const MINIMAL_RELAY_SCRIPT = join(REPO_ROOT, "bench/servers/minimal-relay.ts");
const LOAD_SCRIPT = join(REPO_ROOT, "bench/load/main.ts");
export const RELAY_MAIN = join(REPO_ROOT, "src/main.ts");

/** The core of the process under test (relay, floor server or peer). */
export const SERVER_CORE = 0;
/** The core shared by the load generator, the upstream and this orchestrator. */
export const LOAD_CORE = 1;

const START_TIMEOUT_MS = 15_000;
const POLL_MS = 20;
/** Time a load run may take beyond its own budget before it is ended. */
const LOAD_TIMEOUT_MARGIN_MS = 60_000;

const started = new Set<Subprocess>();

/** A started server: the port it listens on and its PID. */
export interface Server {
  readonly pid: number;
  readonly port: number;
  /** Ends the process and its descendants. */
  stop(): Promise<void>;
  /** The server's log, for servers that write one. */
  log?(): string;
}

function pinned(core: number, argv: string[]): string[] {
  return ["taskset", "-c", String(core), ...argv];
}

function track<T extends Subprocess>(proc: T): T {
  started.add(proc);
  void proc.exited.then(() => started.delete(proc));
  return proc;
}

/** Sends SIGKILL to `pid` and each of its descendants. */
function killTree(pid: number): void {
  for (const member of processTree(pid).reverse()) {
    try {
      process.kill(member, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
}

async function stopProcess(proc: Subprocess): Promise<void> {
  if (proc.exitCode === null && proc.signalCode === null) killTree(proc.pid);
  await proc.exited;
}

/** Ends every process this module started that is still running. */
export async function stopAll(): Promise<void> {
  await Promise.all([...started].map(stopProcess));
}

/** Reads the first line of a stream. */
async function firstLine(stream: ReadableStream<Uint8Array>): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  for await (const chunk of stream) {
    text += decoder.decode(chunk, { stream: true });
    const newline = text.indexOf("\n");
    if (newline >= 0) return text.slice(0, newline);
  }
  return text;
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Starts `bench/servers/upstream.ts` on `core`. */
export function startUpstream(core: number): Promise<Server> {
  return startScript(core, [UPSTREAM_SCRIPT]);
}

/** Starts `bench/servers/minimal-relay.ts` on `core`, relaying to `upstreamUrl`. */
export function startMinimalRelay(core: number, upstreamUrl: string): Promise<Server> {
  return startScript(core, [MINIMAL_RELAY_SCRIPT, upstreamUrl]);
}

/** Starts a Bun script on `core` that prints `{"port":N}` on stdout once it listens. */
async function startScript(core: number, args: string[]): Promise<Server> {
  const options = { stdout: "pipe", stderr: "inherit", stdin: "ignore" } as const;
  const proc = track(Bun.spawn(pinned(core, [BUN, ...args]), options));
  try {
    const line = await withTimeout(firstLine(proc.stdout), START_TIMEOUT_MS, `${args[0]} start`);
    const port = (JSON.parse(line) as { port: number }).port;
    return { pid: proc.pid, port, stop: () => stopProcess(proc) };
  } catch (error) {
    await stopProcess(proc);
    throw error;
  }
}

/** Polls `path` until a line matches `pattern`; returns the match. */
async function waitForLogLine(proc: Subprocess, path: string, pattern: RegExp): Promise<RegExpExecArray> {
  const deadline = performance.now() + START_TIMEOUT_MS;
  while (performance.now() < deadline && proc.exitCode === null) {
    const match = pattern.exec(existsSync(path) ? readFileSync(path, "utf8") : "");
    if (match !== null) return match;
    await Bun.sleep(POLL_MS);
  }
  const log = existsSync(path) ? readFileSync(path, "utf8") : "";
  throw new Error(`process ${proc.pid} wrote no line matching ${pattern} within ${START_TIMEOUT_MS} ms; log:\n${log}`);
}

/** Returns the relay's command line, before pinning. */
export function relayCommand(upstreamUrl: string): string[] {
  return [BUN, RELAY_MAIN, "--listen", "127.0.0.1:0", "--upstream", upstreamUrl];
}

/**
 * Starts wsbridge on `core` with its default options and its log going to
 * `logPath` (a file, so nothing on this core has to read a pipe).
 */
export async function startRelay(core: number, upstreamUrl: string, logPath: string): Promise<Server> {
  const logFd = openSync(logPath, "w");
  const proc = track(Bun.spawn(pinned(core, relayCommand(upstreamUrl)), { stdout: logFd, stderr: logFd, stdin: "ignore" }));
  closeSync(logFd);
  try {
    const match = await waitForLogLine(proc, logPath, /"msg":"relay listening","listen":"127\.0\.0\.1:(\d+)"/);
    return { pid: proc.pid, port: Number(match[1]), stop: () => stopProcess(proc), log: () => readFileSync(logPath, "utf8") };
  } catch (error) {
    await stopProcess(proc);
    throw error;
  }
}

/** Finds a free port on 127.0.0.1, for a peer command that cannot take port 0. */
function freePort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

async function acceptsConnections(port: number): Promise<boolean> {
  try {
    const socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
    socket.end();
    return true;
  } catch {
    return false;
  }
}

/**
 * Starts `PEER_CMD` on `core` through `sh -c`, with `{port}` replaced by a
 * free port, `{upstream}` by the upstream's ws:// URL and `{dir}` by a
 * scratch directory, and waits until the port accepts connections.
 */
export async function startPeer(core: number, template: string, upstreamUrl: string, logPath: string): Promise<Server> {
  const port = freePort();
  const command = template
    .replaceAll("{port}", String(port))
    .replaceAll("{upstream}", upstreamUrl)
    .replaceAll("{dir}", dirname(logPath));
  const logFd = openSync(logPath, "w");
  const options = { stdout: logFd, stderr: logFd, stdin: "ignore", cwd: REPO_ROOT } as const;
  const proc = track(Bun.spawn(pinned(core, ["sh", "-c", command]), options));
  closeSync(logFd);
  const deadline = performance.now() + START_TIMEOUT_MS;
  while (!(await acceptsConnections(port))) {
    if (performance.now() > deadline || proc.exitCode !== null) {
      await stopProcess(proc);
      throw new Error(`peer command did not listen on port ${port}: ${command}\n${readFileSync(logPath, "utf8")}`);
    }
    await Bun.sleep(POLL_MS);
  }
  return { pid: proc.pid, port, stop: () => stopProcess(proc), log: () => readFileSync(logPath, "utf8") };
}

/** Runs the load generator on the load core with `config`; returns its result. */
export async function runLoad(config: LoadConfig, budgetMs: number): Promise<LoadResult> {
  const proc = track(
    Bun.spawn(pinned(LOAD_CORE, [BUN, LOAD_SCRIPT, JSON.stringify(config)]), {
      stdout: "pipe",
      stderr: "pipe",
      stdin: "ignore",
    }),
  );
  const timer = setTimeout(() => killTree(proc.pid), budgetMs + LOAD_TIMEOUT_MARGIN_MS);
  try {
    const stdout = new Response(proc.stdout).text();
    const stderr = new Response(proc.stderr).text();
    const code = await proc.exited;
    if (code !== 0) throw new Error(`load generator (${config.mode}) exited with ${code}: ${(await stderr).trim()}`);
    return JSON.parse((await stdout).trim().split("\n").pop() ?? "") as LoadResult;
  } finally {
    clearTimeout(timer);
  }
}

/** Pins this process's threads to the load core, so the server core runs only the process under test. */
export function pinSelf(): boolean {
  const command = ["taskset", "-a", "-p", "-c", String(LOAD_CORE), String(process.pid)];
  const result = Bun.spawnSync(command, { stdout: "ignore", stderr: "pipe" });
  return result.exitCode === 0;
}
