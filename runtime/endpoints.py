"""Where a link's two ends meet: ``ipc://`` inside one host, ``tcp://`` between hosts.

Every runner of a multi-host graph parses the same YAML, so every runner derives the same TCP
port for every cross-host link from the graph alone; nothing is negotiated at run time.

A host's entry in the ``hosts:`` table::

    hosts:
      edge:   {address: 10.0.0.1}                      # port 7000 and up, listens on every interface
      render: {address: render.lan, port: 7100, bind: 10.0.0.2}

* ``address`` (required): where the other hosts reach this one (an IP address or a DNS name).
* ``port``: the first TCP port of the links this host receives from other hosts (default 7000);
  they take it and the next ones, in the order the graph lists the links. A link may name its
  own with ``port:``; the numbered ones then skip it.
* ``bind``: the interface its receiving ends listen on (default ``*``, every interface).

The receiving node binds ``tcp://<bind>:<port>``; the sending node connects to
``tcp://<address>:<port>``. The receiving endpoint never changes while the graph runs (a
restarted node binds the same port again), so a sender on another host never has to be told.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .graph import HOST_KEYS, Graph, LinkSpec  # noqa: F401 (HOST_KEYS: re-exported)

DEFAULT_BASE_PORT = 7000
DEFAULT_BIND = "*"

# tcp link sockets: a peer that vanishes without a word (killed host, pulled cable) is noticed by
# missed heartbeats within HEARTBEAT_TIMEOUT_MS; a connect to a host that does not answer is retried
# every RECONNECT_IVL_MAX_MS at most.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
CONNECT_TIMEOUT_MS = 2000
RECONNECT_IVL_MAX_MS = 500


@dataclass(frozen=True)
class TcpLink:
    """The two ends of one cross-host link."""

    link: str  # LinkSpec.id
    src_host: str
    dst_host: str
    port: int
    connect: str  # what the sending node connects to
    bind: str  # what the receiving node binds

    def peer_of(self, host: str | None) -> str:
        """The host at the other end, seen from ``host``."""
        return self.src_host if host == self.dst_host else self.dst_host


def host_of(graph: Graph, node: str) -> str | None:
    """The host a node runs on: its ``host:``, else the first of the hosts table (None without one)."""
    return graph.host_of(node)


def cross_host_links(graph: Graph) -> list[LinkSpec]:
    """Links whose two ends run on different hosts, in graph order."""
    if not graph.hosts:
        return []
    return [l for l in graph.links if host_of(graph, l.src) != host_of(graph, l.dst)]


def _entry(graph: Graph, host: str | None) -> Mapping[str, Any]:
    entry = graph.hosts.get(host) if host is not None else None
    return entry if isinstance(entry, Mapping) else {}


def first_port(graph: Graph, host: str | None) -> int:
    port = _entry(graph, host).get("port", DEFAULT_BASE_PORT)
    return port if isinstance(port, int) and not isinstance(port, bool) else DEFAULT_BASE_PORT


def link_ports(graph: Graph) -> dict[str, int]:
    """The TCP port each cross-host link is received on, by link id (pads must be resolved).

    A link's own ``port:`` wins; the others take their receiving host's ``port`` and the next ones
    in graph order, skipping the ports the links into that host name themselves.
    """
    crossing = cross_host_links(graph)
    taken: dict[str | None, set[int]] = {}
    for link in crossing:
        if link.port is not None:
            taken.setdefault(host_of(graph, link.dst), set()).add(link.port)
    ports: dict[str, int] = {}
    following: dict[str | None, int] = {}
    for link in crossing:
        if link.port is not None:
            ports[link.id] = link.port
            continue
        host = host_of(graph, link.dst)
        port = following.get(host, first_port(graph, host))
        while port in taken.get(host, ()):
            port += 1
        ports[link.id] = port
        following[host] = port + 1
    return ports


def tcp_links(graph: Graph) -> dict[str, TcpLink]:
    """Every cross-host link's endpoints, by link id (empty for a graph without a hosts table)."""
    ports = link_ports(graph)
    out: dict[str, TcpLink] = {}
    for link in cross_host_links(graph):
        src, dst = host_of(graph, link.src), host_of(graph, link.dst)
        entry = _entry(graph, dst)
        port = ports[link.id]
        out[link.id] = TcpLink(link.id, str(src), str(dst), port,
                               connect=f"tcp://{_bracket(str(entry.get('address', '')))}:{port}",
                               bind=f"tcp://{_bracket(str(entry.get('bind', DEFAULT_BIND)))}:{port}")
    return out


def _bracket(address: str) -> str:
    """An IPv6 literal in an endpoint needs brackets."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def port_problems(graph: Graph) -> list[tuple[str, int | None]]:
    """Cross-host ports out of range, or used twice on one address: (message, line) pairs."""
    problems: list[tuple[str, int | None]] = []
    ports = link_ports(graph)
    used: dict[tuple[str, int], LinkSpec] = {}
    for link in cross_host_links(graph):
        port = ports[link.id]
        host = host_of(graph, link.dst)
        if not 1 <= port <= 65535:
            problems.append((f"link {link}: port {port} (received on host '{host}') is not in 1 .. 65535", link.line))
            continue
        address = str(_entry(graph, host).get("address", host))
        key = (address, port)
        if key in used:
            first = used[key]
            other = host_of(graph, first.dst)
            if other == host:
                problems.append((f"link {link}: port {port} on host '{host}' is already used by link {first}; "
                                 f"give one link another 'port:'", link.line))
            else:
                problems.append((f"link {link}: port {port} on host '{host}' is already used by link {first} on "
                                 f"host '{other}' (both at {address}); give one of the hosts another 'port:' in "
                                 f"the hosts table", link.line))
            continue
        used[key] = link
    return problems
