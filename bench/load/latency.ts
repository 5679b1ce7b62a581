/**
 * Round-trip latency: one connection, one 64-byte message at a time. The
 * clock is read just before the send and in the read callback of its echo.
 */

import { type ClientHandler, RawClient } from "../lib/client.ts";
import { MessageTemplate, Opcode } from "../lib/frames.ts";
import { closeAll, collectErrors } from "./echo.ts";
import { ErrorLog, type LoadConfig, type LoadResult, numberOption, startUsage, withTimeout } from "./common.ts";

const OPEN_TIMEOUT_MS = 10_000;
/** Time allowed beyond the warm-up and sampling budgets before the run is called stuck. */
const STALL_MARGIN_MS = 10_000;
const NS_PER_US = 1000;

/** Sends the next message on each echo until the warm-up and sample budgets are spent. */
class PingPong implements ClientHandler {
  readonly samplesNs: number[] = [];
  private seq = 0;
  private sentAt = 0;
  private warmupLeft: number;
  private warmupEnd = 0;
  private sampleEnd = 0;
  private finish!: () => void;
  readonly done = new Promise<void>((resolve) => {
    this.finish = resolve;
  });

  constructor(
    private readonly template: MessageTemplate,
    private readonly errors: ErrorLog,
    private readonly budget: { warmupCount: number; warmupMs: number; maxSamples: number; measureMs: number },
  ) {
    this.warmupLeft = budget.warmupCount;
  }

  start(client: RawClient): void {
    this.warmupEnd = performance.now() + this.budget.warmupMs;
    this.sendNext(client);
  }

  onData(client: RawClient, opcode: number, length: number, seq: number): void {
    const elapsed = Bun.nanoseconds() - this.sentAt;
    if (opcode !== Opcode.BINARY || length !== this.template.size || seq !== this.seq) {
      this.errors.add(`echo ${this.seq}: got opcode ${opcode}, ${length} bytes, sequence ${seq}`);
    }
    this.seq++;
    if (this.warmupLeft > 0 && performance.now() < this.warmupEnd) {
      this.warmupLeft--;
    } else {
      if (this.sampleEnd === 0) this.sampleEnd = performance.now() + this.budget.measureMs;
      this.samplesNs.push(elapsed);
      if (this.samplesNs.length >= this.budget.maxSamples || performance.now() > this.sampleEnd) {
        this.finish();
        return;
      }
    }
    this.sendNext(client);
  }

  private sendNext(client: RawClient): void {
    this.sentAt = Bun.nanoseconds();
    client.send(this.template, this.seq);
  }
}

/** Returns the value below which `fraction` of the sorted samples fall (nearest rank). */
function percentile(sorted: number[], fraction: number): number {
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1));
  return sorted[rank] as number;
}

export async function runLatency(config: LoadConfig): Promise<LoadResult> {
  const budget = {
    warmupCount: numberOption(config, "warmupCount", 2000),
    warmupMs: numberOption(config, "warmupMs", 2000),
    maxSamples: numberOption(config, "maxSamples", 20_000),
    measureMs: numberOption(config, "measureMs", 3000),
  };
  const errors = new ErrorLog();
  const pingPong = new PingPong(new MessageTemplate(numberOption(config, "size", 64)), errors, budget);
  const opening = RawClient.open({ port: config.port, path: "/" }, pingPong);
  const client = await withTimeout(opening, OPEN_TIMEOUT_MS, "opening the connection");
  try {
    const stopUsage = startUsage(config.watch);
    pingPong.start(client);
    await withTimeout(pingPong.done, budget.warmupMs + budget.measureMs + STALL_MARGIN_MS, "latency run");
    const usage = stopUsage();
    const sorted = [...pingPong.samplesNs].sort((a, b) => a - b);
    const latencyUs = {
      samples: sorted.length,
      p50: percentile(sorted, 0.5) / NS_PER_US,
      p99: percentile(sorted, 0.99) / NS_PER_US,
      max: (sorted[sorted.length - 1] as number) / NS_PER_US,
    };
    return { mode: "latency", errors: collectErrors(errors, [client]), latencyUs, usage };
  } finally {
    await closeAll([client]);
  }
}
