"""The Grafana dashboard under tools/grafana: valid JSON whose queries use the metrics a real runner serves."""
from __future__ import annotations

import json
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT

DASHBOARD = ROOT / "tools" / "grafana" / "avatar-dashboard.json"

GRAPH = """
name: dashtest
nodes:
  src: {type: testsrc, params: {rate: 200}}
  mid: {type: identity}
  sink: {type: fakesink}
links:
  - src -> mid
  - {from: mid.out, to: sink.in, policy: block, size: 16}
agents:  # so the agents' metrics are served too
  pace: {type: target, node: src, param: rate, min: 100, max: 300, params: {watch: nodes.sink.node.count, rate: true, target: 200}}
"""

_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
             "inf", "nan"}
_NAME = re.compile(r"(?<![\w$.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_RATE_ARG = re.compile(r"\b(?:rate|irate|increase|resets)\s*\(\s*([A-Za-z_:][\w:]*)")


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    return _GROUPING.sub("", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and numbers left out)."""
    return {m for m in _NAME.findall(_strip(expr)) if m.lower() not in _KEYWORDS}


def rated_names(expr: str) -> set[str]:
    """Metric names inside rate(), increase(), resets(): they must be counters (or histogram series)."""
    return set(_RATE_ARG.findall(_strip(expr)))


def test_metric_name_parser():
    assert metric_names('histogram_quantile(0.99, sum by (node, le) (rate(a_bucket{job=~"$job"}[$__rate_interval])))') \
        == {"a_bucket"}
    assert metric_names('count(x{a="b c"} == 0) or vector(0)') == {"x"}
    assert metric_names("sum(rate(a_sum[5m])) / sum(rate(a_count[5m])) and on(node) up") == {"a_sum", "a_count", "up"}
    assert rated_names("sum by (node) (rate(c_total{x=\"1\"}[1m])) + resets(d_total[1h])") == {"c_total", "d_total"}


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return [p for p in out if p["type"] != "row"]


def expressions(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in panels(dash) for t in p["targets"]]
    for v in dash["templating"]["list"]:
        exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", v["query"]["query"]))
    return exprs


def test_dashboard_is_an_importable_grafana_dashboard():
    dash = load_dashboard()
    assert dash["schemaVersion"] == 39 and dash["uid"] and dash["title"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        assert p["title"] and p["description"]
    titles = " | ".join(p["title"] for p in panels(dash))
    for wanted in ("Messages out / s", "Drops / s per link", "Gaps / s per link", "Restarts", "Processing time p50 / p99",
                   "Sink latency p50 / p99", "Queue depth", "Node up"):
        assert wanted in titles
    for e in expressions(dash):  # balanced, so Grafana gets what we meant
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}") and e.count("[") == e.count("]"), e


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> dict[str, str]:
    """Sample name -> family type, from the /metrics of a real `avatar run --api`."""
    from tests.helpers import AvatarProcess, wait_until

    path = tmp_path_factory.mktemp("dash") / "g.yaml"
    path.write_text(GRAPH)
    proc = AvatarProcess("run", str(path), "--no-control", "--api", "127.0.0.1:0", "--api-insecure-local")
    try:
        url = proc.wait_for(lambda m: m["type"] == "API_LISTENING")["url"]
        last = {"text": ""}

        def complete() -> dict[str, str] | None:
            last["text"] = httpx.get(f"{url}/metrics", timeout=20).text
            samples = {s.name: f.type for f in text_string_to_metric_families(last["text"]) for s in f.samples}
            if all(n in samples for n in ("avatar_sink_latency_seconds_bucket", "avatar_link_gaps_total",
                                          "avatar_link_latency_seconds_bucket", "avatar_agent_looks_total")):
                return samples
            return None

        return wait_until(complete, 30, 0.2, lambda: f"complete metrics; the last scrape:\n{last['text']}")
    finally:
        proc.kill()


def test_every_query_names_only_metrics_a_runner_serves(scraped):
    dash = load_dashboard()
    used: set[str] = set()
    for expr in expressions(dash):
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - scraped.keys()
        assert not unknown, f"{expr!r} names {sorted(unknown)}, not served (served: {sorted(scraped)})"
        for name in rated_names(expr):
            assert scraped[name] in ("counter", "histogram"), f"rate of a {scraped[name]}: {expr!r}"
        used |= names
    for expr in (t["expr"] for p in panels(dash) for t in p["targets"]):
        if "histogram_quantile" in expr:
            assert all(n.endswith("_bucket") for n in metric_names(expr)), expr
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in scraped if scraped[n] == "histogram"} | \
               {n for n in scraped if scraped[n] != "histogram"}
    unused = {f for f in families if not any(u == f or u.startswith(f + "_") for u in used)}
    assert not unused, f"metrics no panel shows: {sorted(unused)}"
