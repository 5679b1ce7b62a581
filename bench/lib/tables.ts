/**
 * Plain-text tables of a benchmark run, one per kind of scenario, plus the
 * target checks. Columns that a run did not measure print as "-".
 */

import { LOAD_CORE, SERVER_CORE } from "./processes.ts";
import type { ColumnMetrics, ScenarioReport } from "./report.ts";
import type { Column, Kind } from "./scenarios.ts";

const KIB = 1024;
const MISSING = "-";

/** Formats a number with `digits` decimals and thousands separators; "-" when absent. */
export function formatNumber(value: number | undefined, digits = 0): string {
  if (value === undefined || !Number.isFinite(value)) return MISSING;
  return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function percent(value: number | undefined): string {
  return value === undefined ? MISSING : `${formatNumber(value)}%`;
}

/** Lays out rows under headers; the first two columns align left, the rest right. */
export function renderTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((row) => (row[i] ?? "").length)));
  const line = (cells: string[]): string =>
    cells
      .map((cell, i) => (i < 2 ? cell.padEnd(widths[i] as number) : cell.padStart(widths[i] as number)))
      .join("  ")
      .trimEnd();
  return [line(headers), line(widths.map((width) => "-".repeat(width))), ...rows.map(line)].join("\n");
}

/** CPU share that other processes took on the server core and the load core, e.g. "2% / 5%". */
function otherWork(m: ColumnMetrics): string {
  const other = m.otherWorkPercent;
  return other === undefined ? MISSING : `${percent(other[SERVER_CORE])} / ${percent(other[LOAD_CORE])}`;
}

type RowBuilder = (report: ScenarioReport, column: Column, metrics: ColumnMetrics) => string[];

const THROUGHPUT_HEADERS = [
  "scenario",
  "column",
  "msg/s",
  "MiB/s",
  "vs direct",
  "server µs/msg",
  "vs floor",
  "server",
  "load gen",
  "upstream",
  "other work",
];

const throughputRow: RowBuilder = (report, column, m) => [
  report.id,
  column,
  formatNumber(m.messagesPerSecond),
  formatNumber(m.mibPerSecond, 1),
  formatNumber(report.ratios[`${column}VsDirect`], 2),
  formatNumber(m.serverCpuUsPerMessage, 2),
  formatNumber(report.ratios[`${column}CpuVsFloor`], 2),
  percent(m.cpuPercent?.server),
  percent(m.cpuPercent?.load),
  percent(m.cpuPercent?.upstream),
  otherWork(m),
];

const LATENCY_HEADERS = ["scenario", "column", "samples", "p50 µs", "p99 µs", "max µs", "added p50", "added p99", "other work"];

const latencyRow: RowBuilder = (report, column, m) => {
  const prefix = column === "direct" || column === "floor" ? undefined : `${column}Added`;
  return [
    report.id,
    column,
    formatNumber(m.latencyUs?.samples),
    formatNumber(m.latencyUs?.p50, 1),
    formatNumber(m.latencyUs?.p99, 1),
    formatNumber(m.latencyUs?.max, 0),
    prefix === undefined ? MISSING : formatNumber(report.ratios[`${prefix}P50Us`], 1),
    prefix === undefined ? MISSING : formatNumber(report.ratios[`${prefix}P99Us`], 1),
    otherWork(m),
  ];
};

const HANDSHAKE_HEADERS = [
  "scenario",
  "column",
  "handshakes/s",
  "vs direct",
  "server µs/handshake",
  "server",
  "load gen",
  "upstream",
  "other work",
];

const handshakeRow: RowBuilder = (report, column, m) => [
  report.id,
  column,
  formatNumber(m.handshakesPerSecond),
  formatNumber(report.ratios[`${column}VsDirect`], 2),
  formatNumber(m.serverCpuUsPerHandshake, 1),
  percent(m.cpuPercent?.server),
  percent(m.cpuPercent?.load),
  percent(m.cpuPercent?.upstream),
  otherWork(m),
];

const MEMORY_HEADERS = ["scenario", "column", "connections", "RSS before MiB", "RSS after MiB", "KiB per connection", "server fds"];

const memoryRow: RowBuilder = (report, column, m) => [
  report.id,
  column,
  formatNumber(m.connections),
  formatNumber(m.baselineKiB === undefined ? undefined : m.baselineKiB / KIB, 1),
  formatNumber(m.loadedKiB === undefined ? undefined : m.loadedKiB / KIB, 1),
  formatNumber(m.kibPerConnection, 2),
  formatNumber(m.serverFds),
];

const SLOW_READER_HEADERS = ["scenario", "column", "RSS growth paused MiB", "max RSS growth MiB", "bytes read", "read MiB/s"];

const slowReaderRow: RowBuilder = (report, column, m) => [
  report.id,
  column,
  formatNumber(m.pausedGrowthMiB, 1),
  formatNumber(m.maxGrowthMiB, 1),
  formatNumber(m.bytesRead),
  formatNumber(m.readMiBPerSecond),
];

const LAYOUTS: Record<Kind, { title: string; headers: string[]; row: RowBuilder }> = {
  echo: {
    title: "Echo throughput (msg/s counts round trips; a relay forwards each one twice)",
    headers: THROUGHPUT_HEADERS,
    row: throughputRow,
  },
  stream: { title: "Upstream streaming to one client", headers: THROUGHPUT_HEADERS, row: throughputRow },
  latency: { title: "Round-trip latency", headers: LATENCY_HEADERS, row: latencyRow },
  handshake: { title: "Handshakes", headers: HANDSHAKE_HEADERS, row: handshakeRow },
  memory: { title: "Memory with idle connections (a relay pair is one client connection)", headers: MEMORY_HEADERS, row: memoryRow },
  "slow-reader": { title: "Slow reader", headers: SLOW_READER_HEADERS, row: slowReaderRow },
};

/** Renders one table per kind of scenario, in the order the kinds first appear. */
export function renderReports(reports: ScenarioReport[]): string {
  const kinds = [...new Set(reports.map((report) => report.kind))];
  return kinds
    .map((kind) => {
      const layout = LAYOUTS[kind];
      const rows = reports
        .filter((report) => report.kind === kind)
        .flatMap((report) => Object.entries(report.columns).map(([column, m]) => layout.row(report, column as Column, m)));
      return `${layout.title}\n${renderTable(layout.headers, rows)}`;
    })
    .join("\n\n");
}

/** Renders the target checks of every scenario as a table. */
export function renderTargets(reports: ScenarioReport[]): string {
  const rows = reports.flatMap((report) =>
    report.targets.map((target) => [
      report.id,
      target.name,
      formatNumber(target.value, 2),
      `${target.bound === "max" ? "<=" : ">="} ${formatNumber(target.limit, 2)}`,
      target.met ? "met" : "missed",
    ]),
  );
  return `Targets (reported, not enforced)\n${renderTable(["scenario", "target", "measured", "goal", "result"], rows)}`;
}
