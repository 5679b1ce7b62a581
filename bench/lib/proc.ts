/**
 * CPU time and memory of processes, read from Linux's /proc. A process is
 * counted with its threads and its child processes, so a peer that forks
 * workers (nginx) is measured whole.
 */

import { readFileSync, readdirSync } from "node:fs";

/** Reads a /proc file; undefined when the process or thread is gone. */
function readProc(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

function threadIds(pid: number): string[] {
  try {
    return readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
}

/** `pid` and every process below it. */
export function processTree(pid: number): number[] {
  const found = [pid];
  for (let i = 0; i < found.length; i++) {
    const parent = found[i] as number;
    for (const tid of threadIds(parent)) {
      const children = readProc(`/proc/${parent}/task/${tid}/children`) ?? "";
      for (const child of children.split(" ")) {
        if (child.trim() !== "") found.push(Number(child));
      }
    }
  }
  return found;
}

/**
 * Returns the CPU time in nanoseconds used so far by `pid`'s live threads
 * and those of its descendants. It sums the first field of each thread's
 * /proc schedstat, which the scheduler keeps in nanoseconds, whereas utime
 * and stime in /proc/PID/stat count whole clock ticks of 10 ms.
 * NOTE: a thread that exits between two readings takes its time with it;
 * Bun's worker threads live as long as the process, so this loses nothing in
 * practice.
 */
export function cpuNs(pid: number): number {
  let total = 0;
  for (const member of processTree(pid)) {
    for (const tid of threadIds(member)) {
      const line = readProc(`/proc/${member}/task/${tid}/schedstat`);
      if (line !== undefined) total += Number(line.split(" ")[0]);
    }
  }
  return total;
}

/** Resident memory in KiB (VmRSS) of `pid` and its descendants. */
export function rssKiB(pid: number): number {
  let total = 0;
  for (const member of processTree(pid)) {
    const status = readProc(`/proc/${member}/status`) ?? "";
    const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
    if (match !== null) total += Number(match[1]);
  }
  return total;
}

/** Open file descriptors of `pid` and its descendants. */
export function openFds(pid: number): number {
  let total = 0;
  for (const member of processTree(pid)) {
    try {
      total += readdirSync(`/proc/${member}/fd`).length;
    } catch {
      // The process ended meanwhile.
    }
  }
  return total;
}

/**
 * Reads the busy time of each core from /proc/stat, in clock ticks (1/100 s
 * on Linux): everything but idle and iowait, whichever process ran.
 */
export function coreBusyTicks(): number[] {
  const busy: number[] = [];
  for (const line of readFileSync("/proc/stat", "utf8").split("\n")) {
    const match = /^cpu(\d+) (.*)$/.exec(line);
    if (match === null) continue;
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = (match[2] as string)
      .trim()
      .split(/\s+/)
      .map(Number);
    busy[Number(match[1])] = user + nice + system + irq + softirq + steal;
  }
  return busy;
}

/** CPU time of several named processes, read at the same moment. */
export function cpuSnapshot(pids: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) out[name] = cpuNs(pid);
  return out;
}

/** Returns the CPU each named process used between two snapshots, in ns. */
export function cpuDelta(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const name of Object.keys(before)) out[name] = (after[name] ?? 0) - (before[name] ?? 0);
  return out;
}
