"""The control API: HTTP (FastAPI + uvicorn) on the runner, with JWT roles, rate limits and metrics.

``ApiServer(runner, ApiConfig(...)).start()`` serves it; ``avatar run G.yaml --api HOST:PORT``
does the same from the command line. See docs/api.md.
"""
from .app import create_app
from .auth import ROLES, make_token
from .config import ApiConfig, ApiConfigError, parse_listen, parse_size
from .server import ApiServer

__all__ = ["ApiConfig", "ApiConfigError", "ApiServer", "ROLES", "create_app", "make_token", "parse_listen", "parse_size"]
