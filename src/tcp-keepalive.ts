/**
 * TCP keepalive on a listening socket, set through `bun:ffi` because
 * `Bun.serve` has no option for it. Linux copies a listener's socket options
 * to every socket it accepts, so setting them once on the listener covers
 * every client connection.
 *
 * Bun does not expose the listener's file descriptor, so it is found by
 * matching `/proc/self/fd/N -> socket:[INODE]` against the LISTEN rows of
 * `/proc/net/tcp` and `/proc/net/tcp6` for the bound port.
 */

import { readdirSync, readFileSync, readlinkSync } from "node:fs";

// Linux values, the same on x86_64 and arm64 (<sys/socket.h>, <netinet/tcp.h>).
const SOL_SOCKET = 1;
const SO_KEEPALIVE = 9;
const IPPROTO_TCP = 6;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;

/** Unanswered probes before the kernel drops a connection: 15 s idle + 9 x 15 s is about 2.5 min. */
export const TCP_KEEPALIVE_PROBES = 9;

const TCP_STATE_LISTEN = "0A";
const TCP_STATE_ESTABLISHED = "01";

/** The outcome of setting keepalive; `reason` explains why it could not be set. */
export type KeepAliveResult = { ok: true; fds: number[] } | { ok: false; reason: string };

interface Libc {
  setsockopt(fd: number, level: number, option: number, value: Int32Array, length: number): number;
  getsockopt(fd: number, level: number, option: number, value: Int32Array, length: Uint32Array): number;
}

let libc: Libc | null | undefined;
let libcError = "";

async function loadLibc(): Promise<Libc | null> {
  if (libc !== undefined) return libc;
  if (process.platform !== "linux") {
    libcError = `TCP keepalive through setsockopt is only implemented on Linux, not ${process.platform}`;
    libc = null;
    return libc;
  }
  const { dlopen, FFIType } = await import("bun:ffi");
  const symbols = {
    setsockopt: {
      args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32],
      returns: FFIType.i32,
    },
    getsockopt: {
      args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr],
      returns: FFIType.i32,
    },
  } as const;
  // glibc names its shared object libc.so.6; musl (Alpine) ships one per architecture.
  const candidates = ["libc.so.6", `libc.musl-${process.arch === "arm64" ? "aarch64" : "x86_64"}.so.1`];
  const failures: string[] = [];
  for (const name of candidates) {
    try {
      libc = dlopen(name, symbols).symbols as unknown as Libc;
      return libc;
    } catch (error) {
      failures.push(`${name}: ${(error as Error).message}`);
    }
  }
  libcError = `could not load the C library for setsockopt (${failures.join("; ")})`;
  libc = null;
  return libc;
}

function socketInodes(port: number, state: string, portColumn: 1 | 2): Set<string> {
  const inodes = new Set<string>();
  const portHex = port.toString(16).toUpperCase().padStart(4, "0");
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(table, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const columns = line.trim().split(/\s+/);
      // Columns: sl, local_address, rem_address, st, ..., inode (index 9).
      const address = columns[portColumn];
      if (columns[3] !== state || address === undefined) continue;
      if (address.endsWith(`:${portHex}`) && columns[9] !== undefined) inodes.add(columns[9]);
    }
  }
  return inodes;
}

function fdsForInodes(inodes: Set<string>): number[] {
  const fds: number[] = [];
  if (inodes.size === 0) return fds;
  for (const entry of readdirSync("/proc/self/fd")) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${entry}`);
    } catch {
      continue;
    }
    const match = /^socket:\[(\d+)\]$/.exec(target);
    if (match?.[1] !== undefined && inodes.has(match[1])) fds.push(Number(entry));
  }
  return fds;
}

function setOptions(c: Libc, fd: number, seconds: number): string | null {
  const settings: Array<[number, number, number, string]> = [
    [SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE"],
    [IPPROTO_TCP, TCP_KEEPIDLE, seconds, "TCP_KEEPIDLE"],
    [IPPROTO_TCP, TCP_KEEPINTVL, seconds, "TCP_KEEPINTVL"],
    [IPPROTO_TCP, TCP_KEEPCNT, TCP_KEEPALIVE_PROBES, "TCP_KEEPCNT"],
  ];
  for (const [level, option, value, name] of settings) {
    const rc = c.setsockopt(fd, level, option, new Int32Array([value]), 4);
    if (rc !== 0) return `setsockopt(${fd}, ${name}, ${value}) returned ${rc}`;
  }
  return null;
}

/** Sets keepalive on this process's sockets among `inodes`; `what` names them when none is found. */
async function applyToSockets(inodes: Set<string>, intervalMs: number, what: string | null): Promise<KeepAliveResult> {
  const c = await loadLibc();
  if (c === null) return { ok: false, reason: libcError };
  const fds = fdsForInodes(inodes);
  if (fds.length === 0 && what !== null) return { ok: false, reason: `no ${what} socket of this process found in /proc` };
  const seconds = Math.max(1, Math.round(intervalMs / 1000));
  for (const fd of fds) {
    const failure = setOptions(c, fd, seconds);
    if (failure !== null) return { ok: false, reason: failure };
  }
  return { ok: true, fds };
}

/**
 * Turns on TCP keepalive for the socket of this process that listens on
 * `port`: idle time and probe interval `intervalMs` (whole seconds), 9 probes.
 * Returns `ok: false` with a reason instead of throwing where it cannot.
 */
export async function setListenerKeepAlive(port: number, intervalMs: number): Promise<KeepAliveResult> {
  try {
    return await applyToSockets(socketInodes(port, TCP_STATE_LISTEN, 1), intervalMs, `listening :${port}`);
  } catch (error) {
    return { ok: false, reason: (error as Error).message };
  }
}

/**
 * TCP keepalive for the relay's upstream connections. Bun's client
 * `WebSocket` exposes no socket, so `sweep()` sets keepalive on every
 * established socket of this process whose remote port is the upstream's,
 * skipping sockets it already set. A sweep reads all of /proc/net/tcp, so
 * the relay (`scheduleOutboundKeepAlive`) runs it at most once a second,
 * and only after new pairs opened.
 */
export class OutboundKeepAlive {
  private readonly done = new Set<string>();

  constructor(
    private readonly remotePort: number,
    private readonly intervalMs: number,
  ) {}

  async sweep(): Promise<KeepAliveResult> {
    try {
      const current = socketInodes(this.remotePort, TCP_STATE_ESTABLISHED, 2);
      for (const inode of this.done) if (!current.has(inode)) this.done.delete(inode);
      const fresh = new Set([...current].filter((inode) => !this.done.has(inode)));
      if (fresh.size === 0) return { ok: true, fds: [] };
      // Sockets of other processes to the same port are listed too; they
      // have no fd here and are simply skipped.
      const result = await applyToSockets(fresh, this.intervalMs, null);
      if (result.ok) for (const inode of fresh) this.done.add(inode);
      return result;
    } catch (error) {
      return { ok: false, reason: (error as Error).message };
    }
  }
}

/** Reads back SO_KEEPALIVE and TCP_KEEPIDLE (seconds) of `fd`, for tests and diagnostics. */
export async function readKeepAlive(fd: number): Promise<{ enabled: boolean; idleSeconds: number } | null> {
  const c = await loadLibc();
  if (c === null) return null;
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  if (c.getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, value, length) !== 0) return null;
  const enabled = value[0] !== 0;
  if (c.getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, value, length) !== 0) return null;
  return { enabled, idleSeconds: value[0] ?? 0 };
}
