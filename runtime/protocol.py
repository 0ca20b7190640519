"""The runner <-> node process protocol, written once: op names, message packing, the spawn spec.

Each node process has a DEALER to the runner's ROUTER (identity ``name#instance``) and a second
one for its heartbeat thread (``name#instance/hb``). Every message is one msgpack map with an
``op``. The runner's requests carry an ``id`` and the node answers each with a ``REPLY``
``{id, ok, result | error}``; the node's own messages (state changes, bus posts, ...) carry none.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack

# requests, runner -> node (each answered by REPLY)
STATS = "stats"      # {}: the node's stats
PARAMS = "params"    # {params}: set live params; the result is every param's value
STATE = "state"      # {state}: go to PAUSED / PLAYING. Also node -> runner: {state} it is in now
HOLD = "hold"        # {link}: hot-swap, queue a MARK on an output and hold what follows
RELINK = "relink"    # {link, endpoint?, seq?}: connect an output elsewhere (or number on), release it
DRAIN = "drain"      # {release}: hot-swap, process up to every input's MARK, hand over, exit
BIND = "bind"        # {links: {id: expected seq | None}}: bind deferred tcp inputs
EOS = "eos"          # {}: a source ends its stream. Also node -> runner: its stream has ended
STOP = "stop"        # {}: exit
LATENCY = "latency"  # {upstream_ns, pads}: the latency of the paths into the node, and into each input pad (runtime.latency)
CALL = "call"        # {interface, args}: a call into one of the node's interfaces (Node.on_call); the result is its answer

# messages, node -> runner
REPLY = "reply"      # {id, ok, result, error, refused?}: refused: a param change or a call the node refused, with the reason
HELLO = "hello"      # {pid}: the process runs
BUS = "bus"          # {type, text, ...}: a bus message from the node
MARK = "mark"        # {link}: a hold's MARK arrived on this input
DRAINED = "drained"  # {seqs, expected}: drained for a hot-swap; the numbers the new process goes on with
KEEP = "keep"        # {params}: params the node changed itself, kept for its next process
BEAT = "hb"          # {loop_age_s, setup}: from the heartbeat thread (runtime.supervisor reads it)


def pack(op: str, **fields: Any) -> bytes:
    return msgpack.packb({"op": op, **fields}, use_bin_type=True)


def unpack(raw: bytes) -> dict[str, Any]:
    msg = msgpack.unpackb(raw, raw=False)
    if not isinstance(msg, dict):
        raise ValueError("a control message is a msgpack map with an 'op'")
    return msg


def beat_period(hang_timeout: float) -> float:
    """How often a node beats: at least four beats within its hang timeout, and at most one a second."""
    return min(1.0, hang_timeout / 4)


def beat_identity(identity: bytes) -> bytes:
    """The heartbeat thread's socket identity: its own socket, since ZeroMQ sockets are not thread-safe."""
    return identity + b"/hb"


@dataclass
class InputSpec:
    id: str
    pad: str | None
    endpoint: str
    policy: str
    size: int
    feedback: bool = False
    peer: str | None = None  # the other host, for a tcp link
    defer: bool = False  # a tcp input bound only when told (BIND): a hot-swap's new process


@dataclass
class OutputSpec:
    id: str
    pad: str | None
    endpoint: str
    policy: str
    size: int
    peer: str | None = None
    seq: int = 0
    hold: bool = False


@dataclass
class SpawnSpec:
    """What a node process needs to start: built by the runner, read by ``runtime.worker``."""

    name: str
    type: str
    params: dict[str, Any]
    instance: int
    run_id: str
    control: str  # the runner's ROUTER endpoint
    parent_pid: int
    host: str | None = None
    hang_timeout: float = 5.0
    inputs: list[InputSpec] = field(default_factory=list)
    outputs: list[OutputSpec] = field(default_factory=list)

    @property
    def identity(self) -> bytes:
        return f"{self.name}#{self.instance}".encode()

    def to_wire(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_wire(cls, text: str) -> "SpawnSpec":
        d = json.loads(text)
        d["inputs"] = [InputSpec(**i) for i in d.get("inputs", [])]
        d["outputs"] = [OutputSpec(**o) for o in d.get("outputs", [])]
        return cls(**d)
