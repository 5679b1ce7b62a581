/**
 * TCP-level views for tests: kernel keepalive timers from /proc/net/tcp, and
 * a forwarder that can go silent without closing.
 */

import { readFileSync } from "node:fs";
import { type Server, type Socket, connect, createServer } from "node:net";

/** One established connection's timer, as /proc/net/tcp shows it. */
export interface TcpTimer {
  localPort: number;
  remotePort: number;
  /** 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe (proc(5)). */
  timer: number;
  /** Time until the timer fires, in seconds (the kernel reports clock ticks of 1/100 s). */
  whenSeconds: number;
}

const USER_HZ = 100;

/** Lists established TCP connections with their timers, IPv4 and IPv6. */
export function tcpTimers(): TcpTimer[] {
  const rows: TcpTimer[] = [];
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = readFileSync(table, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c[3] !== "01" || c[1] === undefined || c[2] === undefined || c[5] === undefined) continue;
      const [timer, when] = c[5].split(":");
      rows.push({
        localPort: Number.parseInt(c[1].split(":").pop() ?? "0", 16),
        remotePort: Number.parseInt(c[2].split(":").pop() ?? "0", 16),
        timer: Number.parseInt(timer ?? "0", 16),
        whenSeconds: Number.parseInt(when ?? "0", 16) / USER_HZ,
      });
    }
  }
  return rows;
}

/**
 * A TCP forwarder to `targetPort` that can be frozen: it then keeps both
 * connections open but forwards nothing, like a path that died silently.
 */
export async function startForwarder(targetPort: number): Promise<{
  port: number;
  freeze(): void;
  close(): void;
} & AsyncDisposable> {
  let frozen = false;
  const sockets = new Set<Socket>();
  const server: Server = createServer((inbound) => {
    const outbound = connect(targetPort, "127.0.0.1");
    for (const socket of [inbound, outbound]) {
      sockets.add(socket);
      socket.on("error", () => {});
      socket.on("close", () => {
        sockets.delete(socket);
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.on("data", (chunk) => {
      if (!frozen) outbound.write(chunk);
    });
    outbound.on("data", (chunk) => {
      if (!frozen) inbound.write(chunk);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const close = (): void => {
    for (const socket of sockets) socket.destroy();
    server.close();
  };
  return {
    port: (server.address() as { port: number }).port,
    freeze: () => {
      frozen = true;
    },
    close,
    [Symbol.asyncDispose]: async () => close(),
  };
}
