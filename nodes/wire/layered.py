"""Extra layers of a session's ``avatar/packet`` stream, for viewers whose link cannot take it all.

Layer 0 is the compressor's own stream. Each extra layer is the same session at a level of
detail of the LOD table (its morphs, its rate) and a precision of its own, encoded by an
``Encoder`` of its own: its own sequence numbers, keyframes and delta chain, so a viewer moves
from one layer to another at a keyframe of the new one and decodes it like any stream. A layer is
encoded once per session, however many viewers take it, and only for the sessions some viewer
watches (``wanted``, which the sinks keep up to date): a crowd nobody looks at costs nothing more.

Each layer's packets carry sids of their own (``Encoder.sid_base``: layer k from
``MAX_SLOTS - k * LAYER_SLOTS`` up), so a viewer's decoder, which keeps a stream per sid, takes a
switch of layers as a new stream starting at its keyframe: no client needs to know layers exist.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from .codec import MAX_SLOTS, Names
from .encoder import Encoder
from .limits import N_LOD_LEVELS

MAX_LAYERS = 4  # extra layers a compressor may make
LAYER_SLOTS = 4096  # sessions a layer serves at once; its sids are the top of the sid space, apart per layer


class LayerSpec(NamedTuple):
    lod: int  # a level of the LOD table: which morphs, how often
    bits: int  # weight precision


def check_layers(value: Any) -> list[LayerSpec]:
    """The ``layers`` param: ``[{lod: L, bits: B}, ...]``; ValueError naming the bad entry."""
    if not isinstance(value, list) or len(value) > MAX_LAYERS:
        raise ValueError(f"layers: a list of at most {MAX_LAYERS} {{lod, bits}} entries, got {value!r:.80}")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"lod", "bits"}:
            raise ValueError(f"layers[{i}]: must be {{lod: 0..{N_LOD_LEVELS - 1}, bits: 2..16}}, got {entry!r:.80}")
        lod, bits = entry["lod"], entry["bits"]
        if isinstance(lod, bool) or not isinstance(lod, int) or not 0 <= lod < N_LOD_LEVELS:
            raise ValueError(f"layers[{i}].lod: a level 0..{N_LOD_LEVELS - 1}, got {lod!r:.40}")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise ValueError(f"layers[{i}].bits: 2..16, got {bits!r:.40}")
        out.append(LayerSpec(lod, bits))
    return out


class LayerEncoders:
    """One encoder per extra layer; ``encode`` makes each layer's packets for the wanted sessions."""

    def __init__(self, specs: list[LayerSpec], every: np.ndarray, pose_bits: int, keyframe_interval: int,
                 ref_interval: int):
        self.specs = specs
        self.every = every  # frames per level (the LOD table's 'every')
        self.encoders = [Encoder(s.bits, pose_bits, keyframe_interval, ref_interval,
                                 sid_base=MAX_SLOTS - (k + 1) * LAYER_SLOTS) for k, s in enumerate(specs)]
        self.frames: list[dict[str, int]] = [{} for _ in specs]  # per layer: session -> frames seen
        self.wanted: set[str] = set()

    def want(self, sessions: Sequence[str]) -> None:
        """The sessions to make layers for (the watched ones, the first LAYER_SLOTS); the others are
        forgotten."""
        self.wanted = set(list(sessions)[:LAYER_SLOTS])
        for frames in self.frames:
            for s in [s for s in frames if s not in self.wanted]:
                del frames[s]

    def configure(self, **settings: int) -> None:
        for enc in self.encoders:
            enc.configure(**settings)

    def request_keyframe(self, sessions: list[str] | None = None) -> None:
        for enc in self.encoders:
            enc.request_keyframe(sessions)

    def expire(self, now_ns: int, idle_ns: int) -> None:
        for enc in self.encoders:
            enc.expire(now_ns, idle_ns)

    def encode(self, sessions: Sequence[str], weights: np.ndarray, pts_ns: int, names: Names | Sequence[str],
               masks: np.ndarray, pose: np.ndarray | None) -> list[dict[str, Any]]:
        """Per extra layer: the batch rows it has a packet for this frame, their packets, and which
        are keyframes and their seqs (plain lists: they ride in the message's data)."""
        wanted = self.wanted
        rows = [i for i, s in enumerate(sessions) if s in wanted] if wanted else []
        out: list[dict[str, Any]] = []
        for spec, enc, frames in zip(self.specs, self.encoders, self.frames):
            every = int(self.every[spec.lod])
            due = []
            for i in rows:
                s = sessions[i]
                n = frames.get(s, 0)
                frames[s] = n + 1
                if n % every == 0:
                    due.append(i)
            if not due:
                out.append({"rows": [], "packets": [], "keyframe": [], "seq": []})
                continue
            w = weights[due] * masks[spec.lod]
            r = enc.encode_batch([sessions[i] for i in due], w, pts_ns, names, None if pose is None else pose[due])
            out.append({"rows": due, "packets": r.packets, "keyframe": r.keyframe.tolist(), "seq": r.seq.tolist()})
        return out

    def stats(self) -> list[dict[str, Any]]:
        return [{"lod": s.lod, "bits": s.bits, **enc.counts} for s, enc in zip(self.specs, self.encoders)]
