"""The compiled hot paths: built here (make builds them, CI runs them), and a machine without them
still works, on the pure-Python reference code, saying so once per process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nodes.compiled as compiled

ROOT = Path(__file__).resolve().parents[1]

# a process where one extension cannot be imported (as on a machine without a compiler): it
# encodes and decodes the recorded capture, and prints what it made
_WITHOUT = """
import sys
sys.modules[{missing!r}] = None  # import of it fails with ImportError, as when it was never built
import numpy as np
from nodes import wire as wf
from nodes.livelink import SAMPLE_CAPTURE, parse_packet, read_container
frames = [parse_packet(p) for p in read_container(SAMPLE_CAPTURE)]
enc, dec = wf.Encoder(), wf.Decoder()
out = []
for i, f in enumerate(frames):
    packet = enc.encode(["phone"], np.clip(f.weights, 0, 1)[None], 10**12 + i * 16_666_667, wf.TABLE_ARKIT52)[0]
    out.append(dec.decode(packet).weights)
print(enc.compiled, type(dec).__name__, np.asarray(out).sum())
"""


def test_every_compiled_module_is_built_and_in_use(monkeypatch) -> None:
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    assert compiled.status() == dict.fromkeys(compiled.MODULES, "compiled")


def test_without_an_extension_the_reference_runs_and_says_so() -> None:
    results = {}
    for missing in ("nodes.wire._encoder", "nodes.wire._decoder", None):
        code = _WITHOUT.format(missing=missing or "nothing.missing")
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        results[missing] = done.stdout.split()
        warned = [line for line in done.stderr.splitlines() if "hot paths: pure-Python reference code" in line]
        if missing:
            assert len(warned) == 1 and missing in warned[0], done.stderr  # one line per process, naming it
        else:
            assert not warned, done.stderr
    assert results["nodes.wire._encoder"][0] == "False" and results["nodes.wire._decoder"][1] == "Decoder"
    assert results[None][:2] == ["True", "CompiledDecoder"]
    assert len({r[2] for r in results.values()}) == 1  # the same decoded values on every path


def test_avatar_pure_python_runs_the_reference_everywhere() -> None:
    code = "import nodes.compiled as c, nodes.wire as wf; print(c.status()); print(wf.Encoder().compiled)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), compiled.PURE_ENV: "1"})
    assert done.returncode == 0, done.stderr
    status, enc = done.stdout.splitlines()
    assert status.count("AVATAR_PURE_PYTHON") == len(compiled.MODULES) and enc == "False"
