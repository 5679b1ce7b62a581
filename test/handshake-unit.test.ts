/**
 * Unit tests of the pure handshake functions: the upstream URL, the headers
 * forwarded upstream, the subprotocol offer and the upgrade request checks.
 */

import { describe, expect, test } from "bun:test";
import { checkUpgradeRequest, forwardedHeaders, offeredProtocols, upstreamUrl } from "../src/handshake.ts";

const VALID_KEY = "dGhlIHNhbXBsZSBub25jZQ==";

/** Builds a valid upgrade request for `/`, with `headers` added to or replacing the defaults. */
function upgradeRequest(headers: Record<string, string> = {}, method = "GET"): Request {
  return new Request("http://relay.test/", {
    method,
    headers: {
      Host: "relay.test",
      Upgrade: "websocket",
      Connection: "Upgrade",
      "Sec-WebSocket-Key": VALID_KEY,
      "Sec-WebSocket-Version": "13",
      ...headers,
    },
  });
}

/** Builds a valid upgrade request for `/` without the header `name`. */
function upgradeRequestWithout(name: string): Request {
  const request = upgradeRequest();
  request.headers.delete(name);
  return request;
}

describe("upstreamUrl", () => {
  test("path and query -> appended to base path", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/base"), "http://relay.test/chat/room1?user=7&x=%20y");
    expect(url).toBe("ws://127.0.0.1:9000/base/chat/room1?user=7&x=%20y");
  });

  test("client parameter the base sets -> dropped", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/rpc?role=user"), "http://relay.test/x?role=admin&room=7");
    expect(url).toBe("ws://127.0.0.1:9000/rpc/x?role=user&room=7");
  });

  test("encoded name of a base parameter -> dropped too", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/?role=user"), "http://relay.test/?r%6Fle=admin");
    expect(url).toBe("ws://127.0.0.1:9000/?role=user");
  });

  test("credentials in the base -> kept for Basic authorization", () => {
    const url = upstreamUrl(new URL("ws://alice:s3cret@127.0.0.1:9000/rpc"), "http://relay.test/x");
    expect(url).toBe("ws://alice:s3cret@127.0.0.1:9000/rpc/x");
  });

  test("base with trailing slash -> one slash", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/base/"), "http://relay.test/chat");
    expect(url).toBe("ws://127.0.0.1:9000/base/chat");
  });

  test("request for root -> base path as given", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/base"), "http://relay.test/");
    expect(url).toBe("ws://127.0.0.1:9000/base");
  });

  test("base without path -> request path", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000"), "http://relay.test/chat");
    expect(url).toBe("ws://127.0.0.1:9000/chat");
  });

  test("both at root -> single slash", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000"), "http://relay.test/");
    expect(url).toBe("ws://127.0.0.1:9000/");
  });

  test("trailing slash of request -> kept", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/base"), "http://relay.test/chat/");
    expect(url).toBe("ws://127.0.0.1:9000/base/chat/");
  });

  test("encoded slash in path -> kept encoded", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/base"), "http://relay.test/a%2Fb");
    expect(url).toBe("ws://127.0.0.1:9000/base/a%2Fb");
  });

  test("base query and request query -> joined", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/base?key=a"), "http://relay.test/chat?user=7");
    expect(url).toBe("ws://127.0.0.1:9000/base/chat?key=a&user=7");
  });

  test("base query only -> kept", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/base?key=a"), "http://relay.test/chat");
    expect(url).toBe("ws://127.0.0.1:9000/base/chat?key=a");
  });

  test("empty request query -> no question mark", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/base"), "http://relay.test/chat?");
    expect(url).toBe("ws://127.0.0.1:9000/base/chat");
  });

  test("wss base -> wss url", () => {
    const url = upstreamUrl(new URL("wss://example.test/socket"), "http://relay.test/x");
    expect(url).toBe("wss://example.test/socket/x");
  });

  test("relative request url -> same result", () => {
    const url = upstreamUrl(new URL("ws://127.0.0.1:9000/base"), "/chat?user=7");
    expect(url).toBe("ws://127.0.0.1:9000/base/chat?user=7");
  });
});

describe("forwardedHeaders", () => {
  const request = upgradeRequest({
    Host: "chat.example.test:8080",
    Connection: "Upgrade, X-Hop",
    "X-Hop": "1",
    "Keep-Alive": "timeout=5",
    "Proxy-Authorization": "Basic cHJveHk6cHc=",
    "Proxy-Connection": "keep-alive",
    TE: "trailers",
    Trailer: "Expires",
    "Sec-WebSocket-Extensions": "permessage-deflate",
    "Sec-WebSocket-Protocol": "ocpp1.6",
    Cookie: "session=abc",
    Authorization: "Bearer t0k3n",
    Origin: "https://app.example.test",
    "User-Agent": "test-agent/1.0",
    "X-Trace-Id": "trace-42",
    Forwarded: "for=10.0.0.1;host=admin.internal",
    "X-Real-IP": "10.0.0.1",
  });
  const out = forwardedHeaders(request, "127.0.0.1", false);

  test.each([
    ["cookie", "session=abc"],
    ["authorization", "Bearer t0k3n"],
    ["origin", "https://app.example.test"],
    ["user-agent", "test-agent/1.0"],
    ["x-trace-id", "trace-42"],
  ])("end-to-end %s -> forwarded", (name, value) => {
    expect(out[name]).toBe(value);
  });

  test.each([
    "connection",
    "upgrade",
    "host",
    "x-hop",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "forwarded",
    "x-real-ip",
  ])("hop-by-hop or forgeable %s -> dropped", (name) => {
    expect(out[name]).toBeUndefined();
  });

  test("client ip -> X-Forwarded-For", () => {
    expect(out["x-forwarded-for"]).toBe("127.0.0.1");
  });

  test("plain listener -> X-Forwarded-Proto http", () => {
    expect(out["x-forwarded-proto"]).toBe("http");
  });

  test("secure listener -> X-Forwarded-Proto https", () => {
    expect(forwardedHeaders(request, "127.0.0.1", true)["x-forwarded-proto"]).toBe("https");
  });

  test("client Host -> X-Forwarded-Host", () => {
    expect(out["x-forwarded-host"]).toBe("chat.example.test:8080");
  });

  test("incoming X-Forwarded-For -> client ip appended", () => {
    const headers = forwardedHeaders(upgradeRequest({ "X-Forwarded-For": "203.0.113.9" }), "127.0.0.1", false);
    expect(headers["x-forwarded-for"]).toBe("203.0.113.9, 127.0.0.1");
  });

  test("blank X-Forwarded-For -> client ip only", () => {
    const headers = forwardedHeaders(upgradeRequest({ "X-Forwarded-For": " " }), "127.0.0.1", false);
    expect(headers["x-forwarded-for"]).toBe("127.0.0.1");
  });

  test("incoming X-Forwarded-Proto -> replaced", () => {
    const headers = forwardedHeaders(upgradeRequest({ "X-Forwarded-Proto": "https" }), "127.0.0.1", false);
    expect(headers["x-forwarded-proto"]).toBe("http");
  });

  test("incoming X-Forwarded-Host -> replaced by Host", () => {
    const headers = forwardedHeaders(upgradeRequest({ "X-Forwarded-Host": "spoofed.test" }), "127.0.0.1", false);
    expect(headers["x-forwarded-host"]).toBe("relay.test");
  });

  test("IPv6 client ip -> X-Forwarded-For as given", () => {
    const headers = forwardedHeaders(upgradeRequest(), "::1", false);
    expect(headers["x-forwarded-for"]).toBe("::1");
  });
});

describe("offeredProtocols", () => {
  test("null -> empty list", () => {
    expect(offeredProtocols(null)).toEqual([]);
  });

  test("empty string -> empty list", () => {
    expect(offeredProtocols("")).toEqual([]);
  });

  test("two offers -> both in order", () => {
    expect(offeredProtocols("ocpp1.6, ocpp2.0.1")).toEqual(["ocpp1.6", "ocpp2.0.1"]);
  });

  test("blanks and empty items -> skipped", () => {
    expect(offeredProtocols(" a ,, b ,")).toEqual(["a", "b"]);
  });
});

describe("checkUpgradeRequest", () => {
  test("valid upgrade -> null", () => {
    expect(checkUpgradeRequest(upgradeRequest())).toBeNull();
  });

  test("mixed-case tokens -> null", () => {
    const request = upgradeRequest({ Upgrade: "WebSocket", Connection: "keep-alive, UPGRADE" });
    expect(checkUpgradeRequest(request)).toBeNull();
  });

  test("no Upgrade header -> 426 not_websocket", () => {
    const error = checkUpgradeRequest(upgradeRequestWithout("upgrade"));
    expect(error?.status).toBe(426);
    expect(error?.code).toBe("not_websocket");
    expect(error?.headers).toEqual({ Upgrade: "websocket" });
  });

  test("Upgrade h2c -> 426", () => {
    expect(checkUpgradeRequest(upgradeRequest({ Upgrade: "h2c" }))?.status).toBe(426);
  });

  test("POST with upgrade headers -> 405", () => {
    const error = checkUpgradeRequest(upgradeRequest({}, "POST"));
    expect(error?.status).toBe(405);
    expect(error?.code).toBe("method_not_allowed");
    expect(error?.headers).toEqual({ Allow: "GET" });
  });

  test("Connection without upgrade -> 400", () => {
    const error = checkUpgradeRequest(upgradeRequest({ Connection: "keep-alive" }));
    expect(error?.status).toBe(400);
    expect(error?.code).toBe("bad_request");
  });

  test("version 8 -> 426 with version 13", () => {
    const error = checkUpgradeRequest(upgradeRequest({ "Sec-WebSocket-Version": "8" }));
    expect(error?.status).toBe(426);
    expect(error?.code).toBe("unsupported_version");
    expect(error?.headers).toEqual({ "Sec-WebSocket-Version": "13" });
  });

  test("missing version -> 426", () => {
    expect(checkUpgradeRequest(upgradeRequestWithout("sec-websocket-version"))?.status).toBe(426);
  });

  test("missing key -> 400", () => {
    const error = checkUpgradeRequest(upgradeRequestWithout("sec-websocket-key"));
    expect(error?.status).toBe(400);
    expect(error?.code).toBe("bad_request");
  });

  test.each([
    ["too short", "abc"],
    ["not base64", "!!!!!!!!!!!!!!!!!!!!!!=="],
    ["20 bytes", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="],
  ])("key %s -> 400", (_case, key) => {
    expect(checkUpgradeRequest(upgradeRequest({ "Sec-WebSocket-Key": key }))?.status).toBe(400);
  });

  test("error response -> status, headers and text body", async () => {
    const response = checkUpgradeRequest(upgradeRequest({ "Sec-WebSocket-Version": "8" }))?.toResponse();
    expect(response?.status).toBe(426);
    expect(response?.headers.get("sec-websocket-version")).toBe("13");
    expect(await response?.text()).toBe('unsupported Sec-WebSocket-Version "8"; only 13 is supported\n');
  });
});
