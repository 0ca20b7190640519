"""bin: several nodes in one process, each one's output handed straight to the next (as a GStreamer bin).

Every node runs as its own process by default: a crash stays in it, it can be hot-swapped alone,
and it moves to another machine by editing its ``host``. The price is paid on every message: the
process wakes, reads the link, decodes, and its code runs with caches the other processes have
filled. On a 2-core machine that is about 0.1 core per node at 240 messages a second whatever the
batch holds (``docs/performance.md``). A bin runs a line of node types in one process and hands
each message to the next node as a link would deliver it (``Message.delivered``: the receiver gets
read-only views of the arrays and its own data), with no socket and no wake-up::

    pipeline:
      type: bin
      params:
        nodes:
          - {name: retarget, type: mapper, params: {profile: identity}}
          - {name: face, type: blender, input: capture, params: {rate: 60, tick_on_capture: true}}
          - {name: detail, type: lod}
          - {name: encode, type: compressor, params: {keyframe_interval: 120, ref_interval: 1}}

The bin's ``in`` feeds the first node's input (``input``: which pad, by default the node's
default input), each node's default output feeds the next one's ``input``, and the last one's
default output is the bin's ``out``. ``requests`` (a sink's feedback link) goes to every node
of the bin that has a ``requests`` input. The inner nodes' timers, watched sockets and warnings
are the bin's; its stats are the last node's, with each inner node's under ``nodes``.

What a bin gives up is what a process gives: the inner nodes restart, hot-swap and move
together, and a change to ``nodes`` is a hot-swap of the bin (``avatar swap``). A node type's
control interface (the blender's emotion) is not reached through the bin; params an inner node
changes itself (``Node.keep``: the levels viewers asked the lod for) are kept in the bin's
``nodes`` for its next process.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from runtime import Message, Node, Pad, Param, ParamError
from runtime.caps import ANY, CapsSpec, caps_compatible, caps_text
from runtime.errors import NodeTypeError
from runtime.params import check_params
from runtime.registry import get_node_type
from runtime.states import READY

_STEP_KEYS = {"name", "type", "params", "input"}


class Step:
    """One node of a bin, as its ``nodes`` entry declares it."""

    def __init__(self, name: str, cls: type[Node], params: dict[str, Any], pad: str):
        self.name, self.cls, self.params, self.pad = name, cls, params, pad


def parse_steps(nodes: Any) -> list[Step]:
    """The bin's steps from its ``nodes`` param; ParamError naming the entry and what is wrong."""
    if not isinstance(nodes, list) or not nodes:
        raise ParamError("nodes: a list of {name, type, params, input} entries, at least one")
    steps: list[Step] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, entry in enumerate(nodes):
        where = f"nodes[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: a mapping with 'name' and 'type', got {type(entry).__name__}")
            continue
        unknown = sorted(set(map(str, entry)) - _STEP_KEYS)
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_STEP_KEYS))})")
        name, type_name = entry.get("name"), entry.get("type")
        if not isinstance(name, str) or not name.isidentifier():
            problems.append(f"{where}: 'name' must be an identifier, got {name!r}")
            continue
        where = f"nodes[{i}] ({name})"
        if name in seen:
            problems.append(f"{where}: the name is used twice")
        seen.add(name)
        if type_name == "bin":
            problems.append(f"{where}: a bin cannot hold a bin")
            continue
        try:
            cls = get_node_type(type_name)
        except NodeTypeError as exc:
            problems.append(f"{where}: {exc}")
            continue
        given = entry.get("params") or {}
        if not isinstance(given, dict):
            problems.append(f"{where}: 'params' must be a mapping")
            continue
        try:
            params = check_params(cls.params, given)
        except ParamError as exc:
            problems.append(f"{where}: {exc}")
            continue
        problems += [f"{where}: {p}" for p in cls.check_config(params)]
        pad = entry.get("input") or cls.default_input()
        if pad not in cls.inputs:
            problems.append(f"{where}: no input pad {pad!r} to feed (inputs: {', '.join(cls.inputs) or 'none'})")
            continue
        if i < len(nodes) - 1 and cls.default_output() is None:
            problems.append(f"{where}: has no single output to feed the next node (outputs: "
                            f"{', '.join(cls.outputs) or 'none'})")
        steps.append(Step(name, cls, params, pad))
    if not problems:  # each node must take what the one before it sends
        arriving: CapsSpec = ANY
        for i, (prev, step) in enumerate(zip([None, *steps], steps)):
            if prev is not None:
                out = prev.cls.default_output()
                assert out is not None  # checked above
                arriving = prev.cls.output_caps(out, prev.params) or arriving  # None: what came in goes on
                accepted = step.cls.input_caps(step.pad, step.params)
                if not caps_compatible(arriving, accepted):
                    problems.append(f"nodes[{i}] ({step.name}): its '{step.pad}' takes '{caps_text(accepted)}' but "
                                    f"{prev.name} sends '{caps_text(arriving)}'")
    if problems:
        raise ParamError("; ".join(problems))
    return steps


class _Inner:
    """The context of a node inside a bin: its output goes to ``forward``, the rest to the bin's."""

    def __init__(self, outer: Any, forward: Callable[[str | None, Message], None], output: str | None,
                 keep: Callable[[Mapping[str, Any]], None]):
        self.outer, self.forward, self.output, self._keep = outer, forward, output, keep
        self.instance = getattr(outer, "instance", 0)
        self.linked_inputs = frozenset()  # set by the bin: the pads it feeds

    def emit(self, pad: str | None, msg: Message) -> None:
        if pad is None or pad == self.output:
            self.forward(pad, msg)

    def end_stream(self) -> None:
        self.outer.end_stream()

    def every(self, period_s: float, fn: Callable[[], None]) -> Any:
        return self.outer.every(period_s, fn)

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Any:
        return self.outer.call_later(delay_s, fn)

    def watch(self, fd: Any, fn: Callable[[], None]) -> None:
        self.outer.watch(fd, fn)

    def unwatch(self, fd: Any) -> None:
        self.outer.unwatch(fd)

    def post(self, level: str, text: str, **fields: Any) -> None:
        self.outer.post(level, text, **fields)

    def keep(self, params: Mapping[str, Any]) -> None:
        self._keep(params)

    def now_ns(self) -> int:
        return self.outer.now_ns()


class Bin(Node):
    """Several node types in one process, each one's output handed to the next (no socket, no wake-up)."""

    inputs = {
        "in": Pad(ANY, doc="what the first node of the bin takes (its 'input' pad)"),
        "requests": Pad("avatar/request", required=False,
                        doc="feedback from a sink: to every node of the bin with a 'requests' input"),
    }
    outputs = {"out": Pad(ANY, doc="what the last node of the bin sends")}
    params = {
        "nodes": Param(list, [], "the nodes, in order: each {name, type, params, input}", mutable=READY),
    }

    @classmethod
    def check_config(cls, params: Mapping[str, Any]) -> list[str]:
        try:
            parse_steps(params.get("nodes"))
        except ParamError as exc:
            return [str(exc)]
        return []

    @classmethod
    def output_caps(cls, pad: str, params: Mapping[str, Any]) -> CapsSpec | None:
        try:
            last = parse_steps(params.get("nodes"))[-1]
        except ParamError:
            return ANY
        out = last.cls.default_output()
        return ANY if out is None else (last.cls.output_caps(out, last.params) or ANY)

    @classmethod
    def input_caps(cls, pad: str, params: Mapping[str, Any]) -> CapsSpec:
        if pad != "in":
            return super().input_caps(pad, params)
        try:
            first = parse_steps(params.get("nodes"))[0]
        except ParamError:
            return ANY
        return first.cls.input_caps(first.pad, first.params)

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        try:
            steps = parse_steps(params.get("nodes"))
        except ParamError:
            return 0
        return sum(s.cls.input_latency_ns(s.params, s.pad) for s in steps)

    def setup(self) -> None:
        self.steps = parse_steps(self.p.nodes)
        self.nodes: list[Node] = []
        forward: Callable[[str | None, Message], None] = self._out
        for step in reversed(self.steps):  # the last one first: each node's output goes to the next's process
            ctx = _Inner(self.ctx, forward, step.cls.default_output(), self._keeper(step))
            node = step.cls(f"{self.name}.{step.name}", step.params, ctx)
            ctx.linked_inputs = frozenset({step.pad})
            self.nodes.insert(0, node)
            forward = self._into(node, step.pad)
        self.first = forward
        self.feedback = [n for n in self.nodes if "requests" in type(n).inputs]
        for node, step in zip(self.nodes, self.steps):
            if node in self.feedback and self.linked("requests"):
                node.ctx.linked_inputs = frozenset({step.pad, "requests"})  # type: ignore[attr-defined]
        for node in self.nodes:
            node.setup()

    def _keeper(self, step: Step) -> Callable[[Mapping[str, Any]], None]:
        """An inner node's ``keep``: its params in the bin's ``nodes``, kept by the runner for the
        bin's next process (a restart, a swap), as a node's own kept params are."""
        def keep(params: Mapping[str, Any]) -> None:
            nodes = [dict(e) for e in self.p.nodes]
            for entry in nodes:
                if entry.get("name") == step.name:
                    entry["params"] = {**(entry.get("params") or {}), **params}
            self.p.nodes = nodes
            self.ctx.keep({"nodes": nodes})
        return keep

    def _into(self, node: Node, pad: str) -> Callable[[str | None, Message], None]:
        def forward(_: str | None, msg: Message) -> None:
            out = node.process(pad, msg.delivered())
            if out is not None:
                node.ctx.emit(None, out)
        return forward

    def _out(self, _: str | None, msg: Message) -> None:
        self.ctx.emit("out", msg)

    def process(self, pad: str, msg: Message) -> Message | None:
        if pad == "requests":
            for node in self.feedback:
                out = node.process("requests", msg)
                if out is not None:
                    node.ctx.emit(None, out)
            return None
        self.first(None, msg)
        return None

    def on_play(self) -> None:
        for node in self.nodes:
            node.on_play()

    def on_pause(self) -> None:
        for node in self.nodes:
            node.on_pause()

    def on_latency(self, upstream_ns: int, pads: Mapping[str, int]) -> None:
        held = upstream_ns
        for node, step in zip(self.nodes, self.steps):
            node.on_latency(held, {step.pad: held})
            held += step.cls.input_latency_ns(step.params, step.pad)

    def on_eos(self) -> None:
        for node in self.nodes:  # in order: what a node sends at its end goes through the ones after it
            node.on_eos()

    def teardown(self) -> None:
        for node in reversed(getattr(self, "nodes", [])):
            try:
                node.teardown()
            except Exception:  # noqa: BLE001 - every inner node gets its teardown
                self.log.exception("teardown of %s failed", node.name)

    def stats(self) -> dict[str, Any]:
        """The last node's stats (what a dashboard reads off the node the bin stands for), and
        each inner node's under ``nodes``."""
        inner = {step.name: node.stats() for node, step in zip(getattr(self, "nodes", []), getattr(self, "steps", []))}
        last = next(reversed(inner.values()), {}) if inner else {}
        return {**last, "nodes": inner}
