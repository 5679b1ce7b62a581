/** A description of the machine and checkout a run was measured on. */

import { readFileSync } from "node:fs";
import { cpus, release, totalmem } from "node:os";
import { REPO_ROOT } from "./processes.ts";

const MIB = 1024 * 1024;

export interface Machine {
  nproc: number;
  cpuModel: string;
  kernel: string;
  memoryMiB: number;
  bun: string;
  /** Commit of the checkout, with "+changes" when src/ differs from it. */
  commit: string;
}

function cpuModel(): string {
  const match = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
  return match?.[1]?.trim() ?? "unknown";
}

function gitCommit(): string {
  const head = Bun.spawnSync(["git", "rev-parse", "--short", "HEAD"], { cwd: REPO_ROOT });
  if (head.exitCode !== 0) return "unknown";
  const status = Bun.spawnSync(["git", "status", "--porcelain", "--", "src"], { cwd: REPO_ROOT });
  const changed = status.stdout.toString().trim() !== "";
  return `${head.stdout.toString().trim()}${changed ? "+changes" : ""}`;
}

export function describeMachine(): Machine {
  return {
    // cpus() lists every core; availableParallelism() would count only this
    // process's affinity, which the suite pins to one core.
    nproc: cpus().length,
    cpuModel: cpuModel(),
    kernel: release(),
    memoryMiB: Math.round(totalmem() / MIB),
    bun: Bun.version,
    commit: gitCommit(),
  };
}
