"""Waiting on a condition, for the tools that drive real graphs (never a fixed sleep)."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait(pred: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.02) -> Any:
    """Poll ``pred`` until it is truthy and return its value; TimeoutError naming ``what`` after
    ``timeout`` seconds (``what`` may be a function: the message is made only then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)
