"""Avatar Engine's graph runtime: YAML graphs of node processes wired by ZeroMQ."""
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
from .sessions import SessionSlots, batch_sessions
from .validate import validate_graph

__all__ = [
    "ANY", "Bus", "CallRefused", "ControlClient", "ControlError", "Graph", "GraphError", "Kind", "LinkSpec", "MalformedMessage", "Message",
    "Node", "NodeContext", "NodeSpec", "NodeTypeError", "Pad", "Param", "ParamError", "ParamRefused", "Problem", "Runner", "SessionSlots",
    "batch_sessions", "caps_compatible", "control_endpoint", "get_node_type", "load_graph", "node_type_names", "parse_graph",
    "parse_launch", "validate_graph",
]
