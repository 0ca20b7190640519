"""Every command-line tool under tools/ starts: its imports resolve and ``--help`` exits 0.

The tools run only by hand (benchmarks, load generators), so nothing else would notice one that
no longer imports after a refactor.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = sorted(p for p in (Path(__file__).resolve().parents[1] / "tools").glob("*.py")
               if "__main__" in p.read_text())


def test_the_tools_are_found() -> None:
    assert {"bench_chain.py", "bench_sessions.py", "stress.py", "soak.py", "simulator.py"} <= {p.name for p in TOOLS}


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_tool_starts(tool: Path) -> None:
    done = subprocess.run([sys.executable, str(tool), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{tool.name} --help failed:\n{done.stderr[-2000:]}"
    assert "usage" in done.stdout.lower()
