/**
 * `createRelay`: the listener, the upgrade path, the set of live pairs, stats
 * and graceful stop.
 */

import type { Server, ServerWebSocket, WebSocketHandler } from "bun";
import { AccessControl, type Admission } from "./access.ts";
import { type EndCause, CloseCode } from "./close.ts";
import {
  type RelayOptions,
  type ResolvedRelayOptions,
  deflatesClientHop,
  deflatesUpstreamHop,
  resolveOptions,
} from "./config.ts";
import { type EchoServer, startEchoServer } from "./echo.ts";
import { FlowPoller } from "./flow.ts";
import {
  HandshakeError,
  checkUpgradeRequest,
  forwardedHeaders,
  offeredProtocols,
  upstreamUrl,
  waitForOpen,
} from "./handshake.ts";
import { KeepaliveSweeper } from "./keepalive.ts";
import { ConnectionLimiter } from "./limits.ts";
import { type Logger, createLogger, redactUrl } from "./log.ts";
import { DIAL_SECONDS_BOUNDS, Histogram, type HistogramSnapshot, RTT_SECONDS_BOUNDS } from "./metrics.ts";
import { type Closer, type PairCounters, type PairEnd, type PairEvents, Pair } from "./pair.ts";
import { OutboundKeepAlive, setListenerKeepAlive } from "./tcp-keepalive.ts";
import { INSECURE_UPSTREAM_WARNING } from "./tls.ts";

/**
 * Counters of a relay since it started: plain data, so it can cross a
 * process boundary. Message counters include the pairs still open.
 */
export interface RelayStats extends PairCounters {
  /** True while the relay accepts new connections. */
  ready: boolean;
  activePairs: number;
  pairsTotal: number;
  /** Handshake outcomes by HTTP status: `101`, `426`, `502`, `504`, ... and `client_left`. */
  handshakes: Record<string, number>;
  endCauses: Partial<Record<EndCause, number>>;
  /** The close code that started each teardown, by the side that sent it. */
  closeCodes: Record<Closer, Record<string, number>>;
  /** Time from dialling the upstream to its open, in seconds. */
  dialSeconds: HistogramSnapshot;
  /** Ping to pong round trips per side, in seconds. */
  pongRtt: { client: HistogramSnapshot; upstream: HistogramSnapshot };
  missedPongs: { client: number; upstream: number };
}

const COUNTER_KEYS: Array<keyof PairCounters> = [
  "messagesToUpstream",
  "textMessagesToUpstream",
  "bytesToUpstream",
  "messagesToClient",
  "textMessagesToClient",
  "bytesToClient",
  "clientPauses",
  "upstreamPauses",
  "clientPausedMs",
  "upstreamPausedMs",
];

function addCounters(into: PairCounters, from: PairCounters): void {
  for (const key of COUNTER_KEYS) into[key] += from[key];
}

function zeroCounters(): PairCounters {
  const counters = {} as PairCounters;
  for (const key of COUNTER_KEYS) counters[key] = 0;
  return counters;
}

/** A relay made by `createRelay`. */
export interface Relay {
  /** Starts listening (and the built-in echo upstream, if no upstream was given). */
  start(): Promise<void>;
  /**
   * Stops accepting, waits up to `graceMs` (default: the `shutdownGraceMs`
   * option) for pairs to end by themselves, closes the rest with 1001
   * "relay shutting down" on both sides, and releases every socket and timer.
   */
  stop(options?: { graceMs?: number }): Promise<void>;
  /** The bound port; throws before `start()`. */
  readonly port: number;
  readonly hostname: string;
  /** `ws://HOST:PORT`, or `wss://HOST:PORT` with a TLS certificate, for clients. */
  readonly url: string;
  /** The upstream URL in use (the echo server's when none was given). */
  readonly upstream: string;
  /** A snapshot of the counters. */
  stats(): RelayStats;
  /** True between `start()` and `stop()`: new connections are accepted. */
  isReady(): boolean;
}

/** Delay from a new pair's open to the sweep that sets TCP keepalive on its upstream socket. */
const OUTBOUND_KEEPALIVE_DELAY_MS = 1_000;
/** Delay between checks while waiting for pairs to end during `stop()`. */
const STOP_POLL_MS = 25;
/** How long `stop()` waits for closing handshakes after closing the pairs itself. */
const STOP_CLOSE_WAIT_MS = 2_000;
/**
 * permessage-deflate settings of the client hop (`--deflate client`). One
 * compressor serves every socket and resets after each message, so clients
 * are sent `server_no_context_takeover` and memory does not grow per socket
 * for sending. Each socket gets its own decompressor (a window of up to
 * 32 KiB, Bun's cap), so clients may keep their compression context between
 * messages, as `ws` and browsers do by default.
 */
const CLIENT_DEFLATE = { compress: "shared", decompress: "dedicated" } as const;

const websocketHandlers: WebSocketHandler<Pair> = {
  open: (ws) => ws.data.attach(ws),
  message: (ws, message) => ws.data.fromClient(message),
  drain: (ws) => ws.data.clientDrained(),
  close: (ws, code, reason) => ws.data.clientClosed(code, reason),
  ping: (ws) => {
    ws.data.clientSeen = true;
  },
  pong: (ws) => ws.data.clientPonged(),
};

function formatAddress(address: { address: string; port: number; family: string } | null): string {
  if (address === null) return "";
  return address.family === "IPv6" ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
}

/** Reports whether the upgrade request offers permessage-deflate among its Sec-WebSocket-Extensions. */
function offersDeflate(req: Request): boolean {
  const header = req.headers.get("sec-websocket-extensions");
  if (header === null) return false;
  return header.split(",").some((offer) => offer.split(";")[0]?.trim().toLowerCase() === "permessage-deflate");
}

/** Creates a relay; nothing listens until `start()`. Throws `ConfigError` for a bad option. */
export function createRelay(options: RelayOptions = {}): Relay {
  const config: ResolvedRelayOptions = resolveOptions(options);
  const logger: Logger = options.logger ?? createLogger();
  return new RelayServer(config, logger);
}

class RelayServer implements Relay {
  private server: Server<Pair> | null = null;
  private echo: EchoServer | null = null;
  private upstreamBase: URL | null = null;
  private readonly flow = new FlowPoller();
  private readonly sweeper: KeepaliveSweeper<Pair>;
  /** Attached pairs whose teardown has not started. */
  private readonly open = new Set<Pair>();
  /** Attached pairs with a socket still open. */
  private readonly unreleased = new Set<Pair>();
  private readonly counters = {
    pairsTotal: 0,
    handshakes: {} as Record<string, number>,
    endCauses: {} as Partial<Record<EndCause, number>>,
    closeCodes: { client: {}, upstream: {}, relay: {} } as Record<Closer, Record<string, number>>,
    dialSeconds: new Histogram(DIAL_SECONDS_BOUNDS),
    pongRtt: { client: new Histogram(RTT_SECONDS_BOUNDS), upstream: new Histogram(RTT_SECONDS_BOUNDS) },
    missedPongs: { client: 0, upstream: 0 },
  };
  /** Counters of the pairs that have ended. */
  private readonly ended: PairCounters = zeroCounters();
  private readonly pairEvents: PairEvents;
  private stopping: Promise<void> | null = null;
  /** Upgrade requests waiting for their upstream to open. */
  private pendingDials = 0;
  private readonly access: AccessControl;
  /** The admission of each upgraded pair, whose connection slot is released when the pair ends. */
  private readonly admissions = new Map<Pair, Admission>();
  private outboundKeepAlive: OutboundKeepAlive | null = null;
  private outboundTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly config: ResolvedRelayOptions,
    private readonly logger: Logger,
  ) {
    this.sweeper = new KeepaliveSweeper<Pair>(config.pingIntervalMs, config.pongTimeoutMs, (_pair, side) => {
      this.counters.missedPongs[side]++;
    });
    const limited = config.maxConnections > 0 || config.maxConnectionsPerIp > 0;
    const limiter = limited ? new ConnectionLimiter(config.maxConnections, config.maxConnectionsPerIp) : null;
    this.access = new AccessControl(config, limiter, logger);
    this.pairEvents = {
      onOpen: (pair) => this.pairOpened(pair),
      onEnd: (pair, end) => this.pairEnded(pair, end),
      onRelease: (pair) => this.unreleased.delete(pair),
      onError: (pair, kind, message) => this.logger.error(kind, message, { pair: pair.id }),
      onPong: (_pair, side, rttMs) => this.counters.pongRtt[side].observe(rttMs / 1000),
    };
  }

  get port(): number {
    if (this.server === null) throw new Error("relay is not started; call start() first");
    return this.server.port as number;
  }

  get hostname(): string {
    return this.config.hostname;
  }

  get url(): string {
    const host = this.hostname.includes(":") ? `[${this.hostname}]` : this.hostname;
    const scheme = this.config.serverTls === undefined ? "ws" : "wss";
    return `${scheme}://${host}:${this.port}`;
  }

  get upstream(): string {
    return this.upstreamBase?.toString() ?? this.config.upstream ?? "";
  }

  async start(): Promise<void> {
    if (this.server !== null) return;
    let upstream = this.config.upstream;
    if (upstream === undefined) {
      this.echo = startEchoServer();
      upstream = this.echo.url;
      this.logger.info("no upstream given: relaying to the built-in echo upstream", { upstream });
    }
    this.upstreamBase = new URL(upstream);
    try {
      this.server = this.listen();
    } catch (error) {
      this.echo?.stop();
      this.echo = null;
      throw error;
    }
    await this.setTcpKeepAlive();
    this.sweeper.start();
    if (this.config.upstreamTls.rejectUnauthorized === false) {
      this.logger.warn(INSECURE_UPSTREAM_WARNING, { upstream: redactUrl(upstream) });
    }
    this.logger.info("relay listening", {
      listen: `${this.hostname}:${this.port}`,
      tls: this.config.serverTls !== undefined,
      upstream: redactUrl(upstream),
      pid: process.pid,
    });
  }

  private listen(): Server<Pair> {
    return Bun.serve<Pair>({
      hostname: this.config.hostname,
      port: this.config.port,
      reusePort: this.config.reusePort,
      tls: this.config.serverTls,
      fetch: (req, server) => this.handleRequest(req, server),
      websocket: {
        ...websocketHandlers,
        maxPayloadLength: this.config.maxMessageBytes,
        // No limit: flow control bounds the queue, and at a limit Bun's
        // send() would drop messages silently (returns 0).
        backpressureLimit: 0,
        closeOnBackpressureLimit: false,
        // The keepalive sweeper judges liveness; see keepalive.ts for why
        // Bun's idle timer is not used.
        idleTimeout: 0,
        sendPings: false,
        perMessageDeflate: deflatesClientHop(this.config.deflate) ? CLIENT_DEFLATE : false,
      },
    });
  }

  stop(options: { graceMs?: number } = {}): Promise<void> {
    // Before start() there is nothing to stop, and remembering the stop
    // would make a later start() reject every upgrade with 503.
    if (this.server === null) return Promise.resolve();
    this.stopping ??= this.drainAndStop(options.graceMs ?? this.config.shutdownGraceMs);
    return this.stopping;
  }

  stats(): RelayStats {
    const totals = { ...this.ended };
    for (const pair of this.open) addCounters(totals, pair.counters);
    const { closeCodes, pongRtt, missedPongs } = this.counters;
    return {
      ready: this.isReady(),
      activePairs: this.open.size,
      pairsTotal: this.counters.pairsTotal,
      handshakes: { ...this.counters.handshakes },
      endCauses: { ...this.counters.endCauses },
      closeCodes: { client: { ...closeCodes.client }, upstream: { ...closeCodes.upstream }, relay: { ...closeCodes.relay } },
      ...totals,
      dialSeconds: this.counters.dialSeconds.snapshot(),
      pongRtt: { client: pongRtt.client.snapshot(), upstream: pongRtt.upstream.snapshot() },
      missedPongs: { ...missedPongs },
    };
  }

  isReady(): boolean {
    return this.server !== null && this.stopping === null;
  }

  private async setTcpKeepAlive(): Promise<void> {
    const intervalMs = this.config.tcpKeepAliveMs;
    if (intervalMs === 0) return;
    const result = await setListenerKeepAlive(this.port, intervalMs);
    if (result.ok) {
      this.logger.debug("TCP keepalive set on the listener", { seconds: intervalMs / 1000, fds: result.fds.join(",") });
      const base = this.upstreamBase as URL;
      const upstreamPort = Number(base.port || (base.protocol === "wss:" ? 443 : 80));
      this.outboundKeepAlive = new OutboundKeepAlive(upstreamPort, intervalMs);
    } else {
      this.logger.warn("TCP keepalive not set on the listener; dead peers are found by ws pings only", {
        reason: result.reason,
      });
    }
  }

  private scheduleOutboundKeepAlive(): void {
    const outbound = this.outboundKeepAlive;
    if (outbound === null || this.outboundTimer !== undefined) return;
    this.outboundTimer = setTimeout(async () => {
      const result = await outbound.sweep();
      this.outboundTimer = undefined;
      if (!result.ok) {
        this.logger.error("outbound_keepalive_failed", "TCP keepalive not set on upstream sockets", { reason: result.reason });
      }
    }, OUTBOUND_KEEPALIVE_DELAY_MS);
  }

  private countHandshake(outcome: string): void {
    const handshakes = this.counters.handshakes;
    handshakes[outcome] = (handshakes[outcome] ?? 0) + 1;
  }

  private async handleRequest(req: Request, server: Server<Pair>): Promise<Response | undefined> {
    const clientAddress = formatAddress(server.requestIP(req));
    const rejection = this.stopping !== null
      ? new HandshakeError("upstream_refused", 503, "relay is shutting down")
      : checkUpgradeRequest(req);
    if (rejection !== null) {
      this.countHandshake(String(rejection.status));
      this.logger.debug("request rejected", { client: clientAddress, status: rejection.status, error: rejection.message });
      return rejection.toResponse();
    }
    const admission = this.access.admit(req, server.requestIP(req)?.address ?? "", clientAddress);
    if (admission instanceof HandshakeError) {
      this.countHandshake(String(admission.status));
      return admission.toResponse();
    }
    this.pendingDials++;
    let upgraded = false;
    try {
      const response = await this.dialAndUpgrade(req, server, clientAddress, admission);
      upgraded = response === undefined;
      return response;
    } finally {
      this.pendingDials--;
      // A failed dial or upgrade gives its connection slot back at once;
      // an upgraded pair gives it back when it ends.
      if (!upgraded) admission.release();
    }
  }

  private async dialAndUpgrade(
    req: Request,
    server: Server<Pair>,
    clientAddress: string,
    admission: Admission,
  ): Promise<Response | undefined> {
    let target: string;
    try {
      target = upstreamUrl(this.upstreamBase as URL, admission.url);
    } catch {
      // Bun builds req.url from the Host header without checking it, so a
      // Host of "127.0.0.1:80x0" makes it an invalid URL.
      this.countHandshake("400");
      return new HandshakeError("bad_request", 400, "invalid request URL; check the Host header and the path").toResponse();
    }
    const offer = offeredProtocols(req.headers.get("sec-websocket-protocol"));
    let pair: Pair;
    try {
      pair = this.dial(req, target, clientAddress, offer, admission);
    } catch (error) {
      // Bun's WebSocket constructor rejects malformed or duplicate subprotocols.
      const message = `invalid Sec-WebSocket-Protocol offer: ${(error as Error).message}`;
      this.countHandshake("400");
      return new HandshakeError("bad_request", 400, message).toResponse();
    }
    let outcome = await this.waitForUpstream(req, pair);
    if (outcome?.code === "upstream_no_subprotocol") {
      // RFC 6455 section 4.2.2 lets a server pick none of the offered
      // subprotocols, but Bun's client (like a browser) fails such a
      // handshake. Dialling again without the offer lets the client, which
      // may accept "no subprotocol", decide for itself.
      // TODO: an upstream handshake of our own would avoid this second dial,
      // which the upstream sees as a connection that opened and dropped.
      this.logger.debug("upstream picked none of the offered subprotocols; dialling again without an offer", {
        client: clientAddress,
        upstream: pair.target,
      });
      pair = this.dial(req, target, clientAddress, [], admission);
      outcome = await this.waitForUpstream(req, pair);
    }
    if (outcome !== null) return this.rejectHandshake(outcome, pair);
    // Set before the upgrade: Bun 1.4.4 runs the `open` handler inside
    // server.upgrade(), and a pair can end there already.
    this.admissions.set(pair, admission);
    const response = this.upgrade(req, server, pair);
    if (response !== undefined) this.admissions.delete(pair);
    return response;
  }

  private dial(req: Request, target: string, clientAddress: string, offer: string[], admission: Admission): Pair {
    const clientIp = clientAddress.replace(/^\[?([^\]]*)\]?:\d+$/, "$1");
    const headers = forwardedHeaders(req, clientIp, this.config.serverTls !== undefined);
    admission.stripCredentials(headers);
    const upstream = new WebSocket(target, {
      protocols: offer.length > 0 ? offer : undefined,
      headers,
      perMessageDeflate: deflatesUpstreamHop(this.config.deflate),
      tls: this.config.upstreamTls,
    });
    const pair = new Pair(upstream, this.config, this.flow, this.pairEvents, this.config.onMessage);
    pair.clientAddress = clientAddress;
    pair.target = redactUrl(target);
    return pair;
  }

  /** Waits for the pair's upstream to open; returns the failure, or null once it is open. */
  private async waitForUpstream(req: Request, pair: Pair): Promise<HandshakeError | null> {
    try {
      await waitForOpen(pair.upstream, this.config.dialTimeoutMs, req.signal);
      pair.dialMs = pair.ageMs;
      return null;
    } catch (error) {
      return error as HandshakeError;
    }
  }

  private rejectHandshake(failure: HandshakeError, pair: Pair): Response {
    const fields = { client: pair.clientAddress, upstream: pair.target, status: failure.status };
    if (failure.code === "client_left") {
      // The client's own choice, not an operator problem.
      this.countHandshake("client_left");
      this.logger.info(failure.message, fields);
    } else {
      this.countHandshake(String(failure.status));
      this.logger.error(failure.code, failure.message, fields);
    }
    return failure.toResponse();
  }

  private upgrade(req: Request, server: Server<Pair>, pair: Pair): Response | undefined {
    // ServerWebSocket does not expose the negotiated extensions, so the
    // client's offer decides. Bun ignores the compress flag of send() on a
    // socket that did not negotiate deflate after all.
    pair.compressToClient = deflatesClientHop(this.config.deflate) && offersDeflate(req);
    const upgraded = server.upgrade(req, {
      data: pair,
      // Without this header Bun accepts the client's first offer by itself;
      // an empty value sends no header.
      headers: { "Sec-WebSocket-Protocol": pair.upstream.protocol },
    });
    if (!upgraded) {
      this.countHandshake("client_left");
      pair.abandon("client left before the handshake completed");
      return new HandshakeError("client_left", 400, "upgrade failed").toResponse();
    }
    this.countHandshake("101");
    return undefined;
  }

  private pairOpened(pair: Pair): void {
    this.counters.pairsTotal++;
    this.counters.dialSeconds.observe(pair.dialMs / 1000);
    this.open.add(pair);
    this.unreleased.add(pair);
    this.sweeper.add(pair);
    this.scheduleOutboundKeepAlive();
    this.logger.info("pair open", {
      pair: pair.id,
      client: pair.clientAddress,
      upstream: pair.target,
      subprotocol: pair.upstream.protocol,
      dial_ms: Math.round(pair.dialMs * 10) / 10,
    });
  }

  private pairEnded(pair: Pair, end: PairEnd): void {
    this.open.delete(pair);
    this.sweeper.delete(pair);
    this.admissions.get(pair)?.release();
    this.admissions.delete(pair);
    const causes = this.counters.endCauses;
    causes[end.cause] = (causes[end.cause] ?? 0) + 1;
    const codes = this.counters.closeCodes[end.closedBy];
    codes[end.code] = (codes[end.code] ?? 0) + 1;
    const c = pair.counters;
    addCounters(this.ended, c);
    this.logger.info("pair closed", {
      pair: pair.id,
      client: pair.clientAddress,
      upstream: pair.target,
      cause: end.cause,
      closed_by: end.closedBy,
      code: end.code,
      reason: end.reason,
      duration_ms: Math.round(pair.ageMs),
      messages_to_upstream: c.messagesToUpstream,
      bytes_to_upstream: c.bytesToUpstream,
      messages_to_client: c.messagesToClient,
      bytes_to_client: c.bytesToClient,
    });
  }

  private async drainAndStop(graceMs: number): Promise<void> {
    const server = this.server;
    if (server === null) return;
    this.logger.info("relay stopping", { open_pairs: this.open.size, grace_ms: graceMs });
    // New requests get 503 from now on. Dials already under way finish
    // first, because closing the listener makes Bun drop their requests.
    await this.waitUntil(() => this.pendingDials === 0, this.config.dialTimeoutMs);
    void server.stop(false);
    await this.waitUntil(() => this.open.size === 0, graceMs);
    for (const pair of [...this.open]) pair.close(CloseCode.GOING_AWAY, "relay shutting down", "shutdown");
    await this.waitUntil(() => this.unreleased.size === 0, STOP_CLOSE_WAIT_MS);
    // An upstream that sends no close frame back would keep its socket until
    // Bun's client gives up by itself (36 s in one run with Bun 1.4.4).
    for (const pair of this.unreleased) pair.upstream.terminate();
    await this.waitUntil(() => this.unreleased.size === 0, STOP_CLOSE_WAIT_MS);
    this.sweeper.stop();
    this.flow.stop();
    clearTimeout(this.outboundTimer);
    this.outboundKeepAlive = null;
    await server.stop(true);
    this.echo?.stop();
    this.logger.info("relay stopped", { pairs_total: this.counters.pairsTotal });
  }

  private async waitUntil(done: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!done() && performance.now() < deadline) await Bun.sleep(STOP_POLL_MS);
  }
}

export type { ServerWebSocket };
