/**
 * The benchmark's scenarios: what load each one applies and to which
 * columns. A column is one way of serving the same load:
 *
 * - `direct`: the load generator talks to the upstream server itself.
 * - `wsbridge`: the same load through the relay, which relays to that upstream.
 * - `floor`: the upstream server program pinned to the relay's core, serving
 *   the load itself: one Bun callback and one send per message, the least a
 *   Bun relay could spend.
 * - `minimal`: bench/servers/minimal-relay.ts, the least relay on Bun's
 *   server and client APIs, without wsbridge's flow control and bookkeeping.
 * - `peer`: another relay, started from the PEER_CMD environment variable.
 * - `wsbridge-core1`: wsbridge pinned to the load core with everything else
 *   (latency only). Direct runs never cross cores, so this shows the relay's
 *   own delay without the cost of waking the other core.
 */

import { readFileSync } from "node:fs";

export type Column = "direct" | "wsbridge" | "floor" | "minimal" | "peer" | "wsbridge-core1";
export type Kind = "echo" | "stream" | "latency" | "handshake" | "memory" | "slow-reader";

export interface Scenario {
  id: string;
  title: string;
  kind: Kind;
  columns: Column[];
  /** Load generator options (mode and its own options; port and watch are added per column). */
  load: { mode: string; [option: string]: unknown };
  /** Expected load run time, for the run's timeout. */
  budgetMs: number;
}

const KIB = 1024;
const MIB = 1024 * KIB;
const GIB = 1024 * MIB;
const WARMUP_MS = 1000;
const MEASURE_MS = 3000;
/** Idle pairs asked for in the memory scenario, when the fd limit allows. */
export const IDLE_PAIRS_WANTED = 9000;
/** Descriptors a process needs besides its sockets (stdio, epoll, timers, files). */
const FD_RESERVE = 100;

/** Reads the soft limit on open files, which child processes inherit. */
export function openFileLimit(): number {
  const limits = readFileSync("/proc/self/limits", "utf8");
  const match = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
  return match === null || match[1] === "unlimited" ? Number.MAX_SAFE_INTEGER : Number(match[1]);
}

/**
 * Returns how many idle pairs fit the fd limit. The relay keeps two sockets
 * open per pair, the load generator and the upstream one each.
 */
export function idlePairCount(fdLimit: number): number {
  return Math.max(0, Math.min(IDLE_PAIRS_WANTED, Math.floor((fdLimit - FD_RESERVE) / 2)));
}

function echoScenario(id: string, size: number, connections: number, inFlight: number, label: string): Scenario {
  return {
    id,
    title: `echo ${label}, ${connections} connections x ${inFlight} in flight`,
    kind: "echo",
    columns: ["direct", "wsbridge", "floor", "minimal", "peer"],
    load: { mode: "echo", size, connections, inFlight, warmupMs: WARMUP_MS, measureMs: MEASURE_MS },
    budgetMs: WARMUP_MS + MEASURE_MS,
  };
}

/** Lists every scenario in run order; the caller drops `peer` columns when no PEER_CMD is set. */
export function scenarios(idlePairs: number): Scenario[] {
  return [
    echoScenario("echo-64B", 64, 50, 16, "64 B"),
    echoScenario("echo-4KiB", 4 * KIB, 50, 4, "4 KiB"),
    echoScenario("echo-1MiB", MIB, 4, 2, "1 MiB"),
    {
      id: "stream-4KiB",
      title: "upstream streams 4 KiB messages to one client",
      kind: "stream",
      columns: ["direct", "wsbridge", "floor", "minimal", "peer"],
      load: { mode: "stream", size: 4 * KIB, warmupMs: WARMUP_MS, measureMs: MEASURE_MS },
      budgetMs: WARMUP_MS + MEASURE_MS,
    },
    {
      id: "latency-64B",
      title: "latency, one connection, one 64 B message at a time",
      kind: "latency",
      columns: ["direct", "wsbridge", "floor", "minimal", "peer", "wsbridge-core1"],
      load: { mode: "latency", size: 64, warmupCount: 2000, warmupMs: 2000, maxSamples: 20_000, measureMs: MEASURE_MS },
      budgetMs: 2000 + MEASURE_MS,
    },
    {
      id: "handshakes",
      title: "handshakes: open, one echo, close; 4 at a time",
      kind: "handshake",
      columns: ["direct", "wsbridge", "floor", "minimal", "peer"],
      load: { mode: "handshake", size: 64, concurrency: 4, warmupMs: 500, measureMs: MEASURE_MS },
      budgetMs: 500 + MEASURE_MS,
    },
    {
      id: "idle-memory",
      title: `memory with ${idlePairs} idle connections`,
      kind: "memory",
      columns: ["wsbridge", "floor", "minimal", "peer"],
      load: { mode: "idle", connections: idlePairs, concurrency: 50, settleMs: 2000 },
      budgetMs: 120_000,
    },
    {
      id: "slow-reader",
      title: "slow reader: client pauses 5 s while its upstream streams 1 GiB",
      kind: "slow-reader",
      columns: ["wsbridge", "peer"],
      load: { mode: "slow-reader", size: 64 * KIB, bytes: GIB, pauseMs: 5000, limitMs: 60_000 },
      budgetMs: 60_000,
    },
  ];
}
