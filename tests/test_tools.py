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


def test_bench_nodes_shows_compiled_and_reference_side_by_side() -> None:
    """Section (a) runs once per path, each in its own process, and prints both lines per node."""
    done = subprocess.run([sys.executable, str(TOOLS[0].parent / "bench_nodes.py"), "--skip", "wire", "error", "phonemes",
                           "--nodes", "mapper", "compressor", "--sessions", "1", "3", "--repeat", "1", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    compressor = next(i for i, line in enumerate(lines) if line.startswith("compressor"))
    assert " compiled " in lines[compressor]
    assert " reference " in lines[compressor + 1] and "reference / compiled:" in lines[compressor + 1]
    assert sum(line.startswith("mapper") for line in lines) == 2  # its two profiles
