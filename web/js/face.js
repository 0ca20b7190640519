// The face: a Three.js scene with a GLB whose meshes have morph targets named after ARKit
// blendshapes (assets/face.glb, made by tools/build_face_glb.py) or CC4 morphs (a user's model).
//
// Incoming columns are matched to morph targets by name, case-insensitively (a "prefix.name"
// target also answers to "name"); names the model lacks are ignored. Head pose (yaw, pitch, roll,
// radians) turns the node named "Head" (else the whole model) about its origin: yaw > 0 turns the
// face toward the subject's left (+x), pitch > 0 lifts it, roll > 0 tilts it counter-clockwise as
// seen from the front. Eye pose turns nodes named EyeLeft/LeftEye and EyeRight/RightEye the same way;
// without pose, the eyes follow the eyeLook* weights (0.6 rad at 1, as the blender's gaze).
//
// Without WebGL the model still loads and takes every frame (the test hooks read the morph
// influences back), it is just not drawn.
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { TABLES } from "./wireformat.js";

// Multisampling costs little on a GPU but several milliseconds a frame in a software renderer
// (headless browsers, machines without a GPU), where it delays every message the page handles:
// on by default only on real GPUs; ?antialias=0|1 decides.
function softwareRenderer() {
  try {
    const gl = document.createElement("canvas").getContext("webgl2") || document.createElement("canvas").getContext("webgl");
    const info = gl && gl.getExtension("WEBGL_debug_renderer_info");
    return !gl || /swiftshader|llvmpipe|software/i.test(info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : "");
  } catch (e) {
    return true;
  }
}
const AA_PARAM = new URLSearchParams(location.search).get("antialias");
const SOFTWARE = softwareRenderer();
const ANTIALIAS = AA_PARAM === null ? !SOFTWARE : AA_PARAM === "1";
// A software renderer draws every pixel on the CPU, on the thread that also handles the packets:
// half the resolution there is a quarter of the work (?scale=N overrides).
const SCALE_PARAM = Number(new URLSearchParams(location.search).get("scale"));
const RENDER_SCALE = SCALE_PARAM > 0 && SCALE_PARAM <= 2 ? SCALE_PARAM : SOFTWARE ? 0.5 : 1;
const EYE_FULL_RAD = 0.6;
const key = (name) => String(name).toLowerCase();
// node names (lower case): Head, CC_Base_Head, mixamorig:Head; EyeLeft, LeftEye, CC_Base_L_Eye, Eye_L
const HEAD = /(^|[_:.\s])head$/;
const EYE_LEFT = /(^|[_:.\s])(eye_?left|left_?eye|l_eye|eye_l)$/;
const EYE_RIGHT = /(^|[_:.\s])(eye_?right|right_?eye|r_eye|eye_r)$/;

/** The names of a frame's columns: a names table id (1: ARKit 52) or the keyframe's own array. */
export function columnNames(names) {
  return Number.isInteger(names) ? TABLES[names] ?? [] : names;
}

export class Face {
  /** @param {{render?: boolean}} [opts] render: false keeps the morphs up to date but never draws
   *  (a viewer that only decodes: many of them in one browser for a benchmark). */
  constructor(canvas, { render = true } = {}) {
    this.canvas = canvas;
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(0x1b1d22);
    this.camera = new THREE.PerspectiveCamera(28, 1, 0.01, 100);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x404050, 1.6));
    const key1 = new THREE.DirectionalLight(0xffffff, 2.0);
    key1.position.set(0.6, 0.8, 1.5);
    const fill = new THREE.DirectionalLight(0xbcd0ff, 0.6);
    fill.position.set(-1.2, 0.2, 0.8);
    this.scene.add(key1, fill);
    this.renderer = null; this.webglError = null;
    try {
      this.renderer = new THREE.WebGLRenderer({ canvas, antialias: ANTIALIAS });
      this.renderer.setPixelRatio(Math.min(2, window.devicePixelRatio || 1) * RENDER_SCALE);
    } catch (e) {
      this.webglError = String(e && e.message ? e.message : e);
      console.warn("no WebGL, the face is not drawn:", this.webglError);
    }
    this.model = null; this.modelName = null;
    this.morphs = new Map();     // lower-case name -> [[mesh, index], ...]
    this.targetNames = [];
    this.columnCache = { names: null, targets: [] };
    this.head = null; this.headBase = null; this.eyes = [];  // [node, base quaternion, "left"|"right"]
    this.pending = null;         // the newest frame, applied on arrival and on each animation frame
    this.renders = 0;
    this._euler = new THREE.Euler(0, 0, 0, "YXZ"); this._q = new THREE.Quaternion();
    window.addEventListener("resize", () => this.resize());
    this.resize();
    this.beforeRender = null;    // called on each animation frame before drawing (the page picks the frame to show)
    if (render) {
      const loop = (t) => { if (this.beforeRender) this.beforeRender(t); this.render(); requestAnimationFrame(loop); };
      requestAnimationFrame(loop);
    }
  }

  resize() {
    const w = this.canvas.clientWidth || window.innerWidth, h = this.canvas.clientHeight || window.innerHeight;
    this.camera.aspect = w / Math.max(1, h);
    this.camera.updateProjectionMatrix();
    if (this.renderer) this.renderer.setSize(w, h, false);
  }

  /** Loads a GLB from a URL or an ArrayBuffer (a user's file); replaces the current model. */
  async load(source, name = null) {
    const loader = new GLTFLoader();
    const gltf = source instanceof ArrayBuffer
      ? await new Promise((resolve, reject) => loader.parse(source, "", resolve, reject))
      : await loader.loadAsync(source);
    this._setModel(gltf.scene, name ?? (typeof source === "string" ? source : "model.glb"));
    return this.morphNames();
  }

  _setModel(root, name) {
    if (this.model) this.scene.remove(this.model);
    this.model = root; this.modelName = name;
    this.scene.add(root);
    this.morphs.clear(); this.targetNames = [];
    this.columnCache = { names: null, targets: [] };
    const heads = [], eyes = [];
    root.traverse((obj) => {
      if (obj.morphTargetDictionary && obj.morphTargetInfluences) {
        for (const [target, index] of Object.entries(obj.morphTargetDictionary)) {
          if (!this.targetNames.includes(target)) this.targetNames.push(target);
          for (const k of new Set([key(target), key(target.split(".").pop())])) {
            if (!this.morphs.has(k)) this.morphs.set(k, []);
            this.morphs.get(k).push([obj, index]);
          }
        }
      }
      const n = key(obj.name);
      if (HEAD.test(n)) heads.push(obj);
      if (EYE_LEFT.test(n)) eyes.push([obj, "left"]);
      if (EYE_RIGHT.test(n)) eyes.push([obj, "right"]);
    });
    // a rig's bones drive its skinned meshes: prefer them to mesh nodes of the same name
    const bonesFirst = (list, get) => (list.some((x) => get(x).isBone) ? list.filter((x) => get(x).isBone) : list);
    this.head = bonesFirst(heads, (x) => x)[0] ?? root;
    this.headBase = this.head.quaternion.clone();
    this.eyes = bonesFirst(eyes, (x) => x[0]).map(([obj, side]) => [obj, obj.quaternion.clone(), side]);
    this._frameCamera(root);
    if (this.pending) this.apply(this.pending);
  }

  _frameCamera(root) {
    root.updateMatrixWorld(true);
    const box = new THREE.Box3().setFromObject(root);
    if (box.isEmpty()) return;
    const size = box.getSize(new THREE.Vector3()), center = box.getCenter(new THREE.Vector3());
    const fit = Math.max(size.y, size.x / Math.max(this.camera.aspect, 0.5));
    const dist = (fit * 0.62) / Math.tan(THREE.MathUtils.degToRad(this.camera.fov / 2));
    this.camera.position.set(center.x, center.y + size.y * 0.05, box.max.z + dist);
    this.camera.near = dist / 100; this.camera.far = dist * 10 + size.length() * 2;
    this.camera.lookAt(center);
    this.camera.updateProjectionMatrix();
  }

  /** The model's morph target names, as the model spells them. */
  morphNames() { return [...this.targetNames]; }

  /** The current influence of a morph target, read back from the mesh (null: no such target). */
  influence(name) {
    const hit = this.morphs.get(key(name));
    if (!hit) return null;
    const [mesh, index] = hit[0];
    return mesh.morphTargetInfluences[index];
  }

  _targets(names) {
    if (this.columnCache.names !== names) {
      this.columnCache = { names, targets: columnNames(names).map((n) => this.morphs.get(key(n)) ?? null) };
    }
    return this.columnCache.targets;
  }

  /** Applies a decoded frame ({names, weights, pose}) to the model now. */
  apply(frame) {
    this.pending = frame;
    if (!this.model) return;
    const targets = this._targets(frame.names), w = frame.weights;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[i];
      if (t) for (const [mesh, index] of t) mesh.morphTargetInfluences[index] = w[i];
    }
    const pose = frame.pose;
    if (pose) this._turn(this.head, this.headBase, pose[0], pose[1], pose[2]);
    for (const [node, base, side] of this.eyes) {
      if (pose) {
        const o = side === "left" ? 3 : 6;
        this._turn(node, base, pose[o], pose[o + 1], pose[o + 2]);
      } else {
        const s = side === "left" ? "Left" : "Right", get = (n) => this._column(frame, `eyeLook${n}${s}`);
        const outward = get("Out") - get("In"), yaw = (side === "left" ? outward : -outward) * EYE_FULL_RAD;
        this._turn(node, base, yaw, (get("Up") - get("Down")) * EYE_FULL_RAD, 0);
      }
    }
  }

  _column(frame, name) {
    const names = columnNames(frame.names);
    if (this._nameIndex?.names !== names) this._nameIndex = { names, index: new Map(names.map((n, i) => [key(n), i])) };
    const i = this._nameIndex.index.get(key(name));
    return i === undefined ? 0 : frame.weights[i];
  }

  _turn(node, base, yaw, pitch, roll) {
    if (!node || !base) return;
    this._euler.set(-pitch, yaw, roll, "YXZ");
    node.quaternion.copy(base).multiply(this._q.setFromEuler(this._euler));
  }

  render() {
    if (!this.renderer) return;
    this.renderer.render(this.scene, this.camera);
    this.renders++;
  }
}
