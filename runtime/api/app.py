"""The control API as a FastAPI app over a running ``Runner``.

Endpoints and the role each needs (roles are ordered viewer < operator < admin):

=========================  ========  ====================================================
``GET /health``            public    the graph is running (200) or has stopped (503)
``GET /stats``             viewer    per-node and per-link stats (``Runner.stats``)
``GET /graph``             viewer    the graph as JSON plus Graphviz dot; ``?format=dot``
``GET /bus``               viewer    bus messages (``?since=N``, ``?type=ERROR``)
``GET /interfaces``        viewer    the control interfaces of the running nodes (emotion, say, speak)
``GET /metrics``           viewer    Prometheus text format
``POST /emotion``          operator  emotion and intensity of the nodes that take one (blenders)
``POST /say``              operator  text for the nodes with the ``say`` interface to speak
``POST /speak``            operator  a voice (WAV, raw PCM) streamed into the ``speak`` node
``WS /speak``              operator  a voice (PCM, Opus packets) over a WebSocket (``runtime.api.speak``)
``POST /nodes/{n}/params`` operator  set a node's params live (pins them: agents leave them alone)
``DELETE /nodes/{n}/pins`` operator  unpin params (``?param=P``, repeated; none: all of the node's)
``POST /nodes/{n}/swap``   admin     hot-swap a node
``GET /openapi.json``,     public    the OpenAPI schema and its Swagger UI page
``GET /docs``
=========================  ========  ====================================================

The runner's blocking API is called from FastAPI's thread pool (plain ``def`` endpoints); reads
of the graph description run on the runner's own loop (``Runner.on_loop``) so they never see a
half-made swap. Calls into nodes (``/say``, ``/speak``) are ``async`` endpoints that await the
runner's loop (``Runner.on_loop_async``), so a slow or paced call holds no pooled thread.
"""
from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import math
import re
from typing import Any, Callable, Literal, Optional

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security, WebSocket
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..dot import to_dot
from ..errors import ControlError
from .auth import AuthError, Principal, authenticate
from .calls import call_node, control_http_error, nodes_for
from .config import ApiConfig
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import render as render_metrics
from .ratelimit import RateLimitMiddleware, TokenBuckets
from .speak import SpeakSocket, origin_allowed, speak_http

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_NAME = r"^[A-Za-z0-9_.:-]{1,128}$"


# --- request bodies --------------------------------------------------------------------------
class EmotionBody(BaseModel):
    """Set the emotion preset (and its strength) of one node that takes emotions (a blender), or of all."""

    model_config = ConfigDict(extra="forbid")
    emotion: str = Field(min_length=1, max_length=64, description="an emotion preset of the blender's emotion_table")
    intensity: float = Field(1.0, ge=0.0, le=1.0, description="strength of the emotion, 0 .. 1")
    node: Optional[str] = Field(None, pattern=_NAME, description="a node whose type has the 'emotion' interface (a blender); "
                                                                  "default: every such node")
    transition_ms: Optional[float] = Field(None, ge=0.0, le=60000.0,
                                           description="eased transition time; also kept for later changes")


class ParamsBody(BaseModel):
    """Params to set on a running node; checked against the node type's declared params."""

    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] = Field(min_length=1, description="param name -> new value")
    session: str | None = Field(None, min_length=1, max_length=1024,
                                description="set them for this session alone (per-session params; a null value "
                                            "gives the session the node's value again)")


class SayBody(BaseModel):
    """Text for the nodes that say things (text_phoneme) to speak, queued behind a session's speech
    or replacing it."""

    model_config = ConfigDict(extra="forbid")
    session: str = Field("default", min_length=1, max_length=1024, description="the session (avatar) that speaks")
    text: str = Field("", description="what to say (the node caps its length); empty with interrupt: stop speaking")
    interrupt: bool = Field(False, description="drop the session's queued speech and start this now")
    node: Optional[str] = Field(None, pattern=_NAME, description="a node whose type has the 'say' interface; "
                                                                  "default: every such node")


class SwapBody(BaseModel):
    """Replace a running node by a new process: the same type or another one, with new params."""

    model_config = ConfigDict(extra="forbid")
    type: Optional[str] = Field(None, min_length=1, max_length=200, description="new node type (default: the same)")
    params: dict[str, Any] = Field(default_factory=dict, description="params of the new node")
    timeout_s: float = Field(30.0, gt=0.0, le=300.0, description="how long the old node may take to drain")


# --- helpers ---------------------------------------------------------------------------------
_MAX_DEPTH = 200  # deeper parts of an answer are cut (the runner refuses params nested over 100)


def _text(s: str) -> str:
    """A string UTF-8 can encode: lone surrogates (from JSON's ``\\ud800``) become ``\\ud800`` text."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _finite(obj: Any, nonfinite: Callable[[float], Any] = lambda f: None, depth: int = 0) -> Any:
    """JSON-safe: non-finite floats become ``nonfinite(x)`` (null; strict JSON has no NaN or
    Infinity), bytes and strings valid UTF-8, other objects their ``str``, and anything nested
    over ``_MAX_DEPTH`` deep the string ``...``, so rendering never fails (nor recurses without end)."""
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else nonfinite(obj)
    if isinstance(obj, str):
        return _text(obj)
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "replace")
    if isinstance(obj, (dict, list, tuple)) and depth >= _MAX_DEPTH:
        return "..."
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():  # loops, not comprehensions: one frame per level
            out[_text(str(k))] = _finite(v, nonfinite, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        items = []
        for v in obj:
            items.append(_finite(v, nonfinite, depth + 1))
        return items
    try:
        return _text(str(obj))
    except Exception:  # noqa: BLE001 - an object whose str() fails: its type will do
        return type(obj).__name__


def _json(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(_finite(content), status_code=status)


def _spelled(f: float) -> str:
    """NaN and the infinities as JSON texts spell them, for echoing a refused input."""
    return "NaN" if f != f else ("Infinity" if f > 0 else "-Infinity")


def _validation_errors(exc: RequestValidationError) -> list:
    """FastAPI's list of errors, each field JSON-safe: the input a client sent may hold NaN,
    bytes that are not UTF-8, lone surrogates or deep nesting, none of which may make the
    answer itself fail (a 500)."""
    try:
        errors = exc.errors()
    except Exception:  # noqa: BLE001 - cannot happen with pydantic 2, but the answer must come
        return [{"type": "invalid", "loc": ["body"], "msg": "the request does not fit its schema"}]
    return _finite(list(errors), _spelled)


SAY = "say"  # the interface (``Node.interfaces``) POST /say calls: text to speak
EMOTION = "emotion"  # the control interface (``Node.interfaces``) POST /emotion sets: params emotion, intensity


def _node_types(runner: Any) -> dict[str, dict[str, Any]]:
    """Name -> {type, emotion} of the nodes running here; ``emotion``: the type declares that interface."""
    running = runner.pids()
    out = {}
    for name, spec in runner.graph.nodes.items():
        if name not in running:
            continue
        cls = getattr(runner, "types", {}).get(name)
        out[name] = {"type": spec.type, "emotion": EMOTION in getattr(cls, "interfaces", ())}
    return out


def _graph_snapshot(runner: Any) -> tuple[dict[str, Any], str]:
    """graph_info() and dot text; the dot shows only params that differ from the type's defaults."""
    info = runner.graph_info()
    graph = copy.deepcopy(runner.graph)
    types = getattr(runner, "types", {})
    for name, spec in graph.nodes.items():
        declared = getattr(types.get(name), "params", {})
        spec.params = {k: v for k, v in spec.params.items() if k not in declared or declared[k].default != v}
    return info, to_dot(graph)


def _docs_page(title: str) -> tuple[str, str]:
    """The Swagger UI page and a CSP that allows exactly its inline script (by hash) and its CDN."""
    html = bytes(get_swagger_ui_html(openapi_url="/openapi.json", title=title).body).decode()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in re.findall(r"<script>(.*?)</script>", html, flags=re.S))
    csp = ("default-src 'none'; script-src https://cdn.jsdelivr.net " + hashes + "; "
           "style-src https://cdn.jsdelivr.net 'unsafe-inline'; img-src https://fastapi.tiangolo.com data:; "
           "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
    return html, csp


# --- middleware ------------------------------------------------------------------------------
class SecurityHeadersMiddleware:
    """Adds security headers to every response (a response's own CSP or Cache-Control wins)."""

    def __init__(self, app: Any, tls: bool):
        self.app = app
        self.headers = [(b"content-security-policy", API_CSP.encode()), (b"x-content-type-options", b"nosniff"),
                        (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                        (b"cross-origin-opener-policy", b"same-origin"), (b"cache-control", b"no-store")]
        if tls:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Refuses request bodies over ``limit`` bytes with 413 (reads small bodies up front). The
    ``streamed`` paths read their bodies as streams, with limits of their own (POST /speak)."""

    def __init__(self, app: Any, limit: int, streamed: tuple[str, ...] = ()):
        self.app, self.limit, self.streamed = app, limit, streamed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or scope["path"] in self.streamed:
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._refuse(send)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body, given = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body larger than {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# --- the app ---------------------------------------------------------------------------------
def create_app(runner: Any, config: ApiConfig | None = None, secret: str | None = None) -> FastAPI:
    """The control API over ``runner``. ``secret`` defaults to ``config.check()``'s (None: no auth)."""
    config = config or ApiConfig()
    if secret is None:
        secret = config.check()
    graph_name = runner.graph.name
    app = FastAPI(title="Avatar Engine control API", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json",
                  description=f"Steers the running graph '{graph_name}'. Send `Authorization: Bearer <JWT>` "
                              "(HS256, claims `role` in viewer/operator/admin and `exp`).")
    bearer = HTTPBearer(auto_error=False, description="HS256 JWT with a `role` claim (viewer, operator, admin)")

    def principal(request: Request, role: str) -> Principal:
        try:
            who = authenticate(request.headers.get("authorization"), secret)
        except AuthError as exc:
            raise HTTPException(401, exc.detail, headers={"WWW-Authenticate": exc.www_authenticate()}) from None
        if not who.allows(role):
            raise HTTPException(403, f"role '{who.role}' may not do this; it needs '{role}' or above")
        return who

    def require(role: str) -> Callable[..., Principal]:
        def check(request: Request, _: Any = Security(bearer)) -> Principal:
            return principal(request, role)

        return check

    viewer, operator, admin = Depends(require("viewer")), Depends(require("operator")), Depends(require("admin"))

    def call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ControlError, TimeoutError) as exc:
            raise control_http_error(exc) from None
        except RecursionError:  # the runner refuses deep params first; this is the last guard
            raise HTTPException(422, "a value is nested too deeply") from None

    def running_nodes() -> dict[str, dict[str, Any]]:
        return call(lambda: runner.on_loop(lambda: _node_types(runner)))

    def running_node(name: str) -> dict[str, Any]:
        nodes = running_nodes()
        if name not in nodes:
            raise HTTPException(404, f"no node '{name}' runs here (nodes: {', '.join(nodes)})")
        return nodes[name]

    @app.get("/health", tags=["public"], summary="Liveness: 200 while the graph runs, 503 once it stopped")
    def health() -> JSONResponse:
        stopped = runner.wait(0)
        return _json({"status": "stopped" if stopped else "ok", "graph": graph_name, "state": runner.state},
                     503 if stopped else 200)

    @app.get("/stats", tags=["read"], dependencies=[viewer], summary="Per-node and per-link stats")
    def stats() -> JSONResponse:
        return _json(call(runner.stats))

    @app.get("/graph", tags=["read"], dependencies=[viewer], summary="The graph as JSON (with dot), or as dot text",
             responses={200: {"content": {"application/json": {}, "text/vnd.graphviz": {}}}})
    def graph(format: Literal["json", "dot"] = Query("json", description="json (default) or dot")) -> Response:
        info, dot = call(lambda: runner.on_loop(lambda: _graph_snapshot(runner)))
        if format == "dot":
            return Response(dot, media_type="text/vnd.graphviz; charset=utf-8")
        return _json({"graph": info, "dot": dot})

    @app.get("/interfaces", tags=["read"], dependencies=[viewer],
             summary="The control interfaces the running nodes declare, and which nodes have each")
    def interfaces() -> JSONResponse:
        """What this graph can be asked to do (a page shows its emotion buttons, text box and
        microphone by it): ``{"interfaces": {"emotion": [nodes], "say": [...], "speak": [...]}}``."""
        def collect() -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for name in runner.pids():
                for interface in sorted(getattr(getattr(runner, "types", {}).get(name), "interfaces", ())):
                    out.setdefault(interface, []).append(name)
            return out

        return _json({"interfaces": call(lambda: runner.on_loop(collect))})

    @app.get("/bus", tags=["read"], dependencies=[viewer], summary="Bus messages, oldest first")
    def bus(since: int = Query(0, ge=0, description="index of the first message; pass the last answer's 'next'"),
            type: Optional[str] = Query(None, max_length=64, description="only messages of this type")) -> JSONResponse:
        messages = runner.bus.messages()
        selected = [m for m in messages[since:] if type is None or m.get("type") == type]
        return _json({"since": since, "next": max(since, len(messages)), "messages": selected})

    @app.get("/metrics", tags=["read"], dependencies=[viewer], summary="Prometheus metrics (text format)",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        return Response(call(lambda: render_metrics(runner.stats)), media_type=METRICS_CONTENT_TYPE)

    @app.post("/emotion", tags=["control"], dependencies=[operator],
              summary="Set the emotion and intensity of a node that takes one (default: every such node)")
    def emotion(body: EmotionBody) -> JSONResponse:
        nodes = running_nodes()
        if body.node is not None:
            if body.node not in nodes:
                raise HTTPException(404, f"no node '{body.node}' runs here (nodes: {', '.join(nodes)})")
            if not nodes[body.node]["emotion"]:
                raise HTTPException(422, f"node '{body.node}' is a {nodes[body.node]['type']}, which takes no emotion "
                                         f"(its type does not declare the '{EMOTION}' interface)")
            targets = [body.node]
        else:
            targets = [n for n, d in nodes.items() if d["emotion"]]
            if not targets:
                raise HTTPException(404, "no node that takes an emotion (a blender) runs in this graph")
        params: dict[str, Any] = {"emotion": body.emotion, "intensity": body.intensity}
        if body.transition_ms is not None:
            params["transition_ms"] = body.transition_ms
        done = {}
        for name in targets:
            result = call(functools.partial(runner.set_params, name, **params))
            done[name] = {k: result.get(k) for k in ("emotion", "intensity", "transition_ms")}
        return _json({"nodes": done})

    @app.post("/say", tags=["voice"], dependencies=[operator],
              summary="Say a text: every node with the 'say' interface (or the one named) speaks it")
    async def say(body: SayBody) -> JSONResponse:
        targets = await nodes_for(runner, SAY, body.node, "says things")
        args = {"session": body.session, "text": body.text, "interrupt": body.interrupt}
        return _json({"nodes": {name: await call_node(runner, name, SAY, args) for name in targets}})

    @app.post("/speak", tags=["voice"], dependencies=[operator],
              summary="Stream a voice (a WAV, or raw PCM) into the node with the 'speak' interface",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                  "audio/L16": {"schema": {"type": "string", "format": "binary"}},
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def speak(request: Request,
                    session: str = Query("default", min_length=1, max_length=1024, description="the session that speaks"),
                    rate: Optional[int] = Query(None, description="raw PCM: samples per second (8000 .. 48000)"),
                    channels: Optional[int] = Query(None, description="raw PCM: channels (default 1)"),
                    format: Optional[str] = Query(None, max_length=16, description="raw PCM: s16le (default), "
                                                  "s16be (audio/L16's), f32le, s24le, s32le, u8, f64le"),
                    transcript: Optional[str] = Query(None, description="what is said (or the X-Transcript header, "
                                                      "URL-encoded): the lip-sync aligns to it"),
                    interrupt: bool = Query(False, description="drop the session's queued speech and start this now"),
                    node: Optional[str] = Query(None, pattern=_NAME, description="the node (default: the only one "
                                                "with the 'speak' interface)")) -> JSONResponse:
        return _json(await speak_http(runner, request, session=session, rate=rate, channels=channels, fmt=format,
                                      transcript=transcript, interrupt=interrupt, node=node,
                                      max_upload=config.max_upload_bytes))

    @app.websocket("/speak")
    async def speak_socket(ws: WebSocket) -> None:
        if not origin_allowed(ws, list(config.cors_origins), config.tls):
            await ws.accept()
            await ws.send_text(json.dumps({"type": "error", "error": f"origin '{ws.headers.get('origin', '')[:100]}' "
                                                                       "is not allowed (--api-cors)"}))
            await ws.close(1008, "origin not allowed")
            return
        await ws.accept()
        await SpeakSocket(runner, ws, secret).run()

    @app.post("/nodes/{name}/params", tags=["control"], dependencies=[operator], summary="Set a running node's params")
    def set_params(body: ParamsBody, name: str = Path(pattern=_NAME)) -> JSONResponse:
        running_node(name)
        if body.session is not None:
            session = body.session
            return _json({"node": name, "session": session,
                          "params": call(lambda: runner.set_session_params(name, session, body.params))})
        return _json({"node": name, "params": call(lambda: runner.set_params(name, **body.params))})

    @app.delete("/nodes/{name}/pins", tags=["control"], dependencies=[operator],
                summary="Give params a person set back to the graph's agents")
    def unpin(name: str = Path(pattern=_NAME),
              param: list[str] = Query(default=[], max_length=64, description="params to unpin; none: all")) -> JSONResponse:
        running_node(name)
        return _json({"node": name, "unpinned": call(lambda: runner.unpin(name, *param))})

    @app.post("/nodes/{name}/swap", tags=["control"], dependencies=[admin], summary="Hot-swap a running node")
    def swap(body: SwapBody, name: str = Path(pattern=_NAME)) -> JSONResponse:
        running_node(name)
        pid = call(lambda: runner.swap(name, type=body.type, params=body.params, timeout=body.timeout_s))
        new_type = call(lambda: runner.on_loop(lambda: runner.graph.nodes[name].type))
        return _json({"node": name, "pid": pid, "type": new_type})

    # FastAPI parses a JSON body before it runs dependencies: answer 401/403 before 422 anyway,
    # so a client without the right token learns nothing from validation errors
    roles: dict[Any, str] = {stats: "viewer", graph: "viewer", bus: "viewer", metrics: "viewer", interfaces: "viewer",
                             emotion: "operator", say: "operator", speak: "operator", set_params: "operator",
                             unpin: "operator", swap: "admin"}

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        role = roles.get(request.scope.get("endpoint"))
        if role is not None:
            try:
                principal(request, role)
            except HTTPException as denied:
                return await http_error(request, denied)
        return JSONResponse({"detail": _validation_errors(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI's own handler, with a detail made JSON-safe (it may quote a param name or a
        node type the client sent, lone surrogates included)."""
        safe = StarletteHTTPException(exc.status_code, _finite(exc.detail, _spelled), getattr(exc, "headers", None))
        return await http_exception_handler(request, safe)

    docs_html, docs_csp = _docs_page(app.title)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_html, headers={"Content-Security-Policy": docs_csp, "Cache-Control": "no-cache"})

    # outermost last: security headers > CORS > rate limit > body size > the app
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes, streamed=("/speak",))
    app.add_middleware(RateLimitMiddleware, buckets=TokenBuckets(config.rate, config.burst), secret=secret)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Transcript"], allow_credentials=False,
                           max_age=600)
    app.add_middleware(SecurityHeadersMiddleware, tls=config.tls)
    return app
