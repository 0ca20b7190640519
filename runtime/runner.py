"""The runner: starts one process per node, wires them, steers them, and reports on its bus.

All of its work happens in one asyncio loop on a background thread. The public blocking methods
(``start``, ``stats``, ``swap``, ...) are a thread-safe API over it for tests and the CLI; code
already on that loop (``runtime.control``) awaits their ``*_async`` twins, and any other thread
runs work there with ``on_loop``. Restarts and hang detection are ``runtime.supervisor``'s, the
hot swap is ``runtime.hotswap``'s, the messages to and from node processes ``runtime.protocol``'s.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import threading
from concurrent.futures import Future
from typing import Any, Callable, Coroutine, Mapping, Sequence

import zmq
import zmq.asyncio

from . import protocol as op
from .agents import AgentHost
from .bus import Bus
from .endpoints import tcp_links
from .errors import CallRefused, ControlError, GraphError, ParamError, ParamRefused, Problem
from .graph import Graph
from .hotswap import HotSwap
from .latency import LatencyTracker
from .nodeprocess import NodeProcess
from .params import SESSION_PARAMS, check_params, check_wire, merge_session, wire_problem
from .protocol import InputSpec, OutputSpec, SpawnSpec
from .state import StateStore, open_store
from .states import NULL, PAUSED, PLAYING, READY, rank
from .supervisor import Supervisor
from .transport import local_endpoint
from .validate import validate_graph

NodeHandler = Callable[[NodeProcess, dict[str, Any]], None]


class Runner:
    """Runs the nodes of one graph (or of one host of it) as OS processes."""

    def __init__(self, graph: Graph, *, host: str | None = None, control: str | None = None,
                 start_timeout: float = 30.0, drain_timeout: float = 5.0, stop_on_eos: bool = True):
        self.types = validate_graph(graph)
        if host is not None and host not in graph.hosts:
            known = ", ".join(graph.hosts) if graph.hosts else "none: the graph has no 'hosts:' table"
            raise GraphError([Problem(f"no host '{host}' in the graph's hosts ({known})", graph.file)])
        self.graph = graph
        self.host = host
        self.control_endpoint = control
        self.start_timeout, self.drain_timeout, self.stop_on_eos = start_timeout, drain_timeout, stop_on_eos
        self.run_id = secrets.token_hex(4)
        self.bus = Bus()
        self.local = graph.nodes_on(host)
        self.procs: dict[str, NodeProcess] = {}
        self.by_identity: dict[bytes, NodeProcess] = {}  # both sockets of each process: requests, heartbeats
        # links to or from another host: tcp, on the same ports every host's runner derives (runtime.endpoints)
        self.tcp = tcp_links(graph) if host is not None else {}
        self.endpoints = {l.id: self.tcp[l.id].connect if l.id in self.tcp else local_endpoint(self.run_id, l.id, 0)
                          for l in graph.links}
        self.supervisor = Supervisor(self)
        self.hotswap = HotSwap(self)
        self.state = NULL
        self.exit_code = 0
        self.eos_reached = False
        self.stopping = False
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        # the next process of a node gets the next instance number (its own ipc endpoints): one
        # counter per node, shared by restarts and swaps, so two new processes never collide
        self.next_instance = {n: 1 for n in self.local}
        self._handlers: dict[str, NodeHandler] = {
            op.REPLY: self._on_reply, op.STATE: self._on_state, op.BUS: self._on_bus, op.EOS: self._on_eos,
            op.MARK: lambda np, msg: self.hotswap.on_mark(np, msg["link"]), op.DRAINED: self.hotswap.on_drained,
            op.KEEP: lambda np, msg: self.keep(np.name, msg.get("params") or {}),
            op.BEAT: self.supervisor.on_beat, op.HELLO: lambda np, msg: None,
        }
        self._stop_task: asyncio.Future | None = None
        self._control_error: zmq.ZMQError | None = None  # the control endpoint could not be bound
        self._done = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.store: StateStore | None = None
        self.latency = LatencyTracker()  # the latency query (runtime.latency)
        # params a person set (CLI, API), node -> param -> who: agents leave them alone until unpinned
        self.pins: dict[str, dict[str, str]] = {}
        self.agents = AgentHost(self)  # runtime.agents: the graph's controllers of live params

    # --- public, blocking API ------------------------------------------------------------------
    def start(self) -> "Runner":
        """Start every node and bring the graph to PLAYING; raises RuntimeError if it cannot."""
        self._thread = threading.Thread(target=self._thread_main, name=f"runner-{self.graph.name}", daemon=True)
        self._thread.start()
        self._ready.wait()
        try:
            self.on_loop(self._start(), self.start_timeout + 15)
        except BaseException:
            self.stop(drain=False)
            raise
        return self

    def stop(self, drain: bool = True, timeout: float = 30.0) -> int:
        """Stop the graph (after letting sources finish and data drain, if ``drain``); the exit code."""
        if self.loop is not None and not self._done.is_set():
            try:
                self.on_loop(self.stop_async(drain), timeout)
            except ControlError:
                pass
        self._done.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        return self.exit_code

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the graph has stopped (EOS, failure or stop); False on timeout."""
        return self._done.wait(timeout)

    def stats(self, nodes: Sequence[str] | None = None) -> dict[str, Any]:
        """The graph's stats; ``nodes``: only these nodes' (a node busy in its own code answers
        nobody, and the others' need not wait for it)."""
        return self.on_loop(self.stats_async(nodes=nodes), 10)

    def unpin(self, node: str, *params: str) -> list[str]:
        """Give params a person set back to the agents (all of the node's, if none are named)."""
        return self.on_loop(lambda: self.unpin_now(node, params))

    def set_params(self, node: str, **params: Any) -> dict[str, Any]:
        return self.on_loop(self.set_params_async(node, params), 10)

    def set_session_params(self, node: str, session: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Per-session params for one session (``Param.per_session``; None gives one back)."""
        return self.on_loop(self.set_params_async(node, params, session=session), 10)

    def set_state(self, state: str) -> str:
        return self.on_loop(self.set_state_async(state), 20)

    def call(self, node: str, interface: str, args: Mapping[str, Any] | None = None, timeout: float = 5.0) -> Any:
        """Call into one of a node's interfaces (``Node.on_call``); its answer, or CallRefused."""
        return self.on_loop(self.call_async(node, interface, dict(args or {}), timeout), timeout + 5)

    def nodes_with(self, interface: str) -> list[str]:
        """The local running nodes whose type declares ``interface`` (``Node.interfaces``)."""
        return [name for name in list(self.procs) if interface in getattr(self.types.get(name), "interfaces", ())]

    def swap(self, node: str, type: str | None = None, params: Mapping[str, Any] | None = None,
             timeout: float = 30.0) -> int:
        """Replace a node by a new process (same or other type, new params) while the graph runs."""
        return self.on_loop(self.swap_async(node, type, dict(params or {}), timeout), timeout + 5)

    def pids(self) -> dict[str, int | None]:
        return {n: p.pid for n, p in list(self.procs.items())}

    def graph_info(self) -> dict[str, Any]:
        info = self.graph.to_dict()
        info["state"] = self.state
        info["pids"] = self.pids()
        if self.host is not None:
            info["host"], info["local"] = self.host, list(self.local)
        return info

    def on_loop(self, work: Coroutine[Any, Any, Any] | Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run a coroutine, or a plain callable, on the runner's loop thread (where the graph
        changes, so it never sees a half-made swap) and wait for its result. From any other thread."""
        fut = self._submit(work, "on_loop")
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    async def on_loop_async(self, work: Coroutine[Any, Any, Any] | Callable[[], Any], timeout: float = 10.0) -> Any:
        """``on_loop`` for code on another event loop (the control API's): awaits the result
        without holding a thread. TimeoutError after ``timeout`` seconds (the work is cancelled)."""
        fut = self._submit(work, "on_loop_async")
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except (TimeoutError, asyncio.CancelledError):
            fut.cancel()
            raise

    def _submit(self, work: Coroutine[Any, Any, Any] | Callable[[], Any], caller: str) -> "Future[Any]":
        """Hand work to the runner's loop; ControlError when the graph is not running."""
        if callable(work):  # a coroutine object is not callable
            async def call() -> Any:
                return work()

            coro = call()
        else:
            coro = work
        if self.loop is None or self._done.is_set() or self.loop.is_closed():
            coro.close()
            raise ControlError("the graph is not running")
        if self._thread is not None and threading.get_ident() == self._thread.ident:
            coro.close()  # waiting here for the loop would wait for ever
            raise RuntimeError(f"Runner.{caller} called on the runner's own loop; await the *_async method instead")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop closed between the check and now
            coro.close()
            raise ControlError("the graph is not running") from None

    def __enter__(self) -> "Runner":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop(drain=False)

    # --- public API on the runner's loop -------------------------------------------------------
    async def stats_async(self, agents: bool = True, nodes: Sequence[str] | None = None) -> dict[str, Any]:
        """Every local node's stats (and the runner's view: restarts, heartbeat age), joined per link;
        and the agents' (``agents``), with the params people pinned. ``nodes``: only these (a link
        with an end left out has that end's figures None)."""
        names = list(self.procs) if nodes is None else [self.proc(n).name for n in nodes]
        results = await asyncio.gather(*(self.request(self.procs[n], op.STATS, timeout=3) for n in names),
                                       return_exceptions=True)
        per_node: dict[str, Any] = {}
        for name, res in zip(names, results):
            np = self.procs[name]
            if isinstance(res, BaseException):
                res = {"state": np.state, "error": str(res), "pid": np.pid}
            res["restarts"] = self.supervisor.budgets[name].used
            res["heartbeat_age_s"] = self.supervisor.heartbeat_age(np)
            per_node[name] = res
        links = {}
        local = set(self.local)
        for l in self.graph.links:
            if l.src not in local and l.dst not in local:  # between two other hosts
                continue
            out = per_node.get(l.src, {}).get("outputs", {}).get(l.id, {})
            inp = per_node.get(l.dst, {}).get("inputs", {}).get(l.id, {})
            links[l.id] = {"from": f"{l.src}.{l.src_pad}", "to": f"{l.dst}.{l.dst_pad}", "policy": l.policy,
                           "size": l.size, "sent": out.get("sent"), "received": inp.get("received"),
                           "gaps": inp.get("gaps"), "drops": (out.get("drops") or 0) + (inp.get("drops") or 0),
                           "depth": inp.get("depth"), "feedback": l.feedback}
            if "latency" in inp:  # the data's age as the receiver takes it (runtime.transport.InLink.latency_stats)
                links[l.id]["latency"] = inp["latency"]
            t = self.tcp.get(l.id)
            if t is not None:  # one end here, the other on another host: that end's numbers are there
                end = out if l.src in local else inp
                links[l.id].update(transport="tcp", port=t.port, peer=t.peer_of(self.host), up=end.get("up"))
        result = {"graph": self.graph.name, "state": self.state, "nodes": per_node, "links": links}
        if agents and (self.agents.agents or self.pins):
            result["agents"] = self.agents.stats()
            result["pins"] = {n: dict(p) for n, p in self.pins.items() if p}
        if self.host is not None:
            result["host"] = self.host
        return result

    async def set_params_async(self, name: str, params: Mapping[str, Any], by: str | None = None,
                               session: str | None = None) -> dict[str, Any]:
        """Set live params; a refusal (ParamRefused, with the reason) changes nothing anywhere.

        Only what the node accepted is recorded (the graph's params, the state store), so the node's
        next process, after a crash or a swap, starts with the last values that worked. ``by``: the
        agent that sets them; None is a person (the CLI, the API), whose params are pinned: no agent
        changes them until ``unpin``. ``session``: the values are that session's own (per-session
        params; a None value gives one back to the node's), a change of ``session_params``."""
        np = self.proc(name)
        cls = self.types[name]
        try:
            check_wire(params)  # first: nothing below walks a value nested thousands deep
            if session is not None:
                params = self._session_change(name, cls, session, params)
            changed = check_params(cls.params, params, fill_defaults=False, state=np.state)
        except ParamError as exc:
            raise ParamRefused(f"node '{name}' ({self.graph.nodes[name].type}): {exc}") from None
        result = await self.request(np, op.PARAMS, params=changed)
        self.keep(name, {k: result[k] for k in changed if k in result})  # as the node holds them
        if by is None:
            pinned = self.pins.setdefault(name, {})
            for key in changed:
                pinned[key] = "person"
        await self.latency.update(self)  # latency query: a param may change a path's latency
        return result

    def _session_change(self, name: str, cls: Any, session: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` for one session as the change of ``session_params`` they make (ParamError if not)."""
        if SESSION_PARAMS not in cls.params:
            raise ParamError("its type has no per-session params")
        if not isinstance(session, str) or not session:
            raise ParamError(f"a session is a non-empty string, got {session!r}")
        if not params:
            raise ParamError("no params given for the session")
        current = self.graph.nodes[name].params.get(SESSION_PARAMS) or {}
        return {SESSION_PARAMS: merge_session(current, session, params)}

    def unpin_now(self, name: str, params: tuple[str, ...] | list[str] = ()) -> list[str]:
        """On the loop: unpin ``params`` of node ``name`` (all if empty); the ones that were pinned."""
        self.proc(name)  # an unknown node is a ControlError naming the nodes
        pinned = self.pins.get(name, {})
        freed = [k for k in (params or list(pinned)) if pinned.pop(k, None) is not None]
        if freed:
            self.bus.post("INFO", node=name, text=f"unpinned {', '.join(freed)}: agents may change them again")
        return freed

    async def call_async(self, name: str, interface: str, args: Mapping[str, Any], timeout: float = 5.0) -> Any:
        """Call into one of a node's interfaces (``Node.on_call``), like GStreamer's action signals.

        CallRefused at once when the node's type does not declare ``interface``, or with the node's
        reason when it refuses; ControlError when it does not answer within ``timeout``."""
        np = self.proc(name)
        cls = self.types[name]
        if interface not in cls.interfaces:
            have = ", ".join(sorted(cls.interfaces)) or "none"
            raise CallRefused(f"node '{name}' ({self.graph.nodes[name].type}) has no '{interface}' interface "
                              f"(its interfaces: {have})")
        why = wire_problem(dict(args))  # a value msgpack cannot carry is refused here, not lost on the way
        if why is not None:
            raise CallRefused(f"node '{name}': the '{interface}' call's arguments hold {why}")
        return await self.request(np, op.CALL, timeout=timeout, interface=interface, args=dict(args))

    async def set_state_async(self, target: str) -> str:
        if target not in (PAUSED, PLAYING):
            raise ControlError(f"state must be PAUSED or PLAYING, got '{target}'")
        sources = self.graph.entries(self.local)
        if target == PLAYING:  # everything downstream first, so sources lose nothing
            await self._all_to(PAUSED, self.procs)
            await self._all_to(PLAYING, {n: p for n, p in self.procs.items() if n not in sources})
            await self._all_to(PLAYING, {n: p for n, p in self.procs.items() if n in sources})
        else:
            await self._all_to(PAUSED, {n: p for n, p in self.procs.items() if n in sources})
            await self._all_to(PAUSED, self.procs)
        old, self.state = self.state, target
        self.bus.post("STATE_CHANGED", node=None, graph=self.graph.name, old=old, new=target)
        return target

    async def swap_async(self, name: str, type_: str | None, params: dict[str, Any], timeout: float = 30.0) -> int:
        return await self.hotswap.swap(name, type_, params, timeout)

    async def stop_async(self, drain: bool) -> None:
        """Stop once: later callers (EOS, a second Ctrl-C, a failure) wait for the first stop."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._do_stop(drain))
        await asyncio.shield(self._stop_task)

    # --- loop plumbing -------------------------------------------------------------------------
    def _thread_main(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()
            self._done.set()

    async def _serve(self) -> None:
        self.zctx = zmq.asyncio.Context()
        self.router = self.zctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self.node_endpoint = f"ipc://@avatar-{self.run_id}/runner"
        self.router.bind(self.node_endpoint)
        self._finished = asyncio.get_running_loop().create_future()
        tasks = [asyncio.ensure_future(self._recv_nodes()), asyncio.ensure_future(self.supervisor.watch())]
        if self.control_endpoint:
            from .control import serve_control

            try:
                sock = self.zctx.socket(zmq.ROUTER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.bind(self.control_endpoint)
                tasks.append(asyncio.ensure_future(serve_control(self, sock)))
            except zmq.ZMQError as exc:
                sock.close(0)
                self._control_error = exc
        self._ready.set()
        await self._finished
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.router.close(0)
        self.zctx.term()

    async def _recv_nodes(self) -> None:
        while True:
            ident, raw = await self.router.recv_multipart()
            np = self.by_identity.get(ident)
            if np is None:
                continue
            try:
                msg = op.unpack(raw)
                handler = self._handlers.get(msg.get("op", ""))
                if handler is not None:
                    handler(np, msg)
            except Exception as exc:  # a malformed control message must not kill the runner
                self.bus.post("WARNING", node=np.name, text=f"bad control message from node: {exc}")

    def _on_reply(self, np: NodeProcess, msg: dict[str, Any]) -> None:
        fut = self._pending.pop(msg["id"], None)
        if fut and not fut.done():
            fut.set_result(msg)

    def _on_state(self, np: NodeProcess, msg: dict[str, Any]) -> None:
        old = np.state
        np.set_state(msg["state"])
        self.bus.post("STATE_CHANGED", node=np.name, old=old, new=msg["state"], pid=np.pid)

    def _on_bus(self, np: NodeProcess, msg: dict[str, Any]) -> None:
        kind = msg.pop("type", "WARNING")
        msg.pop("op")
        if kind == "ERROR":
            np.last_error = msg.get("text")
            msg.pop("traceback", None)
        self.bus.post(kind, node=np.name, pid=np.pid, **msg)

    def _on_eos(self, np: NodeProcess, msg: dict[str, Any]) -> None:
        np.eos = True
        self._check_eos()

    async def request(self, np: NodeProcess, op_: str, timeout: float = 5.0, **fields: Any) -> Any:
        """Send a request to a node process and wait for its reply; ControlError if it refuses or is silent."""
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self.router.send_multipart([np.identity, op.pack(op_, id=rid, **fields)])
            reply = await asyncio.wait_for(fut, timeout)
        except zmq.ZMQError as exc:
            raise ControlError(f"node '{np.name}' is not reachable: {exc}") from None
        except asyncio.TimeoutError:
            raise ControlError(f"node '{np.name}' did not answer '{op_}' within {timeout}s") from None
        finally:
            self._pending.pop(rid, None)
        if not reply["ok"]:
            refused = (CallRefused if op_ == op.CALL else ParamRefused) if reply.get("refused") else ControlError
            raise refused(f"node '{np.name}': {reply['error']}")
        return reply["result"]

    # --- process plumbing, used by runtime.supervisor and runtime.hotswap ------------------------
    def proc(self, name: str) -> NodeProcess:
        """The running process of a local node; ControlError naming where it runs if not here."""
        np = self.procs.get(name)
        if np is None:
            if self.host is not None and name in self.graph.nodes:
                raise ControlError(f"no node '{name}' runs here: it runs on host '{self.graph.host_of(name)}', "
                                   f"this runner is host '{self.host}'; ask that host's runner")
            raise ControlError(f"no node '{name}' runs here (nodes: {', '.join(self.procs)})")
        return np

    def new_instance(self, name: str) -> int:
        n = self.next_instance.get(name, 1)
        self.next_instance[name] = n + 1
        return n

    def spawn(self, name: str, instance: int, defer: tuple[str, ...] = ()) -> NodeProcess:
        """``defer``: tcp inputs the new process binds only when told (``bind``: a hot-swap)."""
        node = self.graph.nodes[name]
        tcp = self.tcp
        inputs = []
        for l in self.graph.links_in(name):
            if l.id in tcp:  # from another host: the same port for every instance, it cannot be relinked
                inputs.append(InputSpec(l.id, l.dst_pad, tcp[l.id].bind, l.policy, l.size, l.feedback,
                                        peer=tcp[l.id].src_host, defer=l.id in defer))
            else:
                inputs.append(InputSpec(l.id, l.dst_pad, local_endpoint(self.run_id, l.id, instance), l.policy, l.size,
                                        l.feedback))
        outputs = [OutputSpec(l.id, l.src_pad, self.endpoints[l.id], l.policy, l.size,
                              peer=tcp[l.id].dst_host if l.id in tcp else None)
                   for l in self.graph.links_out(name)]
        spec = SpawnSpec(name=name, type=node.type, params=node.params, instance=instance, run_id=self.run_id,
                         control=self.node_endpoint, parent_pid=os.getpid(), host=self.host,
                         hang_timeout=node.hang_timeout, inputs=inputs, outputs=outputs)
        np = NodeProcess(spec)
        self.by_identity[np.identity] = self.by_identity[np.beat_identity] = np
        np.spawn(asyncio.get_running_loop(), self.supervisor.on_exit)
        return np

    async def bring(self, np: NodeProcess, target: str) -> None:
        """Step a node up through the states to ``target``."""
        if rank(np.state) < rank(READY):
            await np.wait_state(READY, self.start_timeout)
        for state in (PAUSED, PLAYING):
            if rank(state) <= rank(target) and rank(np.state) < rank(state):
                await self.request(np, op.STATE, state=state)

    async def relink_upstream(self, name: str, instance: int) -> None:
        """Point the senders into ``name`` at its new process's inputs."""
        for link in self.graph.links_in(name):
            if link.id in self.tcp:  # the sender is on another host: it reconnects to the same port by itself
                continue
            self.endpoints[link.id] = local_endpoint(self.run_id, link.id, instance)
            src = self.procs.get(link.src)
            if src is not None and src.state != NULL and not src.exited.done():
                await self.request(src, op.RELINK, link=link.id, endpoint=self.endpoints[link.id])

    def keep(self, name: str, params: Mapping[str, Any], replace: bool = False) -> None:
        """Live params are state: the next process of this node (restart, swap) starts with them."""
        self.graph.nodes[name].params.update(params)
        assert self.store is not None  # opened by _start, before any node runs
        try:
            self.store.save(name, params, replace)
        except Exception as exc:  # a store that went away must not take the graph with it
            self.bus.post("WARNING", node=name, text=f"state store {self.store.url}: params not saved: {exc}")

    # --- start and stop ------------------------------------------------------------------------
    async def _start(self) -> None:
        if self._control_error is not None:
            raise RuntimeError(f"cannot serve control at {self.control_endpoint}: {self._control_error} "
                               f"(is a graph named '{self.graph.name}' already running?)")
        self._restore_state()
        for name in self.local:
            self.procs[name] = self.spawn(name, 0)
        results = await asyncio.gather(*(p.wait_state(READY, self.start_timeout) for p in self.procs.values()),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for exc in failed:
                self.bus.post("ERROR", node=None, text=str(exc))
            self.exit_code = 1
            raise RuntimeError("; ".join(str(e) for e in failed))
        self.state = READY
        self.bus.post("STATE_CHANGED", node=None, graph=self.graph.name, old=NULL, new=READY, run_id=self.run_id,
                      pids=self.pids())
        await self.latency.update(self, report=True)  # latency query: nodes told before PLAYING
        await self.set_state_async(PLAYING)
        self.agents.start()

    def _restore_state(self) -> None:
        """Start every node with the live params its store kept (a graph started again, after a
        runner crash: the emotion, the viewers' levels of detail). Stale ones are reported, not used."""
        self.store = open_store(self.graph.state_store, self.graph.name)
        for name, saved in self.store.load().items():
            if name not in self.local or name not in self.types:
                continue
            try:
                check_wire(saved)
                self.graph.nodes[name].params.update(check_params(self.types[name].params, saved, fill_defaults=False))
            except ParamError as exc:
                self.bus.post("WARNING", node=name, text=f"saved params in {self.store.url} not used: {exc}")

    async def _all_to(self, state: str, procs: Mapping[str, NodeProcess]) -> None:
        await asyncio.gather(*(self.request(p, op.STATE, state=state) for p in procs.values() if p.state != state))

    def _check_eos(self) -> None:
        terminals = self.graph.terminals(self.local)
        if self.eos_reached or not all(self.procs[n].eos for n in terminals):
            return
        self.eos_reached = True
        self.bus.post("EOS", node=None, graph=self.graph.name)
        if self.stop_on_eos:
            asyncio.ensure_future(self.stop_async(drain=False))

    async def _do_stop(self, drain: bool) -> None:
        if drain and self.state == PLAYING and not self.eos_reached:
            entries = self.graph.entries(self.local)
            sources = [p for n, p in self.procs.items() if n in entries]
            await asyncio.gather(*(self.request(p, op.EOS, timeout=2) for p in sources), return_exceptions=True)
            for _ in range(int(self.drain_timeout * 50)):
                if self.eos_reached:
                    break
                await asyncio.sleep(0.02)
            else:
                self.bus.post("WARNING", node=None, text=f"drain did not reach EOS within {self.drain_timeout}s")
        self.stopping = True
        await self.agents.stop()
        self.supervisor.cancel_restarts()
        procs = [p for p in self.procs.values() if p.proc and not p.exited.done()]
        for p in procs:
            p.expected_exit = True
            try:
                await self.router.send_multipart([p.identity, op.pack(op.STOP)])
            except zmq.ZMQError:
                pass
        await asyncio.gather(*(p.kill() for p in procs))
        old, self.state = self.state, NULL
        self.bus.post("STATE_CHANGED", node=None, graph=self.graph.name, old=old, new=NULL)
        if self.store is not None:
            self.store.close()
        if not self._finished.done():
            self._finished.set_result(None)
