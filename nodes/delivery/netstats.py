"""What a sink knows of one viewer's network: its receiver reports, the round trip, and probes.

The viewer (the page, the simulator) reports every ~250 ms on its control channel what it got:
``{"type": "report", "received": n, "lost": n, "bytes": n, "jitter_ms": x}`` (counts since it
connected: packets decoded or refused, packets its decoder found missing by their sequence
numbers, bytes of every message, the RFC 3550 inter-arrival jitter of the face packets). The sink
pings it (``{"type": "ping", "t": n}``, answered at once with ``{"type": "pong", "t": n}``) for
the round trip, whose rise above its recent minimum is the queue building on the path (the
delay-based signal of WebRTC's congestion control; the reports' loss is the loss-based one).

A viewer below the best layer may have room it does not use; only sending more shows it. A
probe (as WebRTC's prober, with padding instead of RTP padding packets) sends extra bytes for
``PROBE_S``, enough to carry the best layer with a margin, and reads the reports: if what
arrived kept up with what was sent, and the round trip did not rise, the link carries that rate.
A probe whose round trip rises stops at once (the queue it builds stays small); what arrived
while it ran is still a measure of the link. Probes repeat every few seconds while the viewer is
below the best layer, so a link that recovers is found within seconds. The network
agent (``nodes.agents.network``) reads all of this from the sink's stats and picks the layer.

On a transport that loses what the link drops (WebRTC's unreliable channel) a second of padding
above a slow link's rate overflows its queue and takes frames with it. There the probe is a
*train* (``start_train``), as WebRTC's probe clusters are: ``TRAIN_PADS`` small pads paced at
the rate to try, about 3.5 KB in all with framing, which a slow link's queue holds. The viewer
reports when each came (``"probe": {"id", "at": [[i, ms], ...]}``); the link carries the rate if
every pad came and the second half of the train arrived as fast as it was sent (the first half
may pass in a shaper's burst allowance).
"""
from __future__ import annotations

import collections
import math
from typing import Any

PING_NS = 250_000_000
PROBE_S = 1.0
PROBE_TICK_S = 0.25  # the sink's housekeeping period: padding is owed a tick's share at a time
_REPORT_AFTER_NS = 100_000_000  # a probe is judged by the first report this long after it ended
_PROBE_BACKLOG = 3000  # bytes more on the way than when the probe began: the path queues, the probe stops
_PROBE_BACKOFF_S = (2.0, 3.0, 4.0)  # the wait before the next probe, after 0, 1, 2+ failures in a row
_PROBE_AGAIN_S = 0.5  # ... and after a probe that found room for a layer between: the best one next
_RTT_MIN_WINDOW_NS = 10_000_000_000  # the baseline round trip: the least over this window
_RATE_WINDOW_NS = 1_000_000_000  # received rate and loss over about this long
_RTT_MEDIAN_WINDOW_NS = 1_000_000_000  # the queue signal: the median round trip over this long
_MAX_COUNT = 2 ** 53
_QUEUE_MS = 50.0  # a round trip this far above its minimum is a queue: no probe starts
TRAIN_PADS = 12  # a train probe's pads
TRAIN_PAD_BYTES = 200  # ... each this long (the JSON text): 3.5 KB with framing, which a slow link's queue holds
_TRAIN_TEXT = '{"type":"pad","probe":%d,"i":%d,"p":"%s"}'
_TRAIN_SHARE = 0.8  # the train's second half must arrive at this share of the rate it was sent at
_TRAIN_WAIT_NS = 3_000_000_000  # a train whose arrivals are not reported by then failed


class ReportError(ValueError):
    """A report or pong a viewer sent that the protocol does not allow."""


def _count(msg: dict, key: str) -> int:
    v = msg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < _MAX_COUNT:
        raise ReportError(f"report: '{key}' must be a count (int >= 0), got {str(v)[:40]}")
    return v


def layer_needs(rates: list, framing: int, per_s: float | None) -> list[float]:
    """Each layer's need, bits/s: its bits (``rates``: [bits/s, packets/s] per layer) and, per
    message, the transport's ``framing``; a reduced layer sends at most ``per_s`` messages a second
    (bundles), layer 0 a message per packet. The sink's probes and the network agent both judge by it."""
    limit = per_s or float("inf")
    return [bps + 8 * framing * (pps if k == 0 else min(pps, limit)) for k, (bps, pps) in enumerate(rates)]


def _train_arrivals(train: Any) -> dict[int, float]:
    """A report's ``probe``: {"id": n, "at": [[i, ms], ...]} -> {i: ms}."""
    at = train.get("at") if isinstance(train, dict) else None
    if (not isinstance(train, dict) or not isinstance(train.get("id"), int) or isinstance(train.get("id"), bool)
            or not isinstance(at, list) or len(at) > 4 * TRAIN_PADS):
        raise ReportError("report: 'probe' must be {\"id\": n, \"at\": [[i, ms], ...]}")
    out: dict[int, float] = {}
    for pair in at:
        if (not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], int) or isinstance(pair[0], bool)
                or not 0 <= pair[0] < TRAIN_PADS or not isinstance(pair[1], (int, float)) or isinstance(pair[1], bool)
                or not math.isfinite(pair[1])):
            raise ReportError(f"report: 'probe': each arrival must be [pad index, ms], got {str(pair)[:40]}")
        out[pair[0]] = float(pair[1])
    return out


class ViewerNet:
    """One viewer's network figures; all times in the sink's clock (ns)."""

    __slots__ = ("enabled", "reports", "last_report_ns", "jitter_ms", "rtts", "rtt_ms", "next_ping_ns",
                 "sent_bytes", "sent_log", "probe", "probe_fails", "next_probe_ns", "last_probe", "pad_owed",
                 "pad_sent", "probe_ids")

    def __init__(self) -> None:
        self.enabled = False  # the viewer sends reports: it gets pings and may be probed
        self.reports: collections.deque[tuple[int, int, int, int]] = collections.deque(maxlen=32)  # (t, recv, lost, bytes)
        self.last_report_ns = 0
        self.jitter_ms: float | None = None
        self.rtts: collections.deque[tuple[int, float]] = collections.deque(maxlen=64)
        self.rtt_ms: float | None = None
        self.next_ping_ns = 0
        self.sent_bytes = 0  # bytes the sink handed to the transport for this viewer (packets and texts)
        self.sent_log: collections.deque[tuple[int, int]] = collections.deque(maxlen=32)  # (t, sent_bytes)
        self.probe: dict[str, Any] | None = None  # the running probe
        self.probe_fails = 0
        self.next_probe_ns = 0
        self.last_probe: dict[str, Any] | None = None
        self.pad_owed = 0  # probe bytes still to send
        self.pad_sent = 0  # probe bytes sent
        self.probe_ids = 0  # train probes started

    def on_report(self, now: int, msg: dict) -> None:
        recv, lost, nbytes = _count(msg, "received"), _count(msg, "lost"), _count(msg, "bytes")
        jitter = msg.get("jitter_ms")
        if jitter is not None and (not isinstance(jitter, (int, float)) or isinstance(jitter, bool)
                                   or not math.isfinite(jitter) or not 0 <= jitter < 1e6):
            raise ReportError(f"report: 'jitter_ms' must be a number of milliseconds, got {str(jitter)[:40]}")
        at = _train_arrivals(msg["probe"]) if msg.get("probe") is not None else None  # a train probe's pads
        if self.reports and (recv < self.reports[-1][1] or nbytes < self.reports[-1][3]):
            self.reports.clear()  # the viewer started counting again (a page reload on the same connection)
        if not self.enabled:
            self.enabled = True
            self.next_probe_ns = now + int(_PROBE_BACKOFF_S[0] * 1e9)
        self.reports.append((now, recv, lost, nbytes))
        self.last_report_ns = now
        self.jitter_ms = None if jitter is None else float(jitter)
        self.sent_log.append((now, self.sent_bytes))
        p = self.probe
        if at is not None and p is not None and p.get("id") == msg["probe"]["id"]:
            p["arrivals"] = {**(p["arrivals"] or {}), **at}  # a train may span reports
        if p is not None and p.get("kind") == "train" and all(p["sent_at"]):
            p["reported"] = now  # the latest report since its last pad went

    def on_pong(self, now: int, msg: dict) -> None:
        t = msg.get("t")
        if not isinstance(t, int) or isinstance(t, bool) or not 0 < t <= now:
            raise ReportError(f"pong: 't' must echo a ping's t, got {str(t)[:40]}")
        self.rtt_ms = (now - t) / 1e6
        self.rtts.append((now, self.rtt_ms))

    def ping_due(self, now: int) -> bool:
        if not self.enabled or now < self.next_ping_ns:
            return False
        self.next_ping_ns = now + PING_NS
        return True

    def rtt_min_ms(self, now: int) -> float | None:
        recent = [r for t, r in self.rtts if now - t <= _RTT_MIN_WINDOW_NS]
        return min(recent) if recent else None

    def rtt_p50_ms(self, now: int) -> float | None:
        """The median round trip of the last second: a queue that lasts, not one burst's."""
        recent = sorted(r for t, r in self.rtts if now - t <= _RTT_MEDIAN_WINDOW_NS)
        return recent[len(recent) // 2] if recent else None

    def rates(self, now: int, span_ns: int = _RATE_WINDOW_NS) -> tuple[float, float, float] | None:
        """(received bytes/s, sent bytes/s, loss fraction) over the last ``span_ns`` of reports."""
        if len(self.reports) < 2:
            return None
        last = self.reports[-1]
        first = next((r for r in self.reports if last[0] - r[0] <= span_ns), self.reports[0])
        if first is last:
            first = self.reports[-2]
        dt = (last[0] - first[0]) / 1e9
        if dt <= 0:
            return None
        got, lost = last[1] - first[1], last[2] - first[2]
        sent = self._sent_between(first[0], last[0])
        return (last[3] - first[3]) / dt, sent / dt, lost / (got + lost) if got + lost > 0 else 0.0

    def _sent_between(self, t0: int, t1: int) -> int:
        a = next((b for t, b in self.sent_log if t >= t0), None)
        b = next((b for t, b in reversed(self.sent_log) if t <= t1), None)
        return 0 if a is None or b is None else max(0, b - a)

    # --- probes ------------------------------------------------------------------------------------
    def start_probe(self, now: int, extra_bps: float, best: bool = True) -> None:
        """Send ``extra_bps`` more than now, for PROBE_S (the bytes go out as padding); ``best``:
        it tries the best layer's rate (else a layer between)."""
        base = self.reports[-1] if self.reports else (now, 0, 0, 0)
        self.probe = {"start": now, "end": now + int(PROBE_S * 1e9), "extra_bps": extra_bps,
                      "sent0": self.sent_bytes, "recv0": base[3], "t0": base[0], "rtt0": self.rtt_min_ms(now),
                      "backlog0": self.backlog(), "pad0": self.pad_sent, "best": best}
        self.pad_owed += int(extra_bps * PROBE_TICK_S)  # the first tick's share at once

    def queued(self, now: int) -> bool:
        """The round trip (the last second's median) stands ``_QUEUE_MS`` above its minimum: a
        queue on the path, so no room a probe could find (WebRTC's prober waits out an over-use too)."""
        p50, low = self.rtt_p50_ms(now), self.rtt_min_ms(now)
        return p50 is not None and low is not None and p50 - low > _QUEUE_MS

    def hold_probes(self, now: int) -> None:
        """No probe for the first back-off from now (the viewer just moved down: its link's queue drains)."""
        self.next_probe_ns = max(self.next_probe_ns, now + int(_PROBE_BACKOFF_S[0] * 1e9))

    def start_train(self, now: int, rate_bps: float, best: bool, framing: int) -> tuple[list[str], float]:
        """A train probe at ``rate_bps`` (on the wire, with each pad's ``framing``): its pads, and
        the seconds between them."""
        self.probe_ids += 1
        fill = "x" * max(0, TRAIN_PAD_BYTES - len(_TRAIN_TEXT % (self.probe_ids, TRAIN_PADS, "")))
        texts = [_TRAIN_TEXT % (self.probe_ids, i, fill) for i in range(TRAIN_PADS)]
        self.probe = {"kind": "train", "id": self.probe_ids, "start": now, "rate": rate_bps, "best": best,
                      "framing": framing, "sizes": [len(t) for t in texts], "sent_at": [0] * TRAIN_PADS,
                      "arrivals": None}
        return texts, 8 * (len(texts[0]) + framing) / rate_bps

    def train_sent(self, pid: int, i: int, now: int) -> None:
        """Pad ``i`` of train ``pid`` went out (a train already judged is no longer counted)."""
        p = self.probe
        if p is not None and p.get("id") == pid:
            p["sent_at"][i] = now
            self.sent_bytes += p["sizes"][i]
            self.pad_sent += p["sizes"][i]

    def _judge_train(self, now: int, p: dict[str, Any]) -> bool | None:
        """The train's verdict (None: its arrivals are not in yet)."""
        sent_at, at = p["sent_at"], p["arrivals"] or {}
        # judged once every pad came, or a report came well after the last one went (what had not
        # come by then was lost), or no word came for a while
        last = max(sent_at) if all(sent_at) else p["start"] + _TRAIN_WAIT_NS
        if len(at) < TRAIN_PADS and p.get("reported", 0) - last < _REPORT_AFTER_NS * 3 and now - last < _TRAIN_WAIT_NS:
            return None
        half, last = TRAIN_PADS // 2, TRAIN_PADS - 1
        # wire bytes after pad `half` (the rate over the second half: the gaps after it)
        nbytes = 8 * sum(n + p["framing"] for n in p["sizes"][half + 1:])
        send_s = (sent_at[last] - sent_at[half]) / 1e9 if all(sent_at) else 0.0
        recv_s = (at[last] - at[half]) / 1e3 if half in at and last in at else 0.0
        send_bps = nbytes / send_s if send_s > 0 else 0.0
        recv_bps = nbytes / max(recv_s, 1e-4) if recv_s >= 0 and last in at else 0.0
        share = recv_bps / send_bps if send_bps else 0.0
        # every pad came, the sink kept the pace, and the second half came as fast as it went
        ok = len(at) == TRAIN_PADS and send_bps >= 0.8 * p["rate"] and share >= _TRAIN_SHARE
        self.last_probe = {"at": now, "ok": ok, "kind": "train", "bps": round(send_bps, 1),
                           "carried_bps": round(min(send_bps, recv_bps), 1) if ok else None,
                           "recv_share": round(min(share, 9.99), 3), "got": len(at), "aborted": False}
        return ok

    def probe_tick(self, now: int, tick_s: float) -> None:
        """Owe this tick's share of padding; finish a probe whose reports are in."""
        p = self.probe
        if p is None:
            return
        if p.get("kind") == "train":
            ok = self._judge_train(now, p)
            if ok is not None:
                self._probe_done(now, ok, p["best"])
            return
        rose = self._rtt_rose(p) or self.backlog() - p["backlog0"] > _PROBE_BACKLOG
        if now < p["end"] and not rose:
            self.pad_owed += int(p["extra_bps"] * tick_s)
            return
        if rose and now < p["end"]:  # the queue is building: stop sending, wait for the reports
            p["end"], p["aborted"] = now, True
        if "sent_end" not in p:  # the probe's time is over: what went out during it
            p["sent_end"], p["pad_end"] = self.sent_bytes, self.pad_sent
            self.pad_owed = 0
        # what had arrived shortly after it ended: the first report from REPORT_AFTER_NS on (data
        # still queued on the path by then was more than the link carried)
        after = next((r for r in self.reports if r[0] >= p["end"] + _REPORT_AFTER_NS), None)
        if after is None and now - p["end"] < 3_000_000_000:
            return
        sent = p["sent_end"] - p["sent0"]
        recv = (after[3] - p["recv0"]) if after is not None else 0
        # it went out at the rate asked for (a transport that waits for room, TCP, sends only what
        # the link takes), it all arrived, and no queue built up: the link carries that rate
        asked = p["extra_bps"] * (p["end"] - p["start"]) / 1e9
        padded = p["pad_end"] - p["pad0"]
        ok = (sent > 0 and padded >= 0.9 * asked and recv >= 0.9 * sent and not p.get("aborted")
              and not self._rtt_rose(p))
        # the rate it sent at (padding and packets, over the probe's own time); what arrived of it
        span = max(1e-3, (p["end"] - p["start"]) / 1e9)
        # carried: the rate the link took, when it took it all (what arrives of a probe it cannot
        # take says little: a shaper's burst allowance and the reports' timing blur it)
        carried = round(8 * sent / span, 1) if ok else None
        self.last_probe = {"at": now, "ok": ok, "bps": round(8 * sent / span, 1), "carried_bps": carried,
                           "recv_share": round(recv / sent, 3) if sent else 0.0, "aborted": bool(p.get("aborted"))}
        self._probe_done(now, ok, p["best"])

    def _probe_done(self, now: int, ok: bool, best: bool) -> None:
        self.probe = None
        self.probe_fails = 0 if ok else self.probe_fails + 1
        # a probe that found room for a layer between: try the best one at once
        wait = _PROBE_AGAIN_S if ok and not best else _PROBE_BACKOFF_S[min(self.probe_fails, len(_PROBE_BACKOFF_S) - 1)]
        self.next_probe_ns = now + int(wait * 1e9)

    def backlog(self) -> int:
        """Bytes sent and not yet reported received: what is on the way or queued on the path."""
        if not self.reports:
            return 0
        return self.sent_bytes - self.reports[-1][3]

    def _rtt_rose(self, p: dict[str, Any]) -> bool:
        """The probe's padding queues on the path: the last two pings since it began both took
        longer than the round trip's minimum (one alone may have waited behind a resent packet)."""
        rtt0 = p["rtt0"]
        recent = [r for t, r in self.rtts if t >= p["start"]][-2:]
        return len(recent) == 2 and rtt0 is not None and min(recent) - rtt0 > max(50.0, rtt0)

    def info(self, now: int) -> dict[str, Any]:
        if not self.enabled:
            return {}
        r = self.rates(now)
        lp = self.last_probe
        p50, low = self.rtt_p50_ms(now), self.rtt_min_ms(now)
        return {
            "age_s": round((now - self.last_report_ns) / 1e9, 3),
            "recv_bps": None if r is None else round(8 * r[0], 1), "sent_bps": None if r is None else round(8 * r[1], 1),
            "loss": None if r is None else round(r[2], 4), "jitter_ms": self.jitter_ms,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "rtt_p50_ms": None if p50 is None else round(p50, 2),
            "rtt_min_ms": None if low is None else round(low, 2),
            "probing": self.probe is not None,
            "probe": None if lp is None else {**{k: v for k, v in lp.items() if k != "at"},
                                              "age_s": round((now - lp["at"]) / 1e9, 3)},
        }
