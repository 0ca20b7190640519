"""The graph and readers the voice API tests share: voice_in (and text_phoneme) into recorders."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from runtime import Message
from runtime.api import ApiConfig, ApiServer
from runtime.recording import read_records, record_message
from runtime.testing import start_graph

GRAPH = """
name: {name}
nodes:
  voice: {{type: voice_in, params: {{stall_timeout: 1.0}}}}
  tts: {{type: text_phoneme}}
  rec: {{type: recorder, params: {{path: "{dir}/audio.msgpack", flush_every: 1}}}}
  trec: {{type: recorder, params: {{path: "{dir}/text.msgpack", flush_every: 1}}}}
  prec: {{type: recorder, params: {{path: "{dir}/phonemes.msgpack", flush_every: 1}}}}
links:
  - {{from: voice.audio, to: rec.in, policy: block, size: 256}}
  - {{from: voice.text, to: trec.in, policy: block, size: 64}}
  - {{from: tts.phonemes, to: prec.in, policy: block, size: 64}}
"""


def voice_api_fixtures(name: str, secret: str, **api_config: Any) -> tuple:
    """The module fixtures of a test module of the voice API: ``folder`` (the recordings), ``runner``
    (GRAPH named ``name``), ``secret_file``, ``api`` (an ApiServer over it with ``api_config``) and
    ``rec``; assign them to those names at the module's top."""

    @pytest.fixture(scope="module", name="folder")
    def folder(tmp_path_factory: Any) -> Path:
        return tmp_path_factory.mktemp(name)

    @pytest.fixture(scope="module", name="runner")
    def runner(folder: Path) -> Iterator[Any]:
        r = start_graph(GRAPH.format(name=name, dir=folder))
        yield r
        r.stop(drain=False)

    @pytest.fixture(scope="module", name="secret_file")
    def secret_file(folder: Path) -> Path:
        path = folder / "secret"
        path.write_text(secret)
        return path

    @pytest.fixture(scope="module", name="api")
    def api(runner: Any, secret_file: Path) -> Iterator[ApiServer]:
        server = ApiServer(runner, ApiConfig(port=0, secret_file=str(secret_file), rate=1000, burst=1000,
                                             **api_config)).start()
        yield server
        server.stop()

    @pytest.fixture(scope="module", name="rec")
    def rec(folder: Path) -> "Recorded":
        return Recorded(folder)

    return folder, runner, secret_file, api, rec


class Recorded:
    """What the recorders of ``GRAPH`` hold for one session (re-read at each call: they flush every message)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _read(self, name: str, session: str) -> list[tuple[Message, int]]:
        path = self.folder / name
        if not path.exists():
            return []
        return [(record_message(r), r["t_ns"]) for r in read_records(path) if r.get("session") == [session]]

    def audio(self, session: str) -> list[Message]:
        return [m for m, _ in self._read("audio.msgpack", session)]

    def arrivals(self, session: str) -> list[tuple[int, int]]:
        """(pts, when the recorder got it) of each audio chunk, both on the pts clock."""
        return [(m.pts_ns, t) for m, t in self._read("audio.msgpack", session)]

    def texts(self, session: str) -> list[tuple[str, int]]:
        return [(m.data["text"][0], m.pts_ns) for m, _ in self._read("text.msgpack", session)]

    def phonemes(self, session: str) -> list[Message]:
        return [m for m, _ in self._read("phonemes.msgpack", session)]

    def samples(self, session: str) -> np.ndarray:
        msgs = self.audio(session)
        return np.concatenate([m.arrays["pcm"] for m in msgs]) if msgs else np.zeros(0, np.int16)

    def count(self, session: str) -> int:
        return len(self.samples(session))


def end_of(m: Message) -> int:
    return m.pts_ns + len(m.arrays["pcm"]) * 1_000_000_000 // m.data["rate"]


def assert_continuous(msgs: list[Message]) -> None:
    """pts advance by exactly the samples sent, counted from the first chunk."""
    rate, t0, n = msgs[0].data["rate"], msgs[0].pts_ns, 0
    for m in msgs:
        assert m.data["rate"] == rate
        assert m.pts_ns == t0 + n * 1_000_000_000 // rate, (n, m.pts_ns)
        n += len(m.arrays["pcm"])


def downmix(*channels: np.ndarray) -> np.ndarray:
    """What voice_in makes of int16 channels: their float mean, rounded."""
    mean = np.stack(channels, axis=1).astype(np.float32).mean(axis=1, dtype=np.float32)
    return np.clip(np.rint(mean), -32768, 32767).astype(np.int16)
