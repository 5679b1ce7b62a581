/**
 * Prometheus text exposition (format 0.0.4) of the relay's counters. The hot
 * path only bumps plain counters on each pair; everything here runs when
 * `/metrics` is scraped.
 */

import type { RelayStats } from "./relay.ts";

/** A cumulative histogram with fixed upper bounds, in seconds. */
export class Histogram {
  readonly counts: number[];
  count = 0;
  sum = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = bounds.map(() => 0);
  }

  observe(value: number): void {
    this.count++;
    this.sum += value;
    const bounds = this.bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= (bounds[i] as number)) {
        this.counts[i] = (this.counts[i] ?? 0) + 1;
        return;
      }
    }
  }

  /** Returns a plain copy, safe to send between processes. */
  snapshot(): HistogramSnapshot {
    return { bounds: [...this.bounds], counts: [...this.counts], count: this.count, sum: this.sum };
  }
}

export interface HistogramSnapshot {
  bounds: number[];
  /** Observations per bucket, not cumulative; values above the last bound are only in `count`. */
  counts: number[];
  count: number;
  sum: number;
}

/** Upper bounds for the dial time, in seconds: 1 ms to 10 s. */
export const DIAL_SECONDS_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Upper bounds for pong round trips, in seconds: 0.1 ms to 10 s. */
export const RTT_SECONDS_BOUNDS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10];

export type Labels = Record<string, string>;

function escapeLabel(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"');
}

function formatLabels(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

/** Builds one exposition document; each metric family is declared once. */
export class Exposition {
  private readonly lines: string[] = [];
  private readonly declared = new Set<string>();

  private declare(name: string, type: "counter" | "gauge" | "histogram", help: string): void {
    if (this.declared.has(name)) return;
    this.declared.add(name);
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  }

  counter(name: string, help: string, value: number, labels: Labels = {}): this {
    this.declare(name, "counter", help);
    this.lines.push(`${name}${formatLabels(labels)} ${formatValue(value)}`);
    return this;
  }

  gauge(name: string, help: string, value: number, labels: Labels = {}): this {
    this.declare(name, "gauge", help);
    this.lines.push(`${name}${formatLabels(labels)} ${formatValue(value)}`);
    return this;
  }

  histogram(name: string, help: string, histogram: HistogramSnapshot, labels: Labels = {}): this {
    this.declare(name, "histogram", help);
    let cumulative = 0;
    histogram.bounds.forEach((bound, i) => {
      cumulative += histogram.counts[i] ?? 0;
      this.lines.push(`${name}_bucket${formatLabels({ ...labels, le: String(bound) })} ${cumulative}`);
    });
    this.lines.push(`${name}_bucket${formatLabels({ ...labels, le: "+Inf" })} ${histogram.count}`);
    this.lines.push(`${name}_sum${formatLabels(labels)} ${formatValue(histogram.sum)}`);
    this.lines.push(`${name}_count${formatLabels(labels)} ${histogram.count}`);
    return this;
  }

  toString(): string {
    return `${this.lines.join("\n")}\n`;
  }
}

/** One relay's stats and the labels that tell it apart (a worker id, say). */
export interface LabelledStats {
  labels: Labels;
  stats: RelayStats;
}

const DIRECTIONS = [
  { label: "client_to_upstream", messages: "messagesToUpstream", text: "textMessagesToUpstream", bytes: "bytesToUpstream" },
  { label: "upstream_to_client", messages: "messagesToClient", text: "textMessagesToClient", bytes: "bytesToClient" },
] as const;

const READERS = [
  { label: "client", pauses: "clientPauses", pausedMs: "clientPausedMs" },
  { label: "upstream", pauses: "upstreamPauses", pausedMs: "upstreamPausedMs" },
] as const;

const SIDES = ["client", "upstream"] as const;

/**
 * Renders the relay metrics of one or more relays (one per worker) as one
 * exposition document, every family once with one sample per relay.
 */
export function renderRelayMetrics(entries: LabelledStats[]): string {
  const out = new Exposition();
  const each = (fn: (stats: RelayStats, labels: Labels) => void): void => {
    for (const { stats, labels } of entries) fn(stats, labels);
  };
  each((s, l) => out.gauge("wsbridge_ready", "1 while new connections are accepted, 0 while stopping.", s.ready ? 1 : 0, l));
  each((s, l) => out.gauge("wsbridge_pairs_active", "Pairs with both sockets open.", s.activePairs, l));
  each((s, l) => out.counter("wsbridge_pairs_total", "Pairs opened since start.", s.pairsTotal, l));
  each((s, l) => {
    for (const [outcome, n] of Object.entries(s.handshakes)) {
      out.counter("wsbridge_handshakes_total", "Upgrade requests by outcome: the HTTP status sent, or client_left.", n, { ...l, outcome });
    }
  });
  for (const family of ["messages", "bytes"] as const) {
    const name = `wsbridge_${family}_total`;
    const help = family === "messages" ? "Messages forwarded, by direction and opcode." : "Payload bytes forwarded, by direction.";
    each((s, l) => {
      for (const d of DIRECTIONS) {
        const text = s[d.text];
        const total = s[d.messages];
        if (family === "messages") {
          out.counter(name, help, text, { ...l, direction: d.label, opcode: "text" });
          out.counter(name, help, total - text, { ...l, direction: d.label, opcode: "binary" });
        } else {
          out.counter(name, help, s[d.bytes], { ...l, direction: d.label });
        }
      }
    });
  }
  each((s, l) => {
    for (const [cause, n] of Object.entries(s.endCauses)) {
      out.counter("wsbridge_pair_ends_total", "Pairs ended, by cause.", n ?? 0, { ...l, cause });
    }
  });
  each((s, l) => {
    for (const [side, codes] of Object.entries(s.closeCodes)) {
      for (const [code, n] of Object.entries(codes)) {
        out.counter("wsbridge_close_codes_total", "Close codes that started a teardown, by the side that closed.", n, { ...l, side, code });
      }
    }
  });
  each((s, l) => {
    for (const r of READERS) {
      out.counter("wsbridge_backpressure_pauses_total", "Times a reader was paused because the queue toward the other side was full.", s[r.pauses], { ...l, reader: r.label });
    }
  });
  each((s, l) => {
    for (const r of READERS) {
      out.counter("wsbridge_backpressure_paused_seconds_total", "Time readers spent paused for backpressure.", s[r.pausedMs] / 1000, { ...l, reader: r.label });
    }
  });
  each((s, l) => out.histogram("wsbridge_upstream_dial_seconds", "Time from dialling the upstream to its open.", s.dialSeconds, l));
  each((s, l) => {
    for (const side of SIDES) {
      out.histogram("wsbridge_pong_rtt_seconds", "Round trip from a keepalive ping to its pong.", s.pongRtt[side], { ...l, side });
    }
  });
  each((s, l) => {
    for (const side of SIDES) {
      out.counter("wsbridge_missed_pongs_total", "Sides closed because they missed a pong.", s.missedPongs[side], { ...l, side });
    }
  });
  return out.toString();
}
