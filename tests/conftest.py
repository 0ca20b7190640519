"""Shared fixtures: graph files, background `avatar run` processes, runners stopped after each test."""
from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.helpers import AvatarProcess, wait_until

pytest_plugins = ["tests.browser"]  # the browser tests' fixtures: netns, browser, page, graph (a module's own wins)


@pytest.fixture
def graph_file(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "g.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


@pytest.fixture
def avatar_run() -> Iterator[Callable[..., AvatarProcess]]:
    started: list[AvatarProcess] = []

    def start(*args: str, prefix: list[str] | tuple[str, ...] = ()) -> AvatarProcess:
        p = AvatarProcess(*args, prefix=prefix)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


@pytest.fixture
def runners():
    """Collects Runners a test starts and stops them all, pass or fail."""
    started = []
    yield started
    for r in started:
        r.stop(drain=False)


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server of this test's own, on a free loopback port; its redis:// URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (make test installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def answers() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(answers, 10, 0.05, "redis-server to accept connections")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
