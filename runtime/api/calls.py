"""Calls into nodes' interfaces from the API's event loop: which nodes take a call, and making it.

Node calls (``Runner.call_async``) run on the runner's loop; the API awaits them through
``Runner.on_loop_async``, so a call that takes a while holds no thread of FastAPI's pool. A
refusal becomes 422 with the node's reason, as a refused param does.
"""
from __future__ import annotations

from typing import Any, Mapping

from fastapi import HTTPException

from ..errors import CallRefused, ControlError

CALL_TIMEOUT_S = 5.0


def control_http_error(exc: ControlError | TimeoutError) -> HTTPException:
    """A runner refusal as HTTP: unknown node 404, busy 409, graph gone 503, too slow 504, else 422."""
    if isinstance(exc, TimeoutError):
        return HTTPException(504, "the runner did not answer in time")
    text = str(exc)
    if text.startswith("no node '"):
        return HTTPException(404, text)
    if "already being swapped" in text or "is being restarted" in text:
        return HTTPException(409, text)
    if text == "the graph is not running" or "is not reachable" in text or "did not answer" in text:
        return HTTPException(503, text)
    return HTTPException(422, text)


async def on_runner(runner: Any, work: Any, timeout: float = CALL_TIMEOUT_S + 2) -> Any:
    """Await work on the runner's loop (``Runner.on_loop_async``); its failures as HTTP errors."""
    try:
        return await runner.on_loop_async(work, timeout)
    except (ControlError, TimeoutError) as exc:
        raise control_http_error(exc) from None


async def call_node(runner: Any, name: str, interface: str, args: Mapping[str, Any],
                    timeout: float = CALL_TIMEOUT_S) -> Any:
    """``Runner.call_async`` from the API's loop: the node's answer; 422 (its reason) when refused."""
    try:
        return await runner.on_loop_async(runner.call_async(name, interface, dict(args), timeout), timeout + 2)
    except CallRefused as exc:
        raise HTTPException(422, str(exc)) from None
    except (ControlError, TimeoutError) as exc:
        raise control_http_error(exc) from None


def _targets(runner: Any, interface: str, node: str | None) -> tuple[list[str], dict[str, str]]:
    """On the runner's loop: the nodes with ``interface`` (or ``node``), and every running node's type."""
    running = {name: runner.graph.nodes[name].type for name in runner.pids() if name in runner.graph.nodes}
    return runner.nodes_with(interface), running


async def nodes_for(runner: Any, interface: str, node: str | None, what: str) -> list[str]:
    """The nodes a request for ``interface`` goes to: ``node`` if given (404 if it does not run,
    422 if its type lacks the interface), else every node that has it (404 if none does).
    ``what`` names the interface's job for the messages ("says things")."""
    with_it, running = await on_runner(runner, lambda: _targets(runner, interface, node))
    if node is not None:
        if node not in running:
            raise HTTPException(404, f"no node '{node}' runs here (nodes: {', '.join(running)})")
        if node not in with_it:
            raise HTTPException(422, f"node '{node}' is a {running[node]}, whose type does not declare the "
                                     f"'{interface}' interface")
        return [node]
    if not with_it:
        raise HTTPException(404, f"no node that {what} (one whose type declares the '{interface}' interface) "
                                 "runs in this graph")
    return with_it
