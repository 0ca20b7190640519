"""voice_in into the lip-sync chain (audio_phoneme with its transcript pad, viseme): the transcript
before the audio aligns the phones, and the empty text after it makes the recogniser hand out the
phones it held back, so the mouth closes at the end of the voice, not at the next utterance."""
from __future__ import annotations

import numpy as np

from nodes.speech import speak
from runtime.recording import read_recording
from runtime.testing import start_graph
from tests.helpers import wait_until
from tests.speech_data import wav_bytes

TEXT = "Hello world, this is the avatar speaking."


def test_an_utterance_is_aligned_to_its_transcript_and_finished_at_its_end(tmp_path, runners):
    runner = start_graph(f"""
name: voice_lipsync
nodes:
  voice: {{type: voice_in}}
  phones: {{type: audio_phoneme}}
  mouth: {{type: viseme, params: {{rate: 60}}}}
  prec: {{type: recorder, params: {{path: "{tmp_path}/phonemes.msgpack", flush_every: 1}}}}
  mrec: {{type: recorder, params: {{path: "{tmp_path}/mouth.msgpack"}}}}
links:
  - {{from: voice.audio, to: phones.in, policy: block, size: 64}}
  - {{from: voice.text, to: phones.text, policy: block, size: 8}}
  - {{from: phones, to: prec, policy: block, size: 64}}
  - {{from: phones, to: mouth, policy: block, size: 64}}
  - {{from: mouth, to: mrec, size: 8}}
""")
    runners.append(runner)
    audio, truth = speak(TEXT)
    body = wav_bytes(audio)
    call = lambda **args: runner.call("voice", "speak", args)  # noqa: E731 - what POST /speak does
    call(op="open", stream="u1", session="s", codec="wav", transcript=TEXT)
    for i in range(0, len(body), 65536):
        call(op="data", stream="u1", data=body[i:i + 65536])
    done = call(op="end", stream="u1")
    assert done["samples"] == len(audio)

    def phones() -> list[list]:
        path = tmp_path / "phonemes.msgpack"
        return [row for m in read_recording(path) for row in m.data["phonemes"]] if path.exists() else []

    def finished() -> bool:  # the last phone reaches the end of the voice: nothing is held back
        rows = phones()
        return bool(rows) and rows[-1][3] - rows[0][2] >= len(audio) / 16000 * 1e9 - 30e6
    wait_until(finished, 30, what=lambda: f"the recogniser to finish the utterance (have {len(phones())} phones)")
    stats = runner.stats()["nodes"]["phones"]["node"]
    assert stats["failed_alignments"] == 0
    said = [r[1] for r in phones() if r[1] != "sil"]
    expected = [p for p, _, _ in truth if p != "sil"]
    assert len(said) == len(expected) and said[2:6] == ["L", "OW", "W", "ER"]  # the transcript's phones, aligned
    assert runner.stats()["nodes"]["voice"]["node"]["streams_open"] == 0
    starts = np.array([r[2] for r in phones()])
    assert np.all(np.diff(starts) > 0)
