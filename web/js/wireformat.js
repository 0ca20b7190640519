// The avatar/packet wire format, version 2: a decoder (docs/wire-format.md is the contract).
//
// This module is the browser's decoder and the one tests/test_wireformat.py checks against the
// Python one (nodes/wireformat.py) under node. `decode(obj)` takes a packet as the msgpack
// library returns it: an Array (keyframe) or a Uint8Array (delta); `decodeBytes(u8)` takes the
// bytes off the wire. Either returns a frame, or null for a late packet or a refused delta (then
// `waiting` lists the sids that need a keyframe); they throw on a malformed packet, leaving the
// state as it was.
import { decode as msgpackDecode } from "@msgpack/msgpack";

class Bits {
  constructor(u8) { this.u8 = u8; this.pos = 0; this.size = u8.length * 8; }
  bit() {
    if (this.pos >= this.size) throw new Error("bit stream cut short");
    const p = this.pos++;
    return (this.u8[p >> 3] >> (7 - (p & 7))) & 1;
  }
  read(n) { let x = 0; for (let i = 0; i < n; i++) x = x * 2 + this.bit(); return x; }
  eg(k) {                                  // Exp-Golomb of order k
    let z = 0;
    while (!this.bit()) if (++z > 40) throw new Error("Exp-Golomb code too long");
    return 2 ** (z + k) + this.read(z + k) - 2 ** k;
  }
  finish() {                               // at most 7 padding bits, all zero
    if (this.size - this.pos >= 8) throw new Error("bytes after the end");
    while (this.pos < this.size) if (this.bit()) throw new Error("padding bits must be zero");
  }
}
const MAX_SESSION_ID = 1024; // characters; the Python source is MAX_SESSION_ID in nodes/wire/limits.py
const unzigzag = (z) => (z % 2 ? -(z + 1) / 2 : z / 2);
const bitLength = (x) => 32 - Math.clz32(x);

function readValues(b, ref, prev, bits, wide) {   // one value section
  const top = 2 ** bits - 1, q = [], lists = [[], []], moving = [];
  ref.forEach((r, i) => {
    const m = prev ? r - prev[i] : 0;
    const p = Math.min(Math.max(r + Math.floor((3 * m + 2) / 4), 0), top);
    q.push(p);
    if (p === 0) lists[0].push(i);                                  // FLOOR
    else if (wide) moving.push([i, Math.max(0, bits - 4)]);
    else if (m === 0) lists[1].push(i);                             // QUIET
    else moving.push([i, Math.max(0, bitLength(Math.abs(m)) - 2)]); // MOVING
  });
  lists.forEach((cols, c) => {
    if (!cols.length || !b.read(1)) return;
    for (let pos = 0; ; ) {
      pos += b.eg(c === 0 ? 1 : 0);                                 // zero run
      if (pos > cols.length) throw new Error("zero run past the end of its list");
      if (pos === cols.length) break;
      q[cols[pos++]] += unzigzag(b.eg(1) + 1);
      if (pos === cols.length) break;
    }
  });
  for (const [i, k] of moving) {
    let z = k ? b.eg(k) : b.read(2);
    if (!k && z === 3) z += b.eg(0);
    q[i] += unzigzag(z);
  }
  if (q.some((v) => v < 0 || v > top)) throw new Error("value out of range");
  return q;
}

/** Names table 1: the 52 ARKit blendshapes in Apple's order (graphs/mappings/arkit52.yaml). */
export const ARKIT52 = Object.freeze([
  "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft",
  "eyeLookUpLeft", "eyeSquintLeft", "eyeWideLeft", "eyeBlinkRight",
  "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
  "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft",
  "jawRight", "jawOpen", "mouthClose", "mouthFunnel",
  "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft",
  "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft",
  "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight", "mouthRollLower",
  "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft",
  "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
  "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp",
  "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft",
  "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
]);

export const TABLES = Object.freeze({ 1: ARKIT52 });     // names table id -> names

export class AvatarDecoder {
  constructor({ resumeAfterLoss = false } = {}) {
    this.resume = resumeAfterLoss; this.streams = new Map(); this.refusedSeq = -1;
    this.counts = { frames: 0, lost: 0, late: 0, refused: 0 };   // packets: decoded, missing, old, refused
  }
  get waiting() { return [...this.streams].filter(([, s]) => s.waiting).map(([sid, s]) => [sid, s.session]); }

  /** A packet's bytes as received (the sinks send each packet as one binary message). */
  decodeBytes(u8) {
    return this.decode(msgpackDecode(u8 instanceof Uint8Array ? u8 : new Uint8Array(u8)));
  }

  decode(obj) {
    this.refusedSeq = -1;  // the seq of the packet just refused, if it was (a keyframe ask names it)
    if (!Array.isArray(obj) && !(obj instanceof Uint8Array)) throw new Error("a packet is a msgpack array or bin");
    const key = Array.isArray(obj), b = key ? null : new Bits(obj);
    let sid, seq, back = 0, isRef = true, pts;
    if (key) {
      if (obj.length !== 9 || obj[0] !== 2) throw new Error("not a v2 keyframe");
      [, sid, seq, pts] = obj;
      const int = (x, lo, hi) => Number.isInteger(x) && x >= lo && x <= hi;
      if (!int(sid, 0, 65535) || !int(seq, 0, 65535) || !Number.isInteger(pts) || typeof obj[4] !== "string"
          || obj[4].length > MAX_SESSION_ID || !int(obj[6], 1, 16) || !int(obj[7], 0, 16) || !(obj[8] instanceof Uint8Array))
        throw new Error("malformed keyframe");
      const names = obj[5];
      if (!(Number.isInteger(names) ? names in TABLES : Array.isArray(names) && names.length >= 1
            && names.length <= 4096 && names.every((n) => typeof n === "string")))
        throw new Error("malformed names");
    } else {
      sid = b.eg(0); seq = b.read(16);
      const link = b.eg(0);
      back = Math.floor(link / 2) + 1; isRef = link % 2 === 0; pts = unzigzag(b.eg(0));
      if (sid > 65535 || back > 65535) throw new Error("malformed delta header");
    }
    const s = this.streams.get(sid) ?? { lastSeq: -1, waiting: false, ref: null, prev: null };
    const lost = s.lastSeq < 0 ? 0 : (seq - s.lastSeq - 1 + 65536) % 65536;
    if (lost >= 32768) { this.counts.late++; return null; }         // late or duplicate
    let frame;
    if (key) {
      const [, , , , session, names, bits, poseBits, vals] = obj;
      const m = Number.isInteger(names) ? TABLES[names].length : names.length;
      const size = m * bits + 9 * poseBits, v = new Bits(vals);
      if (vals.length !== Math.ceil(size / 8)) throw new Error("keyframe values: wrong length");
      const q = Array.from({ length: m }, () => v.read(bits));
      const pose = poseBits ? Array.from({ length: 9 }, () => v.read(poseBits)) : null;
      v.finish();
      Object.assign(s, { session, names, bits, poseBits, waiting: false, prev: null });
      frame = s.ref = { seq, pts, q, pose };
    } else {
      if (lost && !this.resume) s.waiting = true;
      if (s.waiting || !s.ref || (seq - back + 65536) % 65536 !== s.ref.seq) {
        s.waiting = true; s.lastSeq = seq; this.streams.set(sid, s);
        this.counts.lost += lost; this.counts.refused++; this.refusedSeq = seq;
        return null;                                                // refused: ask for a keyframe
      }
      if (b.size > 8 * (8 * (s.ref.q.length + (s.poseBits ? 9 : 0)) + 32)) throw new Error("delta too long");
      const motion = back === 1 && s.prev !== null && (s.ref.seq - s.prev.seq + 65536) % 65536 === 1;
      const wide = !motion && b.read(1) === 1;
      const q = readValues(b, s.ref.q, motion ? s.prev.q : null, s.bits, wide);
      const pose = s.poseBits ? readValues(b, s.ref.pose, motion ? s.prev.pose : null, s.poseBits, wide) : null;
      b.finish();
      frame = { seq, pts: s.ref.pts + pts + (motion ? s.ref.pts - s.prev.pts : 0), q, pose };
      if (isRef) [s.prev, s.ref] = [s.ref, frame];
    }
    s.lastSeq = seq; this.streams.set(sid, s);
    this.counts.lost += lost; this.counts.frames++;
    const top = 2 ** s.bits - 1, ptop = 2 ** s.poseBits - 1;
    return { sid, seq, keyframe: key, session: s.session, names: s.names, pts: frame.pts, q: frame.q,
             weights: frame.q.map((x) => x / top),
             pose: frame.pose && frame.pose.map((x) => -Math.PI + (x * 2 * Math.PI) / ptop) };
  }
}
