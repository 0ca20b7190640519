"""A web server inside a node process: FastAPI on uvicorn, on an asyncio loop of its own thread.

What the browser-delivery sinks (``websocket_sink``, ``webrtc_sink``) share:

- ``WebServer``: a uvloop event loop in a background thread running uvicorn on a socket the node
  bound itself (so a bad host or a taken port fails the node's setup, and port 0 is known at once).
  ``call`` hands work from the node's thread to the loop; ``stop`` ends everything within a bound.
- ``Inbox``: the way back, from the loop to the node's thread (which alone may emit and post):
  a deque and an eventfd the node ``watch``es.
- ``page_app``: the FastAPI app with the page (``web/`` served statically), ``/config.json``
  and security headers on every response: a Content-Security-Policy allowing only ``'self'``
  scripts plus the page's inline import map by hash (computed at start-up from ``index.html``).
- WebSocket connections get small send buffers (``_WebSocketProtocol``), so a viewer that
  cannot keep up backs up into its own bounded, drop-oldest queue (``nodes.delivery.viewers``) within a
  few kilobytes, instead of into seconds of kernel and transport buffering.

The node's thread and the loop's thread share nothing else: the viewer registry lives on the
loop, the node's params and links in the node's thread.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import html.parser
import mimetypes
import os
import socket
import threading
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

DEFAULT_WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
WS_SEND_BUFFER = 4096  # SO_SNDBUF of a WebSocket connection (the kernel doubles it)
WS_WRITE_HIGH = 2048  # asyncio transport buffer above which a WebSocket send waits
WS_MAX_MESSAGE = 64 * 1024  # largest message a viewer may send us

for _ext, _type in ((".js", "text/javascript"), (".mjs", "text/javascript"), (".json", "application/json"),
                    (".glb", "model/gltf-binary"), (".gltf", "model/gltf+json"), (".wasm", "application/wasm")):
    mimetypes.add_type(_type, _ext)  # module scripts need a JavaScript type (nosniff is on)


# --- the page ---------------------------------------------------------------------------------
class _ImportMaps(html.parser.HTMLParser):
    """Collects the text of every inline ``<script type="importmap">``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.maps: list[str] = []
        self._inside: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and (a.get("type") or "").strip().lower() == "importmap" and "src" not in a:
            self._inside = []

    def handle_data(self, data: str) -> None:
        if self._inside is not None:
            self._inside.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._inside is not None:
            self.maps.append("".join(self._inside))
            self._inside = None


def importmap_hashes(index_html: str) -> list[str]:
    """CSP source expressions (``'sha256-...'``) for the inline import maps of a page.

    The browser hashes a script's text as its parser sees it: UTF-8, line ends normalized to LF.
    """
    parser = _ImportMaps()
    parser.feed(index_html.replace("\r\n", "\n").replace("\r", "\n"))
    parser.close()
    return [f"'sha256-{base64.b64encode(hashlib.sha256(m.encode()).digest()).decode()}'" for m in parser.maps]


def api_origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, or None for ""; ValueError if it is not one."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"api must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(script_hashes: list[str], host: str | None, api: str | None) -> str:
    """The page's CSP: scripts only from us (plus the import maps by hash), connections only to us
    (http and WebSocket, on the host the browser used) and the control API (http, and its
    WebSocket, where the page streams a microphone)."""
    connect = ["'self'", "blob:"]  # blob: a model file the viewer picks, read by the glTF loader
    if host:
        connect += [f"ws://{host}", f"wss://{host}"]  # 'self' covers these in CSP3; older browsers need them
    if api:
        connect += [api, "ws" + api[4:]]  # http(s)://h:p -> ws(s)://h:p
    return "; ".join([
        "default-src 'self'",
        "script-src " + " ".join(["'self'", *script_hashes]),
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src " + " ".join(connect),
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


class _SecurityHeaders:
    """ASGI middleware: security headers on every HTTP response (the CSP names the request's host)."""

    def __init__(self, app: Any, script_hashes: list[str], api: Callable[[], str | None]):
        self.app, self.hashes, self.api = app, script_hashes, api

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
        try:
            api = self.api()
        except ValueError:  # a bad URL is refused before it gets here; never fail a response over it
            api = None
        if host and not all(c.isalnum() or c in ".-:[]" for c in host):
            host = None  # never echo a strange Host header into a header
        extra = [
            (b"content-security-policy", content_security_policy(self.hashes, host, api).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in extra}
                message["headers"] = [h for h in message.get("headers", []) if h[0].lower() not in names] + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


def page_app(web_root: Path, config: Callable[[], dict], api: Callable[[], str | None],
             routes: list[BaseRoute]) -> tuple[Any, list[str]]:
    """The sink's ASGI app and the import-map hashes its CSP allows.

    ``routes`` are the sink's own (``/ws``, ``/rtc/offer``: Starlette routes), matched before the
    static files, which take every other path. A missing ``web_root`` serves 404s.
    """
    index = web_root / "index.html"
    hashes = importmap_hashes(index.read_text(encoding="utf-8")) if index.is_file() else []
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/config.json")
    async def config_json() -> JSONResponse:
        return JSONResponse(config(), headers={"cache-control": "no-store"})

    app.router.routes.extend(routes)
    app.mount("/", StaticFiles(directory=web_root, html=True, check_dir=False), name="web")
    return _SecurityHeaders(app, hashes, api), hashes


# --- the server thread ------------------------------------------------------------------------
def bind(host: str, port: int, *, replacing: bool = False) -> socket.socket:
    """A listening TCP socket; RuntimeError saying why not.

    Every sink listens with SO_REUSEPORT so that a hot-swapped sink can start on the port while the
    process it replaces still serves it (the kernel spreads new connections over both until the old
    one exits). So that two graphs never share a port by mistake, a first process (not
    ``replacing``) checks the port is free before it binds.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if port and not replacing:
            socket.create_server((host, port), family=family).close()  # EADDRINUSE: someone serves it
        sock = socket.create_server((host, port), family=family, backlog=128, reuse_port=True)
    except OSError as exc:
        raise RuntimeError(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with small send buffers: a send waits (and the viewer's own
    queue takes the backlog, dropping the oldest) after a few KB, not after megabytes."""

    def connection_made(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WS_SEND_BUFFER)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        transport.set_write_buffer_limits(high=WS_WRITE_HIGH)
        super().connection_made(transport)


class WebServer:
    """uvicorn serving ``app`` on ``sock``, on a uvloop event loop in a daemon thread.

    ``on_start`` / ``on_stop`` run on the loop right after the server starts / before it stops
    (the sinks start their housekeeping and close their viewers there). An exception on the loop
    that nothing handled goes to ``on_error`` (called on the loop thread: hand it over).
    """

    def __init__(self, name: str, app: Any, sock: socket.socket, *, ping_interval: float, ping_timeout: float,
                 on_error: Callable[[str], None], on_start: Callable[[], Awaitable[None]] | None = None,
                 on_stop: Callable[[], Awaitable[None]] | None = None):
        self.name, self.sock, self.on_error = name, sock, on_error
        self.on_start, self.on_stop = on_start, on_stop
        host, self.port = sock.getsockname()[:2]
        self.host = host
        self.config = uvicorn.Config(
            app, loop="none", lifespan="off", ws=_WebSocketProtocol, ws_ping_interval=ping_interval or None,
            ws_ping_timeout=ping_timeout or None, ws_max_size=WS_MAX_MESSAGE, ws_per_message_deflate=False,
            log_level="warning", access_log=False, server_header=False, timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failed: BaseException | None = None
        self._closing = False

    def start(self, timeout: float = 10.0) -> None:
        """Run the server; returns once it accepts connections (RuntimeError if it cannot)."""
        self._thread = threading.Thread(target=self._main, name=f"web-{self.name}", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            self.stop()
            raise RuntimeError(f"web server on port {self.port} did not start within {timeout}s")
        if self._failed is not None:
            raise RuntimeError(f"web server on port {self.port} failed to start: {self._failed}")

    def call(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop, soon (from any thread); False once the server is stopping."""
        loop = self.loop
        if loop is None or self._closing:
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile
            return False
        return True

    def stop(self, timeout: float = 5.0) -> bool:
        """Close the viewers (``on_stop``) and the server, end the thread; False if it had to be left."""
        if self._thread is None:
            return True
        if not self._closing:
            self._closing = True
            loop = self.loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._begin_stop)
                except RuntimeError:
                    pass
        self._thread.join(timeout)
        done = not self._thread.is_alive()
        if done:
            self._thread = None
        return done

    # --- on the loop thread ------------------------------------------------------------------
    def _main(self) -> None:
        try:
            import uvloop
            loop = uvloop.new_event_loop()
        except ImportError:  # uvloop is a dependency; plain asyncio works too
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._loop_error)
        self.loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported, never silent
            if not self._started.is_set():
                self._failed = exc
            else:
                self.on_error(f"web server stopped: {type(exc).__name__}: {exc}")
        finally:
            self._started.set()
            try:
                self._cancel_leftovers(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                try:
                    self.sock.close()
                except OSError:
                    pass

    async def _serve(self) -> None:
        server = self.server
        serving = asyncio.ensure_future(server.serve(sockets=[self.sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.005)
        if serving.done():
            serving.result()  # raises what went wrong
            raise RuntimeError("uvicorn exited at start-up")
        if self.on_start is not None:
            await self.on_start()
        self._started.set()
        await serving

    def _begin_stop(self) -> None:
        async def stop() -> None:
            try:
                if self.on_stop is not None:
                    await asyncio.wait_for(self.on_stop(), 2.0)
            except Exception as exc:  # noqa: BLE001
                self.on_error(f"closing viewers failed: {type(exc).__name__}: {exc}")
            finally:
                self.server.should_exit = True

        asyncio.ensure_future(stop())

    @staticmethod
    def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        text = context.get("message", "error")
        if exc is not None:
            if isinstance(exc, (ConnectionError, asyncio.CancelledError)):
                return  # a viewer went away: handled where it matters
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=4))
            text = f"{text}: {type(exc).__name__}: {exc}\n{tb}"
        self.on_error(f"web server: {text}")


# --- loop thread -> node thread ---------------------------------------------------------------
class Inbox:
    """Items from the loop thread for the node's thread, which ``watch``es ``fd`` and ``drain``s."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._items: deque = deque()

    def put(self, item: Any) -> None:
        self._items.append(item)
        try:
            os.eventfd_write(self.fd, 1)
        except OSError:  # closed: the node is gone
            pass

    def drain(self) -> list:
        try:
            os.eventfd_read(self.fd)
        except (BlockingIOError, OSError):
            pass
        items, pop = [], self._items.popleft
        while self._items:
            items.append(pop())
        return items

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
