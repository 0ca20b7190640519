"""Test helpers: the avatar CLI as a real subprocess, process and socket checks."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               what: str | Callable[[], str] = "the condition") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    The one place the tests wait by polling: a test waits for the condition it needs (a stats
    counter reached, a file holding N records, a socket that answers), never for a fixed time.
    After ``timeout`` seconds an AssertionError names ``what`` was awaited (a callable ``what`` is
    called then, so the message can show the state the test gave up in)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def paced(rate_hz: float, stop: Callable[[], bool] = lambda: False) -> Iterator[int]:
    """Yield 0, 1, 2, ... at ``rate_hz``, tick i at ``start + i / rate_hz`` (until ``stop()``).

    For a sender whose pacing is the behaviour under test (a phone at 60 Hz): the ticks keep to
    their deadlines, so a late one does not push the rest back as a sleep after each send would."""
    start = time.monotonic()
    i = 0
    while not stop():
        yield i
        i += 1
        delay = start + i / rate_hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def wait_gone(pids, timeout: float = 5.0) -> list[int]:
    """The pids still alive after ``timeout`` seconds (empty when all exited)."""
    left = [p for p in pids if alive(p)]
    try:
        wait_until(lambda: not [p for p in left if alive(p)], timeout, 0.05, "the processes to exit")
    except AssertionError:
        pass
    return [p for p in left if alive(p)]


def abstract_sockets(run_id: str) -> list[str]:
    """This run's abstract-namespace unix sockets still open anywhere on the machine."""
    with open("/proc/net/unix") as f:
        return [line.split()[-1] for line in f if f"@avatar-{run_id}" in line]


def avatar(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the avatar CLI to completion."""
    return subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


class AvatarProcess:
    """``avatar run`` as a background process whose bus (JSON lines on stdout) we can read."""

    def __init__(self, *args: str, prefix: list[str] | tuple[str, ...] = ()):
        """``prefix``: a command that runs it somewhere else, e.g. ``NetNS.prefix``."""
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "runtime.cli", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     process_group=0)
        self.bus: list[dict] = []

    def wait_for(self, pred: Callable[[dict], bool], timeout: float = 30.0) -> dict:
        for msg in self.bus:
            if pred(msg):
                return msg
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"avatar exited ({self.proc.wait()}): {self.proc.stderr.read()}")
            msg = json.loads(line)
            self.bus.append(msg)
            if pred(msg):
                return msg
        raise TimeoutError("bus message not seen")

    def wait_playing(self) -> dict:
        return self.wait_for(lambda m: m["type"] == "STATE_CHANGED" and m["node"] is None and m["new"] == "PLAYING")

    def finish(self, timeout: float = 30.0) -> int:
        out, err = self.proc.communicate(timeout=timeout)
        self.bus += [json.loads(line) for line in out.splitlines() if line.strip()]
        self.stderr = err
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


# The graph the control API tests (test_api.py, test_fuzz.py) run: a chain to set params on and
# swap, and a blender for /emotion.
API_TEST_GRAPH = """
name: {name}
nodes:
  src: {{type: testsrc, params: {{rate: 100}}}}
  mid: {{type: identity}}
  sink: {{type: fakesink}}
  face: {{type: blender, params: {{sessions: [a], micro_per_min: 0}}}}
  facesink: {{type: fakesink}}
links:
  - src -> mid -> sink
  - face.out -> facesink.in
"""


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_and_wait_restart(runner, node: str, timeout: float = 10.0) -> None:
    """SIGKILL ``node``'s process and wait until its restarted process is PLAYING."""
    old = runner.pids()[node]
    os.kill(old, signal.SIGKILL)
    assert wait_gone([old]) == []
    wait_until(lambda: runner.pids().get(node) not in (None, old) and
               runner.stats()["nodes"][node]["state"] == "PLAYING", timeout, what=f"'{node}' restarted and PLAYING")
