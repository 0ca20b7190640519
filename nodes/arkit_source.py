"""arkit_source: face capture from Live Link Face devices over UDP, as one batch per tick.

Every device (v6 device id, or JSON ``session``) is a session with a slot in numpy arrays; a
datagram overwrites its slot, and a timer emits all slots as one ``arkit/blendshapes`` batch.
Bad datagrams are counted by reason, reported as at most one WARNING a second, and dropped:
no input can kill this node.
"""
from __future__ import annotations

import socket
from typing import Any

import numpy as np

from runtime import Message, Node, Pad, Param
from runtime.clock import now_ns

from .livelink import N_BLENDSHAPES, N_POSE, LiveLinkFrame, PacketError, parse_datagram

CAPS = "arkit/blendshapes"
_MAX_DRAIN = 4096  # datagrams per wake-up, so a flood cannot starve the timer
_RECV_BYTES = 65536  # a whole datagram, so an oversized one is seen as such, not cut
_WARN_EVERY_NS = 1_000_000_000


class ArkitSource(Node):
    """Receives Live Link Face UDP packets (v6 or JSON) from many devices; one batch per tick."""

    outputs = {"out": Pad(caps=CAPS, doc="weights (S,52), pose (S,9), arrival_ns (S,), frame (S,); data active")}
    params = {
        "host": Param(str, "0.0.0.0", "address to listen on"),
        "port": Param(int, 11111, "UDP port; 0 = any free port (stats show which)", min=0, max=65535),
        "rate": Param(float, 60.0, "batches per second; 0: a batch as soon as packets arrive (each wake-up's "
                                   "new frames: the lowest latency, for a few devices)", min=0.0, max=1000.0),
        "session_timeout": Param(float, 2.0, "seconds without packets after which a session leaves", min=0.001, max=86400.0),
        "max_sessions": Param(int, 4096, "devices served at once; packets of further ones are dropped", min=1, max=1 << 20),
    }

    def setup(self) -> None:
        self.slots: dict[str, int] = {}  # session id -> slot, in join order
        self.ids: list[str | None] = []  # slot -> session id
        self.free: list[int] = []
        self._alloc(16)
        self.order = np.zeros(0, np.intp)
        self.order_ids: list[str] = []
        self.dirty = False
        self.received = self.packets = self.clamped = self.clamped_packets = 0
        self.joined = self.left = self.batches = 0
        self.bad: dict[str, int] = {}
        self.window: dict[str, int] = {}
        self.window_start_ns = self.last_warn_ns = -_WARN_EVERY_NS
        self.last_bad = ""
        self.paused_ns = 0
        self.sock = self._bind(self.p.host, self.p.port)
        self.bound = (self.p.host, self.p.port)
        self.watch(self.sock, self._read)
        self.timer = self._start_timer()

    def _start_timer(self):
        """Ticks emit batches at ``rate``; at rate 0 reads emit them and ticks only expire sessions."""
        return self.every(1.0 / self.p.rate, self._tick) if self.p.rate > 0 else self.every(0.1, self._expire)

    # --- state arrays ------------------------------------------------------------------------
    def _alloc(self, cap: int) -> None:
        """(Re)allocate per-slot arrays with room for ``cap`` sessions, keeping what is there."""
        old = getattr(self, "weights", None)
        n = 0 if old is None else len(old)
        arrays = {
            "weights": np.zeros((cap, N_BLENDSHAPES), np.float32), "pose": np.zeros((cap, N_POSE), np.float32),
            "last_ns": np.zeros(cap, np.int64), "arrival": np.zeros(cap, np.int64),
            "frame": np.full(cap, -1, np.int64), "active": np.zeros(cap, bool), "used": np.zeros(cap, bool),
        }
        for name, arr in arrays.items():
            if n:
                arr[:n] = getattr(self, name)
            setattr(self, name, arr)
        self.ids.extend([None] * (cap - n))
        self.cap = cap

    def _join(self, sid: str, addr: Any) -> int:
        if len(self.slots) >= self.p.max_sessions:
            self._bad("session_limit", f"session '{sid}' refused: max_sessions={self.p.max_sessions} reached", addr)
            return -1
        if self.free:
            slot = self.free.pop()
        else:
            slot = len(self.slots)
            if slot >= self.cap:
                self._alloc(min(max(self.cap * 2, slot + 1), max(self.p.max_sessions, slot + 1)))
        self.weights[slot] = 0.0
        self.pose[slot] = 0.0
        self.used[slot] = True
        self.slots[sid] = slot
        self.ids[slot] = sid
        self.joined += 1
        self.dirty = True
        self.ctx.post("SESSION_JOINED", f"session '{sid}' joined from {_addr(addr)}", session=sid, source=_addr(addr))
        return slot

    def _leave(self, slot: int, now: int) -> None:
        sid = self.ids[slot]
        silent = (now - int(self.last_ns[slot])) / 1e9
        del self.slots[sid]
        self.ids[slot] = None
        self.used[slot] = self.active[slot] = False
        self.free.append(slot)
        self.left += 1
        self.dirty = True
        self.ctx.post("SESSION_LEFT", f"session '{sid}' left after {silent:.2f}s without packets", session=sid)

    # --- input -------------------------------------------------------------------------------
    def _read(self) -> None:
        self._drain()
        if self.p.rate == 0:
            fresh = np.flatnonzero(self.active[: self.cap])
            if len(fresh):
                self._emit(fresh, [self.ids[i] for i in fresh.tolist()], int(self.arrival[fresh].min()))

    def _drain(self) -> None:
        """Read every datagram the socket holds (up to a budget); the latest per session wins."""
        recv = self.sock.recvfrom
        for _ in range(_MAX_DRAIN):
            try:
                data, addr = recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors surfacing on the socket: never fatal
                self._bad("socket", f"receive failed: {exc}", None)
                return
            self.received += 1
            try:
                frame = parse_datagram(data)
            except PacketError as exc:
                self._bad(exc.reason, str(exc), addr)
                continue
            self._store(frame, addr)

    def _store(self, f: LiveLinkFrame, addr: Any) -> None:
        slot = self.slots.get(f.device_id)
        if slot is None:
            slot = self._join(f.device_id, addr)
            if slot < 0:
                return
        row = self.weights[slot]
        np.clip(f.weights, 0.0, 1.0, out=row)
        off = int(np.count_nonzero(row != f.weights))
        if off:
            self.clamped += off
            self.clamped_packets += 1
        self.pose[slot] = f.pose
        self.frame[slot] = f.frame
        t = now_ns()
        self.arrival[slot] = self.last_ns[slot] = t
        self.active[slot] = True
        self.packets += 1

    def _bad(self, reason: str, text: str, addr: Any) -> None:
        """Count a dropped datagram; warn at once unless we warned less than a second ago."""
        self.bad[reason] = self.bad.get(reason, 0) + 1
        if not self.window:
            self.window_start_ns = now_ns()
        self.window[reason] = self.window.get(reason, 0) + 1
        self.last_bad = f"{text} (from {_addr(addr)})" if addr else text
        self._maybe_warn(now_ns())

    def _maybe_warn(self, now: int) -> None:
        if not self.window or now - self.last_warn_ns < _WARN_EVERY_NS:
            return
        n = sum(self.window.values())
        span = max(0.0, (now - self.window_start_ns) / 1e9)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.window.items()))
        self.warn(f"dropped {n} bad packet(s) in {span:.1f}s ({reasons}); last: {self.last_bad}",
                  dropped=n, reasons=dict(self.window), total=sum(self.bad.values()))
        self.window = {}
        self.last_warn_ns = now

    # --- output ------------------------------------------------------------------------------
    def _expire(self) -> int:
        now = now_ns()
        if self.slots:
            stale = np.flatnonzero(self.used & (now - self.last_ns > int(self.p.session_timeout * 1e9)))
            for slot in stale.tolist():
                self._leave(slot, now)
        self._maybe_warn(now)
        return now

    def _tick(self) -> None:
        now = self._expire()
        if not self.slots:
            return
        if self.dirty:
            self.order = np.fromiter(self.slots.values(), np.intp, len(self.slots))
            self.order_ids = list(self.slots)
            self.dirty = False
        self._emit(self.order, self.order_ids, now)

    def _emit(self, idx: np.ndarray, ids: list[str], pts_ns: int) -> None:
        arrays = {"weights": self.weights[idx], "pose": self.pose[idx],
                  "arrival_ns": self.arrival[idx], "frame": self.frame[idx]}
        data = {"active": self.active[idx].tolist()}
        self.active[:] = False
        self.batches += 1
        self.emit("out", Message(CAPS, data, arrays, pts_ns=pts_ns, session=ids))

    # --- lifecycle ---------------------------------------------------------------------------
    def on_pause(self) -> None:
        self.paused_ns = now_ns()

    def on_play(self) -> None:
        """A pause is not silence: sessions do not time out because we stopped listening."""
        if self.paused_ns:
            self.last_ns[self.used] += now_ns() - self.paused_ns
            self.paused_ns = 0

    def _bind(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # bursts from many devices
        except OSError:
            pass
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(f"cannot listen on UDP {host}:{port}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return sock

    def on_params(self, changed: dict) -> None:
        if "rate" in changed:
            self.timer.cancel()
            self.timer = self._start_timer()
        if "host" in changed or "port" in changed:
            try:
                sock = self._bind(self.p.host, self.p.port)
            except RuntimeError as exc:
                self.p.host, self.p.port = self.bound
                self.warn(f"{exc}; still listening on {self.bound[0]}:{self.sock.getsockname()[1]}")
                return
            self.unwatch(self.sock)
            self.sock.close()
            self.sock = sock
            self.bound = (self.p.host, self.p.port)
            self.watch(sock, self._read)

    def teardown(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()

    def stats(self) -> dict[str, Any]:
        return {
            "port": self.sock.getsockname()[1] if self.sock.fileno() >= 0 else None,
            "received": self.received, "packets": self.packets, "bad": sum(self.bad.values()),
            "bad_reasons": dict(self.bad), "clamped": self.clamped, "clamped_packets": self.clamped_packets,
            "sessions": len(self.slots), "joined": self.joined, "left": self.left, "batches": self.batches,
        }


def _addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)

