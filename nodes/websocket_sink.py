"""websocket_sink: serves the browser page and streams each viewer its session's packets on /ws.

Everything it does is the delivery sinks' shared base, ``nodes.delivery.ViewerSink``
(``docs/delivery.md``); ``webrtc_sink`` is the same with WebRTC data channels added.
"""
from __future__ import annotations

from .delivery import ViewerSink


class WebSocketSink(ViewerSink):
    """Serves the page (web/) and sends each browser viewer its session's packets over a WebSocket."""
