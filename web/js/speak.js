// The page makes the avatar speak, through the control API (docs/voice.md):
// - SayBox: a sentence typed in the page goes to POST /say, which a text-to-speech node says;
// - Microphone: the user's microphone streams to the API's /speak WebSocket (Opus from WebCodecs'
//   AudioEncoder where the browser has it, else 16-bit PCM), which a voice_in node brings into the
//   graph, so every viewer of the session sees the avatar mouth it (and hears it, if the graph
//   routes the voice to them).
// Both are shown only when the graph has a node that takes them (GET /interfaces).

const FRAME_S = 0.02;

/** `Authorization` headers for the API, from the page's token field (empty: none). */
export function authHeaders(token) {
  const h = { "Content-Type": "application/json" };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

/** An API error answer in words: its status and its `detail`. */
export async function errorText(res) {
  let detail = "";
  try { detail = (await res.json()).detail; } catch { /* no JSON body */ }
  return `HTTP ${res.status}${detail ? `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}` : ""}`;
}

export class SayBox {
  /** @param {{form: HTMLFormElement, text: HTMLInputElement, interrupt: HTMLInputElement, status: HTMLElement,
   *   api: () => string|null, token: () => string, session: () => string}} opts */
  constructor(opts) {
    Object.assign(this, opts);
    this.form.addEventListener("submit", (ev) => { ev.preventDefault(); this.say(this.text.value); });
  }

  async say(text) {
    const api = this.api();
    text = String(text || "").trim();
    if (!api || !text) return false;
    this.status.classList.remove("error");
    this.status.textContent = "saying...";
    try {
      const res = await fetch(`${api.replace(/\/$/, "")}/say`, {
        method: "POST", headers: authHeaders(this.token()),
        body: JSON.stringify({ session: this.session(), text, interrupt: this.interrupt.checked }),
      });
      if (!res.ok) throw new Error(await errorText(res));
      this.text.value = "";
      this.status.textContent = "";
      return true;
    } catch (e) {
      this.status.classList.add("error");
      this.status.textContent = `say: ${e.message}`;
      return false;
    }
  }
}

export class Microphone extends EventTarget {
  /** @param {{button: HTMLButtonElement, status: HTMLElement, api: () => string|null, token: () => string,
   *   session: () => string}} opts */
  constructor(opts) {
    super();
    Object.assign(this, opts);
    this.on = false; this.ws = null; this.ctx = null; this.stream = null; this.encoder = null;
    this.sent = { frames: 0, bytes: 0 };
    this.captures = [];  // [epoch ms when the worklet had a frame's last sample, frame number, its RMS]: the benchmark
    this.button.addEventListener("click", () => (this.on ? this.stop() : this.start()));
  }

  /** Opus where WebCodecs can encode it, else 16-bit PCM. */
  static codec() { return typeof AudioEncoder === "function" ? "opus" : "pcm"; }

  async start() {
    const api = this.api();
    if (!api || this.on) return false;
    this.on = true;
    this._show("starting...");
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true,
                                                                         noiseSuppression: true, autoGainControl: true } });
      this.ctx = new AudioContext({ sampleRate: 48000, latencyHint: "interactive" });
      await this.ctx.audioWorklet.addModule("js/mic-worklet.js");
      const codec = Microphone.codec(), rate = this.ctx.sampleRate;
      const url = new URL(`${api.replace(/\/$/, "")}/speak`);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      this.ws = new WebSocket(url);
      this.ws.binaryType = "arraybuffer";
      await new Promise((resolve, reject) => {
        this.ws.onopen = resolve;
        this.ws.onerror = () => reject(new Error("the API's /speak WebSocket did not open"));
      });
      this.ws.onmessage = (ev) => this._message(ev.data);
      this.ws.onclose = (ev) => { if (this.on) this.stop(ev.reason ? `closed: ${ev.reason}` : `closed (${ev.code})`); };
      const start = { type: "start", session: this.session(), codec, rate, channels: 1, format: "s16le" };
      if (this.token()) start.token = this.token();
      this.ws.send(JSON.stringify(start));
      if (codec === "opus") this._openEncoder(rate);
      const node = new AudioWorkletNode(this.ctx, "mic-capture");
      node.port.onmessage = (ev) => this._frame(ev.data.pcm, ev.data.end, rate);
      this.ctx.createMediaStreamSource(this.stream).connect(node);
      this.node = node;
      this._show("microphone on", false, true);
      return true;
    } catch (e) {
      this.stop(e.message || String(e));
      return false;
    }
  }

  stop(error = null) {
    const was = this.on;
    this.on = false;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      try { this.ws.send(JSON.stringify({ type: "end" })); } catch { /* closing */ }
      this.ws.close();
    }
    this.ws = null;
    if (this.encoder && this.encoder.state !== "closed") { try { this.encoder.close(); } catch { /* closed */ } }
    this.encoder = null;
    if (this.node) this.node.disconnect();
    this.node = null;
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
    if (this.ctx) this.ctx.close().catch(() => {});
    this.ctx = null;
    if (error) this._show(`microphone: ${error}`, true);
    else if (was) this._show("");
  }

  _openEncoder(rate) {
    this.encoder = new AudioEncoder({
      output: (chunk) => {
        const data = new Uint8Array(chunk.byteLength);
        chunk.copyTo(data);
        this._send(data);
      },
      error: (e) => this.stop(`encoder: ${e.message}`),
    });
    this.encoder.configure({ codec: "opus", sampleRate: rate, numberOfChannels: 1, bitrate: 32000,
                             opus: { frameDuration: FRAME_S * 1e6 } });
  }

  _frame(pcm, endCtx, rate) {
    if (!this.on || !this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    // when the worklet had the frame's last sample (the device's own input latency comes before)
    const at = performance.now() - Math.max(0, this.ctx.currentTime - endCtx) * 1000;
    let power = 0;
    for (const x of pcm) power += x * x;
    this.captures.push([performance.timeOrigin + at, this.sent.frames, Math.sqrt(power / pcm.length)]);
    if (this.captures.length > 3000) this.captures.splice(0, 1000);
    if (this.encoder) {
      this.encoder.encode(new AudioData({ format: "f32", sampleRate: rate, numberOfFrames: pcm.length, numberOfChannels: 1,
                                          timestamp: Math.round((this.sent.frames * pcm.length * 1e6) / rate), data: pcm }));
    } else {
      const out = new DataView(new ArrayBuffer(pcm.length * 2));
      for (let i = 0; i < pcm.length; i++) out.setInt16(2 * i, Math.max(-32768, Math.min(32767, Math.round(pcm[i] * 32767))), true);
      this._send(new Uint8Array(out.buffer));
    }
    this.sent.frames++;
  }

  _send(data) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(data);
      this.sent.bytes += data.length;
    }
  }

  _message(data) {
    if (typeof data !== "string") return;
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.type === "error") this._show(`microphone: ${msg.error}`, true);
    this.dispatchEvent(new CustomEvent("message", { detail: msg }));
  }

  _show(text, error = false, active = false) {
    if (active !== this._active) {
      this._active = active;
      this.dispatchEvent(new CustomEvent("state", { detail: active }));  // true while streaming
    }
    this.status.classList.toggle("error", error);
    this.status.textContent = text;
    this.button.classList.toggle("active", active);
    this.button.textContent = active ? "stop microphone" : "microphone";
  }
}
