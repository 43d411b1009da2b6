#!/usr/bin/env node
// An independent OXP/2 decoder, written from docs/protocol.md and the test vectors only
// (not from edge/protocol/ or hub/), to show that the spec is implementable as written.
// Where the spec was silent, the answer the reference gives was added to the spec (§4.3 and
// others) and this decoder follows the spec; docs/protocol/vectors/README.md lists them.
// Node.js standard library only: node:crypto (Ed25519), node:zlib (inflate with a preset
// dictionary), node:fs. Node's stdlib has no zstd, so for codec 1 this decoder verifies the
// signature over the compressed payload, reads the zstd frame header (size limit, declared
// content size) and decodes the uncompressed body a vector supplies as `body_hex`.
//
// Usage:
//   node oxp_decode.mjs [--check] VECTOR.json        batch or status-report vector
//   node oxp_decode.mjs [--check] rejections.json    every case must be rejected as stated
//   node oxp_decode.mjs --pub HEX|FILE.pub [--body-hex HEX] [--status] BATCH.cbor
//   node oxp_decode.mjs --selftest                   dictionary rebuilt from Appendix B, rounding
// Prints JSON on stdout. A rejected message prints {"rejected": reason, "detail": ...} and
// exits 2 (reason codes of docs/protocol.md Appendix C); --check mismatches exit 1.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DEFAULT_DICT = path.resolve(HERE, '../../docs/protocol/vectors/oxp-dictionary.json');

class OxpError extends Error {
  constructor(reason, detail) {
    super(`${reason}: ${detail}`);
    this.reason = reason;
    this.detail = detail;
  }
}
const fail = (reason, detail) => { throw new OxpError(reason, detail); };
const malformed = (detail) => fail('malformed', detail);

// ---------------------------------------------------------------- CBOR (RFC 8949), decode only
// Integers come back as BigInt, byte strings as Buffer, text as string, arrays as arrays,
// maps as CborMap (ordered entries; duplicate keys refused), tags as CborTag, floats as
// CborFloat, simple values as true/false/null/undefined. Senders use definite lengths (§2);
// like any well-formed encoding, indefinite lengths are accepted (a receiver need not check).

class CborMap {
  constructor(entries) { this.entries = entries; }
  get(key) {
    for (const [k, v] of this.entries) if (keyEq(k, key)) return v;
    return undefined;
  }
  has(key) { return this.entries.some(([k]) => keyEq(k, key)); }
}
class CborTag { constructor(tag, value) { this.tag = tag; this.value = value; } }
class CborFloat { constructor(value) { this.value = value; } }

function keyEq(a, b) {
  if (typeof a !== typeof b) return false;
  if (Buffer.isBuffer(a)) return Buffer.isBuffer(b) && a.equals(b);
  return a === b;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

// `eofReason`: what running out of bytes means here. In the envelope it is `truncated` (the
// message was cut); inside a signed, completely decompressed body it is `malformed`.
function cborDecode(buf, pos, eofReason, depth = 0) {
  if (depth > 64) malformed('CBOR nested too deeply');
  const need = (n) => { if (pos + n > buf.length) fail(eofReason, 'CBOR item runs past the end of its bytes'); };
  need(1);
  const ib = buf[pos++];
  const major = ib >> 5;
  const ai = ib & 31;
  let arg;
  if (ai < 24) arg = BigInt(ai);
  else if (ai === 24) { need(1); arg = BigInt(buf[pos]); pos += 1; }
  else if (ai === 25) { need(2); arg = BigInt(buf.readUInt16BE(pos)); pos += 2; }
  else if (ai === 26) { need(4); arg = BigInt(buf.readUInt32BE(pos)); pos += 4; }
  else if (ai === 27) { need(8); arg = buf.readBigUInt64BE(pos); pos += 8; }
  else if (ai === 31) return cborIndefinite(buf, pos, major, eofReason, depth);
  else malformed(`reserved CBOR additional information ${ai}`);

  switch (major) {
    case 0: return [arg, pos];
    case 1: return [-1n - arg, pos];
    case 2: case 3: {
      if (arg > BigInt(buf.length - pos)) fail(eofReason, 'CBOR string runs past the end of its bytes');
      const n = Number(arg);
      const bytes = buf.subarray(pos, pos + n);
      pos += n;
      if (major === 2) return [Buffer.from(bytes), pos];
      let s;
      try { s = utf8.decode(bytes); } catch { malformed('text string is not valid UTF-8'); }
      return [s, pos];
    }
    case 4: {
      if (arg > BigInt(buf.length - pos)) fail(eofReason, 'CBOR array longer than its bytes');
      const out = [];
      for (let i = 0n; i < arg; i++) { let v; [v, pos] = cborDecode(buf, pos, eofReason, depth + 1); out.push(v); }
      return [out, pos];
    }
    case 5: {
      if (arg * 2n > BigInt(buf.length - pos)) fail(eofReason, 'CBOR map longer than its bytes');
      const entries = [];
      for (let i = 0n; i < arg; i++) {
        let k, v;
        [k, pos] = cborDecode(buf, pos, eofReason, depth + 1);
        [v, pos] = cborDecode(buf, pos, eofReason, depth + 1);
        if (entries.some(([k2]) => keyEq(k2, k))) malformed('CBOR map with a duplicate key');
        entries.push([k, v]);
      }
      return [new CborMap(entries), pos];
    }
    case 6: { let v; [v, pos] = cborDecode(buf, pos, eofReason, depth + 1); return [new CborTag(arg, v), pos]; }
    case 7: {
      if (ai === 20) return [false, pos];
      if (ai === 21) return [true, pos];
      if (ai === 22) return [null, pos];
      if (ai === 23) return [undefined, pos];
      if (ai === 25) return [new CborFloat(halfToNumber(Number(arg))), pos];
      if (ai === 26) { const b = Buffer.alloc(4); b.writeUInt32BE(Number(arg)); return [new CborFloat(b.readFloatBE(0)), pos]; }
      if (ai === 27) { const b = Buffer.alloc(8); b.writeBigUInt64BE(arg); return [new CborFloat(b.readDoubleBE(0)), pos]; }
      malformed(`unassigned CBOR simple value ${arg}`);
    }
  }
  throw new Error('unreachable');
}

const BREAK = Symbol('break');

function cborIndefinite(buf, pos, major, eofReason, depth) {
  const next = () => {
    if (pos >= buf.length) fail(eofReason, 'indefinite-length CBOR item runs past the end of its bytes');
    if (buf[pos] === 0xff) { pos += 1; return BREAK; }
    let v; [v, pos] = cborDecode(buf, pos, eofReason, depth + 1); return v;
  };
  if (major === 2 || major === 3) {
    // Chunks of the same major type with definite lengths (RFC 8949 §3.2.3).
    const chunks = [];
    for (;;) {
      if (pos < buf.length && buf[pos] !== 0xff && (buf[pos] >> 5 !== major || (buf[pos] & 31) === 31)) malformed('bad chunk in an indefinite-length string');
      const c = next();
      if (c === BREAK) break;
      chunks.push(major === 2 ? c : Buffer.from(c, 'utf8'));
    }
    const all = Buffer.concat(chunks);
    return [major === 2 ? all : utf8.decode(all), pos];
  }
  if (major === 4) {
    const out = [];
    for (let v = next(); v !== BREAK; v = next()) out.push(v);
    return [out, pos];
  }
  if (major === 5) {
    const entries = [];
    for (let k = next(); k !== BREAK; k = next()) {
      const v = next();
      if (v === BREAK) malformed('indefinite-length map ends after a key');
      if (entries.some(([k2]) => keyEq(k2, k))) malformed('CBOR map with a duplicate key');
      entries.push([k, v]);
    }
    return [new CborMap(entries), pos];
  }
  malformed(`indefinite length on CBOR major type ${major}`);
}

function halfToNumber(h) {
  const e = (h >> 10) & 31, m = h & 1023, s = h & 0x8000 ? -1 : 1;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1024 + m) * 2 ** (e - 25);
}

function cborDecodeAll(buf, eofReason, what) {
  const [v, end] = cborDecode(buf, 0, eofReason);
  if (end !== buf.length) malformed(`${buf.length - end} bytes after the ${what}`);
  return v;
}

// Minimal CBOR encoding: only the heads needed to build Sig_structure (§4.2).
function cborHead(major, n) {
  const b = BigInt(n);
  if (b < 24n) return Buffer.from([(major << 5) | Number(b)]);
  if (b < 0x100n) return Buffer.from([(major << 5) | 24, Number(b)]);
  if (b < 0x10000n) { const o = Buffer.alloc(3); o[0] = (major << 5) | 25; o.writeUInt16BE(Number(b), 1); return o; }
  if (b < 0x100000000n) { const o = Buffer.alloc(5); o[0] = (major << 5) | 26; o.writeUInt32BE(Number(b), 1); return o; }
  const o = Buffer.alloc(9); o[0] = (major << 5) | 27; o.writeBigUInt64BE(b, 1); return o;
}
const cborBstr = (bytes) => Buffer.concat([cborHead(2, bytes.length), bytes]);
const cborTstr = (s) => { const b = Buffer.from(s, 'utf8'); return Buffer.concat([cborHead(3, b.length), b]); };

// ---------------------------------------------------------------- helpers
const isUint = (v) => typeof v === 'bigint' && v >= 0n;
const isInt64 = (v) => typeof v === 'bigint' && v >= -(2n ** 63n) && v < 2n ** 63n;
const isUint64 = (v) => isUint(v) && v < 2n ** 64n;
const wrap = (v) => BigInt.asIntN(64, v);
const hex = (b) => Buffer.from(b).toString('hex');
const DEVICE_ID = /^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$/;
const CHANNEL_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]*(\/[A-Za-z0-9][A-Za-z0-9_.:-]*)*$/;
const COUNTER_NAME = /^[a-z][a-z0-9_]{0,62}$/;
const COUNTER_LABELS = ['readings_dropped', 'batches_dropped', 'unclean_stops',
  'readings_quarantined', 'batches_quarantined', 'readings_unsealable'];
const MAX_BATCH = 1048576;          // §6.7
const MAX_STATUS = 65536;           // §6.7
const MAX_READINGS = 1000000n;  // §6.7: readings in one batch
const MAX_BODY = 32 * 1024 * 1024;  // §6.1, §6.7

// Unit codes, Appendix A (typed from the table in the spec; --selftest compares it with
// oxp-dictionary.json's unit_codes).
const UNITS = ('|m|kg|g|s|A|K|cd|mol|Hz|rad|sr|N|Pa|J|W|C|V|F|Ohm|S|Wb|T|H|Cel|lm|lx|Bq|Gy|Sv|kat|m2|' +
  'm3|l|m/s|m/s2|m3/s|l/s|W/m2|cd/m2|bit|bit/s|lat|lon|pH|dB|dBW|Bspl|count|/|%|%RH|%EL|EL|1/s|1/min|' +
  'beat/min|beats|S/m|B|VA|VAs|var|vars|J/m|kg/m3|deg|ms|min|h|MHz|kW|kVA|kvar|Ah|Wh|kWh|varh|kvarh|' +
  'VAh|kVAh|Wh/km|KiB|GB|Mbit/s|B/s|MB/s|mV|mA|dBm|ug/m3|mm/h|m/h|cm|km|km/h|ppm|ppb|mm|hPa|kPa|bar|' +
  'kn|uS/cm|NTU|mg/l|l/min|m3/h|dB(A)|uW/cm2').split('|');

// varint (§2): unsigned LEB128, at most 10 bytes, value below 2^64.
function readVarint(buf, pos, what) {
  let v = 0n;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) malformed(`${what}: varint runs past the end of the column`);
    const b = buf[pos++];
    v |= BigInt(b & 0x7f) << BigInt(7 * i);
    if (!(b & 0x80)) {
      if (v >= 2n ** 64n) malformed(`${what}: varint above 2^64 - 1`);
      return [v, pos];
    }
  }
  malformed(`${what}: varint longer than 10 bytes`);
}
const unzigzag = (z) => (z >> 1n) ^ -(z & 1n); // gives a value in the signed 64-bit range

function readZigzagColumn(buf, count, what) {
  const out = [];
  let pos = 0;
  for (let i = 0; i < count; i++) { let z; [z, pos] = readVarint(buf, pos, what); out.push(unzigzag(z)); }
  if (pos !== buf.length) malformed(`${what}: ${buf.length - pos} bytes after the ${count} values`);
  return out;
}

// §6.3 decoding of a delta / delta-of-delta column, wrapping (§2).
function undelta(z) {
  const out = [];
  let step = 0n;
  for (let i = 0; i < z.length; i++) {
    if (i === 0) out.push(z[0]);
    else if (i === 1) { step = z[1]; out.push(wrap(out[0] + step)); }
    else { step = wrap(step + z[i]); out.push(wrap(out[i - 1] + step)); }
  }
  return out;
}
function unfirstDelta(z) {
  const out = [];
  for (let i = 0; i < z.length; i++) out.push(i === 0 ? z[0] : wrap(out[i - 1] + z[i]));
  return out;
}

// §6.4: the binary64 nearest to num / den (den > 0), ties to even, exactly, with BigInt.
// Normal range only: OXP's operands (|k × m| < 2^128, den ≤ 10^30) never reach subnormals
// or overflow; asserted below rather than handled.
function ratioToDouble(num, den) {
  if (den <= 0n) throw new Error('den must be positive');
  if (num === 0n) return 0;
  const neg = num < 0n;
  let n = neg ? -num : num;
  const bitlen = (x) => x.toString(2).length;
  // Scale so that the integer quotient has at least 55 bits (53 + guard + more).
  const s = Math.max(0, 55 + bitlen(den) - bitlen(n));
  const q = (n << BigInt(s)) / den;
  const r = (n << BigInt(s)) % den;
  const excess = bitlen(q) - 53; // ≥ 2
  let mant = q >> BigInt(excess);
  const rest = q & ((1n << BigInt(excess)) - 1n);
  const half = 1n << BigInt(excess - 1);
  const above = rest > half || (rest === half && r !== 0n);
  const tie = rest === half && r === 0n;
  if (above || (tie && (mant & 1n) === 1n)) mant += 1n;
  let exp = excess - s;
  if (mant === 2n ** 53n) { mant >>= 1n; exp += 1; }
  if (exp + 52 > 1023 || exp < -1074 + 52) throw new Error('outside the range ratioToDouble handles');
  const v = Number(mant) * 2 ** exp; // exact: 53-bit integer times a power of two
  return neg ? -v : v;
}

// ---------------------------------------------------------------- dictionary (Appendix B)
function loadDictionary(file) {
  const meta = JSON.parse(fs.readFileSync(file, 'utf8'));
  const dict = Buffer.from(meta.dictionary_base64, 'base64');
  const sha = crypto.createHash('sha256').update(dict).digest('hex');
  if (dict.length !== 1821 || sha !== 'e8100e1a81312b02739cea9df2345469a9274b90e07ed8eb44b1b4c64270ae2b')
    throw new Error(`${file}: not the OXP/2 dictionary (size ${dict.length}, sha256 ${sha})`);
  if (adler32(dict) !== 0x3da6cc62) throw new Error('dictionary Adler-32 is not 0x3da6cc62');
  return { dict, meta };
}
function adler32(buf) {
  let a = 1, b = 0;
  for (const x of buf) { a = (a + x) % 65521; b = (b + a) % 65521; }
  return ((b << 16) | a) >>> 0;
}

// Appendix B, rebuilt from the prose (not from the base64): checked by --selftest.
function buildDictionaryFromSpec() {
  const devices = ['counter-1', 'noise-1', 'air-1', 'water-1', 'th-1', 'gps-1', 'weather-1', 'pm-1', 'meter-1'];
  const windows = ['1h', '15m', '1m', '5m'];
  const functions = ['distinct', 'count', 'sum', 'max', 'min', 'mean'];
  const channels = ('status battery rssi snr uptime error fault sensor_fault heater_on out_of_range ' +
    'measurements supply_voltage phase_angle flow level water_temperature conductivity turbidity ph ' +
    'dissolved_oxygen illuminance uv_index solar_radiation noise laeq lamax co co2 no no2 o3 so2 voc ' +
    'pm1_0 pm4_0 count occupancy pedestrians cyclists vehicles direction course heading altitude ' +
    'fix_quality satellites hdop speed export_reactive_energy import_reactive_energy ' +
    'total_reactive_energy export_energy total_energy import_energy reactive_power_total ' +
    'reactive_power_l3 reactive_power_l2 reactive_power_l1 reactive_power apparent_power_total ' +
    'apparent_power_l3 apparent_power_l2 apparent_power_l1 apparent_power power_factor_total ' +
    'power_factor_l3 power_factor_l2 power_factor_l1 power_factor power_total power_l3 power_l2 ' +
    'power_l1 power current_neutral current_sum current_average current_l3 current_l2 current_l1 ' +
    'current voltage_l3_l1 voltage_l2_l3 voltage_l1_l2 voltage_average voltage_l3 voltage_l2 ' +
    'voltage_l1 voltage frequency energy wind_gust wind_direction wind_speed rain rainfall pressure ' +
    'dew_point humidity temperature pm10 pm2_5 longitude latitude').split(' ');
  const parts = [];
  for (const u of UNITS.slice(1)) parts.push(cborTstr(u));
  for (const d of devices) parts.push(cborTstr(d));
  for (const w of windows) for (const f of functions) parts.push(Buffer.from(`.${f}_${w}`, 'utf8'));
  for (const c of channels) parts.push(cborTstr(c));
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------- envelope (§4)
function publicKeyObject(raw) {
  if (raw.length !== 32) throw new Error('an Ed25519 public key is 32 bytes');
  return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
}
const keyId = (raw) => crypto.createHash('sha256').update(raw).digest().subarray(0, 8);

// Parse and verify a COSE_Sign1 OXP message. Returns the protected map, kid and payload.
function openEnvelope(data, publicKeyRaw, limit, expected) {
  if (data.length > limit) fail('too_large', `message of ${data.length} bytes is over the ${limit}-byte limit`);
  const msg = cborDecodeAll(data, 'truncated', 'COSE_Sign1 item');
  if (!(msg instanceof CborTag) || msg.tag !== 18n) malformed('not a CBOR tag 18 (COSE_Sign1_Tagged)');
  const arr = msg.value;
  if (!Array.isArray(arr) || arr.length !== 4) malformed('COSE_Sign1 is not an array of 4');
  const [prot, unprot, payload, sig] = arr;
  if (!Buffer.isBuffer(prot)) malformed('protected header is not a byte string');
  if (prot.length > 4096) fail('too_large', `protected header of ${prot.length} bytes is over the 4096-byte limit (§4.4)`);
  if (!(unprot instanceof CborMap)) malformed('unprotected header is not a map');
  if (!Buffer.isBuffer(payload)) malformed('payload is not a byte string');
  if (!Buffer.isBuffer(sig) || sig.length !== 64) malformed('signature is not a 64-byte string');
  strictHeader(unprot, 'unprotected header');
  const ph = cborDecodeAll(prot, 'malformed', 'protected header');
  if (!(ph instanceof CborMap)) malformed('protected header is not a map');
  strictHeader(ph, 'protected header');
  const alg = ph.get(1n);
  if (alg !== -8n && alg !== -19n) fail('unsupported_algorithm', `alg ${alg}`);
  const kid = ph.get(4n);
  if (!Buffer.isBuffer(kid) || kid.length !== 8) malformed('kid is not an 8-byte string');
  if (ph.has(2n)) malformed('protected header carries crit (label 2)');
  // Message type and version are checked before the signature (§4.3): neither needs the key.
  const type = messageType(ph);
  if (type !== expected) fail('wrong_type', `a ${type === 'batch' ? 'batch' : 'status report'}, expected a ${expected === 'batch' ? 'batch' : 'status report'}`);
  const oxp = ph.get(type === 'batch' ? -65537n : -65538n);
  if (!(oxp instanceof CborMap)) malformed(`the ${type} header is not a map`);
  const version = oxp.get(0n);
  if (version !== 2n) fail('unsupported_version', `version ${version === undefined ? '(none)' : toJson(version)}`);
  // Sig_structure (§4.2), the received protected bytes as they are.
  const tbs = Buffer.concat([Buffer.from([0x84]), cborTstr('Signature1'), cborBstr(prot), cborBstr(Buffer.alloc(0)), cborBstr(payload)]);
  if (!kid.equals(keyId(publicKeyRaw))) fail('bad_signature', `kid ${hex(kid)} is not the key id of the key given`);
  if (!crypto.verify(null, tbs, publicKeyObject(publicKeyRaw), sig)) fail('bad_signature', 'Ed25519 signature does not verify');
  return { ph, kid, payload, oxp };
}

// §4.4: what a receiver may refuse in a header before verification: tags, deep nesting, many
// items, labels that are neither integers nor text, the simple value undefined.
function strictHeader(item, where, depth = 0, seen = { items: 0 }) {
  if (++seen.items > 512) malformed(`${where} holds more than 512 CBOR items`);
  if (item instanceof CborTag) malformed(`${where} has CBOR tag ${item.tag}`);
  if (item === undefined) malformed(`${where} has the simple value undefined`);
  const nested = Array.isArray(item) ? item : item instanceof CborMap ? item.entries.flat() : null;
  if (nested === null) return;
  if (depth >= 8) malformed(`${where} nests arrays and maps more than 8 deep`);
  if (item instanceof CborMap && item.entries.some(([k]) => typeof k !== 'bigint' && typeof k !== 'string')) {
    malformed(`${where} has a label that is neither an integer nor text`);
  }
  for (const v of nested) strictHeader(v, where, depth + 1, seen);
}

function messageType(ph) {
  const b = ph.has(-65537n), s = ph.has(-65538n);
  if (b && s) malformed('both the batch header and the status header are present');
  if (!b && !s) malformed('neither a batch header nor a status header');
  return b ? 'batch' : 'status';
}

// ---------------------------------------------------------------- batch header (§5)
function decodeHeader(h, kid) {
  for (const k of [1n, 2n, 3n, 4n, 5n, 6n]) if (!h.has(k)) malformed(`batch header without key ${k}`);
  const deviceId = h.get(1n), bootEpoch = h.get(2n), seq = h.get(3n), digest = h.get(4n);
  const codec = h.get(5n), created = h.get(6n);
  if (typeof deviceId !== 'string' || !DEVICE_ID.test(deviceId)) malformed('device_id is not a device id (§2)');
  if (!isUint64(bootEpoch)) malformed('boot_epoch is not a uint');
  if (!isUint64(seq)) malformed('seq is not a uint');
  if (!Buffer.isBuffer(digest) || digest.length > 64) malformed('policy_digest is not a bstr of 0-64 bytes');
  if (typeof codec !== 'bigint') malformed('codec is not an integer');
  if (codec !== 1n && codec !== 2n) fail('unsupported_codec', `codec ${codec}`);
  if (!isUint64(created)) malformed('created_ms is not a uint');
  const counters = {};
  if (h.has(7n)) {
    const c = h.get(7n);
    if (!(c instanceof CborMap)) malformed('counters is not a map');
    for (const [k, v] of c.entries) {
      if (!isUint64(v)) malformed('a counter value is not a uint');
      let name;
      if (typeof k === 'bigint') {
        if (k < 0n) malformed('a counter label is negative');
        name = k < BigInt(COUNTER_LABELS.length) ? COUNTER_LABELS[Number(k)] : `counter_${k}`;
      } else if (typeof k === 'string' && COUNTER_NAME.test(k)) {
        name = k; // a registered counter sent by name is the same counter (§5)
      } else malformed('a counter key is neither a label nor a counter name');
      if (name in counters) malformed(`counter ${name} given twice (by label and by name)`);
      counters[name] = v;
    }
  }
  return {
    device_id: deviceId, key_id: hex(kid), boot_epoch: bootEpoch, seq,
    policy_digest: hex(digest), codec: codec === 1n ? 'zstd' : 'deflate', created_ms: created, counters,
  };
}

// ---------------------------------------------------------------- payload (§6.1)
function inflateOxp(payload, dict) {
  if (payload.length < 6) fail('truncated', 'zlib stream shorter than its header');
  const cmf = payload[0], flg = payload[1];
  if ((cmf & 0x0f) !== 8 || (cmf >> 4) > 7 || ((cmf << 8) | flg) % 31 !== 0) malformed('not a zlib stream (RFC 1950 header)');
  // A stream without FDICT was compressed without the dictionary and inflates alone (§6.1).
  if ((flg & 0x20) && payload.readUInt32BE(2) !== 0x3da6cc62) malformed('zlib DICTID is not the OXP dictionary (0x3da6cc62)');
  let res;
  try {
    res = zlib.inflateSync(payload, { dictionary: dict, maxOutputLength: MAX_BODY, info: true });
  } catch (e) {
    if (e.code === 'ERR_BUFFER_TOO_LARGE' || e instanceof RangeError) fail('too_large', 'body inflates to more than 32 MiB');
    if (e.code === 'Z_BUF_ERROR') fail('truncated', 'zlib stream ends before its end marker');
    malformed(`inflate: ${e.message}`);
  }
  if (res.engine.bytesWritten !== payload.length) malformed(`${payload.length - res.engine.bytesWritten} bytes after the zlib stream`);
  return res.buffer;
}

// RFC 8878 §3.1.1: read the frame header only (no decompressor in Node's stdlib).
function zstdFrameContentSize(payload) {
  const need = (n) => { if (payload.length < n) fail('truncated', 'zstd frame shorter than its header'); };
  need(5);
  if (payload.readUInt32LE(0) !== 0xfd2fb528) malformed('payload is not a zstd frame (magic number)');
  const fhd = payload[4];
  const fcsFlag = fhd >> 6, single = (fhd >> 5) & 1, reserved = (fhd >> 3) & 1, didFlag = fhd & 3;
  if (reserved) malformed('zstd frame header reserved bit set');
  let pos = 5 + (single ? 0 : 1) + [0, 1, 2, 4][didFlag];
  const fcsSize = fcsFlag === 0 ? (single ? 1 : 0) : [0, 2, 4, 8][fcsFlag];
  if (fcsSize === 0) malformed('zstd frame without Frame_Content_Size (§6.1 requires it)');
  need(pos + fcsSize);
  let fcs;
  if (fcsSize === 1) fcs = BigInt(payload[pos]);
  else if (fcsSize === 2) fcs = BigInt(payload.readUInt16LE(pos)) + 256n;
  else if (fcsSize === 4) fcs = BigInt(payload.readUInt32LE(pos));
  else fcs = payload.readBigUInt64LE(pos);
  if (fcs > BigInt(MAX_BODY)) fail('too_large', `zstd frame declares ${fcs} bytes, over 32 MiB`);
  // Walk the block headers (RFC 8878 §3.1.1.2) to find where the frame ends: nothing may follow.
  pos += fcsSize;
  for (let last = 0; !last;) {
    if (pos + 3 > payload.length) malformed('zstd frame ends inside its blocks');
    const bh = payload[pos] | (payload[pos + 1] << 8) | (payload[pos + 2] << 16);
    last = bh & 1;
    const type = (bh >> 1) & 3, size = bh >>> 3;
    if (type === 3) malformed('zstd block of the reserved type');
    pos += 3 + (type === 1 ? 1 : size);
  }
  if ((fhd >> 2) & 1) pos += 4; // Content_Checksum
  if (pos > payload.length) malformed('zstd frame ends inside its blocks');
  if (pos !== payload.length) malformed(`${payload.length - pos} bytes after the zstd frame`);
  return Number(fcs);
}

// ---------------------------------------------------------------- body (§6.2-§6.5)
const KINDS = { 0: 'number', 1: 'string', 2: 'bool' };

function decodeResolution(res) {
  if (res === null) return null;
  let m, e;
  if (typeof res === 'bigint') { m = 1n; e = res; }
  else if (Array.isArray(res) && res.length === 2 && isUint64(res[0]) && res[0] >= 1n && typeof res[1] === 'bigint') [m, e] = res;
  else malformed('resolution is not null, an int or [m, e]');
  if (e < -30n || e > 30n) malformed(`resolution exponent ${e} outside -30..30`);
  return { m, e };
}
const scaleToDouble = ({ m, e }) => (e >= 0n ? Number(m * 10n ** e) : ratioToDouble(m, 10n ** -e));

// The value of integer k at scale m × 10^e (§6.4): an integer for e ≥ 0 (BigInt), the
// correctly rounded binary64 for e < 0 (Number).
const scaled = (k, { m, e }) => (e >= 0n ? k * m * 10n ** e : ratioToDouble(k * m, 10n ** -e));

function decodeTimes(times, count, t0, earlier, idx) {
  if (typeof times === 'bigint') {
    if (times < 0n || times >= BigInt(idx)) malformed(`series ${idx}: times refer to series ${times}, not an earlier one`);
    const ref = earlier[Number(times)];
    if (ref.length !== count) malformed(`series ${idx}: shares the times of series ${times} with another count`);
    return ref;
  }
  let u = 0n, col = times;
  if (Array.isArray(times)) {
    if (times.length !== 2 || !Buffer.isBuffer(times[1]) || ![1n, 2n, 3n].includes(times[0])) malformed(`series ${idx}: times is not [1|2|3, bstr]`);
    [u, col] = times;
  } else if (!Buffer.isBuffer(times)) malformed(`series ${idx}: times is not a bstr, [u, bstr] or uint`);
  const r = undelta(readZigzagColumn(col, count, `series ${idx} times`));
  const mul = 10n ** u;
  return r.map((x) => wrap(t0 + wrap(x * mul)));
}

function decodeValues(values, kind, count, resolution, idx) {
  const what = `series ${idx} values`;
  if (!Array.isArray(values) || values.length < 1 || !isUint(values[0])) malformed(`${what}: not [code, ...]`);
  const code = Number(values[0] > 7n ? 7n : values[0]);
  const fits = { 0: 'number', 1: 'number', 2: 'number', 3: 'number', 4: 'number', 5: 'string', 6: 'bool' }[code];
  if (fits === undefined) malformed(`${what}: unknown value encoding ${values[0]}`);
  if (fits !== kind) malformed(`${what}: encoding ${code} does not fit a ${kind} series`);
  const arity = { 0: 2, 1: 2, 2: 3, 3: 3, 4: 2, 5: 3, 6: 2 }[code];
  if (values.length !== arity) malformed(`${what}: encoding ${code} has ${arity} elements`);
  const col = values[arity - 1];
  if (!Buffer.isBuffer(col)) malformed(`${what}: column is not a bstr`);
  if (code <= 3) {
    let scale;
    if (code <= 1) {
      if (resolution === null) malformed(`${what}: encoding ${code} needs a declared resolution`);
      scale = resolution;
    } else {
      const e = values[1];
      if (typeof e !== 'bigint' || e < -30n || e > 30n) malformed(`${what}: exponent is not an int in -30..30`);
      scale = { m: 1n, e };
    }
    const z = readZigzagColumn(col, count, what);
    const k = code % 2 === 0 ? unfirstDelta(z) : undelta(z);
    return k.map((ki) => scaled(ki, scale));
  }
  if (code === 4) {
    if (col.length !== 8 * count) malformed(`${what}: binary64 column of ${col.length} bytes for ${count} readings`);
    const out = [];
    let prev = 0n;
    const b = Buffer.alloc(8);
    for (let i = 0; i < count; i++) {
      const bits = col.readBigUInt64BE(8 * i) ^ prev;
      prev = bits;
      b.writeBigUInt64BE(bits);
      out.push(b.readDoubleBE(0));
    }
    return out;
  }
  if (code === 5) {
    const dict = values[1];
    if (!Array.isArray(dict) || !dict.every((s) => typeof s === 'string')) malformed(`${what}: string dictionary is not [* tstr]`);
    const out = [];
    let pos = 0;
    for (let i = 0; i < count; i++) {
      let ix; [ix, pos] = readVarint(col, pos, what);
      if (ix >= BigInt(dict.length)) malformed(`${what}: index ${ix} beyond the ${dict.length}-string dictionary`);
      out.push(dict[Number(ix)]);
    }
    if (pos !== col.length) malformed(`${what}: ${col.length - pos} bytes after the ${count} indices`);
    return out;
  }
  // code 6
  if (col.length !== Math.ceil(count / 8)) malformed(`${what}: ${col.length} bytes for ${count} booleans`);
  if (count % 8 && (col[col.length - 1] >> (count % 8))) malformed(`${what}: unused bits of the last byte are not 0`);
  const out = [];
  for (let i = 0; i < count; i++) out.push(((col[i >> 3] >> (i & 7)) & 1) === 1);
  return out;
}

function decodeQuality(q, count, idx) {
  const flags = new Map();
  if (q === undefined) return flags;
  if (!Buffer.isBuffer(q)) malformed(`series ${idx}: quality is not a bstr`);
  let pos = 0, at = -1n;
  while (pos < q.length) {
    let gap, flag;
    [gap, pos] = readVarint(q, pos, `series ${idx} quality`);
    [flag, pos] = readVarint(q, pos, `series ${idx} quality`);
    if (at >= 0n && gap < 1n) malformed(`series ${idx}: quality gap 0 after the first pair`);
    at += at < 0n ? gap + 1n : gap;
    if (at >= BigInt(count)) malformed(`series ${idx}: quality flag for reading ${at} of ${count}`);
    if (flag > 2n) malformed(`series ${idx}: quality flag ${flag} is not 0, 1 or 2`);
    flags.set(Number(at), Number(flag));
  }
  return flags;
}

function decodeBody(body) {
  if (!Array.isArray(body) || body.length !== 3) malformed('body is not an array of 3');
  const [t0, devices, series] = body;
  if (!isInt64(t0)) malformed('t0 is not a signed 64-bit int');
  if (!Array.isArray(devices) || !devices.every((d) => typeof d === 'string')) malformed('devices is not [* tstr]');
  if (!Array.isArray(series)) malformed('series is not an array');
  const channels = [], readings = [], seen = new Set(), timeCols = [];
  let total = 0n;
  series.forEach((s, idx) => {
    if (!Array.isArray(s) || (s.length !== 7 && s.length !== 8)) malformed(`series ${idx} is not an array of 7 or 8`);
    const [head, name, unit, res, count, times, values, quality] = s;
    if (!isUint64(head)) malformed(`series ${idx}: head is not a uint`);
    const d = head >> 3n, kindBits = Number(head & 7n);
    if (d >= BigInt(devices.length)) malformed(`series ${idx}: device index ${d} beyond the prefix table`);
    if ((kindBits & 3) === 3) malformed(`series ${idx}: kind ${kindBits}`);
    const kind = KINDS[kindBits & 3], personal = (kindBits & 4) !== 0;
    if (typeof name !== 'string') malformed(`series ${idx}: name is not a tstr`);
    const dev = devices[Number(d)];
    const id = dev === '' ? name : `${dev}/${name}`;
    if (!CHANNEL_ID.test(id)) malformed(`series ${idx}: ${JSON.stringify(id)} is not a channel id`);
    if (seen.has(id)) malformed(`channel ${id} has two series`);
    seen.add(id);
    let unitText;
    if (typeof unit === 'string') unitText = unit;
    else if (isUint(unit)) {
      if (unit >= BigInt(UNITS.length)) malformed(`series ${idx}: unit code ${unit} beyond the registry`);
      unitText = UNITS[Number(unit)];
    } else malformed(`series ${idx}: unit is not a code or a tstr`);
    const resolution = decodeResolution(res);
    if (resolution !== null && kind !== 'number') malformed(`series ${idx}: a ${kind} channel with a resolution`);
    if (!isUint64(count)) malformed(`series ${idx}: count is not a uint`);
    total += count;  // §6.7: checked against the running total before the series' columns
    if (total > MAX_READINGS) fail('too_large', `payload body declares more than ${MAX_READINGS} readings`);
    // A column of n readings needs at least n/8 body bytes (bools): a larger count is a lie.
    if (count > 8n * BigInt(MAX_BODY)) malformed(`series ${idx}: count ${count} cannot fit a 32 MiB body`);
    const n = Number(count);
    const ts = decodeTimes(times, n, t0, timeCols, idx);
    timeCols.push(ts);
    const vals = decodeValues(values, kind, n, resolution, idx);
    const flags = decodeQuality(quality, n, idx);
    const ch = { id, unit: unitText, kind, resolution: resolution === null ? null : scaleToDouble(resolution) };
    if (personal) ch.personal = true;
    channels.push(ch);
    for (let i = 0; i < n; i++) {
      const r = { channel: id, ts_ms: ts[i], value: vals[i] };
      if (unitText !== '') r.unit = unitText;
      if (flags.has(i)) r.quality = BigInt(flags.get(i));
      readings.push(r);
    }
  });
  return { channels, readings };
}

// ---------------------------------------------------------------- SenML view (§10)
function senml(header, readings) {
  const bn = `urn:dev:ocn:${header.device_id}:`;
  if (readings.length === 0) return [{ bn, bt: ratioToDouble(header.created_ms, 1000n) }];
  let base = readings[0].ts_ms;
  for (const r of readings) if (r.ts_ms < base) base = r.ts_ms;
  return readings.map((r, i) => {
    const rec = i === 0 ? { bn, bt: ratioToDouble(base, 1000n) } : {};
    rec.n = r.channel;
    if (r.unit) rec.u = r.unit;
    if (typeof r.value === 'string') rec.vs = r.value;
    else if (typeof r.value === 'boolean') rec.vb = r.value;
    else rec.v = r.value;
    if (r.ts_ms !== base) rec.t = ratioToDouble(r.ts_ms - base, 1000n);
    if (r.quality !== undefined) rec.q = r.quality;
    return rec;
  });
}

// ---------------------------------------------------------------- open a batch / status
// bodyOverride: the uncompressed body for codec 1 (zstd), which Node cannot decompress.
function openBatch(data, publicKeyRaw, dict, bodyOverride) {
  const { kid, payload, oxp } = openEnvelope(data, publicKeyRaw, MAX_BATCH, 'batch');
  const header = decodeHeader(oxp, kid);
  let bodyBytes, zstd = null;
  if (header.codec === 'deflate') bodyBytes = inflateOxp(payload, dict);
  else {
    const declared = zstdFrameContentSize(payload);
    if (bodyOverride === undefined) fail('unsupported_codec', 'zstd: Node.js has no zstd decompressor; pass the body with --body-hex');
    if (bodyOverride.length !== declared) malformed(`zstd frame declares ${declared} bytes, the supplied body has ${bodyOverride.length}`);
    bodyBytes = bodyOverride;
    zstd = { frame_content_size: BigInt(declared), decompressed_here: false, payload_hex: hex(payload) };
  }
  const body = cborDecodeAll(bodyBytes, 'truncated', 'body');
  const { channels, readings } = decodeBody(body);
  const out = { type: 'batch', header, channels, readings, senml: senml(header, readings) };
  if (zstd) out.zstd = zstd;
  return out;
}

function openStatus(data, publicKeyRaw) {
  const { kid, payload, oxp: h } = openEnvelope(data, publicKeyRaw, MAX_STATUS, 'status');
  const version = h.get(0n);
  const deviceId = h.get(1n);
  if (typeof deviceId !== 'string') malformed('status header device_id is not text');
  const rep = cborDecodeAll(payload, 'malformed', 'status report');
  if (!(rep instanceof CborMap)) malformed('status report is not a map');
  const report = {};
  for (const [k, v] of rep.entries) {
    if (typeof k !== 'string') malformed('status report key is not text');
    report[k] = v;
  }
  if (report.device_id !== deviceId) malformed('status report device_id differs from its header');
  return { type: 'status', header: { version, device_id: deviceId, key_id: hex(kid) }, report };
}

// ---------------------------------------------------------------- JSON out (BigInt, floats, bytes)
function fmtFloat(x) {
  if (Number.isNaN(x)) return 'NaN';
  if (x === Infinity) return 'Infinity';
  if (x === -Infinity) return '-Infinity';
  if (Object.is(x, -0)) return '-0.0';
  const s = String(x); // shortest round-trip digits (ECMA-262 Number::toString)
  return /[.eE]/.test(s) ? s : `${s}.0`;
}
function toJson(v, ind = '') {
  const nx = `${ind}  `;
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return fmtFloat(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'string') return JSON.stringify(v);
  if (Buffer.isBuffer(v)) return JSON.stringify(hex(v));
  if (Array.isArray(v)) return v.length ? `[\n${v.map((x) => nx + toJson(x, nx)).join(',\n')}\n${ind}]` : '[]';
  if (v instanceof CborFloat) return fmtFloat(v.value);
  const keys = Object.keys(v);
  return keys.length ? `{\n${keys.map((k) => `${nx}${JSON.stringify(k)}: ${toJson(v[k], nx)}`).join(',\n')}\n${ind}}` : '{}';
}

// ---------------------------------------------------------------- JSON in, lossless
// Integers → BigInt, numbers with a fraction or exponent → Number (JS JSON.parse would
// round integers beyond 2^53 and forget that 1.0 is a float). NaN/Infinity accepted.
function parseJson(text) {
  let i = 0;
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i++; };
  const val = () => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++; const o = {}; ws();
      if (text[i] === '}') { i++; return o; }
      for (;;) { ws(); const k = val(); ws(); if (text[i++] !== ':') throw new Error(`JSON: ':' expected at ${i}`); o[k] = val(); ws(); const d = text[i++]; if (d === '}') return o; if (d !== ',') throw new Error(`JSON: ',' expected at ${i}`); }
    }
    if (c === '[') {
      i++; const a = []; ws();
      if (text[i] === ']') { i++; return a; }
      for (;;) { a.push(val()); ws(); const d = text[i++]; if (d === ']') return a; if (d !== ',') throw new Error(`JSON: ',' expected at ${i}`); }
    }
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const s = JSON.parse(text.slice(i, j + 1)); i = j + 1; return s;
    }
    for (const [lit, v] of [['true', true], ['false', false], ['null', null], ['NaN', NaN], ['Infinity', Infinity], ['-Infinity', -Infinity]]) {
      if (text.startsWith(lit, i)) { i += lit.length; return v; }
    }
    const m = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!m) throw new Error(`JSON: unexpected ${text.slice(i, i + 20)}`);
    i += m[0].length;
    return m[1] || m[2] ? Number(m[0]) : BigInt(m[0]);
  };
  const v = val(); ws();
  if (i !== text.length) throw new Error('JSON: trailing text');
  return v;
}

// Strict equality: int vs float differ, -0.0 differs from 0.0, NaN equals NaN (same bits
// are not required: JSON cannot carry NaN payloads).
function diff(a, b, where = '$') {
  if (typeof a === 'number' && typeof b === 'number') return Object.is(a, b) ? null : `${where}: ${fmtFloat(a)} != ${fmtFloat(b)}`;
  if (typeof a !== typeof b || (a === null) !== (b === null) || Array.isArray(a) !== Array.isArray(b)) return `${where}: ${toJson(a)} != ${toJson(b)} (type)`;
  if (Array.isArray(a)) {
    if (a.length !== b.length) return `${where}: ${a.length} elements != ${b.length}`;
    for (let i = 0; i < a.length; i++) { const d = diff(a[i], b[i], `${where}[${i}]`); if (d) return d; }
    return null;
  }
  if (a && typeof a === 'object') {
    const ka = Object.keys(a).sort(), kb = Object.keys(b).sort();
    if (ka.join('\0') !== kb.join('\0')) return `${where}: keys ${ka} != ${kb}`;
    for (const k of ka) { const d = diff(a[k], b[k], `${where}.${k}`); if (d) return d; }
    return null;
  }
  return a === b ? null : `${where}: ${toJson(a)} != ${toJson(b)}`;
}

// ---------------------------------------------------------------- drivers
const fromHex = (s) => Buffer.from(s, 'hex');

function attempt(fn) {
  try { return { ok: fn() }; } catch (e) {
    if (e instanceof OxpError) return { reason: e.reason, detail: e.detail };
    throw e;
  }
}

function runVector(file, vec, dict, check) {
  const pub = fromHex(vec.key.public_key_hex);
  if (vec.expected.status_hex !== undefined) {
    const r = attempt(() => openStatus(fromHex(vec.expected.status_hex), pub));
    if (r.reason) return { out: { file, rejected: r.reason, detail: r.detail }, code: 2 };
    const out = { file, ...r.ok };
    if (!check) return { out, code: 0 };
    const expectReport = {};
    for (const [k, v] of Object.entries(vec.input.report)) expectReport[k] = v;
    // status-report.json shows byte strings as hex; compare in that form.
    const got = {};
    for (const [k, v] of Object.entries(r.ok.report)) got[k] = Buffer.isBuffer(v) ? hex(v) : v;
    const d = diff(got, expectReport, '$.report') || diff(r.ok.header.device_id, vec.input.device_id, '$.header.device_id') ||
      diff(r.ok.header.key_id, vec.key.key_id, '$.header.key_id');
    out.check = d ? { ok: false, diff: d } : { ok: true };
    return { out, code: d ? 1 : 0 };
  }
  const data = fromHex(vec.expected.batch_hex);
  const body = vec.expected.body_hex !== undefined ? fromHex(vec.expected.body_hex) : undefined;
  const r = attempt(() => openBatch(data, pub, dict, body));
  if (r.reason) return { out: { file, rejected: r.reason, detail: r.detail }, code: 2 };
  const out = { file, ...r.ok };
  if (!check) return { out, code: 0 };
  const { header, channels, readings } = r.ok;
  const d = diff({ header, channels, readings }, vec.expected.decoded, '$.decoded') ||
    diff(r.ok.senml, vec.expected.senml, '$.senml');
  out.check = d ? { ok: false, diff: d } : { ok: true };
  return { out, code: d ? 1 : 0 };
}

function runRejections(file, vec, dict) {
  const results = [];
  let code = 0;
  for (const c of vec.cases) {
    const pub = fromHex(vec.keys[c.verify_with].public_key_hex);
    // No body is supplied for zstd cases: a case that gets past the signature, the header
    // and the frame header would need zstd decompression to say more, and is skipped.
    const r = attempt(() => openBatch(fromHex(c.data_hex), pub, dict, undefined));
    const needsZstd = r.reason === 'unsupported_codec' && /no zstd decompressor/.test(r.detail);
    const res = { name: c.name, expected: c.reason, got: r.ok ? 'accepted' : r.reason, detail: r.detail };
    if (needsZstd) { res.skipped = 'needs zstd decompression'; res.got = null; }
    else if (res.got !== c.reason) code = 1;
    res.ok = !!res.skipped || res.got === c.reason;
    results.push(res);
  }
  return { out: { file, type: 'rejections', cases: results }, code };
}

function selftest(dictFile) {
  const { dict, meta } = loadDictionary(dictFile);
  const problems = [];
  const rebuilt = buildDictionaryFromSpec();
  if (!rebuilt.equals(dict)) problems.push(`dictionary rebuilt from Appendix B (${rebuilt.length} bytes) differs from the base64 (${dict.length})`);
  const codes = Object.entries(meta.unit_codes);
  if (codes.length !== UNITS.length || codes.some(([k, v]) => UNITS[Number(k)] !== v)) problems.push('Appendix A unit table differs from oxp-dictionary.json unit_codes');
  // ratioToDouble against two independent paths: ECMAScript's string-to-number for up to
  // 20 significant digits (exactly rounded by ECMA-262 §7.1.4.1.1), and a few known values.
  let x = 0x2545f4914f6cdd1dn;
  const rnd = () => { x ^= x << 13n; x &= 2n ** 64n - 1n; x ^= x >> 7n; x ^= x << 17n; x &= 2n ** 64n - 1n; return x; };
  for (let i = 0; i < 20000; i++) {
    const k = BigInt.asIntN(64, rnd()) >> (rnd() % 64n);
    const e = -Number(rnd() % 31n);
    const a = ratioToDouble(k, 10n ** BigInt(-e)), b = Number(`${k}e${e}`);
    if (!Object.is(a, b) && !(k === 0n)) { problems.push(`ratioToDouble(${k}, 1e${-e}) = ${a}, string parse ${b}`); break; }
  }
  const known = [[123n, 1, 12.3], [1n, 1, 0.1], [3n, 1, 0.3], [-11n, 1, -1.1], [5n, 1, 0.5], [25n, 2, 0.25], [9007199254740993n, 0, 9007199254740992]];
  for (const [k, p, want] of known) if (ratioToDouble(k, 10n ** BigInt(p)) !== want) problems.push(`ratioToDouble(${k}, 1e${p}) != ${want}`);
  // ties to even: 2^53 + 1 is halfway between 2^53 and 2^53 + 2.
  if (ratioToDouble(2n ** 53n + 1n, 1n) !== 2 ** 53 || ratioToDouble(2n ** 53n + 3n, 1n) !== 2 ** 53 + 4) problems.push('ties are not to even');
  return { out: { type: 'selftest', dictionary_bytes: BigInt(dict.length), rebuilt_from_appendix_b: rebuilt.equals(dict), problems }, code: problems.length ? 1 : 0 };
}

function main(argv) {
  const args = argv.slice(2);
  let check = false, pubArg, bodyHex, dictFile = DEFAULT_DICT, status = false, self = false;
  const files = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--check') check = true;
    else if (a === '--pub') pubArg = args[++i];
    else if (a === '--body-hex') bodyHex = args[++i];
    else if (a === '--dictionary') dictFile = args[++i];
    else if (a === '--status') status = true;
    else if (a === '--selftest') self = true;
    else if (a === '-h' || a === '--help') { process.stdout.write(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 16).join('\n') + '\n'); return 0; }
    else files.push(a);
  }
  let result;
  if (self) result = selftest(dictFile);
  else {
    if (files.length !== 1) { process.stderr.write('usage: oxp_decode.mjs [--check] FILE (see --help)\n'); return 64; }
    const file = files[0];
    const { dict } = loadDictionary(dictFile);
    const raw = fs.readFileSync(file);
    if (file.endsWith('.json')) {
      const vec = parseJson(raw.toString('utf8'));
      result = vec.cases ? runRejections(file, vec, dict) : runVector(file, vec, dict, check);
    } else {
      if (!pubArg) { process.stderr.write('a batch file needs --pub (raw public key hex or a SubjectPublicKeyInfo PEM file)\n'); return 64; }
      const pub = /^[0-9a-fA-F]{64}$/.test(pubArg) ? fromHex(pubArg)
        : crypto.createPublicKey(fs.readFileSync(pubArg)).export({ format: 'jwk' }).x;
      const pubRaw = Buffer.isBuffer(pub) ? pub : Buffer.from(pub, 'base64url');
      const r = attempt(() => (status ? openStatus(raw, pubRaw) : openBatch(raw, pubRaw, dict, bodyHex === undefined ? undefined : fromHex(bodyHex))));
      result = r.reason ? { out: { file, rejected: r.reason, detail: r.detail }, code: 2 } : { out: { file, ...r.ok }, code: 0 };
    }
  }
  process.stdout.write(toJson(result.out) + '\n');
  if (result.out.rejected) process.stderr.write(`rejected: ${result.out.rejected}: ${result.out.detail}\n`);
  return result.code;
}

process.exitCode = main(process.argv);
