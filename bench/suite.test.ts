/**
 * wsbridge's benchmark suite; run it with `bun run bench` (not part of
 * `bun test`, whose root is test/). Each scenario runs the same load
 * directly against the upstream, through wsbridge, against the platform
 * floor and, when PEER_CMD is set, through another relay. A scenario fails
 * only when a message is lost, reordered or resized; the performance
 * targets are reported, not enforced. The run prints tables and, when every
 * scenario ran and passed, writes bench/results/latest.json.
 */

import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type RunContext, runColumn } from "./lib/columns.ts";
import { describeMachine } from "./lib/machine.ts";
import { startUsage } from "./load/common.ts";
import { LOAD_CORE, REPO_ROOT, SERVER_CORE, pinSelf, relayCommand, stopAll } from "./lib/processes.ts";
import { type ScenarioReport, TARGETS, columnMetrics, compare } from "./lib/report.ts";
import { IDLE_PAIRS_WANTED, type Scenario, idlePairCount, openFileLimit, scenarios } from "./lib/scenarios.ts";
import { renderReports, renderTargets } from "./lib/tables.ts";

const RESULTS_DIR = join(REPO_ROOT, "bench/results");
const RESULTS_FILE = join(RESULTS_DIR, "latest.json");
/** Written first and renamed to latest.json only when the whole run passed. */
const PARTIAL_FILE = join(RESULTS_DIR, "run.json.tmp");

const peerCommand = process.env.PEER_CMD?.trim() || undefined;
const fdLimit = openFileLimit();
const idlePairs = idlePairCount(fdLimit);
const plan = scenarios(idlePairs).map((scenario) => ({
  ...scenario,
  columns: scenario.columns.filter((column) => column !== "peer" || peerCommand !== undefined),
}));
/** Share of a core, in percent, that other processes may take before a run is flagged as disturbed. */
const OTHER_WORK_LIMIT_PERCENT = 15;
const IDLE_CHECK_MS = 1000;
const notes: string[] = [];
const reports: ScenarioReport[] = [];
const failed: string[] = [];
let context: RunContext;

if (idlePairs < IDLE_PAIRS_WANTED) {
  notes.push(`open file limit is ${fdLimit}, so the memory scenario holds ${idlePairs} idle pairs instead of ${IDLE_PAIRS_WANTED}`);
}

beforeAll(async () => {
  if (!pinSelf()) notes.push(`could not pin the benchmark runner to core ${LOAD_CORE}; it runs unpinned`);
  context = { logDir: mkdtempSync(join(tmpdir(), "wsbridge-bench-")), peerCommand };
  const stopUsage = startUsage({});
  await Bun.sleep(IDLE_CHECK_MS);
  const busy = stopUsage().coreBusyPercent.map((share) => Math.round(share));
  if (busy.some((share) => share > OTHER_WORK_LIMIT_PERCENT)) {
    const shares = `${busy.join("%, ")}%`;
    notes.push(`before the run the cores were already busy (${shares}): other work is running and the figures will be noisy`);
  }
});

/** Notes each column whose cores other processes used noticeably during the measurement. */
function flagDisturbed(report: ScenarioReport): void {
  for (const [column, metrics] of Object.entries(report.columns)) {
    const other = metrics.otherWorkPercent ?? [];
    other.forEach((share, core) => {
      if (share > OTHER_WORK_LIMIT_PERCENT) {
        notes.push(`${report.id} ${column}: other processes used ${Math.round(share)}% of core ${core} during the measurement`);
      }
    });
  }
}

afterAll(async () => {
  await stopAll();
  rmSync(context.logDir, { recursive: true, force: true });
  for (const note of notes) console.log(`note: ${note}`);
  if (reports.length === 0) return;
  console.log(`\n${renderReports(reports)}\n\n${renderTargets(reports)}\n`);
  writeResults();
});

function writeResults(): void {
  const complete = reports.length === plan.length && failed.length === 0;
  mkdirSync(RESULTS_DIR, { recursive: true });
  writeFileSync(PARTIAL_FILE, `${JSON.stringify(resultsDocument(), null, 2)}\n`);
  if (complete) {
    renameSync(PARTIAL_FILE, RESULTS_FILE);
    console.log(`results written to ${RESULTS_FILE}`);
  } else {
    console.log(`run incomplete or failed (${failed.join(", ") || "scenarios skipped"}); results kept in ${PARTIAL_FILE}`);
  }
}

/** Returns the relay's arguments as the suite passes them, with paths relative to the repository. */
function relayArguments(): string {
  return relayCommand("ws://127.0.0.1:UPSTREAM_PORT").slice(1).join(" ").replace(REPO_ROOT, "");
}

function resultsDocument(): object {
  return {
    date: new Date().toISOString(),
    machine: describeMachine(),
    pinning: {
      serverCore: SERVER_CORE,
      loadCore: LOAD_CORE,
      description:
        `taskset -c ${SERVER_CORE}: the process under test (wsbridge, the floor server or the peer), alone. ` +
        `taskset -c ${LOAD_CORE}: the load generator, the upstream server and the benchmark runner.`,
    },
    relayCommand: `taskset -c ${SERVER_CORE} bun ${relayArguments()}`,
    peerCommand: peerCommand ?? null,
    openFileLimit: fdLimit,
    targets: TARGETS,
    notes,
    scenarios: reports,
  };
}

async function runScenario(scenario: Scenario): Promise<ScenarioReport> {
  const { id, title, kind, load } = scenario;
  const report: ScenarioReport = { id, title, kind, load, columns: {}, ratios: {}, targets: [] };
  for (const column of scenario.columns) {
    const run = await runColumn(scenario, column, context);
    report.columns[column] = columnMetrics(scenario.kind, column, run.result);
    for (const line of run.serverErrors) notes.push(`${scenario.id}: ${column} logged an error: ${line}`);
  }
  compare(report);
  flagDisturbed(report);
  return report;
}

for (const scenario of plan) {
  test(scenario.title, async () => {
    let report: ScenarioReport;
    try {
      report = await runScenario(scenario);
    } catch (error) {
      failed.push(scenario.id);
      throw error;
    }
    reports.push(report);
    console.log(renderReports([report]));
    const errors = Object.entries(report.columns).flatMap(([column, metrics]) => metrics.errors.map((e) => `${column}: ${e}`));
    if (errors.length > 0) failed.push(scenario.id);
    expect(errors).toEqual([]);
  });
}
