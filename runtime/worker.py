"""The process that hosts one node: its links, its control socket and its event loop.

Started by the runner as ``python -m runtime.worker SPEC_JSON`` (a ``protocol.SpawnSpec``). One
thread runs everything: input messages, timers, watched file descriptors and control requests,
so node code never needs a lock. While an emit waits for room on a ``block`` link, control
requests are still answered (stats, params, hold/relink for hot-swap, stop). A second thread
only beats (``runtime.heartbeat``), saying when the main loop last turned.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import time
import traceback
from array import array
from typing import Any, Callable, Mapping

import zmq

from . import protocol as op
from .clock import now_ns
from .errors import ParamError
from .heartbeat import Heartbeat
from .histogram import PROC_BOUNDS_US, RingHistogram
from .logs import configure as configure_logging
from .message import Kind, MalformedMessage, Message
from .node import Node, apply_params
from .params import check_params
from .proctools import die_with_parent
from .protocol import SpawnSpec
from .registry import get_node_type
from .states import NULL, PLAYING, READY
from .transport import AGE_MASK, InLinkBase, LinkWatch, OutLinkBase, open_in_link, open_out_link

PERIODIC_S = 1.0  # parent check, QOS and link warnings
_DEFERRED = (op.STATE, op.PARAMS, op.EOS, op.LATENCY, op.CALL)  # requests that change the node: held while node code runs
# a tcp link down this long gets a WARNING (the other host's runner not started, or with another graph?)
LINK_WAIT_WARN_S = float(os.environ.get("AVATAR_LINK_WARN_S", "10"))
_RING = 1024
_NO_EVENTS: dict = {}


class NodeStop(Exception):
    """Unwinds the loop when the node must stop (stop request, SIGTERM, parent gone)."""


class _Timer:
    __slots__ = ("period", "due", "fn", "repeat", "cancelled")

    def __init__(self, period: float, due: float, fn: Callable[[], None], repeat: bool):
        self.period, self.due, self.fn, self.repeat, self.cancelled = period, due, fn, repeat, False

    def cancel(self) -> None:
        self.cancelled = True


class Worker:
    """Implements ``NodeContext`` for one node and runs its loop."""

    def __init__(self, spec: SpawnSpec):
        self.spec = spec
        self.name = spec.name
        self.instance = spec.instance
        self.parent_pid = spec.parent_pid
        self.log = logging.getLogger(f"avatar.worker.{self.name}")
        self.zctx = zmq.Context()
        self.control = self.zctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.IDENTITY, spec.identity)
        self.control.setsockopt(zmq.LINGER, 1000)
        self.control.connect(spec.control)
        self.turned_at = time.monotonic()  # the main loop's last turn, read by the heartbeat thread
        self.in_setup = True
        self.heartbeat = Heartbeat(self.zctx, spec.control, spec.identity, op.beat_period(spec.hang_timeout),
                                   self._progress)
        self.state = NULL
        self.stopping = False
        self.finished = False
        self.draining = False  # set by the runner before a hot-swap
        self.handed_over = False  # drained for a hot-swap: processes nothing more, waits for STOP
        self.timers: list[_Timer] = []
        self.watchers: dict[Any, Callable[[], None]] = {}
        self.deferred: list[dict] = []  # control requests that change the node, held while node code runs
        self.nested = 0  # >0 while node code runs (control changes to the node wait until it returns)
        self.n_in = self.n_out = 0
        self.proc_ns = array("d", bytes(8 * _RING))
        self.proc_i = 0
        self.proc_hist = RingHistogram(PROC_BOUNDS_US)  # binned from the ring when stats are asked
        self.reported_drops = 0
        self.next_periodic = 0.0
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.wait_poller = zmq.Poller()  # control only; an output socket is added while waiting on it
        self.wait_poller.register(self.control, zmq.POLLIN)
        self.in_links: list[InLinkBase] = []
        self.out_links: dict[str, OutLinkBase] = {}
        self.out_by_pad: dict[str | None, list[OutLinkBase]] = {}  # None: no pad (see emit)
        self.waiting_out: set[OutLinkBase] = set()
        self.watches: dict[zmq.Socket, LinkWatch] = {}  # tcp links' socket monitors -> LINK_UP / LINK_DOWN

        self._ops: dict[str, Callable[[dict], None]] = {
            op.STATS: self._op_stats, op.PARAMS: self._op_params, op.STATE: self._op_state, op.HOLD: self._op_hold,
            op.RELINK: self._op_relink, op.DRAIN: self._op_drain, op.BIND: self._op_bind, op.EOS: self._op_eos,
            op.STOP: self._op_stop, op.LATENCY: self._op_latency, op.CALL: self._op_call,
        }

        self.cls: type[Node] = get_node_type(spec.type)
        params = check_params(self.cls.params, spec.params)
        for i in spec.inputs:
            assert i.pad is not None  # the runner resolves every pad (runtime.validate) before it spawns
            self.in_links.append(open_in_link(self.zctx, i.id, i.pad, i.endpoint, i.policy, i.size, i.feedback, i.peer,
                                        i.defer))
            self._add_watch(self.in_links[-1].watch)
        for o in spec.outputs:
            assert o.pad is not None  # likewise
            link = open_out_link(self.zctx, o.id, o.pad, o.endpoint, o.policy, o.size, o.seq, o.hold, o.peer)
            self._add_watch(link.watch)
            self.out_links[link.id] = link
            self.out_by_pad.setdefault(link.pad, []).append(link)
        self.host = spec.host
        self.linked_inputs = frozenset(l.pad for l in self.in_links)
        for pad in self.cls.outputs:
            self.out_by_pad.setdefault(pad, [])
        self.node: Node = self.cls(self.name, params, self)
        for in_link in self.in_links:
            in_link.open_bodies = not self.cls.passthrough
        self.single_in = self.in_links[0] if len(self.in_links) == 1 else None
        self.default_out = self.cls.default_output()

    # --- NodeContext -------------------------------------------------------------------------
    def emit(self, pad: str | None, msg: Message) -> None:
        # pad None: process() returned a message but the type has no single output (default_out)
        try:
            links = self.out_by_pad[pad]
        except KeyError:
            raise ValueError(f"node '{self.name}' has no output pad '{pad}' (pads: {', '.join(self.cls.outputs)})") from None
        self.n_out += 1
        for link in links:
            link.push(msg)
            if link.outbox:
                self._want_out(link)
                if link.must_wait:
                    self._wait_for_room(link)

    def end_stream(self) -> None:
        if self.finished:
            return
        self.finished = True
        for t in self.timers:
            t.cancel()
        for link in self.out_links.values():
            link.push_control(Kind.EOS)
            if link.outbox:
                self._want_out(link)
        self._send(op.EOS)

    def every(self, period_s: float, fn: Callable[[], None]) -> _Timer:
        t = _Timer(max(0.0, period_s), time.monotonic() + period_s, fn, True)
        self.timers.append(t)
        return t

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> _Timer:
        t = _Timer(delay_s, time.monotonic() + delay_s, fn, False)
        self.timers.append(t)
        return t

    def watch(self, fd: Any, fn: Callable[[], None]) -> None:
        self.watchers[fd] = fn
        if self.state == PLAYING:
            self.poller.register(fd, zmq.POLLIN)

    def unwatch(self, fd: Any) -> None:
        if self.watchers.pop(fd, None) is not None and self.state == PLAYING:
            self.poller.unregister(fd)

    def post(self, level: str, text: str, **fields: Any) -> None:
        self._send(op.BUS, type=level, text=text, **fields)

    def keep(self, params: Mapping[str, Any]) -> None:
        self._send(op.KEEP, params=dict(params))

    now_ns = staticmethod(now_ns)

    def _progress(self) -> tuple[float, bool]:
        """(seconds since the loop turned, in setup), read by the heartbeat thread. ``in_setup`` is read
        first: the main thread sets ``turned_at`` before it clears ``in_setup``, so a beat never
        says "out of setup" with the setup's whole length as its loop age (a false hang)."""
        setup = self.in_setup
        return time.monotonic() - self.turned_at, setup

    # --- loop --------------------------------------------------------------------------------
    def run(self) -> int:
        code = 0
        clean = False
        try:
            self.heartbeat.start()
            self._send(op.HELLO, pid=os.getpid())
            self._guarded(self.node.setup)
            self.turned_at, self.in_setup = time.monotonic(), False
            gc.freeze()  # what exists now lives as long as the process: full collections skip it
            self._set_state(READY)
            while not self.stopping:
                self._turn()
            clean = True
        except NodeStop:
            clean = self.stopping
        except Exception as exc:  # a node bug: report it, exit non-zero, the runner restarts us
            tb = traceback.format_exc()
            self.log.error("node '%s' failed:\n%s", self.name, tb)
            self._send(op.BUS, type="ERROR", text=f"{type(exc).__name__}: {exc}", traceback=tb)
            code = 1
        finally:
            self._close(clean)
        return code

    def _turn(self) -> None:
        self.turned_at = time.monotonic()
        polled = self.poller.poll(self._timeout_ms())
        events = dict(polled) if polled else _NO_EVENTS
        if self.control in events:
            self._handle_control()
        if self.watches:
            self._check_watches(events)
        if self.deferred and not self.nested:
            self._run_deferred()
        if self.draining:
            self._maybe_drained()
        if self.state == PLAYING and not self.handed_over:
            read = [link for link in self.in_links if link.sock in events and not link.released and link.read_one()]
            self._process_queued(256)
            for link in read:  # the rest of a burst, after the first message has gone on
                if not link.released:  # released: a hot-swap closed it this turn
                    link.read_available()
                    self._process_queued(256)
            if self.watchers:
                for fd, fn in list(self.watchers.items()):  # before timers: input waiting makes this tick
                    if fd in events or (hasattr(fd, "fileno") and fd.fileno() in events):
                        self._guarded(fn)
            if self.timers:
                self._run_timers()
        if self.waiting_out:
            self._flush_out()
        if time.monotonic() >= self.next_periodic:
            self._periodic()

    def _timeout_ms(self) -> int:
        if self.state != PLAYING or self.handed_over:
            return 200
        for link in self.in_links:
            if link.queue:
                return 0
        timeout = 0.2
        for out in self.waiting_out:  # a link whose receiver is not there yet tries again
            retry = out.retry_in()
            if retry is not None:
                timeout = min(timeout, retry)
        if self.timers:
            now = time.monotonic()
            for t in self.timers:
                if not t.cancelled:
                    timeout = min(timeout, t.due - now)
        return max(0, int(timeout * 1000 + 0.999))

    def _process_queued(self, budget: int) -> None:
        node, single = self.node, self.single_in
        link: InLinkBase | None  # declared for mypy, which loses the narrowing below across loop turns otherwise
        while budget > 0:
            if single is not None:
                if not single.queue:
                    return
                link = single
            else:
                link = None
                for cand in self.in_links:
                    if cand.queue and (link is None or cand.queue[0].pts_ns < link.queue[0].pts_ns):
                        link = cand
                if link is None:
                    return
            msg = link.queue.popleft()
            budget -= 1
            if msg.kind != Kind.DATA:
                self._control_kind(link, msg.kind)
                continue
            self.n_in += 1
            t0 = now_ns()
            if link.timed and msg.pts_ns > 0:  # the link's latency: the data's age as the node takes it
                i = link.age_i & AGE_MASK
                link.age_at[i] = t0
                link.age_ns[i] = t0 - msg.pts_ns
                link.age_i += 1
            self.nested += 1
            try:
                out = node.process(link.pad, msg)
                if out is not None:
                    self.emit(self.default_out, out)
            except MalformedMessage as exc:  # a passthrough node read a bad one: the link's error
                link.malformed += 1
                if link.malformed & (link.malformed - 1) == 0:  # the 1st, 2nd, 4th...: no flood
                    self.log.warning("link %s: dropped a malformed message (%d so far): %s", link.id, link.malformed, exc)
            finally:
                self.nested -= 1
            self.proc_ns[self.proc_i % _RING] = now_ns() - t0
            self.proc_i += 1
            self.turned_at = time.monotonic()  # node code returned: the loop goes on
            if self.state != PLAYING or self.handed_over:
                return

    def _control_kind(self, link: InLinkBase, kind: Kind) -> None:
        if kind == Kind.EOS:
            link.ended = True
            # feedback (requests from downstream) ends after us: only the forward inputs decide
            if not link.feedback and all(l.ended for l in self.in_links if not l.feedback):
                self._guarded(self.node.on_eos)
                self.end_stream()
        elif kind == Kind.MARK:
            link.marked = True
            self._send(op.MARK, link=link.id)
            self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.draining and all(l.marked or l.ended for l in self.in_links):
            self._hand_over()

    def _hand_over(self) -> None:
        """Hot-swap: everything before the MARK is processed; hand over, then wait for STOP.

        The process stays (answering the runner, sending what its outputs still hold) until the
        runner has seen every MARK arrive downstream and stops it: a process that exits at once
        can take its last messages, the MARK among them, with it before ZeroMQ has sent them."""
        self._guarded(self.node.on_eos)
        for link in self.out_links.values():
            link.push_control(Kind.MARK)
        deadline = time.monotonic() + 5.0
        while any(l.outbox for l in self.out_links.values()) and time.monotonic() < deadline:
            for link in self.out_links.values():
                link.flush()
            self.turned_at = time.monotonic()
            time.sleep(0.001)
        self._send(op.DRAINED, seqs={l.id: l.seq for l in self.out_links.values()},
                   expected={l.id: l.expected for l in self.in_links if l.released})
        self.draining = False
        self.handed_over = True
        for link in self.out_links.values():
            if link.outbox:  # still going out: the loop flushes it
                self._want_out(link)

    def _run_timers(self) -> None:
        now = time.monotonic()
        for t in list(self.timers):
            if t.cancelled:
                self.timers.remove(t)
            elif t.due <= now:
                if t.repeat:
                    t.due += t.period
                    if t.due < now:
                        t.due = now
                else:
                    self.timers.remove(t)
                # a period-0 timer (as fast as possible) runs a burst between polls
                for _ in range(64 if t.repeat and t.period == 0 else 1):
                    self._guarded(t.fn)
                    if t.cancelled or self.state != PLAYING or self.stopping:
                        break
                if self.state != PLAYING:
                    return

    def _guarded(self, fn: Callable[[], object]) -> None:
        self.nested += 1
        try:
            fn()
        finally:
            self.nested -= 1

    def _want_out(self, link: OutLinkBase) -> None:
        if link not in self.waiting_out:
            self.waiting_out.add(link)
            self.poller.register(link.sock, link.out_event)

    def _flush_out(self) -> None:
        for link in list(self.waiting_out):
            link.flush()
            if not link.outbox or link.hold:
                self.waiting_out.discard(link)
                self.poller.unregister(link.sock)

    def _wait_for_room(self, link: OutLinkBase) -> None:
        """Backpressure on a block link: wait, but keep answering the runner."""
        poller = self.wait_poller
        while link.must_wait:
            self.turned_at = time.monotonic()
            if self.stopping:
                raise NodeStop
            sock = link.sock
            if not link.hold:
                poller.register(sock, link.out_event)
            retry = link.retry_in()
            events = dict(poller.poll(100 if retry is None else min(100, int(retry * 1000) + 1)))
            if not link.hold:
                poller.unregister(sock)
            if self.control in events:
                self._handle_control()
            if self.watches:
                self._check_watches(events)
            link.flush()
            if time.monotonic() >= self.next_periodic:
                self._periodic()

    # --- tcp links to other hosts ------------------------------------------------------------------
    def _add_watch(self, watch: LinkWatch | None) -> None:
        if watch is not None:
            self.watches[watch.mon] = watch
            self.poller.register(watch.mon, zmq.POLLIN)
            self.wait_poller.register(watch.mon, zmq.POLLIN)

    def _drop_watch(self, watch: LinkWatch | None) -> None:
        if watch is not None and self.watches.pop(watch.mon, None) is not None:
            self.poller.unregister(watch.mon)
            self.wait_poller.unregister(watch.mon)

    def _check_watches(self, events: dict) -> None:
        for mon, watch in list(self.watches.items()):
            if mon in events:
                for up in watch.read():
                    kind = "LINK_UP" if up else "LINK_DOWN"
                    way = "to" if watch.direction == "out" else "from"
                    self.post(kind, f"link {watch.link} {way} host '{watch.peer}' is {'up' if up else 'down'}",
                              link=watch.link, direction=watch.direction, host=self.host, peer=watch.peer,
                              endpoint=watch.endpoint)

    def _warn_links_down(self) -> None:
        for watch in self.watches.values():
            if watch.overdue(LINK_WAIT_WARN_S):
                if watch.direction == "out":
                    text = (f"link {watch.link}: host '{watch.peer}' not reached at {watch.endpoint} for "
                            f"{LINK_WAIT_WARN_S:.0f}s; is its runner up, with the same graph?")
                else:
                    text = (f"link {watch.link}: host '{watch.peer}' has not connected to {watch.endpoint} for "
                            f"{LINK_WAIT_WARN_S:.0f}s; is its runner up, with the same graph?")
                self.post("WARNING", text, link=watch.link, peer=watch.peer)

    def _release_inputs(self, ids: list[str]) -> None:
        """Hot-swap: let go of the tcp inputs (their senders are on other hosts) for the new node."""
        for link in self.in_links:
            if link.id in ids and not link.released:
                if self.state == PLAYING:
                    self.poller.unregister(link.sock)
                self._drop_watch(link.watch)
                link.release()

    def _periodic(self) -> None:
        self.next_periodic = time.monotonic() + PERIODIC_S
        if os.getppid() != self.parent_pid:
            self.stopping = True
            raise NodeStop
        drops = sum(l.drops for l in self.in_links) + sum(l.drops for l in self.out_links.values())
        if drops > self.reported_drops:
            every: list[InLinkBase | OutLinkBase] = [*self.in_links, *self.out_links.values()]
            self._send(op.BUS, type="QOS", dropped=drops - self.reported_drops, total=drops,
                       links={l.id: l.drops for l in every if l.drops})
            self.reported_drops = drops
        if self.watches:
            self._warn_links_down()

    # --- control -----------------------------------------------------------------------------
    def _send(self, op_: str, **fields: Any) -> None:
        try:
            self.control.send(op.pack(op_, **fields), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _reply(self, req: dict, ok: bool = True, result: Any = None, error: str | None = None) -> None:
        if "id" in req:
            try:
                raw = op.pack(op.REPLY, id=req["id"], ok=ok, result=result, error=error)
            except (TypeError, ValueError, OverflowError) as exc:  # node code answered what msgpack cannot carry
                raw = op.pack(op.REPLY, id=req["id"], ok=False, result=None,
                              error=f"the answer to '{req.get('op')}' cannot be sent: {exc}")
            try:
                self.control.send(raw, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _refuse(self, req: dict, exc: Exception) -> None:
        """A request that failed: a refused param change or call says so (the runner raises
        ParamRefused or CallRefused)."""
        if "id" in req:
            self._send(op.REPLY, id=req["id"], ok=False, result=None, error=str(exc),
                       refused=req.get("op") in (op.PARAMS, op.CALL) and isinstance(exc, ValueError))

    def _handle_control(self) -> None:
        while True:
            try:
                raw = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            req = op.unpack(raw)
            try:
                if req.get("op") in _DEFERRED and self.nested:
                    if req["op"] == op.PARAMS:
                        check_params(self.cls.params, req["params"], fill_defaults=False, state=self.state)
                    self.deferred.append(req)
                    continue
                self._apply(req)
            except (ParamError, ValueError, KeyError) as exc:
                self._refuse(req, exc)

    def _run_deferred(self) -> None:
        todo, self.deferred = self.deferred, []
        for req in todo:
            try:
                self._apply(req)
            except (ParamError, ValueError, KeyError) as exc:
                self._refuse(req, exc)

    def _apply(self, req: dict) -> None:
        handler = self._ops.get(req["op"])
        if handler is None:
            self._reply(req, False, error=f"unknown control op '{req['op']}'")
        else:
            handler(req)

    # one per request op of runtime.protocol; each replies
    def _op_stats(self, req: dict) -> None:
        self._reply(req, result=self.stats())

    def _op_params(self, req: dict) -> None:
        """A live change (``runtime.node.apply_params``): a refusal changes nothing, and says why."""
        self._guarded(lambda: apply_params(self.node, req["params"], self.state))
        self._reply(req, result=self.node.p.as_dict())

    def _op_state(self, req: dict) -> None:
        self._set_state(req["state"])
        self._reply(req, result=self.state)

    def _op_hold(self, req: dict) -> None:
        link = self.out_links[req["link"]]
        link.push_control(Kind.MARK)
        self._reply(req)

    def _op_relink(self, req: dict) -> None:
        link = self.out_links[req["link"]]
        if "seq" in req:
            link.seq = req["seq"]
        if req.get("endpoint") and req["endpoint"] != link.endpoint:
            if link in self.waiting_out:
                self.waiting_out.discard(link)
                self.poller.unregister(link.sock)
            self._drop_watch(link.watch)
            link.connect(req["endpoint"])
            self._add_watch(link.watch)
        link.hold = False
        link.flush()
        if link.outbox:
            self._want_out(link)
        self._reply(req)

    def _op_drain(self, req: dict) -> None:
        for link in self.in_links:  # a MARK seen before (an earlier swap upstream) is not this drain's
            link.marked = False
        self._release_inputs(req.get("release") or [])
        self.draining = True  # acted on in the loop, never inside node code
        self._reply(req)

    def _op_bind(self, req: dict) -> None:
        """Hot-swap: the node we replace has let go of these tcp ports."""
        for link in self.in_links:
            if link.id in req["links"] and not link.bound:
                try:
                    link.bind()
                except zmq.ZMQError as exc:
                    raise ValueError(str(exc)) from None
                expected = req["links"][link.id]
                if expected is not None:
                    link.expected = expected  # loss at the hand-over is counted as gaps
        self._reply(req)

    def _op_eos(self, req: dict) -> None:
        if not self.finished:
            self._guarded(self.node.on_eos)
            self.end_stream()
        self._reply(req)

    def _op_latency(self, req: dict) -> None:
        """The runner's latency query (runtime.latency): what the paths into this node hold back."""
        pads = {str(k): int(v) for k, v in (req.get("pads") or {}).items()}
        self._guarded(lambda: self.node.on_latency(int(req["upstream_ns"]), pads))
        self._reply(req)

    def _op_call(self, req: dict) -> None:
        """A call into one of the node's interfaces (``Node.on_call``); a ParamError is its refusal."""
        interface = req["interface"]
        if interface not in self.cls.interfaces:
            raise ParamError(f"node type '{self.spec.type}' has no '{interface}' interface")
        answer: list[Any] = []
        try:
            self._guarded(lambda: answer.append(self.node.on_call(interface, req.get("args") or {})))
        except (ParamError, ValueError, KeyError, NodeStop):
            raise
        except Exception as exc:  # a call from outside must not take the node (and every session in it) down
            self.log.exception("node '%s': the '%s' call failed", self.name, interface)
            self.post("WARNING", f"the '{interface}' call failed: {type(exc).__name__}: {exc}")
            self._reply(req, False, error=f"the '{interface}' call failed: {type(exc).__name__}: {exc}")
            return
        self._reply(req, result=answer[0])

    def _op_stop(self, req: dict) -> None:
        self.stopping = True
        self._reply(req)

    def _set_state(self, target: str) -> None:
        if target == self.state:
            return
        was_playing = self.state == PLAYING
        if target == PLAYING:
            for link in self.in_links:
                if not link.released:
                    self.poller.register(link.sock, zmq.POLLIN)
            for fd in self.watchers:
                self.poller.register(fd, zmq.POLLIN)
            now = time.monotonic()
            for t in self.timers:
                t.due = now + (t.period if t.repeat and t.period > 0 else 0)
            self.state = PLAYING
            self._guarded(self.node.on_play)
        elif was_playing:
            for link in self.in_links:
                if not link.released:
                    self.poller.unregister(link.sock)
            for fd in self.watchers:
                self.poller.unregister(fd)
            self.state = target
            self._guarded(self.node.on_pause)
        else:
            self.state = target
        self._send(op.STATE, state=self.state)

    def stats(self) -> dict[str, Any]:
        now = now_ns()
        n = min(self.proc_i, _RING)
        times = sorted(self.proc_ns[:n]) if n else [0.0]
        return {
            "pid": os.getpid(), "type": self.spec.type, "instance": self.instance, "state": self.state,
            "in": self.n_in, "out": self.n_out,
            "drops": sum(l.drops for l in self.in_links) + sum(l.drops for l in self.out_links.values()),
            "queue_depth": sum(len(l.queue) for l in self.in_links),
            "deferred": len(self.deferred),  # control requests (params, calls) waiting for node code to return
            "proc_us_p50": times[len(times) // 2] / 1000, "proc_us_p99": times[min(len(times) - 1, int(len(times) * 0.99))] / 1000,
            "proc_hist": self.proc_hist.update(self.proc_ns, self.proc_i),
            "inputs": {l.id: l.stats(now) for l in self.in_links},
            "outputs": {l.id: l.stats() for l in self.out_links.values()},
            "node": self.node.stats(),
            "params": self.node.p.as_dict(),
        }

    def _close(self, clean: bool) -> None:
        try:
            self.node.teardown()
        except Exception:
            self.log.exception("teardown of '%s' failed", self.name)
        if clean:
            deadline = time.monotonic() + 2.0
            while any(l.outbox and not l.hold for l in self.out_links.values()) and time.monotonic() < deadline:
                for link in self.out_links.values():
                    link.flush()
                self.turned_at = time.monotonic()
                time.sleep(0.001)
        for in_link in self.in_links:
            in_link.close()
        for link in self.out_links.values():
            link.close(2000 if clean else 0)
        self._send(op.STATE, state=NULL)
        self.heartbeat.stop()
        self.control.close(500)
        self.zctx.term()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise NodeStop


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = SpawnSpec.from_wire(argv[0])
    configure_logging(node=spec.name)
    die_with_parent(spec.parent_pid)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker = Worker(spec)
    except NodeStop:
        return 0
    except Exception as exc:
        logging.getLogger(f"avatar.worker.{spec.name}").error("node '%s' (%s) could not start: %s",
                                                               spec.name, spec.type, exc)
        return 2
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
