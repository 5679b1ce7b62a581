/**
 * Log lines: error folding, redaction of URLs in Bun's error messages, and
 * the text format.
 */

import { describe, expect, test } from "bun:test";
import { createLogger } from "../src/log.ts";
import { TestClient, recordingLogger, startRelay, waitFor } from "./helpers/peers.ts";
import { Opcode, startRawUpstream } from "./helpers/raw.ts";

function capture(options: Parameters<typeof createLogger>[0] = {}): { lines: string[]; logger: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  return { lines, logger: createLogger({ ...options, write: (line) => void lines.push(line) }) };
}

describe("error folding", () => {
  test("three errors in one window -> one line, then a count", async () => {
    const { lines, logger } = capture({ repeatWindowMs: 100 });
    logger.error("upstream_refused", "first", { n: 1 });
    logger.error("upstream_refused", "second", { n: 2 });
    logger.error("upstream_refused", "third", { n: 3 });
    expect(lines.length).toBe(1);
    expect(JSON.parse(lines[0] as string)).toMatchObject({ level: "error", msg: "first", kind: "upstream_refused" });
    expect(await waitFor(() => lines.length === 2, 2000)).toBe(true);
    expect(JSON.parse(lines[1] as string)).toMatchObject({ msg: "third", n: 3, repeated: 2 });
  });

  test("different kinds -> not folded together", () => {
    const { lines, logger } = capture();
    logger.error("a", "one");
    logger.error("b", "two");
    expect(lines.length).toBe(2);
  });

  test("below the level -> not written", () => {
    const { lines, logger } = capture({ level: "warn" });
    logger.info("quiet");
    logger.warn("loud");
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual(["loud"]);
  });

  test("text format -> key=value with quoted strings", () => {
    const { lines, logger } = capture({ format: "text" });
    logger.info("pair open", { client: 'a "b"', code: 1000 });
    expect(lines[0]).toMatch(/ INFO pair open client="a \\"b\\"" code=1000\n$/);
  });
});

describe("redaction", () => {
  test("upstream failure after open -> error line without the query", async () => {
    await using upstream = await startRawUpstream((connection) => {
      connection.write(Buffer.from([0x81, 0x02, 0xff, 0xfe]));
    });
    const logger = recordingLogger();
    await using relay = await startRelay({ upstream: `${upstream.url}/?key=up-s3cret`, logger });
    await using client = TestClient.bun(`${relay.url}/?token=s3cret`);
    const closed = await client.closed;
    expect(closed.code).toBe(1014);
    expect(await waitFor(() => logger.records.some((r) => r.level === "error"))).toBe(true);
    const text = JSON.stringify(logger.records);
    expect(text).toContain("upstream connection failed");
    expect(text).not.toContain("s3cret");
    expect(upstream.connections[0]?.frames.some((f) => f.opcode === Opcode.CLOSE)).toBe(true);
  });
});
