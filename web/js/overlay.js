// The overlay: fps, latency, kbit/s, transport, loss; plus the session and LOD pickers.
//
// fps: frames decoded per second. kbit/s: bytes received (packets and JSON) per second.
// latency: how much later than the fastest frame seen a frame arrives, smoothed. The frames' pts
// come from the sender's clock, which the browser does not share, so the page cannot know the
// absolute delay: it takes arrival - pts, whose minimum over the stream stands for the fixed
// offset, and shows the excess (queueing, jitter, a slow viewer). The absolute pipeline-to-page
// latency is what the sink measures from the page's echo messages (`stats`: echo_latency_us_*).

const $ = (id) => document.getElementById(id);

export class Meter {
  /** Counts events and a quantity per second over a sliding one-second window. */
  constructor() { this.events = []; }
  add(amount = 1, now = performance.now()) { this.events.push([now, amount]); this._trim(now); }
  perSecond(now = performance.now()) {
    this._trim(now);
    if (!this.events.length) return 0;
    return this.events.reduce((s, [, a]) => s + a, 0);
  }
  _trim(now) { while (this.events.length && this.events[0][0] < now - 1000) this.events.shift(); }
}

export class RelativeLatency {
  /** arrival - pts beyond the smallest such difference seen, smoothed (ms). */
  constructor() { this.reset(); }
  reset() { this.base = Infinity; this.value = null; }
  add(ptsMs, arrivalMs = performance.now()) {
    const d = arrivalMs - ptsMs;
    if (d < this.base || d - this.base > 10000) this.base = d;  // a faster frame, or the sender's clock restarted
    const x = d - this.base;
    this.value = this.value === null ? x : this.value + 0.1 * (x - this.value);
    return this.value;
  }
}

export class Overlay {
  constructor() {
    this.el = {
      state: $("stat-state"), transport: $("stat-transport"), fps: $("stat-fps"), latency: $("stat-latency"),
      kbps: $("stat-kbps"), lost: $("stat-lost"), model: $("stat-model"), message: $("message"),
      session: $("session"), lod: $("lod"), voice: $("stat-voice"), sound: $("sound"),
    };
  }

  setState(state, transport, error) {
    document.body.dataset.state = state;
    this.el.state.textContent = state;
    this.el.transport.textContent = transport ?? "-";
    this.message(state === "live" ? null : error);
  }

  message(text) {
    this.el.message.hidden = !text;
    this.el.message.textContent = text ?? "";
  }

  /** The browser holds the sound back until the user acts: show a button that plays it. */
  soundBlocked(blocked, enable) {
    const b = this.el.sound;
    if (blocked && b.hidden) console.info("the browser holds the voice back until the user acts: click to enable sound");
    b.hidden = !blocked;
    b.onclick = blocked ? async () => { if (await enable()) b.hidden = true; } : null;
  }

  update({ fps, latencyMs, kbps, lost, model, voice }) {
    if (voice !== undefined) this.el.voice.textContent = voice ?? "-";
    this.el.fps.textContent = fps.toFixed(0);
    this.el.latency.textContent = latencyMs === null ? "-" : `+${latencyMs.toFixed(1)} ms`;
    this.el.kbps.textContent = kbps.toFixed(1);
    this.el.lost.textContent = String(lost);
    this.el.model.textContent = model ?? "-";
  }

  /** Fills the session picker; keeps the choice when it is still live. */
  setSessions(sessions, current) {
    const sel = this.el.session, chosen = sel.value;
    const want = [...new Set([...(sessions || []), ...(chosen ? [chosen] : [])])];
    const have = [...sel.options].slice(1).map((o) => o.value);
    if (want.join("\n") !== have.join("\n")) {
      while (sel.options.length > 1) sel.remove(1);
      for (const s of want) sel.add(new Option(s, s));
    }
    sel.value = chosen || "";
    sel.title = current ? `showing ${current}` : "";
  }

  onPick(fn) {
    const pick = () => fn(this.el.session.value || null, this.el.lod.value === "" ? null : Number(this.el.lod.value));
    this.el.session.addEventListener("change", pick);
    this.el.lod.addEventListener("change", pick);
  }

  setPicks(session, lod) {
    const sel = this.el.session;
    if (session) {
      if (![...sel.options].some((o) => o.value === session)) sel.add(new Option(session, session));
      sel.value = session;
    }
    this.el.lod.value = lod === null || lod === undefined ? "" : String(lod);
  }
}
