/**
 * Handshake rate: `concurrency` workers each loop over open, one echo of a
 * 64-byte message, close (both close frames, then the TCP close). Only
 * cycles that finish inside the window count.
 */

import { RawClient } from "../lib/client.ts";
import { MessageTemplate, Opcode } from "../lib/frames.ts";
import { ErrorLog, type LoadConfig, type LoadResult, measureWindow, numberOption, withTimeout } from "./common.ts";

/** Time one open-echo-close cycle may take before the run fails. */
const CYCLE_TIMEOUT_MS = 5000;
/** Upper bound on cycles per worker, whatever the window. */
const MAX_CYCLES_PER_WORKER = 1_000_000;
const NORMAL_CLOSURE = 1000;

interface HandshakeLoad {
  port: number;
  template: MessageTemplate;
  running: boolean;
  totals: { messages: number; bytes: number };
  errors: ErrorLog;
}

/** Opens a connection, echoes one message and closes; throws on any failure. */
async function cycle(load: HandshakeLoad): Promise<void> {
  let echoed!: () => void;
  const echo = new Promise<void>((resolve) => {
    echoed = resolve;
  });
  const handler = {
    onData(_client: RawClient, opcode: number, length: number, seq: number): void {
      if (opcode !== Opcode.BINARY || length !== load.template.size || seq !== 0) {
        load.errors.add(`handshake echo: got opcode ${opcode}, ${length} bytes, sequence ${seq}`);
      }
      echoed();
    },
  };
  const client = await RawClient.open({ port: load.port, path: "/" }, handler);
  client.send(load.template, 0);
  await echo;
  await client.close(NORMAL_CLOSURE);
  for (const message of client.errors) load.errors.add(message);
  if (client.closeCode !== NORMAL_CLOSURE) load.errors.add(`close answered with ${client.closeCode}`);
}

async function worker(load: HandshakeLoad): Promise<void> {
  for (let i = 0; load.running && i < MAX_CYCLES_PER_WORKER; i++) {
    try {
      await withTimeout(cycle(load), CYCLE_TIMEOUT_MS, "open, echo and close");
      load.totals.messages++;
    } catch (error) {
      load.errors.add((error as Error).message);
      return;
    }
  }
}

export async function runHandshake(config: LoadConfig): Promise<LoadResult> {
  const load: HandshakeLoad = {
    port: config.port,
    template: new MessageTemplate(numberOption(config, "size", 64)),
    running: true,
    totals: { messages: 0, bytes: 0 },
    errors: new ErrorLog(),
  };
  const workers = Array.from({ length: numberOption(config, "concurrency", 4) }, () => worker(load));
  const window = await measureWindow(
    load.totals,
    config.watch,
    numberOption(config, "warmupMs", 500),
    numberOption(config, "measureMs", 3000),
  );
  load.running = false;
  await Promise.all(workers);
  return { mode: "handshake", errors: load.errors.list(), window };
}
