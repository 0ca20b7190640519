"""`avatar export k8s`: manifests checked against the Kubernetes client's models, and against each other."""
from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from runtime.endpoints import cross_host_links, host_of, link_ports, tcp_links
from runtime.graph import parse_graph
from runtime.k8s import ExportOptions, export_k8s, k8s_name, to_yaml
from runtime.validate import validate_graph
from tests.helpers import ROOT, avatar

MODELS = {  # kind -> (apiVersion, the client's model)
    "ConfigMap": ("v1", "V1ConfigMap"),
    "Service": ("v1", "V1Service"),
    "Deployment": ("apps/v1", "V1Deployment"),
    "HorizontalPodAutoscaler": ("autoscaling/v2", "V2HorizontalPodAutoscaler"),
}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
PORT_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")

TWO_HOSTS = """
name: edge_demo
args: {rate: 60}
hosts:
  capture: {address: 10.0.0.1}
  render: {address: render.lan, port: 7100, bind: 10.0.0.2}
nodes:
  src: {type: testsrc, params: {rate: "${rate}"}}         # no host: the first one, capture
  mid: {type: identity, host: capture}
  back: {type: identity, host: render}
  sink: {type: fakesink, host: render}
  rec: {type: recorder, host: render, params: {path: out/edge.msgpack}}
  tail: {type: fakesink, host: capture}
  late: {type: fakesink, host: render}
links:
  - src -> mid -> back -> sink
  - {from: mid.out, to: rec.in, policy: block, size: 64}
  - back -> tail
  - {from: src.out, to: late.in, port: 7300}
"""

_api = ApiClient()


def check_schema(obj: dict[str, Any]) -> Any:
    """Deserialize into the client's model and back: a field the model does not know would be lost."""
    api_version, model = MODELS[obj["kind"]]
    assert obj["apiVersion"] == api_version
    typed = _api._ApiClient__deserialize(obj, model)
    assert _api.sanitize_for_serialization(typed) == obj, f"{obj['kind']} {obj['metadata']['name']} lost fields"
    return typed


def export(*args: str) -> list[dict[str, Any]]:
    res = avatar("export", "k8s", *args, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    docs = list(yaml.safe_load_all(res.stdout))
    assert res.stdout.startswith("---\n") and all(docs)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def check_objects(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Schema and cross-references of one export; returns what the checks found, for more checks."""
    for d in docs:
        check_schema(d)
        assert DNS_1035.match(d["metadata"]["name"]), d["metadata"]["name"]
    (config,) = by_kind(docs, "ConfigMap").values()
    deployments, services, hpas = by_kind(docs, "Deployment"), by_kind(docs, "Service"), by_kind(docs, "HorizontalPodAutoscaler")
    assert deployments and hpas.keys() == deployments.keys()

    graph = parse_graph(config["data"]["graph.yaml"], "configmap")
    validate_graph(graph)
    placed: list[str] = []
    ports_of: dict[str, dict[str, int]] = {}
    host_arg: dict[str, str | None] = {}
    for name, dep in deployments.items():
        spec = dep["spec"]
        pod = spec["template"]
        labels = pod["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert dep["metadata"]["labels"] == labels
        (c,) = pod["spec"]["containers"]
        assert c["command"] == ["avatar"] and c["args"][:2] == ["run", "/etc/avatar/graph.yaml"]
        (mount,) = c["volumeMounts"]
        (volume,) = pod["spec"]["volumes"]
        assert mount["name"] == volume["name"] and mount["mountPath"] == "/etc/avatar"
        assert volume["configMap"]["name"] == config["metadata"]["name"]
        argv = shlex.split(" ".join(c["args"]))
        host = argv[argv.index("--host") + 1] if "--host" in argv else None
        host_arg[name] = host
        assert argv[argv.index("--log-format") + 1] == "json"
        nodes = graph.nodes_on(host)
        assert pod["metadata"]["annotations"]["avatar-engine/nodes"] == ",".join(nodes)
        placed += nodes
        assert c["resources"]["requests"]["cpu"]  # the autoscaler's utilisation is relative to it
        ports_of[name] = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        assert all(PORT_NAME.match(p) for p in ports_of[name]), ports_of[name]
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 1 == hpa["minReplicas"] <= hpa["maxReplicas"]
        if name in services:
            svc = services[name]["spec"]
            assert svc["selector"] == labels
            assert {p["targetPort"]: p["port"] for p in svc["ports"]} == ports_of[name]
        else:
            assert not ports_of[name]
    assert sorted(placed) == sorted(graph.nodes)  # every node runs, once
    for svc in services:
        assert svc in deployments
    return {"graph": graph, "deployments": deployments, "services": services, "ports": ports_of,
            "host_arg": host_arg, "config": config}


def test_face_graph(tmp_path):
    docs = export("graphs/face.yaml")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler"]
    found = check_objects(docs)
    assert found["host_arg"] == {"face": None} and not found["services"]  # one runner, no links to other hosts
    dep = found["deployments"]["face"]["spec"]["template"]["spec"]["containers"][0]
    assert "livenessProbe" not in dep  # no API, nothing to probe: the runner exits when the graph fails

    out = tmp_path / "face.yaml"
    res = avatar("export", "k8s", "graphs/face.yaml", "host=0.0.0.0", "level=2", "--api", "8081",
                 "--expose", "8080", "--image", "registry.example/avatar:1.2", "--namespace", "avatars",
                 "--max-replicas", "3", "-o", out, cwd=ROOT)
    assert res.returncode == 0 and res.stdout == "", res.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    found = check_objects(docs)
    assert all(d["metadata"]["namespace"] == "avatars" for d in docs)
    graph = found["graph"]
    assert graph.args["host"] == "0.0.0.0" and graph.args["level"] == 2 and graph.name == "face"
    assert found["ports"]["face"] == {"api": 8081, "port-8080": 8080}
    c = found["deployments"]["face"]["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.example/avatar:1.2"
    assert c["args"][-2:] == ["--api", "0.0.0.0:8081"]
    assert c["env"] == [{"name": "AVATAR_API_SECRET",
                         "valueFrom": {"secretKeyRef": {"name": "face-api", "key": "secret"}}}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "api"}
    assert by_kind(docs, "HorizontalPodAutoscaler")["face"]["spec"]["maxReplicas"] == 3


def test_two_hosts(graph_file):
    path = graph_file(TWO_HOSTS)
    docs = export(str(path), "rate=30", "--api", "9000")
    found = check_objects(docs)
    graph = found["graph"]
    assert found["host_arg"] == {"edge-demo-capture": "capture", "edge-demo-render": "render"}
    assert graph.args["rate"] == 30
    # Each host is reached at its Service's name and listens on every interface of its pod; the ports
    # its links come in on are the ones the runners use, open on the pod and on its Service.
    assert graph.hosts == {"capture": {"address": "edge-demo-capture"},
                           "render": {"address": "edge-demo-render", "port": 7100}}
    ports = link_ports(graph)
    crossing = cross_host_links(graph)
    assert sorted(l.id for l in crossing) == ["back.out-tail.in", "mid.out-back.in", "mid.out-rec.in", "src.out-late.in"]
    for link in crossing:
        receiver = f"edge-demo-{host_of(graph, link.dst)}"
        assert ports[link.id] in found["ports"][receiver].values(), (link, found["ports"])
        assert ports[link.id] in [p["port"] for p in found["services"][receiver]["spec"]["ports"]]
    for end in tcp_links(graph).values():  # what the runners in the pods will bind and connect to
        assert end.bind == f"tcp://*:{end.port}"
        assert end.connect == f"tcp://edge-demo-{end.dst_host}:{end.port}"
    assert found["ports"]["edge-demo-render"] == {"link-7100": 7100, "link-7101": 7101, "link-7300": 7300,
                                                  "api": 9000}
    assert found["ports"]["edge-demo-capture"] == {"link-7000": 7000, "api": 9000}
    # the original file's graph, loaded as `avatar run` would, has the same links on the same ports
    original = parse_graph(path.read_text(), str(path), {"rate": "30"})
    validate_graph(original)
    assert link_ports(original) == ports


def test_the_schema_check_catches_unknown_fields():
    docs = export_k8s(TWO_HOSTS, options=ExportOptions(api_port=8081))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    check_schema(dep)
    dep["spec"]["replica"] = 2  # a typo Kubernetes would drop (or refuse)
    with pytest.raises(AssertionError, match="lost fields"):
        check_schema(dep)
    with pytest.raises(ValueError):  # a required field missing: the model refuses it
        _api._ApiClient__deserialize({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                                      "spec": {"template": {}}}, "V1Deployment")


def test_names_and_refusals(graph_file):
    assert k8s_name("My_Graph", "edge.1") == "my-graph-edge-1"
    assert k8s_name("9lives") == "g-9lives"
    long = k8s_name("x" * 80)
    assert len(long) == 63 and DNS_1035.match(long) and long != k8s_name("x" * 81)
    assert to_yaml([{"a": "one\ntwo\n"}]) == "---\na: |\n  one\n  two\n"

    bad = avatar("export", "k8s", graph_file("name: g\nnodes: {a: {type: nosuchtype}}\n"))
    assert bad.returncode == 2 and "nosuchtype" in bad.stderr
    path = graph_file(TWO_HOSTS, "two.yaml")
    res = avatar("export", "k8s", path, "--expose", "elsewhere=80")
    assert res.returncode == 2 and "elsewhere" in res.stderr
    res = avatar("export", "k8s", path, "--api", "7000")
    assert res.returncode == 2 and "port 7000" in res.stderr and "used twice" in res.stderr
    res = avatar("export", "k8s", path, "--max-replicas", "0")
    assert res.returncode == 2 and "max-replicas" in res.stderr
    res = avatar("export", "k8s", path, "nosucharg=1")
    assert res.returncode == 2 and "unknown arg 'nosucharg'" in res.stderr
