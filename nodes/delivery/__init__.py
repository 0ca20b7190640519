"""Delivery to browsers: the sinks' node base, the viewer registry and protocol, WebRTC, the web server.

The web server's names (FastAPI, uvicorn) are imported on first use, so that loading a sink's
module for ``avatar inspect`` or ``avatar validate`` stays quick.
"""
from __future__ import annotations

from . import bundle
from .rtc import MAX_SDP, DataChannelTransport, ice_server_problems, offer_problems, restrict_host_addresses
from .sink import ViewerSink
from .viewers import MAX_TEXT, ProtocolError, Transport, Viewer, Viewers, check_lod, check_session

_WEBSERVER = ("DEFAULT_WEB_ROOT", "WS_MAX_MESSAGE", "WS_SEND_BUFFER", "WS_WRITE_HIGH", "Inbox", "WebServer",
              "api_origin", "bind", "content_security_policy", "importmap_hashes", "page_app")


def __getattr__(name: str) -> object:
    if name in _WEBSERVER:
        from . import webserver
        return getattr(webserver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MAX_SDP", "MAX_TEXT", "DataChannelTransport", "bundle", "ProtocolError", "Transport", "Viewer", "ViewerSink",
           "Viewers", "check_lod", "check_session", "ice_server_problems", "offer_problems",
           "restrict_host_addresses", *_WEBSERVER]
