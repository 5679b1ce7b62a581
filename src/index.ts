/**
 * wsbridge as a library: a relay factory, a bridge between two open
 * sockets, a keepalive helper and a listener with TCP keepalive.
 */

export { createRelay, type Relay, type RelayStats } from "./relay.ts";
export { type DeflateMode, type RelayOptions, ConfigError, parseDuration, parseSize } from "./config.ts";
export { bridge, bridgeHandlers, dialUpstream, type Bridge, type BridgeData, type BridgeOptions } from "./bridge.ts";
export { keepAlive, type KeepAliveHandle } from "./keepalive.ts";
export { serveWithKeepAlive } from "./listen.ts";
export { setListenerKeepAlive, type KeepAliveResult } from "./tcp-keepalive.ts";
export { CloseCode, type EndCause, isSendableCloseCode } from "./close.ts";
export { HandshakeError, type HandshakeErrorCode } from "./handshake.ts";
export type { UpstreamTls } from "./tls.ts";
export type { Direction, Message, MessageHook, PairEnd, PairCounters } from "./pair.ts";
export { createLogger, silentLogger, type Logger, type LogFields } from "./log.ts";
