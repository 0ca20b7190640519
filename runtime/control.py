"""The local control channel: the CLI (or any process) steers a running graph through it.

The runner binds a ROUTER at ``ipc://@avatar-ctl/<graph name>``; a client sends one msgpack
request ``{"op": ..., ...}`` and gets ``{"ok": bool, "result" | "error"}`` back.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from .errors import ControlError, ParamRefused

if TYPE_CHECKING:
    from .runner import Runner


def control_endpoint(graph_name: str) -> str:
    return f"ipc://@avatar-ctl/{graph_name}"


async def serve_control(runner: "Runner", sock: Any) -> None:
    """Answer client requests; each runs as its own task so a slow swap blocks nothing else."""
    try:
        while True:
            frames = await sock.recv_multipart()
            asyncio.ensure_future(_answer(runner, sock, frames))
    finally:
        sock.close(0)


async def _answer(runner: "Runner", sock: Any, frames: list[bytes]) -> None:
    ident, raw = frames[0], frames[-1]
    try:
        req = msgpack.unpackb(raw, raw=False)
        if not isinstance(req, dict):
            raise ControlError("a request is a msgpack map with an 'op'")
        result = await _dispatch(runner, req)
        reply = {"ok": True, "result": result}
    except (ControlError, KeyError, TypeError, ValueError) as exc:
        reply = {"ok": False, "error": str(exc) if not isinstance(exc, KeyError) else f"missing field {exc}"}
        if isinstance(exc, ParamRefused):
            reply["refused"] = True
    except Exception as exc:  # noqa: BLE001 - the client gets every failure as a reply
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    await sock.send_multipart([ident, b"", msgpack.packb(reply, use_bin_type=True, default=str)])


async def _dispatch(runner: "Runner", req: dict[str, Any]) -> Any:
    op = req.get("op")
    if op == "stats":
        nodes = req.get("nodes")
        if nodes is not None and (type(nodes) is not list or not all(isinstance(n, str) for n in nodes)):
            raise ControlError("stats: 'nodes' must be a list of node names")
        return await runner.stats_async(nodes=nodes)
    if op == "params":
        return await runner.set_params_async(req["node"], req["params"], session=req.get("session"))
    if op == "unpin":
        return runner.unpin_now(req["node"], list(req.get("params") or ()))
    if op == "swap":
        return await runner.swap_async(req["node"], req.get("type"), req.get("params") or {}, req.get("timeout", 30.0))
    if op == "state":
        return await runner.set_state_async(req["state"])
    if op == "graph":
        return runner.graph_info()
    if op == "bus":
        return runner.bus.messages()[int(req.get("since", 0)):]
    if op == "stop":
        asyncio.ensure_future(runner.stop_async(bool(req.get("drain", True))))
        return "stopping"
    raise ControlError(f"unknown op '{op}' (ops: stats, params, unpin, swap, state, graph, bus, stop)")


class ControlClient:
    """Blocking client for a running graph's control channel."""

    def __init__(self, endpoint: str, timeout: float = 40.0):
        self.endpoint, self.timeout = endpoint, timeout

    def request(self, op: str, **fields: Any) -> Any:
        ctx: zmq.Context = zmq.Context.instance()
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))
        sock.setsockopt(zmq.SNDTIMEO, 2000)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no runner there: the send times out fast
        try:
            sock.connect(self.endpoint)
            try:
                sock.send(msgpack.packb({"op": op, **fields}, use_bin_type=True))
                reply = msgpack.unpackb(sock.recv(), raw=False)
            except zmq.Again:
                raise ControlError(f"no graph answered at {self.endpoint} (is it running?)") from None
        finally:
            sock.close(0)
        if not reply.get("ok"):
            raise (ParamRefused if reply.get("refused") else ControlError)(reply.get("error", "request failed"))
        return reply.get("result")
