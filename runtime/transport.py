"""Link ends: what every link does (queue policy, sequence numbers, the data's age), and the
ZeroMQ ends of links between hosts: the receiver binds a PULL, the sender connects a PUSH. Links
inside one host are Unix sockets (``runtime.unixlink``); ``open_in_link`` and ``open_out_link`` pick by
the endpoint's scheme.

Queue policy is applied at both ends: ``block`` never drops (the sender waits for room);
``leaky`` keeps the newest ``size`` messages and counts every one it drops. Sequence numbers
are per link, so the receiver counts gaps instead of guessing loss.

A link between hosts is ``tcp://`` (see ``runtime.endpoints``): its sockets send heartbeats, and a
``LinkWatch`` follows their peers through a ZeroMQ socket monitor (a socket the worker polls, so
nothing is added per message) to report LINK_UP and LINK_DOWN.
"""
from __future__ import annotations

import os
import struct
import time
from array import array
from collections import deque
from typing import Any

import numpy as np
import zmq

from .clock import now_ns
from .endpoints import CONNECT_TIMEOUT_MS, HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS, RECONNECT_IVL_MAX_MS
from .histogram import LATENCY_BOUNDS_US, RingHistogram
from .message import PREFIX, ZERO_COPY_MIN, Kind, Message, decode_prefix, encode, is_large

_WATCHED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_DISCONNECTED)
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                     zmq.EVENT_HANDSHAKE_FAILED_AUTH)
BIND_RETRY_S = 5.0  # a restarted node's port may still be held for a moment by the process it replaces
AGE_RING = 1024  # data ages remembered per input link (a power of two: the index is masked)
AGE_MASK = AGE_RING - 1
AGE_WINDOW_NS = 1_000_000_000  # the percentiles in stats are over the ages of the last second


def local_endpoint(run_id: str, link_id: str, instance: int) -> str:
    """Where a link inside one host meets its receiver: a Linux abstract-namespace socket, so
    nothing is left on disk, even after SIGKILL. ``AVATAR_LOCAL_LINKS=zmq`` in the runner's
    environment makes them ZeroMQ ``ipc://`` links again (to compare the two)."""
    scheme = "ipc" if os.environ.get("AVATAR_LOCAL_LINKS") == "zmq" else "unix"
    return f"{scheme}://@avatar-{run_id}/{link_id}/{instance}"


def open_in_link(ctx: zmq.Context, link_id: str, pad: str, endpoint: str, policy: str, size: int,
            feedback: bool = False, peer: str | None = None, defer: bool = False) -> "InLinkBase":
    """The receiving end for ``endpoint``: a Unix socket for ``unix://``, else ZeroMQ."""
    from .unixlink import UnixInLink, is_unix
    if is_unix(endpoint):
        return UnixInLink(link_id, pad, endpoint, policy, size, feedback, peer)
    return InLink(ctx, link_id, pad, endpoint, policy, size, feedback, peer, defer)


def open_out_link(ctx: zmq.Context, link_id: str, pad: str, endpoint: str, policy: str, size: int,
             seq_start: int = 0, hold: bool = False, peer: str | None = None) -> "OutLinkBase":
    """The sending end for ``endpoint``: a Unix socket for ``unix://``, else ZeroMQ."""
    from .unixlink import UnixOutLink, is_unix
    if is_unix(endpoint):
        return UnixOutLink(link_id, pad, endpoint, policy, size, seq_start, hold, peer)
    return OutLink(ctx, link_id, pad, endpoint, policy, size, seq_start, hold, peer)


def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def _tcp_options(sock: zmq.Socket) -> None:
    """Heartbeats, so a peer that vanished without closing (host gone) is noticed in seconds."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


class LinkWatch:
    """Follows the peers of one tcp link end through a socket monitor: up when the first ZeroMQ
    peer completed its handshake, down when the last one went away (closed, reset or silent).

    A TCP connection that never completes a handshake (a port scanner, a load balancer's probe)
    is reported by the monitor as a failed handshake right before its disconnect, and is ignored.
    """

    def __init__(self, sock: zmq.Socket, link_id: str, direction: str, peer: str | None, endpoint: str):
        self.link, self.direction, self.peer, self.endpoint = link_id, direction, peer, endpoint
        self.mon = sock.get_monitor_socket(_WATCHED)
        self.peers = 0
        self.failed = 0  # handshakes failed whose disconnect is still to come
        self.up = False
        self.changes = 0
        self.since = time.time()
        self.warned = False  # about being down for long, once per down spell

    def read(self) -> list[bool]:
        """Handle the monitor's events; the up/down transitions they made (True = up), in order."""
        changes: list[bool] = []
        while True:
            try:
                frames = self.mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return changes
            except zmq.ZMQError:  # closed under us
                return changes
            event = struct.unpack_from("=H", frames[0])[0]  # uint16 event, uint32 value; then the endpoint
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.peers += 1
            elif event in _HANDSHAKE_FAILED:
                self.failed += 1
            elif event == zmq.EVENT_DISCONNECTED:
                if self.failed:
                    self.failed -= 1
                elif self.peers:
                    self.peers -= 1
            up = self.peers > 0
            if up != self.up:
                self.up, self.since, self.warned = up, time.time(), False
                self.changes += 1
                changes.append(up)

    def overdue(self, after_s: float) -> bool:
        """Down for ``after_s`` seconds and not yet said so (True once per down spell)."""
        if self.up or self.warned or time.time() - self.since < after_s:
            return False
        self.warned = True
        return True

    def stats(self) -> dict:
        return {"up": self.up, "peer": self.peer, "endpoint": self.endpoint, "since": round(self.since, 3),
                "changes": self.changes}

    def close(self) -> None:
        self.mon.close(0)


class InLinkBase:
    """The receiving end of one link, whatever carries it: a policy-bounded queue, the link's
    counters and the data's age as the node takes it. A subclass receives (``_recv``)."""

    sock: Any  # what the worker polls for input: a ZeroMQ socket, or a file descriptor
    watch: "LinkWatch | None" = None
    bound = True

    def __init__(self, link_id: str, pad: str, endpoint: str, policy: str, size: int,
                 feedback: bool = False, peer: str | None = None):
        self.id, self.pad, self.endpoint, self.peer = link_id, pad, endpoint, peer
        self.feedback = feedback  # runs upstream; its EOS comes after ours, so it never holds ours back
        self.leaky = policy == "leaky"
        self.size = size
        self.queue: deque[Message] = deque()
        self.released = False
        self.expected = -1
        self.received = self.gaps = self.drops = self.resets = self.malformed = 0
        self.ended = self.marked = False
        self.open_bodies = True  # false for a node that passes messages on unread (Node.passthrough)
        # The link's latency: the age of the data (now - pts) when the node takes a message from it,
        # written by the worker (two array stores per message). pts is on this host's clock (pts are
        # not rebased between hosts), so a tcp link keeps none.
        self.timed = not is_tcp(endpoint)
        self.age_ns = array("q", bytes(8 * AGE_RING))
        self.age_at = array("q", bytes(8 * AGE_RING))  # when each age was taken
        self.age_i = 0  # ages ever written; the newest at age_i - 1 (masked)
        self.age_hist = RingHistogram(LATENCY_BOUNDS_US)

    def _recv(self) -> Message | None:
        """The next whole message the link holds, or None; ValueError for a malformed one."""
        raise NotImplementedError

    def bind(self, retry_s: float = BIND_RETRY_S) -> None:
        """Bind a receiving end created with ``defer`` (only a tcp link is)."""

    def release(self) -> None:
        """Let go of the endpoint for a hot-swap's new node (only a tcp link must)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def read_one(self) -> bool:
        """Move one message into the queue, if it has room; True if one was read.

        A wake-up at frame rate brings one message, so the worker reads it, processes it and
        sends the result before it asks the link for more (``read_available``).
        """
        if not self.leaky and len(self.queue) >= self.size:
            return False
        try:
            msg = self._recv()
        except ValueError:
            self.malformed += 1
            return True
        if msg is None:
            return False
        self._enqueue(msg)
        return True

    def read_available(self) -> None:
        """Move what the link holds into the queue, as far as the policy allows."""
        while self.read_one():
            pass
    def _enqueue(self, msg: Message) -> None:
        q = self.queue
        if msg.kind != Kind.DATA:
            q.append(msg)
            return
        self._count(msg.seq)
        self.received += 1
        if self.leaky and len(q) >= self.size and q[0].kind == Kind.DATA:
            q.popleft()
            self.drops += 1
        q.append(msg)
    def _count(self, seq: int) -> None:
        exp = self.expected
        if exp >= 0 and seq != exp:
            if seq > exp:
                self.gaps += seq - exp
            else:  # the sender restarted and numbers from zero again
                self.resets += 1
        self.expected = seq + 1
    def latency_stats(self, now: int) -> dict:
        """The data's age when the node took it (now - pts): percentiles over the last second's
        messages (None when none came), and a histogram of every age since start (``runtime.histogram``).

        Ages add up along a path: a link's figure is everything since its data's pts was stamped (a
        source's or a frame clock's), so the link behind a node that falls behind shows it, and so
        does every link after it."""
        n = min(self.age_i, AGE_RING)
        ages = np.frombuffer(self.age_ns, np.int64)[:n]
        recent = ages[np.frombuffer(self.age_at, np.int64)[:n] >= now - AGE_WINDOW_NS] / 1000.0
        out: dict = {"n": int(len(recent)), "window_s": AGE_WINDOW_NS / 1e9, "p50_us": None, "p95_us": None,
                     "max_us": None}
        if len(recent):
            p50, p95 = np.percentile(recent, [50, 95]).tolist()
            out.update(p50_us=round(p50, 1), p95_us=round(p95, 1), max_us=round(float(recent.max()), 1))
        # data stamped ahead of now (a pts scheduled in the future) counts as age 0 in the histogram
        out["hist"] = self.age_hist.update(np.maximum(np.frombuffer(self.age_ns, np.int64), 0), self.age_i)
        return out
    def stats(self, now: int | None = None) -> dict:
        out = {"pad": self.pad, "received": self.received, "gaps": self.gaps, "drops": self.drops,
               "depth": len(self.queue), "resets": self.resets, "malformed": self.malformed}
        if self.timed:
            out["latency"] = self.latency_stats(now_ns() if now is None else now)
        if self.watch is not None:
            out.update(self.watch.stats())
        return out


class InLink(InLinkBase):
    """A link's receiving end over ZeroMQ (a link from another host): a bound PULL socket.

    ``defer``: create the socket but bind it only on ``bind()`` (a hot-swap's new node, whose tcp
    port is still held by the node it replaces).
    """

    def __init__(self, ctx: zmq.Context, link_id: str, pad: str, endpoint: str, policy: str, size: int,
                 feedback: bool = False, peer: str | None = None, defer: bool = False):
        super().__init__(link_id, pad, endpoint, policy, size, feedback, peer)
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, size)
        self.sock.setsockopt(zmq.LINGER, 0)
        if is_tcp(endpoint):
            _tcp_options(self.sock)
            self.watch = LinkWatch(self.sock, link_id, "in", peer, endpoint)
        self.bound = False
        if not defer:
            self.bind()
    def bind(self, retry_s: float = BIND_RETRY_S) -> None:
        """Bind the endpoint; a tcp port still held (by the process this one replaces) is retried."""
        deadline = time.monotonic() + (retry_s if is_tcp(self.endpoint) else 0.0)
        while True:
            try:
                self.sock.bind(self.endpoint)
                self.bound = True
                return
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() >= deadline:
                    raise zmq.ZMQError(exc.errno, f"link {self.id}: cannot bind {self.endpoint}: {exc.strerror}") from None
                time.sleep(0.05)

    def release(self) -> None:
        """Hot-swap of a node fed from another host: keep what has arrived, close the port for the
        new node, and end what is queued with a MARK (the sender is on a runner we cannot ask)."""
        self.read_available()
        self.close()
        self.released = True
        self.queue.append(Message(caps="", kind=Kind.MARK))

    def read_available(self) -> None:
        if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # cheaper than a receive that fails
            super().read_available()

    def _recv(self) -> Message | None:
        """The prefix says how many array frames follow; each is copied if small, kept as a
        zero-copy frame if large. The body is unpacked here unless the node passes messages on
        unread (``open_bodies`` false: ``Node.passthrough``)."""
        sock = self.sock
        try:
            head = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        try:
            kind, n, seq, pts = decode_prefix(head)
            frames = []
            for _ in range(n):
                if not sock.getsockopt(zmq.RCVMORE):
                    raise ValueError("malformed message: fewer frames than the prefix announces")
                f = sock.recv(copy=False)
                frames.append(f.bytes if len(f) < ZERO_COPY_MIN else f.buffer)
            if n and sock.getsockopt(zmq.RCVMORE):
                raise ValueError("malformed message: more frames than the prefix announces")
        except ValueError:
            while sock.getsockopt(zmq.RCVMORE):  # the rest of this message, never the next one's
                sock.recv()
            raise
        msg = Message.received(kind, seq, pts, head[PREFIX.size:], frames)
        return msg.open() if self.open_bodies else msg

    def close(self) -> None:
        self.sock.close(0)
        if self.watch is not None:
            self.watch.close()


class OutLinkBase:
    """The sending end of one link, whatever carries it: sequence numbers, the outbox for what
    cannot go yet (leaky: the newest ``size``; block: the node waits), and the hot-swap's hold.

    ``hold`` stops sending after a drain MARK (hot-swap) until the link is released, possibly
    to a new endpoint. A subclass sends (``_send``: True when the message went, False when it
    must wait).
    """

    sock: Any  # what the worker polls, for ``out_event``, while the outbox waits
    out_event: int = zmq.POLLOUT
    watch: "LinkWatch | None" = None

    def __init__(self, link_id: str, pad: str, endpoint: str, policy: str, size: int, seq_start: int = 0,
                 hold: bool = False, peer: str | None = None):
        self.id, self.pad, self.peer, self.endpoint = link_id, pad, peer, endpoint
        self.leaky = policy == "leaky"
        self.size = size
        self.seq = seq_start
        self.outbox: deque[list] = deque()
        self.hold = hold
        self.sent = self.drops = 0

    def _send(self, frames: list) -> bool:
        raise NotImplementedError

    def connect(self, endpoint: str) -> None:
        raise NotImplementedError

    def close(self, linger_ms: int = 2000) -> None:
        raise NotImplementedError

    def _head_busy(self) -> bool:
        """True while the outbox's first message is partly sent (it cannot be dropped)."""
        return False

    def retry_in(self) -> float | None:
        """Seconds until the link tries to reach its peer again, when it waits for one."""
        return None

    def push(self, msg: Message) -> None:
        """Queue a message (numbered now) and send what can be sent."""
        frames = encode(msg, self.seq)
        self.seq += 1
        if not self.outbox and not self.hold and self._send(frames):
            self.sent += 1
            return
        self.outbox.append(frames)
        if self.leaky and len(self.outbox) > self.size:
            self._drop_oldest_data()

    def push_control(self, kind: Kind) -> None:
        """EOS or MARK, in-band behind the data; it takes no sequence number of its own."""
        self.outbox.append(encode(Message(caps="", kind=kind), self.seq))
        self.flush()

    def _drop_oldest_data(self) -> None:
        busy = self._head_busy()
        for i, frames in enumerate(self.outbox):
            if not _is_control(frames) and not (i == 0 and busy):
                del self.outbox[i]
                self.drops += 1
                return

    def flush(self) -> None:
        """Send queued messages until the link is full, or a held MARK is out."""
        box = self.outbox
        while box and not self.hold:
            frames = box[0]
            if not self._send(frames):
                return
            box.popleft()
            if _is_control(frames):
                if _kind(frames) == Kind.MARK:
                    self.hold = True
            else:
                self.sent += 1

    @property
    def must_wait(self) -> bool:
        """A block link whose outbox is over budget: the emitting node waits for room."""
        if self.leaky:
            return False
        return len(self.outbox) > (self.size if self.hold else 0)

    def stats(self) -> dict:
        out = {"pad": self.pad, "sent": self.sent, "drops": self.drops, "pending": len(self.outbox),
               "seq": self.seq, "held": self.hold}
        if self.watch is not None:
            out.update(self.watch.stats())
        return out


class OutLink(OutLinkBase):
    """A link's sending end over ZeroMQ (a link to another host): a connected PUSH socket."""

    def __init__(self, ctx: zmq.Context, link_id: str, pad: str, endpoint: str, policy: str, size: int,
                 seq_start: int = 0, hold: bool = False, peer: str | None = None):
        super().__init__(link_id, pad, endpoint, policy, size, seq_start, hold, peer)
        self.ctx = ctx
        self.sock: zmq.Socket
        self.connect(endpoint)

    def connect(self, endpoint: str) -> None:
        """(Re)connect; a tcp link gets a new ``watch`` (the worker re-registers it)."""
        old = getattr(self, "sock", None)  # none yet on the first connect
        if old is not None:
            old.close(0)
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        self.endpoint = endpoint
        s = self.ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, self.size)
        s.setsockopt(zmq.IMMEDIATE, 1)  # queue in our outbox, never in a pipe to a dead peer
        s.setsockopt(zmq.LINGER, 2000)
        s.setsockopt(zmq.RECONNECT_IVL, 10)
        if is_tcp(endpoint):  # another host: it may be away for long, and may vanish silently
            s.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            s.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
            _tcp_options(s)
            self.watch = LinkWatch(s, self.id, "out", self.peer, endpoint)
        else:
            s.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        s.connect(endpoint)
        self.sock = s

    def _send(self, frames: list) -> bool:
        try:
            if len(frames) == 1:  # the common case: small arrays ride in the header
                self.sock.send(frames[0], zmq.NOBLOCK)
            else:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=not is_large(frames))
        except zmq.Again:
            return False
        return True

    def close(self, linger_ms: int = 2000) -> None:
        self.sock.close(linger_ms)
        if self.watch is not None:
            self.watch.close()


def _kind(frames: list) -> int:
    head = frames[0]
    return head[0] if isinstance(head, (bytes, bytearray)) else bytes(head)[0]


def _is_control(frames: list) -> bool:
    return _kind(frames) != Kind.DATA
