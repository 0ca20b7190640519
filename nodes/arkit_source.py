"""arkit_source: face capture from Live Link Face devices over UDP, as one batch per tick.

Every device (v6 device id, or JSON ``session``) is a session with a slot in numpy arrays. By
default (``batch: fresh`` at 240 Hz) a tick emits the slots with a new packet since the last
tick: phones are not in step, so a fast gather tick bounds how long a packet waits (one tick,
4.2 ms) and every packet's frame goes out exactly once. A second packet of a session that comes
before its first has gone out (jitter, a late tick) waits in the session's backlog and goes out
in the next batch, one per batch, so no frame is lost or sent twice (a backlog holds at most
``_BACKLOG_MAX`` packets; beyond that the oldest is dropped and counted as ``overrun``). Past
capacity (the node has fallen behind, and more than ``_BACKLOG_SLOTS`` sessions would wait), the
newest packet of a session wins instead: the older frames are dropped, counted as ``shed`` and
posted as QOS, so a node that falls behind catches up instead of spending ever longer queueing.
``batch: all`` is the old every-session-every-tick mode: a tick emits every slot's latest frame
(``active`` says which are new), so a device faster than the rate loses frames (counted as
``superseded``) and a slower one is repeated.
Bad datagrams are counted by reason, reported as at most one WARNING a second, and dropped:
no input can kill this node.

Thousands of devices send tens of thousands of packets a second. A v6 packet's header (version,
device id, subject) is the same in every packet of a device, so once ``parse_packet`` has accepted
one, later packets with that header go to the device's slot directly, and only their fixed-size
tails (frame, values) are checked. Compiled (``nodes/livelink/_udp.pyx``, when built), a read is
``recvmmsg`` in batches of 256 datagrams, and the header lookup, the tail checks, the clamping and
the stores into the slots run in C, so a packet costs little more than the kernel's receive; the
reference code (``AVATAR_PURE_PYTHON=1``, or not built) reads with one ``recvmsg`` per datagram, looks
headers up in a dict and checks the tails of a wake-up's packets at once with numpy
(``livelink.parse_tails``). Both give the same batches. Anything else (a new device, JSON, a damaged
packet) takes the full parser, which says what is wrong.

A packet's arrival is the kernel's receive timestamp (``SO_TIMESTAMPNS``, on the pts clock), so
it stays exact however late the node reads. With a rate, batches go out only at ticks, so after
a read the node leaves the socket alone for ``_READ_PAUSE_S`` (packets wait in the kernel's
buffer): a flood of small datagrams costs a few hundred wake-ups a second, not one per packet.
"""
from __future__ import annotations

import os
import socket
import time
from collections import deque
from typing import Any, Mapping

import numpy as np

from runtime import Message, Node, Pad, Param, ParamError, id_dtype

from .compiled import load
from .livelink import (
    CAPS,
    N_BLENDSHAPES,
    N_POSE,
    TAIL_BYTES,
    VERSION,
    LiveLinkFrame,
    PacketError,
    header_of,
    parse_datagram,
    parse_tails,
)

_MAX_DRAIN = 4096  # datagrams per wake-up, so a flood cannot starve the timer
_RECV_BYTES = 65536  # a whole datagram, so an oversized one is seen as such, not cut
_WARN_EVERY_NS = 1_000_000_000
_HEADERS_PER_SESSION = 4  # packet headers remembered per session (a device may rename its subject)
_WAIT_STEP_US = 100  # bins of the gather-wait histogram (arrival -> tick); the last bin takes the rest
_WAIT_BINS = 2001
_BACKLOG_MAX = 16  # packets of one session waiting for a batch (batch: fresh); beyond, the oldest is dropped
_BACKLOG_SLOTS = 64  # sessions with a backlog at once; beyond, the node is behind: the newest packet wins (shed)
_READ_PAUSE_S = 0.004  # with a rate: after a read, the socket is left alone this long
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
_STAMP_SPACE = socket.CMSG_SPACE(16)  # struct timespec
_NO_STAMP = bytes(16)
# recvmmsg in batches and the known devices' packets parsed in C (nodes/livelink/_udp.pyx); None: the
# reference code below (recvmsg per datagram, parse_tails)
_udp = load("nodes.livelink._udp")


class ArkitSource(Node):
    """Receives Live Link Face UDP packets (v6 or JSON) from many devices; one batch per tick."""

    outputs = {"out": Pad(caps=CAPS, doc="weights (S,52), pose (S,9), arrival_ns (S,), frame (S,); data active")}
    params = {
        "host": Param(str, "0.0.0.0", "address to listen on"),
        "port": Param(int, 11111, "UDP port; 0 = any free port (stats show which)", min=0, max=65535),
        "rate": Param(float, 240.0, "batches per second: a packet waits up to one tick (4.2 ms at 240) and each "
                                    "tick costs a wake-up; keep it at least twice the devices' rate with 'fresh'. 0: a "
                                    "batch as soon as packets arrive (each wake-up's new frames: the lowest latency, "
                                    "one batch per wake-up, for a few devices)", min=0.0, max=1000.0),
        "batch": Param(str, "fresh", "what a tick's batch holds: only the 'fresh' sessions, with a packet since the "
                                     "last tick (every packet's frame exactly once; a second packet of a session in one "
                                     "tick goes out in the next batch), or 'all' sessions every tick (the latest frame "
                                     "of each, 'active' saying which are new: a device faster than the rate loses "
                                     "frames, counted as superseded, and a slower one is repeated)",
                       choices=("fresh", "all")),
        "session_timeout": Param(float, 2.0, "seconds without packets after which a session leaves", min=0.001, max=86400.0),
        "max_sessions": Param(int, 4096, "devices served at once; packets of further ones are dropped", min=1, max=1 << 20),
    }

    def setup(self) -> None:
        self.slots: dict[str, int] = {}  # session id -> slot, in join order
        self.headers: dict[bytes, int] = {}  # v6 packet header (before the tail) -> slot: the fast path
        self.slot_headers: dict[int, list[bytes]] = {}
        self.wait_hist = np.zeros(_WAIT_BINS, np.int64)
        self.free: list[int] = []
        self._alloc(16)
        self.order = np.zeros(0, np.intp)
        self.dirty = False
        self.received = self.packets = self.clamped = self.clamped_packets = 0
        self.joined = self.left = self.batches = 0
        self.superseded = self.overrun = self.shed = 0
        self.shed_posted = 0
        self.backlog: dict[int, deque] = {}  # slot -> packets (weights, pose, frame, arrival) waiting for a batch
        self.bad: dict[str, int] = {}
        self.window: dict[str, int] = {}
        self.window_start_ns = self.last_warn_ns = -_WARN_EVERY_NS
        self.last_bad = ""
        self.paused_ns = 0
        self.rewatch = None
        self.kernel_drops = self.sock_drops_seen = self.next_drop_check_ns = 0  # the socket's own count starts at 0
        self._rx = _udp.Receiver(_MAX_DRAIN) if _udp is not None else None
        self.sock = self._bind(self.p.host, self.p.port, replacing=self.replacement)
        self.bound = (self.p.host, self.p.port)
        self.watch(self.sock, self._read)
        self.timer = self._start_timer()

    @classmethod
    def latency_ns(cls, params: Mapping[str, Any]) -> int:
        """A packet waits for the next tick: up to one period (none at rate 0)."""
        rate = float(params.get("rate", cls.params["rate"].default))
        return int(round(1e9 / rate)) if rate > 0 else 0

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
            "ids": np.full(cap, None, object),  # slot -> session id (str), None when free
            # slot -> session id as UTF-8 (what batches carry: Message.session_ids), b"" when free
            "keys": np.zeros(cap, getattr(self, "keys", np.zeros(0, "S8")).dtype),
        }
        for name, arr in arrays.items():
            if n:
                arr[:n] = getattr(self, name)
            setattr(self, name, arr)
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
        key = sid.encode()
        if len(key) > self.keys.dtype.itemsize:
            self.keys = self.keys.astype(id_dtype(len(key)))
        self.keys[slot] = key
        self.joined += 1
        self.dirty = True
        self.ctx.post("SESSION_JOINED", f"session '{sid}' joined from {_addr(addr)}", session=sid, source=_addr(addr))
        return slot

    def _leave(self, slot: int, now: int) -> None:
        sid = self.ids[slot]
        silent = (now - int(self.last_ns[slot])) / 1e9
        del self.slots[sid]
        self.ids[slot] = None
        self.keys[slot] = b""
        self.used[slot] = self.active[slot] = False
        for header in self.slot_headers.pop(slot, ()):
            del self.headers[header]
            if self._rx is not None:
                self._rx.remove_header(header)
        self.backlog.pop(slot, None)
        self.free.append(slot)
        self.left += 1
        self.dirty = True
        self.ctx.post("SESSION_LEFT", f"session '{sid}' left after {silent:.2f}s without packets", session=sid)

    # --- input -------------------------------------------------------------------------------
    def _read(self) -> None:
        self._drain()
        if self.p.rate == 0:  # a batch now, and one more per packet still in a backlog
            while len(fresh := np.flatnonzero(self.active[: self.cap])):
                self._emit(fresh, int(self.arrival[fresh].min()))
        elif self.rewatch is None:  # batches go out at ticks: read again after a pause (or at the tick)
            self.unwatch(self.sock)
            self.rewatch = self.call_later(_READ_PAUSE_S, self._rewatch)

    def _rewatch(self) -> None:
        self.rewatch = None
        self.watch(self.sock, self._read)

    def _drain(self) -> None:
        """Read every datagram the socket holds (up to a budget) into the slots (and backlogs)."""
        if self._rx is not None:
            self._drain_compiled()
            return
        recv = self.sock.recvmsg
        datas: list[bytes] = []
        addrs: list[Any] = []
        kstamps: list[bytes] = []  # struct timespec (CLOCK_REALTIME) of each datagram, from the kernel
        for _ in range(_MAX_DRAIN):
            try:
                data, anc, _, addr = recv(_RECV_BYTES, _STAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors surfacing on the socket: never fatal
                self._bad("socket", f"receive failed: {exc}", None)
                break
            datas.append(data)
            addrs.append(addr)
            kstamps.append(anc[0][2] if anc else _NO_STAMP)
        if not datas:
            return
        now = self.now_ns()
        spec = np.frombuffer(b"".join(kstamps), np.int64).reshape(-1, 2)
        arrival = spec[:, 0] * 1_000_000_000 + spec[:, 1] + (now - time.clock_gettime_ns(time.CLOCK_REALTIME))
        arrival[(spec[:, 0] == 0) | (arrival > now)] = now  # no stamp (or a clock step): now
        stamps = arrival.tolist()
        self.received += len(datas)
        headers = self.headers
        known: list[int] = []  # rows of datas whose header is known, and their slots
        slots: list[int] = []
        for i, data in enumerate(datas):
            slot = headers.get(data[:-TAIL_BYTES])
            if slot is not None:
                known.append(i)
                slots.append(slot)
                continue
            if known:  # what came before this one is stored first, so packets keep their order
                self._store_known(datas, addrs, stamps, known, slots)
                known, slots = [], []
            self._parse_one(datas[i], addrs[i], stamps[i])
        if known:
            self._store_known(datas, addrs, stamps, known, slots)

    def _drain_compiled(self) -> None:
        """``_drain`` with recvmmsg: the known devices' valid packets come parsed, as rows; the
        datagrams the compiled code hands back take the reference path, at their place in order."""
        rx = self._rx
        n, err, handed = rx.drain(self.sock.fileno(), _MAX_DRAIN)
        if err:  # e.g. ICMP errors surfacing on the socket: never fatal
            self._bad("socket", f"receive failed: {_udp.errno_text(err)}", None)
        if not n:
            return
        now = self.now_ns()
        raw = rx.stamp[:n]  # CLOCK_REALTIME ns, 0: no stamp
        arrival = raw + (now - time.clock_gettime_ns(time.CLOCK_REALTIME))
        arrival[(raw == 0) | (arrival > now)] = now  # no stamp (or a clock step): now
        self.received += n
        start = 0
        for row, data, addr in handed:
            if row > start:
                self._store_rows_compiled(start, row, arrival)
            stamp = int(arrival[row])
            slot = self.headers.get(data[:-TAIL_BYTES])  # a header known since the compiled code saw it
            if slot is not None:
                self._store_known([data], [addr], [stamp], [0], [slot])
            else:
                self._parse_one(data, addr, stamp)
            start = row + 1
        if start < n:
            self._store_rows_compiled(start, n, arrival)

    def _parse_one(self, data: bytes, addr: Any, stamp: int) -> None:
        """The full parser, for a packet whose header is not known yet (or a bad one)."""
        try:
            frame = parse_datagram(data)
        except PacketError as exc:
            self._bad(exc.reason, str(exc), addr)
            return
        slot = self._store(frame, addr, stamp)
        if slot >= 0 and data[0] == VERSION:
            mine = self.slot_headers.setdefault(slot, [])
            if len(mine) < _HEADERS_PER_SESSION:
                header = header_of(data)
                mine.append(header)
                self.headers[header] = slot
                if self._rx is not None:
                    self._rx.add_header(header, slot)

    def _store_known(self, datas: list[bytes], addrs: list, stamps: list[int], rows: list[int], slots: list[int]) -> None:
        """Packets of known devices, all at once: check their tails, clamp, store them in their slots."""
        frames, values, ok = parse_tails(b"".join([datas[i][-TAIL_BYTES:] for i in rows]))
        slot_arr = np.array(slots, dtype=np.intp)
        arrival = np.array(stamps, dtype=np.int64)[rows]
        if not ok.all():
            for j in np.flatnonzero(~ok).tolist():  # the full parser says what is wrong
                self._parse_one(datas[rows[j]], addrs[rows[j]], stamps[rows[j]])
            slot_arr, values, frames, arrival = slot_arr[ok], values[ok], frames[ok], arrival[ok]
            if not len(slot_arr):
                return
        self._store_rows(slot_arr, frames, values, arrival)

    def _store_rows(self, slot_arr: np.ndarray, frames: np.ndarray, values: np.ndarray, arrival: np.ndarray) -> None:
        """Valid packets of known devices, in arrival order: clamp, count, store them in their slots
        (or, batch: fresh, a session's backlog). The arrays may be views of reused buffers: copied."""
        weights = values[:, :N_BLENDSHAPES]
        clipped = np.clip(weights, 0.0, 1.0)
        off = clipped != weights
        n_off = int(np.count_nonzero(off))
        if n_off:
            self.clamped += n_off
            self.clamped_packets += int(np.count_nonzero(off.any(axis=1)))
        self.packets += len(slot_arr)
        later = None  # batch: fresh: rows that wait in their session's backlog (after the stores below)
        if self.p.batch == "fresh":
            if len(slot_arr) > 1 or self.backlog or self.active[slot_arr].any():
                keep = self._fresh_rows(slot_arr)
                if not keep.all():
                    later = (slot_arr, clipped, values, frames, arrival, np.flatnonzero(~keep).tolist())
                    slot_arr, clipped, values, frames, arrival = (
                        slot_arr[keep], clipped[keep], values[keep], frames[keep], arrival[keep])
        else:  # batch: all: the latest packet of a session since the last tick wins
            if len(slot_arr) > 1:
                _, last = np.unique(slot_arr[::-1], return_index=True)
                if len(last) < len(slot_arr):
                    self.superseded += len(slot_arr) - len(last)  # the earlier packets of this read
                    keep = len(slot_arr) - 1 - last
                    slot_arr, clipped, values, frames, arrival = (
                        slot_arr[keep], clipped[keep], values[keep], frames[keep], arrival[keep])
            self.superseded += int(np.count_nonzero(self.active[slot_arr]))  # and a frame from before it
        self.weights[slot_arr] = clipped
        self.pose[slot_arr] = values[:, N_BLENDSHAPES:]
        self.frame[slot_arr] = frames
        self.arrival[slot_arr] = arrival
        self.last_ns[slot_arr] = arrival
        self.active[slot_arr] = True
        if later is not None:
            slots, clipped, values, frames, arrival, rows = later
            if self._behind(len(rows)):
                r = np.asarray(rows, np.intp)
                self._shed(slots[r], clipped[r], values[r, N_BLENDSHAPES:], frames[r], arrival[r])
                return
            for j in rows:  # in arrival order
                self._queue(int(slots[j]), clipped[j], values[j, N_BLENDSHAPES:], int(frames[j]), int(arrival[j]))

    def _store_rows_compiled(self, lo: int, hi: int, arrival: np.ndarray) -> None:
        """``_store_rows`` for rows lo..hi-1 of the compiled receiver, in C: one pass, no numpy per row."""
        fresh = self.p.batch == "fresh"
        backlogged = None
        if fresh and self.backlog:
            backlogged = np.zeros(self.cap, np.uint8)
            backlogged[np.fromiter(self.backlog, np.intp, len(self.backlog))] = 1
        clamped, clamped_packets, superseded, later = self._rx.store(
            lo, hi, arrival, fresh, self.weights, self.pose, self.frame, self.arrival, self.last_ns,
            self.active.view(np.uint8), backlogged)
        self.packets += hi - lo
        self.clamped += clamped
        self.clamped_packets += clamped_packets
        self.superseded += superseded
        if later:
            slots, frames, values = self._rx.slot, self._rx.frame, self._rx.values  # values: clamped in place
            if self._behind(len(later)):
                r = np.asarray(later, np.intp)
                self._shed(slots[r], values[r, :N_BLENDSHAPES], values[r, N_BLENDSHAPES:], frames[r], arrival[r])
                return
            for r in later:  # in arrival order
                self._queue(int(slots[r]), values[r, :N_BLENDSHAPES], values[r, N_BLENDSHAPES:], int(frames[r]),
                            int(arrival[r]))

    def _fresh_rows(self, slots: np.ndarray) -> np.ndarray:
        """batch: fresh: a packet of a session whose last packet has not gone out yet waits in the
        session's backlog instead of overwriting it. Which rows go into their slots now: the first
        of each slot, unless its slot is active or has a backlog."""
        _, first = np.unique(slots, return_index=True)  # np.unique: the earliest row of each slot
        now = np.zeros(len(slots), bool)
        now[first] = True
        now &= ~self.active[slots]
        if self.backlog:
            now &= ~np.isin(slots, np.fromiter(self.backlog, np.intp, len(self.backlog)))
        return now

    def _behind(self, waiting: int) -> bool:
        """Would more than ``_BACKLOG_SLOTS`` sessions wait? Then the node has fallen behind."""
        return len(self.backlog) + waiting > _BACKLOG_SLOTS

    def _shed(self, slots: np.ndarray, weights: np.ndarray, pose: np.ndarray, frames: np.ndarray,
              arrival: np.ndarray) -> None:
        """Behind: packets that would wait take their slots at once, the newest of each session
        winning, in a few array operations; the frames they replace (the slot's, a backlog's, the
        earlier rows of this read) are dropped and counted as ``shed``."""
        _, last = np.unique(slots[::-1], return_index=True)
        take = len(slots) - 1 - last  # the newest row of each slot
        won = slots[take]
        dropped = len(slots)  # each row replaces one pending frame: the slot's, or an earlier row's
        if self.backlog:
            for slot in np.intersect1d(won, np.fromiter(self.backlog, np.intp, len(self.backlog))).tolist():
                dropped += len(self.backlog.pop(slot))
        self.shed += dropped
        self.weights[won] = weights[take]
        self.pose[won] = pose[take]
        self.frame[won] = frames[take]
        self.arrival[won] = arrival[take]
        self.last_ns[won] = np.maximum(self.last_ns[won], arrival[take])
        self.active[won] = True

    def _queue(self, slot: int, weights: np.ndarray, pose: np.ndarray, frame: int, arrival: int) -> None:
        q = self.backlog.setdefault(slot, deque())
        if len(q) >= _BACKLOG_MAX:
            q.popleft()
            self.overrun += 1
        q.append((np.array(weights, np.float32), np.array(pose, np.float32), frame, arrival))
        self.last_ns[slot] = max(int(self.last_ns[slot]), arrival)

    def _promote(self) -> None:
        """After a batch: the next waiting packet of each backlogged session takes its slot, for the next batch."""
        for slot in list(self.backlog):
            q = self.backlog[slot]
            self.weights[slot], self.pose[slot], self.frame[slot], self.arrival[slot] = q.popleft()
            self.active[slot] = True
            if not q:
                del self.backlog[slot]

    def _store(self, f: LiveLinkFrame, addr: Any, stamp: int) -> int:
        """One parsed packet into its session's slot (joining it if new); returns the slot, -1 if refused."""
        slot = self.slots.get(f.device_id)
        if slot is None:
            slot = self._join(f.device_id, addr)
            if slot < 0:
                return -1
        row = np.clip(f.weights, 0.0, 1.0).astype(np.float32)
        off = int(np.count_nonzero(row != f.weights))
        if off:
            self.clamped += off
            self.clamped_packets += 1
        self.packets += 1
        if self.p.batch == "fresh" and (self.active[slot] or slot in self.backlog):
            self._queue(slot, row, f.pose, f.frame, stamp)
            return slot
        self.superseded += int(self.active[slot])
        self.weights[slot] = row
        self.pose[slot] = f.pose
        self.frame[slot] = f.frame
        self.arrival[slot] = self.last_ns[slot] = stamp
        self.active[slot] = True
        return slot

    def _bad(self, reason: str, text: str, addr: Any) -> None:
        """Count a dropped datagram; warn at once unless we warned less than a second ago."""
        self.bad[reason] = self.bad.get(reason, 0) + 1
        if not self.window:
            self.window_start_ns = self.now_ns()
        self.window[reason] = self.window.get(reason, 0) + 1
        self.last_bad = f"{text} (from {_addr(addr)})" if addr else text
        self._maybe_warn(self.now_ns())

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

    def _report_drops(self, now: int) -> None:
        """What the source dropped because it fell behind (past capacity), posted as QOS once a
        second at most: frames shed from its backlogs, and datagrams the kernel dropped because the
        socket's buffer was full (counted in stats as ``kernel_drops``)."""
        self.next_drop_check_ns = now + _WARN_EVERY_NS
        if self.shed > self.shed_posted:
            self.ctx.post("QOS", f"behind: dropped {self.shed - self.shed_posted} older frame(s) of sessions whose "
                                 f"newer packet came before they went out", dropped=self.shed - self.shed_posted,
                          total=self.shed, where="source backlog")
            self.shed_posted = self.shed
        total = socket_drops(self.sock)
        if total is None or total <= self.sock_drops_seen:
            return
        new, self.sock_drops_seen = total - self.sock_drops_seen, total
        self.kernel_drops += new
        self.ctx.post("QOS", f"the kernel dropped {new} datagram(s) on UDP port {self.sock.getsockname()[1]}: "
                             f"the source is behind (receive buffer full)", dropped=new, total=self.kernel_drops,
                      where="udp receive buffer")

    # --- output ------------------------------------------------------------------------------
    def _expire(self) -> int:
        now = self.now_ns()
        if self.slots:
            stale = np.flatnonzero(self.used & (now - self.last_ns > int(self.p.session_timeout * 1e9)))
            for slot in stale.tolist():
                self._leave(slot, now)
        self._maybe_warn(now)
        if now >= self.next_drop_check_ns:
            self._report_drops(now)
        return now

    def _tick(self) -> None:
        self._drain()  # what came since the last read belongs to this tick
        now = self._expire()
        if not self.slots:
            return
        if self.dirty:
            self.order = np.fromiter(self.slots.values(), np.intp, len(self.slots))
            self.dirty = False
        if self.p.batch == "fresh":
            fresh = self.order[self.active[self.order]]
            if len(fresh):
                self._emit(fresh, now)
            return
        self._emit(self.order, now)

    def _emit(self, idx: np.ndarray, pts_ns: int) -> None:
        arrays = {"weights": self.weights[idx], "pose": self.pose[idx],
                  "arrival_ns": self.arrival[idx], "frame": self.frame[idx], "slot": idx.astype(np.int32)}
        active = self.active[idx]
        data = {"active": active.tolist()}
        if self.p.rate > 0:  # how long fresh packets waited for this tick
            wait_us = (pts_ns - self.arrival[idx][active]) / 1000.0
            if len(wait_us):
                self.wait_hist += np.bincount(np.clip(wait_us // _WAIT_STEP_US, 0, _WAIT_BINS - 1).astype(np.intp),
                                              minlength=_WAIT_BINS)
        self.active[:] = False
        if self.backlog:
            self._promote()
        self.batches += 1
        self.emit("out", Message(CAPS, data, arrays, pts_ns=pts_ns, session=self.keys[idx]))

    # --- lifecycle ---------------------------------------------------------------------------
    def on_pause(self) -> None:
        self.paused_ns = self.now_ns()

    def on_play(self) -> None:
        """A pause is not silence: sessions do not time out because we stopped listening."""
        if self.paused_ns:
            self.last_ns[self.used] += self.now_ns() - self.paused_ns
            self.paused_ns = 0

    def _bind(self, host: str, port: int, replacing: bool = False) -> socket.socket:
        """The UDP socket, with SO_REUSEPORT so that a hot-swapped source can bind while the process
        it replaces still listens; so that two graphs never share a port by mistake, a first
        process (not ``replacing``) checks the port is free first. RuntimeError saying why not."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if port and not replacing:
            probe = socket.socket(family, socket.SOCK_DGRAM)
            try:
                probe.bind((host, port))  # EADDRINUSE: someone listens there
            except OSError as exc:
                raise RuntimeError(f"cannot listen on UDP {host}:{port}: {exc.strerror or exc}") from None
            finally:
                probe.close()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # bursts from many devices
        except OSError:
            pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)  # arrival times from the kernel
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
        sock = None
        if "host" in changed or "port" in changed:  # first: a refused bind changes nothing
            try:
                sock = self._bind(self.p.host, self.p.port)
            except RuntimeError as exc:
                raise ParamError(f"{exc}; still listening on {self.bound[0]}:{self.sock.getsockname()[1]}") from None
        if "batch" in changed and self.p.batch == "all" and self.backlog:  # the latest frame wins from now on
            for slot, q in self.backlog.items():
                self.superseded += len(q)  # the slot's frame and all but the last waiting one
                self.weights[slot], self.pose[slot], self.frame[slot], self.arrival[slot] = q[-1]
            self.backlog.clear()
        if "rate" in changed:
            self.timer.cancel()
            self.timer = self._start_timer()
            if self.p.rate == 0 and self.rewatch is not None:  # reads emit again: watch at once
                self.rewatch.cancel()
                self._rewatch()
        if sock is not None:
            self.unwatch(self.sock)
            self.sock.close()
            self.sock = sock
            self.sock_drops_seen = 0
            self.bound = (self.p.host, self.p.port)
            if self.rewatch is not None:
                self.rewatch.cancel()
                self.rewatch = None
            self.watch(sock, self._read)

    def teardown(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()

    def stats(self) -> dict[str, Any]:
        return {
            "port": self.sock.getsockname()[1] if self.sock.fileno() >= 0 else None,
            "received": self.received, "packets": self.packets, "bad": sum(self.bad.values()),
            "kernel_drops": self.kernel_drops,
            "bad_reasons": dict(self.bad), "clamped": self.clamped, "clamped_packets": self.clamped_packets,
            "superseded": self.superseded, "overrun": self.overrun, "shed": self.shed,
            "backlogged": sum(len(q) for q in self.backlog.values()),
            "sessions": len(self.slots), "joined": self.joined, "left": self.left, "batches": self.batches,
            "gather_wait_us_p50": _percentile(self.wait_hist, 50), "gather_wait_us_p99": _percentile(self.wait_hist, 99),
            "gather_wait_hist": {"step_us": _WAIT_STEP_US, "bins": (nz := np.flatnonzero(self.wait_hist)).tolist(),
                                 "counts": self.wait_hist[nz].tolist()},
        }


def socket_drops(sock: socket.socket) -> int | None:
    """The kernel's count of datagrams this UDP socket dropped (its receive buffer was full), from
    /proc/net/udp{,6} by the socket's inode; None where that is not available."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if len(fields) > 12 and fields[9] == inode:
                        return int(fields[12])
    except (OSError, ValueError, StopIteration):
        return None
    return None


def _percentile(hist: np.ndarray, q: float) -> float:
    """Upper edge (µs) of the bin holding the q-th percentile of a histogram of _WAIT_STEP_US bins."""
    n = int(hist.sum())
    if not n:
        return 0.0
    return float((np.searchsorted(np.cumsum(hist), q / 100.0 * n) + 1) * _WAIT_STEP_US)


def _addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)

