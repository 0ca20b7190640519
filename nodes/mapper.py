"""mapper: ARKit 52 blendshapes -> a rig's morphs (CC4 Standard / Extended, or ARKit itself).

The mapping table (YAML under ``graphs/mappings/``) is compiled by ``nodes.face.load_morph_table``
into dense arrays: a batch costs a matmul or two and one ``minimum``. This node adds the profile
param, caps from the table, and per-batch pass-through of the other arrays.
"""
from __future__ import annotations

from typing import Any, Mapping

from runtime import Message, Node, Pad, Param, ParamError
from runtime.caps import CapsSpec
from runtime.sessions import batch_ids

from .face import MORPH_CAPS, TABLE_RULE, MorphTableError, load_morph_table


class Mapper(Node):
    """Maps ARKit 52 blendshape batches to a rig's morphs via a YAML table (matmul, rules, clamps)."""

    inputs = {"in": Pad("arkit/blendshapes", doc="batches of ARKit weights (S, 52), optional pose (S, 9)")}
    outputs = {"out": Pad(MORPH_CAPS, doc="morphs/cc4 weights (S, M) with data names; "
                                           "arkit/blendshapes for the identity profile; other per-row arrays "
                                           "(pose, arrival_ns, frame) passed through")}
    params = {
        "profile": Param(str, "standard",
                         f"standard, extended, identity, or the path of a mapping table ({TABLE_RULE})"),
    }

    @classmethod
    def output_caps(cls, pad: str, params: Mapping[str, Any]) -> CapsSpec:
        """The table says what comes out: morphs/cc4, or arkit/blendshapes for the identity profile."""
        try:
            return load_morph_table(params["profile"]).caps
        except MorphTableError:
            return MORPH_CAPS

    @classmethod
    def check_config(cls, params: Mapping[str, Any]) -> list[str]:
        try:
            load_morph_table(params["profile"])
        except MorphTableError as exc:
            return [str(exc)]
        return []

    def setup(self) -> None:
        self.table = load_morph_table(self.p.profile)
        self.names = list(self.table.names)
        self.profile = self.p.profile
        self.mapped = self.dropped = 0

    def on_params(self, changed: Mapping[str, Any]) -> None:
        if "profile" in changed:
            try:
                table = load_morph_table(self.p.profile)
            except MorphTableError as exc:  # the runtime puts the old profile back
                raise ParamError(str(exc)) from None
            self.table, self.names, self.profile = table, list(table.names), self.p.profile

    def process(self, pad: str, msg: Message) -> Message | None:
        weights = msg.arrays.get("weights")
        sessions = batch_ids(msg)
        if weights is not None and weights.ndim == 1:
            weights = weights.reshape(1, -1)
        if weights is None or weights.shape != (len(sessions), self.table.matrix.shape[0]):
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                shape = None if weights is None else tuple(weights.shape)
                self.warn(f"dropped {self.dropped} message(s): expected 'weights' of shape "
                          f"({len(sessions)}, {self.table.matrix.shape[0]}), got {shape}")
            return None
        arrays = {"weights": self.table.apply(weights)}
        for name, arr in msg.arrays.items():  # pose, arrival_ns, frame...: per-row arrays pass through
            if name != "weights" and arr.shape[:1] == (len(sessions),):
                arrays[name] = arr
        data = msg.data
        if self.table.caps == "morphs/cc4":
            data = {**(data if isinstance(data, dict) else {}), "names": self.names}
        self.mapped += 1
        return Message(self.table.caps, data, arrays, msg.pts_ns, sessions, msg.trace)

    def stats(self) -> dict:
        return {"profile": self.table.path, "morphs": len(self.names), "mapped": self.mapped, "dropped": self.dropped}
