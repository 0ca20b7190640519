"""The ``avatar`` command: run, launch, validate, inspect, dot, and steer a running graph."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Sequence

from . import logs
from .bus import to_json_line
from .control import ControlClient, control_endpoint
from .errors import ControlError, GraphError, NodeTypeError, ParamRefused
from .inspect_text import describe_type, list_types
from .launch import parse_launch
from .params import parse_value

if TYPE_CHECKING:
    from .graph import Graph

# The runner, the graph model and its validator (networkx) load in the commands that use them:
# ``avatar set``, ``stop``, ``stats``... only talk to a running graph's control socket.


def _kv(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"avatar: expected {what} as key=value, got '{item}'")
        out[key] = value
    return out


def _load(path: str, overrides: Sequence[str]) -> Graph:
    from .graph import load_graph
    from .validate import validate_graph

    graph = load_graph(path, _kv(overrides, "graph args"))
    validate_graph(graph)
    return graph


def _write_output(path: str | None, text: str) -> None:
    """``-o FILE``, or standard output."""
    if path:
        with open(path, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def cmd_validate(a: argparse.Namespace) -> int:
    graph = _load(a.graph, a.args)
    print(f"{a.graph}: ok ({len(graph.nodes)} nodes, {len(graph.links)} links)")
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    sys.stdout.write(describe_type(a.type) if a.type else list_types())
    return 0


def cmd_dot(a: argparse.Namespace) -> int:
    from .dot import to_dot
    from .graph import load_graph
    from .validate import validate_graph

    graph = load_graph(a.graph, _kv(a.args, "graph args"))
    given = {name: dict(spec.params) for name, spec in graph.nodes.items()}
    validate_graph(graph)
    for name, params in given.items():  # draw what the user wrote, not every default
        graph.nodes[name].params = params
    _write_output(a.output, to_dot(graph))
    return 0


def _expose(items: Sequence[str]) -> dict[str | None, list[int]]:
    out: dict[str | None, list[int]] = {}
    for item in items:
        host, eq, port = item.rpartition("=")
        if not port.isdigit():
            raise SystemExit(f"avatar: --expose takes PORT or HOST=PORT, got '{item}'")
        out.setdefault(host if eq else None, []).append(int(port))
    return out


def cmd_export(a: argparse.Namespace) -> int:
    from .k8s import ExportOptions, export_k8s, to_yaml

    try:
        with open(a.graph) as f:
            text = f.read()
    except OSError as exc:
        print(f"avatar: cannot read graph {a.graph}: {exc.strerror}", file=sys.stderr)
        return 2
    options = ExportOptions(image=a.image, namespace=a.namespace, api_port=a.api, api_secret=a.api_secret,
                            max_replicas=a.max_replicas, cpu_target=a.cpu_target, cpu_request=a.cpu_request,
                            memory_request=a.memory_request, expose=_expose(a.expose or []),
                            log_format=a.log_format, drain_timeout=a.drain_timeout)
    stem = a.graph.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    try:
        objects = export_k8s(text, a.graph, _kv(a.args, "graph args"), options, default_name=stem)
    except ValueError as exc:
        print(f"avatar: {exc}", file=sys.stderr)
        return 2
    _write_output(a.output, to_yaml(objects))
    return 0


def _api_config(a: argparse.Namespace):
    """The control API's settings from ``--api*`` flags (None without ``--api``); checked here."""
    if not a.api:
        if a.api_insecure_local or a.api_secret_file or a.api_cors or a.api_cert or a.api_key or a.api_max_upload:
            raise ValueError("the --api-* options need --api HOST:PORT")
        return None
    from .api import ApiConfig, parse_listen, parse_size

    host, port = parse_listen(a.api)
    upload = parse_size(a.api_max_upload) if a.api_max_upload else ApiConfig.max_upload_bytes
    origins = [o.strip() for item in a.api_cors or [] for o in item.split(",") if o.strip()]
    config = ApiConfig(host=host, port=port, secret_file=a.api_secret_file, insecure_local=a.api_insecure_local,
                       cors_origins=origins, rate=a.api_rate, burst=a.api_burst, tls_cert=a.api_cert,
                       tls_key=a.api_key, max_upload_bytes=upload)
    config.check()
    return config


def _setup_logs(a: argparse.Namespace) -> bool:
    """Logs of the runner and (through the environment) of its node processes; False if refused."""
    try:
        a.log_format = logs.configure(fmt=a.log_format)
    except ValueError as exc:  # a bad $AVATAR_LOG_FORMAT
        print(f"avatar: {exc}", file=sys.stderr)
        return False
    logs.pass_to_nodes(a.log_format)
    return True


def _say(a: argparse.Namespace, text: str) -> None:
    """A problem for the person at the terminal: a plain line, or a JSON log record."""
    if getattr(a, "log_format", "text") == "json":
        logging.getLogger("avatar.runner").error(text)
    else:
        print(f"avatar: {text}", file=sys.stderr, flush=True)


def _run(graph: Graph, a: argparse.Namespace) -> int:
    from .runner import Runner

    if not _setup_logs(a):
        return 2
    try:
        api_config = _api_config(a)
    except ValueError as exc:  # ApiConfigError
        _say(a, str(exc))
        return 2
    control = None if a.no_control else (a.control or control_endpoint(graph.name))
    runner = Runner(graph, host=getattr(a, "host", None), control=control, drain_timeout=a.drain_timeout)
    lock = threading.Lock()

    def echo(msg: dict[str, Any]) -> None:
        with lock:
            print(to_json_line(msg), flush=True)
            if msg.get("type") == "INFO" and msg.get("url") and a.log_format == "text":  # a page to open: say so
                print(f"avatar: {msg.get('node')}: open {msg['url']}", file=sys.stderr, flush=True)

    runner.bus.subscribe(echo)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        runner.start()
    except (RuntimeError, TimeoutError, ControlError) as exc:
        _say(a, f"graph '{graph.name}' did not start: {exc}")
        return 1
    api = None
    if api_config is not None:
        from .api import ApiServer

        try:
            api = ApiServer(runner, api_config).start()
        except (OSError, RuntimeError, ValueError) as exc:
            _say(a, str(exc))
            runner.stop(drain=False)
            return 1
    try:
        while not runner.wait(0.1):
            if stop.is_set():
                runner.stop(drain=True)
                break
        return runner.stop(drain=False)
    finally:
        if api is not None:
            api.stop()


def cmd_run(a: argparse.Namespace) -> int:
    return _run(_load(a.graph, a.args), a)


def cmd_launch(a: argparse.Namespace) -> int:
    from .validate import validate_graph

    graph = parse_launch(" ".join(a.line), policy=a.policy, size=a.size, name=a.name)
    validate_graph(graph)
    return _run(graph, a)


def cmd_token(a: argparse.Namespace) -> int:
    from .api import ApiConfig, make_token

    try:
        secret = ApiConfig(secret_file=a.secret_file).secret()
    except ValueError as exc:  # ApiConfigError
        print(f"avatar: {exc}", file=sys.stderr)
        return 1
    if secret is None:
        print("avatar: no API secret: set $AVATAR_API_SECRET or give --secret-file", file=sys.stderr)
        return 1
    print(make_token(secret, a.role, a.ttl, a.sub))
    return 0


def _client(a: argparse.Namespace) -> ControlClient:
    return ControlClient(a.control or control_endpoint(a.graph_name))


def cmd_stats(a: argparse.Namespace) -> int:
    fields = {"nodes": a.nodes} if a.nodes else {}
    print(json.dumps(_client(a).request("stats", **fields), indent=2, default=str))
    return 0


def cmd_set(a: argparse.Namespace) -> int:
    params = {k: parse_value(v) for k, v in _kv(a.params, "params").items()}
    extra = {"session": a.session} if a.session is not None else {}
    print(json.dumps(_client(a).request("params", node=a.node, params=params, **extra), default=str))
    return 0


def cmd_unpin(a: argparse.Namespace) -> int:
    print(json.dumps({"node": a.node, "unpinned": _client(a).request("unpin", node=a.node, params=a.params)}))
    return 0


def cmd_swap(a: argparse.Namespace) -> int:
    params = {k: parse_value(v) for k, v in _kv(a.params, "params").items()}
    pid = _client(a).request("swap", node=a.node, type=a.type, params=params)
    print(json.dumps({"node": a.node, "pid": pid}))
    return 0


def cmd_state(a: argparse.Namespace) -> int:
    print(_client(a).request("state", state=a.state.upper()))
    return 0


def cmd_stop(a: argparse.Namespace) -> int:
    print(_client(a).request("stop", drain=not a.now))
    return 0


COMMANDS_GROUP = "avatar.commands"  # entry points: name = "module:function", the function adds its subparser


def command_plugins() -> dict[str, str]:
    """Extra subcommands: the ``avatar.commands`` entry points, and ``$AVATAR_COMMANDS``
    (``name=module:function,...``: a checkout whose installed metadata predates its entry points)."""
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=COMMANDS_GROUP)}
    for item in filter(None, (s.strip() for s in os.environ.get("AVATAR_COMMANDS", "").split(","))):
        name, eq, target = item.partition("=")
        if eq and ":" in target:
            found[name.strip()] = target.strip()
    return found


def _add_plugins(sub: Any) -> None:
    """Each plug-in command adds its own subparser; one that cannot load says why when it is used."""
    for name, target in sorted(command_plugins().items()):
        if name in sub.choices:  # a built-in command is never replaced
            continue
        module, _, fn = target.partition(":")
        try:
            getattr(importlib.import_module(module), fn)(sub)
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not take the other commands down
            why = f"command '{name}' ({target}) cannot load: {type(exc).__name__}: {exc}"
            sp = sub.add_parser(name, help=f"(cannot load: {exc})", add_help=False)
            sp.add_argument("rest", nargs=argparse.REMAINDER)
            sp.set_defaults(fn=lambda a, why=why: print(f"avatar: {why}", file=sys.stderr) or 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avatar", description="Avatar Engine: run and steer YAML graphs of node processes.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def run_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--control", help="control endpoint to serve (default ipc://@avatar-ctl/<graph name>)")
        sp.add_argument("--no-control", action="store_true", help="serve no control channel")
        sp.add_argument("--drain-timeout", type=float, default=5.0, metavar="S",
                        help="on Ctrl-C, how long sources' EOS may take to reach the sinks (default 5)")
        sp.add_argument("--log-format", choices=logs.FORMATS, default=None,
                        help="stderr logs of the runner and every node: text lines, or one JSON object per "
                             "line (default: $AVATAR_LOG_FORMAT, else text)")
        api = sp.add_argument_group("control API (HTTP, see docs/api.md)")
        api.add_argument("--api", metavar="HOST:PORT", help="serve the control API here (e.g. 127.0.0.1:8081)")
        api.add_argument("--api-secret-file", metavar="F",
                         help="file holding the JWT signing secret (default: $AVATAR_API_SECRET)")
        api.add_argument("--api-insecure-local", action="store_true",
                         help="no authentication at all; refused unless HOST is a loopback address")
        api.add_argument("--api-cors", action="append", metavar="ORIGIN",
                         help="allow browser calls from this origin (repeat or comma-separate for several)")
        api.add_argument("--api-cert", metavar="F", help="TLS certificate (PEM); serves HTTPS")
        api.add_argument("--api-key", metavar="F", help="TLS private key (PEM)")
        api.add_argument("--api-rate", type=float, default=20.0, metavar="N",
                         help="requests per second per client (default 20)")
        api.add_argument("--api-burst", type=int, default=40, metavar="N", help="burst per client (default 40)")
        api.add_argument("--api-max-upload", metavar="SIZE",
                         help="largest voice body POST /speak takes, in bytes or with K, M, G (default 64M)")

    sp = sub.add_parser("run", help="run a graph; bus messages are printed as JSON lines")
    sp.add_argument("graph", help="graph YAML file")
    sp.add_argument("args", nargs="*", metavar="key=value", help="graph args overriding the YAML's defaults")
    sp.add_argument("--host", help="run only the nodes placed on this host of the graph's hosts table")
    run_opts(sp)
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("launch", help='run a one-liner: avatar launch "testsrc rate=60 ! identity ! fakesink"')
    sp.add_argument("line", nargs="+", help="TYPE key=value ... ! TYPE ... (NAME. refers to a named node)")
    sp.add_argument("--policy", choices=("leaky", "block"), default=None,
                    help="queue policy of every link (default: what each input pad asks for: block into recorder, "
                         "audio_phoneme and viseme, leaky elsewhere)")
    sp.add_argument("--size", type=int, default=8, help="queue size of every link")
    sp.add_argument("--name", default="launch", help="graph name (names the control channel)")
    run_opts(sp)
    sp.set_defaults(fn=cmd_launch)

    sp = sub.add_parser("validate", help="check a graph; prints every problem with file and line")
    sp.add_argument("graph")
    sp.add_argument("args", nargs="*", metavar="key=value")
    sp.set_defaults(fn=cmd_validate)

    sp = sub.add_parser("inspect", help="list node and agent types, or describe one (pads, caps, params)")
    sp.add_argument("type", nargs="?")
    sp.set_defaults(fn=cmd_inspect)

    sp = sub.add_parser("dot", help="write a graph as Graphviz dot")
    sp.add_argument("graph")
    sp.add_argument("args", nargs="*", metavar="key=value")
    sp.add_argument("-o", "--output", help="file to write (default stdout)")
    sp.set_defaults(fn=cmd_dot)

    sp = sub.add_parser("export", help="render a graph for a cluster: avatar export k8s G.yaml > avatar.yaml",
                        description="Kubernetes objects that run the graph: a ConfigMap with the graph, and per "
                                    "host group a Deployment, a Service for the ports it listens on and a "
                                    "HorizontalPodAutoscaler (docs/operations.md).")
    sp.add_argument("target", choices=("k8s",), help="what to render (k8s: Kubernetes manifests)")
    sp.add_argument("graph")
    sp.add_argument("args", nargs="*", metavar="key=value", help="graph args, baked into the ConfigMap's graph")
    sp.add_argument("-o", "--output", help="file to write (default stdout)")
    sp.add_argument("--image", default="avatar-engine:latest", help="container image with avatar installed "
                    "(default avatar-engine:latest)")
    sp.add_argument("--namespace", help="namespace of every object (default: kubectl's)")
    sp.add_argument("--api", type=int, metavar="PORT", help="serve the control API on this port in every pod, "
                    "with /health probes; its secret comes from a Secret (--api-secret)")
    sp.add_argument("--api-secret", metavar="NAME", help="Secret whose key 'secret' holds the API's JWT secret "
                    "(default <graph>-api)")
    sp.add_argument("--max-replicas", type=int, default=1, metavar="N",
                    help="autoscaler maximum per host group (default 1; each replica is an independent copy)")
    sp.add_argument("--cpu-target", type=int, default=80, metavar="PCT",
                    help="average CPU utilisation the autoscaler aims at (default 80)")
    sp.add_argument("--cpu-request", metavar="Q", help="CPU request per pod (default 100m per node)")
    sp.add_argument("--memory-request", metavar="Q", help="memory request per pod (default 128Mi per node)")
    sp.add_argument("--expose", action="append", metavar="[HOST=]PORT",
                    help="another port a node listens on (a web page); without HOST, on the first host group")
    sp.add_argument("--log-format", choices=logs.FORMATS, default="json", help="the pods' log format (default json)")
    sp.add_argument("--drain-timeout", type=float, default=5.0, metavar="S", help="the runners' --drain-timeout")
    sp.set_defaults(fn=cmd_export)

    sp = sub.add_parser("token", help="print a control API bearer token signed with the configured secret")
    sp.add_argument("--role", choices=("viewer", "operator", "admin"), default="viewer",
                    help="viewer reads; operator also sets params and emotion; admin also swaps nodes")
    sp.add_argument("--ttl", type=float, default=3600.0, metavar="S", help="seconds until it expires (default 3600)")
    sp.add_argument("--sub", help="the client's name (its rate-limit bucket; default: random)")
    sp.add_argument("--secret-file", metavar="F", help="file holding the secret (default: $AVATAR_API_SECRET)")
    sp.set_defaults(fn=cmd_token)

    def ctl(name: str, help_: str, fn) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("-g", "--graph-name", default="launch", help="name of the running graph (default 'launch')")
        sp.add_argument("--control", help="control endpoint (default ipc://@avatar-ctl/<graph name>)")
        sp.set_defaults(fn=fn)
        return sp

    sp = ctl("stats", "print a running graph's node and link stats as JSON: avatar stats -g G [NODE ...] (only those "
                      "nodes': a node busy in its own code answers after 3 s, with an error)", cmd_stats)
    sp.add_argument("nodes", nargs="*", help="only these nodes (default: all)")
    sp = ctl("set", "set params of a running node: avatar set -g G NODE key=value ... (pins them: agents leave "
                    "them alone until avatar unpin)", cmd_set)
    sp.add_argument("node")
    sp.add_argument("params", nargs="+", metavar="key=value")
    sp.add_argument("--session", metavar="S", help="set the params for session S alone (params a node type declares "
                                                   "per-session; key=null gives S the node's value again)")
    sp = ctl("unpin", "give params a person set back to the graph's agents: avatar unpin -g G NODE [param ...] "
                      "(none named: all of the node's)", cmd_unpin)
    sp.add_argument("node")
    sp.add_argument("params", nargs="*", metavar="param")
    sp = ctl("swap", "hot-swap a running node: avatar swap -g G NODE [--type T] [key=value ...]", cmd_swap)
    sp.add_argument("node")
    sp.add_argument("--type", help="new node type (default: the same type)")
    sp.add_argument("params", nargs="*", metavar="key=value")
    sp = ctl("state", "set a running graph's state", cmd_state)
    sp.add_argument("state", choices=("PAUSED", "PLAYING", "paused", "playing"))
    sp = ctl("stop", "stop a running graph (draining first unless --now)", cmd_stop)
    sp.add_argument("--now", action="store_true")
    _add_plugins(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except GraphError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        n = len(exc.problems)
        print(f"avatar: {n} problem{'s' if n != 1 else ''} found", file=sys.stderr)
        return 2
    except ParamRefused as exc:  # a refused value changed nothing: like an invalid graph, exit 2
        print(f"avatar: refused: {exc}", file=sys.stderr)
        return 2
    except (ControlError, NodeTypeError) as exc:
        print(f"avatar: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
