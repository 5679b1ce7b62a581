/**
 * The relay as a child process: `bun src/main.ts` or the compiled binary,
 * with its JSON log lines parsed and its bound port read from them.
 */

import type { Subprocess } from "bun";

export const REPO_ROOT = new URL("../../", import.meta.url).pathname;
export const MAIN = `${REPO_ROOT}src/main.ts`;

export interface LogLine {
  level: string;
  msg: string;
  [field: string]: unknown;
}

/** A relay process; ends it by PID on dispose. */
export class RelayProcess implements AsyncDisposable {
  readonly lines: LogLine[] = [];
  readonly raw: string[] = [];
  port = 0;
  private readonly done: Promise<number>;

  private constructor(readonly proc: Subprocess<"ignore", "pipe", "pipe">) {
    this.done = proc.exited;
    void this.readLines(proc.stderr);
    void this.readLines(proc.stdout);
  }

  /** Starts `command` (argv) and waits for its "relay listening" line. */
  static async start(command: string[], env: Record<string, string> = {}, timeoutMs = 15_000): Promise<RelayProcess> {
    const proc = Bun.spawn(command, {
      cwd: REPO_ROOT,
      env: { ...process.env, ...env },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    const relay = new RelayProcess(proc);
    const listening = await relay.waitForLine((line) => line.msg === "relay listening", timeoutMs);
    if (listening === undefined) {
      relay.proc.kill("SIGKILL");
      throw new Error(`relay did not start; output:\n${relay.raw.join("\n")}`);
    }
    relay.port = Number(String(listening.listen).split(":").pop());
    return relay;
  }

  get pid(): number {
    return this.proc.pid;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  /** Waits for a log line matching `match`; undefined after `timeoutMs` or exit. */
  async waitForLine(match: (line: LogLine) => boolean, timeoutMs = 5000): Promise<LogLine | undefined> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const found = this.lines.find(match);
      if (found !== undefined) return found;
      if (performance.now() > deadline || this.proc.exitCode !== null) return undefined;
      await Bun.sleep(10);
    }
  }

  /** Resolves with the exit code. */
  exited(): Promise<number> {
    return this.done;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.proc.exitCode === null) this.proc.kill("SIGKILL");
    await this.done;
  }

  private async readLines(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of stream) {
      pending += decoder.decode(chunk, { stream: true });
      let newline = pending.indexOf("\n");
      while (newline >= 0) {
        const text = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        this.raw.push(text);
        try {
          this.lines.push(JSON.parse(text) as LogLine);
        } catch {
          // Not a JSON log line (help text, say); kept in `raw` only.
        }
        newline = pending.indexOf("\n");
      }
    }
  }
}

/** Runs the CLI to completion and returns its exit code and output. */
export async function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = Bun.spawn([process.execPath, MAIN, ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 15_000);
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}
