"""Per-client rate limiting: a token bucket per client, 429 with Retry-After when it is empty.

Every HTTP request and every WebSocket connection spends a token (a connection's messages do
not); a WebSocket over the limit is refused at the handshake (HTTP 403).

A client is the subject of its (valid) bearer token, or its IP address without one; a forged
token cannot buy a fresh bucket, because only verified subjects count.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Awaitable, Callable

from .auth import subject_or_none

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class TokenBuckets:
    """``rate`` tokens per second up to ``burst`` for each key; ``take`` spends one."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10000, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.max_keys, self.clock = float(rate), int(burst), max_keys, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Spend a token: 0.0 if there was one, else the seconds until there is."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return 0.0
        self._store(key, tokens, now)
        return (1.0 - tokens) / self.rate

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:  # forget clients whose bucket has refilled
            full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
            for k in full:
                del self._buckets[k]


class RateLimitMiddleware:
    """ASGI middleware: every HTTP request spends a token of its client's bucket."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets, secret: str | None):
        self.app, self.buckets, self.secret = app, buckets, secret

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        wait = self.buckets.take(client_key(scope, self.secret))
        if not wait:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # a connection is one request (its messages are not counted)
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "too many requests"})  # HTTP 403
            return
        retry = max(1, math.ceil(wait))
        body = json.dumps({"detail": f"too many requests: {self.buckets.rate:g} per second (bursts of "
                                     f"{self.buckets.burst}) per client; retry in {retry} s"}).encode()
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(retry).encode())]})
        await send({"type": "http.response.body", "body": body})


def client_key(scope: Scope, secret: str | None) -> str:
    """``sub:<subject>`` for a request with a valid token, else ``ip:<address>``."""
    auth = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            auth = value.decode("latin-1")
            break
    sub = subject_or_none(auth, secret)
    if sub is not None:
        return f"sub:{sub}"
    client = scope.get("client")
    return f"ip:{client[0] if client else 'unknown'}"
