// The connection to a sink (docs/delivery.md): WebRTC DataChannels first, the WebSocket /ws as the
// fallback, and reconnection with backoff whenever the connection drops.
//
// URL params: ?transport=websocket never tries WebRTC; ?transport=webrtc never falls back.
//
// Events (EventTarget): "state" {detail: {state, transport, error}}, "packet" {detail: Uint8Array; a
// bundle's packets one by one},
// "voice" {detail: a voice frame {t, s, p, n, d}: a msgpack map, where a face packet is an array or
// bin}, "track" {detail: {track, receiver}} (WebRTC: the voice's audio track), "message" {detail: the
// JSON object}, "open" {detail: transport name}, "close".
//
// The voice: when /config.json says the graph has one ("audio": true), a WebSocket asks for it in
// the stream (?audio=opus, or pcm where WebCodecs' AudioDecoder is missing) and a WebRTC offer adds
// a receive-only audio transceiver, so the voice comes as an audio track.
// state: "connecting" (first attempt), "live", "reconnecting" (after a drop, or between attempts).

import { decode as msgpackDecode } from "@msgpack/msgpack";

const RTC_OPEN_TIMEOUT_MS = 5000;   // offer, ICE and both channels open, or fall back
const ICE_GATHER_TIMEOUT_MS = 2000; // send what we have by then
const WS_OPEN_TIMEOUT_MS = 5000;
const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 8000;
const RTC_DISCONNECTED_GRACE_MS = 2000; // ICE "disconnected" this long counts as a drop
const IDLE_PROBE_MS = 2000;  // nothing received this long: is the sink still there? (GET config.json)

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const isMap = (b) => (b & 0xf0) === 0x80 || b === 0xde || b === 0xdf;  // msgpack fixmap, map16, map32
// a bundle (nodes/delivery/bundle.py): a fixarray of 2..15 bins, where a keyframe's first element is an int
const isBundle = (u8) => u8.length > 1 && u8[0] >= 0x92 && u8[0] <= 0x9f && u8[1] >= 0xc4 && u8[1] <= 0xc6;

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Delay before reconnect attempt `n` (0-based): 0.5 s doubling to 8 s, each drawn from [d/2, d] (jitter). */
export function backoffDelay(n, random = Math.random) {
  const d = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** n);
  return d / 2 + random() * (d / 2);
}

/** A WebSocket or a pair of DataChannels, one interface: send(obj), close(), closed (a promise). */
class Connection {
  constructor(name, sink) {
    this.name = name; this.sink = sink; this.isOpen = true; this.cleanups = [];
    this.closed = new Promise((resolve) => { this._resolveClosed = resolve; });
  }
  drop(reason) {
    if (!this.isOpen) return;
    this.isOpen = false;
    for (const f of this.cleanups) { try { f(); } catch { /* already closed */ } }
    this._resolveClosed(reason);
  }
  close() { this.drop("closed by the page"); }
}

export class Transport extends EventTarget {
  /**
   * @param {object} opts
   * @param {URLSearchParams} [opts.params] the page's URL params (transport=...)
   * @param {string|null} [opts.session] the session to watch (null: the first live one)
   * @param {number|null} [opts.lod] a level of detail 0..3 (null: the sink's choice)
   */
  constructor({ params = new URLSearchParams(), session = null, lod = null, audioFormat = () => "opus" } = {}) {
    super();
    this.mode = params.get("transport"); // "websocket" | "webrtc" | null
    this.session = session; this.lod = lod;
    this.audioFormat = audioFormat;       // the voice's format on a WebSocket: "opus" | "pcm"
    this.audio = null;                    // what this connection asks for: a format, "rtp" (a track), or null
    this.state = "connecting"; this.name = null; this.config = null; this.error = null;
    this.conn = null; this.stopped = false; this.attempt = 0;
    this.bytesIn = 0; this.messagesIn = 0; this.connects = 0; this.lastMessageAt = 0; this._probing = false;
  }

  start() { this._loop(); return this; }

  stop() { this.stopped = true; if (this.conn) this.conn.close(); }

  /** Sends one JSON message on the control path; false when not connected. */
  send(obj) {
    if (!this.conn || !this.conn.isOpen) return false;
    try { this.conn.send(JSON.stringify(obj)); return true; } catch { return false; }
  }

  /** Chooses a session (null: the first live one) and level of detail; kept for reconnects. */
  subscribe(session, lod) {
    this.session = session ?? null; this.lod = lod ?? null;
    return this.send(this._subscription());
  }

  _subscription() {
    const msg = { type: "subscribe", session: this.session, lod: this.lod };
    if (this.name === "websocket" && this.audio) msg.audio = this.audio;
    return msg;
  }

  _setState(state, error = null) {
    this.state = state; this.error = error;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, transport: this.name, error } }));
  }

  async _loop() {
    while (!this.stopped) {
      this._setState(this.connects === 0 && this.attempt === 0 ? "connecting" : "reconnecting", this.error);
      let conn = null;
      try {
        const res = await withTimeout(fetch("config.json", { cache: "no-store" }), 5000, "config.json");
        if (!res.ok) throw new Error(`config.json: HTTP ${res.status}`);
        this.config = await res.json();
        conn = await this._open(this.config);
      } catch (e) {
        this.error = String(e && e.message ? e.message : e);
      }
      if (conn && this.stopped) conn.close();
      if (conn && !this.stopped) {
        this.conn = conn; this.name = conn.name; this.attempt = 0; this.connects++; this.error = null;
        this.lastMessageAt = performance.now();
        this._setState("live");
        this.dispatchEvent(new CustomEvent("open", { detail: conn.name }));
        // always say what we watch: a sink may wait for it (null: the first live session)
        this.send(this._subscription());
        const watchdog = setInterval(() => this._probe(conn), IDLE_PROBE_MS / 2);
        const reason = await conn.closed;
        clearInterval(watchdog);
        this.conn = null; this.name = null;
        this.error = String(reason);
        this.dispatchEvent(new Event("close"));
      }
      if (this.stopped) break;
      this._setState("reconnecting", this.error);
      await sleep(backoffDelay(this.attempt++));
    }
  }

  /** A dead sink's UDP peer says nothing (WebRTC notices only after seconds): when the connection has
   *  been quiet a while, ask the sink's HTTP server, the same process; no answer at all is a drop. */
  async _probe(conn) {
    if (!conn.isOpen || this._probing || performance.now() - this.lastMessageAt < IDLE_PROBE_MS) return;
    this._probing = true;
    try {
      await withTimeout(fetch("config.json", { cache: "no-store" }), IDLE_PROBE_MS, "probe");
      this.lastMessageAt = performance.now();
    } catch (e) {
      conn.drop(`the sink does not answer (${e && e.message ? e.message : e})`);
    } finally {
      this._probing = false;
    }
  }

  async _open(config) {
    const transports = Array.isArray(config.transports) ? config.transports : ["websocket"];
    const rtcOk = transports.includes("webrtc") && typeof RTCPeerConnection !== "undefined";
    if (this.mode !== "websocket" && rtcOk) {
      try {
        return await this._openRtc(config);
      } catch (e) {
        if (this.mode === "webrtc") throw e;
        console.warn(`WebRTC failed (${e && e.message ? e.message : e}): falling back to WebSocket`);
      }
    }
    if (this.mode === "webrtc") throw new Error(rtcOk ? "WebRTC failed" : "WebRTC is not available here");
    return await this._openWs();
  }

  _deliver(data) {
    this.messagesIn++;
    this.lastMessageAt = performance.now();
    if (typeof data === "string") {
      this.bytesIn += data.length;
      let msg;
      try { msg = JSON.parse(data); } catch { console.warn("not JSON:", data.slice(0, 80)); return; }
      this.dispatchEvent(new CustomEvent("message", { detail: msg }));
    } else {
      const u8 = data instanceof Uint8Array ? data : new Uint8Array(data);
      this.bytesIn += u8.length;
      if (u8.length && isMap(u8[0])) {
        let frame;
        try { frame = msgpackDecode(u8); } catch { frame = null; }
        this.dispatchEvent(new CustomEvent("voice", { detail: frame }));
      } else if (isBundle(u8)) {  // several packets gathered for a slow link: each as it is
        let packets;
        try { packets = msgpackDecode(u8); } catch { packets = [u8]; }  // the decoder reports it malformed
        for (const p of packets) this.dispatchEvent(new CustomEvent("packet", { detail: p }));
      } else {
        this.dispatchEvent(new CustomEvent("packet", { detail: u8 }));
      }
    }
  }

  _openWs() {
    const url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (this.session !== null) url.searchParams.set("session", this.session);
    if (this.lod !== null) url.searchParams.set("lod", String(this.lod));
    this.audio = this.config && this.config.audio ? this.audioFormat() : null;
    if (this.audio) url.searchParams.set("audio", this.audio);
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const conn = new Connection("websocket", ws);
    conn.send = (text) => ws.send(text);
    conn.cleanups.push(() => ws.close());
    ws.onmessage = (ev) => { if (conn.isOpen) this._deliver(ev.data); };
    const opened = new Promise((resolve, reject) => {
      ws.onopen = () => resolve(conn);
      ws.onerror = () => reject(new Error("WebSocket error"));
      ws.onclose = (ev) => { reject(new Error(`WebSocket closed (${ev.code})`)); conn.drop(`WebSocket closed (${ev.code})`); };
    });
    return withTimeout(opened, WS_OPEN_TIMEOUT_MS, "WebSocket open").catch((e) => { conn.drop(e.message); throw e; });
  }

  async _openRtc(config) {
    const pc = new RTCPeerConnection({ iceServers: Array.isArray(config.ice_servers) ? config.ice_servers : [] });
    const conn = new Connection("webrtc", pc);
    conn.cleanups.push(() => pc.close());
    const avatar = pc.createDataChannel("avatar", { ordered: false, maxRetransmits: 0 });
    const control = pc.createDataChannel("control");
    this.audio = config.audio ? "rtp" : null;
    if (config.audio) {  // the voice comes as an audio track
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.ontrack = (ev) => { if (conn.isOpen) this.dispatchEvent(new CustomEvent("track", { detail: { track: ev.track, receiver: ev.receiver } })); };
    }
    const channels = [avatar, control];
    for (const ch of channels) {
      ch.binaryType = "arraybuffer";
      ch.onmessage = (ev) => { if (conn.isOpen) this._deliver(ev.data); };
      ch.onclose = () => conn.drop(`DataChannel ${ch.label} closed`);
    }
    conn.send = (text) => control.send(text);
    let grace = null;
    conn.cleanups.push(() => clearTimeout(grace));
    pc.onconnectionstatechange = () => {
      const s = pc.connectionState;
      if (s === "failed" || s === "closed") conn.drop(`WebRTC ${s}`);
      else if (s === "disconnected") { clearTimeout(grace); grace = setTimeout(() => conn.drop("WebRTC disconnected"), RTC_DISCONNECTED_GRACE_MS); }
      else if (s === "connected") clearTimeout(grace);
    };
    const setup = async () => {
      await pc.setLocalDescription(await pc.createOffer());
      await withTimeout(new Promise((resolve) => {
        if (pc.iceGatheringState === "complete") return resolve();
        pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
      }), ICE_GATHER_TIMEOUT_MS, "ICE gathering").catch(() => { /* send the candidates gathered so far */ });
      const res = await fetch("rtc/offer", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", session: this.session, lod: this.lod }),
      });
      if (!res.ok) {
        let detail = "";
        try { detail = (await res.json()).detail; } catch { /* no JSON body */ }
        throw new Error(`POST rtc/offer: HTTP ${res.status}${detail ? ` (${JSON.stringify(detail)})` : ""}`);
      }
      const answer = await res.json();
      await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
      await Promise.all(channels.map((ch) => ch.readyState === "open" ? null : new Promise((resolve, reject) => {
        ch.addEventListener("open", resolve, { once: true });
        ch.addEventListener("close", () => reject(new Error(`DataChannel ${ch.label} closed before it opened`)), { once: true });
      })));
      return conn;
    };
    try {
      return await withTimeout(setup(), RTC_OPEN_TIMEOUT_MS, "WebRTC connect");
    } catch (e) {
      conn.drop(e.message);
      throw e;
    }
  }
}
