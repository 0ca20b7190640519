"""One node's OS process as the runner sees it: spawn, exit watching, states, stop with escalation."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from typing import Callable

from .protocol import SpawnSpec, beat_identity
from .states import NULL

_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class NodeProcess:
    """A running instance of a node. A restart or swap makes a new instance (new sockets, new pid)."""

    def __init__(self, spec: SpawnSpec):
        self.name, self.instance, self.spec = spec.name, spec.instance, spec
        self.identity = spec.identity
        self.beat_identity = beat_identity(self.identity)
        self.state = NULL
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_exit = False
        self.eos = False
        self.last_error: str | None = None
        # heartbeats (runtime.supervisor): loop time of the last beat (None: none yet), and what it said
        self.spawned_at = 0.0
        self.last_beat: float | None = None
        self.loop_age_s = 0.0  # how long its main loop had not turned, as the beat saw it
        self.in_setup = True
        self.hung: str | None = None  # why the watchdog killed it
        # the exit code once it has exited; made by spawn(), which the runner calls right after this
        self.exited: asyncio.Future[int]
        self.state_waiters: list[tuple[str, asyncio.Future]] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def spawn(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[["NodeProcess"], None]) -> None:
        """Start the process in its own process group and watch for its exit."""
        exited = self.exited = loop.create_future()
        self.spawned_at = loop.time()
        env = dict(os.environ)
        for var in _ONE_THREAD:  # one process per node already: BLAS threads would only fight
            env.setdefault(var, "1")
        proc = self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.worker", self.spec.to_wire()],
            stdin=subprocess.DEVNULL, process_group=0, env=env,
        )

        def done() -> None:
            if not exited.done():
                exited.set_result(proc.returncode)
                on_exit(self)

        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            def wait() -> None:
                proc.wait()
                loop.call_soon_threadsafe(done)

            threading.Thread(target=wait, daemon=True, name=f"wait-{self.name}").start()
            return

        def readable() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            proc.wait()
            done()

        loop.add_reader(fd, readable)

    def set_state(self, state: str) -> None:
        self.state = state
        for target, fut in list(self.state_waiters):
            if target == state and not fut.done():
                fut.set_result(state)
                self.state_waiters.remove((target, fut))

    async def wait_state(self, state: str, timeout: float) -> None:
        if self.state == state:
            return
        fut = asyncio.get_running_loop().create_future()
        self.state_waiters.append((state, fut))
        waiters = [fut, self.exited]
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if fut not in done:
            fut.cancel()
            if self.exited.done():
                raise RuntimeError(f"node '{self.name}' exited before {state}: {self.last_error or 'see its log'}")
            raise TimeoutError(f"node '{self.name}' did not reach {state} within {timeout}s")

    async def kill(self, grace: float = 3.0) -> None:
        """After a stop request: wait, then SIGTERM, then SIGKILL its process group."""
        self.expected_exit = True
        for sig, wait in ((None, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if sig is not None:
                assert self.proc is not None  # kill() follows spawn()
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), wait)
                return
            except asyncio.TimeoutError:
                continue
