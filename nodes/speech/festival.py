"""Festival: speech with phoneme times from one long-lived ``festival --pipe`` process.

``Festival`` starts the program once (loading it and its voice takes about a second) and
drives its Scheme REPL on stdin for every sentence: it synthesises the utterance, saves its
segments (``utt.save.segs``: each phone's end time) and its waveform (``utt.save.wave ...
'riff``) to a private temporary folder, and prints a marker line that this side waits for.
Every request is wrapped in ``unwind-protect``, so a Scheme error prints an error marker
instead (what festival wrote before it, on stdout or stderr, is the error's text). A process
that dies or does not answer within ``timeout`` is killed and started again, once per request.

Text goes to festival only inside a Scheme string literal: ``scheme_string`` escapes the only
two characters festival's reader treats specially in one (backslash and double quote), so no
text can end the string and be evaluated. Festival reads bytes, not Unicode: ``festival_text``
folds the text to printable ASCII first (accents dropped, typographic quotes and dashes made
plain). Voice names are checked against the voices festival lists (``(voice.list)``) and
against a plain-identifier pattern before they are put in a command.

Festival's phones (the ``radio`` phone set of its US English voices: ``pau``, ``hh``, ``ax``,
...) become ARPAbet through ``graphs/mappings/festival_arpabet.yaml``, with the same rules as
espeak's table (``events_to_phones``). The waveform, at the voice's own rate (48 kHz for the
HTS voices), is resampled to 16 kHz.
"""
from __future__ import annotations

import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import time
import unicodedata
import weakref
from pathlib import Path

import numpy as np

from .espeak import arpabet_table, events_to_phones
from .pcm import RATE, Resampler, to_int16
from .wav import WavReader

FESTIVAL_MAPPING = "mappings/festival_arpabet.yaml"
FESTIVAL_VOICE = "cmu_us_slt_arctic_hts"  # Debian's festvox-us-slt-hts
FESTIVAL_PACKAGES = "festival festvox-us-slt-hts"
_VOICE_NAME = re.compile(r"[A-Za-z0-9_]{1,100}")
_SAID_LINES = 12  # lines of festival's output kept for an error message
# typographic characters NFKD leaves alone, as festival's English tokenizer knows them
_PLAIN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
                        "\u00ab": '"', "\u00bb": '"', "\u2013": "-", "\u2014": " - ", "\u2212": "-",
                        "\u2026": "...", "\u00a0": " "})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class FestivalError(RuntimeError):
    """Festival cannot speak: it is not installed, has no such voice, failed, hung or died."""


def festival_text(text: str) -> str:
    """``text`` as festival can read it: printable ASCII, accents dropped, control characters
    (line breaks included) made spaces."""
    folded = unicodedata.normalize("NFKD", text.translate(_PLAIN)).encode("ascii", "ignore").decode("ascii")
    return _CONTROL.sub(" ", folded)


def scheme_string(text: str) -> str:
    """A Scheme string literal that festival's reader reads back as exactly ``text`` (ASCII):
    inside a string only a backslash (escape) and a double quote (the end) are special."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_segments(text: str) -> list[tuple[str, float]]:
    """(phone, end s) from a file ``utt.save.segs`` wrote: a ``#`` line, then ``END 100 NAME``."""
    out: list[tuple[str, float]] = []
    body = text.split("#", 1)[1] if text.lstrip().startswith("#") else text
    for line in body.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[2], float(parts[0])))
    return out


def segments_to_phones(segments: list[tuple[str, float]], n_samples: int, rate: int,
                       table: dict[str, list[str]], unknown: set[str] | None = None) -> list[tuple[str, float, float]]:
    """(ARPAbet, start s, end s) from festival's segments (each phone's end time), on an audio of
    ``n_samples`` at ``rate``: each phone starts where the one before it ended, and the rules of
    ``events_to_phones`` apply (a table, silence at the edges, unknown phones into ``unknown``).
    Raises FestivalError if the times go backwards or end well past the audio."""
    events, start = [], 0.0
    for name, end in segments:
        if end < start - 1e-6:
            raise FestivalError(f"festival's segment '{name}' ends at {end:.4f} s, before it starts ({start:.4f} s)")
        events.append((int(round(start * rate)), name))
        start = end
    audio_s = n_samples / rate
    if segments and start > audio_s + 0.05:
        raise FestivalError(f"festival's segments end at {start:.3f} s, past the end of its audio ({audio_s:.3f} s)")
    return events_to_phones(events, n_samples, rate, table, unknown)


class Festival:
    """One ``festival --pipe`` process speaking with one voice (not thread-safe: one caller at a time).

    Raises FestivalError when festival is not installed, the voice is not one it has (the
    message lists those it has), or it fails to start within ``timeout``.
    """

    def __init__(self, voice: str = FESTIVAL_VOICE, *, program: str = "festival", timeout: float = 30.0):
        self.voice, self.program, self.timeout = voice, program, timeout
        self.dir = Path(tempfile.mkdtemp(prefix="avatar-festival-"))  # 0700: ours alone
        self.proc: subprocess.Popen[bytes] | None = None
        self.voices: list[str] = []
        self.rate: int | None = None  # the voice's own sample rate, known after the first sentence
        self.starts = self.restarts = 0
        self._nonce = secrets.token_hex(8)  # markers no text or voice can print by chance or on purpose
        self._n = 0
        self._buf = b""
        self._stretch = 1.0
        self.closed = False
        self._cleanup = weakref.finalize(self, _cleanup, self.dir, [None])
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    # --- the process -------------------------------------------------------------------------
    def start(self) -> None:
        """(Re)start festival, list its voices and select ours."""
        self._stop()
        if self.closed:
            raise FestivalError(f"festival ({self.voice}) was stopped")
        if shutil.which(self.program) is None:
            raise FestivalError(f"festival is not installed (no '{self.program}' program on PATH); "
                                f"install the Debian packages {FESTIVAL_PACKAGES}")
        self.proc = subprocess.Popen([self.program, "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
        self._cleanup.detach()
        self._cleanup = weakref.finalize(self, _cleanup, self.dir, [self.proc])
        self._buf, self._stretch = b"", 1.0
        self.starts += 1
        listed = self._request('(format t "%l\\n" (voice.list))', "list its voices")
        self.voices = sorted(set(re.findall(r"[A-Za-z0-9_]+", listed[-1] if listed else "")) - {"nil"})
        self._select(self.voice)

    def check_voice(self, voice: str) -> None:
        """FestivalError, listing the installed voices, unless festival has this one."""
        if not _VOICE_NAME.fullmatch(voice) or voice not in self.voices:
            installed = ", ".join(self.voices) or "none"
            raise FestivalError(f"festival has no voice '{voice}'; installed: {installed} "
                                f"(Debian's festvox-* packages add voices)")

    def _select(self, voice: str) -> None:
        """Make ``voice`` festival's voice (its own pace: a voice resets Duration_Stretch and its HTS params)."""
        self.check_voice(voice)
        self._request(f"(voice_{voice}) (set! avatar_hts_params "
                      f"(if (symbol-bound? 'hts_engine_params) hts_engine_params nil))", f"select voice '{voice}'")
        self.voice, self._stretch = voice, 1.0

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()  # type: ignore[union-attr]  # festival exits at the end of its input
                proc.wait(timeout=1.0)
            except (OSError, subprocess.TimeoutExpired):
                _kill(proc)
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass

    def kill(self) -> None:
        """Kill festival now (from any thread): a sentence in the making fails at once, nothing restarts it."""
        self.closed = True
        if self.proc is not None and self.proc.poll() is None:
            _kill(self.proc)

    def close(self) -> None:
        """Stop festival and remove the temporary folder (once no other thread uses it)."""
        self.closed = True
        self._stop()
        self._cleanup()

    def __enter__(self) -> "Festival":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # --- talking to it -----------------------------------------------------------------------
    def _request(self, forms: str, what: str, timeout: float | None = None) -> list[str]:
        """Evaluate ``forms``; return the lines festival printed meanwhile. FestivalError if it
        reports an error, dies, or does not answer within the timeout (then it is killed)."""
        proc = self.proc
        if proc is None:
            raise _Died(f"festival ({self.voice}) is not running")
        if proc.poll() is not None:  # it exited already (at start, say): what it printed says why
            self._drain(proc)
            raise _Died(self._died(proc, what, []))
        self._n += 1
        marker = f"avatar-{self._nonce}-{self._n}"
        command = (f'(unwind-protect (begin {forms} (format t "\\n{marker} ok\\n")) '
                   f'(format t "\\n{marker} error\\n"))\n(fflush nil)\n')
        lines: list[str] = []  # what festival prints while it answers (an error's text)
        try:
            proc.stdin.write(command.encode("ascii"))  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        except (OSError, ValueError):  # a broken pipe; a closed file (killed meanwhile)
            raise _Died(self._died(proc, what, lines)) from None
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                line = raw.decode("latin-1").rstrip("\r")
                if line == f"{marker} ok":
                    return lines
                if line == f"{marker} error":
                    raise FestivalError(f"festival ({self.voice}) failed to {what}: {self._said_text(lines)}")
                if line.strip():
                    lines.append(line)
            left = deadline - time.monotonic()
            if left <= 0:
                _kill(proc)
                raise _Died(f"festival ({self.voice}) did not {what} within {limit:g} s "
                            f"(killed); it said: {self._said_text(lines)}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise _Died(self._died(proc, what, lines))
                self._buf += chunk

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        """What an exited festival left in its pipe, into the buffer (for the error)."""
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self._buf += chunk

    @staticmethod
    def _said_text(lines: list[str]) -> str:
        """What festival printed while answering this request (its last lines), for an error."""
        return " | ".join(lines[-_SAID_LINES:]) if lines else "nothing"

    def _died(self, proc: subprocess.Popen[bytes], what: str, lines: list[str]) -> str:
        try:
            code = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            _kill(proc)
            code = proc.returncode
        tail = self._buf.decode("latin-1").strip()
        return (f"festival ({self.voice}) exited with code {code} while asked to {what}; "
                f"it said: {self._said_text(lines + ([tail] if tail else []))}")

    # --- speaking ----------------------------------------------------------------------------
    def synthesize(self, text: str, stretch: float = 1.0, voice: str | None = None
                   ) -> tuple[np.ndarray, int, list[tuple[str, float]]]:
        """Speech for ``text`` at the voice's rate (float32 on the int16 scale), that rate, and
        festival's segments as (phone, end s). ``stretch`` > 1 speaks slower (Duration_Stretch,
        and the HTS engine's speed 1/stretch); ``voice``: another installed voice from now on. A
        festival that died or hung is started again and asked once more; FestivalError if that
        fails too."""
        try:
            if voice is not None and voice != self.voice:
                self._select(voice)
            return self._synthesize(text, stretch)
        except _Died:
            if self.closed:
                raise
            self.restarts += 1
            if voice is not None:
                self.voice = voice
            self.start()
            return self._synthesize(text, stretch)

    def _synthesize(self, text: str, stretch: float) -> tuple[np.ndarray, int, list[tuple[str, float]]]:
        segs, wav = self.dir / "segs", self.dir / "wave.wav"
        for f in (segs, wav):
            f.unlink(missing_ok=True)
        forms = []
        if abs(stretch - self._stretch) > 1e-9:
            forms.append(f"(Parameter.set 'Duration_Stretch {stretch:.4f}) (if avatar_hts_params (set! hts_engine_params "
                         f"(cons (list \"-r\" {1.0 / stretch:.4f}) avatar_hts_params)))")
        forms.append(f"(let ((utt (utt.synth (Utterance Text {scheme_string(festival_text(text))})))) "
                     f"(utt.save.segs utt {scheme_string(str(segs))}) "
                     f"(utt.save.wave utt {scheme_string(str(wav))} 'riff))")
        self._request(" ".join(forms), "speak")
        self._stretch = stretch
        try:
            reader = WavReader(wav)
        except (OSError, ValueError) as exc:
            raise FestivalError(f"festival ({self.voice}) wrote no readable waveform: {exc}") from None
        try:
            pcm = reader.read(reader.frames if reader.frames is not None else 1 << 30)
            self.rate = reader.rate
        finally:
            reader.close()
        try:
            segments = parse_segments(segs.read_text("latin-1"))
        except (OSError, ValueError) as exc:
            raise FestivalError(f"festival ({self.voice}) wrote no readable segments: {exc}") from None
        return pcm, reader.rate, segments

    def speak(self, text: str, wpm: int = 175, table: dict[str, list[str]] | None = None,
              unknown: set[str] | None = None, voice: str | None = None) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """16 kHz int16 speech for a text and its ARPAbet phones in seconds from the first sample,
        as ``nodes.speech.speak`` gives espeak's; ``wpm`` as espeak's (175 is the voice's own pace).
        Nothing (no samples, no phones) for a text with nothing to say in it."""
        pcm, rate, segments = self.synthesize(text, stretch=175.0 / wpm, voice=voice)
        phones = segments_to_phones(segments, len(pcm), rate, table or arpabet_table(FESTIVAL_MAPPING), unknown)
        if all(ph == "sil" for ph, _, _ in phones):  # nothing festival can say (punctuation, no ASCII letters)
            return np.zeros(0, np.int16), []
        rs = Resampler(rate, RATE)
        audio = to_int16(np.concatenate([rs.process(pcm), rs.flush()]))
        return audio, phones


class _Died(FestivalError):
    """The process is gone or was killed: starting it again may help."""


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill festival (its own process group: start_new_session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        pass


def _cleanup(folder: Path, procs: list[subprocess.Popen[bytes] | None]) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            _kill(proc)
    shutil.rmtree(folder, ignore_errors=True)
