"""The avatar pipeline's agent types (``runtime.agents``): controllers of its nodes' live params,
declared in a graph's ``agents:`` section and registered in the ``avatar.agents`` entry points."""
from .animation import AnimationAgent
from .compression import CompressionAgent
from .network import NetworkAgent
from .qos import QosAgent

__all__ = ["AnimationAgent", "CompressionAgent", "NetworkAgent", "QosAgent"]
