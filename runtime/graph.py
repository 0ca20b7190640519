"""The graph model, and loading it from YAML with ``${args}`` substituted.

YAML syntax errors raise here. Structure problems (missing keys, bad link syntax, unknown args)
are collected on ``Graph.problems`` and reported by ``runtime.validate`` together with those that
need the node registry (types, pads, params, caps), so a user sees every problem at once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .agents.spec import AgentSpec, parse_agents
from .errors import GraphError, Problem
from .params import parse_value
from .state import check_state_url
from .yamlsource import MAX_DEPTH, LineDict, LineList, NestingError, line_at, load_yaml

POLICIES = ("leaky", "block")
RESTART_POLICIES = ("always", "on-failure", "never")
NODE_KEYS = ("type", "params", "host", "restart", "max_restarts", "hang_timeout")
DEFAULT_HANG_TIMEOUT = 5.0  # seconds without a heartbeat (or a turn of its loop) before a node counts as hung
DEFAULT_LINK: dict[str, Any] = {"policy": "leaky", "size": 8}
LINK_OPTIONS = ("policy", "size", "feedback")
TOP_KEYS = ("name", "description", "args", "hosts", "nodes", "links", "link_defaults", "state", "agents")
HOST_KEYS = ("address", "port", "bind")  # a hosts table entry (runtime.endpoints says what they do)
_ARG = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
MAX_VALUES = 100_000  # values a graph may hold once its YAML aliases are expanded (a 'billion laughs' guard)


@dataclass
class NodeSpec:
    name: str
    type: str
    params: dict[str, Any] = field(default_factory=dict)
    host: str | None = None
    restart: str = "on-failure"
    max_restarts: int = 10
    hang_timeout: float = DEFAULT_HANG_TIMEOUT
    line: int | None = None
    type_line: int | None = None
    param_lines: dict[str, int | None] = field(default_factory=dict)


@dataclass
class LinkSpec:
    src: str
    src_pad: str | None
    dst: str
    dst_pad: str | None
    policy: str = "leaky"
    size: int = 8
    line: int | None = None
    feedback: bool = False  # runs upstream (a sink's requests back to an encoder): may close a cycle
    port: int | None = None  # TCP port when the link crosses hosts (default: derived, runtime.endpoints)

    @property
    def forward(self) -> bool:
        return not self.feedback

    @property
    def id(self) -> str:
        return f"{self.src}.{self.src_pad}-{self.dst}.{self.dst_pad}"

    def __str__(self) -> str:
        return f"{self.src}.{self.src_pad} -> {self.dst}.{self.dst_pad}"


@dataclass
class Graph:
    name: str
    nodes: dict[str, NodeSpec]
    links: list[LinkSpec]
    args: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    file: str = "<graph>"
    state_store: str | None = None
    agents: dict[str, AgentSpec] = field(default_factory=dict)  # runtime.agents: controllers of live params
    problems: list[Problem] = field(default_factory=list)  # structure problems, reported by validate_graph

    def nodes_on(self, host: str | None) -> list[str]:
        """Names of the nodes one runner starts: all of them, or those placed on ``host``."""
        if host is None:
            return list(self.nodes)
        return [n for n in self.nodes if self.host_of(n) == host]

    def host_of(self, node: str) -> str | None:
        """The host a node runs on: its ``host:``, else the first of the hosts table (None without one)."""
        return self.nodes[node].host or next(iter(self.hosts), None)

    # --- topology ------------------------------------------------------------------------------
    def links_in(self, name: str, forward: bool = False) -> list[LinkSpec]:
        """Links into ``name``; ``forward``: without feedback links (a source may take requests)."""
        return [l for l in self.links if l.dst == name and (l.forward or not forward)]

    def links_out(self, name: str) -> list[LinkSpec]:
        return [l for l in self.links if l.src == name]

    def link(self, link_id: str) -> LinkSpec | None:
        return next((l for l in self.links if l.id == link_id), None)

    def entries(self, local: list[str]) -> set[str]:
        """Nodes of ``local`` fed by none of them: the sources, and the first nodes of one host's part
        of a multi-host graph. They play last and are the ones asked to end the stream on a drain."""
        here = set(local)
        return {n for n in local if not any(l.src in here for l in self.links_in(n, forward=True))}

    def terminals(self, local: list[str]) -> list[str]:
        """Nodes of ``local`` that feed none of them; EOS there is all of them having ended their stream."""
        here = set(local)
        return [n for n in local if not any(l.forward and l.dst in here for l in self.links_out(n))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "args": dict(self.args),
            "hosts": dict(self.hosts),
            "nodes": {
                n: {"type": s.type, "params": dict(s.params), "host": s.host, "restart": s.restart,
                    "hang_timeout": s.hang_timeout}
                for n, s in self.nodes.items()
            },
            "links": [
                {"from": f"{l.src}.{l.src_pad}", "to": f"{l.dst}.{l.dst_pad}", "policy": l.policy, "size": l.size,
                 **({"feedback": True} if l.feedback else {}), **({"port": l.port} if l.port is not None else {})}
                for l in self.links
            ],
            **({"agents": {n: a.to_dict() for n, a in self.agents.items()}} if self.agents else {}),
        }


def load_graph(path: str | Path, overrides: Mapping[str, str] | None = None) -> Graph:
    """Load a graph file; raises GraphError with file and line for every problem found."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GraphError([Problem(f"cannot read graph: {exc.strerror}", str(path))]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise GraphError([Problem(f"not UTF-8 text: byte {data[exc.start]:#04x} ({exc.reason}); a graph file is "
                                  f"UTF-8", str(path), line)]) from None
    return parse_graph(text, str(path), overrides, default_name=path.stem)


def parse_graph(text: str, file: str = "<graph>", overrides: Mapping[str, str] | None = None,
                default_name: str = "graph") -> Graph:
    try:
        doc = load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = line_at(text, mark.index) if mark else None
        what = exc.problem or str(exc)
        kind = "YAML" if isinstance(exc, NestingError) else "YAML syntax error:"
        raise GraphError([Problem(f"{kind} {what}", file, line)]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: located by position
        line = line_at(text, exc.position) if isinstance(exc.position, int) else None
        raise GraphError([Problem(f"YAML syntax error: unacceptable character #x{exc.character:04x}: {exc.reason}",
                                  file, line)]) from None
    except yaml.YAMLError as exc:
        raise GraphError([Problem(f"YAML syntax error: {exc}", file)]) from None
    except RecursionError:  # yamlsource limits the nesting first: a safety net, never a crash
        raise GraphError([Problem("YAML nested too deeply", file)]) from None
    if not isinstance(doc, LineDict):
        raise GraphError([Problem("a graph is a YAML mapping with 'nodes' and 'links'", file, 1)])
    return graph_from_dict(doc, file, overrides, default_name)


def graph_from_dict(doc: Mapping[str, Any], file: str = "<graph>",
                    overrides: Mapping[str, str] | None = None, default_name: str = "graph") -> Graph:
    problems: list[Problem] = []
    p = lambda msg, line=None: problems.append(Problem(msg, file, line))  # noqa: E731
    line = lambda d, k=None: d.line_of(k) if isinstance(d, (LineDict, LineList)) else None  # noqa: E731

    _check_size(doc, file)  # before anything walks it: aliases may make it huge
    for key in doc:
        if key not in TOP_KEYS:
            p(f"unknown top-level key '{key}' (allowed: {', '.join(TOP_KEYS)})", line(doc, key))

    raw_args = doc.get("args")
    args: dict[str, Any] = {}
    if raw_args is not None and not isinstance(raw_args, Mapping):
        p(f"'args' must be a mapping of arg name -> value, got {_kind(raw_args)}", line(doc, "args"))
    for key, value in (raw_args.items() if isinstance(raw_args, Mapping) else ()):
        if not isinstance(key, str) or not _ARG.fullmatch(f"${{{key}}}"):
            p(f"bad arg name {key!r}: use letters, digits and '_', not starting with a digit", line(raw_args, key))
        else:
            args[key] = value
    for key, raw in (overrides or {}).items():
        if key not in args:
            known = ", ".join(sorted(args)) or "none"
            p(f"unknown arg '{key}' given on the command line; the graph's args: {known}")
        else:
            args[key] = parse_value(raw) if isinstance(raw, str) else raw
            _check_size(args[key], file, f"arg '{key}' given on the command line")
    doc = _substitute(doc, args, problems, file, skip=("args",))

    defaults = dict(DEFAULT_LINK)
    raw_defaults = doc.get("link_defaults")
    if raw_defaults is not None and not isinstance(raw_defaults, Mapping):
        p(f"'link_defaults' must be a mapping like {{policy: leaky, size: 8}}, got {_kind(raw_defaults)}",
          line(doc, "link_defaults"))
    for key, value in (raw_defaults.items() if isinstance(raw_defaults, Mapping) else ()):
        if key in LINK_OPTIONS:
            defaults[key] = value
        else:
            p(f"link_defaults: unknown key '{key}' (allowed: {', '.join(LINK_OPTIONS)})", line(raw_defaults, key))
    nodes: dict[str, NodeSpec] = {}
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, Mapping) or not raw_nodes:
        p("the graph needs a 'nodes' mapping of node name -> {type, params}", line(doc, "nodes") or 1)
        raw_nodes = {}
    for name, spec in raw_nodes.items():
        nline = line(raw_nodes, name)
        if not isinstance(name, str) or not _NAME.match(name):
            p(f"bad node name '{name}': use letters, digits, '_' and '-'", nline)
            continue
        if isinstance(spec, str):
            spec = LineDict(type=spec)
        if not isinstance(spec, Mapping) or "type" not in spec:
            p(f"node '{name}' needs a 'type'", nline)
            continue
        for key in spec:
            if key not in NODE_KEYS:
                p(f"node '{name}': unknown key '{key}' (allowed: {', '.join(NODE_KEYS)})", line(spec, key))
        raw_params = spec.get("params") or {}
        params: dict[str, Any] = {}
        if not isinstance(raw_params, Mapping):
            p(f"node '{name}': 'params' must be a mapping of param name -> value, got {_kind(raw_params)}",
              line(spec, "params"))
            raw_params = {}
        for key, value in raw_params.items():
            if isinstance(key, str):
                params[key] = value
            else:
                p(f"node '{name}': a param name is a string, got {type(key).__name__} {key!r}", line(raw_params, key))
        ntype = spec["type"]
        if not isinstance(ntype, str) or not ntype:
            p(f"node '{name}': type must be a node type name or 'module:Class', got {ntype!r}", line(spec, "type"))
            continue
        restart = spec.get("restart", "on-failure")
        if not isinstance(restart, str) or restart not in RESTART_POLICIES:
            p(f"node '{name}': restart must be one of {', '.join(RESTART_POLICIES)}, got {restart!r}", line(spec, "restart"))
        max_restarts = spec.get("max_restarts", 10)
        if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
            p(f"node '{name}': max_restarts must be a whole number >= 0, got {max_restarts!r}", line(spec, "max_restarts"))
            max_restarts = 10
        hang_timeout = spec.get("hang_timeout", DEFAULT_HANG_TIMEOUT)
        if (not isinstance(hang_timeout, (int, float)) or isinstance(hang_timeout, bool)
                or not 0.2 <= hang_timeout <= 3600):
            p(f"node '{name}': hang_timeout must be a number of seconds from 0.2 to 3600, got {hang_timeout!r}",
              line(spec, "hang_timeout"))
            hang_timeout = DEFAULT_HANG_TIMEOUT
        nodes[name] = NodeSpec(
            name=name, type=ntype, params=params, host=spec.get("host"),
            restart=restart, max_restarts=max_restarts, hang_timeout=float(hang_timeout), line=nline,
            type_line=line(spec, "type"), param_lines={k: line(raw_params, k) for k in params},
        )

    links: list[LinkSpec] = []
    raw_links = doc.get("links") or []
    if not isinstance(raw_links, list):
        p(f"'links' must be a list of links ('a.out -> b.in' or {{from: a.out, to: b.in}}), got {_kind(raw_links)}",
          line(doc, "links"))
        raw_links = []
    for i, entry in enumerate(raw_links):
        lline = line(raw_links, i)
        opts = dict(defaults)
        port = None
        if isinstance(entry, str):
            chain = entry
        elif isinstance(entry, Mapping):
            if "from" in entry and "to" in entry:
                chain = f"{entry['from']} -> {entry['to']}"
            elif "chain" in entry:
                chain = str(entry["chain"])
            else:
                p("a link is 'a.out -> b.in', or a mapping with 'from' and 'to' (or 'chain')", lline)
                continue
            opts.update({k: v for k, v in entry.items() if k in LINK_OPTIONS})
            for key in entry:
                if key not in ("from", "to", "chain", "port", *LINK_OPTIONS):
                    p(f"link: unknown key '{key}' (allowed: from, to, chain, port, {', '.join(LINK_OPTIONS)})", line(entry, key))
            if "port" in entry:  # only here: in link_defaults it would give every link one port
                given = entry["port"]
                if not isinstance(given, int) or isinstance(given, bool) or not 1 <= given <= 65535:
                    p(f"link '{chain}': port must be a TCP port number (1 .. 65535), got {given!r}", line(entry, "port"))
                elif "chain" in entry and len(str(entry["chain"]).split("->")) > 2:
                    p(f"link '{chain}': 'port' names one link's port, and a chain makes several; give each its own link",
                      line(entry, "port"))
                else:
                    port = given
        else:
            p(f"bad link entry {entry!r}", lline)
            continue
        if opts["policy"] not in POLICIES:
            p(f"link '{chain}': policy must be 'leaky' or 'block', got '{opts['policy']}'", lline)
        if not isinstance(opts["size"], int) or isinstance(opts["size"], bool) or opts["size"] < 1:
            p(f"link '{chain}': size must be a positive integer, got {opts['size']!r}", lline)
        if not isinstance(opts.get("feedback", False), bool):
            p(f"link '{chain}': feedback must be true or false, got {opts['feedback']!r}", lline)
        elif opts.get("feedback"):
            if isinstance(entry, Mapping) and entry.get("policy") == "block":
                p(f"link '{chain}': a feedback link must be leaky (two links blocking on each other deadlock)", lline)
            opts["policy"] = "leaky"
        ends = [s.strip() for s in chain.split("->")]
        if len(ends) < 2 or not all(ends):
            p(f"bad link '{chain}': expected 'node.pad -> node.pad'", lline)
            continue
        for a, b in zip(ends, ends[1:]):
            src, _, spad = a.partition(".")
            dst, _, dpad = b.partition(".")
            links.append(LinkSpec(src, spad or None, dst, dpad or None, opts["policy"], opts["size"], lline,
                                 opts.get("feedback") is True, port))

    hosts = _hosts(doc, p, line)
    state_problem = check_state_url(doc.get("state"))
    if state_problem:
        p(state_problem, line(doc, "state"))
    agents = parse_agents(doc.get("agents"), p, line, line(doc, "agents"))
    return Graph(
        name=str(doc.get("name") or default_name), nodes=nodes, links=links, args=args,
        hosts=hosts, file=file, state_store=doc.get("state"), agents=agents, problems=problems,
    )


def _hosts(doc: Mapping[str, Any], p, line) -> dict[str, dict[str, Any]]:
    """The hosts table: name -> {address, port, bind}; ``name: ADDRESS`` is short for ``{address: ADDRESS}``."""
    raw = doc.get("hosts")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        p("'hosts' must be a mapping of host name -> {address, port, bind}", line(doc, "hosts"))
        return {}
    hosts: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        hline = line(raw, name)
        if not isinstance(name, str) or not _NAME.match(name):
            p(f"bad host name '{name}': use letters, digits, '_' and '-'", hline)
            continue
        if isinstance(entry, str):
            entry = {"address": entry}
        if not isinstance(entry, Mapping):
            p(f"host '{name}': expected {{address: ..., port: ...}} or an address, got {entry!r}", hline)
            continue
        for key in entry:
            if key not in HOST_KEYS:
                p(f"host '{name}': unknown key '{key}' (allowed: {', '.join(HOST_KEYS)})", line(entry, key))
        address = entry.get("address")
        if address is None or address == "":
            p(f"host '{name}' needs an 'address' (the IP address or DNS name the other hosts reach it at)", hline)
        elif not isinstance(address, str):
            p(f"host '{name}': address must be a string (an IP address or DNS name), got {address!r}", line(entry, "address"))
        port = entry.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
            p(f"host '{name}': port must be a TCP port number (1 .. 65535), got {port!r}", line(entry, "port"))
        bind = entry.get("bind")
        if bind is not None and (not isinstance(bind, str) or not bind):
            p(f"host '{name}': bind must be an interface address (or '*'), got {bind!r}", line(entry, "bind"))
        hosts[name] = dict(entry)
    return hosts


def _kind(value: Any) -> str:
    """What a YAML value is, for a message: 'a list', 'int 5'."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _line(container: Any, key: Any, default: int | None) -> int | None:
    return container.line_of(key) if isinstance(container, (LineDict, LineList)) else default


class _TooDeep(Exception):
    def __init__(self, line: int | None):
        self.line = line


def _check_size(doc: Any, file: str, what: str = "") -> None:
    """Refuse a document that YAML aliases (``&a`` ... ``*a``) expand beyond MAX_VALUES values, or nest
    deeper than MAX_DEPTH, before anything walks it as a tree: nine lines of aliases nested ten by ten
    are 10**8 strings (a 'billion laughs'). Each shared object is measured once (memoized by id)."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}  # levels of lists and mappings below and including a value
    shared = False

    def size(value: Any, depth: int, where: int | None) -> int:
        nonlocal shared
        if isinstance(value, str):
            return 1 + len(value) // 100
        if not isinstance(value, (Mapping, list, tuple)):
            return 1
        if depth >= MAX_DEPTH:
            raise _TooDeep(where)
        known = sizes.get(id(value))
        if known is not None:  # measured before: how deep it goes from here still counts
            shared = True
            if depth + heights[id(value)] > MAX_DEPTH:
                raise _TooDeep(where)
            return known
        n, height = 1, 1
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for k, v in items:
            if isinstance(value, Mapping):
                n += size(k, depth + 1, where)
            n += size(v, depth + 1, _line(value, k, where))
            height = max(height, 1 + heights.get(id(v), 0))
        sizes[id(value)], heights[id(value)] = n, height
        return n

    prefix = f"{what}: " if what else ""
    try:
        total = size(doc, 0, getattr(doc, "line", None))
    except _TooDeep as exc:
        raise GraphError([Problem(f"{prefix}nested too deeply (more than {MAX_DEPTH} levels of lists and "
                                  f"mappings, counting what aliases refer to)", file, exc.line)]) from None
    if total <= MAX_VALUES or not shared:
        return
    # point at the smallest value that is too big: descend while a child is
    value, where = doc, getattr(doc, "line", None)
    while True:
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        big = next(((k, v) for k, v in items
                    if isinstance(v, (Mapping, list, tuple)) and sizes[id(v)] > MAX_VALUES), None)
        if big is None:
            break
        where = _line(value, big[0], where)
        value = big[1]
    raise GraphError([Problem(f"{prefix}YAML aliases expand this value to {sizes[id(value)]} values, more than "
                              f"the {MAX_VALUES} a graph may have (each *alias repeats what its &anchor names)",
                              file, where)])


def _substitute(value: Any, args: Mapping[str, Any], problems: list[Problem], file: str,
                skip: tuple[str, ...] = (), line: int | None = None) -> Any:
    """Replace ``${name}`` in every string; a string that is exactly ``${name}`` takes the arg's type."""
    if isinstance(value, LineDict):
        out = LineDict()
        out.line, out.lines = value.line, dict(value.lines)
        for k, v in value.items():
            out[k] = v if k in skip else _substitute(v, args, problems, file, (), value.line_of(k))
        return out
    if isinstance(value, LineList):
        out_list = LineList(_substitute(v, args, problems, file, (), value.line_of(i)) for i, v in enumerate(value))
        out_list.line, out_list.lines = value.line, list(value.lines)
        return out_list
    if isinstance(value, dict):
        return {k: _substitute(v, args, problems, file, (), line) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, args, problems, file, (), line) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _ARG.fullmatch(value)

    def lookup(name: str) -> Any:
        if name not in args:
            known = ", ".join(sorted(args)) or "none"
            problems.append(Problem(f"undefined arg '${{{name}}}'; the graph's args: {known}", file, line))
            return ""
        return args[name]

    if whole:
        return lookup(whole.group(1))
    return _ARG.sub(lambda m: str(lookup(m.group(1))), value)
