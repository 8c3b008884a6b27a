// AWS Signature Version 4 for the dashboard, with its own SHA-256 and HMAC-SHA256.
//
// Everything here is synchronous and works on Uint8Array: `crypto.subtle` only exists on
// secure origins (HTTPS or localhost), and the dashboard must also work when Shoal is reached
// over plain HTTP on a LAN address.
//
// Canonical forms follow what Shoal verifies (botocore's rules for non-S3 services):
// * the canonical URI is the path *as sent* (its segments already percent-encoded), encoded
//   once more, keeping `/`;
// * the canonical query decodes nothing (we build it from raw names and values), encodes both
//   strictly (`A-Za-z0-9-_.~` kept, everything else `%XX` upper case) and sorts by name, then
//   value;
// * header-signed requests sign `host`, `x-amz-date`, `x-amz-content-sha256` (and
//   `content-type` when there is a body); presigned URLs sign `host` only, over an empty
//   payload (botocore's `SigV4QueryAuth`).

const REGION = "us-east-1";
const ALGORITHM = "AWS4-HMAC-SHA256";
const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// ---------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4)
// ---------------------------------------------------------------------------------------------

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

const W = new Uint32Array(64);

/** Compresses the 64-byte blocks of `data` from `offset` into the state `h`. */
function compress(h, data, offset, end) {
  for (let p = offset; p < end; p += 64) {
    for (let i = 0; i < 16; i++) {
      const j = p + i * 4;
      W[i] = (data[j] << 24) | (data[j + 1] << 16) | (data[j + 2] << 8) | data[j + 3];
    }
    for (let i = 16; i < 64; i++) {
      const a = W[i - 15];
      const b = W[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + K[i] + W[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h[0] = (h[0] + a) | 0;
    h[1] = (h[1] + b) | 0;
    h[2] = (h[2] + c) | 0;
    h[3] = (h[3] + d) | 0;
    h[4] = (h[4] + e) | 0;
    h[5] = (h[5] + f) | 0;
    h[6] = (h[6] + g) | 0;
    h[7] = (h[7] + hh) | 0;
  }
}

/** SHA-256 of `data` (Uint8Array or string, UTF-8), 32 bytes. */
export function sha256(data) {
  const bytes = toBytes(data);
  const h = new Int32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const full = bytes.length - (bytes.length % 64);
  compress(h, bytes, 0, full);
  // The tail: the rest, 0x80, zeros, the length in bits (big-endian, 64 bits).
  const rest = bytes.length - full;
  const tail = new Uint8Array(rest < 56 ? 64 : 128);
  tail.set(bytes.subarray(full));
  tail[rest] = 0x80;
  const bits = bytes.length * 8;
  const hi = Math.floor(bits / 0x100000000);
  const lo = bits >>> 0;
  const n = tail.length;
  tail[n - 8] = hi >>> 24;
  tail[n - 7] = hi >>> 16;
  tail[n - 6] = hi >>> 8;
  tail[n - 5] = hi;
  tail[n - 4] = lo >>> 24;
  tail[n - 3] = lo >>> 16;
  tail[n - 2] = lo >>> 8;
  tail[n - 1] = lo;
  compress(h, tail, 0, n);
  const out = new Uint8Array(32);
  for (let i = 0; i < 8; i++) {
    out[i * 4] = h[i] >>> 24;
    out[i * 4 + 1] = h[i] >>> 16;
    out[i * 4 + 2] = h[i] >>> 8;
    out[i * 4 + 3] = h[i];
  }
  return out;
}

/** HMAC-SHA256 (RFC 2104) of `message` with `key` (each Uint8Array or string). */
export function hmacSha256(key, message) {
  let k = toBytes(key);
  if (k.length > 64) k = sha256(k);
  const block = new Uint8Array(64);
  block.set(k);
  const msg = toBytes(message);
  const inner = new Uint8Array(64 + msg.length);
  const outer = new Uint8Array(64 + 32);
  for (let i = 0; i < 64; i++) {
    inner[i] = block[i] ^ 0x36;
    outer[i] = block[i] ^ 0x5c;
  }
  inner.set(msg, 64);
  outer.set(sha256(inner), 64);
  return sha256(outer);
}

const encoder = new TextEncoder();

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return encoder.encode(String(data));
}

/** Lower-case hex of bytes. */
export function hex(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
  return s;
}

function fromHex(text) {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(i * 2, 2), 16);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

const HEX = "0123456789ABCDEF";

/** AWS's URI encoding: every UTF-8 byte but `A-Za-z0-9-_.~` (and `/` if `keepSlash`) as `%XX`. */
export function uriEncode(text, keepSlash = false) {
  const bytes = toBytes(text);
  let out = "";
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    const keep =
      (b >= 0x41 && b <= 0x5a) || // A-Z
      (b >= 0x61 && b <= 0x7a) || // a-z
      (b >= 0x30 && b <= 0x39) || // 0-9
      b === 0x2d || b === 0x5f || b === 0x2e || b === 0x7e || // - _ . ~
      (keepSlash && b === 0x2f);
    out += keep ? String.fromCharCode(b) : "%" + HEX[b >> 4] + HEX[b & 15];
  }
  return out;
}

/** A path as it is sent: `["things", "truck 1", "shadow"]` → `/things/truck%201/shadow`. */
export function encodePath(segments) {
  return "/" + segments.map((s) => uriEncode(String(s))).join("/");
}

/** The canonical URI of a path as sent (Shoal and botocore encode the sent path once more). */
export function canonicalUri(sentPath) {
  return uriEncode(sentPath || "/", true);
}

/** Query pairs from an object (`undefined`/`null` values skipped) or an array of pairs. */
function pairsOf(query) {
  if (!query) return [];
  const list = Array.isArray(query) ? query : Object.entries(query);
  return list.filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => [String(k), String(v)]);
}

/** The canonical (and sent) query string: strictly encoded, sorted by name then value. */
export function canonicalQuery(query) {
  const enc = pairsOf(query).map(([k, v]) => [uriEncode(k), uriEncode(v)]);
  enc.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return enc.map(([k, v]) => k + "=" + v).join("&");
}

/** `20150830T123600Z` of a Date. */
export function amzDate(date) {
  return date.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
}

// ---------------------------------------------------------------------------------------------
// Signature V4
// ---------------------------------------------------------------------------------------------

/**
 * The canonical request: `headers` maps lower-case names to values (all of them signed).
 * Returns `{ text, signedHeaders }`.
 */
export function canonicalRequest(method, sentPath, canonicalQueryString, headers, payloadHash) {
  const names = Object.keys(headers).map((n) => n.toLowerCase()).sort();
  const lower = {};
  for (const [n, v] of Object.entries(headers)) lower[n.toLowerCase()] = v;
  const canonHeaders = names
    .map((n) => n + ":" + String(lower[n]).trim().replace(/\s+/g, " ") + "\n")
    .join("");
  const signedHeaders = names.join(";");
  const text = [
    method.toUpperCase(),
    canonicalUri(sentPath),
    canonicalQueryString,
    canonHeaders,
    signedHeaders,
    payloadHash,
  ].join("\n");
  return { text, signedHeaders };
}

/** The derived signing key of a secret, day (`YYYYMMDD`), region and service. */
export function signingKey(secret, day, region, service) {
  const kDate = hmacSha256("AWS4" + secret, day);
  const kRegion = hmacSha256(kDate, region);
  const kService = hmacSha256(kRegion, service);
  return hmacSha256(kService, "aws4_request");
}

/** The hex signature of a canonical request. */
export function signature(secret, stamp, region, service, canonicalText) {
  const day = stamp.slice(0, 8);
  const scope = `${day}/${region}/${service}/aws4_request`;
  const stringToSign = [ALGORITHM, stamp, scope, hex(sha256(canonicalText))].join("\n");
  return hex(hmacSha256(signingKey(secret, day, region, service), stringToSign));
}

/**
 * Signs a request with headers. `path` is the path as it will be sent (use `encodePath`),
 * `query` an object or pairs, `body` a string or Uint8Array (or nothing).
 * Returns `{ url, headers }`: `url` is `path?query` (relative to the origin `host` names),
 * `headers` the headers to send (without `host`, which the browser sets).
 */
export function signRequest({
  method = "GET",
  host,
  path,
  query,
  body,
  contentType,
  accessKeyId,
  secretAccessKey,
  service = "iot",
  region = REGION,
  date = new Date(),
}) {
  const stamp = amzDate(date);
  const bytes = body === undefined || body === null ? new Uint8Array(0) : toBytes(body);
  const payloadHash = hex(sha256(bytes));
  const q = canonicalQuery(query);
  const headers = { host, "x-amz-date": stamp, "x-amz-content-sha256": payloadHash };
  if (contentType) headers["content-type"] = contentType;
  const { text, signedHeaders } = canonicalRequest(method, path, q, headers, payloadHash);
  const sig = signature(secretAccessKey, stamp, region, service, text);
  const day = stamp.slice(0, 8);
  const out = {
    Authorization:
      `${ALGORITHM} Credential=${accessKeyId}/${day}/${region}/${service}/aws4_request, ` +
      `SignedHeaders=${signedHeaders}, Signature=${sig}`,
    "X-Amz-Date": stamp,
    "x-amz-content-sha256": payloadHash,
  };
  if (contentType) out["Content-Type"] = contentType;
  return { url: q ? `${path}?${q}` : path, headers: out };
}

/**
 * A presigned URL (`path?query`, relative to the origin `host` names): the query carries the
 * signature, which covers the `host` header only and an empty payload.
 */
export function presign({
  method = "GET",
  host,
  path,
  query,
  accessKeyId,
  secretAccessKey,
  service = "iot",
  region = REGION,
  expires = 300,
  date = new Date(),
}) {
  const stamp = amzDate(date);
  const day = stamp.slice(0, 8);
  const pairs = pairsOf(query);
  pairs.push(
    ["X-Amz-Algorithm", ALGORITHM],
    ["X-Amz-Credential", `${accessKeyId}/${day}/${region}/${service}/aws4_request`],
    ["X-Amz-Date", stamp],
    ["X-Amz-Expires", String(expires)],
    ["X-Amz-SignedHeaders", "host"],
  );
  const q = canonicalQuery(pairs);
  // The payload hash of an empty body, as botocore and AWS IoT's WebSocket examples sign.
  const { text } = canonicalRequest(method, path, q, { host }, EMPTY_SHA256);
  const sig = signature(secretAccessKey, stamp, region, service, text);
  return `${path}?${q}&X-Amz-Signature=${sig}`;
}

// ---------------------------------------------------------------------------------------------
// Self-test
// ---------------------------------------------------------------------------------------------

/** Known answers: SHA-256 of "" and "abc", HMAC RFC 4231 case 2, AWS's get-vanilla. */
export function selfTestDetails() {
  const results = {};
  results.sha256Empty =
    hex(sha256("")) === "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  results.sha256Abc =
    hex(sha256("abc")) === "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  // Two blocks (56 bytes of message: the padding spills into a second block).
  results.sha256TwoBlocks =
    hex(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")) ===
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
  results.hmacRfc4231Case2 =
    hex(hmacSha256("Jefe", "what do ya want for nothing?")) ===
    "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
  // RFC 4231 case 6: a key longer than the block.
  results.hmacRfc4231Case6 =
    hex(hmacSha256(fromHex("aa".repeat(131)), "Test Using Larger Than Block-Size Key - Hash Key First")) ===
    "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54";
  // aws-sig-v4-test-suite get-vanilla.
  const { text } = canonicalRequest(
    "GET",
    "/",
    "",
    { host: "example.amazonaws.com", "x-amz-date": "20150830T123600Z" },
    hex(sha256("")),
  );
  results.sigv4GetVanilla =
    signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830T123600Z", "us-east-1", "service", text) ===
    "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
  // aws-sig-v4-test-suite get-vanilla-query-order-key-case: sorted by name, then value.
  const q = canonicalQuery([["Param2", "value2"], ["Param1", "value1"]]);
  const { text: t2 } = canonicalRequest(
    "GET",
    "/",
    q,
    { host: "example.amazonaws.com", "x-amz-date": "20150830T123600Z" },
    hex(sha256("")),
  );
  results.sigv4QueryOrder =
    signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830T123600Z", "us-east-1", "service", t2) ===
    "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500";
  results.uriEncode = uriEncode("a b/ü~*") === "a%20b%2F%C3%BC~%2A" && canonicalUri("/a%3Ab") === "/a%253Ab";
  return results;
}

/** Whether every known answer matches. */
export function selfTest() {
  try {
    return Object.values(selfTestDetails()).every(Boolean);
  } catch {
    return false;
  }
}
