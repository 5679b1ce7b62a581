/**
 * Echo throughput: `connections` clients each keep `inFlight` binary
 * messages of `size` bytes outstanding, sending one more for each echo.
 * Every echo is checked for opcode, size and order (its sequence number),
 * and after the window every message sent must come back.
 */

import { type ClientHandler, RawClient } from "../lib/client.ts";
import { MessageTemplate, Opcode } from "../lib/frames.ts";
import { ErrorLog, type LoadConfig, type LoadResult, measureWindow, numberOption, waitFor, withTimeout } from "./common.ts";

/** Upper bound on messages per connection, whatever the window. */
const MAX_MESSAGES_PER_CONNECTION = 100_000_000;
const OPEN_TIMEOUT_MS = 10_000;
/** Time the echoes still in flight get to arrive after sending stops. */
const DRAIN_TIMEOUT_MS = 15_000;
const CLOSE_TIMEOUT_MS = 10_000;

interface EchoLoad {
  template: MessageTemplate;
  sending: boolean;
  totals: { messages: number; bytes: number };
  errors: ErrorLog;
}

class EchoConnection implements ClientHandler {
  sent = 0;
  received = 0;

  constructor(private readonly load: EchoLoad) {}

  onData(client: RawClient, opcode: number, length: number, seq: number): void {
    const load = this.load;
    if (opcode !== Opcode.BINARY || length !== load.template.size || seq !== this.received) {
      load.errors.add(`echo ${this.received}: got opcode ${opcode}, ${length} bytes, sequence ${seq}`);
    }
    this.received++;
    load.totals.messages++;
    load.totals.bytes += length;
    if (load.sending && this.sent < MAX_MESSAGES_PER_CONNECTION) client.append(load.template, this.sent++);
  }

  onReadEnd(client: RawClient): void {
    client.flush();
  }

  start(client: RawClient, inFlight: number): void {
    for (let i = 0; i < inFlight; i++) client.append(this.load.template, this.sent++);
    client.flush();
  }
}

export async function runEcho(config: LoadConfig): Promise<LoadResult> {
  const connections = numberOption(config, "connections", 50);
  const inFlight = numberOption(config, "inFlight", 16);
  const load: EchoLoad = {
    template: new MessageTemplate(numberOption(config, "size", 64)),
    sending: true,
    totals: { messages: 0, bytes: 0 },
    errors: new ErrorLog(),
  };
  const handlers = Array.from({ length: connections }, () => new EchoConnection(load));
  const clients = await withTimeout(
    Promise.all(handlers.map((handler) => RawClient.open({ port: config.port, path: "/" }, handler))),
    OPEN_TIMEOUT_MS,
    `opening ${connections} connections`,
  );
  try {
    handlers.forEach((handler, i) => handler.start(clients[i] as RawClient, inFlight));
    const window = await measureWindow(
      load.totals,
      config.watch,
      numberOption(config, "warmupMs", 1000),
      numberOption(config, "measureMs", 3000),
    );
    load.sending = false;
    const drained = await waitFor(() => handlers.every((h) => h.received === h.sent), DRAIN_TIMEOUT_MS);
    if (!drained) {
      const missing = handlers.reduce((sum, h) => sum + h.sent - h.received, 0);
      load.errors.add(`${missing} messages sent were not echoed within ${DRAIN_TIMEOUT_MS} ms`);
    }
    const sent = handlers.reduce((sum, h) => sum + h.sent, 0);
    return { mode: "echo", errors: collectErrors(load.errors, clients), window, sent };
  } finally {
    await closeAll(clients);
  }
}

/** Returns the run's errors together with each connection's protocol errors. */
export function collectErrors(log: ErrorLog, clients: RawClient[]): string[] {
  for (const client of clients) for (const message of client.errors) log.add(message);
  return log.list();
}

/** Closes every client and waits for the closing handshakes, up to a timeout. */
export async function closeAll(clients: RawClient[]): Promise<void> {
  try {
    await withTimeout(Promise.all(clients.map((client) => client.close())), CLOSE_TIMEOUT_MS, "closing connections");
  } catch {
    for (const client of clients) client.terminate();
  }
}
