// The page: connects to the sink, decodes packets, drives the face, shows the overlay, and calls
// the control API's /emotion. URL params: ?transport=websocket|webrtc, ?session=ID, ?lod=0..3,
// ?model=URL (a GLB on this origin), ?echo=0 (no echo messages), ?resume=1 (tolerant decoding),
// ?render=0 (decode and set the morphs, never draw: many viewers in one browser for a benchmark);
// fragment #token=... (the API's bearer token, kept in sessionStorage, then dropped from the URL).
//
// Test hooks: window.avatar (see the bottom) and document.body.dataset.state.
import { AvatarDecoder } from "./wireformat.js";
import { Transport } from "./transport.js";
import { Face, columnNames } from "./face.js";
import { Overlay, Meter, RelativeLatency } from "./overlay.js";

const KEYFRAME_REQUEST_MIN_MS = 200;
const params = new URLSearchParams(location.search);
const echo = params.get("echo") !== "0";
const resumeAfterLoss = params.get("resume") === "1";
const N_LOD_LEVELS = 4; // levels of detail 0..3; the Python source is N_LOD_LEVELS in nodes/wire/limits.py
const intParam = (name, lo, hi) => {
  const v = params.get(name);
  return v !== null && /^\d+$/.test(v) && Number(v) >= lo && Number(v) <= hi ? Number(v) : null;
};

const overlay = new Overlay();
const face = new Face(document.getElementById("view"), { render: params.get("render") !== "0" });
const transport = new Transport({ params, session: params.get("session") || null, lod: intParam("lod", 0, N_LOD_LEVELS - 1) });
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
let framesDecoded = 0, malformed = 0, lastKeyframeRequest = -Infinity, lastFrame = null;
const fps = new Meter(), bytes = new Meter(), latency = new RelativeLatency();

function resetStream() {
  decoder = new AvatarDecoder({ resumeAfterLoss });
  latency.reset();
}

transport.addEventListener("packet", (ev) => {
  const now = performance.now();
  bytes.add(ev.detail.length, now);
  let frame;
  try {
    frame = decoder.decodeBytes(ev.detail);
  } catch (e) {
    if (malformed++ % 100 === 0) console.warn("malformed packet:", e.message);
    return;
  }
  if (frame === null) {
    if (decoder.waiting.length && now - lastKeyframeRequest >= KEYFRAME_REQUEST_MIN_MS) {
      lastKeyframeRequest = now;
      transport.send({ type: "keyframe" });
    }
    return;
  }
  framesDecoded++;
  fps.add(1, now);
  latency.add(frame.pts, now);
  lastFrame = frame;
  face.apply(frame);
  if (echo) transport.send({ type: "echo", session: frame.session, seq: frame.seq });
});

transport.addEventListener("message", (ev) => {
  const msg = ev.detail;
  if (msg.type === "hello") {
    overlay.setSessions(msg.sessions, msg.session);
  } else if (msg.type === "subscribed") {  // the sink's answer to a subscribe (not in docs/delivery.md yet)
    overlay.setSessions([], msg.session);
  } else if (msg.type === "sessions") {
    overlay.setSessions(msg.sessions, lastFrame && lastFrame.session);
  }
});

transport.addEventListener("close", resetStream);
transport.addEventListener("state", (ev) => {
  overlay.setState(ev.detail.state, ev.detail.transport, ev.detail.error);
  showEmotions(transport.config);
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

function showEmotions(config) {
  document.getElementById("emotions").hidden = !(config && config.api);
}

async function setEmotion(emotion) {
  const api = transport.config && transport.config.api;
  if (!api) return;
  const headers = { "Content-Type": "application/json" };
  const token = tokenField.value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  status.classList.remove("error");
  status.textContent = `${emotion}...`;
  try {
    const res = await fetch(`${api.replace(/\/$/, "")}/emotion`, {
      method: "POST", headers, body: JSON.stringify({ emotion, intensity: Number(intensity.value) }),
    });
    if (!res.ok) {
      let detail = "";
      try { detail = (await res.json()).detail; } catch { /* no JSON body */ }
      throw new Error(`HTTP ${res.status}${detail ? `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}` : ""}`);
    }
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
  overlay.update({ fps: fps.perSecond(), latencyMs: latency.value, kbps: (bytes.perSecond() * 8) / 1000, lost,
                   model: face.modelName && `${face.modelName} (${face.morphNames().length})` });
}, 500);

// --- test hooks -----------------------------------------------------------------------------------
window.avatar = {
  get transport() { return transport.name; },           // "webrtc" | "websocket" | null
  get state() { return transport.state; },              // "connecting" | "live" | "reconnecting"
  get framesDecoded() { return framesDecoded; },
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
  connection: transport,
  face,
};

transport.start();
