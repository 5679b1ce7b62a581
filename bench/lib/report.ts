/**
 * Turns load generator results into per-column metrics, ratios, target
 * checks and text tables.
 */

import type { LoadResult, Usage, WindowResult } from "../load/common.ts";
import { LOAD_CORE, SERVER_CORE } from "./processes.ts";
import type { Column, Kind, Scenario } from "./scenarios.ts";

const NS_PER_US = 1000;
const NS_PER_S = 1e9;
const KIB = 1024;
const MIB = 1024 * KIB;

/** The goals the relay is measured against; they are reported, not enforced. */
export const TARGETS = {
  /** Relay CPU per forwarded message, as a multiple of the floor's CPU per message. */
  cpuVsFloorMax: 1.05,
  idleKiBPerPairMax: 4.6,
  handshakesPerSecondMin: 6000,
  addedP50UsMax: 7,
  throughputVsDirectMin: 0.7,
} as const;

/** Measurements of one column; fields that do not apply to its scenario are absent. */
export interface ColumnMetrics {
  messagesPerSecond?: number;
  mibPerSecond?: number;
  /** CPU of the process on the server core per message it forwarded (relay) or handled (floor), in µs. */
  serverCpuUsPerMessage?: number;
  /** Share of one core each process used in the window, in percent. */
  cpuPercent?: Record<string, number>;
  /** Share of each core busy with any process in the window, in percent. */
  coreBusyPercent?: number[];
  /**
   * Share of each core busy with processes other than the benchmark's, in
   * percent (its busy share minus the benchmark processes pinned to it).
   * A few percent is the kernel's own work; more means the run was disturbed.
   */
  otherWorkPercent?: number[];
  latencyUs?: { samples: number; p50: number; p99: number; max: number };
  handshakesPerSecond?: number;
  serverCpuUsPerHandshake?: number;
  connections?: number;
  baselineKiB?: number;
  loadedKiB?: number;
  kibPerConnection?: number;
  serverFds?: number;
  pausedGrowthMiB?: number;
  maxGrowthMiB?: number;
  bytesRead?: number;
  readMiBPerSecond?: number;
  errors: string[];
}

export interface TargetCheck {
  name: string;
  value: number;
  limit: number;
  /** "max": value must not exceed limit; "min": value must reach it. */
  bound: "max" | "min";
  met: boolean;
}

export interface ScenarioReport {
  id: string;
  title: string;
  kind: Kind;
  load: Scenario["load"];
  columns: Partial<Record<Column, ColumnMetrics>>;
  ratios: Record<string, number>;
  targets: TargetCheck[];
}

/** Messages the server-core process handles per message the generator counts. */
function forwardsPerMessage(kind: Kind, column: Column): number {
  const relays = column !== "direct" && column !== "floor";
  return kind === "echo" && relays ? 2 : 1;
}

function cpuPercent(usage: Usage): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, ns] of Object.entries(usage.cpuNs)) out[name] = (100 * ns) / NS_PER_S / usage.seconds;
  return out;
}

/** Computes the CPU shares of `usage`, and how much of each core went to other processes. */
function usageMetrics(column: Column, usage: Usage): ColumnMetrics {
  const shares = cpuPercent(usage);
  const server = shares.server ?? 0;
  const onServerCore = column === "wsbridge-core1" ? 0 : server;
  const onLoadCore = (shares.load ?? 0) + (shares.upstream ?? 0) + (column === "wsbridge-core1" ? server : 0);
  const busy = usage.coreBusyPercent;
  const otherWorkPercent = [...busy];
  otherWorkPercent[SERVER_CORE] = Math.max(0, (busy[SERVER_CORE] ?? 0) - onServerCore);
  otherWorkPercent[LOAD_CORE] = Math.max(0, (busy[LOAD_CORE] ?? 0) - onLoadCore);
  return { cpuPercent: shares, coreBusyPercent: busy, otherWorkPercent, errors: [] };
}

function windowMetrics(kind: Kind, column: Column, window: WindowResult): ColumnMetrics {
  const metrics = usageMetrics(column, window);
  const serverNs = window.cpuNs.server;
  if (kind === "handshake") {
    metrics.handshakesPerSecond = window.messages / window.seconds;
    if (serverNs !== undefined) metrics.serverCpuUsPerHandshake = serverNs / NS_PER_US / window.messages;
    return metrics;
  }
  metrics.messagesPerSecond = window.messages / window.seconds;
  metrics.mibPerSecond = window.bytes / MIB / window.seconds;
  if (serverNs !== undefined) {
    metrics.serverCpuUsPerMessage = serverNs / NS_PER_US / (window.messages * forwardsPerMessage(kind, column));
  }
  return metrics;
}

function memoryMetrics(result: LoadResult): ColumnMetrics {
  const connections = result.connections as number;
  const baselineKiB = result.baselineKiB as number;
  const loadedKiB = result.loadedKiB as number;
  return {
    connections,
    baselineKiB,
    loadedKiB,
    kibPerConnection: connections > 0 ? (loadedKiB - baselineKiB) / connections : Number.NaN,
    serverFds: result.serverFds as number,
    errors: [],
  };
}

function slowReaderMetrics(result: LoadResult): ColumnMetrics {
  const baseline = result.baselineKiB as number;
  const paused = result.pausedPeakKiB as number;
  const reading = result.readingPeakKiB as number;
  const bytes = result.bytes as number;
  return {
    baselineKiB: baseline,
    pausedGrowthMiB: (paused - baseline) / KIB,
    maxGrowthMiB: (Math.max(paused, reading) - baseline) / KIB,
    bytesRead: bytes,
    readMiBPerSecond: bytes / MIB / (result.readSeconds as number),
    errors: [],
  };
}

function latencyMetrics(column: Column, result: LoadResult): ColumnMetrics {
  return { ...usageMetrics(column, result.usage as Usage), latencyUs: result.latencyUs as ColumnMetrics["latencyUs"] };
}

/** Computes the metrics of one column from its load result. */
export function columnMetrics(kind: Kind, column: Column, result: LoadResult): ColumnMetrics {
  let metrics: ColumnMetrics;
  if (kind === "memory") metrics = memoryMetrics(result);
  else if (kind === "slow-reader") metrics = slowReaderMetrics(result);
  else if (kind === "latency") metrics = latencyMetrics(column, result);
  else metrics = windowMetrics(kind, column, result.window as WindowResult);
  metrics.errors = result.errors;
  return metrics;
}

function ratio(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined || b === 0 ? undefined : a / b;
}

function check(name: string, value: number | undefined, limit: number, bound: "max" | "min"): TargetCheck[] {
  if (value === undefined || Number.isNaN(value)) return [];
  return [{ name, value, limit, bound, met: bound === "max" ? value <= limit : value >= limit }];
}

/** Columns that relay to the upstream, each compared with direct and the floor. */
const RELAYS = ["wsbridge", "minimal", "peer"] as const;

/**
 * Fills in the ratios of each relay column to direct and to the floor, and
 * the target checks, which apply to wsbridge.
 */
export function compare(report: ScenarioReport): void {
  const columns = report.columns;
  const set = (name: string, value: number | undefined): void => {
    if (value !== undefined && Number.isFinite(value)) report.ratios[name] = value;
  };
  const direct = columns.direct;
  for (const relay of RELAYS) {
    const m = columns[relay];
    if (report.kind === "echo" || report.kind === "stream") {
      set(`${relay}VsDirect`, ratio(m?.messagesPerSecond, direct?.messagesPerSecond));
      set(`${relay}CpuVsFloor`, ratio(m?.serverCpuUsPerMessage, columns.floor?.serverCpuUsPerMessage));
    } else if (report.kind === "handshake") {
      set(`${relay}VsDirect`, ratio(m?.handshakesPerSecond, direct?.handshakesPerSecond));
    } else if (report.kind === "latency") {
      set(`${relay}AddedP50Us`, difference(m?.latencyUs?.p50, direct?.latencyUs?.p50));
      set(`${relay}AddedP99Us`, difference(m?.latencyUs?.p99, direct?.latencyUs?.p99));
    }
  }
  const sameCore = columns["wsbridge-core1"]?.latencyUs;
  set("wsbridge-core1AddedP50Us", difference(sameCore?.p50, direct?.latencyUs?.p50));
  set("wsbridge-core1AddedP99Us", difference(sameCore?.p99, direct?.latencyUs?.p99));
  set("wsbridgeCpuVsMinimal", ratio(columns.wsbridge?.serverCpuUsPerMessage, columns.minimal?.serverCpuUsPerMessage));
  report.targets.push(...targetChecks(report));
}

function targetChecks(report: ScenarioReport): TargetCheck[] {
  const { ratios } = report;
  const wsbridge = report.columns.wsbridge;
  switch (report.kind) {
    case "echo":
    case "stream":
      return [
        ...check("throughput vs direct", ratios.wsbridgeVsDirect, TARGETS.throughputVsDirectMin, "min"),
        ...check("CPU per message vs floor", ratios.wsbridgeCpuVsFloor, TARGETS.cpuVsFloorMax, "max"),
      ];
    case "latency":
      return check("added p50 latency (µs)", ratios.wsbridgeAddedP50Us, TARGETS.addedP50UsMax, "max");
    case "handshake":
      return check("handshakes per second", wsbridge?.handshakesPerSecond, TARGETS.handshakesPerSecondMin, "min");
    case "memory":
      return check("KiB per idle pair", wsbridge?.kibPerConnection, TARGETS.idleKiBPerPairMax, "max");
    default:
      return [];
  }
}

function difference(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined ? undefined : a - b;
}
