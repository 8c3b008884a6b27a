// A minimal MQTT 3.1.1 client over a browser WebSocket, enough for a dashboard that only
// listens: CONNECT (clean session), SUBSCRIBE, receiving PUBLISH at QoS 0, 1 (and 2), keepalive
// pings, and reconnecting with backoff (a fresh URL per attempt, since presigned URLs expire).
//
// MQTT packets and WebSocket messages are independent: one message may carry several packets
// or part of one, so incoming bytes are buffered and cut into packets by their fixed header.

const CONNACK_REASONS = {
  1: "unacceptable protocol version",
  2: "client identifier rejected",
  3: "server unavailable",
  4: "bad user name or password",
  5: "not authorized",
};

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** The remaining-length varint of `n` (0 ≤ n < 2^28), 1–4 bytes. */
export function encodeRemainingLength(n) {
  if (!(n >= 0 && n < 268435456)) throw new RangeError(`remaining length ${n} out of range`);
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

/**
 * Decodes the remaining length at `offset` (the byte after the packet's first byte).
 * Returns `{ value, bytes }`, `null` when more bytes are needed, or throws on a malformed
 * length (more than four bytes).
 */
export function decodeRemainingLength(buf, offset, end = buf.length) {
  let value = 0;
  let mult = 1;
  for (let i = 0; i < 4; i++) {
    if (offset + i >= end) return null;
    const b = buf[offset + i];
    value += (b & 0x7f) * mult;
    if ((b & 0x80) === 0) return { value, bytes: i + 1 };
    mult *= 128;
  }
  throw new Error("malformed remaining length");
}

function mqttString(text) {
  const b = utf8.encode(text);
  if (b.length > 65535) throw new RangeError("string too long for MQTT");
  return [b.length >> 8, b.length & 0xff, ...b];
}

/** A packet: first byte, then the remaining length, then `body` (an array of bytes). */
function packet(first, body) {
  return new Uint8Array([first, ...encodeRemainingLength(body.length), ...body]);
}

/** CONNECT, MQTT 3.1.1, clean session, no will, no user name. */
export function connectPacket(clientId, keepaliveSecs) {
  const body = [
    ...mqttString("MQTT"),
    4, // protocol level 3.1.1
    0x02, // clean session
    (keepaliveSecs >> 8) & 0xff,
    keepaliveSecs & 0xff,
    ...mqttString(clientId),
  ];
  return packet(0x10, body);
}

/** SUBSCRIBE of `[{ topic, qos }]` with a packet id. */
export function subscribePacket(packetId, subs) {
  const body = [packetId >> 8, packetId & 0xff];
  for (const s of subs) body.push(...mqttString(s.topic), s.qos & 3);
  return packet(0x82, body);
}

/**
 * Cuts a byte stream into MQTT packets: `push(bytes)` returns the complete packets now
 * available as `{ type, flags, body }` (body a Uint8Array view), keeping any partial packet.
 */
export class PacketReader {
  constructor(maxPacket = 16 * 1024 * 1024) {
    this.buf = new Uint8Array(4096);
    this.start = 0;
    this.end = 0;
    this.maxPacket = maxPacket;
  }

  push(chunk) {
    const bytes = chunk instanceof Uint8Array ? chunk : new Uint8Array(chunk);
    this.append(bytes);
    const out = [];
    for (;;) {
      const avail = this.end - this.start;
      if (avail < 2) break;
      const len = decodeRemainingLength(this.buf, this.start + 1, this.end);
      if (len === null) break;
      if (len.value > this.maxPacket) throw new Error(`packet of ${len.value} bytes is too large`);
      const total = 1 + len.bytes + len.value;
      if (avail < total) break;
      const first = this.buf[this.start];
      const bodyStart = this.start + 1 + len.bytes;
      // Copied: the buffer is reused once consumed.
      out.push({ type: first >> 4, flags: first & 15, body: this.buf.slice(bodyStart, bodyStart + len.value) });
      this.start += total;
    }
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
    }
    return out;
  }

  append(bytes) {
    if (this.end + bytes.length > this.buf.length) {
      const live = this.end - this.start;
      if (live + bytes.length <= this.buf.length && this.start > 0) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        let size = this.buf.length;
        while (size < live + bytes.length) size *= 2;
        const grown = new Uint8Array(size);
        grown.set(this.buf.subarray(this.start, this.end));
        this.buf = grown;
      }
      this.start = 0;
      this.end = live;
    }
    this.buf.set(bytes, this.end);
    this.end += bytes.length;
  }
}

/** Parses a PUBLISH packet: `{ topic, qos, retain, dup, packetId, payload }`. */
export function parsePublish(flags, body) {
  const qos = (flags >> 1) & 3;
  if (body.length < 2) throw new Error("PUBLISH too short");
  const tlen = (body[0] << 8) | body[1];
  let p = 2 + tlen;
  if (p > body.length) throw new Error("PUBLISH topic overruns the packet");
  const topic = utf8Decoder.decode(body.subarray(2, p));
  let packetId = 0;
  if (qos > 0) {
    if (p + 2 > body.length) throw new Error("PUBLISH packet id missing");
    packetId = (body[p] << 8) | body[p + 1];
    p += 2;
  }
  return { topic, qos, retain: (flags & 1) === 1, dup: (flags & 8) === 8, packetId, payload: body.subarray(p) };
}

/**
 * The client.
 *
 * options:
 * - `url`: `() => string | Promise<string>`, called for every attempt (a fresh presigned URL);
 * - `clientId`;
 * - `subscriptions`: `[{ topic, qos }]`, (re)subscribed after every CONNACK;
 * - `keepalive`: seconds (default 30);
 * - `onMessage(topic, payloadBytes, packet)`;
 * - `onStatus(text)`: `connecting…`, `live`, `offline: <reason>`;
 * - `onSubscribed(results)`: `[{ topic, qos, granted }]` (`granted` 0x80: refused);
 * - `onError(text)`: problems that do not end the connection (a refused subscription).
 */
export class MqttClient {
  constructor(options) {
    this.opt = Object.assign({ keepalive: 30, subscriptions: [] }, options);
    this.ws = null;
    this.stopped = true;
    this.backoff = 1000;
    this.retryTimer = 0;
    this.pingTimer = 0;
    this.nextId = 1;
    this.pendingSubs = new Map();
    this.connected = false;
    this.status = "";
    this.attempt = 0;
  }

  /** Starts connecting (and keeps reconnecting until `stop`). */
  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
  }

  /** Disconnects for good. */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.teardown("stopped", true);
  }

  setStatus(text) {
    if (text === this.status) return;
    this.status = text;
    try {
      this.opt.onStatus?.(text);
    } catch (e) {
      console.error("onStatus failed", e);
    }
  }

  async connect() {
    if (this.stopped) return;
    const attempt = ++this.attempt;
    this.setStatus("connecting…");
    let url;
    try {
      url = await this.opt.url();
    } catch (e) {
      this.fail(`cannot sign the URL: ${e?.message || e}`);
      return;
    }
    if (this.stopped || attempt !== this.attempt) return;
    let ws;
    try {
      ws = new WebSocket(url, ["mqtt"]);
    } catch (e) {
      this.fail(`cannot open the WebSocket: ${e?.message || e}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.reader = new PacketReader();
    this.connected = false;
    this.closeReason = "";
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.send(connectPacket(this.opt.clientId, this.opt.keepalive));
      this.lastReceived = Date.now();
      this.startPings();
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.lastReceived = Date.now();
      let packets;
      try {
        packets = this.reader.push(typeof ev.data === "string" ? utf8.encode(ev.data) : ev.data);
      } catch (e) {
        this.fail(`protocol error: ${e.message}`);
        return;
      }
      for (const p of packets) {
        if (ws !== this.ws) return;
        this.handle(p);
      }
    };
    ws.onerror = () => {
      if (ws !== this.ws) return;
      // The close event follows with the code; only remember that it was an error.
      this.closeReason ||= this.connected ? "connection error" : "cannot connect";
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      const why = this.closeReason || (ev.reason ? ev.reason : `connection closed (code ${ev.code})`);
      this.fail(why);
    };
  }

  handle(p) {
    switch (p.type) {
      case 2: {
        // CONNACK
        const rc = p.body.length >= 2 ? p.body[1] : 255;
        if (rc !== 0) {
          this.fail(`refused: ${CONNACK_REASONS[rc] || `CONNACK return code ${rc}`}`, true);
          return;
        }
        this.connected = true;
        this.backoff = 1000;
        this.subscribe();
        this.setStatus("live");
        break;
      }
      case 3: {
        // PUBLISH
        let msg;
        try {
          msg = parsePublish(p.flags, p.body);
        } catch (e) {
          this.fail(`protocol error: ${e.message}`);
          return;
        }
        if (msg.qos === 1) this.send(new Uint8Array([0x40, 2, msg.packetId >> 8, msg.packetId & 0xff]));
        else if (msg.qos === 2) this.send(new Uint8Array([0x50, 2, msg.packetId >> 8, msg.packetId & 0xff]));
        try {
          this.opt.onMessage?.(msg.topic, msg.payload, msg);
        } catch (e) {
          console.error("onMessage failed", e);
        }
        break;
      }
      case 6: {
        // PUBREL (of a QoS 2 message): complete it.
        if (p.body.length >= 2) this.send(new Uint8Array([0x70, 2, p.body[0], p.body[1]]));
        break;
      }
      case 9: {
        // SUBACK
        if (p.body.length < 2) break;
        const id = (p.body[0] << 8) | p.body[1];
        const subs = this.pendingSubs.get(id);
        this.pendingSubs.delete(id);
        if (!subs) break;
        const results = subs.map((s, i) => ({ topic: s.topic, qos: s.qos, granted: p.body[2 + i] ?? 0x80 }));
        const refused = results.filter((r) => r.granted === 0x80).map((r) => r.topic);
        if (refused.length) this.error(`subscription refused: ${refused.join(", ")}`);
        try {
          this.opt.onSubscribed?.(results);
        } catch (e) {
          console.error("onSubscribed failed", e);
        }
        break;
      }
      case 13: // PINGRESP
        this.pingOutstanding = 0;
        break;
      default:
        // PUBACK, UNSUBACK...: nothing to do for a client that publishes nothing.
        break;
    }
  }

  error(text) {
    try {
      this.opt.onError?.(text);
    } catch (e) {
      console.error("onError failed", e);
    }
  }

  subscribe() {
    const subs = this.opt.subscriptions;
    if (!subs.length) return;
    const id = this.nextId;
    this.nextId = (this.nextId % 65535) + 1;
    this.pendingSubs.set(id, subs);
    this.send(subscribePacket(id, subs));
  }

  send(bytes) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    try {
      ws.send(bytes);
      this.lastSent = Date.now();
      return true;
    } catch {
      return false;
    }
  }

  startPings() {
    clearInterval(this.pingTimer);
    this.lastSent = Date.now();
    this.pingOutstanding = 0;
    const ka = this.opt.keepalive * 1000;
    this.pingTimer = setInterval(() => {
      const now = Date.now();
      if (this.pingOutstanding && now - this.pingOutstanding > ka) {
        this.fail("no answer to PINGREQ");
        return;
      }
      if (!this.connected && now - this.lastReceived > ka) {
        this.fail("no CONNACK");
        return;
      }
      // Well inside the keepalive (timers in a background tab may fire late).
      if (now - this.lastSent >= ka / 2 && !this.pingOutstanding) {
        if (this.send(new Uint8Array([0xc0, 0]))) this.pingOutstanding = now;
      }
    }, Math.min(5000, ka / 4));
  }

  teardown(reason, graceful) {
    clearInterval(this.pingTimer);
    this.pingTimer = 0;
    const ws = this.ws;
    this.ws = null;
    this.connected = false;
    this.pendingSubs.clear();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        if (graceful && ws.readyState === WebSocket.OPEN) ws.send(new Uint8Array([0xe0, 0]));
        ws.close(1000);
      } catch {
        /* already closing */
      }
    }
    if (graceful) this.setStatus(`offline: ${reason}`);
  }

  /** Ends this attempt and schedules the next one (1 s, 2 s, 4 s ... at most 15 s). */
  fail(reason, slow = false) {
    this.teardown(reason, false);
    this.setStatus(`offline: ${reason}`);
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    const delay = slow ? Math.max(this.backoff, 5000) : this.backoff;
    this.backoff = Math.min(this.backoff * 2, 15000);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }
}
