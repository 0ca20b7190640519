"""Train probes (nodes/delivery/netstats.py): a lossy transport's viewer is probed with a short,
paced train of pads, judged by how the train's second half arrived."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from nodes import wire as wf
from nodes.delivery import Viewers
from nodes.delivery.netstats import TRAIN_PADS, ReportError, ViewerNet
from nodes.wire import packet_facts

MS = 1_000_000
FRAMING = 93


def _net() -> ViewerNet:
    net = ViewerNet()
    net.on_report(0, {"type": "report", "received": 0, "lost": 0, "bytes": 0})
    return net


def _train(rate_bps: float = 80_000.0) -> tuple[ViewerNet, list[str], float]:
    net = _net()
    texts, gap = net.start_train(10 * MS, rate_bps, True, FRAMING)
    for i in range(TRAIN_PADS):  # sent at its pace
        net.train_sent(1, i, 10 * MS + int(i * gap * 1e9))
    return net, texts, gap


def _report(net: ViewerNet, now: int, at: list[list[float]] | None, pid: int = 1) -> None:
    msg = {"type": "report", "received": 1, "lost": 0, "bytes": 10}
    if at is not None:
        msg["probe"] = {"id": pid, "at": at}
    net.on_report(now, msg)
    net.probe_tick(now, 0.25)


def test_the_pads_are_small_and_spaced_for_the_rate_on_the_wire() -> None:
    net, texts, gap = _train(80_000.0)
    assert len(texts) == TRAIN_PADS and all(190 <= len(t) <= 210 for t in texts)
    assert [json.loads(t)["i"] for t in texts] == list(range(TRAIN_PADS))
    assert gap == pytest.approx(8 * (len(texts[0]) + FRAMING) / 80_000.0)
    assert net.sent_bytes == sum(map(len, texts)) and net.probe is not None


def test_a_train_that_arrives_as_it_went_carries_its_rate() -> None:
    net, _, gap = _train()
    at = [[i, 500.0 + i * gap * 1e3 + (0.3 if i % 2 else 0.0)] for i in range(TRAIN_PADS)]  # a little jitter
    _report(net, 400 * MS, at)
    p = net.last_probe
    assert net.probe is None and p["ok"] and p["kind"] == "train" and p["got"] == TRAIN_PADS
    assert p["carried_bps"] == pytest.approx(80_000.0, rel=0.1) and net.probe_fails == 0


def test_a_train_told_over_two_reports_is_judged_on_all_of_it() -> None:
    net, _, gap = _train()
    at = [[i, 500.0 + i * gap * 1e3] for i in range(TRAIN_PADS)]
    _report(net, 300 * MS, at[:5])
    assert net.probe is not None and net.last_probe is None
    _report(net, 550 * MS, at[5:])
    assert net.probe is None and net.last_probe["ok"] and net.last_probe["got"] == TRAIN_PADS


def test_a_shaped_link_passes_the_first_half_in_its_burst_and_the_second_half_shows_its_rate() -> None:
    net, _, gap = _train()
    half = TRAIN_PADS // 2
    at = [[i, 500.0 + i * 0.2] for i in range(half + 1)]  # the token bucket's burst: at once
    at += [[i, at[-1][1] + (i - half) * gap * 1e3 * 2.5] for i in range(half + 1, TRAIN_PADS)]  # then 32 of 80 kbit/s
    _report(net, 400 * MS, at)
    assert not net.last_probe["ok"] and net.last_probe["recv_share"] == pytest.approx(0.4, rel=0.05)
    assert net.probe_fails == 1 and net.next_probe_ns > 400 * MS


def test_a_lost_pad_or_no_word_of_the_train_fails_it() -> None:
    net, _, gap = _train()
    _report(net, 400 * MS, [[i, 500.0 + i * gap * 1e3] for i in range(TRAIN_PADS) if i != 3])
    assert net.probe is not None  # pad 3 may still come: a report well after the last pad decides
    _report(net, 900 * MS, None)
    assert not net.last_probe["ok"] and net.last_probe["got"] == TRAIN_PADS - 1
    net, _, _ = _train()
    _report(net, 400 * MS, None)  # a report without the train: still waiting
    assert net.probe is not None
    _report(net, 400 * MS + 3000 * MS, None)  # 3 s after its last pad: it failed
    assert net.probe is None and not net.last_probe["ok"] and net.last_probe["got"] == 0
    net, _, gap = _train()
    _report(net, 400 * MS, [[i, 0.0] for i in range(TRAIN_PADS)], pid=99)  # another train's arrivals: not this one's
    assert net.probe is not None


@pytest.mark.parametrize("probe, says", [
    ({"id": "1", "at": []}, "'probe' must be"),
    ({"id": 1, "at": [[0, 1.0]] * 100}, "'probe' must be"),
    ({"id": 1, "at": [[TRAIN_PADS, 1.0]]}, "pad index, ms"),
    ({"id": 1, "at": [[0, float("nan")]]}, "pad index, ms"),
    ({"id": 1, "at": [["0", 1.0]]}, "pad index, ms"),
])
def test_a_malformed_train_report_is_refused_naming_the_field(probe: dict, says: str) -> None:
    net = _net()
    with pytest.raises(ReportError, match=says):
        net.on_report(MS, {"type": "report", "received": 0, "lost": 0, "bytes": 0, "probe": probe})
    assert len(net.reports) == 1  # nothing of the bad report was taken


class _Transport:
    kind = "fake"
    framing_bytes = FRAMING
    bundle_s = 0.0
    probe_train = True

    def __init__(self) -> None:
        self.pads: list[tuple[float, dict]] = []

    async def send_bytes(self, data: bytes) -> None:
        pass

    async def send_text(self, text: str) -> None:
        pass

    async def send_lossy(self, text: str) -> None:
        doc = json.loads(text)
        if doc["type"] == "pad":
            self.pads.append((asyncio.get_running_loop().time(), doc))

    async def close(self) -> None:
        pass


def test_a_viewer_below_the_best_layer_on_a_lossy_transport_gets_a_paced_train() -> None:
    enc, low = wf.Encoder(keyframe_interval=1000), wf.Encoder(keyframe_interval=1000, sid_base=4096)
    w = np.random.default_rng(2).uniform(0, 1, (1, 52)).astype(np.float32)
    clock = [0]

    async def run() -> None:
        reg = Viewers(queue_size=64, keyframe_min_interval_ns=0, session_timeout_ns=10**10,
                      request=lambda r: None, clock=lambda: clock[0])
        t = _Transport()
        v = reg.add(t, "a", subscribe=True)
        reg.set_layers({str(v.id): 1})
        for k in range(120):  # two seconds of frames: the layers' rates are measured
            clock[0] = k * 16_666_667
            b, lp = enc.encode(["a"], w, clock[0], wf.TABLE_ARKIT52), low.encode(["a"], w, clock[0], wf.TABLE_ARKIT52)
            kf, n = packet_facts(lp)
            reg.dispatch(["a"], b, clock[0], *packet_facts(b),
                         layers=[{"rows": [0], "packets": lp, "keyframe": kf.tolist(), "seq": n.tolist()}])
            if k % 15 == 0:
                reg.handle_text(v, json.dumps({"type": "report", "received": k, "lost": 0, "bytes": 30 * k}))
                reg.sweep()
            await asyncio.sleep(0)
        assert v.layer == 1 and reg.layer_rates.get("a")
        for _k in range(40):  # the probe falls due (2 s after the first report)
            clock[0] += 250_000_000
            reg.sweep()
            await asyncio.sleep(0.02)
            if t.pads:
                break
        assert reg.counts["probes"] == 1 and v.net.probe is not None and v.net.probe["kind"] == "train"
        await asyncio.sleep(v.train_gap * TRAIN_PADS + 0.2)
        assert [d["i"] for _, d in t.pads] == list(range(TRAIN_PADS))
        gaps = np.diff([at for at, _ in t.pads])
        assert gaps.min() >= 0.9 * v.train_gap  # never faster than the rate it tries (a train, not a burst)
        assert all(v.net.probe["sent_at"])
        reg.remove(v)

    asyncio.run(run())


def test_a_train_whose_pads_never_all_went_fails_in_time_and_an_old_trains_pad_is_not_counted() -> None:
    net = _net()
    net.start_train(10 * MS, 80_000.0, True, FRAMING)
    net.train_sent(1, 0, 11 * MS)
    net.train_sent(7, 1, 12 * MS)  # a pad of another train: not this one's
    assert net.probe["sent_at"][1] == 0
    _report(net, 10 * MS + 2000 * MS, None)
    assert net.probe is not None  # the sink may still send it
    _report(net, 10 * MS + 6100 * MS, None)  # the rest never went (a stuck transport): failed, not stuck
    assert net.probe is None and not net.last_probe["ok"]
