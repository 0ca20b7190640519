"""docs/voice.md stays true: its graph loads and validates, its Python client compiles."""
from __future__ import annotations

import re
from pathlib import Path

from runtime import parse_graph, validate_graph

DOC = (Path(__file__).resolve().parents[1] / "docs" / "voice.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S)


def test_the_graph_in_voice_md_is_valid():
    (graph,) = blocks("yaml")
    types = validate_graph(parse_graph(graph, "docs/voice.md"))
    assert types["voice"].interfaces == {"speak"} and types["tts"].interfaces == {"say"}


def test_the_python_client_in_voice_md_compiles():
    (client,) = blocks("python")
    compile(client, "docs/voice.md", "exec")
    assert "websockets.sync.client" in client and '"type": "end"' in client
