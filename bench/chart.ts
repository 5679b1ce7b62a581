/**
 * Draws docs/benchmarks.svg from a benchmark results file: the server
 * core's CPU per message for each throughput scenario (wsbridge against the
 * floor and the other relays), and each relay's throughput as a fraction of
 * direct.
 *
 * Usage: `bun bench/chart.ts [RESULTS_JSON] [OUTPUT_SVG]`; the defaults are
 * bench/results/latest.json and docs/benchmarks.svg.
 */

import { readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import type { ColumnMetrics, ScenarioReport } from "./lib/report.ts";
import type { Column } from "./lib/scenarios.ts";

const REPO_ROOT = new URL("../", import.meta.url).pathname;
const inputPath = process.argv[2] ?? join(REPO_ROOT, "bench/results/latest.json");
const outputPath = process.argv[3] ?? join(REPO_ROOT, "docs/benchmarks.svg");

const WIDTH = 960;
const PANEL_HEIGHT = 300;
const MARGIN = { left: 60, right: 20, top: 60, bottom: 50 };
const BAR_WIDTH = 26;
const BAR_GAP = 4;
const FONT = "font-family='system-ui, sans-serif'";
const FONT_SIZE = 12;
const SMALL_FONT_SIZE = 10;
const COLORS: Partial<Record<Column, string>> = {
  wsbridge: "#2f6fdb",
  floor: "#8a8a8a",
  minimal: "#e0a030",
  peer: "#3aa675",
};
const CPU_TITLE = "Server-core CPU per message, µs (lower is better; bars scaled within each scenario)";
const TARGET_STROKE = "stroke='#c03030' stroke-dasharray='6 4'";
const CPU_COLUMNS: Column[] = ["wsbridge", "floor", "minimal", "peer"];
const RATIO_COLUMNS: Column[] = ["wsbridge", "minimal", "peer"];

interface Results {
  date: string;
  peerCommand: string | null;
  machine: { nproc: number; cpuModel: string; bun: string; commit: string };
  targets: { cpuVsFloorMax: number; throughputVsDirectMin: number };
  scenarios: ScenarioReport[];
}

interface Bar {
  column: Column;
  /** Height as a fraction of the plot height. */
  height: number;
  label: string;
}

interface Group {
  name: string;
  bars: Bar[];
}

function escapeXml(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

function text(x: number, y: number, content: string, extra = "", size = FONT_SIZE): string {
  return `<text x='${x.toFixed(1)}' y='${y.toFixed(1)}' ${FONT} font-size='${size}' ${extra}>${escapeXml(content)}</text>`;
}

function formatValue(value: number): string {
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

/** CPU µs per message of each column, each group scaled to its own largest bar. */
function cpuGroups(results: Results): Group[] {
  return results.scenarios
    .filter((s) => s.kind === "echo" || s.kind === "stream")
    .map((s) => {
      const values = CPU_COLUMNS.flatMap((column) => {
        const value = (s.columns[column] as ColumnMetrics | undefined)?.serverCpuUsPerMessage;
        return value === undefined ? [] : [{ column, value }];
      });
      const max = Math.max(...values.map((v) => v.value));
      return { name: s.id, bars: values.map((v) => ({ column: v.column, height: v.value / max, label: formatValue(v.value) })) };
    });
}

/** Throughput of each relay column as a fraction of direct, on one scale from 0 to `scaleMax`. */
function ratioGroups(results: Results, scaleMax: number): Group[] {
  return results.scenarios
    .filter((s) => s.kind === "echo" || s.kind === "stream" || s.kind === "handshake")
    .map((s) => ({
      name: s.id,
      bars: RATIO_COLUMNS.flatMap((column) => {
        const value = s.ratios[`${column}VsDirect`];
        return value === undefined ? [] : [{ column, height: value / scaleMax, label: value.toFixed(2) }];
      }),
    }));
}

function drawGroups(groups: Group[], top: number): string[] {
  const plotHeight = PANEL_HEIGHT - MARGIN.top - MARGIN.bottom;
  const baseline = top + MARGIN.top + plotHeight;
  const groupWidth = (WIDTH - MARGIN.left - MARGIN.right) / Math.max(groups.length, 1);
  const out: string[] = [`<line x1='${MARGIN.left}' x2='${WIDTH - MARGIN.right}' y1='${baseline}' y2='${baseline}' stroke='#333'/>`];
  groups.forEach((group, g) => {
    const barsWidth = group.bars.length * (BAR_WIDTH + BAR_GAP) - BAR_GAP;
    const start = MARGIN.left + g * groupWidth + (groupWidth - barsWidth) / 2;
    group.bars.forEach((bar, b) => {
      const x = start + b * (BAR_WIDTH + BAR_GAP);
      const height = Math.min(bar.height, 1) * plotHeight;
      const y = (baseline - height).toFixed(1);
      out.push(`<rect x='${x.toFixed(1)}' y='${y}' width='${BAR_WIDTH}' height='${height.toFixed(1)}' fill='${COLORS[bar.column]}'/>`);
      out.push(text(x + BAR_WIDTH / 2, baseline - height - 4, bar.label, "text-anchor='middle'", SMALL_FONT_SIZE));
    });
    out.push(text(MARGIN.left + (g + 0.5) * groupWidth, baseline + 18, group.name, "text-anchor='middle'"));
  });
  return out;
}

/** Names the peer column after the program its command starts, e.g. "peer: haproxy". */
function columnLabel(column: Column, results: Results): string {
  if (column !== "peer" || results.peerCommand === null) return column;
  const program = basename(results.peerCommand.split(" ")[0] ?? "").replace(/\.sh$/, "");
  return `peer: ${program}`;
}

function legend(columns: Column[], results: Results, top: number): string[] {
  return columns.flatMap((column, i) => {
    const x = MARGIN.left + i * 130;
    const swatch = `<rect x='${x}' y='${top}' width='12' height='12' fill='${COLORS[column]}'/>`;
    return [swatch, text(x + 16, top + 10, columnLabel(column, results))];
  });
}

function cpuPanel(results: Results, top: number): string[] {
  return [
    text(MARGIN.left, top + 20, CPU_TITLE, "font-weight='bold'"),
    ...legend(CPU_COLUMNS, results, top + 30),
    ...drawGroups(cpuGroups(results), top),
  ];
}

function ratioPanel(results: Results, top: number): string[] {
  const groups = ratioGroups(results, 1);
  const scaleMax = Math.max(1.2, ...groups.flatMap((g) => g.bars.map((b) => b.height)));
  const plotHeight = PANEL_HEIGHT - MARGIN.top - MARGIN.bottom;
  const targetY = top + MARGIN.top + plotHeight * (1 - results.targets.throughputVsDirectMin / scaleMax);
  return [
    text(MARGIN.left, top + 20, "Throughput as a fraction of direct (higher is better; dashed line: target)", "font-weight='bold'"),
    ...legend(RATIO_COLUMNS, results, top + 30),
    ...drawGroups(ratioGroups(results, scaleMax), top),
    `<line x1='${MARGIN.left}' x2='${WIDTH - MARGIN.right}' y1='${targetY.toFixed(1)}' y2='${targetY.toFixed(1)}' ${TARGET_STROKE}/>`,
    text(WIDTH - MARGIN.right, targetY - 4, `${results.targets.throughputVsDirectMin}`, "text-anchor='end' fill='#c03030'"),
  ];
}

function render(results: Results): string {
  const m = results.machine;
  const day = results.date.slice(0, 10);
  const caption = `wsbridge ${m.commit}, Bun ${m.bun}, ${m.nproc} x ${m.cpuModel}, ${day}; one run on a shared machine`;
  const height = 2 * PANEL_HEIGHT + 30;
  return [
    `<svg xmlns='http://www.w3.org/2000/svg' width='${WIDTH}' height='${height}' viewBox='0 0 ${WIDTH} ${height}'>`,
    `<rect width='100%' height='100%' fill='white'/>`,
    ...cpuPanel(results, 0),
    ...ratioPanel(results, PANEL_HEIGHT),
    text(MARGIN.left, height - 10, caption, "fill='#555'"),
    "</svg>",
    "",
  ].join("\n");
}

const results = JSON.parse(readFileSync(inputPath, "utf8")) as Results;
writeFileSync(outputPath, render(results));
console.log(`wrote ${outputPath}`);
