/**
 * Memory per idle connection: reads the server's RSS, opens `connections`
 * WebSockets (`concurrency` handshakes at a time), lets the server settle,
 * reads its RSS again, then closes them all.
 */

import { RawClient } from "../lib/client.ts";
import { openFds, rssKiB } from "../lib/proc.ts";
import { closeAll } from "./echo.ts";
import { ErrorLog, type LoadConfig, type LoadResult, numberOption, withTimeout } from "./common.ts";

/** Time allowed to open all connections. */
const OPEN_ALL_TIMEOUT_MS = 120_000;

async function openMany(port: number, count: number, concurrency: number, errors: ErrorLog): Promise<RawClient[]> {
  const clients: RawClient[] = [];
  let next = 0;
  const opener = async (): Promise<void> => {
    while (next < count && errors.count === 0) {
      next++;
      try {
        clients.push(await RawClient.open({ port, path: "/" }));
      } catch (error) {
        errors.add(`opening connection ${clients.length + 1}: ${(error as Error).message}`);
      }
    }
  };
  await withTimeout(Promise.all(Array.from({ length: concurrency }, opener)), OPEN_ALL_TIMEOUT_MS, `opening ${count} connections`);
  return clients;
}

export async function runIdle(config: LoadConfig): Promise<LoadResult> {
  const count = numberOption(config, "connections", 9000);
  const settleMs = numberOption(config, "settleMs", 2000);
  const serverPid = config.watch.server as number;
  const errors = new ErrorLog();
  await Bun.sleep(settleMs);
  const baselineKiB = rssKiB(serverPid);
  const startedAt = performance.now();
  const clients = await openMany(config.port, count, numberOption(config, "concurrency", 50), errors);
  const openSeconds = (performance.now() - startedAt) / 1000;
  try {
    await Bun.sleep(settleMs);
    const loadedKiB = rssKiB(serverPid);
    const open = clients.filter((client) => client.isOpen).length;
    if (open !== count) errors.add(`${open} of ${count} connections open after settling`);
    return {
      mode: "idle",
      errors: errors.list(),
      connections: open,
      baselineKiB,
      loadedKiB,
      serverFds: openFds(serverPid),
      loadFds: openFds(process.pid),
      openSeconds,
    };
  } finally {
    await closeAll(clients);
  }
}
