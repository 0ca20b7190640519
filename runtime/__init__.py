"""Avatar Engine's graph runtime: YAML graphs of node processes wired by ZeroMQ.

The public names load on first use (PEP 562): a node process imports ``runtime.worker`` and
what its node needs, not the runner, the graph validator and networkx (a third of its start-up).
"""
import importlib as _importlib
import typing as _typing

_WHERE = {
    "Bus": "bus", "ANY": "caps", "caps_compatible": "caps", "ControlClient": "control", "control_endpoint": "control",
    "CallRefused": "errors", "ControlError": "errors", "GraphError": "errors", "NodeTypeError": "errors",
    "ParamError": "errors", "ParamRefused": "errors", "Problem": "errors", "Graph": "graph", "LinkSpec": "graph",
    "NodeSpec": "graph", "load_graph": "graph", "parse_graph": "graph", "parse_launch": "launch", "Kind": "message",
    "MalformedMessage": "message", "Message": "message", "Node": "node", "NodeContext": "node", "Pad": "pads",
    "Param": "params", "get_node_type": "registry", "node_type_names": "registry", "Runner": "runner",
    "SessionSlots": "sessions", "batch_ids": "sessions", "batch_sessions": "sessions", "id_dtype": "sessions",
    "validate_graph": "validate",
}
__all__ = [
    "ANY", "Bus", "CallRefused", "ControlClient", "ControlError", "Graph", "GraphError", "Kind", "LinkSpec", "MalformedMessage", "Message",
    "Node", "NodeContext", "NodeSpec", "NodeTypeError", "Pad", "Param", "ParamError", "ParamRefused", "Problem", "Runner", "SessionSlots",
    "batch_ids", "batch_sessions", "caps_compatible", "control_endpoint", "get_node_type", "id_dtype", "load_graph", "node_type_names", "parse_graph",
    "parse_launch", "validate_graph",
]

if _typing.TYPE_CHECKING:
    from .bus import Bus
    from .caps import ANY, caps_compatible
    from .control import ControlClient, control_endpoint
    from .errors import CallRefused, ControlError, GraphError, NodeTypeError, ParamError, ParamRefused, Problem
    from .graph import Graph, LinkSpec, NodeSpec, load_graph, parse_graph
    from .launch import parse_launch
    from .message import Kind, MalformedMessage, Message
    from .node import Node, NodeContext
    from .pads import Pad
    from .params import Param
    from .registry import get_node_type, node_type_names
    from .runner import Runner
    from .sessions import SessionSlots, batch_ids, batch_sessions, id_dtype
    from .validate import validate_graph


def __getattr__(name: str) -> _typing.Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
