"""Link ends inside one host: Unix SOCK_SEQPACKET sockets, read and written by the node's own thread.

A ZeroMQ ``ipc://`` link hands every message to ZeroMQ's I/O thread at both ends, so one hop wakes
four threads and copies the arrays through ZeroMQ's buffers as well as the kernel's: about 340 µs
of CPU a message between two processes on a slow 2-core machine, against about 70 µs for the
same relay over a Unix socket that the node's loop reads and writes itself (and 730 against
120 µs for a 150 KB batch). Links between hosts stay ZeroMQ (``runtime.transport``).

A message is the frames ``runtime.message.encode`` makes, behind a small table::

    total u32 | frames u16 | frame length u32 x frames | frame 0 | frame 1 | ...

(little-endian; ``total`` counts the bytes after itself), sent as SEQPACKET records of at most
``RECORD_MAX`` bytes: a record is delivered whole or not at all, so a batch bigger than one
record is a few records in a row on its connection, and the receiver fills one buffer with them
(its arrays are read-only views of it: no copy after the kernel's). The receiver binds and
listens (abstract namespace: nothing on disk), each sender connects; a sender that finds nobody
listening keeps its messages in its outbox and tries again, 10 ms after the first failure and
then up to every 200 ms, as ZeroMQ's reconnection did. A connection that breaks the framing
(only a foreign program can) is counted as malformed and closed; the link goes on.
"""
from __future__ import annotations

import errno
import select
import socket
import struct
import time
from typing import NoReturn

from .message import PREFIX, Kind, MalformedMessage, Message, decode_prefix
from .transport import InLinkBase, OutLinkBase

SCHEME = "unix://"
RECORD_MAX = 128 * 1024  # under any Linux default socket buffer (wmem_max 212992: 425984 usable)
SNDBUF = 1 << 20  # asked for; the kernel caps it at net.core.wmem_max (x2)
MESSAGE_MAX = 1 << 30  # a larger announced size is not one of ours: the connection is closed
RETRY_FIRST_S, RETRY_MAX_S = 0.010, 0.200
_TOTAL = struct.Struct("<I")
_COUNT = struct.Struct("<H")
_TRUNC = socket.MSG_TRUNC
_SEND_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED)


def is_unix(endpoint: str) -> bool:
    return endpoint.startswith(SCHEME)


def address(endpoint: str) -> str:
    """``unix://@name`` -> the abstract socket address; ``unix:///path`` -> a filesystem path."""
    rest = endpoint[len(SCHEME):]
    return "\0" + rest[1:] if rest.startswith("@") else rest


def records(frames: list) -> list[list]:
    """One message's frames as the records that carry it (lists of buffers for ``sendmsg``)."""
    views = [f if type(f) is bytes else memoryview(f).cast("B") for f in frames]
    lens = [len(v) for v in views]
    table = struct.pack(f"<IH{len(lens)}I", 2 + 4 * len(lens) + sum(lens), len(lens), *lens)
    size = len(table) + sum(lens)
    if size <= RECORD_MAX:
        return [[table, *views]]
    out: list[list] = []
    cur: list = [table]
    room = RECORD_MAX - len(table)
    for v in views:
        v = memoryview(v)
        while len(v):
            if not room:
                out.append(cur)
                cur, room = [], RECORD_MAX
            take = min(room, len(v))
            cur.append(v[:take])
            v = v[take:]
            room -= take
    out.append(cur)
    return out


def parse(buf: bytearray) -> tuple[Kind, int, int, bytes, list]:
    """(kind, seq, pts_ns, body, array frames) of one message's bytes after ``total``; ValueError
    (MalformedMessage) if they are not a message."""
    size = len(buf)
    if size < 2:
        raise _bad("a message shorter than its frame count")
    (n,) = _COUNT.unpack_from(buf, 0)
    start = 2 + 4 * n
    if n < 1 or start > size:
        raise _bad(f"{n} frames announced in {size} bytes")
    lens = struct.unpack_from(f"<{n}I", buf, 2)
    if start + sum(lens) != size:
        raise _bad(f"frames of {sum(lens)} bytes in a message of {size - start}")
    head = bytes(memoryview(buf)[start:start + lens[0]])
    kind, count, seq, pts = decode_prefix(head)
    if count != n - 1:
        raise _bad(f"the prefix announces {count} array frames, {n - 1} came")
    frames = []
    view = memoryview(buf).toreadonly()
    at = start + lens[0]
    for n_bytes in lens[1:]:
        frames.append(view[at:at + n_bytes])
        at += n_bytes
    return kind, seq, pts, head[PREFIX.size:], frames


def _bad(text: str) -> MalformedMessage:
    return MalformedMessage(f"malformed message: {text}")


class _Conn:
    """One sender's connection and the message it is part way through."""

    __slots__ = ("sock", "buf", "filled")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf: bytearray | None = None
        self.filled = 0


class UnixInLink(InLinkBase):
    """A link's receiving end inside one host: a listening SEQPACKET socket and the connections of
    its senders (a hot-swap or a restart upstream connects anew), behind one epoll descriptor
    that the worker polls (``sock``)."""

    def __init__(self, link_id: str, pad: str, endpoint: str, policy: str, size: int,
                 feedback: bool = False, peer: str | None = None):
        super().__init__(link_id, pad, endpoint, policy, size, feedback, peer)
        self.epoll = select.epoll()
        self.sock = self.epoll.fileno()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.listener.bind(address(endpoint))
        except OSError as exc:
            self.listener.close()
            self.epoll.close()
            raise OSError(exc.errno, f"link {link_id}: cannot bind {endpoint}: {exc.strerror}") from None
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        self.conns: list[_Conn] = []
        self.scratch = bytearray(RECORD_MAX)
        self.closed_bad = 0  # connections closed for breaking the framing

    def _accept(self) -> bool:
        took = False
        while True:
            try:
                s, _ = self.listener.accept()
            except OSError:  # none waiting (or one gone before we took it)
                return took
            s.setblocking(False)
            self.epoll.register(s.fileno(), select.EPOLLIN)
            self.conns.append(_Conn(s))
            took = True

    def _drop(self, conn: _Conn) -> None:
        try:
            self.epoll.unregister(conn.sock.fileno())
        except (OSError, ValueError):
            pass
        conn.sock.close()
        self.conns.remove(conn)

    def _recv(self) -> Message | None:
        for conn in tuple(self.conns):  # (a connection that ends is dropped from the list as we go)
            msg = self._from(conn)
            if msg is not None:
                if len(self.conns) > 1:  # the next read starts at the next sender
                    self.conns.remove(conn)
                    self.conns.append(conn)
                return msg
        if self._accept():
            return self._recv()
        return None

    def _from(self, conn: _Conn) -> Message | None:
        """The next whole message on this connection, or None when it has none (yet)."""
        sock = conn.sock
        while True:
            buf = conn.buf
            try:
                if buf is None:
                    n = sock.recv_into(self.scratch, RECORD_MAX, _TRUNC)
                else:
                    room = len(buf) - conn.filled
                    n = sock.recv_into(memoryview(buf)[conn.filled:], min(room, RECORD_MAX), _TRUNC)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                n = 0
            if n == 0:  # the sender closed (a message it left half sent is lost with it)
                self._drop(conn)
                return None
            if buf is None:
                if n < 4 or n > RECORD_MAX:
                    self._broken(conn, f"a record of {n} bytes")
                (total,) = _TOTAL.unpack_from(self.scratch, 0)
                if total > MESSAGE_MAX or n - 4 > total:
                    self._broken(conn, f"a message of {total} bytes announced in a record of {n}")
                buf = bytearray(total)
                buf[:n - 4] = memoryview(self.scratch)[4:n]
                conn.buf, conn.filled = buf, n - 4
            else:
                if n > room:
                    self._broken(conn, f"a record of {n} bytes where {room} were left of a message")
                conn.filled += n
            if conn.filled == len(buf):
                conn.buf = None
                return self._message(buf)

    def _message(self, buf: bytearray) -> Message:
        kind, seq, pts, body, frames = parse(buf)
        msg = Message.received(kind, seq, pts, body, frames)
        return msg.open() if self.open_bodies else msg

    def _broken(self, conn: _Conn, what: str) -> NoReturn:
        self._drop(conn)
        self.closed_bad += 1
        raise _bad(f"{what} on link {self.id}; the connection was closed")

    def stats(self, now: int | None = None) -> dict:
        out = super().stats(now)
        out["senders"] = len(self.conns)
        return out

    def close(self) -> None:
        for conn in list(self.conns):
            self._drop(conn)
        self.listener.close()
        self.epoll.close()


class UnixOutLink(OutLinkBase):
    """A link's sending end inside one host: a SEQPACKET socket connected to the receiver's.

    The worker polls ``sock``, an epoll descriptor that holds the connected socket while the
    outbox waits for room (so a reconnect never changes what the worker polls).
    """

    out_event: int = select.POLLIN  # an epoll descriptor is readable when a socket in it is ready

    def __init__(self, link_id: str, pad: str, endpoint: str, policy: str, size: int, seq_start: int = 0,
                 hold: bool = False, peer: str | None = None):
        super().__init__(link_id, pad, endpoint, policy, size, seq_start, hold, peer)
        self.epoll = select.epoll()
        self.sock = self.epoll.fileno()
        self.conn: socket.socket | None = None
        self.watching = False  # the connection is in the epoll for EPOLLOUT
        self.partial: list[list] | None = None  # the records of outbox[0] still to send
        self.retry_ivl = 0.0
        self.next_try = 0.0
        self.connects = 0
        self.connect(endpoint)

    def connect(self, endpoint: str) -> None:
        """(Re)connect, to a new endpoint after a hot-swap; a message half sent starts again."""
        self._disconnect()
        self.endpoint = endpoint
        self.retry_ivl, self.next_try = 0.0, 0.0
        self._try_connect()

    def _try_connect(self) -> bool:
        now = time.monotonic()
        if now < self.next_try:
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        s.setblocking(False)
        try:
            s.connect(address(self.endpoint))
        except OSError:  # nobody listens yet (a receiver starting or restarting): later
            s.close()
            self.retry_ivl = min(RETRY_MAX_S, self.retry_ivl * 2) if self.retry_ivl else RETRY_FIRST_S
            self.next_try = now + self.retry_ivl
            return False
        self.conn, self.retry_ivl = s, 0.0
        self.connects += 1
        return True

    def _disconnect(self) -> None:
        if self.conn is not None:
            self._watch(False)
            self.conn.close()
            self.conn = None
        self.partial = None

    def _watch(self, on: bool) -> None:
        if on != self.watching and self.conn is not None:
            if on:
                self.epoll.register(self.conn.fileno(), select.EPOLLOUT)
            else:
                self.epoll.unregister(self.conn.fileno())
            self.watching = on

    def _head_busy(self) -> bool:
        return self.partial is not None

    def retry_in(self) -> float | None:
        if self.conn is not None:
            return None
        return max(0.0, self.next_try - time.monotonic())

    def _send(self, frames: list) -> bool:
        if self.conn is None and not self._try_connect():
            return False
        conn = self.conn
        assert conn is not None
        recs = self.partial
        if recs is None:
            recs = records(frames)
        sent = 0
        try:
            for rec in recs:
                conn.sendmsg(rec, (), _SEND_FLAGS)
                sent += 1
        except (BlockingIOError, InterruptedError):
            if sent:  # part of the message is out: the rest must follow on this connection
                self.partial = recs[sent:]
            self._watch(True)
            return False
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            self._disconnect()  # the receiver went away: reconnect (what it had not read is lost)
            self.retry_ivl = RETRY_FIRST_S
            self.next_try = time.monotonic() + RETRY_FIRST_S
            return False
        self.partial = None
        if self.watching:
            self._watch(False)
        return True

    def stats(self) -> dict:
        out = super().stats()
        out["connected"] = self.conn is not None
        return out

    def close(self, linger_ms: int = 2000) -> None:
        """Send what the outbox holds for up to ``linger_ms`` while the receiver is there (what was
        sent stays readable by it after we are gone), then close."""
        deadline = time.monotonic() + linger_ms / 1000.0
        while self.outbox and not self.hold and self.conn is not None:
            self.flush()
            left = deadline - time.monotonic()
            if not self.outbox or left <= 0 or self.conn is None:
                break
            self.epoll.poll(min(left, 0.05))
        self._disconnect()
        self.epoll.close()
