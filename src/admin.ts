/**
 * The admin listener: `/healthz` (the process is alive), `/readyz` (it
 * accepts connections; 503 while stopping) and `/metrics` (Prometheus text).
 * It listens on its own address so it need not face the clients.
 */

import type { Server } from "bun";
import type { Logger } from "./log.ts";

/** The source of the admin listener's responses: readiness and metrics. */
export interface AdminSource {
  /** True while new connections are accepted. */
  isReady(): boolean;
  /** The `/metrics` body. */
  renderMetrics(): Promise<string> | string;
}

export interface AdminServer {
  readonly port: number;
  stop(): void;
}

const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

function text(body: string, status = 200): Response {
  return new Response(`${body}\n`, { status, headers: { "Content-Type": "text/plain; charset=utf-8" } });
}

/** An admin listener that could not start; the message names `--admin` and the address. */
export class AdminListenError extends Error {
  readonly code = "admin_listen_failed";
}

/**
 * Starts the admin listener on `hostname:port` (port 0 picks a free one).
 * Throws `AdminListenError` when the address cannot be bound.
 */
export function startAdmin(hostname: string, port: number, source: AdminSource, logger: Logger): AdminServer {
  let server: Server<undefined>;
  try {
    server = listenAdmin(hostname, port, source, logger);
  } catch (error) {
    throw new AdminListenError(
      `--admin: cannot listen on ${hostname}:${port}: ${(error as Error).message}; choose another address or stop the process that holds it`,
    );
  }
  logger.info("admin listening", { listen: `${hostname}:${server.port}` });
  return {
    port: server.port as number,
    stop: () => void server.stop(true),
  };
}

function listenAdmin(hostname: string, port: number, source: AdminSource, logger: Logger): Server<undefined> {
  return Bun.serve({
    hostname,
    port,
    async fetch(req) {
      const path = new URL(req.url).pathname;
      if (req.method !== "GET" && req.method !== "HEAD") return text("only GET and HEAD are served", 405);
      if (path === "/healthz") return text("ok");
      if (path === "/readyz") return source.isReady() ? text("ready") : text("not ready: stopping or not started", 503);
      if (path === "/metrics") {
        try {
          const body = await source.renderMetrics();
          return new Response(body, { headers: { "Content-Type": PROMETHEUS_CONTENT_TYPE } });
        } catch (error) {
          logger.error("metrics_failed", `rendering /metrics failed: ${(error as Error).message}`);
          return text("metrics unavailable; see the relay's error log", 500);
        }
      }
      return text(`not found: ${path}; try /healthz, /readyz or /metrics`, 404);
    },
  });
}
