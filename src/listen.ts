/**
 * `Bun.serve` with TCP keepalive on the listening socket, for embedders.
 */

import type { Serve, Server } from "bun";
import { DEFAULT_TCP_KEEPALIVE_MS } from "./config.ts";
import { type KeepAliveResult, setListenerKeepAlive } from "./tcp-keepalive.ts";

/**
 * Starts `Bun.serve(options)` and sets TCP keepalive (idle time and probe
 * interval `keepAliveMs`, default 15 s; 9 probes) on its listener, which
 * every accepted socket inherits. `keepAlive.ok` is false, with a reason,
 * where it could not be set; the server runs either way.
 */
export async function serveWithKeepAlive<T>(
  options: Serve.Options<T>,
  keepAliveMs = DEFAULT_TCP_KEEPALIVE_MS,
): Promise<{ server: Server<T>; keepAlive: KeepAliveResult }> {
  const server = Bun.serve<T>(options);
  const keepAlive = await setListenerKeepAlive(server.port as number, keepAliveMs);
  return { server, keepAlive };
}
