"""Restart supervision: a node process that exits, or hangs, is reported and restarted by its policy.

The hang rule. Each node process beats from a thread of its own (``runtime.worker``), so a node
busy in its own code still beats; each beat says how long the process's main loop has not
turned (``loop_age_s``) and whether it is still in ``setup``. A node is hung, and is killed
(SIGKILL, which also ends a SIGSTOPped process) and restarted like a crash, when for longer than
its ``hang_timeout`` (YAML, default 5 s) either

- no beat arrives: the whole process is frozen (SIGSTOP, a C call holding the GIL), or
- beats arrive but its loop has not turned, outside setup: node code that never returns
  (an endless ``process()``, a C call blocked with the GIL released).

Setup (loading a model) is exempt from the second rule; before the node says READY (its first
beat, and its setup) the first rule allows the runner's ``start_timeout`` (if longer), the bound
on reaching READY.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .errors import ControlError
from .nodeprocess import NodeProcess
from .proctools import exit_cause
from .states import NULL, READY

if TYPE_CHECKING:
    from .runner import Runner


class RestartBudget:
    """At most ``limit`` restarts within ``window`` seconds."""

    def __init__(self, limit: int, window: float = 60.0):
        self.limit, self.window = limit, window
        self.times: deque[float] = deque()

    def take(self) -> bool:
        now = time.monotonic()
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True

    @property
    def used(self) -> int:
        return len(self.times)


class Supervisor:
    """Watches one runner's node processes: exits, heartbeats, restarts within each node's budget."""

    def __init__(self, runner: "Runner"):
        self.runner = runner
        graph = runner.graph
        self.budgets = {n: RestartBudget(graph.nodes[n].max_restarts) for n in runner.local}
        self.restarts: dict[str, asyncio.Task] = {}  # pending restarts (asleep, or bringing up)
        self.respawned: set[str] = set()  # nodes whose pending restart has already spawned its process

    # --- heartbeats ----------------------------------------------------------------------------
    def on_beat(self, np: NodeProcess, msg: dict[str, Any]) -> None:
        np.last_beat = asyncio.get_running_loop().time()
        np.loop_age_s = float(msg.get("loop_age_s", 0.0))
        np.in_setup = bool(msg.get("setup", False))

    def heartbeat_age(self, np: NodeProcess) -> float | None:
        """Seconds since the node's last heartbeat (None before its first)."""
        if np.last_beat is None:
            return None
        return round(asyncio.get_running_loop().time() - np.last_beat, 3)

    def hang_of(self, np: NodeProcess, now: float) -> str | None:
        """Why ``np`` counts as hung at loop time ``now`` (the rule above), or None."""
        timeout = self.runner.graph.nodes[np.name].hang_timeout
        quiet = now - (np.last_beat if np.last_beat is not None else np.spawned_at)
        # in setup: before the node says READY (a beat's "setup" may be older than that: a node frozen
        # right after it started beats no more, and must not get the start timeout's grace for it)
        starting = np.state == NULL and (np.last_beat is None or np.in_setup)
        if quiet > (max(timeout, self.runner.start_timeout) if starting else timeout):
            return f"no heartbeat for {quiet:.1f}s (its process is frozen)"
        # a beat sent in setup measured the setup as the loop's age: the node said READY since, and
        # the beat after it (within a beat period) says how its loop turns
        if not starting and not np.in_setup and np.loop_age_s > timeout:
            return f"its loop has not turned for {np.loop_age_s:.1f}s (stuck in node code)"
        return None

    async def watch(self) -> None:
        """The watchdog: every node of the running graph is looked at several times per hang timeout."""
        runner = self.runner
        period = min([0.5] + [runner.graph.nodes[n].hang_timeout / 4 for n in runner.local])
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            if runner.stopping:
                return
            now = loop.time()
            for np in list(runner.procs.values()):
                if np.hung or np.expected_exit or np.proc is None or np.exited.done():
                    continue
                try:
                    why = self.hang_of(np, now)
                except Exception as exc:  # noqa: BLE001 - the watchdog must outlive a bad beat
                    runner.bus.post("WARNING", node=np.name, text=f"heartbeat check failed: {exc}")
                    continue
                if why is not None:
                    self._kill_hung(np, why)

    def _kill_hung(self, np: NodeProcess, why: str) -> None:
        np.hung = why
        spec = self.runner.graph.nodes[np.name]
        self.runner.bus.post("ERROR", node=np.name, pid=np.pid,
                             text=f"node '{np.name}' ({spec.type}, pid {np.pid}) not responding: {why}; killing it")
        assert np.proc is not None  # watch() looks only at nodes with a process
        try:
            os.killpg(np.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # --- exits and restarts --------------------------------------------------------------------
    def on_exit(self, np: NodeProcess) -> None:
        runner = self.runner
        runner.by_identity.pop(np.identity, None)
        runner.by_identity.pop(np.beat_identity, None)
        if np.expected_exit or runner.stopping:
            return
        assert np.proc is not None  # called when the process it spawned has exited
        rc = np.proc.returncode
        spec = runner.graph.nodes[np.name]
        if not np.hung:  # a hung node was reported when it was killed
            text = f"node '{np.name}' ({spec.type}, pid {np.pid}) {exit_cause(rc)}"
            if np.last_error:
                text += f": {np.last_error}"
            runner.bus.post("ERROR", node=np.name, pid=np.pid, text=text, returncode=rc)
        restart = spec.restart == "always" or (spec.restart == "on-failure" and (rc != 0 or np.hung))
        if restart and self.budgets[np.name].take():
            self.schedule_restart(np)
            return
        why = f"restart policy '{spec.restart}'" if not restart else f"{spec.max_restarts} restarts within 60s"
        runner.bus.post("ERROR", node=np.name, text=f"node '{np.name}' is not restarted ({why}); stopping the graph")
        runner.exit_code = 1
        asyncio.ensure_future(runner.stop_async(drain=False))

    def schedule_restart(self, old: NodeProcess) -> None:
        name = old.name
        task = self.restarts[name] = asyncio.ensure_future(self._restart(old))
        task.add_done_callback(lambda t: self.restarts.pop(name) if self.restarts.get(name) is t else None)

    def cancel_restarts(self) -> None:
        """The graph stops: restarts still asleep have nothing to restart any more."""
        for task in list(self.restarts.values()):
            task.cancel()

    async def _restart(self, old: NodeProcess) -> None:
        """Start a new process for a node that died. A swap of the node, begun while this one
        waits, replaces the dead process itself: the restart then spawns nothing."""
        runner, name = self.runner, old.name
        try:
            await asyncio.sleep(min(2.0, 0.05 * 2 ** (self.budgets[name].used - 1)))
            if runner.stopping:
                return
            if runner.hotswap.is_swapping(name) or runner.procs.get(name) is not old:
                runner.bus.post("INFO", node=name, text=f"restart of '{name}' not needed: a swap replaces it")
                return
            new = runner.spawn(name, runner.new_instance(name))
            runner.procs[name] = new
            self.respawned.add(name)
            try:
                await runner.bring(new, READY)
                await runner.latency.update(runner)  # latency query: the new process is told
                await runner.bring(new, runner.state)
                await runner.relink_upstream(name, new.instance)
            except (RuntimeError, TimeoutError, ControlError) as exc:
                runner.bus.post("WARNING", node=name, text=f"restart of '{name}' did not complete: {exc}")
                return
            runner.bus.post("NODE_RESTARTED", node=name, pid=new.pid, restarts=self.budgets[name].used)
        finally:
            self.respawned.discard(name)

    async def settle_restart(self, name: str, timeout: float) -> None:
        """Before a swap: a restart still asleep is called off (the swap replaces the dead
        process); one already bringing its process up is waited for (the swap replaces that one)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            task = self.restarts.get(name)
            if task is None or task.done():
                return
            if name not in self.respawned:
                task.cancel()
                self.restarts.pop(name, None)
                return
            left = deadline - loop.time()
            try:  # its process may die again, and the next restart be pending: look again
                await asyncio.wait_for(asyncio.shield(task), max(left, 0.0))
            except asyncio.TimeoutError:
                raise ControlError(f"node '{name}' is being restarted; try the swap again later") from None

    def pending(self, name: str) -> bool:
        return name in self.restarts
