"""The HTTP control API on a real runner: endpoints, roles, errors, limits, headers, metrics, TLS, CLI."""
from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import jwt
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.api import ApiConfig, ApiConfigError, ApiServer, make_token
from runtime.histogram import RingHistogram
from runtime.testing import start_graph
from tests.helpers import API_TEST_GRAPH, avatar, wait_until

SECRET = "test-secret-" + "s" * 32
ORIGIN = "https://console.example"

GRAPH = API_TEST_GRAPH.format(name="apitest")


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("api") / "secret"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture(scope="module")
def runner():
    r = start_graph(GRAPH)
    yield r
    r.stop(drain=False)


@pytest.fixture(scope="module")
def api(runner, secret_file) -> Iterator[ApiServer]:
    server = ApiServer(runner, ApiConfig(port=0, secret_file=str(secret_file), cors_origins=[ORIGIN],
                                         rate=1000, burst=1000)).start()
    yield server
    server.stop()


def token(role: str, **kw: Any) -> str:
    return make_token(SECRET, role, **kw)


def client(api: ApiServer, role: str | None = None, **kw: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token(role)}"} if role else {}
    return httpx.Client(base_url=api.url, headers=headers, timeout=40, **kw)


def face_params(api: ApiServer) -> dict[str, Any]:
    return client(api, "viewer").get("/stats").json()["nodes"]["face"]["params"]


# --- every endpoint with the role it needs ----------------------------------------------------
def test_health_is_public(api):
    r = httpx.get(f"{api.url}/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "graph": "apitest", "state": "PLAYING"}


def test_a_stopped_graph_is_503():
    runner = start_graph("nodes: {src: {type: testsrc, params: {num_buffers: 3}}, sink: {type: fakesink}}\n"
                         "links: [src -> sink]")
    try:
        assert runner.wait(30)
        with ApiServer(runner, ApiConfig(port=0, insecure_local=True)) as api:
            r = httpx.get(f"{api.url}/health")
            assert r.status_code == 503 and r.json()["status"] == "stopped"
            for path in ("/stats", "/graph", "/metrics"):
                r = httpx.get(f"{api.url}{path}")
                assert r.status_code == 503 and r.json()["detail"] == "the graph is not running"
    finally:
        runner.stop(drain=False)


def frames_through(runner) -> None:
    """Frames have reached both sinks (so every counter and histogram has something in it)."""
    def through() -> bool:
        nodes = runner.stats()["nodes"]
        return nodes["mid"]["in"] > 0 and nodes["sink"]["node"]["count"] > 0 and nodes["facesink"]["node"]["count"] > 0
    wait_until(through, 10, what="frames through both sinks")


def test_stats_give_nodes_links_and_a_processing_histogram(api, runner):
    frames_through(runner)
    r = client(api, "viewer").get("/stats")
    assert r.status_code == 200
    stats = r.json()
    assert set(stats["nodes"]) == {"src", "mid", "sink", "face", "facesink"}
    assert set(stats["links"]) == {"src.out-mid.in", "mid.out-sink.in", "face.out-facesink.in"}
    mid = stats["nodes"]["mid"]
    hist = mid["proc_hist"]
    assert len(hist["buckets"]) == len(hist["le_us"]) + 1 and hist["buckets"] == sorted(hist["buckets"])
    assert hist["count"] == hist["buckets"][-1] == mid["in"] > 0
    lat = stats["nodes"]["sink"]["node"]["latency_hist"]
    assert lat["count"] == lat["buckets"][-1] == stats["nodes"]["sink"]["node"]["count"] > 0


def test_graph_as_json_and_as_dot(api):
    c = client(api, "viewer")
    r = c.get("/graph")
    assert r.status_code == 200
    body = r.json()
    assert body["graph"]["name"] == "apitest" and body["graph"]["state"] == "PLAYING"
    assert body["graph"]["nodes"]["face"]["type"] == "blender" and set(body["graph"]["pids"]) == set(body["graph"]["nodes"])
    assert body["dot"].startswith('digraph "apitest"')
    r = c.get("/graph", params={"format": "dot"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/vnd.graphviz")
    assert '"face" -> "facesink"' in r.text
    assert c.get("/graph", params={"format": "svg"}).status_code == 422


def test_bus_messages(api, runner):
    r = client(api, "viewer").get("/bus", params={"type": "STATE_CHANGED"})
    assert r.status_code == 200
    body = r.json()
    assert body["messages"] and all(m["type"] == "STATE_CHANGED" for m in body["messages"])
    assert body["since"] == 0 and 0 < body["next"] <= len(runner.bus.messages())
    later = client(api, "viewer").get("/bus", params={"since": body["next"]}).json()
    assert later["since"] == body["next"] and later["next"] >= body["next"]
    assert client(api, "viewer").get("/bus", params={"since": -1}).status_code == 422


def test_emotion_sets_every_blender_and_a_named_one(api):
    c = client(api, "operator")
    r = c.post("/emotion", json={"emotion": "happy", "intensity": 0.5, "transition_ms": 0})
    assert r.status_code == 200, r.text
    assert r.json() == {"nodes": {"face": {"emotion": "happy", "intensity": 0.5, "transition_ms": 0.0}}}
    assert face_params(api)["emotion"] == "happy" and face_params(api)["intensity"] == 0.5
    r = c.post("/emotion", json={"emotion": "sad", "node": "face"})
    assert r.status_code == 200 and r.json()["nodes"]["face"]["intensity"] == 1.0
    assert face_params(api)["emotion"] == "sad"


def test_emotion_reaches_a_users_own_node_type_that_declares_the_interface():
    runner = start_graph("nodes: {src: {type: testsrc, params: {rate: 10}}, mood: {type: 'tests.moody_node:Moody'}}\n"
                         "links: [src -> mood]")
    try:
        with ApiServer(runner, ApiConfig(port=0, insecure_local=True)) as api:
            r = httpx.post(f"{api.url}/emotion", json={"emotion": "happy", "intensity": 0.25}, timeout=40)
            assert r.status_code == 200, r.text
            assert r.json() == {"nodes": {"mood": {"emotion": "happy", "intensity": 0.25, "transition_ms": None}}}
            r = httpx.post(f"{api.url}/emotion", json={"emotion": "sad", "node": "mood"}, timeout=40)
            assert r.status_code == 200 and runner.graph.nodes["mood"].params["emotion"] == "sad"
    finally:
        runner.stop(drain=False)


def test_params_set_live(api):
    r = client(api, "operator").post("/nodes/mid/params", json={"params": {"label": "via-api", "delay_ms": 0}})
    assert r.status_code == 200, r.text
    assert r.json()["params"]["label"] == "via-api"
    assert client(api, "viewer").get("/stats").json()["nodes"]["mid"]["params"]["label"] == "via-api"


def test_swap_by_admin(api, runner):
    before = runner.pids()["sink"]
    r = client(api, "admin").post("/nodes/sink/swap", json={"params": {"dump": False}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["node"] == "sink" and body["type"] == "fakesink" and body["pid"] != before
    assert runner.pids()["sink"] == body["pid"]
    runner.bus.wait_for("NODE_SWAPPED", node="sink", pid=body["pid"])


def test_metrics_parse_as_prometheus_text(api, runner):
    frames_through(runner)
    r = client(api, "viewer").get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("avatar_node_messages_in", "avatar_node_messages_out", "avatar_node_drops", "avatar_node_restarts"):
        assert families[name].type == "counter"
        assert {s.labels["node"] for s in families[name].samples} == {"src", "mid", "sink", "face", "facesink"}
    assert families["avatar_node_queue_depth"].type == "gauge"
    for name in ("avatar_link_sent", "avatar_link_received", "avatar_link_gaps", "avatar_link_drops"):
        assert families[name].type == "counter"
        assert {s.labels["link"] for s in families[name].samples} == {"src.out-mid.in", "mid.out-sink.in",
                                                                         "face.out-facesink.in"}
    sent = {s.labels["link"]: s.value for s in families["avatar_link_sent"].samples}
    assert sent["face.out-facesink.in"] > 0
    for name, node in (("avatar_node_processing_seconds", "mid"), ("avatar_sink_latency_seconds", "facesink")):
        hist = families[name]
        assert hist.type == "histogram"
        samples = [s for s in hist.samples if s.labels["node"] == node]
        buckets = [s for s in samples if s.name == f"{name}_bucket"]
        count = next(s.value for s in samples if s.name == f"{name}_count")
        assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == count > 0
        assert [b.value for b in buckets] == sorted(b.value for b in buckets)
        total = next(s.value for s in samples if s.name == f"{name}_sum")
        # processing takes time; latency from pts can be negative (frame clocks may stamp a frame
        # slightly ahead when a late timer catches up), so only its magnitude is bounded
        assert total > 0 if name == "avatar_node_processing_seconds" else abs(total) < 60 * count


def test_interfaces_lists_what_the_running_nodes_can_be_asked(api):
    assert httpx.get(f"{api.url}/interfaces").status_code == 401
    r = client(api, "viewer").get("/interfaces")
    assert r.status_code == 200
    assert r.json() == {"interfaces": {"emotion": ["face"]}}  # the test graph's blender; nothing says or speaks


def test_openapi_is_served_and_documents_bearer_auth(api):
    r = httpx.get(f"{api.url}/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert {"/health", "/stats", "/graph", "/metrics", "/emotion", "/nodes/{name}/params",
            "/nodes/{name}/swap"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert doc["components"]["schemas"]["EmotionBody"]["properties"]["intensity"]["maximum"] == 1.0
    page = httpx.get(f"{api.url}/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "script-src https://cdn.jsdelivr.net 'sha256-" in page.headers["content-security-policy"]


# --- authentication and roles ------------------------------------------------------------------
def _no_exp() -> str:
    return jwt.encode({"sub": "x", "role": "admin"}, SECRET, algorithm="HS256")


def _bad_role() -> str:
    return jwt.encode({"sub": "x", "role": "root", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")


@pytest.mark.parametrize("authorization, says", [
    (None, "needs a bearer token"),
    ("Bearer not-a-jwt", "not valid"),
    ("Basic dXNlcjpwYXNz", "must be 'Bearer <token>'"),
    (lambda: f"Bearer {token('admin', ttl=-60)}", "expired"),
    (lambda: f"Bearer {make_token('another-secret-' + 'x' * 32, 'admin')}", "signature"),
    (lambda: f"Bearer {_no_exp()}", "no 'exp' claim"),
    (lambda: f"Bearer {_bad_role()}", "role must be one of viewer, operator, admin"),
], ids=["missing", "garbage", "not-bearer", "expired", "wrong-secret", "no-exp", "unknown-role"])
def test_bad_or_missing_token_is_401(api, authorization, says):
    if callable(authorization):
        authorization = authorization()
    headers = {"Authorization": authorization} if authorization else {}
    for method, path, body in (("GET", "/stats", None), ("GET", "/metrics", None),
                               ("POST", "/emotion", {"emotion": "happy"}), ("POST", "/emotion", {"intensity": 5})):
        r = httpx.request(method, f"{api.url}{path}", headers=headers, json=body)
        assert r.status_code == 401, (path, r.text)
        assert says in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith('Bearer realm="avatar"')


@pytest.mark.parametrize("role, method, path, body", [
    ("viewer", "POST", "/emotion", {"emotion": "happy"}),
    ("viewer", "POST", "/emotion", {"emotion": "happy", "intensity": 7}),  # bad body, but 403 first
    ("viewer", "POST", "/nodes/mid/params", {"params": {"label": "x"}}),
    ("operator", "POST", "/nodes/mid/swap", {}),
])
def test_wrong_role_is_403(api, runner, role, method, path, body):
    pid = runner.pids()["mid"]
    r = client(api, role).request(method, path, json=body)
    assert r.status_code == 403
    assert f"role '{role}' may not do this" in r.json()["detail"]
    assert runner.pids()["mid"] == pid


# --- bad requests --------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, status, says", [
    ("/emotion", {"emotion": "happy", "intensity": 2.0}, 422, "less than or equal to 1"),
    ("/emotion", {"emotion": "ecstatic"}, 422, "unknown emotion 'ecstatic'; presets: neutral, happy"),
    ("/emotion", {"intensity": 0.5}, 422, "Field required"),
    ("/emotion", {"emotion": "happy", "mood": 1}, 422, "Extra inputs are not permitted"),
    ("/emotion", {"emotion": "happy", "node": "mid"}, 422, "node 'mid' is a identity, which takes no emotion"),
    ("/emotion", {"emotion": "happy", "node": "ghost"}, 404, "no node 'ghost' runs here"),
    ("/nodes/mid/params", {"params": ["label", "x"]}, 422, "valid dictionary"),
    ("/nodes/mid/params", {"params": {}}, 422, "at least 1 item"),
    ("/nodes/mid/params", {"params": {"delay_ms": -1}}, 422, "param 'delay_ms' must be in 0.0 .. 10000.0"),
    ("/nodes/mid/params", {"params": {"colour": "red"}}, 422, "unknown param 'colour'"),
    ("/nodes/ghost/params", {"params": {"label": "x"}}, 404, "no node 'ghost' runs here"),
    ("/nodes/mid/swap", {"type": "fakesink"}, 422, "cannot swap 'mid'"),
    ("/nodes/mid/swap", {"params": {"delay_ms": -5}}, 422, "cannot swap 'mid'"),
    ("/nodes/ghost/swap", {}, 404, "no node 'ghost' runs here"),
])
def test_bad_requests_get_clear_4xx(api, runner, path, body, status, says):
    before = face_params(api)["emotion"], runner.pids()
    r = client(api, "admin").post(path, json=body)
    assert r.status_code == status, r.text
    assert says in json.dumps(r.json()["detail"])
    assert (face_params(api)["emotion"], runner.pids()) == before  # refused: nothing changed


DEEP = b"[" * 600 + b"]" * 600


@pytest.mark.parametrize("path, raw, ctype, says", [
    # the 422 itself must render: NaN, bytes that are not UTF-8, lone surrogates echoed back
    ("/emotion", b'{"emotion": "happy", "intensity": NaN}', "application/json", '"input": "NaN"'),
    ("/emotion", b'{"emotion": "happy", "transition_ms": -Infinity}', "application/json", '"input": "-Infinity"'),
    ("/nodes/mid/params", b"\xff", "text/plain", "valid dictionary"),
    ("/nodes/mid/params", b'{"params": ' + DEEP + b"}", "application/json", "valid dictionary"),
    ("/nodes/mid/params", b'{"params": {"\\udc00": 1}}', "application/json", "not valid UTF-8"),  # a param name
    # values that cannot travel to a node process: refused by the runner before sending, naming the param
    ("/nodes/face/params", b'{"params": {"seed": 99999999999999999999999}}', "application/json",
     "param 'seed': an integer beyond 64 bits"),
    ("/nodes/face/params", b'{"params": {"sessions": [9223372036854775808]}}', "application/json",  # 2**63, nested:
     "param 'sessions': an integer beyond 64 bits"),  # the same int64 rule as a typed int param
    ("/nodes/mid/params", b'{"params": {"label": "\\ud800"}}', "application/json",
     "param 'label': a string that is not valid UTF-8"),
    ("/nodes/face/params", b'{"params": {"sessions": ' + DEEP + b"}}", "application/json",
     "param 'sessions': lists or mappings nested more than 100 deep"),
    ("/nodes/mid/swap", b'{"params": {"label": ' + DEEP + b"}}", "application/json", "cannot swap 'mid': param 'label'"),
    ("/nodes/mid/swap", b'{"params": {"label": "\\ud800"}}', "application/json", "cannot swap 'mid': param 'label'"),
    # a node type the registry cannot even look up
    ("/nodes/mid/swap", b'{"type": ":"}', "application/json", "cannot swap 'mid'"),
    ("/nodes/mid/swap", b'{"type": "..x:Y"}', "application/json", "cannot swap 'mid'"),
])
def test_bodies_that_used_to_be_500_get_a_4xx(api, runner, path, raw, ctype, says):
    """Found by tests/test_fuzz.py: each of these was a 500 (an error renderer or msgpack failing)."""
    before = face_params(api), runner.pids()
    r = client(api, "admin").post(path, content=raw, headers={"Content-Type": ctype})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert says in json.dumps(r.json()["detail"]), r.text
    assert (face_params(api), runner.pids()) == before  # refused: nothing changed
    assert not runner.bus.messages("ERROR")


def test_tables_outside_the_allowed_folders_are_refused(api, runner, tmp_path):
    """A table param names a file on the runner's host: only graphs/ and $AVATAR_TABLE_PATH folders."""
    listed = tmp_path / "list.yaml"
    listed.write_text("[1, 2, 3]\n")
    before = face_params(api), runner.pids()
    c = client(api, "operator")
    for table in (str(listed), "/etc/hostname", "/nonexistent/x.yaml", "../../../../etc/hostname"):
        r = c.post("/nodes/face/params", json={"params": {"emotion_table": table}})
        assert r.status_code == 422 and "outside the folders tables may come from" in r.json()["detail"], r.text
    r = c.post("/nodes/face/params", json={"params": {"viseme_table": "/etc/hostname"}})
    assert r.status_code == 422 and "AVATAR_TABLE_PATH" in r.json()["detail"], r.text
    assert (face_params(api), runner.pids()) == before  # the blender runs on, with its tables
    assert c.post("/emotion", json={"emotion": "happy", "intensity": 0.5}).status_code == 200
    assert not runner.bus.messages("ERROR")


def test_answers_always_render():
    """What an answer may quote from a request (NaN, bytes, lone surrogates, nesting thousands
    deep) becomes strict JSON that UTF-8 can encode: rendering an error never fails."""
    from runtime.api.app import _finite, _spelled

    deep: list = []
    for _ in range(5000):
        deep = [deep]
    out = _finite({"a\ud800": [b"\xff", float("nan"), float("-inf"), 2**70, deep, ValueError("x")]}, _spelled)
    text = json.dumps(out, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert json.loads(text)["a\\ud800"][:4] == ["\ufffd", "NaN", "-Infinity", 2**70]


def test_malformed_json_and_large_bodies(api):
    c = client(api, "operator")
    r = c.post("/emotion", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in json.dumps(r.json()["detail"])
    r = c.post("/nodes/mid/params", json={"params": {"label": "x" * 100_000}})
    assert r.status_code == 413 and "larger than 65536 bytes" in r.json()["detail"]
    assert c.get("/nope").status_code == 404


# --- rate limit, CORS, headers ----------------------------------------------------------------
def test_rate_limit_per_client_is_429_with_retry_after(runner, secret_file):
    with ApiServer(runner, ApiConfig(port=0, secret_file=str(secret_file), rate=0.1, burst=3)) as api:
        alice = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token('viewer', subject='alice')}"})
        assert [alice.get("/health").status_code for _ in range(3)] == [200, 200, 200]
        r = alice.get("/health")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "too many requests" in r.json()["detail"]
        bob = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token('viewer', subject='bob')}"})
        assert bob.get("/stats").status_code == 200  # another client has its own bucket
        anonymous = [httpx.get(f"{api.url}/health").status_code for _ in range(4)]  # by address
        assert anonymous == [200, 200, 200, 429]
        forged = {"Authorization": "Bearer " + make_token("not-the-secret-" + "x" * 32, "viewer", subject="carol")}
        assert httpx.get(f"{api.url}/health", headers=forged).status_code == 429  # no fresh bucket


def test_cors_allows_only_configured_origins(api):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(f"{api.url}/emotion", headers={"Origin": ORIGIN, **preflight})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = httpx.options(f"{api.url}/emotion", headers={"Origin": "https://evil.example", **preflight})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = client(api, "viewer").get("/stats", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    r = client(api, "viewer").get("/stats", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_security_headers_on_every_response(api):
    for r in (client(api, "viewer").get("/stats"), httpx.get(f"{api.url}/stats"), httpx.get(f"{api.url}/health")):
        assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in r.headers  # plain HTTP
        assert "server" not in r.headers


# --- configuration ------------------------------------------------------------------------------
def test_insecure_local_needs_no_token_but_only_on_loopback(runner, monkeypatch):
    monkeypatch.delenv("AVATAR_API_SECRET", raising=False)
    with ApiServer(runner, ApiConfig(port=0, insecure_local=True)) as api:
        assert httpx.get(f"{api.url}/stats").status_code == 200
        r = httpx.post(f"{api.url}/emotion", json={"emotion": "neutral", "intensity": 1.0})
        assert r.status_code == 200, r.text
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(ApiConfigError, match=f"only allowed on a loopback address.*not on '{host}'"):
            ApiServer(runner, ApiConfig(host=host, port=0, insecure_local=True)).start()
    ApiConfig(host="::1", insecure_local=True).check()
    ApiConfig(host="localhost", insecure_local=True).check()


def test_a_secret_is_required_and_may_come_from_the_environment(runner, monkeypatch, tmp_path):
    monkeypatch.delenv("AVATAR_API_SECRET", raising=False)
    with pytest.raises(ApiConfigError, match=r"needs a secret: set \$AVATAR_API_SECRET"):
        ApiConfig().check()
    monkeypatch.setenv("AVATAR_API_SECRET", "short")
    with pytest.raises(ApiConfigError, match="shorter than 32 bytes"):
        ApiConfig().check()
    with pytest.raises(ApiConfigError, match="cannot read the API secret file"):
        ApiConfig(secret_file=str(tmp_path / "missing")).check()
    monkeypatch.setenv("AVATAR_API_SECRET", SECRET)
    with ApiServer(runner, ApiConfig(port=0)) as api:
        assert client(api, "viewer").get("/stats").status_code == 200
        assert httpx.get(f"{api.url}/stats").status_code == 401


def test_https_with_a_given_certificate(runner, secret_file, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    config = ApiConfig(port=0, secret_file=str(secret_file), tls_cert=str(cert), tls_key=str(key))
    with ApiServer(runner, config) as api:
        assert api.url.startswith("https://127.0.0.1:")
        verify = ssl.create_default_context(cafile=str(cert))
        r = httpx.get(f"{api.url}/stats", verify=verify, headers={"Authorization": f"Bearer {token('viewer')}"})
        assert r.status_code == 200 and r.json()["graph"] == "apitest"
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        with pytest.raises(httpx.ConnectError):  # not trusted without the certificate
            httpx.get(f"{api.url}/health")
    with pytest.raises(ApiConfigError, match="both a certificate and its key"):
        ApiConfig(secret_file=str(secret_file), tls_cert=str(cert)).check()


def test_ring_histogram_counts_samples_it_missed():
    h = RingHistogram([10, 100])
    ring = np.zeros(4)
    for i, v in enumerate([5e3, 50e3, 500e3, 5e3]):  # ns: 5 us, 50 us, 500 us, 5 us
        ring[i] = v
    assert h.update(ring, 4) == {"le_us": [10.0, 100.0], "buckets": [2, 3, 4], "sum_us": 560.0, "count": 4}
    assert h.update(ring, 4)["count"] == 4  # asking again adds nothing
    for i in range(4, 14):  # 10 more, only the newest 4 still in the ring
        ring[i % 4] = 5e3
    out = h.update(ring, 14)
    assert out["count"] == out["buckets"][-1] == 14 and out["buckets"] == [12, 13, 14]


# --- the command line -----------------------------------------------------------------------------
CLI_GRAPH = """
name: api_cli
nodes:
  face: {type: blender, params: {sessions: [a], micro_per_min: 0}}
  sink: {type: fakesink}
links:
  - face -> sink
"""


def test_avatar_run_serves_the_api(graph_file, avatar_run, secret_file):
    path = graph_file(CLI_GRAPH)
    proc = avatar_run("run", path, "--no-control", "--api", "127.0.0.1:0", "--api-secret-file", secret_file,
                      "--api-cors", ORIGIN)
    url = proc.wait_for(lambda m: m["type"] == "API_LISTENING")["url"]
    assert url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{url}/health").json()["graph"] == "api_cli"
    made = avatar("token", "--role", "operator", "--secret-file", secret_file, "--sub", "cli-test")
    assert made.returncode == 0, made.stderr
    claims = jwt.decode(made.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["role"] == "operator" and claims["sub"] == "cli-test" and claims["exp"] > time.time()
    headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
    r = httpx.post(f"{url}/emotion", json={"emotion": "happy", "intensity": 0.8}, headers=headers)
    assert r.status_code == 200, r.text
    assert httpx.post(f"{url}/nodes/face/swap", json={}, headers=headers).status_code == 403
    proc.proc.send_signal(signal.SIGINT)
    assert proc.finish() == 0, proc.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")


def test_avatar_run_refuses_unsafe_api_settings(graph_file, monkeypatch):
    monkeypatch.delenv("AVATAR_API_SECRET", raising=False)
    path = graph_file(CLI_GRAPH)
    r = avatar("run", path, "--no-control", "--api", "0.0.0.0:0", "--api-insecure-local")
    assert r.returncode == 2 and "only allowed on a loopback address" in r.stderr
    r = avatar("run", path, "--no-control", "--api", "127.0.0.1:0")
    assert r.returncode == 2 and "needs a secret" in r.stderr
    r = avatar("run", path, "--no-control", "--api-insecure-local")
    assert r.returncode == 2 and "need --api HOST:PORT" in r.stderr
    r = avatar("token", "--role", "admin")
    assert r.returncode == 1 and "no API secret" in r.stderr
