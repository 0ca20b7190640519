"""Test helpers: run one node in-process (bytewax-style: feed these, expect those), or a graph.

Everything a node emits goes through the real wire encoding, so a test sees what a
downstream process would receive.
"""
from __future__ import annotations

import heapq
import itertools
from pathlib import Path
from typing import Any, Callable, Mapping

import msgpack

from .errors import ParamError
from .graph import Graph, graph_from_dict, parse_graph
from .message import Message, decode, encode
from .node import Node, apply_params
from .params import SESSION_PARAMS, check_params, merge_session
from .recording import RecordingWriter, read_recording
from .registry import get_node_type
from .runner import Runner
from .states import PLAYING


class _FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class NodeHarness:
    """Hosts one node without processes or sockets; time is simulated by ``advance``."""

    def __init__(self, node_type: str | type[Node], name: str = "node", *, linked: tuple[str, ...] | None = None,
                 **params: Any):
        """``linked``: the input pads a link feeds (default: all of them)."""
        self.cls = get_node_type(node_type) if isinstance(node_type, str) else node_type
        self.instance = 0
        self.linked_inputs = frozenset(self.cls.inputs if linked is None else linked)
        self.kept: dict[str, Any] = {}  # what the node asked the runner to keep (Node.keep)
        self.now = 0.0
        self.outputs: list[tuple[str, Message]] = []
        self.bus: list[tuple[str, str, dict]] = []
        self.ended = False
        self._timers: list[tuple[float, int, float, bool, Callable[[], None], _FakeTimer]] = []
        self._order = itertools.count()
        self.watched: dict[Any, Callable[[], None]] = {}
        self.node = self.cls(name, check_params(self.cls.params, params), self)
        self.node.setup()
        self.node.on_play()

    # NodeContext
    def emit(self, pad: str, msg: Message) -> None:
        if pad not in self.cls.outputs:
            raise ValueError(f"no output pad '{pad}'")
        self.outputs.append((pad, decode(encode(msg, len(self.outputs)))))

    def _default_output(self) -> str:
        pad = self.cls.default_output()
        if pad is None:
            raise ValueError(f"{self.cls.__name__}.process returned a message, but the type has "
                             f"{len(self.cls.outputs)} output pads: emit on one by name")
        return pad

    def end_stream(self) -> None:
        self.ended = True

    def every(self, period_s: float, fn: Callable[[], None]) -> _FakeTimer:
        return self._add(period_s, period_s, True, fn)

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> _FakeTimer:
        return self._add(delay_s, delay_s, False, fn)

    def watch(self, fd: Any, fn: Callable[[], None]) -> None:
        self.watched[fd] = fn

    def unwatch(self, fd: Any) -> None:
        self.watched.pop(fd, None)

    def post(self, level: str, text: str, **fields: Any) -> None:
        self.bus.append((level, text, fields))

    def keep(self, params: Mapping[str, Any]) -> None:
        self.kept.update(params)

    def now_ns(self) -> int:
        return int(round(self.now * 1e9))

    def _add(self, delay: float, period: float, repeat: bool, fn: Callable[[], None]) -> _FakeTimer:
        t = _FakeTimer()
        heapq.heappush(self._timers, (self.now + delay, next(self._order), period, repeat, fn, t))
        return t

    # driving
    def feed(self, pad: str, msg: Message) -> list[tuple[str, Message]]:
        """Give the node one message (through the wire encoding); returns what it emitted."""
        start = len(self.outputs)
        msg = decode(encode(msg, 0))
        out = self.node.process(pad, msg)
        if out is not None:
            self.emit(self._default_output(), out)
        return self.outputs[start:]

    def advance(self, seconds: float) -> list[tuple[str, Message]]:
        """Move simulated time forward, firing due timers in order; returns what was emitted."""
        start = len(self.outputs)
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            due, _, period, repeat, fn, t = heapq.heappop(self._timers)
            if t.cancelled:
                continue
            self.now = due
            if repeat:
                heapq.heappush(self._timers, (due + max(period, 1e-6), next(self._order), period, True, fn, t))
            fn()
        self.now = end
        return self.outputs[start:]

    def stall(self, seconds: float) -> None:
        """Let time pass with no timer firing, as in a stalled loop: what fell due fires once, late,
        at the next ``advance`` (``advance(0)``: just those)."""
        self.now += seconds
        self._timers = [(max(due, self.now), order, period, repeat, fn, t)
                        for due, order, period, repeat, fn, t in self._timers]
        heapq.heapify(self._timers)

    def set_params(self, **params: Any) -> None:
        """A live change to the playing node, as its process makes it: refused (ParamError), it changes nothing."""
        apply_params(self.node, params, PLAYING)

    def set_session_params(self, session: str, **params: Any) -> None:
        """Per-session params for one session, as ``avatar set --session`` makes them (None: the node's again)."""
        current = getattr(self.node.p, SESSION_PARAMS, None) or {}
        apply_params(self.node, {SESSION_PARAMS: merge_session(current, session, params)}, PLAYING)

    def call(self, interface: str, **args: Any) -> Any:
        """A call into one of the node's interfaces, as its process takes one (``Runner.call``): the
        answer as it would arrive (through msgpack); a refusal raises the node's ParamError."""
        if interface not in self.cls.interfaces:
            raise ParamError(f"node type '{self.cls.__name__}' has no '{interface}' interface")
        args = msgpack.unpackb(msgpack.packb(args, use_bin_type=True), raw=False)
        answer = self.node.on_call(interface, args)
        return msgpack.unpackb(msgpack.packb(answer, use_bin_type=True), raw=False)

    def eos(self) -> list[tuple[str, Message]]:
        start = len(self.outputs)
        self.node.on_eos()
        return self.outputs[start:]

    def close(self) -> None:
        self.node.teardown()


def start_graph(text: str, **args: Any) -> Runner:
    """Load a YAML graph from text (args override its defaults), start it, return the Runner."""
    graph: Graph = parse_graph(text, "<test>", {k: str(v) for k, v in args.items()})
    return Runner(graph).start()


def run_to_eos(graph: str | Graph, timeout: float = 60.0, **args: Any) -> Runner:
    """Run a graph (YAML text with args, or a Graph) until EOS; the stopped Runner (bus, exit code).

    Raises TimeoutError if EOS does not come; every process is stopped either way.
    """
    runner = start_graph(graph, **args) if isinstance(graph, str) else Runner(graph).start()
    try:
        if not runner.wait(timeout):
            raise TimeoutError(f"graph '{runner.graph.name}' did not reach EOS within {timeout}s")
    finally:
        runner.stop(drain=False)
    return runner


def run_through(node_type: str, messages: list[Message], tmp_dir: str | Path, *, params: dict[str, Any] | None = None,
                caps: str = "any", speed: float = 0.0, timeout: float = 30.0) -> list[Message]:
    """Feed these messages through one node running in its own process; return what it emitted.

    The real thing end to end: ``player -> node -> recorder`` with ``block`` links, run to EOS.
    """
    tmp_dir = Path(tmp_dir)
    src, dst = tmp_dir / f"{node_type}-in.msgpack", tmp_dir / f"{node_type}-out.msgpack"
    writer = RecordingWriter(src)
    for msg in messages:
        writer.write(msg, msg.pts_ns)
    writer.close()
    graph = graph_from_dict({
        "name": f"run_through_{node_type}",
        "nodes": {
            "player": {"type": "player", "params": {"path": str(src), "caps": caps, "speed": speed}},
            "node": {"type": node_type, "params": dict(params or {})},
            "rec": {"type": "recorder", "params": {"path": str(dst)}},
        },
        "links": [{"from": "player.out", "to": "node.in", "policy": "block"},
                  {"from": "node.out", "to": "rec.in", "policy": "block"}],
    }, "<run_through>")
    runner = run_to_eos(graph, timeout)
    if runner.exit_code:
        raise RuntimeError(f"{node_type}: graph failed: {runner.bus.messages('ERROR')}")
    return read_recording(dst)
