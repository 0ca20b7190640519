"""The runner's bus: the stream of what happens in a graph, printed as JSON lines.

Types: STATE_CHANGED, ERROR (names the node and the cause), WARNING, EOS, QOS (drops),
LATENCY, NODE_RESTARTED, NODE_SWAPPED, SESSION_JOINED, SESSION_LEFT, LINK_DOWN, LINK_UP
(fields in docs/messages.md).
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Iterator


class Bus:
    """Thread-safe list of bus messages with subscribers and waiting."""

    def __init__(self, keep: int = 10000):
        self._messages: list[dict[str, Any]] = []
        self._keep = keep
        self._cond = threading.Condition()
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []

    def post(self, type_: str, **fields: Any) -> dict[str, Any]:
        msg = {"type": type_, "ts": round(time.time(), 6)}
        msg.update((k, v) for k, v in fields.items() if k not in msg)
        with self._cond:
            self._messages.append(msg)
            if len(self._messages) > self._keep:
                del self._messages[: len(self._messages) - self._keep]
            self._cond.notify_all()
            subscribers = list(self._subscribers)
        for fn in subscribers:
            fn(msg)
        return msg

    def subscribe(self, fn: Callable[[dict[str, Any]], None]) -> None:
        with self._cond:
            self._subscribers.append(fn)

    def messages(self, type_: str | None = None, **match: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [m for m in self._messages if _matches(m, type_, match)]

    def wait_for(self, type_: str, timeout: float = 10.0, after: int = 0, **match: Any) -> dict[str, Any]:
        """The first message of a type (and fields) at index >= ``after``; TimeoutError if none comes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self._messages[after:]:
                    if _matches(m, type_, match):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {type_} {match or ''} on the bus within {timeout}s")
                self._cond.wait(left)

    def __len__(self) -> int:
        with self._cond:
            return len(self._messages)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.messages())


def _matches(m: dict[str, Any], type_: str | None, match: dict[str, Any]) -> bool:
    return (type_ is None or m["type"] == type_) and all(m.get(k) == v for k, v in match.items())


def to_json_line(msg: dict[str, Any]) -> str:
    return json.dumps(msg, default=str, separators=(",", ":"))
