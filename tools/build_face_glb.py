"""Builds web/assets/face.glb: MediaPipe's canonical face mesh with the 52 ARKit morph targets.

    python tools/build_face_glb.py [--obj PATH] [--table tools/face_morphs.yaml] [-o web/assets/face.glb]

The mesh is `canonical-face-model.obj` as shipped by the MIT-licensed `mind-ar` npm package
(web/node_modules/mind-ar/src/face-target/face-geometry/, from MediaPipe's face_geometry module,
Apache-2.0): 468 vertices. The morph targets are procedural displacements of landmark regions,
described by tools/face_morphs.yaml (see its header for the ops). The eye and mouth openings are
cut out of the mesh, so eyelids and lips can part; simple eyeballs ("EyeLeft", "EyeRight") and a
dark mouth cavity sit behind them. All of it hangs under a node "Head" whose origin is the neck
pivot, which the page rotates by the head pose.

The GLB (glTF 2.0 binary) is written by hand: positions, normals, vertex colors, indices; each
morph target has POSITION and NORMAL deltas; the face mesh's `extras.targetNames` lists the
targets in Apple's order (graphs/mappings/arkit52.yaml). Units: metres. The output is
deterministic: the same inputs give the same bytes.
"""
from __future__ import annotations

import argparse
import heapq
import json
import struct
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
OBJ = ROOT / "web/node_modules/mind-ar/src/face-target/face-geometry/canonical-face-model.obj"
TABLE = Path(__file__).resolve().parent / "face_morphs.yaml"
ARKIT52 = ROOT / "graphs/mappings/arkit52.yaml"
OUT = ROOT / "web/assets/face.glb"

CM = 0.01  # the canonical mesh is in centimetres, glTF in metres
# the openings cut out of the mesh: triangles whose three corners all lie on one of these contours
EYE_CONTOUR_L = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398]
EYE_CONTOUR_R = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]
MOUTH_CONTOUR = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 95, 88, 178, 87, 14, 317, 402, 318, 324]
LIPS = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375] + MOUTH_CONTOUR
BROWS = [383, 300, 293, 334, 296, 336, 285, 417, 265, 353, 276, 283, 282, 295,
         156, 70, 63, 105, 66, 107, 55, 193, 35, 124, 46, 53, 52, 65]
NECK_PIVOT_CM = np.array([0.0, -7.0, -4.0])
CAVITY_CENTER, CAVITY_RADII = np.array([0.0, -4.6, 3.4]), np.array([2.5, 2.2, 2.0])  # the Head node's origin: head pose turns about it

# vertex colours, written as sRGB here and stored linear (as glTF wants COLOR_0)
SKIN, LIP, BROW = (0.87, 0.68, 0.57), (0.70, 0.36, 0.36), (0.33, 0.23, 0.18)
SCLERA, IRIS, PUPIL, CAVITY = (0.93, 0.92, 0.90), (0.27, 0.45, 0.62), (0.03, 0.03, 0.03), (0.30, 0.08, 0.09)


# --- the mesh -------------------------------------------------------------------------------------
def load_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) float64 and triangles (F, 3) int, 0-based (MediaPipe landmark numbers)."""
    verts, faces = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts and parts[0] == "f":
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:4]])
    return np.array(verts), np.array(faces, dtype=np.int64)


def cut_openings(faces: np.ndarray) -> np.ndarray:
    """The triangles less those that close the eyes and the mouth."""
    keep = [not any(set(t) <= set(c) for c in (EYE_CONTOUR_L, EYE_CONTOUR_R, MOUTH_CONTOUR)) for t in faces.tolist()]
    return faces[np.array(keep)]


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    fn = np.cross(b - a, c - a)  # area-weighted
    n = np.zeros_like(verts)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(length > 0, length, 1.0)


def mirror_map(verts: np.ndarray) -> np.ndarray:
    """For each vertex, the vertex at its x-mirror (the canonical mesh is exactly symmetric)."""
    d = ((verts[:, None, :] - verts[None, :, :] * [-1, 1, 1]) ** 2).sum(-1)
    m = d.argmin(1)
    if np.sqrt(d.min(1)).max() > 1e-4 or not np.array_equal(m[m], np.arange(len(verts))):
        raise SystemExit("the mesh is not mirror-symmetric: cannot make the Right shapes")
    return m


class Surface:
    """Geodesic distances along the mesh edges (Dijkstra), the openings being holes."""

    def __init__(self, verts: np.ndarray, faces: np.ndarray) -> None:
        self.n = len(verts)
        self.adj: list[dict[int, float]] = [{} for _ in range(self.n)]
        for t in faces.tolist():
            for i, j in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
                d = float(np.linalg.norm(verts[i] - verts[j]))
                self.adj[i][j] = self.adj[j][i] = d

    def distance(self, sources: list[int]) -> np.ndarray:
        dist = np.full(self.n, np.inf)
        heap = [(0.0, s) for s in sorted(set(sources))]
        for _, s in heap:
            dist[s] = 0.0
        while heap:
            d, i = heapq.heappop(heap)
            if d > dist[i]:
                continue
            for j in sorted(self.adj[i]):
                nd = d + self.adj[i][j]
                if nd < dist[j]:
                    dist[j] = nd
                    heapq.heappush(heap, (nd, j))
        return dist


def falloff(dist: np.ndarray, radius: float) -> np.ndarray:
    """1 at distance 0, a cosine down to 0 at `radius` (only 0 distance counts when radius is 0)."""
    if radius <= 0:
        return (dist <= 0).astype(float)
    x = np.clip(dist / radius, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * x))


def rotation(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues: one (3, 3) matrix per angle, about the unit axis."""
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    s, c = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


# --- the morph table ------------------------------------------------------------------------------
class Morphs:
    """The table's regions and shapes over the mesh; `rest` ops reshape the mesh itself first."""

    def __init__(self, verts: np.ndarray, faces: np.ndarray, table: dict) -> None:
        self.faces, self.mirror = faces, mirror_map(verts)
        self.regions = {k: [int(i) for i in v] for k, v in table["regions"].items()}
        self.shapes = table["shapes"]
        self._set_mesh(verts)
        rest = sum((self.op(op) for op in table.get("rest", [])), np.zeros_like(verts))
        self._set_mesh(verts + rest)
        self._cache: dict[str, np.ndarray] = {}

    def _set_mesh(self, verts: np.ndarray) -> None:
        self.v, self.normals = verts, vertex_normals(verts, self.faces)
        self.surface = Surface(verts, self.faces)

    def anchors(self, names: list) -> list[int]:
        out: list[int] = []
        for a in names:
            if isinstance(a, int):
                out.append(a)
            elif a in self.regions:
                out += self.regions[a]
            elif a.endswith("R") and a[:-1] + "L" in self.regions:
                out += [int(self.mirror[i]) for i in self.regions[a[:-1] + "L"]]
            else:
                raise SystemExit(f"unknown region {a!r}")
        if not all(0 <= i < len(self.v) for i in out):
            raise SystemExit(f"landmark index out of range in {names}")
        return out

    def weight(self, op: dict) -> np.ndarray:
        w = falloff(self.surface.distance(self.anchors(op["at"])), float(op.get("radius", 1.0)))
        if op.get("hold"):
            w *= 1.0 - falloff(self.surface.distance(self.anchors(op["hold"])), float(op.get("hold_radius", 0.6)))
        return w

    def op(self, op: dict, points: np.ndarray | None = None, w: np.ndarray | None = None) -> np.ndarray:
        """One op's displacement of the mesh, or of other `points` with given weights `w` (move, rotate)."""
        kind = op["op"]
        if points is None:
            points, w = self.v, self.weight(op)
        if kind == "move":
            return w[:, None] * np.array(op["by"], dtype=float)
        if kind == "rotate":
            pivot = np.array(op["pivot"], dtype=float)
            r = rotation(np.array(op["axis"], dtype=float), np.radians(float(op["degrees"])) * w)
            rel = points - pivot
            return np.einsum("nij,nj->ni", r, rel) - rel
        if points is not self.v:
            raise SystemExit(f"{kind} ops only apply to the face mesh")
        if kind == "normal":
            return w[:, None] * self.normals * float(op["by"])
        if kind == "scale":
            c = self.v[int(op["center"])]
            return w[:, None] * (self.v - c) * (np.array(op["factor"], dtype=float) - 1.0)
        if kind == "undo":  # take back a fraction of another shape where this op's weight is
            return -w[:, None] * self.shape(op["shape"]) * float(op.get("amount", 1.0))
        if kind == "toward":
            src, dst = self.anchors(op["at"]), self.anchors(op["to"])
            if len(src) != len(dst):
                raise SystemExit(f"toward: {op['at']} and {op['to']} differ in length")
            moves = (self.v[dst] - self.v[src]) * float(op["amount"])
            dists = np.stack([self.surface.distance([s]) for s in src])  # (A, N)
            shepard = 1.0 / (dists ** 2 + 1e-9)
            field = (shepard[:, :, None] * moves[:, None, :]).sum(0) / shepard.sum(0)[:, None]
            return w[:, None] * field
        raise SystemExit(f"unknown op {kind!r}")

    def shape(self, name: str) -> np.ndarray:
        if name not in self._cache:
            spec = self.shapes[name]
            if isinstance(spec, dict) and "mirror" in spec:
                self._cache[name] = self.shape(spec["mirror"])[self.mirror] * [-1.0, 1.0, 1.0]
            else:
                self._cache[name] = sum((self.op(op) for op in spec), np.zeros_like(self.v))
        return self._cache[name]

    def follow(self, name: str, points: np.ndarray, w: np.ndarray) -> np.ndarray:
        """A shape's move and rotate ops applied to other points (the mouth cavity follows the jaw)."""
        return sum((self.op(op, points, w) for op in self.shapes[name] if op["op"] in ("move", "rotate")),
                   np.zeros_like(points))


# --- the other meshes -----------------------------------------------------------------------------
def uv_sphere(radius: float, rings: int = 16, segments: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A sphere about the origin with its poles on z (the front pole looks along +z)."""
    verts = []
    for i in range(rings + 1):
        theta = np.pi * i / rings  # 0 at the front pole (+z)
        for j in range(segments):
            phi = 2 * np.pi * j / segments
            verts.append([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
    faces = []
    for i in range(rings):
        for j in range(segments):
            a, b = i * segments + j, i * segments + (j + 1) % segments
            c, d = a + segments, b + segments
            faces += [[a, c, b], [b, c, d]]
    return np.array(verts) * radius, np.array(faces, dtype=np.int64)


def eyeball(radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    verts, faces = uv_sphere(radius)
    cos = verts[:, 2] / radius
    color = np.where(cos[:, None] > 0.95, PUPIL, np.where(cos[:, None] > 0.82, IRIS, SCLERA))
    return verts, faces, color


def cavity(center: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The back half of an ellipsoid, open toward +z: the inside of the mouth, seen through the lips."""
    verts, faces = uv_sphere(1.0, rings=12, segments=20)
    verts[:, 2] = -np.abs(verts[:, 2])  # fold the front half back: a bowl
    faces = faces[verts[faces].mean(1)[:, 2] < -1e-3]
    faces = faces[:, [0, 2, 1]]  # face inward (toward +z)
    return verts * radii + center, faces, np.tile(CAVITY, (len(verts), 1))


# --- glTF binary ----------------------------------------------------------------------------------
class Gltf:
    def __init__(self) -> None:
        self.bin = bytearray()
        self.doc: dict = {"asset": {"version": "2.0", "generator": "avatar-engine tools/build_face_glb.py"},
                          "buffers": [], "bufferViews": [], "accessors": [], "materials": [], "meshes": [],
                          "nodes": [], "scenes": [{"name": "Scene", "nodes": []}], "scene": 0}

    def accessor(self, data: np.ndarray, kind: str, target: int | None = None, bounds: bool = False) -> int:
        while len(self.bin) % 4:
            self.bin.append(0)
        raw = data.tobytes()
        view = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(raw)}
        if target:
            view["target"] = target
        self.bin += raw
        self.doc["bufferViews"].append(view)
        comp = {np.dtype(np.float32): 5126, np.dtype(np.uint16): 5123, np.dtype(np.uint32): 5125}[data.dtype]
        acc = {"bufferView": len(self.doc["bufferViews"]) - 1, "componentType": comp, "count": len(data), "type": kind}
        if bounds:
            acc["min"] = [float(x) for x in data.min(0)]
            acc["max"] = [float(x) for x in data.max(0)]
        self.doc["accessors"].append(acc)
        return len(self.doc["accessors"]) - 1

    def material(self, name: str, roughness: float) -> int:
        self.doc["materials"].append({"name": name, "doubleSided": True, "pbrMetallicRoughness": {
            "baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0, "roughnessFactor": roughness}})
        return len(self.doc["materials"]) - 1

    def mesh(self, name: str, verts: np.ndarray, faces: np.ndarray, colors: np.ndarray, material: int,
             targets: list[tuple[np.ndarray, np.ndarray]] = (), target_names: list[str] = ()) -> int:
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        prim = {"attributes": {"POSITION": self.accessor(f32(verts), "VEC3", 34962, bounds=True),
                               "NORMAL": self.accessor(f32(vertex_normals(verts, faces)), "VEC3", 34962),
                               "COLOR_0": self.accessor(f32(np.asarray(colors) ** 2.2), "VEC3", 34962)},
                "indices": self.accessor(np.ascontiguousarray(faces.reshape(-1), dtype=np.uint16), "SCALAR", 34963),
                "material": material, "mode": 4}
        mesh: dict = {"name": name, "primitives": [prim]}
        if targets:
            prim["targets"] = [{"POSITION": self.accessor(f32(dp), "VEC3", 34962, bounds=True),
                                "NORMAL": self.accessor(f32(dn), "VEC3", 34962)} for dp, dn in targets]
            mesh["weights"] = [0.0] * len(targets)
            mesh["extras"] = {"targetNames": list(target_names)}
        self.doc["meshes"].append(mesh)
        return len(self.doc["meshes"]) - 1

    def node(self, name: str, translation: np.ndarray, mesh: int | None = None, children: list[int] = ()) -> int:
        node: dict = {"name": name, "translation": [round(float(x), 6) for x in translation]}
        if mesh is not None:
            node["mesh"] = mesh
        if children:
            node["children"] = list(children)
        self.doc["nodes"].append(node)
        return len(self.doc["nodes"]) - 1

    def glb(self) -> bytes:
        while len(self.bin) % 4:
            self.bin.append(0)
        self.doc["buffers"] = [{"byteLength": len(self.bin)}]
        js = json.dumps(self.doc, separators=(",", ":")).encode()
        js += b" " * (-len(js) % 4)
        total = 12 + 8 + len(js) + 8 + len(self.bin)
        return (struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(js), b"JSON") + js
                + struct.pack("<I4s", len(self.bin), b"BIN\0") + bytes(self.bin))


# --- putting it together --------------------------------------------------------------------------
def region_mask(surface: Surface, ids: list[int], radius: float) -> np.ndarray:
    return falloff(surface.distance(ids), radius)


def build(obj: Path, table_path: Path) -> bytes:
    verts, faces = load_obj(obj)
    if len(verts) != 468:
        raise SystemExit(f"{obj}: {len(verts)} vertices, expected MediaPipe's 468")
    faces = cut_openings(faces)
    names = yaml.safe_load(ARKIT52.read_text())["blendshapes"]
    table = yaml.safe_load(table_path.read_text())
    if sorted(table["shapes"]) != sorted(names):
        raise SystemExit(f"{table_path}: shapes differ from the 52 ARKit names: "
                         f"{sorted(set(names) ^ set(table['shapes']))}")
    morphs = Morphs(verts, faces, table)
    verts = morphs.v  # the mesh at rest (the table's `rest` ops applied)
    base_normals = vertex_normals(verts, faces)
    targets = []
    for name in names:
        delta = morphs.shape(name)
        if np.abs(delta).max() < 1e-3:
            raise SystemExit(f"{name}: no displacement")
        targets.append((delta * CM, vertex_normals(verts + delta, faces) - base_normals))

    lips = region_mask(morphs.surface, LIPS, 0.25)
    brows = region_mask(morphs.surface, BROWS, 0.15) * 0.6
    color = np.array(SKIN) * (1 - lips[:, None]) + np.array(LIP) * lips[:, None]
    color = color * (1 - brows[:, None]) + np.array(BROW) * brows[:, None]

    g = Gltf()
    skin, eye_mat, cavity_mat = g.material("skin", 0.6), g.material("eye", 0.25), g.material("mouth", 0.9)
    pivot = NECK_PIVOT_CM * CM
    face = g.mesh("Face", verts * CM - pivot, faces, color, skin, targets, names)
    # eyeballs: centred behind each opening, their fronts just behind the lids
    radius = 1.45
    eyes = []
    for node_name, contour in (("EyeLeft", EYE_CONTOUR_L), ("EyeRight", EYE_CONTOUR_R)):
        rim = verts[contour]
        center = np.array([rim[:, 0].mean(), rim[:, 1].mean(), rim[:, 2].max() - 0.12 - radius])
        ev, ef, ec = eyeball(radius)
        eyes.append(g.node(node_name, center * CM - pivot, g.mesh(node_name, ev * CM, ef, ec, eye_mat)))
    # the mouth cavity: its lower half (below the lips' meeting line) follows the jaw
    cv, cf, cc = cavity(CAVITY_CENTER, CAVITY_RADII)
    jaw = np.clip((CAVITY_CENTER[1] + 0.6 - cv[:, 1]) / 1.5, 0.0, 1.0)
    jaw = jaw * jaw * (3 - 2 * jaw)
    cavity_targets = [(morphs.follow("jawOpen", cv, jaw) * CM, np.zeros_like(cv))]
    mouth = g.node("MouthCavity", -pivot, g.mesh("MouthCavity", cv * CM, cf, cc, cavity_mat, cavity_targets, ["jawOpen"]))
    face_node = g.node("Face", np.zeros(3), face)
    head = g.node("Head", pivot, children=[face_node, *eyes, mouth])
    g.doc["scenes"][0]["nodes"] = [head]
    return g.glb()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--obj", type=Path, default=OBJ, help="canonical-face-model.obj (from the mind-ar package)")
    ap.add_argument("--table", type=Path, default=TABLE, help="the morph table (YAML)")
    ap.add_argument("-o", "--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if not args.obj.is_file():
        print(f"{args.obj} not found: run `npm ci` in web/ first", file=sys.stderr)
        return 1
    data = build(args.obj, args.table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes, 52 morph targets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
