"""Test helpers: the avatar CLI as a real subprocess, process and socket checks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pids, timeout: float = 5.0) -> list[int]:
    """The pids still alive after ``timeout`` seconds (empty when all exited)."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


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
