/**
 * Sets up the processes of one column, runs the load generator against them
 * and ends them again.
 *
 * Pinning: the process under test (relay, floor server or peer) runs alone
 * on the server core. The load generator and the upstream share the load
 * core, and the `wsbridge-core1` column puts the relay there too.
 */

import { join } from "node:path";
import type { LoadResult } from "../load/common.ts";
import { LOAD_CORE, SERVER_CORE, type Server, runLoad, startMinimalRelay, startPeer, startRelay, startUpstream } from "./processes.ts";
import type { Column, Scenario } from "./scenarios.ts";

export interface RunContext {
  /** Directory for the relay's and the peer's logs. */
  logDir: string;
  /** PEER_CMD, when set. */
  peerCommand: string | undefined;
}

/** A column's result plus what its relay logged at level error. */
export interface ColumnRun {
  result: LoadResult;
  serverErrors: string[];
}

interface Setup {
  port: number;
  watch: Record<string, number>;
  /** The process under test, for its log. */
  server: Server | null;
}

const MAX_LOGGED_ERRORS = 5;

async function setUp(column: Column, scenario: Scenario, context: RunContext, servers: Server[]): Promise<Setup> {
  if (column === "floor") {
    const floor = await startUpstream(SERVER_CORE);
    servers.push(floor);
    return { port: floor.port, watch: { server: floor.pid }, server: floor };
  }
  const upstream = await startUpstream(LOAD_CORE);
  servers.push(upstream);
  const upstreamUrl = `ws://127.0.0.1:${upstream.port}`;
  if (column === "direct") return { port: upstream.port, watch: { upstream: upstream.pid }, server: null };
  const logPath = join(context.logDir, `${scenario.id}-${column}.log`);
  const server = await startRelayColumn(column, context, upstreamUrl, logPath);
  servers.push(server);
  return { port: server.port, watch: { server: server.pid, upstream: upstream.pid }, server };
}

function startRelayColumn(column: Column, context: RunContext, upstreamUrl: string, logPath: string): Promise<Server> {
  if (column === "peer") return startPeer(SERVER_CORE, context.peerCommand as string, upstreamUrl, logPath);
  if (column === "minimal") return startMinimalRelay(SERVER_CORE, upstreamUrl);
  return startRelay(column === "wsbridge" ? SERVER_CORE : LOAD_CORE, upstreamUrl, logPath);
}

/** Lines of a JSON log at level error, at most a few. */
function errorLines(log: string): string[] {
  return log
    .split("\n")
    .filter((line) => line.includes('"level":"error"'))
    .slice(0, MAX_LOGGED_ERRORS);
}

/** Runs `scenario`'s load against `column`, with fresh processes, and stops them. */
export async function runColumn(scenario: Scenario, column: Column, context: RunContext): Promise<ColumnRun> {
  const servers: Server[] = [];
  try {
    const setup = await setUp(column, scenario, context, servers);
    const result = await runLoad({ ...scenario.load, port: setup.port, watch: setup.watch }, scenario.budgetMs);
    const log = column.startsWith("wsbridge") ? (setup.server?.log?.() ?? "") : "";
    return { result, serverErrors: errorLines(log) };
  } finally {
    for (const server of servers.reverse()) await server.stop();
  }
}
