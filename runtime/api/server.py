"""Serves the control API with uvicorn on a background thread with its own event loop."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from .app import create_app
from .config import ApiConfig
from .speak import PIECE_BYTES


class ApiServer:
    """``ApiServer(runner, config).start()`` serves the control API until ``stop()``.

    The socket is bound in ``start`` (so a busy port fails there, with the OS's reason), and
    port 0 picks a free port: ``server.port`` and ``server.url`` say which.
    """

    def __init__(self, runner: Any, config: ApiConfig | None = None, *, announce: bool = True):
        self.runner = runner
        self.config = config or ApiConfig()
        self.announce = announce
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"{self.config.scheme}://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "ApiServer":
        """Check the config, bind, and serve; raises ApiConfigError, OSError or RuntimeError."""
        cfg = self.config
        secret = cfg.check()
        app = create_app(self.runner, cfg, secret)
        sock = _bind(cfg.host, cfg.port)
        self.port = sock.getsockname()[1]
        ucfg = uvicorn.Config(app, host=cfg.host, port=self.port, ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key,
                              log_config=None, log_level="warning", access_log=False, lifespan="off",
                              proxy_headers=False, server_header=False, timeout_graceful_shutdown=2,
                              ws_max_size=PIECE_BYTES)  # a WebSocket /speak message is at most 64 KiB
        try:
            ucfg.load()  # TLS files are read here, so a bad certificate fails in start()
        except BaseException:
            sock.close()
            raise
        self._server = uvicorn.Server(ucfg)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="avatar-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the control API did not start at {self.url}")
            time.sleep(0.01)
        if self.announce and getattr(self.runner, "bus", None) is not None:
            self.runner.bus.post("API_LISTENING", node=None, url=self.url,
                                 auth="none (insecure local)" if secret is None else "bearer JWT")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot serve the control API at {host}:{port}: {exc.strerror}") from None
    return sock
