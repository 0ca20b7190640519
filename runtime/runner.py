"""The runner: starts one process per node, wires them, steers them, and reports on its bus.

All of its work happens in one asyncio loop on a background thread; the public methods are
a thread-safe, blocking API over it (tests use it directly, the CLI through ``runtime.control``).
"""
from __future__ import annotations

import asyncio
import copy
import itertools
import os
import secrets
import threading
from typing import Any, Mapping

import msgpack
import zmq
import zmq.asyncio

from .bus import Bus
from .endpoints import tcp_links
from .errors import ControlError, GraphError, ParamError, Problem
from .graph import Graph, LinkSpec
from .latency import LatencyTracker
from .params import check_params, check_wire, shown_text
from .proctools import exit_cause
from .state import StateStore, open_store
from .states import NULL, PAUSED, PLAYING, READY, rank
from .supervisor import NodeProcess, RestartBudget
from .transport import BIND_RETRY_S, ipc_endpoint
from .validate import validate_graph


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
        self.by_identity: dict[bytes, NodeProcess] = {}
        # links to or from another host: tcp, on the same ports every host's runner derives (runtime.endpoints)
        self.tcp = tcp_links(graph) if host is not None else {}
        self.endpoints = {l.id: self.tcp[l.id].connect if l.id in self.tcp else ipc_endpoint(self.run_id, l.id, 0)
                          for l in graph.links}
        self.budgets = {n: RestartBudget(graph.nodes[n].max_restarts) for n in self.local}
        self.state = NULL
        self.exit_code = 0
        self.eos_reached = False
        self.stopping = False
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._marks: dict[str, asyncio.Future] = {}
        self._drained: dict[str, asyncio.Future] = {}
        self._swapping: set[str] = set()
        # the next process of a node gets the next instance number (its own ipc endpoints): one
        # counter per node, shared by restarts and swaps, so two new processes never collide
        self.next_instance = {n: 1 for n in self.local}
        self._restarts: dict[str, asyncio.Task] = {}  # pending restarts (asleep, or bringing up)
        self._respawned: set[str] = set()  # nodes whose pending restart has already spawned its process
        self._stop_task: asyncio.Future | None = None
        self._control_error: zmq.ZMQError | None = None  # the control endpoint could not be bound
        self._done = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.store: StateStore | None = None
        self.latency = LatencyTracker()  # the latency query (runtime.latency)

    # --- public, blocking API ------------------------------------------------------------------
    def start(self) -> "Runner":
        """Start every node and bring the graph to PLAYING; raises RuntimeError if it cannot."""
        self._thread = threading.Thread(target=self._thread_main, name=f"runner-{self.graph.name}", daemon=True)
        self._thread.start()
        self._ready.wait()
        try:
            self._call(self._start(), self.start_timeout + 15)
        except BaseException:
            self.stop(drain=False)
            raise
        return self

    def stop(self, drain: bool = True, timeout: float = 30.0) -> int:
        """Stop the graph (after letting sources finish and data drain, if ``drain``); the exit code."""
        if self.loop is not None and not self._done.is_set():
            try:
                self._call(self._stop(drain), timeout)
            except ControlError:
                pass
        self._done.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        return self.exit_code

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the graph has stopped (EOS, failure or stop); False on timeout."""
        return self._done.wait(timeout)

    def stats(self) -> dict[str, Any]:
        return self._call(self._stats(), 10)

    def set_params(self, node: str, **params: Any) -> dict[str, Any]:
        return self._call(self._set_params(node, params), 10)

    def set_state(self, state: str) -> str:
        return self._call(self._set_graph_state(state), 20)

    def swap(self, node: str, type: str | None = None, params: Mapping[str, Any] | None = None,
             timeout: float = 30.0) -> int:
        """Replace a node by a new process (same or other type, new params) while the graph runs."""
        return self._call(self._swap(node, type, dict(params or {}), timeout), timeout + 5)

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in list(self.procs.items())}

    def __enter__(self) -> "Runner":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop(drain=False)

    # --- loop plumbing -------------------------------------------------------------------------
    def _call(self, coro, timeout: float):
        if self.loop is None or self._done.is_set() or self.loop.is_closed():
            coro.close()
            raise ControlError("the graph is not running")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

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
        tasks = [asyncio.ensure_future(self._recv_nodes())]
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
                self._on_node_message(np, msgpack.unpackb(raw, raw=False))
            except Exception as exc:  # a malformed control message must not kill the runner
                self.bus.post("WARNING", node=np.name, text=f"bad control message from node: {exc}")

    def _on_node_message(self, np: NodeProcess, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        np.last_seen = asyncio.get_running_loop().time()
        if op == "reply":
            fut = self._pending.pop(msg["id"], None)
            if fut and not fut.done():
                fut.set_result(msg)
        elif op == "state":
            old = np.state
            np.set_state(msg["state"])
            self.bus.post("STATE_CHANGED", node=np.name, old=old, new=msg["state"], pid=np.pid)
        elif op == "bus":
            kind = msg.pop("type", "WARNING")
            msg.pop("op")
            if kind == "ERROR":
                np.last_error = msg.get("text")
                msg.pop("traceback", None)
            self.bus.post(kind, node=np.name, pid=np.pid, **msg)
        elif op == "eos":
            np.eos = True
            self._check_eos()
        elif op == "mark":
            fut = self._marks.get(msg["link"])
            if fut is not None:
                if not fut.done():
                    fut.set_result(True)
            elif self.procs.get(np.name) is np and np.name not in self._swapping:
                self._release_stray_mark(msg["link"])
        elif op == "drained":
            fut = self._drained.get(np.name)
            if fut and not fut.done():
                fut.set_result(msg)
        elif op == "keep":
            self._keep(np.name, msg.get("params") or {})

    async def _request(self, np: NodeProcess, op: str, timeout: float = 5.0, **fields: Any) -> Any:
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self.router.send_multipart([np.identity, msgpack.packb({"op": op, "id": rid, **fields}, use_bin_type=True)])
            reply = await asyncio.wait_for(fut, timeout)
        except zmq.ZMQError as exc:
            raise ControlError(f"node '{np.name}' is not reachable: {exc}") from None
        except asyncio.TimeoutError:
            raise ControlError(f"node '{np.name}' did not answer '{op}' within {timeout}s") from None
        finally:
            self._pending.pop(rid, None)
        if not reply["ok"]:
            raise ControlError(f"node '{np.name}': {reply['error']}")
        return reply["result"]

    # --- processes ---------------------------------------------------------------------------
    def _links_in(self, name: str, forward: bool = False) -> list[LinkSpec]:
        """Links into ``name``; ``forward``: without feedback links (a source may take requests)."""
        return [l for l in self.graph.links if l.dst == name and (l.forward or not forward)]

    def _links_out(self, name: str) -> list[LinkSpec]:
        return [l for l in self.graph.links if l.src == name]

    def _entries(self) -> set[str]:
        """Local nodes fed by no local node: the sources, and the first nodes of this host's part of
        a multi-host graph. They play last and are the ones asked to end the stream on a drain."""
        local = set(self.local)
        return {n for n in self.local if not any(l.src in local for l in self._links_in(n, forward=True))}

    def _terminals(self) -> list[str]:
        """Local nodes that feed no local node; EOS here is all of them having ended their stream."""
        local = set(self.local)
        return [n for n in self.local if not any(l.forward and l.dst in local for l in self._links_out(n))]

    def _new_instance(self, name: str) -> int:
        n = self.next_instance.get(name, 1)
        self.next_instance[name] = n + 1
        return n

    def _spawn(self, name: str, instance: int, defer: tuple[str, ...] = ()) -> NodeProcess:
        """``defer``: tcp inputs the new process binds only when told (``bind``: a hot-swap)."""
        spec = self.graph.nodes[name]
        tcp = self.tcp
        inputs = []
        for l in self._links_in(name):
            d = {"id": l.id, "pad": l.dst_pad, "policy": l.policy, "size": l.size, "feedback": l.feedback}
            if l.id in tcp:  # from another host: the same port for every instance, it cannot be relinked
                d.update(endpoint=tcp[l.id].bind, peer=tcp[l.id].src_host, defer=l.id in defer)
            else:
                d["endpoint"] = ipc_endpoint(self.run_id, l.id, instance)
            inputs.append(d)
        outputs = []
        for l in self._links_out(name):
            d = {"id": l.id, "pad": l.src_pad, "endpoint": self.endpoints[l.id], "policy": l.policy, "size": l.size}
            if l.id in tcp:
                d["peer"] = tcp[l.id].dst_host
            outputs.append(d)
        wire = {
            "name": name, "type": spec.type, "params": spec.params, "instance": instance, "host": self.host,
            "run_id": self.run_id, "control": self.node_endpoint, "parent_pid": os.getpid(),
            "inputs": inputs, "outputs": outputs,
        }
        np = NodeProcess(name, instance, wire)
        self.by_identity[np.identity] = np
        np.spawn(asyncio.get_running_loop(), self._on_exit)
        return np

    async def _bring(self, np: NodeProcess, target: str) -> None:
        """Step a node up through the states to ``target``."""
        if rank(np.state) < rank(READY):
            await np.wait_state(READY, self.start_timeout)
        for state in (PAUSED, PLAYING):
            if rank(state) <= rank(target) and rank(np.state) < rank(state):
                await self._request(np, "state", state=state)

    async def _start(self) -> None:
        if self._control_error is not None:
            raise RuntimeError(f"cannot serve control at {self.control_endpoint}: {self._control_error} "
                               f"(is a graph named '{self.graph.name}' already running?)")
        self._restore_state()
        for name in self.local:
            self.procs[name] = self._spawn(name, 0)
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
        await self._set_graph_state(PLAYING)

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

    def _keep(self, name: str, params: Mapping[str, Any], replace: bool = False) -> None:
        """Live params are state: the next process of this node (restart, swap) starts with them."""
        self.graph.nodes[name].params.update(params)
        try:
            self.store.save(name, params, replace)
        except Exception as exc:  # a store that went away must not take the graph with it
            self.bus.post("WARNING", node=name, text=f"state store {self.store.url}: params not saved: {exc}")

    async def _set_graph_state(self, target: str) -> str:
        if target not in (PAUSED, PLAYING):
            raise ControlError(f"state must be PAUSED or PLAYING, got '{target}'")
        sources = self._entries()
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

    async def _all_to(self, state: str, procs: Mapping[str, NodeProcess]) -> None:
        await asyncio.gather(*(self._request(p, "state", state=state) for p in procs.values() if p.state != state))

    def _on_exit(self, np: NodeProcess) -> None:
        self.by_identity.pop(np.identity, None)
        if np.expected_exit or self.stopping:
            return
        rc = np.proc.returncode
        spec = self.graph.nodes[np.name]
        text = f"node '{np.name}' ({spec.type}, pid {np.pid}) {exit_cause(rc)}"
        if np.last_error:
            text += f": {np.last_error}"
        self.bus.post("ERROR", node=np.name, pid=np.pid, text=text, returncode=rc)
        restart = spec.restart == "always" or (spec.restart == "on-failure" and rc != 0)
        if restart and self.budgets[np.name].take():
            self._schedule_restart(np)
            return
        why = f"restart policy '{spec.restart}'" if not restart else f"{spec.max_restarts} restarts within 60s"
        self.bus.post("ERROR", node=np.name, text=f"node '{np.name}' is not restarted ({why}); stopping the graph")
        self.exit_code = 1
        asyncio.ensure_future(self._stop(drain=False))

    def _schedule_restart(self, old: NodeProcess) -> None:
        name = old.name
        task = self._restarts[name] = asyncio.ensure_future(self._restart(old))
        task.add_done_callback(lambda t: self._restarts.pop(name) if self._restarts.get(name) is t else None)

    async def _restart(self, old: NodeProcess) -> None:
        """Start a new process for a node that died. A swap of the node, begun while this one
        waits, replaces the dead process itself: the restart then spawns nothing."""
        name = old.name
        try:
            await asyncio.sleep(min(2.0, 0.05 * 2 ** (self.budgets[name].used - 1)))
            if self.stopping:
                return
            if name in self._swapping or self.procs.get(name) is not old:
                self.bus.post("INFO", node=name, text=f"restart of '{name}' not needed: a swap replaces it")
                return
            new = self._spawn(name, self._new_instance(name))
            self.procs[name] = new
            self._respawned.add(name)
            try:
                await self._bring(new, READY)
                await self.latency.update(self)  # latency query: the new process is told
                await self._bring(new, self.state)
                await self._relink_upstream(name, new.instance)
            except (RuntimeError, TimeoutError, ControlError) as exc:
                self.bus.post("WARNING", node=name, text=f"restart of '{name}' did not complete: {exc}")
                return
            self.bus.post("NODE_RESTARTED", node=name, pid=new.pid, restarts=self.budgets[name].used)
        finally:
            self._respawned.discard(name)

    async def _settle_restart(self, name: str, timeout: float) -> None:
        """Before a swap: a restart still asleep is called off (the swap replaces the dead
        process); one already bringing its process up is waited for (the swap replaces that one)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            task = self._restarts.get(name)
            if task is None or task.done():
                return
            if name not in self._respawned:
                task.cancel()
                self._restarts.pop(name, None)
                return
            left = deadline - asyncio.get_running_loop().time()
            try:  # its process may die again, and the next restart be pending: look again
                await asyncio.wait_for(asyncio.shield(task), max(left, 0.0))
            except asyncio.TimeoutError:
                raise ControlError(f"node '{name}' is being restarted; try the swap again later") from None

    def _release_stray_mark(self, link_id: str) -> None:
        """A hold's MARK reached a node no swap is draining (the node it was meant for died before
        taking it, and the sender's relink carried it on to the new one): the sender holds that
        link since, for nothing. Release it."""
        link = next((l for l in self.graph.links if l.id == link_id), None)
        src = self.procs.get(link.src) if link is not None else None
        if src is None or src.exited.done() or link_id in self.tcp or link.src in self._swapping:
            return

        async def release() -> None:
            try:
                await self._request(src, "relink", link=link_id, endpoint=self.endpoints[link_id])
            except ControlError as exc:
                self.bus.post("WARNING", node=link.src, text=f"link {link_id}: not released after a swap: {exc}")

        asyncio.ensure_future(release())

    async def _relink_upstream(self, name: str, instance: int) -> None:
        for link in self._links_in(name):
            if link.id in self.tcp:  # the sender is on another host: it reconnects to the same port by itself
                continue
            self.endpoints[link.id] = ipc_endpoint(self.run_id, link.id, instance)
            src = self.procs.get(link.src)
            if src is not None and src.state != NULL and not src.exited.done():
                await self._request(src, "relink", link=link.id, endpoint=self.endpoints[link.id])

    def _check_eos(self) -> None:
        terminals = self._terminals()
        if self.eos_reached or not all(self.procs[n].eos for n in terminals):
            return
        self.eos_reached = True
        self.bus.post("EOS", node=None, graph=self.graph.name)
        if self.stop_on_eos:
            asyncio.ensure_future(self._stop(drain=False))

    async def _stop(self, drain: bool) -> None:
        """Stop once: later callers (EOS, a second Ctrl-C, a failure) wait for the first stop."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._do_stop(drain))
        await asyncio.shield(self._stop_task)

    async def _do_stop(self, drain: bool) -> None:
        if drain and self.state == PLAYING and not self.eos_reached:
            entries = self._entries()
            sources = [p for n, p in self.procs.items() if n in entries]
            await asyncio.gather(*(self._request(p, "eos", timeout=2) for p in sources), return_exceptions=True)
            for _ in range(int(self.drain_timeout * 50)):
                if self.eos_reached:
                    break
                await asyncio.sleep(0.02)
            else:
                self.bus.post("WARNING", node=None, text=f"drain did not reach EOS within {self.drain_timeout}s")
        self.stopping = True
        for task in list(self._restarts.values()):  # restarts still asleep: nothing to restart any more
            task.cancel()
        procs = [p for p in self.procs.values() if p.proc and not p.exited.done()]
        for p in procs:
            p.expected_exit = True
            try:
                await self.router.send_multipart([p.identity, msgpack.packb({"op": "stop"})])
            except zmq.ZMQError:
                pass
        await asyncio.gather(*(p.kill() for p in procs))
        old, self.state = self.state, NULL
        self.bus.post("STATE_CHANGED", node=None, graph=self.graph.name, old=old, new=NULL)
        if self.store is not None:
            self.store.close()
        if not self._finished.done():
            self._finished.set_result(None)

    # --- control operations ------------------------------------------------------------------
    def _proc(self, name: str) -> NodeProcess:
        np = self.procs.get(name)
        if np is None:
            if self.host is not None and name in self.graph.nodes:
                raise ControlError(f"no node '{name}' runs here: it runs on host '{self.graph.host_of(name)}', "
                                   f"this runner is host '{self.host}'; ask that host's runner")
            raise ControlError(f"no node '{name}' runs here (nodes: {', '.join(self.procs)})")
        return np

    async def _stats(self) -> dict[str, Any]:
        names = list(self.procs)
        results = await asyncio.gather(*(self._request(self.procs[n], "stats", timeout=3) for n in names),
                                       return_exceptions=True)
        nodes = {}
        for name, res in zip(names, results):
            if isinstance(res, BaseException):
                res = {"state": self.procs[name].state, "error": str(res), "pid": self.procs[name].pid}
            res["restarts"] = self.budgets[name].used
            nodes[name] = res
        links = {}
        local = set(self.local)
        for l in self.graph.links:
            if l.src not in local and l.dst not in local:  # between two other hosts
                continue
            out = nodes.get(l.src, {}).get("outputs", {}).get(l.id, {})
            inp = nodes.get(l.dst, {}).get("inputs", {}).get(l.id, {})
            links[l.id] = {"from": f"{l.src}.{l.src_pad}", "to": f"{l.dst}.{l.dst_pad}", "policy": l.policy,
                           "size": l.size, "sent": out.get("sent"), "received": inp.get("received"),
                           "gaps": inp.get("gaps"), "drops": (out.get("drops") or 0) + (inp.get("drops") or 0),
                           "depth": inp.get("depth")}
            t = self.tcp.get(l.id)
            if t is not None:  # one end here, the other on another host: that end's numbers are there
                end = out if l.src in local else inp
                links[l.id].update(transport="tcp", port=t.port, peer=t.peer_of(self.host), up=end.get("up"))
        result = {"graph": self.graph.name, "state": self.state, "nodes": nodes, "links": links}
        if self.host is not None:
            result["host"] = self.host
        return result

    async def _set_params(self, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        np = self._proc(name)
        cls = self.types[name]
        try:
            check_wire(params)  # first: nothing below walks a value nested thousands deep
            changed = check_params(cls.params, params, fill_defaults=False)
        except ParamError as exc:
            raise ControlError(f"node '{name}' ({self.graph.nodes[name].type}): {exc}") from None
        result = await self._request(np, "params", params=changed)
        self._keep(name, changed)
        await self.latency.update(self)  # latency query: a param may change a path's latency
        return result

    async def _swap(self, name: str, type_: str | None, params: dict[str, Any], timeout: float) -> int:
        """GStreamer's recipe: block upstream, drain the old node, start the new one, release.

        A node that died and waits for its restart is swapped too: the swap replaces the dead
        process and the restart is called off; a restart already bringing its process up is
        waited for, and that process is the one replaced. Either way one new process starts, with
        an instance number of its own (``next_instance``).
        """
        self._proc(name)
        if name in self._swapping:
            raise ControlError(f"node '{name}' is already being swapped")
        try:
            check_wire(params)  # before the deepcopy below, which recurses into every value
        except ParamError as exc:
            raise ControlError(f"cannot swap '{name}': {exc}") from None
        trial = copy.deepcopy(self.graph)
        spec = trial.nodes[name]
        if type_ and type_ != spec.type:
            spec.type, spec.params = type_, {}
        spec.params.update(params)
        spec.param_lines = {}
        try:
            types = validate_graph(trial)
        except GraphError as exc:
            raise ControlError(f"cannot swap '{name}': " + "; ".join(p.message for p in exc.problems)) from None
        except Exception as exc:  # a type the registry cannot even look up (':', '.x:Y', a module failing to import)
            raise ControlError(f"cannot swap '{name}': node type '{shown_text(spec.type, 200)}': "
                               f"{type(exc).__name__}: {shown_text(str(exc), 300)}") from None
        self._swapping.add(name)
        try:
            await self._settle_restart(name, timeout)
            old = self._proc(name)
            saved = self.graph.nodes[name]
            self.graph.nodes[name] = trial.nodes[name]
            # inputs from another host arrive on a fixed port: the old node lets go of it when it
            # drains, and the new one binds it then (their senders reconnect by themselves)
            remote_in = tuple(l.id for l in self._links_in(name) if l.id in self.tcp)
            new = self._spawn(name, self._new_instance(name), defer=remote_in)
            try:
                await self._bring(new, PAUSED)
            except (RuntimeError, TimeoutError, ControlError) as exc:
                self.graph.nodes[name] = saved
                new.expected_exit = True
                if not new.exited.done():
                    await new.kill(grace=0.5)
                if old.exited.done() and not self.stopping and name not in self._restarts:
                    # the old process had died and its restart was left to this swap: restart it now
                    self._schedule_restart(old)
                raise ControlError(f"cannot swap '{name}': the new node did not start: {exc}") from None
            self.types[name] = types[name]
            loop = asyncio.get_running_loop()
            drained_fut = self._drained[name] = loop.create_future()
            outs = self._links_out(name)
            for l in outs:
                self._marks[l.id] = loop.create_future()
            old.expected_exit = True
            dead = old.exited.done()
            if dead:
                self.bus.post("INFO", node=name, text=f"swap: the old '{name}' (pid {old.pid}) had exited; "
                              "nothing to drain")
            else:
                try:
                    await self._request(old, "drain", release=list(remote_in))
                except ControlError as exc:
                    self.bus.post("WARNING", node=name, text=f"swap: {exc}; killing it")
                    dead = True
            for l in self._links_in(name) if not dead else ():  # a dead node takes no MARK: senders
                src = self.procs.get(l.src)                      # queue until relinked to the new one
                if src is not None and not src.exited.done():
                    try:
                        await self._request(src, "hold", link=l.id)
                    except ControlError as exc:
                        self.bus.post("WARNING", node=name, text=f"swap: {exc}")
            seqs: dict[str, int] = {}
            expected: dict[str, int] = {}
            if not dead:
                try:
                    await asyncio.wait([drained_fut, old.exited], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    if not drained_fut.done() and old.exited.done():  # it exits once drained: its
                        await asyncio.wait([drained_fut], timeout=1.0)  # exit may be seen before its last word
                    if not drained_fut.done():
                        raise asyncio.TimeoutError
                    drained = drained_fut.result()
                    seqs, expected = drained["seqs"], drained.get("expected") or {}
                    await asyncio.wait_for(asyncio.gather(*(self._marks[l.id] for l in outs if l.dst in self.procs)),
                                           timeout)
                except asyncio.TimeoutError:
                    self.bus.post("WARNING", node=name, text=f"swap: '{name}' did not drain within {timeout}s "
                                  "(or exited first); killing it")
            await old.kill(grace=5.0)
            if remote_in:
                try:
                    await self._request(new, "bind", timeout=BIND_RETRY_S + 5,
                                        links={i: expected.get(i) for i in remote_in})
                except ControlError as exc:
                    self.bus.post("ERROR", node=name, pid=new.pid, text=f"swap: the new '{name}' gets nothing from "
                                  f"other hosts: {exc}")
            for l in outs:
                if l.id in seqs:
                    await self._request(new, "relink", link=l.id, seq=seqs[l.id])
            self.procs[name] = new
            await self.latency.update(self, report=True)  # latency query: recomputed for the new graph
            await self._bring(new, self.state)
            await self._relink_upstream(name, new.instance)
        finally:
            self._swapping.discard(name)
            self._drained.pop(name, None)
            for l in self._links_out(name):
                self._marks.pop(l.id, None)
        self._keep(name, dict(self.graph.nodes[name].params), replace=True)
        self.bus.post("NODE_SWAPPED", node=name, pid=new.pid, old_pid=old.pid, node_type=self.graph.nodes[name].type)
        return new.pid

    def graph_info(self) -> dict[str, Any]:
        info = self.graph.to_dict()
        info["state"] = self.state
        info["pids"] = self.pids()
        if self.host is not None:
            info["host"], info["local"] = self.host, list(self.local)
        return info

