/**
 * Flow control shared by all pairs: one poll timer that resumes paused
 * readers once the queue they were waiting on has fallen below the low-water
 * mark.
 *
 * The relay pauses a reader in two cases. When `ServerWebSocket.send()`
 * returns -1 toward the client, it pauses the upstream reader; Bun's `drain`
 * event usually resumes it, but the poll covers a drain that fires while the
 * queue is still above the low-water mark and never fires again. When the
 * upstream `WebSocket.bufferedAmount` passes the high-water mark, it pauses the
 * client reader; Bun's client has no drain event at all, so only the poll
 * resumes it.
 */

/** Poll period while any reader is paused. Loopback drains ~4 MiB per 4 ms (Bun 1.4.4). */
export const FLOW_POLL_INTERVAL_MS = 10;

/** A pair as the poller sees it. */
export interface FlowControlled {
  /** Resumes whichever reader may resume; returns true while one is still paused. */
  resumeIfDrained(): boolean;
}

/** Runs one timer, only while at least one pair has a paused reader. */
export class FlowPoller {
  private readonly paused = new Set<FlowControlled>();
  private timer: ReturnType<typeof setInterval> | undefined;

  /** Starts polling `pair` until its readers are all resumed. */
  watch(pair: FlowControlled): void {
    this.paused.add(pair);
    if (this.timer === undefined) {
      this.timer = setInterval(this.poll, FLOW_POLL_INTERVAL_MS);
    }
  }

  /** Stops polling `pair`, e.g. because it closed. */
  forget(pair: FlowControlled): void {
    this.paused.delete(pair);
    if (this.paused.size === 0) this.stop();
  }

  /** Number of pairs with a paused reader. */
  get size(): number {
    return this.paused.size;
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  private readonly poll = (): void => {
    for (const pair of this.paused) {
      if (!pair.resumeIfDrained()) this.paused.delete(pair);
    }
    if (this.paused.size === 0) this.stop();
  };
}
