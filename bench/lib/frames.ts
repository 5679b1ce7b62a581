/**
 * WebSocket framing for the load generator (RFC 6455 section 5.2): masked
 * client frames built from templates, and a reader of server frames that
 * parses headers only. A data frame's payload is skipped except for its
 * first 4 bytes, which carry the message's sequence number.
 */

export const Opcode = {
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa,
} as const;

/**
 * One masking key for every frame. RFC 6455 requires clients to pick a fresh
 * random key per frame, which protects proxies from crafted payloads. A
 * server cannot check that, and a fixed key lets the generator mask each
 * template once.
 */
export const MASK_KEY = Uint8Array.of(0x3d, 0xa1, 0x5e, 0xc7);

/** Bytes at the start of each payload that hold its sequence number (uint32, little-endian). */
export const SEQUENCE_BYTES = 4;

const FIN = 0x80;
const MASKED = 0x80;
const LENGTH_16 = 126;
const LENGTH_64 = 127;
const MAX_LENGTH_7 = 125;
const MAX_LENGTH_16 = 0xffff;
const TWO_TO_32 = 2 ** 32;
const MAX_SERVER_HEADER_BYTES = 10;

/** Length of a client frame header, masking key included. */
export function clientHeaderLength(payloadLength: number): number {
  if (payloadLength <= MAX_LENGTH_7) return 2 + MASK_KEY.length;
  if (payloadLength <= MAX_LENGTH_16) return 4 + MASK_KEY.length;
  return 10 + MASK_KEY.length;
}

/** Encodes one masked client frame carrying `payload`. */
export function encodeClientFrame(opcode: number, payload: Uint8Array): Uint8Array {
  const headerLength = clientHeaderLength(payload.length);
  const frame = new Uint8Array(headerLength + payload.length);
  frame[0] = FIN | opcode;
  if (payload.length <= MAX_LENGTH_7) {
    frame[1] = MASKED | payload.length;
  } else if (payload.length <= MAX_LENGTH_16) {
    frame[1] = MASKED | LENGTH_16;
    frame[2] = payload.length >>> 8;
    frame[3] = payload.length & 0xff;
  } else {
    frame[1] = MASKED | LENGTH_64;
    const view = new DataView(frame.buffer);
    view.setUint32(2, Math.floor(payload.length / TWO_TO_32));
    view.setUint32(6, payload.length >>> 0);
  }
  frame.set(MASK_KEY, headerLength - MASK_KEY.length);
  for (let i = 0; i < payload.length; i++) {
    frame[headerLength + i] = (payload[i] as number) ^ (MASK_KEY[i & 3] as number);
  }
  return frame;
}

/** Builds a close frame payload holding only the 2-byte status code. */
export function closePayload(code: number): Uint8Array {
  return Uint8Array.of(code >>> 8, code & 0xff);
}

/**
 * A binary message of `size` bytes ready to send many times: the frame is
 * masked once, and `writeTo` only patches the masked sequence number.
 */
export class MessageTemplate {
  readonly frame: Uint8Array;
  private readonly payloadOffset: number;

  constructor(readonly size: number) {
    if (size < SEQUENCE_BYTES) throw new RangeError(`message size ${size} is below ${SEQUENCE_BYTES} bytes`);
    const payload = new Uint8Array(size);
    for (let i = SEQUENCE_BYTES; i < size; i++) payload[i] = i & 0xff;
    this.frame = encodeClientFrame(Opcode.BINARY, payload);
    this.payloadOffset = this.frame.length - size;
  }

  /** Copies the frame into `target` at `offset` with sequence number `seq`; returns the end offset. */
  writeTo(target: Uint8Array, offset: number, seq: number): number {
    target.set(this.frame, offset);
    const at = offset + this.payloadOffset;
    target[at] = (seq & 0xff) ^ (MASK_KEY[0] as number);
    target[at + 1] = ((seq >>> 8) & 0xff) ^ (MASK_KEY[1] as number);
    target[at + 2] = ((seq >>> 16) & 0xff) ^ (MASK_KEY[2] as number);
    target[at + 3] = ((seq >>> 24) & 0xff) ^ (MASK_KEY[3] as number);
    return offset + this.frame.length;
  }
}

/** Receives what a `FrameReader` parses. */
export interface FrameSink {
  /** A whole data message; `seq` is its first 4 payload bytes, or -1 when it is shorter. */
  onData(opcode: number, length: number, seq: number): void;
  /** A ping, pong or close frame with its payload. */
  onControl(opcode: number, payload: Uint8Array): void;
  /** A frame the generator does not handle: masked, fragmented or reserved bits set. */
  onProtocolError(message: string): void;
}

/** Parses server frames from a byte stream, skipping data payloads. */
export class FrameReader {
  private readonly header = new Uint8Array(MAX_SERVER_HEADER_BYTES);
  private headerFilled = 0;
  private headerLength = 2;
  private inPayload = false;
  private opcode = 0;
  private length = 0;
  private remaining = 0;
  private seq = 0;
  private seqFilled = 0;
  private control: Uint8Array | null = null;

  constructor(private readonly sink: FrameSink) {}

  push(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      i = this.inPayload ? this.readPayload(chunk, i) : this.readHeader(chunk, i);
    }
  }

  private readHeader(chunk: Uint8Array, start: number): number {
    let i = start;
    while (i < chunk.length && this.headerFilled < this.headerLength) {
      this.header[this.headerFilled++] = chunk[i++] as number;
      if (this.headerFilled === 2) this.headerLength = this.lengthOfHeader();
    }
    if (this.headerFilled === this.headerLength) this.startFrame();
    return i;
  }

  private lengthOfHeader(): number {
    const code = (this.header[1] as number) & 0x7f;
    if (code === LENGTH_16) return 4;
    if (code === LENGTH_64) return 10;
    return 2;
  }

  private startFrame(): void {
    const first = this.header[0] as number;
    const second = this.header[1] as number;
    this.headerFilled = 0;
    this.headerLength = 2;
    if ((first & 0x70) !== 0 || (second & MASKED) !== 0 || (first & FIN) === 0) {
      this.sink.onProtocolError(`unexpected frame header bytes ${first.toString(16)} ${second.toString(16)}`);
    }
    this.opcode = first & 0x0f;
    this.length = this.payloadLength(second & 0x7f);
    this.remaining = this.length;
    this.seq = 0;
    this.seqFilled = 0;
    this.control = this.opcode >= Opcode.CLOSE ? new Uint8Array(this.length) : null;
    if (this.length === 0) this.finishFrame();
    else this.inPayload = true;
  }

  private payloadLength(code: number): number {
    const h = this.header;
    if (code === LENGTH_16) return ((h[2] as number) << 8) | (h[3] as number);
    if (code !== LENGTH_64) return code;
    const high = (((h[2] as number) << 24) | ((h[3] as number) << 16) | ((h[4] as number) << 8) | (h[5] as number)) >>> 0;
    const low = (((h[6] as number) << 24) | ((h[7] as number) << 16) | ((h[8] as number) << 8) | (h[9] as number)) >>> 0;
    return high * TWO_TO_32 + low;
  }

  private readPayload(chunk: Uint8Array, start: number): number {
    const take = Math.min(this.remaining, chunk.length - start);
    if (this.control !== null) {
      this.control.set(chunk.subarray(start, start + take), this.length - this.remaining);
    } else {
      for (let k = 0; k < take && this.seqFilled < SEQUENCE_BYTES; k++) {
        this.seq += (chunk[start + k] as number) * 2 ** (8 * this.seqFilled++);
      }
    }
    this.remaining -= take;
    if (this.remaining === 0) {
      this.inPayload = false;
      this.finishFrame();
    }
    return start + take;
  }

  private finishFrame(): void {
    if (this.control !== null) {
      this.sink.onControl(this.opcode, this.control);
      this.control = null;
      return;
    }
    this.sink.onData(this.opcode, this.length, this.length >= SEQUENCE_BYTES ? this.seq : -1);
  }
}
