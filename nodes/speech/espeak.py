"""espeak-ng through ctypes: speech with exact phoneme times, and its letter-to-sound rules.

libespeak-ng runs in synchronous mode with phoneme events: every ``espeakEVENT_PHONEME``
carries the sample at which that phoneme starts, so the phoneme times are exact on the audio's
own timeline (the benchmark uses them as ground truth). espeak's phoneme mnemonics become
ARPAbet through the table ``graphs/mappings/espeak_arpabet.yaml``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

import numpy as np

from ..face.tables import load_table
from .pcm import RATE, Resampler, to_int16

_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_STRESS = str.maketrans("", "", "',%=")
ESPEAK_MAPPING = "mappings/espeak_arpabet.yaml"


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class Espeak:
    """The process's libespeak-ng (a library with global state: one instance, calls under a lock)."""

    _instance: "Espeak | None" = None
    _create = threading.Lock()

    @classmethod
    def get(cls) -> "Espeak":
        """The shared instance; raises OSError when libespeak-ng is not installed."""
        with cls._create:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise OSError(f"libespeak-ng not found ({exc}); install the Debian package libespeak-ng1") from None
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        self.rate = lib.espeak_Initialize(_SYNCHRONOUS, 200, None, _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT)
        if self.rate <= 0:
            raise OSError("espeak_Initialize failed (is espeak-ng-data installed?)")
        self.lib = lib
        self.lock = threading.Lock()
        self._pcm: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._cb = _Callback(self._on_synth)  # kept referenced: the library calls it
        lib.espeak_SetSynthCallback(self._cb)
        self._voice = ""

    def _on_synth(self, wav: Any, n: int, events: Any) -> int:
        if n > 0:
            self._pcm.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self._events.append((events[i].sample, events[i].id.decode("ascii", "replace")))
            i += 1
        return 0

    def _voice_and_params(self, voice: str, wpm: int, pitch: int) -> None:
        if voice != self._voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice '{voice}' (espeak-ng --voices lists them)")
            self._voice = voice
        self.lib.espeak_SetParameter(_RATE, wpm, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)

    def check_voice(self, voice: str) -> None:
        """ValueError if espeak-ng has no voice of this name (it becomes the voice in use)."""
        with self.lock:
            self._voice_and_params(voice, 175, 50)

    def synthesize(self, text: str, voice: str = "en-us", wpm: int = 175, pitch: int = 50
                   ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Speech at ``self.rate`` (int16) and its phoneme events as (start sample, mnemonic)."""
        with self.lock:
            self._voice_and_params(voice, wpm, pitch)
            self._pcm, self._events = [], []
            data = text.encode("utf-8")
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed with code {err}")
            pcm = np.concatenate(self._pcm) if self._pcm else np.zeros(0, np.int16)
            return pcm, self._events

    def phonemes(self, text: str, voice: str = "en-us") -> list[str]:
        """espeak's phoneme mnemonics for a text, without stress marks (no audio made)."""
        with self.lock:
            self._voice_and_params(voice, 175, 50)
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            out: list[str] = []
            while ptr.value:
                res = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, ord(" ") << 8)
                out += (res or b"").decode("utf-8", "replace").translate(_STRESS).split()
            return out


def arpabet_table(path: str = ESPEAK_MAPPING) -> dict[str, list[str]]:
    """espeak mnemonic -> ARPAbet phones ([] for markers without a sound of their own)."""
    return {str(k): str(v).split() for k, v in load_table(path)["phonemes"].items()}


def events_to_phones(events: list[tuple[int, str]], n_samples: int, rate: int,
                     table: dict[str, list[str]], unknown: set[str] | None = None) -> list[tuple[str, float, float]]:
    """(ARPAbet, start s, end s) from espeak phoneme events; silence fills the edges.

    A mnemonic mapped to several phones shares its time evenly; a marker's time (or an unknown
    mnemonic's, which is added to ``unknown``) goes to the phone before it.
    """
    out: list[list] = []
    for i, (start, name) in enumerate(events):
        end = events[i + 1][0] if i + 1 < len(events) else n_samples
        if end <= start:
            continue
        phones = table.get(name)
        if phones is None and unknown is not None:
            unknown.add(name)
        if not phones:
            if out:
                out[-1][2] = end / rate
            continue
        step = (end - start) / len(phones)
        for j, ph in enumerate(phones):
            s, e = (start + j * step) / rate, (start + (j + 1) * step) / rate
            if ph == "sil" and out and out[-1][0] == "sil":
                out[-1][2] = e
            else:
                out.append([ph, s, e])
    if not out:
        return [("sil", 0.0, n_samples / rate)] if n_samples else []
    if out[0][1] > 0:
        if out[0][0] == "sil":
            out[0][1] = 0.0
        else:
            out.insert(0, ["sil", 0.0, out[0][1]])
    out[-1][2] = max(out[-1][2], n_samples / rate)
    return [(p, s, e) for p, s, e in out]


def espeak_g2p(word: str, voice: str = "en-us") -> list[str]:
    """ARPAbet pronunciation of a word by espeak-ng's rules (for words a dictionary lacks)."""
    table = arpabet_table()
    out: list[str] = []
    for m in Espeak.get().phonemes(word, voice):
        out += [p for p in table.get(m, []) if p != "sil"]
    return out


def speak(text: str, voice: str = "en-us", wpm: int = 175, pitch: int = 50, table: dict[str, list[str]] | None = None,
          unknown: set[str] | None = None) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """16 kHz int16 speech for a text and its ARPAbet phones in seconds from the first sample."""
    es = Espeak.get()
    pcm, events = es.synthesize(text, voice, wpm, pitch)
    phones = events_to_phones(events, len(pcm), es.rate, table or arpabet_table(), unknown)
    rs = Resampler(es.rate, RATE)
    audio = to_int16(np.concatenate([rs.process(pcm.astype(np.float32)), rs.flush()]))
    return audio, phones
