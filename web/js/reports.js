// Receiver reports (docs/delivery.md): every 250 ms the page tells the sink what it got, so the
// sink's network agent can pick the layer this link carries (docs/agents.md). The sink's pings
// are answered at once, for its round-trip time.

export const REPORT_MS = 250;
const RESUME_MS = 1000;  // a stream silent this long that resumes at a keyframe was left (a layer switch), not lost

export class ReceiverReport {
  constructor() {
    this.received = 0;   // packets decoded or refused
    this.lost = 0;       // packets found missing by their sequence numbers
    this.jitterMs = 0;   // RFC 3550 inter-arrival jitter of the decoded frames
    this.lastTransit = null;
    this.streamSeen = new Map();  // sid -> when its last frame came (ms)
    this.train = null;   // the sink's train probe: {id, at: [[pad index, ms], ...]}, told in the next report
  }

  /** A pad of the sink's train probe came (nodes/delivery/netstats.py): when, for its dispersion. */
  pad(msg, now) {
    if (typeof msg.probe !== "number" || typeof msg.i !== "number") return;
    if (this.train === null || this.train.id !== msg.probe) this.train = { id: msg.probe, at: [] };
    if (this.train.at.length < 48) this.train.at.push([msg.i, Math.round(now * 100) / 100]);
  }

  /** After one decode: `gained` packets found missing by it, `frame` what it gave (or null). */
  packet(frame, gained, now) {
    this.received++;
    if (frame === null) { this.lost += gained; return; }
    const last = this.streamSeen.get(frame.sid);
    this.streamSeen.set(frame.sid, now);
    if (gained && !(frame.keyframe && (last === undefined || now - last > RESUME_MS))) this.lost += gained;
    const transit = now - frame.pts;
    if (this.lastTransit !== null) this.jitterMs += (Math.abs(transit - this.lastTransit) - this.jitterMs) / 16;
    this.lastTransit = transit;
  }

  message(bytesIn) {
    const msg = { type: "report", received: this.received, lost: this.lost, bytes: bytesIn,
                  jitter_ms: Math.round(this.jitterMs * 1000) / 1000 };
    if (this.train !== null) msg.probe = this.train;  // the pads of a train probe since the last report
    return msg;
  }

  /** The report to send now: the same, and a train's pads are then told. */
  next(bytesIn) {
    const msg = this.message(bytesIn);
    this.train = null;
    return msg;
  }
}
