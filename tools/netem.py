#!/usr/bin/env python3
"""netem-like conditions (delay, jitter, loss, rate) on one interface of a network namespace.

    python tools/netem.py --ns avnet-s --dev avm1a2b3ca --delay 40 --loss 1 --rate 1mbit
        (holds them until Ctrl-C, then takes them off)

    from netem import Link, Unsupported
    link = Link(server.prefix, dev, peer=(viewer.prefix, peer_dev))  # the two ends of a veth pair
    with link:
        link.set(delay_ms=40, loss_pct=1)       # raises Unsupported(reason) where it cannot be made
        link.set(delay_ms=40, loss_pct=1, rate="16kbit")   # cut the rate on top; the delay keeps running
        print(link.mechanism)                   # what does it, and why

As ``tc netem`` the conditions act on the packets leaving through the interface. Where the kernel
has ``sch_netem`` (probed once per process) they are one ``netem`` qdisc, with a ``tbf`` under it
for the rate (the netem wiki's recipe; its jitter may reorder packets, as netem's does; not run on
this machine, whose kernel has no netem). A kernel without it (this machine's Firecracker 6.18 build
also lacks fq, prio and the tc actions) gets the same effects from what it does have:

- rate: a ``tbf`` token bucket, the interface's root qdisc;
- delay and jitter: an iptables ``NFQUEUE`` rule hands each packet to a small process started in
  the namespace (``python tools/netem.py delayer``; it speaks nfnetlink_queue itself, so there is
  no library to build), which accepts the packet once its delay is over. Packets leave in the
  order they came (jitter never reorders: a packet waits at least until the one before it left),
  so a fixed delay keeps the stream as it was;
- loss: an iptables rule ``-m statistic --mode random -j DROP`` (a chain of its own in the mangle
  table).

With ``peer`` (the interface is one end of a veth pair) the delay and the loss act where the
packets arrive, at the other end (PREROUTING there): the same packets, after the rate. That is
the place to use: on the way out (POSTROUTING, no ``peer``) a packet a local TCP socket sent
counts against the socket while it waits in the queue, and TCP Small Queues then holds the rest
back (a 40 ms delay became 40-75 ms, the stream sent in bursts); a netem qdisc orphans packets,
the queue cannot. On the way out the delayer also does the loss (a DROP rule there fails the
sender's own send with EPERM, which a lossy link never does).

``set`` changes any of them while the link carries traffic, without restarting the delayer (it
reads new values on its stdin; its stdin closing, as when this process dies, ends it: it is never
left behind). ``clear`` (and leaving the ``with``) takes everything off and stops it. Limits of the
fallback: the userspace delay costs CPU per packet (about 25 us here: 1000 packets a second take
2.5 % of a core; fine for a viewer's link, not for a bulk transfer); IPv4 only; iptables (the legacy or the nft backend) and the kernel's
nfnetlink_queue needed, and root.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Conditions", "Link", "Unsupported", "delayer"]


class Unsupported(RuntimeError):
    """The conditions asked for cannot be made here; the message says why (a test's skip reason)."""


@dataclass(frozen=True)
class Conditions:
    """What a link does to the packets leaving through it (netem's terms)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0  # uniform within +- this, as netem's default
    loss_pct: float = 0.0
    rate: str | None = None  # tc units ("16kbit", "1mbit"); None: unlimited

    def __str__(self) -> str:
        parts = [f"delay {self.delay_ms:g} ms" + (f" +- {self.jitter_ms:g}" if self.jitter_ms else "")
                 if self.delay_ms or self.jitter_ms else "",
                 f"loss {self.loss_pct:g} %" if self.loss_pct else "", f"rate {self.rate}" if self.rate else ""]
        return ", ".join(p for p in parts if p) or "none"


# the tbf the rate is made with: a 1600-byte bucket (one packet: no burst above the rate) and at
# most 300 ms of queue (a slow link's buffer; beyond it packets are dropped)
_TBF = ["burst", "1600", "latency", "300ms"]
_HAS_NETEM: bool | None = None  # the kernel's sch_netem: probed once per process
_queue_nums = itertools.count(1000 + os.getpid() % 20000)


def _run(cmd: Sequence[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, input=input)
    if check and r.returncode != 0:
        raise subprocess.CalledProcessError(r.returncode, list(cmd), r.stdout, r.stderr)
    return r


class Link:
    """netem-like conditions on the packets leaving ``dev`` in the namespace ``prefix`` runs in."""

    def __init__(self, prefix: Sequence[str], dev: str, peer: tuple[Sequence[str], str] | None = None):
        """``peer``: the other end of a veth pair (its namespace's prefix, its name): the fallback's
        delay and loss then act where the packets arrive (see the module's doc)."""
        self.prefix, self.dev, self._peer = list(prefix), dev, peer
        # where the fallback's netfilter rules and delayer go: the packets leaving dev here, or arriving at the peer
        self._nf_prefix, self._hook = (list(peer[0]), ["PREROUTING", "-i", peer[1]]) if peer else \
            (self.prefix, ["POSTROUTING", "-o", dev])
        self.now = Conditions()
        self.mechanism = "none yet"
        self._netem: bool | None = None
        self._iptables: str | None = None
        self._chain = f"avnetem-{peer[1] if peer else dev}"[:28]
        self._delayer: subprocess.Popen | None = None
        self._queue = next(_queue_nums)
        self._rate_on = False
        self._nf: list[str] | None = None  # what netfilter does now (None: nothing set up yet)

    # --- what works here --------------------------------------------------------------------------
    def _has_netem(self) -> bool:
        global _HAS_NETEM
        if _HAS_NETEM is None:
            r = _run([*self.prefix, "tc", "qdisc", "add", "dev", self.dev, "root", "netem", "delay", "0ms"], check=False)
            if r.returncode == 0:
                _run([*self.prefix, "tc", "qdisc", "del", "dev", self.dev, "root"], check=False)
            # "Specified qdisc kind is unknown": no sch_netem (another error, as a qdisc already
            # there, says nothing about it; applying the conditions will)
            _HAS_NETEM = r.returncode == 0 or "unknown" not in r.stderr.lower()
        return _HAS_NETEM

    def _find_iptables(self) -> str:
        """The first iptables that can make the rules here (legacy or nft backend): its name."""
        if self._iptables:
            return self._iptables
        found = [n for n in ("iptables", "iptables-legacy", "iptables-nft") if shutil.which(n)]
        if not found:
            raise Unsupported("netem: kernel has no sch_netem, and there is no iptables for the fallback "
                              "(Debian: apt-get install iptables)")
        errors = []
        for name in found:
            r = _run([*self._nf_prefix, name, "-w", "-t", "mangle", "-N", self._chain], check=False)
            if r.returncode == 0 or "exists" in r.stderr:
                probe = ["-A", self._chain, "-m", "statistic", "--mode", "random", "--probability", "0.5", "-j", "DROP"]
                r2 = _run([*self._nf_prefix, name, "-w", "-t", "mangle", *probe], check=False)
                r3 = _run([*self._nf_prefix, name, "-w", "-t", "mangle", "-A", self._chain, "-j", "NFQUEUE",
                           "--queue-num", str(self._queue)], check=False)
                _run([*self._nf_prefix, name, "-w", "-t", "mangle", "-F", self._chain], check=False)
                if r2.returncode == 0 and r3.returncode == 0:
                    self._iptables = name
                    _run([*self._nf_prefix, name, "-w", "-t", "mangle", "-A", *self._hook, "-j", self._chain])
                    return name
                _run([*self._nf_prefix, name, "-w", "-t", "mangle", "-X", self._chain], check=False)
                errors.append(f"{name}: {(r2.stderr or r3.stderr).strip()[:120]}")
            else:
                errors.append(f"{name}: {r.stderr.strip()[:120]}")
        raise Unsupported("netem: kernel has no sch_netem, and iptables cannot make the fallback's rules "
                          f"(statistic, NFQUEUE): {'; '.join(errors)}")

    # --- changing the conditions ------------------------------------------------------------------
    def set(self, delay_ms: float = 0.0, jitter_ms: float = 0.0, loss_pct: float = 0.0,
            rate: str | None = None) -> Conditions:
        """Make these the link's conditions now (the others are taken off); raises Unsupported."""
        return self.apply(Conditions(delay_ms, jitter_ms, loss_pct, rate))

    def apply(self, c: Conditions) -> Conditions:
        """As ``set``, with a Conditions."""
        if c.delay_ms < 0 or c.jitter_ms < 0 or not 0 <= c.loss_pct <= 100:
            raise ValueError(f"netem: bad conditions {c!r}")
        if os.geteuid() != 0:
            raise Unsupported("netem: changing a link's conditions needs root")
        if shutil.which("tc") is None:
            raise Unsupported("netem: no tc (Debian: apt-get install iproute2)")
        if self._netem is None:
            self._netem = self._has_netem()
        if self._netem:
            self._apply_netem(c)
        else:
            self._apply_fallback(c)
        self.now = c
        return c

    def _apply_netem(self, c: Conditions) -> None:
        tc = [*self.prefix, "tc", "qdisc"]
        if c == Conditions():
            self._clear_qdisc()
            return
        em = ["netem", "limit", "10000"]
        if c.delay_ms or c.jitter_ms:
            em += ["delay", f"{c.delay_ms:g}ms"] + ([f"{c.jitter_ms:g}ms"] if c.jitter_ms else [])
        if c.loss_pct:
            em += ["loss", f"{c.loss_pct:g}%"]
        _run([*tc, "replace", "dev", self.dev, "root", "handle", "1:", *em])  # same kind: a change, the child stays
        if c.rate:
            _run([*tc, "replace", "dev", self.dev, "parent", "1:1", "handle", "10:", "tbf", "rate", c.rate, *_TBF])
        elif self.now.rate:
            _run([*tc, "del", "dev", self.dev, "parent", "1:1", "handle", "10:"], check=False)
        self.mechanism = "netem: the kernel's sch_netem" + (" with a tbf under it for the rate" if c.rate else "")

    def _apply_fallback(self, c: Conditions) -> None:
        nf: list[str] = []
        # a DROP rule on the way out of this namespace fails the local sender's send (EPERM), which a
        # lossy link never does: there the delayer drops instead (its verdict comes after the send returned)
        by_delayer = 0.0 if self._peer else c.loss_pct
        same = (c.delay_ms, c.jitter_ms, c.loss_pct) == (self.now.delay_ms, self.now.jitter_ms, self.now.loss_pct)
        if same and self._nf is not None:  # only the rate changes (a cut): tc alone, at once
            nf = self._nf
        elif c.delay_ms or c.jitter_ms or c.loss_pct or self._iptables:
            ipt = self._find_iptables()
            if c.delay_ms or c.jitter_ms or by_delayer or self._delayer is not None:
                self._delayer_set(c.delay_ms, c.jitter_ms, by_delayer)
            if c.delay_ms or c.jitter_ms:
                nf.append(f"delay by NFQUEUE (userspace, {ipt})")
            rules = []
            if c.loss_pct and not by_delayer:
                rules.append(f"-A {self._chain} -m statistic --mode random --probability {c.loss_pct / 100:.6f} -j DROP")
                nf.append(f"loss by iptables statistic ({ipt})")
            elif by_delayer:
                nf.append("loss by the NFQUEUE delayer (a DROP rule would fail the sender's send)")
            if self._delayer is not None:
                rules.append(f"-A {self._chain} -j NFQUEUE --queue-num {self._queue}")
            # one transaction: the chain is flushed and filled at once (no packet slips past the queue)
            _run([*self._nf_prefix, f"{ipt}-restore", "-w", "--noflush"],
                 input=f"*mangle\n:{self._chain} - [0:0]\n" + "".join(r + "\n" for r in rules) + "COMMIT\n")
        self._nf = nf
        tc = [*self.prefix, "tc", "qdisc"]
        if c.rate:
            _run([*tc, "replace", "dev", self.dev, "root", "tbf", "rate", c.rate, *_TBF])
            self._rate_on = True
        elif self._rate_on:
            self._clear_qdisc()
        where = f"at {self._hook[2]}, where the packets arrive: " if self._peer and nf else ""
        parts = ([where + ", ".join(nf)] if nf else []) + (["rate by tc tbf"] if c.rate else [])
        self.mechanism = "netem: kernel has no sch_netem; " + ("; ".join(parts) or "nothing to do")

    def _clear_qdisc(self) -> None:
        _run([*self.prefix, "tc", "qdisc", "del", "dev", self.dev, "root"], check=False)
        self._rate_on = False

    # --- the delayer process ----------------------------------------------------------------------
    def _delayer_set(self, delay_ms: float, jitter_ms: float, loss_pct: float) -> None:
        if self._delayer is not None and self._delayer.poll() is not None:
            raise RuntimeError(f"netem: the delayer ended ({self._delayer.returncode}): {self._delayer_err()}")
        if self._delayer is None:
            cmd = [*self._nf_prefix, sys.executable, str(Path(__file__).resolve()), "delayer", "--queue",
                   str(self._queue), "--delay-ms", f"{delay_ms:g}", "--jitter-ms", f"{jitter_ms:g}", "--loss-pct",
                   f"{loss_pct:g}"]
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, bufsize=1)
            ready, _, _ = select.select([p.stdout], [], [], 10.0)
            line = p.stdout.readline().strip() if ready else ""  # type: ignore[union-attr]
            if line != "ready":
                self._stop_delayer(p)
                raise Unsupported(f"netem: kernel has no sch_netem, and the NFQUEUE delayer could not start "
                                  f"(nfnetlink_queue): {line or 'no answer in 10 s'}; {self._err_of(p)}")
            self._delayer = p
            return
        self._delayer.stdin.write(f"{delay_ms:g} {jitter_ms:g} {loss_pct:g}\n")  # type: ignore[union-attr]
        self._delayer.stdin.flush()  # type: ignore[union-attr]

    @staticmethod
    def _err_of(p: subprocess.Popen) -> str:
        try:
            return (p.stderr.read() if p.stderr and p.poll() is not None else "").strip()[-300:]
        except (OSError, ValueError):
            return ""

    def _delayer_err(self) -> str:
        return self._err_of(self._delayer) if self._delayer else ""

    @staticmethod
    def _stop_delayer(p: subprocess.Popen) -> None:
        try:
            p.stdin.close()  # type: ignore[union-attr]  # it lets the held packets go and ends
        except OSError:
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        for f in (p.stdout, p.stderr):
            if f:
                f.close()

    @property
    def delayer_pid(self) -> int | None:
        """The delayer's pid while it runs (tests check it is gone after ``clear``)."""
        return self._delayer.pid if self._delayer is not None and self._delayer.poll() is None else None

    # --- taking it all off ------------------------------------------------------------------------
    def clear(self) -> None:
        """Take every condition off the link and stop the delayer."""
        if self._netem:
            self._clear_qdisc()
        if self._iptables:
            ipt = [*self._nf_prefix, self._iptables, "-w", "-t", "mangle"]
            _run([*ipt, "-D", *self._hook, "-j", self._chain], check=False)
            _run([*ipt, "-F", self._chain], check=False)
            _run([*ipt, "-X", self._chain], check=False)
            self._iptables = None
        self._nf = None
        if self._delayer is not None:
            self._stop_delayer(self._delayer)
            self._delayer = None
        if self._rate_on:
            self._clear_qdisc()
        self.now = Conditions()

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.clear()


# --- the delayer: nfnetlink_queue, spoken directly ----------------------------------------------------
_NETLINK_NETFILTER = 12
_SOL_NETLINK, _NETLINK_NO_ENOBUFS = 270, 5
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_PACKET, _NFQNL_MSG_VERDICT, _NFQNL_MSG_CONFIG = 0, 1, 2
_NFQA_PACKET_HDR, _NFQA_VERDICT_HDR = 1, 2
_NFQA_CFG_CMD, _NFQA_CFG_PARAMS, _NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
_NFQNL_CFG_CMD_BIND, _NFQNL_COPY_META = 1, 1
_NLM_F_REQUEST, _NLM_F_ACK, _NLMSG_ERROR = 1, 4, 2
_NF_DROP, _NF_ACCEPT = 0, 1


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _msg(kind: int, queue: int, attrs: bytes, flags: int = _NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


def _attrs(data: bytes, at: int, end: int) -> dict[int, bytes]:
    out = {}
    while at + 4 <= end:
        n, kind = struct.unpack_from("=HH", data, at)
        if n < 4:
            break
        out[kind & 0x3FFF] = data[at + 4:at + n]
        at += (n + 3) & ~3
    return out


def _config(sock: socket.socket, queue: int, attrs: bytes, seq: int) -> None:
    """Send one config message and wait for its ack (an error raises OSError)."""
    sock.send(_msg(_NFQNL_MSG_CONFIG, queue, attrs, _NLM_F_REQUEST | _NLM_F_ACK, seq))
    while True:
        data = sock.recv(65536)
        at = 0
        while at + 16 <= len(data):
            n, kind, _, got_seq, _ = struct.unpack_from("=IHHII", data, at)
            if kind == _NLMSG_ERROR and got_seq == seq:
                err = struct.unpack_from("=i", data, at + 16)[0]
                if err:
                    raise OSError(-err, f"nfnetlink_queue config: {os.strerror(-err)}")
                return
            at += (n + 3) & ~3


def delayer(queue: int, delay_ms: float, jitter_ms: float, loss_pct: float = 0.0, control: Any = None) -> None:
    """Hold each packet of NFQUEUE ``queue`` for its delay, then accept it, in arrival order; drop
    ``loss_pct`` % of them at random.

    New ``delay jitter loss`` lines (ms, ms, %) on ``control`` (stdin) change them; its end lets
    every held packet go at once and returns. Prints ``ready`` once bound (the caller waits for it).
    """
    control = control or sys.stdin
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(_SOL_NETLINK, _NETLINK_NO_ENOBUFS, 1)
    sock.bind((0, 0))
    _config(sock, queue, _attr(_NFQA_CFG_CMD, struct.pack("=BBH", _NFQNL_CFG_CMD_BIND, 0,
                                                           socket.htons(socket.AF_INET))), 1)
    _config(sock, queue, _attr(_NFQA_CFG_PARAMS, struct.pack("!IB", 0, _NFQNL_COPY_META)), 2)
    _config(sock, queue, _attr(_NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 20000)), 3)
    setting = {"delay": delay_ms / 1e3, "jitter": jitter_ms / 1e3, "loss": loss_pct / 100}
    held: list[tuple[float, int, int]] = []  # (release time, arrival order, packet id)
    cv = threading.Condition()
    state = {"last": 0.0, "done": False}
    order = itertools.count()

    def verdict(pid: int, what: int = _NF_ACCEPT) -> None:
        sock.send(_msg(_NFQNL_MSG_VERDICT, queue, _attr(_NFQA_VERDICT_HDR, struct.pack("!II", what, pid))))

    def release() -> None:
        while True:
            with cv:
                while not held and not state["done"]:
                    cv.wait()
                if state["done"] and not held:
                    return
                due, _, pid = held[0]
                wait = due - time.monotonic()
                if wait > 0 and not state["done"]:
                    cv.wait(wait)
                    continue
                heapq.heappop(held)
            try:
                verdict(pid)
            except OSError:
                pass  # the packet left the queue (its interface went away)

    def read_control() -> None:
        for line in control:
            try:
                d, j, lo = (float(x) for x in line.split())
            except ValueError:
                continue
            with cv:
                setting.update(delay=d / 1e3, jitter=j / 1e3, loss=lo / 100)
        with cv:  # the caller is gone or done: let everything go, and end
            state["done"] = True
            cv.notify_all()

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    threading.Thread(target=read_control, daemon=True).start()
    print("ready", flush=True)
    sock.settimeout(0.2)
    while releaser.is_alive():
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            continue
        except OSError:
            continue
        now = time.monotonic()
        at = 0
        while at + 16 <= len(data):
            n, kind, _, _, _ = struct.unpack_from("=IHHII", data, at)
            if n < 16:
                break
            if kind == (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_PACKET:
                hdr = _attrs(data, at + 20, at + n).get(_NFQA_PACKET_HDR)
                if hdr is not None:
                    pid = struct.unpack_from("!I", hdr)[0]
                    if setting["loss"] and random.random() < setting["loss"]:
                        verdict(pid, _NF_DROP)
                        at += (n + 3) & ~3
                        continue
                    with cv:
                        jit = random.uniform(-setting["jitter"], setting["jitter"]) if setting["jitter"] else 0.0
                        # never before the packet queued before it: a fixed delay keeps the order, jitter too
                        due = max(now + max(0.0, setting["delay"] + jit), state["last"])
                        state["last"] = due
                        if state["done"]:
                            due = now
                        heapq.heappush(held, (due, next(order), pid))
                        cv.notify()
            at += (n + 3) & ~3
    sock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    d = sub.add_parser("delayer", help="(internal) the NFQUEUE delayer, run inside the namespace")
    d.add_argument("--queue", type=int, required=True)
    d.add_argument("--delay-ms", type=float, default=0.0)
    d.add_argument("--jitter-ms", type=float, default=0.0)
    d.add_argument("--loss-pct", type=float, default=0.0)
    ap.add_argument("--ns", help="the network namespace (ip netns); default: this one")
    ap.add_argument("--dev", help="the interface whose outgoing packets get the conditions")
    ap.add_argument("--delay", type=float, default=0.0, metavar="MS")
    ap.add_argument("--jitter", type=float, default=0.0, metavar="MS")
    ap.add_argument("--loss", type=float, default=0.0, metavar="PCT")
    ap.add_argument("--rate", default=None, help="tc units, e.g. 1mbit")
    a = ap.parse_args(argv)
    if a.cmd == "delayer":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ended by its stdin closing (the caller's Ctrl-C too)
        try:
            delayer(a.queue, a.delay_ms, a.jitter_ms, a.loss_pct)
        except OSError as exc:
            print(f"error: {exc}", flush=True)
            return 1
        return 0
    if not a.dev:
        ap.error("--dev is required")
    link = Link(["ip", "netns", "exec", a.ns] if a.ns else [], a.dev)
    try:
        link.set(a.delay, a.jitter, a.loss, a.rate)
    except Unsupported as exc:
        print(exc, file=sys.stderr)
        link.clear()
        return 2
    print(f"{a.dev}: {link.now} ({link.mechanism}); Ctrl-C takes it off")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        link.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
