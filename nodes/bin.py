"""bin: several nodes in one process, each one's output handed straight to the next (as a GStreamer bin).

Every node runs as its own process by default: a crash stays in it, it can be hot-swapped alone,
and it moves to another machine by editing its ``host``. The price is paid on every message: the
process wakes, reads the link, decodes, and its code runs with caches the other processes have
filled. On a 2-core machine that is about 0.1 core per node at 240 messages a second whatever the
batch holds (``docs/performance.md``). A bin runs a line of node types in one process and hands
each message to the next node as a link would deliver it (``Message.delivered``: the receiver gets
read-only arrays and data of its own), with no socket and no wake-up::

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
default output is the bin's ``out``. A source may start a bin (then its ``in`` takes nothing),
so a whole pipeline can run in one process, from ``arkit_source`` to a sink. Any other output
goes, by its name, to the inputs of that name of the bin's other nodes: a sink's ``requests``
reach the lod and the compressor before it. ``requests`` from outside (a sink's feedback link)
go to every node of the bin that takes them. The inner nodes' timers, watched sockets and
warnings are the bin's; its stats are the last node's, with each inner node's under ``nodes``.

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
    """One node of a bin, as its ``nodes`` entry declares it (``pad`` None: a source, first)."""

    def __init__(self, name: str, cls: type[Node], params: dict[str, Any], pad: str | None):
        self.name, self.cls, self.params, self.pad = name, cls, params, pad

    def latency_ns(self) -> int:
        """What this node holds back of what it takes (a source: what it holds of what it makes)."""
        return self.cls.latency_ns(self.params) if self.pad is None else self.cls.input_latency_ns(self.params, self.pad)


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
        if not cls.inputs and "input" not in entry:  # a source
            if i:
                problems.append(f"{where}: a source ({type_name}) can only start a bin")
                continue
            pad = None
        elif pad not in cls.inputs:
            problems.append(f"{where}: no input pad {pad!r} to feed (inputs: {', '.join(cls.inputs) or 'none'})")
            continue
        if i < len(nodes) - 1 and cls.default_output() is None:
            problems.append(f"{where}: has no single output to feed the next node (outputs: "
                            f"{', '.join(cls.outputs) or 'none'})")
        steps.append(Step(name, cls, params, pad))
    if not problems:  # each node must take what the one before it sends
        arriving: CapsSpec = ANY
        for i, (prev, step) in enumerate(zip([None, *steps], steps)):
            if prev is not None and step.pad is not None:
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
    """The context of a node inside a bin: what it sends goes where the bin routes it, the rest is the bin's."""

    def __init__(self, bin: "Bin", index: int):
        self.bin, self.index, self.outer = bin, index, bin.ctx
        self.instance = getattr(self.outer, "instance", 0)
        self.linked_inputs: frozenset[str] = frozenset()  # set by the bin: the pads it feeds

    def emit(self, pad: str | None, msg: Message) -> None:
        self.bin._emitted(self.index, pad, msg)

    def end_stream(self) -> None:
        self.bin._source_ended(self.index)

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
        self.bin._kept(self.index, params)

    def now_ns(self) -> int:
        return self.outer.now_ns()


class Bin(Node):
    """Several node types in one process, each one's output handed to the next (no socket, no wake-up)."""

    inputs = {
        "in": Pad(ANY, required=False, doc="what the first node of the bin takes (its 'input' pad); "
                                           "required unless the bin starts with a source"),
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
        return ANY if first.pad is None else first.cls.input_caps(first.pad, first.params)

    @classmethod
    def required_inputs(cls, params: Mapping[str, Any]) -> frozenset[str]:
        try:
            first = parse_steps(params.get("nodes"))[0]
        except ParamError:
            return frozenset({"in"})
        return frozenset() if first.pad is None else frozenset({"in"})

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        try:
            steps = parse_steps(params.get("nodes"))
        except ParamError:
            return 0
        return sum(step.latency_ns() for step in steps)

    def setup(self) -> None:
        self.steps = parse_steps(self.p.nodes)
        self.nodes: list[Node] = [step.cls(f"{self.name}.{step.name}", step.params, _Inner(self, i))
                                  for i, step in enumerate(self.steps)]
        self.chain_out = [step.cls.default_output() for step in self.steps]
        # an output that is not a node's link to the next goes to the inputs of that name in the bin
        # (a sink's requests to the lod and the compressor before it); those from outside too
        self.takers: dict[str, list[int]] = {}
        for i, step in enumerate(self.steps):
            for pad in step.cls.inputs:
                if pad != step.pad:
                    self.takers.setdefault(pad, []).append(i)
        sent = {pad for step in self.steps for pad in step.cls.outputs}
        for node, step in zip(self.nodes, self.steps):
            fed = {pad for pad in step.cls.inputs if pad in sent or (pad == "requests" and self.linked("requests"))}
            node.ctx.linked_inputs = frozenset(fed | ({step.pad} if step.pad else set()))  # type: ignore[attr-defined]
        self.eos_next = 0  # the first node whose on_eos has not run
        self.dropped = 0
        for node in self.nodes:
            node.setup()

    def _emitted(self, i: int, pad: str | None, msg: Message) -> None:
        """Node i sent ``msg`` on ``pad`` (None: its default output): to the next node, to the nodes
        of the bin that take that pad, or out of the bin (the last node's output)."""
        out = self.chain_out[i]
        pad = out if pad is None else pad
        last = i == len(self.nodes) - 1
        if pad == out and not last:
            self._deliver(i + 1, self.steps[i + 1].pad, msg)
            return
        takers = [j for j in self.takers.get(pad, ()) if j != i]
        for j in takers:
            self._deliver(j, pad, msg)
        if not takers and last and pad == out:
            self.ctx.emit("out", msg)

    def _deliver(self, j: int, pad: str | None, msg: Message) -> None:
        if pad is None:
            return  # a source takes nothing
        out = self.nodes[j].process(pad, msg.delivered())
        if out is not None:
            self._emitted(j, None, out)

    def _source_ended(self, i: int) -> None:
        """The source that starts the bin is done: the nodes after it end as their inputs would."""
        self._end_from(i + 1)
        self.ctx.end_stream()

    def _end_from(self, i: int) -> None:
        """on_eos of the nodes from i on, in order (what one sends at its end goes through the ones
        after it), each once."""
        while self.eos_next < len(self.nodes):
            k = self.eos_next
            self.eos_next += 1
            if k >= i:
                self.nodes[k].on_eos()

    def _kept(self, i: int, params: Mapping[str, Any]) -> None:
        """An inner node's ``keep``: its params in the bin's ``nodes``, kept by the runner for the
        bin's next process (a restart, a swap), as a node's own kept params are."""
        nodes = [dict(e) for e in self.p.nodes]
        nodes[i]["params"] = {**(nodes[i].get("params") or {}), **params}
        self.p.nodes = nodes
        self.ctx.keep({"nodes": nodes})

    def process(self, pad: str, msg: Message) -> Message | None:
        if pad == "in":
            if self.steps[0].pad is None:  # a bin that starts with a source takes nothing in
                self.dropped += 1
                if self.dropped & (self.dropped - 1) == 0:
                    self.warn(f"dropped {self.dropped} message(s) on 'in': the bin starts with a source "
                              f"({self.steps[0].name})")
                return None
            self._deliver(0, self.steps[0].pad, msg)
        else:  # requests from outside: every node of the bin that takes them
            for j in self.takers.get(pad, ()):
                self._deliver(j, pad, msg)
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
            node.on_latency(held, {step.pad: held} if step.pad else {})
            held += step.latency_ns()

    def on_eos(self) -> None:
        self._end_from(0)

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
