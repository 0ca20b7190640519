// The avatar's voice, and the clock the face follows (docs/delivery.md, "Voice and clocking").
//
// The sink sends each session's voice with presentation pts on the graph's clock, the same clock
// as the face frames' pts: a face frame is shown when the sound being heard reaches its pts, so the
// audio is the master clock, as in every video player. `ptsNow()` is that clock (ms), or null while
// no voice plays (then frames are shown as they come, as a page without audio does).
//
// Two ways the voice arrives:
// - WebSocket: voice frames in the stream ({t: "opus" | "pcm", s, p: pts in us, n, d}), decoded here
//   (WebCodecs' AudioDecoder for Opus; 16 kHz s16le PCM where the browser has no AudioDecoder) and
//   scheduled in an AudioContext: pts p plays at anchor.ctx + (p - anchor.pts). The clock is the
//   context time being heard now (getOutputTimestamp), mapped back to pts.
// - WebRTC: an audio track (Opus over RTP) played by an <audio> element. The clock is the RTP
//   timestamp of the audio last played out (RTCRtpReceiver.getSynchronizationSources) mapped to pts
//   with the sink's {"type": "voice_clock", epoch_us, rtp_origin}, plus the time since it played,
//   less the output device's latency (measured on an AudioContext: what plays out is heard later).
//
// Browsers may refuse to play sound before the user touches the page: `blocked` is then true and
// a "voice" event asks the page to show "click to enable sound"; `enable()` (from a click) plays.
const LEAD_S = 0.06;        // jitter buffer of the WebSocket voice: the first packet plays this long after it came
const MIN_AHEAD_S = 0.005;  // a packet due sooner than this is late: the timeline moves later (counted)
const REBUFFER_S = 0.05;    // ... by as much as it was late, and this much more (one glitch, not a run of them)
const MAX_AHEAD_S = 2.0;    // a packet due later than this: the sender's clock jumped, start again
const RTP_RATE = 48000;
const PCM_RATE = 16000;

export class Voice extends EventTarget {
  constructor() {
    super();
    this.ctx = null; this.output = null; this.analyser = null;
    this.decoder = null; this.anchor = null;              // {pts (us), ctx (s)}
    this.track = null; this.receiver = null; this.element = null; this.rtpClock = null;
    this.blocked = false; this.kind = null;               // "opus" | "pcm" | "rtp"
    this.counts = { frames: 0, played: 0, late: 0, rebuffers: 0, malformed: 0, decodeErrors: 0 };
    this._level = null; this._tap = null; this.outputLatencyS = 0;
    this.muted = false;
  }

  /** What to ask the sink for on a WebSocket: Opus where WebCodecs can decode it, else PCM. */
  static wsFormat() { return typeof AudioDecoder === "function" ? "opus" : "pcm"; }

  _context() {
    if (!this.ctx) {
      this.ctx = new AudioContext({ latencyHint: "interactive" });
      this.output = this.ctx.createGain();
      this.analyser = this.ctx.createAnalyser();  // listens only: what reaches it is played elsewhere
      this.analyser.fftSize = 512;
      this.output.connect(this.ctx.destination);
      this.output.connect(this.analyser);
      this.output.gain.value = this.muted ? 0 : 1;
      this._level = new Float32Array(this.analyser.fftSize);
      this.ctx.addEventListener("statechange", () => this._checkBlocked());
      this.ctx.resume().catch(() => {});
      this._checkBlocked();
    }
    return this.ctx;
  }

  _checkBlocked() {
    // a WebRTC voice plays in its <audio> element: its context only measures (and may be suspended)
    const ctxBlocked = this.kind !== "rtp" && this.ctx !== null && this.ctx.state !== "running" && this.ctx.state !== "closed";
    const elBlocked = this.element !== null && this.element.paused && this.track !== null;
    const blocked = ctxBlocked || elBlocked;
    if (blocked !== this.blocked) {
      this.blocked = blocked;
      this.dispatchEvent(new CustomEvent("blocked", { detail: blocked }));
    }
  }

  /** Silence the voice (a presenter's own page while it streams the microphone: no echo of oneself). */
  mute(on) {
    this.muted = on;
    if (this.output) this.output.gain.value = on ? 0 : 1;
    if (this.element) this.element.muted = on;
  }

  /** From a user gesture: start the sound the browser held back. */
  async enable() {
    if (this.ctx) await this.ctx.resume().catch(() => {});
    if (this.element && this.element.paused) await this.element.play().catch(() => {});
    this._checkBlocked();
    return !this.blocked;
  }

  /** The transport closed or the viewer switched sessions: forget the timeline (keep the context). */
  reset() {
    this.anchor = null; this.rtpClock = null;
    if (this.decoder && this.decoder.state !== "closed") { try { this.decoder.close(); } catch { /* closed */ } }
    this.decoder = null;
    if (this.element) { this.element.srcObject = null; }
    if (this._tap) this._tap.disconnect();
    this.track = null; this.receiver = null; this.kind = null; this._tap = null;
    this._checkBlocked();
  }

  // --- WebSocket voice -----------------------------------------------------------------------------
  /** One voice frame from the WebSocket (already msgpack-decoded). */
  frame(msg) {
    if (!msg || (msg.t !== "opus" && msg.t !== "pcm") || !Number.isInteger(msg.p) || !(msg.d instanceof Uint8Array)) {
      this.counts.malformed++;
      return;
    }
    this.counts.frames++;
    this._context();  // the player (and, until the user acts, maybe "click to enable sound")
    this.kind = msg.t;
    if (msg.t === "pcm") {
      if (msg.d.length % 2) { this.counts.malformed++; return; }
      const view = new DataView(msg.d.buffer, msg.d.byteOffset, msg.d.byteLength);
      const n = msg.d.length / 2, pcm = new Float32Array(n);
      for (let i = 0; i < n; i++) pcm[i] = view.getInt16(2 * i, true) / 32768;
      this._schedule(msg.p, pcm, PCM_RATE);
      return;
    }
    if (!this.decoder || this.decoder.state === "closed") {
      this.decoder = new AudioDecoder({
        output: (data) => this._decoded(data),
        error: (e) => { this.counts.decodeErrors++; console.warn("voice decoder:", e.message); this.decoder = null; },
      });
      this.decoder.configure({ codec: "opus", sampleRate: RTP_RATE, numberOfChannels: 1 });
    }
    try {
      this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: msg.p, data: msg.d }));
    } catch (e) {
      this.counts.decodeErrors++;
    }
  }

  _decoded(data) {
    try {
      const n = data.numberOfFrames, pcm = new Float32Array(n);
      data.copyTo(pcm, { planeIndex: 0, format: "f32-planar" });
      this._schedule(data.timestamp, pcm, data.sampleRate);
    } finally {
      data.close();
    }
  }

  _schedule(ptsUs, pcm, rate) {
    const ctx = this.ctx;
    if (!ctx || ctx.state !== "running") { this._checkBlocked(); return; }  // no clock runs: nothing to schedule on
    const now = ctx.currentTime;
    if (!this.anchor) this.anchor = { pts: ptsUs, ctx: now + LEAD_S };
    let at = this.anchor.ctx + (ptsUs - this.anchor.pts) / 1e6;
    if (at > now + MAX_AHEAD_S) {
      this.anchor = { pts: ptsUs, ctx: now + LEAD_S };
      at = now + LEAD_S;
    } else if (at < now + MIN_AHEAD_S) {                  // late: move the whole timeline later
      const shift = now + MIN_AHEAD_S + REBUFFER_S - at;
      this.anchor.ctx += shift; at += shift;
      this.counts.late++; this.counts.rebuffers++;
    }
    const buffer = ctx.createBuffer(1, pcm.length, rate);
    buffer.copyToChannel(pcm, 0);
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.output);
    src.start(at);
    this.counts.played++;
  }

  // --- WebRTC voice ----------------------------------------------------------------------------------
  /** The sink's audio track (pc.ontrack). */
  attachTrack(track, receiver) {
    this.track = track; this.receiver = receiver; this.kind = "rtp";
    if (!this.element) {
      this.element = document.createElement("audio");
      this.element.autoplay = true;
      this.element.addEventListener("playing", () => this._checkBlocked());
      this.element.addEventListener("pause", () => this._checkBlocked());
      document.body.appendChild(this.element);
    }
    this.element.srcObject = new MediaStream([track]);
    this.element.muted = this.muted;
    this.element.play().catch(() => this._checkBlocked()).finally(() => this._checkBlocked());
    this._tap = null;  // the level meter taps the track when it is first asked for (an AudioContext costs)
    this._measureOutputLatency();
  }

  /** The output device's latency, from an AudioContext on it (the element plays to the same
   *  device): the RTP playout timestamp is when the sound went to the device, heard this much later.
   *  The context is suspended again unless the level meter needs it. */
  _measureOutputLatency() {
    const ctx = this._context();
    const read = () => {
      if (ctx.state !== "running") return;
      this.outputLatencyS = (ctx.baseLatency || 0) + (ctx.outputLatency || 0);
      if (this.kind === "rtp" && !this._tap) ctx.suspend().catch(() => {});
    };
    setTimeout(read, 250);
  }

  /** {"type": "voice_clock"}: RTP timestamp r plays the sound of pts epoch_us + (r - rtp_origin) / 48 kHz. */
  setRtpClock(epochUs, rtpOrigin) {
    if (Number.isFinite(epochUs) && Number.isInteger(rtpOrigin)) this.rtpClock = { epochUs, rtpOrigin };
  }

  _tapTrack(track) {  // the level meter listens to the track too (it does not play it: the element does)
    const ctx = this._context();
    try {
      this._tap = ctx.createMediaStreamSource(new MediaStream([track]));
      this._tap.connect(this.analyser);
    } catch (e) {
      this._tap = false;
      console.warn("no level meter for the voice track:", e.message);
    }
  }

  // --- the clock -------------------------------------------------------------------------------------
  /** The pts (ms, the graph's clock) of the sound being heard now, or null while there is none. */
  ptsNow() {
    if (this.kind === "rtp") return this._rtpNow();
    const ctx = this.ctx, a = this.anchor;
    if (!a || !ctx || ctx.state !== "running") return null;
    const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
    let heard;
    if (ts && ts.performanceTime > 0) heard = ts.contextTime + (performance.now() - ts.performanceTime) / 1000;
    else heard = ctx.currentTime - (ctx.outputLatency || ctx.baseLatency || 0);
    return (a.pts + (heard - a.ctx) * 1e6) / 1000;
  }

  _rtpNow() {
    const clock = this.rtpClock, r = this.receiver;
    if (!clock || !r || !r.getSynchronizationSources || (this.element && this.element.paused)) return null;
    const sources = r.getSynchronizationSources();
    if (!sources.length) return null;
    const s = sources[0];
    const ticks = (s.rtpTimestamp - clock.rtpOrigin) >>> 0;           // RTP timestamps wrap at 2^32
    const playedMs = clock.epochUs / 1000 + (ticks * 1000) / RTP_RATE;
    const sinceMs = performance.timeOrigin + performance.now() - s.timestamp;  // s.timestamp: epoch ms
    return playedMs + Math.max(0, sinceMs) - this.outputLatencyS * 1000;  // played out, then heard after the device
  }

  /** When (performance.now() time) the sound the context is processing now will be heard. */
  heardAt() {
    const ctx = this.ctx;
    if (!ctx) return performance.now();
    const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
    if (ts && ts.performanceTime > 0) return ts.performanceTime + (ctx.currentTime - ts.contextTime) * 1000;
    return performance.now() + (ctx.outputLatency || ctx.baseLatency || 0) * 1000;
  }

  /** RMS of the sound playing now (0 when none): the level meter, and the tests' ears. */
  level() {
    if (this.kind === "rtp" && this.track) {
      if (this._tap === null) this._tapTrack(this.track);
      // the context may have been suspended after the tap was made (_measureOutputLatency's
      // suspend, asked for just before): the meter needs it running
      if (this._tap && this.ctx && this.ctx.state === "suspended" && !this.blocked) this.ctx.resume().catch(() => {});
    }
    if (!this.analyser || !this.ctx || this.ctx.state !== "running") return 0;
    this.analyser.getFloatTimeDomainData(this._level);
    let sum = 0;
    for (const x of this._level) sum += x * x;
    return Math.sqrt(sum / this._level.length);
  }
}
