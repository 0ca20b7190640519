"""A node process's heartbeat: a thread of its own that beats whatever the node's code is doing.

A beat that only the main loop sent would stop during a long but legitimate setup (loading a
model), so the thread beats on its own; and a thread that only said "alive" would hide a loop
stuck in ``process()``, so each beat carries how long the main loop has not turned and whether
it is still in setup. The runner judges from that (``runtime.supervisor``). The thread has its
own DEALER socket: ZeroMQ sockets are not thread-safe.
"""
from __future__ import annotations

import threading
from typing import Callable

import zmq

from . import protocol as op


class Heartbeat:
    """Beats every ``period`` seconds; ``progress()`` gives (seconds since the loop turned, in setup)."""

    def __init__(self, zctx: zmq.Context, endpoint: str, identity: bytes, period: float,
                 progress: Callable[[], tuple[float, bool]]):
        self.zctx, self.endpoint, self.identity, self.period, self.progress = zctx, endpoint, identity, period, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and close the socket (before the context is terminated)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def _run(self) -> None:
        sock = self.zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, op.beat_identity(self.identity))
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 4)  # a runner that reads nothing needs no backlog of beats
        sock.connect(self.endpoint)
        try:
            while True:
                loop_age, setup = self.progress()
                try:
                    sock.send(op.pack(op.BEAT, loop_age_s=round(loop_age, 3), setup=setup), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
                if self._stop.wait(self.period):
                    return
        finally:
            sock.close(0)
