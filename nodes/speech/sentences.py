"""Text cut into sentences, so a long text starts speaking before all of it is synthesised.

The rule is simple on purpose: a sentence ends after ``.``, ``!``, ``?`` or ``;`` (with any
closing quotes or brackets) followed by white space, and at every line break; a piece longer
than ``max_chars`` is cut at its last comma, else its last space, before the limit. Nothing is
lost: the pieces are the text with only white space taken away at their edges. An abbreviation
("Dr. Who") makes two sentences, which costs a short pause and nothing else.
"""
from __future__ import annotations

import re

_END = re.compile(r"[.!?;]+[\"'\u201d\u2019)\]\u00bb]*(?=\s)|\n")
MAX_SENTENCE_CHARS = 300


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """The sentences of ``text`` in order, stripped, none empty, none longer than ``max_chars``."""
    pieces: list[str] = []
    start = 0
    for m in _END.finditer(text):
        pieces += _cut(text[start:m.end()].strip(), max_chars)
        start = m.end()
    pieces += _cut(text[start:].strip(), max_chars)
    return [p for p in pieces if p]


def _cut(piece: str, max_chars: int) -> list[str]:
    out = []
    while len(piece) > max_chars:
        at = piece.rfind(", ", 0, max_chars)
        at = at + 1 if at > 0 else piece.rfind(" ", 0, max_chars + 1)
        if at <= 0:
            at = max_chars  # one word longer than the limit: cut it
        out.append(piece[:at].strip())
        piece = piece[at:].strip()
    out.append(piece)
    return out
