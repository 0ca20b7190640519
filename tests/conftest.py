"""Shared fixtures: graph files, background `avatar run` processes, runners stopped after each test."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.helpers import AvatarProcess


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
