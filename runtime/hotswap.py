"""The hot swap: replace a running node by a new process (same or other type, new params).

GStreamer's recipe: block upstream, drain the old node, start the new one, release. A MARK sent
down each input ends what the old node takes; it processes everything before it, passes a MARK
on down each output and reports the sequence numbers the new process goes on with.
"""
from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING, Any

from . import protocol as op
from .errors import ControlError, GraphError, ParamError
from .graph import Graph
from .nodeprocess import NodeProcess
from .params import check_wire, shown_text
from .states import PAUSED
from .transport import BIND_RETRY_S
from .validate import validate_graph

if TYPE_CHECKING:
    from .runner import Runner


class HotSwap:
    """The swaps of one runner: which nodes are being swapped, and the MARKs and drains awaited."""

    def __init__(self, runner: "Runner"):
        self.runner = runner
        self.swapping: set[str] = set()
        self.marks: dict[str, asyncio.Future] = {}  # link id -> its MARK reached the node downstream
        self.drained: dict[str, asyncio.Future] = {}  # node -> the old process's DRAINED message

    def is_swapping(self, name: str) -> bool:
        return name in self.swapping

    # --- messages from node processes ----------------------------------------------------------
    def on_mark(self, np: NodeProcess, link_id: str) -> None:
        fut = self.marks.get(link_id)
        if fut is not None:
            if not fut.done():
                fut.set_result(True)
        elif self.runner.procs.get(np.name) is np and np.name not in self.swapping:
            self._release_stray_mark(link_id)

    def on_drained(self, np: NodeProcess, msg: dict[str, Any]) -> None:
        fut = self.drained.get(np.name)
        if fut and not fut.done():
            fut.set_result(msg)

    def _release_stray_mark(self, link_id: str) -> None:
        """A hold's MARK reached a node no swap is draining (the node it was meant for died before
        taking it, and the sender's relink carried it on to the new one): the sender holds that
        link since, for nothing. Release it."""
        runner = self.runner
        link = runner.graph.link(link_id)
        src = runner.procs.get(link.src) if link is not None else None
        if link is None or src is None or src.exited.done() or link_id in runner.tcp or link.src in self.swapping:
            return

        async def release() -> None:
            try:
                await runner.request(src, op.RELINK, link=link_id, endpoint=runner.endpoints[link_id])
            except ControlError as exc:
                runner.bus.post("WARNING", node=link.src, text=f"link {link_id}: not released after a swap: {exc}")

        asyncio.ensure_future(release())

    # --- the swap ------------------------------------------------------------------------------
    async def swap(self, name: str, type_: str | None, params: dict[str, Any], timeout: float) -> int:
        """Swap ``name``; the new process's pid.

        A node that died and waits for its restart is swapped too: the swap replaces the dead
        process and the restart is called off; a restart already bringing its process up is
        waited for, and that process is the one replaced. Either way one new process starts, with
        an instance number of its own (``Runner.new_instance``).
        """
        runner = self.runner
        runner.proc(name)
        if name in self.swapping:
            raise ControlError(f"node '{name}' is already being swapped")
        trial, types = self._trial(name, type_, params)
        self.swapping.add(name)
        try:
            await runner.supervisor.settle_restart(name, timeout)
            old = runner.proc(name)
            saved = runner.graph.nodes[name]
            runner.graph.nodes[name] = trial.nodes[name]
            # inputs from another host arrive on a fixed port: the old node lets go of it when it
            # drains, and the new one binds it then (their senders reconnect by themselves)
            remote_in = tuple(l.id for l in runner.graph.links_in(name) if l.id in runner.tcp)
            new = await self._start_new(name, old, saved, remote_in)
            runner.types[name] = types[name]
            seqs, expected = await self._drain_old(name, old, remote_in, timeout)
            await self._hand_over(name, new, remote_in, seqs, expected)
        finally:
            self.swapping.discard(name)
            self.drained.pop(name, None)
            for l in runner.graph.links_out(name):
                self.marks.pop(l.id, None)
        runner.keep(name, dict(runner.graph.nodes[name].params), replace=True)
        runner.bus.post("NODE_SWAPPED", node=name, pid=new.pid, old_pid=old.pid,
                        node_type=runner.graph.nodes[name].type)
        assert new.proc is not None  # spawned by _start_new
        return new.proc.pid

    def _trial(self, name: str, type_: str | None, params: dict[str, Any]) -> tuple[Graph, dict[str, type]]:
        """The graph with the swapped node in it, validated, and its node types."""
        try:
            check_wire(params)  # before the deepcopy below, which recurses into every value
        except ParamError as exc:
            raise ControlError(f"cannot swap '{name}': {exc}") from None
        trial = copy.deepcopy(self.runner.graph)
        spec = trial.nodes[name]
        if type_ and type_ != spec.type:
            spec.type, spec.params = type_, {}
        spec.params.update(params)
        spec.param_lines = {}
        try:
            return trial, validate_graph(trial)
        except GraphError as exc:
            raise ControlError(f"cannot swap '{name}': " + "; ".join(p.message for p in exc.problems)) from None
        except Exception as exc:  # a type the registry cannot even look up (':', '.x:Y', a module failing to import)
            raise ControlError(f"cannot swap '{name}': node type '{shown_text(spec.type, 200)}': "
                               f"{type(exc).__name__}: {shown_text(str(exc), 300)}") from None

    async def _start_new(self, name: str, old: NodeProcess, saved: Any, remote_in: tuple[str, ...]) -> NodeProcess:
        """The new process, brought to PAUSED; if it cannot start, everything is as it was."""
        runner = self.runner
        new = runner.spawn(name, runner.new_instance(name), defer=remote_in)
        try:
            await runner.bring(new, PAUSED)
        except (RuntimeError, TimeoutError, ControlError) as exc:
            runner.graph.nodes[name] = saved
            new.expected_exit = True
            if not new.exited.done():
                await new.kill(grace=0.5)
            if old.exited.done() and not runner.stopping and not runner.supervisor.pending(name):
                # the old process had died and its restart was left to this swap: restart it now
                runner.supervisor.schedule_restart(old)
            raise ControlError(f"cannot swap '{name}': the new node did not start: {exc}") from None
        return new

    async def _drain_old(self, name: str, old: NodeProcess, remote_in: tuple[str, ...],
                         timeout: float) -> tuple[dict[str, int], dict[str, int]]:
        """Hold the senders, let the old process drain and exit; the output sequence numbers it
        reached and the input ones it expected next (empty if it could not drain)."""
        runner = self.runner
        loop = asyncio.get_running_loop()
        drained_fut = self.drained[name] = loop.create_future()
        outs = runner.graph.links_out(name)
        for l in outs:
            self.marks[l.id] = loop.create_future()
        old.expected_exit = True
        dead = old.exited.done()
        if dead:
            runner.bus.post("INFO", node=name, text=f"swap: the old '{name}' (pid {old.pid}) had exited; "
                            "nothing to drain")
        else:
            try:
                await runner.request(old, op.DRAIN, release=list(remote_in))
            except ControlError as exc:
                runner.bus.post("WARNING", node=name, text=f"swap: {exc}; killing it")
                dead = True
        for l in runner.graph.links_in(name) if not dead else ():  # a dead node takes no MARK: senders
            src = runner.procs.get(l.src)                           # queue until relinked to the new one
            if src is not None and not src.exited.done():
                try:
                    await runner.request(src, op.HOLD, link=l.id)
                except ControlError as exc:
                    runner.bus.post("WARNING", node=name, text=f"swap: {exc}")
        seqs: dict[str, int] = {}
        expected: dict[str, int] = {}
        if not dead:
            try:
                await asyncio.wait([drained_fut, old.exited], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not drained_fut.done() and old.exited.done():  # it exits once drained: its
                    await asyncio.wait([drained_fut], timeout=1.0)  # exit may be seen before its last word
                if not drained_fut.done():
                    raise asyncio.TimeoutError
                drained = drained_fut.result()
                seqs, expected = drained["seqs"], drained.get("expected") or {}
                await asyncio.wait_for(asyncio.gather(*(self.marks[l.id] for l in outs if l.dst in runner.procs)),
                                       timeout)
            except asyncio.TimeoutError:
                runner.bus.post("WARNING", node=name, text=f"swap: '{name}' did not drain within {timeout}s "
                                "(or exited first); killing it")
            if not old.exited.done():  # handed over: it waits for this, so nothing it sent is lost
                try:
                    await runner.request(old, op.STOP, timeout=2.0)
                except ControlError:
                    pass
        await old.kill(grace=5.0)
        return seqs, expected

    async def _hand_over(self, name: str, new: NodeProcess, remote_in: tuple[str, ...],
                         seqs: dict[str, int], expected: dict[str, int]) -> None:
        """The new process takes the old one's place: its inputs, its numbering, the graph's state."""
        runner = self.runner
        if remote_in:
            try:
                await runner.request(new, op.BIND, timeout=BIND_RETRY_S + 5,
                                     links={i: expected.get(i) for i in remote_in})
            except ControlError as exc:
                runner.bus.post("ERROR", node=name, pid=new.pid, text=f"swap: the new '{name}' gets nothing from "
                                f"other hosts: {exc}")
        for l in runner.graph.links_out(name):
            if l.id in seqs:
                await runner.request(new, op.RELINK, link=l.id, seq=seqs[l.id])
        runner.procs[name] = new
        await runner.latency.update(runner, report=True)  # latency query: recomputed for the new graph
        await runner.bring(new, runner.state)
        await runner.relink_upstream(name, new.instance)
