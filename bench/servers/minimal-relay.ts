/**
 * The smallest relay that Bun's APIs allow, as a reference column: `Bun.serve`
 * for clients, Bun's `WebSocket` client for the upstream, one forwarding
 * call per message, and nothing else (no flow control, keepalive, logging,
 * header forwarding or close-code mapping). Comparing it with wsbridge
 * separates what wsbridge adds from what Bun's client costs.
 *
 * Usage: `bun bench/servers/minimal-relay.ts ws://127.0.0.1:PORT`; prints
 * `{"port":N}` on stdout. Not for use outside the benchmark: a slow reader
 * grows its memory without bound.
 */

import type { ServerWebSocket } from "bun";

const MAX_MESSAGE_BYTES = 128 * 1024 * 1024;
const BAD_GATEWAY = 502;

interface Pair {
  upstream: WebSocket;
}

const upstreamBase = process.argv[2];
if (upstreamBase === undefined) {
  process.stderr.write("usage: bun bench/servers/minimal-relay.ts ws://HOST:PORT\n");
  process.exit(2);
}

/** Returns `code` when Bun's `close()` accepts it, else undefined (1005, 1006, 1015, out of range). */
function sendableCode(code: number): number | undefined {
  const reserved = code === 1005 || code === 1006 || code === 1015;
  return code >= 1000 && code <= 4999 && !reserved ? code : undefined;
}

/**
 * Opens the upstream connection with its reader paused, because Bun's client
 * drops messages that arrive before `attach` sets a listener; resolves once
 * it is open.
 */
function dial(url: string): Promise<WebSocket> {
  const upstream = new WebSocket(url, { perMessageDeflate: false });
  upstream.binaryType = "nodebuffer";
  upstream.pause();
  return new Promise((resolve, reject) => {
    upstream.onopen = () => resolve(upstream);
    upstream.onerror = () => reject(new Error(`upstream ${url} failed`));
  });
}

async function upgrade(req: Request, server: Bun.Server<Pair>): Promise<Response | undefined> {
  const url = new URL(req.url);
  let upstream: WebSocket;
  try {
    upstream = await dial(`${upstreamBase}${url.pathname}${url.search}`);
  } catch (error) {
    return new Response(`${(error as Error).message}\n`, { status: BAD_GATEWAY });
  }
  if (server.upgrade(req, { data: { upstream } })) return undefined;
  upstream.close();
  return new Response("expected a WebSocket upgrade\n", { status: 426 });
}

function attach(client: ServerWebSocket<Pair>): void {
  const upstream = client.data.upstream;
  upstream.onmessage = (event) => client.send(event.data as Buffer);
  upstream.onclose = (event) => client.close(sendableCode(event.code), event.reason);
  upstream.resume();
}

const server = Bun.serve<Pair>({
  hostname: "127.0.0.1",
  port: 0,
  fetch: upgrade,
  websocket: {
    open: attach,
    message: (client, message) => client.data.upstream.send(message),
    close: (client, code, reason) => client.data.upstream.close(sendableCode(code), reason),
    backpressureLimit: 0,
    closeOnBackpressureLimit: false,
    maxPayloadLength: MAX_MESSAGE_BYTES,
    idleTimeout: 0,
    sendPings: false,
    perMessageDeflate: false,
  },
});

process.stdout.write(`${JSON.stringify({ port: server.port })}\n`);
