"""The network agent: each viewer's layer follows its link (delay, loss, probes), through tc.

Unit tests replay stats snapshots through ``NetworkAgent.wish`` and the guards. The scenario test
puts a viewer behind a link with a home connection's steady delay, jitter and loss
(``tools/netem.py``: ``tc netem``, or where the kernel has none iptables and an NFQUEUE delayer),
cuts its rate (``tc`` token bucket on its veth, in namespaces the test makes) and gives it back,
with another viewer on a free link, both decoding as the page does (``tools/simulator.py``, with
receiver reports), and checks the issue's timings from the graph's own bus. ``tools/netem.py``
itself is checked on a veth pair: the delay, the order, the loss, a change while running, and
nothing left behind.
"""
from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nodes.agents import NetworkAgent
from runtime.agents import GuardState, StatsView, decide
from runtime.agents.spec import AgentSpec, guards_for
from tests.helpers import alive
from tests.netns import NetNS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
RATES = [[10000.0, 53.0], [4700.0, 26.5], [1900.0, 13.2]]  # layer 0, 1, 2: bits/s, packets/s
NEEDS = [b + 8 * 60 * p for b, p in RATES]  # with 60 bytes of framing a packet


def snapshot(layer: int, recv: float, loss: float = 0.0, rtt: float = 2.0, rtt_min: float = 1.0,
             probe: dict | None = None, age: float = 0.1) -> dict:
    net = {"age_s": age, "recv_bps": recv, "sent_bps": recv, "loss": loss, "jitter_ms": 1.0, "rtt_ms": rtt,
           "rtt_min_ms": rtt_min, "probing": False, "probe": probe}
    return {"nodes": {"web": {"node": {"viewer_net": {"1": {"session": "a", "layer": layer, "net": net}},
                                       "layer_rates": {"a": RATES}}}}}


class Trace:
    """The agent and its guards, looking at snapshots every 0.5 s of simulated time."""

    def __init__(self) -> None:
        spec = AgentSpec("net", "network", "web", "viewer_layers")
        self.agent = NetworkAgent("net", "web", "viewer_layers", {k: p.default for k, p in NetworkAgent.params.items()})
        from nodes.webrtc_sink import WebRTCSink
        self.guards = guards_for(spec, WebRTCSink.params["viewer_layers"], NetworkAgent)
        self.state, self.layer, self.t, self.moves = GuardState(), 0, 0.0, []

    def look(self, snap: dict) -> None:
        self.t += 0.5
        view = StatsView(snap, None, 0.5, self.t)
        assert self.agent.keys(view, {}) == ["1"]
        w = self.agent.wish(view, float(self.layer), "1")
        d = decide(self.guards, self.state, self.t, float(self.layer), None if w is None else w.value,
                   None if w is None else w.age_s, "" if w is None else w.reason)
        if d.value is not None:
            self.layer = int(d.value)
            self.moves.append((self.t, self.layer))


def test_a_queue_on_the_path_moves_the_viewer_down_at_once_and_a_clean_link_keeps_it_there():
    tr = Trace()
    for _ in range(10):
        tr.look(snapshot(0, recv=NEEDS[0]))
    assert tr.moves == []  # clean at layer 0: nothing to do
    tr.look(snapshot(0, recv=9000.0, rtt=400.0, rtt_min=1.0))  # a queue: 85 % of 9 kbit/s fits only layer 2
    assert tr.moves == [(5.5, 2)]
    for _ in range(60):  # 30 s clean at layer 2 and no probe: no change (the estimate keeps what it carries)
        tr.look(snapshot(2, recv=NEEDS[2]))
    assert tr.moves == [(5.5, 2)]


def test_loss_sets_the_estimate_from_what_arrived():
    tr = Trace()
    tr.look(snapshot(0, recv=30000.0, loss=0.3))  # 30 kbit/s less half of 30 %: 25.5; 0.85 of it fits layer 1
    assert tr.moves == [(0.5, 1)]


def test_a_probe_that_got_through_brings_the_best_layer_back_after_its_wish_held():
    tr = Trace()
    tr.look(snapshot(0, recv=5000.0, rtt=300.0))
    assert tr.layer == 2
    for _ in range(6):  # the dwell (2 s) passes, clean at layer 2
        tr.look(snapshot(2, recv=NEEDS[2]))
    probe = {"ok": True, "bps": 1.4 * NEEDS[0], "age_s": 0.2}
    tr.look(snapshot(2, recv=NEEDS[2], probe=probe))
    assert tr.layer == 2  # wished for, not yet held up_after (2 s)
    for k in range(5):
        tr.look(snapshot(2, recv=NEEDS[2], probe={**probe, "age_s": probe["age_s"] + 0.5 * (k + 1)}))
    assert tr.layer == 0 and tr.moves[-1][1] == 0


def test_a_probe_that_found_room_for_a_layer_between_starts_the_wait_and_one_of_the_best_ends_it_there():
    tr = Trace()
    tr.look(snapshot(0, recv=5000.0, rtt=300.0))
    for _ in range(6):
        tr.look(snapshot(2, recv=NEEDS[2]))
    # the sink's probe toward layer 1 sends 1.4 times its need (framing counted) less layer 2's own;
    # what it reports is the bytes it sent, without the framing of layer 2's packets
    between = {"ok": True, "bps": RATES[2][0] + 1.4 * NEEDS[1] - NEEDS[2], "age_s": 0.1}
    tr.look(snapshot(2, recv=NEEDS[2], probe=between))
    w = tr.agent.wish(StatsView(snapshot(2, recv=NEEDS[2], probe=between), None, 0.5, tr.t), 2.0, "1")
    assert w is not None and w.value == 1.0, w  # it fits layer 1 by the agent's count too: the wait starts
    t_between = tr.t
    for k in range(2):
        tr.look(snapshot(2, recv=NEEDS[2], probe={**between, "age_s": 0.6 + 0.5 * k}))
    best = {"ok": True, "bps": 1.4 * NEEDS[0], "age_s": 0.1}  # 0.5 s after, the best layer's probe got through
    while tr.layer == 2:
        tr.look(snapshot(2, recv=NEEDS[2], probe=best))
        best = {**best, "age_s": best["age_s"] + 0.5}
    assert tr.moves[-1] == (t_between + 2.0, 0)  # 2 s after the first probe, straight to the best


def test_stale_or_missing_reports_hold():
    tr = Trace()
    tr.look(snapshot(0, recv=5000.0, rtt=300.0, age=5.0))  # the report is 5 s old: hold
    assert tr.moves == []
    snap = snapshot(0, recv=5000.0)
    snap["nodes"]["web"]["node"]["layer_rates"] = {}
    view = StatsView(snap, None, 0.5)
    assert tr.agent.wish(view, 0.0, "1") is None


def test_each_viewers_layer_is_the_sinks_account_and_gone_viewers_leave_the_table():
    agent = Trace().agent
    snap = snapshot(2, recv=NEEDS[2])
    snap["nodes"]["web"]["node"]["viewer_net"] = {"3": snap["nodes"]["web"]["node"]["viewer_net"]["1"]}
    assert agent.keys(StatsView(snap, None, 0.5), {}) == ["3"]
    assert agent.current({"viewer_layers": {"3": 0}}, "3") == 2.0  # the sink says 2 (a table from before a restart)
    assert agent.to_params({"3": 1}, {"viewer_layers": {"1": 2, "3": 2}}) == {"viewer_layers": {"3": 1}}
    assert agent.to_params({"3": 0}, {"viewer_layers": {"3": 2}}) == {"viewer_layers": {}}


# --- tools/netem.py on a veth pair ------------------------------------------------------------------
def _udp_through(a: NetNS, b: NetNS, n: int, port: int) -> list[tuple[int, float]]:
    """Send ``n`` datagrams from ``a`` to 10.79.0.2 in ``b`` (one a millisecond); (seq, one-way ms) of
    those that arrived, in arrival order (both ends read the same CLOCK_MONOTONIC)."""
    rx, tx = b.socket(), a.socket()
    got: list[tuple[int, float]] = []
    sent = threading.Event()

    def receive() -> None:
        rx.settimeout(0.25)
        quiet = 0
        while quiet < 2:  # all sent, then nothing for 0.5 s (the longest delay here is 30 ms): all came
            try:
                data = rx.recv(64)
            except socket.timeout:
                quiet += sent.is_set()
                continue
            seq, t = struct.unpack("!Id", data)
            got.append((seq, 1e3 * (time.monotonic() - t)))

    try:
        rx.bind(("10.79.0.2", port))
        t = threading.Thread(target=receive)
        t.start()
        for seq in range(n):
            tx.sendto(struct.pack("!Id", seq, time.monotonic()), ("10.79.0.2", port))
            time.sleep(0.001)
        sent.set()
        t.join(30)
        return got
    finally:
        rx.close()
        tx.close()


@pytest.mark.parametrize("at_peer", [False, True], ids=["egress", "at-the-peer"])
def test_netem_delays_in_order_drops_its_share_changes_while_running_and_leaves_nothing_behind(at_peer):
    from netem import Link, Unsupported

    a, b = NetNS.make(), NetNS.make()
    try:
        if a is None or b is None:
            pytest.skip(NetNS.reason())
        dev_a, dev_b = a.join(b, "10.79.0.1", "10.79.0.2")
        link = Link(a.prefix, dev_a, peer=(b.prefix, dev_b) if at_peer else None)
        try:
            link.set(delay_ms=30.0)
        except Unsupported as exc:
            link.clear()
            pytest.skip(str(exc))
        with link:
            assert "netem" in link.mechanism, link.mechanism
            got = _udp_through(a, b, 200, 9001)
            assert [s for s, _ in got] == list(range(200)), link.mechanism  # all of them, in the order sent
            assert min(ms for _, ms in got) >= 29.0, link.mechanism  # (jitter 0: none leaves early)

            pid = link.delayer_pid
            link.set(delay_ms=30.0, loss_pct=20.0)  # loss on top: the same delayer carries on
            assert link.delayer_pid == pid
            got = _udp_through(a, b, 500, 9002)
            # 20 % of 500 lost at random: 100 expected, sd 9; fewer than 50 or more than 160 once in 10^8 runs
            assert 340 <= len(got) <= 450, (len(got), link.mechanism)
            seqs = [s for s, _ in got]
            assert seqs == sorted(seqs)

            link.set()  # nothing: everything goes through at once again
            got = _udp_through(a, b, 100, 9003)
            assert len(got) == 100 and sorted(ms for _, ms in got)[50] < 29.0, (got[:5], link.mechanism)
        # left: no rules, no qdisc, no delayer
        assert pid is None or not alive(pid)
        for ns in (a, b):
            rules = subprocess.run([*ns.prefix, "iptables-save"], capture_output=True, text=True).stdout
            assert "avnetem" not in rules and "NFQUEUE" not in rules, rules
        assert "tbf" not in subprocess.run([*a.prefix, "tc", "qdisc", "show", "dev", dev_a], capture_output=True,
                                           text=True).stdout
    finally:
        for ns in (a, b):
            if ns is not None:
                ns.kill_all()
                ns.remove()


# --- the scenario, through tc (tools/net_scenario.py) --------------------------------------------------
# The cut viewer's link has what a home connection to a server some way off has, the whole run:
# 40 ms more delay (cable or DSL and a few hundred km of fibre; the round trip grows by it), +-5 ms
# of jitter (Wi-Fi in the home) and 1 % random loss (Wi-Fi's residual loss, at the top of what a
# usable home link has). The agent must leave the viewer alone under it, and the cut and the
# restore must still meet the limits on top of it.
#
# The page's own transport, a WebRTC data channel, does not resend (``maxRetransmits: 0``): its 1 %
# random loss would be frames lost, a bundle of three at a time on the reduced layer, and the
# comparison below would be a coin toss. Its link has the delay and the jitter; its cut is to
# 32 kbit/s, as the lowest layer needs about 30 over SCTP (a packet per message, the SACKs).
BACKGROUND = {"delay_ms": 40.0, "jitter_ms": 5.0, "loss_pct": 1.0}
SCENARIOS = {"websocket": {"cut": "16kbit", **BACKGROUND},
             "webrtc": {"cut": "32kbit", **BACKGROUND, "loss_pct": 0.0}}


@pytest.mark.parametrize("transport", list(SCENARIOS))
def test_a_viewer_behind_a_cut_link_moves_down_and_back_and_the_other_is_unaffected(transport: str):
    from net_scenario import run_scenario

    conditions = SCENARIOS[transport]
    r = run_scenario(hold_s=10.0, after_s=6.0, before_s=8.0, transport=transport, **conditions)
    unsupported = r.get("skipped") if r.get("conditions_unsupported") else None
    if unsupported:  # no netem here, nor iptables and NFQUEUE: the rate cut alone, then say so
        r = run_scenario(cut=conditions["cut"], hold_s=10.0, after_s=6.0, transport=transport)
    if r.get("skipped"):
        pytest.skip(r["skipped"])
    # steady conditions before the cut: no change (a fixed delay raises the round trip's minimum
    # and its median alike; the jitter and the loss's retransmissions move the median a few ms)
    assert r["changes_before"] == 0 and r["before_frames"] > 300, r
    assert r["down_s"] < 2.0, r
    # on the layer it moved to, the viewer gets what that layer carries (a quarter of the frames on
    # level 3), not a trickle: its rate measured against the other viewer's, the same source's
    assert r["down_to"] >= 1 and r["cut_fps"] > 0.8 * r["cut_layer_fps"] > 0, r
    # frame loss: over a WebSocket the stream goes over TCP, which resends what the link drops at
    # random (that costs delay, not frames); a viewer misses frames only when the sink drops them for
    # it, its queue full: the overload the cut causes. What the background costs by itself shows
    # before the cut (0 in every run here); the limit (under 1 %) is on the loss the cut adds
    # to it. Over a data channel, what the cut's overload dropped in the link's queue counts too when it
    # is the new layer's (its first packets behind the old ones); the old layer's packets dropped at the
    # cut are frames sent before the move, found missing late as the queue drains (cut_lost_left,
    # printed: 0 or 1 in most runs, 4 % once in a full suite on a loaded machine).
    assert r["cut_loss"] < r["before_loss"] + 0.01, r
    assert r["back_s"] < 10.0, r
    assert r["changes_cut_steady"] <= 1 and r["changes_back_steady"] == 0, r  # steady: fewer than 2 a minute
    free = [a for a in r["actions"] if a["key"] == "2"]  # what moved the other viewer, if anything did
    assert r["free_changes"] == 0 and r["free_lost"] == 0 and not r["errors"], (free, r)
    print({k: v for k, v in r.items() if k not in ("actions", "errors")})  # the figures, with -s
    if unsupported:
        pytest.skip(f"the rate cut passed without background conditions, which cannot be made here: {unsupported}")
