"""Link ends over ZeroMQ: the receiver binds a PULL, the sender connects a PUSH.

Queue policy is applied at both ends: ``block`` never drops (the sender waits for room);
``leaky`` keeps the newest ``size`` messages and counts every one it drops. Sequence numbers
are per link, so the receiver counts gaps instead of guessing loss.
"""
from __future__ import annotations

from collections import deque

import zmq

from .message import ZERO_COPY_MIN, Kind, Message, decode, decode_header, encode, frame_nbytes, is_large


def ipc_endpoint(run_id: str, link_id: str, instance: int) -> str:
    """A Linux abstract-namespace socket: nothing is left on disk, even after SIGKILL."""
    return f"ipc://@avatar-{run_id}/{link_id}/{instance}"


class InLink:
    """The receiving end of one link: a bound PULL socket and a policy-bounded queue."""

    def __init__(self, ctx: zmq.Context, link_id: str, pad: str, endpoint: str, policy: str, size: int,
                 feedback: bool = False):
        self.id, self.pad, self.endpoint = link_id, pad, endpoint
        self.feedback = feedback  # runs upstream; its EOS comes after ours, so it never holds ours back
        self.leaky = policy == "leaky"
        self.size = size
        self.queue: deque[Message] = deque()
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, size)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.expected = -1
        self.received = self.gaps = self.drops = self.resets = self.malformed = 0
        self.ended = self.marked = False

    def read_available(self) -> None:
        """Move what the socket holds into the queue, as far as the policy allows."""
        q, sock = self.queue, self.sock
        while self.leaky or len(q) < self.size:
            try:
                msg = self._recv(sock)
            except zmq.Again:
                return
            except ValueError:
                self.malformed += 1
                continue
            if msg.kind != Kind.DATA:
                q.append(msg)
                continue
            self._count(msg.seq)
            self.received += 1
            if self.leaky and len(q) >= self.size and q[0].kind == Kind.DATA:
                q.popleft()
                self.drops += 1
            q.append(msg)

    @staticmethod
    def _recv(sock: zmq.Socket) -> Message:
        """Header first; then each array frame by copy if small, as a zero-copy frame if large."""
        frames = [sock.recv(zmq.NOBLOCK)]
        try:
            head = decode_header(frames[0])
            sizes = frame_nbytes(head[6])
            for size in sizes:
                if not sock.getsockopt(zmq.RCVMORE):
                    raise ValueError("malformed message: fewer frames than arrays")
                frames.append(sock.recv(copy=size < ZERO_COPY_MIN))
            if sizes and sock.getsockopt(zmq.RCVMORE):
                raise ValueError("malformed message: more frames than arrays")
        except ValueError:
            while sock.getsockopt(zmq.RCVMORE):  # the rest of this message, never the next one's
                sock.recv()
            raise
        return decode(frames, head)

    def _count(self, seq: int) -> None:
        exp = self.expected
        if exp >= 0 and seq != exp:
            if seq > exp:
                self.gaps += seq - exp
            else:  # the sender restarted and numbers from zero again
                self.resets += 1
        self.expected = seq + 1

    def stats(self) -> dict:
        return {"pad": self.pad, "received": self.received, "gaps": self.gaps, "drops": self.drops,
                "depth": len(self.queue), "resets": self.resets, "malformed": self.malformed}

    def close(self) -> None:
        self.sock.close(0)


class OutLink:
    """The sending end of one link: a connected PUSH socket and an outbox for what cannot go yet.

    ``hold`` stops sending after a drain MARK (hot-swap) until the link is released, possibly
    to a new endpoint.
    """

    def __init__(self, ctx: zmq.Context, link_id: str, pad: str, endpoint: str, policy: str, size: int,
                 seq_start: int = 0, hold: bool = False):
        self.ctx, self.id, self.pad = ctx, link_id, pad
        self.leaky = policy == "leaky"
        self.size = size
        self.seq = seq_start
        self.outbox: deque[list] = deque()
        self.hold = hold
        self.sent = self.drops = 0
        self.sock: zmq.Socket | None = None
        self.connect(endpoint)

    def connect(self, endpoint: str) -> None:
        if self.sock is not None:
            self.sock.close(0)
        self.endpoint = endpoint
        s = self.ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, self.size)
        s.setsockopt(zmq.IMMEDIATE, 1)  # queue in our outbox, never in a pipe to a dead peer
        s.setsockopt(zmq.LINGER, 2000)
        s.setsockopt(zmq.RECONNECT_IVL, 10)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        s.connect(endpoint)
        self.sock = s

    def push(self, msg: Message) -> None:
        """Queue a message (numbered now) and send what can be sent."""
        frames = encode(msg, self.seq)
        self.seq += 1
        if not self.outbox and not self.hold:
            try:
                if len(frames) == 1:  # the common case: small arrays ride in the header
                    self.sock.send(frames[0], zmq.NOBLOCK)
                else:
                    self.sock.send_multipart(frames, zmq.NOBLOCK, copy=not is_large(frames))
                self.sent += 1
                return
            except zmq.Again:
                pass
        self.outbox.append(frames)
        if self.leaky and len(self.outbox) > self.size:
            self._drop_oldest_data()

    def push_control(self, kind: Kind) -> None:
        """EOS or MARK, in-band behind the data; it takes no sequence number of its own."""
        self.outbox.append(encode(Message(caps="", kind=kind), self.seq))
        self.flush()

    def _drop_oldest_data(self) -> None:
        for i, frames in enumerate(self.outbox):
            if not _is_control(frames):
                del self.outbox[i]
                self.drops += 1
                return

    def flush(self) -> None:
        """Send queued messages until the socket is full, or a held MARK is out."""
        box = self.outbox
        while box and not self.hold:
            frames = box[0]
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=not is_large(frames))
            except zmq.Again:
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
        return {"pad": self.pad, "sent": self.sent, "drops": self.drops, "pending": len(self.outbox),
                "seq": self.seq, "held": self.hold}

    def close(self, linger_ms: int = 2000) -> None:
        if self.sock is not None:
            self.sock.close(linger_ms)


def _kind(frames: list) -> int:
    head = frames[0]
    return head[1] if isinstance(head, (bytes, bytearray)) else bytes(head)[1]


def _is_control(frames: list) -> bool:
    return _kind(frames) != Kind.DATA
