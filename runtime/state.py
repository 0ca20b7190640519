"""Where a graph keeps what must outlive a node process: its nodes' live params.

Live params are a node's state: the emotion set on a blender, a lod node's per-session levels
asked for by viewers, a compressor's precision set by an operator. The runner records every
change (from ``set_params``, or made by the node itself and announced with ``Node.keep``) in a
store, and starts every process, a restarted or swapped one included, with the params in it.

- ``memory`` (default): a dict in the runner. Survives node restarts and hot-swaps.
- ``redis://host:port/db``: a Redis hash per graph (``avatar:<graph>:params``, one JSON field
  per node). Survives the runner too: a graph started again picks up where it was.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Protocol
from urllib.parse import urlparse


class StateError(ValueError):
    """The state store named in a graph cannot be used; the message says which and why."""


class StateStore(Protocol):
    url: str

    def load(self) -> dict[str, dict[str, Any]]:
        """Every node's saved params: {node: {param: value}}."""
        ...

    def save(self, node: str, params: Mapping[str, Any], replace: bool = False) -> None:
        """Merge these params into the node's saved ones (``replace``: they are all of them now)."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    url = "memory"

    def __init__(self) -> None:
        self._params: dict[str, dict[str, Any]] = {}

    def load(self) -> dict[str, dict[str, Any]]:
        return {n: dict(p) for n, p in self._params.items()}

    def save(self, node: str, params: Mapping[str, Any], replace: bool = False) -> None:
        if replace:
            self._params[node] = {}
        self._params.setdefault(node, {}).update(params)

    def close(self) -> None:
        pass


class RedisStore:
    """One hash per graph; values are JSON (params are plain YAML-able data)."""

    def __init__(self, url: str, graph: str, timeout: float = 2.0):
        import redis

        self.url, self.key = url, f"avatar:{graph}:params"
        try:
            self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            self.client.ping()
        except (redis.RedisError, ValueError) as exc:
            raise StateError(f"state store {url}: {exc}") from None

    def load(self) -> dict[str, dict[str, Any]]:
        out = {}
        for node, raw in self.client.hgetall(self.key).items():
            try:
                params = json.loads(raw)
            except ValueError:
                continue  # not ours to interpret; the YAML params stand
            if isinstance(params, dict):
                out[node.decode() if isinstance(node, bytes) else node] = params
        return out

    def save(self, node: str, params: Mapping[str, Any], replace: bool = False) -> None:
        old = None if replace else self.client.hget(self.key, node)
        merged = json.loads(old) if old else {}
        merged.update(params)
        self.client.hset(self.key, node, json.dumps(merged))

    def close(self) -> None:
        self.client.close()


def check_state_url(url: Any) -> str | None:
    """The problem with a graph's ``state:`` value, or None when it is usable."""
    if url is None or url == "memory":
        return None
    if not isinstance(url, str):
        return f"state must be 'memory' or a redis:// URL, got {url!r}"
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss", "unix") or not (parsed.hostname or parsed.path):
        return f"state must be 'memory' or a redis:// URL (redis://host:port/db), got '{url}'"
    return None


def open_store(url: str | None, graph: str) -> StateStore:
    problem = check_state_url(url)
    if problem:
        raise StateError(problem)
    if url is None or url == "memory":
        return MemoryStore()
    return RedisStore(url, graph)
