"""The base class of every node type.

A node type declares its pads and params and implements ``process`` (and, for a source, a
timer or a watched file descriptor). It never touches ZeroMQ: the process that hosts it (see
``runtime.worker``) or the in-process harness (``runtime.testing``) provides the context.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar, Mapping, Protocol

from .caps import CapsSpec
from .errors import ParamError
from .message import Message
from .pads import Pad
from .params import SESSION_PARAMS, Param, ParamValues, check_params, session_param


class Timer(Protocol):
    def cancel(self) -> None: ...


class NodeContext(Protocol):
    """What a node may ask of the process hosting it."""

    def emit(self, pad: str, msg: Message) -> None: ...
    def end_stream(self) -> None: ...
    def every(self, period_s: float, fn: Callable[[], None]) -> Timer: ...
    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Timer: ...
    def watch(self, fd: Any, fn: Callable[[], None]) -> None: ...
    def unwatch(self, fd: Any) -> None: ...
    def post(self, level: str, text: str, **fields: Any) -> None: ...
    def keep(self, params: Mapping[str, Any]) -> None: ...
    def now_ns(self) -> int: ...
    instance: int  # 0 for the first process of a node, then +1 for each restart or hot-swap
    linked_inputs: frozenset[str]  # the input pads a link feeds


class Node:
    """Subclass this, declare ``inputs``, ``outputs`` and ``params``, implement the hooks you need.

    Hooks, in the order the runtime calls them: ``setup`` (READY), ``on_latency`` (the path's
    latency, before PLAYING and after changes), ``on_play`` (PLAYING),
    ``process`` (each input message), ``on_params`` (after a live change), ``on_call`` (a call into
    one of its ``interfaces``), ``on_pause``, ``on_eos`` (every input ended, or a source was asked
    to finish), ``teardown``.
    """

    inputs: ClassVar[dict[str, Pad]] = {}
    outputs: ClassVar[dict[str, Pad]] = {}
    params: ClassVar[dict[str, Param]] = {}
    # True for a node that mostly passes messages on without reading them (identity, a tee): its
    # messages arrive with their body still packed and go on as they came, unless it reads them.
    # A malformed one is then found when first read (MalformedMessage, which the runtime counts
    # on the link and drops), not on receipt.
    passthrough: ClassVar[bool] = False
    # Named control interfaces this type implements, so the runtime can reach it without knowing
    # the type. "emotion": the type has params ``emotion`` and ``intensity`` (and may have
    # ``transition_ms``), which the control API's POST /emotion sets. Other interfaces are served
    # by ``on_call`` (GStreamer's action signals): "say" (text to speak, POST /say), "speak"
    # (audio streamed in, POST /speak and its WebSocket).
    interfaces: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        extra = session_param(cls.params)  # a type with per-session params takes them in session_params
        if extra is not None and SESSION_PARAMS not in cls.params:
            cls.params = {**cls.params, SESSION_PARAMS: extra}

    def __init__(self, name: str, params: Mapping[str, Any], ctx: NodeContext):
        self.name = name
        self.p = ParamValues(params)
        self.ctx = ctx
        self.log = logging.getLogger(f"avatar.node.{name}")

    # --- hooks -------------------------------------------------------------------------------
    def setup(self) -> None:
        """Open files and devices; called once the node's links exist."""

    def on_play(self) -> None:
        """Start timers or watchers (sources)."""

    def on_pause(self) -> None:
        """Playback paused; timers and inputs are held by the runtime."""

    def process(self, pad: str, msg: Message) -> Message | None:
        """Handle one input message; a returned message is emitted on the only output pad."""
        return None

    def on_params(self, changed: Mapping[str, Any]) -> None:
        """Params changed while running (already validated and stored in ``self.p``)."""

    def on_eos(self) -> None:
        """No more input will come: emit what is buffered."""

    def on_call(self, interface: str, args: Mapping[str, Any]) -> Any:
        """A call into one of the type's ``interfaces`` from the control plane (``Runner.call``, the
        control API): act on it and return the answer (msgpack-able: a dict of plain values). Refuse
        by raising ``ParamError`` with the reason; the caller gets it as ``CallRefused``. Runs on the
        node's loop like every hook, never while other node code runs."""
        raise ParamError(f"node type '{type(self).__name__}' takes no '{interface}' call")

    def on_latency(self, upstream_ns: int, pads: Mapping[str, int]) -> None:
        """The runner's latency query (``runtime.latency``): the most any path into this node holds
        data back, overall and into each input pad. Sent before PLAYING and again after a swap,
        restart or param change upstream; a node that must wait for late input (the viseme's
        lookahead) follows it, and one that joins inputs of unequal latency (a sink's voice and
        face) holds the faster one back by the difference."""

    def teardown(self) -> None:
        """Release what setup opened; called on every stop, clean or not."""

    def stats(self) -> dict[str, Any]:
        """Node-specific counters added to the runtime's stats."""
        return {}

    # --- what a node may do ------------------------------------------------------------------
    def emit(self, pad: str, msg: Message) -> None:
        self.ctx.emit(pad, msg)

    def end_stream(self) -> None:
        """A source is done: EOS goes out behind everything already emitted."""
        self.ctx.end_stream()

    def every(self, period_s: float, fn: Callable[[], None]) -> Timer:
        """Call ``fn`` every period while PLAYING (``0``: as often as the loop turns)."""
        return self.ctx.every(period_s, fn)

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Timer:
        return self.ctx.call_later(delay_s, fn)

    def watch(self, fd: Any, fn: Callable[[], None]) -> None:
        """Call ``fn`` when ``fd`` (a socket or file descriptor) is readable, while PLAYING."""
        self.ctx.watch(fd, fn)

    def unwatch(self, fd: Any) -> None:
        self.ctx.unwatch(fd)

    @property
    def replacement(self) -> bool:
        """True in a process that replaces an earlier one of this node (restart or hot-swap): during
        a swap the old process still runs, so e.g. a listening port must be shared, not refused."""
        return getattr(self.ctx, "instance", 0) > 0

    def linked(self, pad: str) -> bool:
        """True when a link feeds input ``pad`` (an optional pad may be left unlinked: a sink
        without a voice tells its viewers there is none)."""
        return pad in self.ctx.linked_inputs

    def now_ns(self) -> int:
        """The pts clock (CLOCK_MONOTONIC ns); simulated under ``runtime.testing.NodeHarness``."""
        return self.ctx.now_ns()

    def session_values(self) -> dict[str, dict[str, Any]]:
        """Each session's own values of per-session params (``Param.per_session``), as the params'
        types: ``{session: {param: value}}``, only the sessions that have some."""
        declared = type(self).params
        return {str(s): {k: declared[k].coerce(k, v) for k, v in own.items()}
                for s, own in (getattr(self.p, SESSION_PARAMS, None) or {}).items()}

    def keep(self, *names: str) -> None:
        """These params were changed by the node itself (say, a viewer's request): the runner keeps
        them, so the node's next process (restart, hot-swap, or the graph started again with a
        Redis state store) starts with them, as it does for params set from outside."""
        self.ctx.keep({n: getattr(self.p, n) for n in names})

    def warn(self, text: str, **fields: Any) -> None:
        """A WARNING on the runner's bus, naming this node."""
        self.ctx.post("WARNING", text, **fields)

    @classmethod
    def output_caps(cls, pad: str, params: Mapping[str, Any]) -> CapsSpec | None:
        """Caps an output pad produces with these params (None: what arrives on its ``same_as`` input).

        Override when params decide it in a way a Pad cannot say (a mapping table's caps).
        """
        return cls.outputs[pad].static_caps(params)

    @classmethod
    def input_caps(cls, pad: str, params: Mapping[str, Any]) -> CapsSpec:
        """Caps an input pad accepts with these params; by default what the Pad declares.

        Override when params decide it (a ``bin`` takes what its first node takes)."""
        return cls.inputs[pad].caps

    @classmethod
    def required_inputs(cls, params: Mapping[str, Any]) -> frozenset[str]:
        """Input pads a link must feed with these params; by default those declared ``required``."""
        return frozenset(name for name, pad in cls.inputs.items() if pad.required)

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        """Time (ns) this node type holds data back with these params (full, defaults filled in):
        a recognizer's decision delay, a lead-in, a smoother's lag, a sink's queue. Summed along
        every path by ``runtime.latency``; shown by ``avatar inspect``."""
        return 0

    @classmethod
    def input_latency_ns(cls, params: Mapping[str, Any], pad: str) -> int:
        """Time (ns) this node holds back what comes in on input ``pad``, where that differs by pad
        (a blender smooths its capture but mixes the visemes in after its smoother); by default
        ``latency_ns`` for every pad."""
        return cls.latency_ns(params)

    @classmethod
    def check_config(cls, params: Mapping[str, Any]) -> list[str]:
        """Problems that need more than each param's type and range (a table file that is missing
        or wrong); run by ``avatar validate`` so they are found before any process starts."""
        return []

    @classmethod
    def default_output(cls) -> str | None:
        return next(iter(cls.outputs)) if len(cls.outputs) == 1 else None

    @classmethod
    def default_input(cls) -> str | None:
        """The pad a link names no pad for: the only input, or the only required one (optional
        side inputs, such as a ``requests`` pad, are always named)."""
        if len(cls.inputs) == 1:
            return next(iter(cls.inputs))
        required = [name for name, pad in cls.inputs.items() if pad.required]
        return required[0] if len(required) == 1 else None

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def apply_params(node: Node, given: Mapping[str, Any], state: str | None = None) -> dict[str, Any]:
    """Make a live change the way every host of a node does (the worker, ``NodeHarness``).

    The values are checked against their declarations (type, range, own check, and the ``state``
    the node is in), then the node type's ``check_config`` across all params, then offered to the
    node's ``on_params``, which refuses by raising ``ParamError``. A refusal, or any failure, puts
    back every value it touched, so nothing changed; the checked values are returned."""
    cls = type(node)
    changed = check_params(cls.params, given, fill_defaults=False, state=state)
    values = node.p.__dict__
    old = {k: values[k] for k in changed}
    values.update(changed)
    try:
        problems = cls.check_config(node.p.as_dict())  # rules across params (a table that exists)
        if problems:
            raise ParamError("; ".join(problems))
        node.on_params(changed)
    except BaseException:
        values.update(old)
        raise
    return changed
