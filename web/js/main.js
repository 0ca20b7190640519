// The page: connects to the sink, decodes packets, plays the voice, shows each face frame when the
// voice reaches its pts (or at once where there is no voice), shows the overlay, and calls the
// control API's /emotion. URL params: ?transport=websocket|webrtc, ?session=ID, ?lod=0..3,
// ?model=URL (a GLB on this origin), ?echo=0 (no echo messages), ?resume=1 (tolerant decoding),
// ?render=0 (decode and set the morphs, never draw: many viewers in one browser for a benchmark);
// fragment #token=... (the API's bearer token, kept in sessionStorage, then dropped from the URL).
//
// Test hooks: window.avatar (see the bottom) and document.body.dataset.state.
import { AvatarDecoder } from "./wireformat.js";
import { Transport } from "./transport.js";
import { Face, columnNames } from "./face.js";
import { Overlay, Meter, RelativeLatency } from "./overlay.js";
import { Voice } from "./voice.js";
import { Microphone, SayBox, authHeaders, errorText } from "./speak.js";
import { REPORT_MS, ReceiverReport } from "./reports.js";

const KEYFRAME_REQUEST_MIN_MS = 200;
const SHOW_AHEAD_MS = 8;        // a frame is shown at the animation frame nearest its pts: up to half a frame early
const MAX_PENDING_MS = 3000;    // frames further ahead of the voice than this: its clock is off, show them as they come
const SYNC_RING = 2048;         // A/V offsets remembered (window.avatar.sync)
const params = new URLSearchParams(location.search);
const echo = params.get("echo") !== "0";
const resumeAfterLoss = params.get("resume") === "1";
const N_LOD_LEVELS = 4; // levels of detail 0..3; the Python source is N_LOD_LEVELS in nodes/wire/limits.py
const intParam = (name, lo, hi) => {
  const v = params.get(name);
  return v !== null && /^\d+$/.test(v) && Number(v) >= lo && Number(v) <= hi ? Number(v) : null;
};

const overlay = new Overlay();
const rendering = params.get("render") !== "0";
const face = new Face(document.getElementById("view"), { render: rendering });
const voice = new Voice();
const transport = new Transport({ params, session: params.get("session") || null, lod: intParam("lod", 0, N_LOD_LEVELS - 1),
                                  audioFormat: Voice.wsFormat });
overlay.setPicks(transport.session, transport.lod);

// --- the model ----------------------------------------------------------------------------------
async function loadModel(source, name) {
  try {
    const names = await face.load(source, name);
    if (!names.length) overlay.message(`${name}: no morph targets`);
  } catch (e) {
    console.error(`could not load the model ${name}:`, e);
    overlay.message(`could not load ${name}`);
  }
}
const modelUrl = params.get("model") || "assets/face.glb";
const modelReady = loadModel(modelUrl, modelUrl.split("/").pop());
document.getElementById("model-file").addEventListener("change", async (ev) => {
  const file = ev.target.files && ev.target.files[0];
  if (file) await loadModel(await file.arrayBuffer(), file.name);
});

// --- packets --------------------------------------------------------------------------------------
let decoder = new AvatarDecoder({ resumeAfterLoss });
let framesDecoded = 0, framesShown = 0, malformed = 0, lastKeyframeRequest = -Infinity, lastFrame = null;
let pending = [];               // decoded frames waiting for the voice to reach their pts
const fps = new Meter(), bytes = new Meter(), latency = new RelativeLatency();
const report = new ReceiverReport();   // every REPORT_MS to the sink: what this link delivers
const sync = { offsets: new Float64Array(SYNC_RING), n: 0, skew: 0 };  // voice clock - pts of each frame shown on it

function resetStream() {
  decoder = new AvatarDecoder({ resumeAfterLoss });
  latency.reset();
  pending = [];
  voice.reset();
}

/** Puts a frame on the face now. */
function show(frame, clock = null) {
  lastFrame = frame;
  framesShown++;
  face.apply(frame);
  if (clock !== null) sync.offsets[sync.n++ % SYNC_RING] = clock - frame.pts;
  if (recording) recording.face.push([performance.now(), frame.pts, clock, jawOf(frame)]);
}

/** Each animation frame: the newest frame whose pts the voice has reached (all of them, without a voice). */
function showDue() {
  if (!pending.length) return;
  const clock = voice.ptsNow();
  if (clock === null || pending[0].pts > clock + MAX_PENDING_MS) {
    if (clock !== null) sync.skew++;
    show(pending[pending.length - 1]);
    pending = [];
    return;
  }
  let i = -1;
  while (i + 1 < pending.length && pending[i + 1].pts <= clock + SHOW_AHEAD_MS) i++;
  if (i >= 0) {
    show(pending[i], clock);
    pending = pending.slice(i + 1);
  }
}
if (rendering) face.beforeRender = showDue;
else { const loop = () => { showDue(); requestAnimationFrame(loop); }; requestAnimationFrame(loop); }

transport.addEventListener("packet", (ev) => {
  const now = performance.now();
  bytes.add(ev.detail.length, now);
  let frame;
  const lostBefore = decoder.counts.lost;
  try {
    frame = decoder.decodeBytes(ev.detail);
  } catch (e) {
    if (malformed++ % 100 === 0) console.warn("malformed packet:", e.message);
    return;
  }
  report.packet(frame, decoder.counts.lost - lostBefore, now);
  if (frame === null) {
    if (decoder.waiting.length && now - lastKeyframeRequest >= KEYFRAME_REQUEST_MIN_MS) {
      lastKeyframeRequest = now;
      // seq: the packet it could not decode, of the stream it is on (the sink drops a stale ask; the
      // first waiting stream may be a layer the sink moved it off, with seqs of its own)
      const seq = decoder.refusedSeq >= 0 ? decoder.refusedSeq : decoder.streams.get(decoder.waiting[0][0]).lastSeq;
      transport.send(seq >= 0 ? { type: "keyframe", seq } : { type: "keyframe" });
    }
    return;
  }
  framesDecoded++;
  fps.add(1, now);
  latency.add(frame.pts, now);
  if (voice.ptsNow() === null && !pending.length) show(frame);  // no voice: as it comes, as ever
  else pending.push(frame);
  if (echo) transport.send({ type: "echo", session: frame.session, seq: frame.seq });
});

// --- the voice ------------------------------------------------------------------------------------
transport.addEventListener("voice", (ev) => voice.frame(ev.detail));
transport.addEventListener("track", (ev) => voice.attachTrack(ev.detail.track, ev.detail.receiver));
voice.addEventListener("blocked", (ev) => overlay.soundBlocked(ev.detail, () => voice.enable()));

transport.addEventListener("message", (ev) => {
  const msg = ev.detail;
  if (msg.type === "hello") {
    overlay.setSessions(msg.sessions, msg.session);
  } else if (msg.type === "subscribed") {  // the sink's answer to a subscribe (not in docs/delivery.md yet)
    overlay.setSessions([], msg.session);
  } else if (msg.type === "sessions") {
    overlay.setSessions(msg.sessions, lastFrame && lastFrame.session);
  } else if (msg.type === "voice_clock") {
    voice.setRtpClock(msg.epoch_us, msg.rtp_origin);
  } else if (msg.type === "ping") {     // the sink's round-trip measurement: answered at once
    transport.send({ type: "pong", t: msg.t });
  } else if (msg.type === "pad" && msg.probe !== undefined) {  // a train probe's pad: its arrival counts
    report.pad(msg, performance.now());
  }
});
setInterval(() => { if (transport.state === "live") transport.send(report.next(transport.bytesIn)); }, REPORT_MS);

transport.addEventListener("close", resetStream);
transport.addEventListener("state", (ev) => {
  overlay.setState(ev.detail.state, ev.detail.transport, ev.detail.error);
  if (ev.detail.state === "live") refreshInterfaces();
});

overlay.onPick((session, lod) => {
  resetStream();
  transport.subscribe(session, lod);
});

// --- emotions (the control API) -------------------------------------------------------------------
const tokenField = document.getElementById("token");
const intensity = document.getElementById("intensity");
const status = document.getElementById("emotion-status");
{
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("avatar-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);  // the token leaves the URL bar
  }
  tokenField.value = sessionStorage.getItem("avatar-token") || "";
  tokenField.addEventListener("change", () => sessionStorage.setItem("avatar-token", tokenField.value.trim()));
  document.getElementById("token-form").addEventListener("submit", (ev) => ev.preventDefault());
}
intensity.addEventListener("input", () => {
  document.getElementById("intensity-value").textContent = Number(intensity.value).toFixed(2);
});

// --- what the graph can be asked (GET /interfaces): emotion buttons, the text box, the microphone ------------
const api = () => (transport.config && transport.config.api) || null;
const token = () => tokenField.value.trim();
const watching = () => transport.session || (lastFrame && lastFrame.session) || "default";

async function refreshInterfaces() {
  const base = api();
  let have = null;
  if (base) {
    try {
      const res = await fetch(`${base.replace(/\/$/, "")}/interfaces`, { headers: authHeaders(token()) });
      if (res.ok) have = (await res.json()).interfaces || {};
    } catch { /* the API is down or refuses us: show what needs no answer */ }
  }
  document.getElementById("token-form").hidden = !base;
  document.getElementById("emotions").hidden = !base || (have !== null && !have.emotion);  // unknown: as before
  document.getElementById("say-form").hidden = !(have && have.say);
  document.getElementById("mic").hidden = !(have && have.speak && navigator.mediaDevices);
  document.getElementById("speak").hidden = !(have && (have.say || have.speak));
}
tokenField.addEventListener("change", refreshInterfaces);

const speakStatus = document.getElementById("speak-status");
const sayBox = new SayBox({ form: document.getElementById("say-form"), text: document.getElementById("say-text"),
                            interrupt: document.getElementById("say-interrupt"), status: speakStatus, api, token,
                            session: watching });
const microphone = new Microphone({ button: document.getElementById("mic"), status: speakStatus, api, token,
                                    session: watching });
microphone.addEventListener("state", (ev) => voice.mute(ev.detail));  // the presenter does not hear itself late

async function setEmotion(emotion) {
  const base = api();
  if (!base) return;
  status.classList.remove("error");
  status.textContent = `${emotion}...`;
  try {
    const res = await fetch(`${base.replace(/\/$/, "")}/emotion`, {
      method: "POST", headers: authHeaders(token()), body: JSON.stringify({ emotion, intensity: Number(intensity.value) }),
    });
    if (!res.ok) throw new Error(await errorText(res));
    status.textContent = `${emotion} ${Number(intensity.value).toFixed(2)}`;
    for (const b of document.querySelectorAll("[data-emotion]")) b.classList.toggle("active", b.dataset.emotion === emotion);
  } catch (e) {
    status.classList.add("error");
    status.textContent = `${emotion}: ${e.message}`;
  }
}
for (const b of document.querySelectorAll("[data-emotion]")) b.addEventListener("click", () => setEmotion(b.dataset.emotion));

// --- the overlay's numbers ------------------------------------------------------------------------
setInterval(() => {
  const lost = `${decoder.counts.lost}${malformed ? ` (${malformed} malformed)` : ""}`;
  const clock = voice.ptsNow();
  overlay.update({ fps: fps.perSecond(), latencyMs: latency.value, kbps: (bytes.perSecond() * 8) / 1000, lost,
                   model: face.modelName && `${face.modelName} (${face.morphNames().length})`,
                   voice: voice.kind ? `${voice.kind}${voice.blocked ? " (blocked)" : clock === null ? "" : " (clock)"}` : null });
}, 500);

// --- A/V recording, for the benchmark (tools/bench_av.py) -------------------------------------------
let recording = null;
const JAW = "jawopen";
function jawOf(frame) {
  const names = columnNames(frame.names);
  for (let i = 0; i < names.length; i++) if (String(names[i]).toLowerCase() === JAW) return frame.weights[i];
  return null;
}
function startRecording() {
  recording = { face: [], level: [] };
  const tick = () => {
    if (!recording) return;
    recording.level.push([voice.heardAt(), voice.level(), voice.ptsNow()]);
    setTimeout(tick, 5);
  };
  tick();
}
function stopRecording() { const r = recording; recording = null; return r; }
/** How much voice the recording heard (level > `loud`) and for how long it has been quiet since (ms). */
function recordingSummary(loud = 0.02, quiet = 0.003) {
  if (!recording) return null;
  const lv = recording.level;
  let voiced = 0, lastSound = null;
  for (const [t, rms] of lv) { if (rms > loud) voiced++; if (rms > quiet) lastSound = t; }
  const end = lv.length ? lv[lv.length - 1][0] : null;
  return { voiced, samples: lv.length, faces: recording.face.length,
           quietMs: lastSound === null || end === null ? null : end - lastSound };
}

// --- test hooks -----------------------------------------------------------------------------------
window.avatar = {
  get transport() { return transport.name; },           // "webrtc" | "websocket" | null
  get state() { return transport.state; },              // "connecting" | "live" | "reconnecting"
  get framesDecoded() { return framesDecoded; },
  get report() { return report.message(transport.bytesIn); },  // the receiver report sent every 250 ms
  get framesShown() { return framesShown; },
  get pending() { return pending.length; },
  get lastFrame() {
    return lastFrame && { session: lastFrame.session, seq: lastFrame.seq, pts: lastFrame.pts,
                          names: [...columnNames(lastFrame.names)], weights: [...lastFrame.weights],
                          pose: lastFrame.pose && [...lastFrame.pose] };
  },
  influences: (name) => face.influence(name),            // read back from the mesh; null: no such target
  get morphNames() { return face.morphNames(); },
  get counts() { return { ...decoder.counts, malformed }; },
  get webgl() { return face.renderer !== null; },
  get renders() { return face.renders; },
  get config() { return transport.config; },
  modelReady,                                           // a promise: the first model loaded (or failed)
  voice,                                                // .ptsNow(), .level(), .blocked, .counts, .kind
  get audioLevel() { return voice.level(); },
  get voiceClock() { return voice.ptsNow(); },
  get sync() { return { offsets: Array.from(sync.offsets.slice(0, Math.min(sync.n, SYNC_RING))), skew: sync.skew }; },
  startRecording, stopRecording, recordingSummary,
  sayBox, microphone,                                   // the text box (POST /say) and the microphone (/speak)
  connection: transport,
  face,
};

transport.start();
