"""One keyframe per loss event: N viewers of a session lose the same packet, the compressor makes
one keyframe. The coalescing alone (``nodes.wire.keyframe_requests``, the compressor's requests
pad, the viewer registry's stale asks), then end to end: a real graph, real WebSocket viewers
(``tools/simulator.py``'s, decoding like the page) that lose the same packet on their side and
ask for a keyframe as the page does, some of them further away than the others."""
from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Iterator

import numpy as np
import pytest

from nodes import wire as wf
from nodes.delivery import Viewers
from nodes.wire import packet_facts
from runtime import Message, Runner, parse_graph
from runtime.testing import NodeHarness
from tests.helpers import ROOT, wait_gone

sys.path.insert(0, str(ROOT / "tools"))

from bench_keyframes import ViewerPool, encoder_counts, graph_text, loss_event, wait  # noqa: E402

W = np.random.default_rng(5).uniform(0, 1, (2, 52)).astype(np.float32)
FRAME_NS = 16_666_667


def frame(t: int, sessions: tuple[str, ...] = ("a", "b")) -> Message:
    return Message("arkit/blendshapes", None, {"weights": W[:len(sessions)]}, t * FRAME_NS, list(sessions))


def keys(comp: NodeHarness, t: int) -> list[bool]:
    [(_, out)] = comp.feed("in", frame(t))
    return out.arrays["keyframe"].tolist()


def seqs(comp: NodeHarness, t: int) -> list[int]:
    [(_, out)] = comp.feed("in", frame(t))
    return out.arrays["seq"].tolist()


def ask(comp: NodeHarness, sessions: list[str], seen: dict[str, Any] | None = None) -> None:
    assert comp.feed("requests", Message("avatar/request", {"keyframe": sessions, **({"seen": seen} if seen else {})})) == []


# --- the compressor ----------------------------------------------------------------------------
def test_a_second_sinks_request_for_a_loss_a_keyframe_already_answers_makes_none() -> None:
    comp = NodeHarness("compressor", keyframe_interval=1000)
    keys(comp, 0)  # both sessions start with a keyframe
    last = [seqs(comp, t) for t in range(1, 10)][-1]  # ... deltas up to seq 9
    ask(comp, ["a"], {"a": last[0]})  # sink 1: its viewers lost a packet; it had seen seq 9
    assert keys(comp, 10) == [True, False]
    ask(comp, ["a"], {"a": last[0]})  # sink 2, for the same loss, after the keyframe (seq 10) was made
    assert [keys(comp, t) for t in range(11, 30)] == [[False, False]] * 19
    st = comp.node.stats()
    assert (st["keyframe_requests"], st["keyframes_requested"], st["keyframe_requests_answered"]) == (2, 1, 1)
    ask(comp, ["a"], {"a": 29})  # a new loss, after the sinks saw that keyframe: a new one
    assert keys(comp, 30) == [True, False]


def test_requests_saying_nothing_seen_get_one_keyframe_per_min_gap_frames() -> None:
    comp = NodeHarness("compressor", keyframe_interval=1000, keyframe_min_gap=6)
    keys(comp, 0)
    ask(comp, ["a", "b"])  # a frame after the first keyframes: held until 6 frames after them
    assert [keys(comp, t)[0] for t in range(1, 7)] == [False] * 5 + [True]
    ask(comp, ["a"])
    ask(comp, ["a"])  # a burst: one keyframe, 6 frames after the last
    made = [t for t in range(7, 30) if keys(comp, t)[0]]
    assert made == [12]
    st = comp.node.stats()
    assert st["keyframes_requested"] == 3 and st["keyframe_requests_held"] == 0  # a at 6 and 12, b at 6
    comp.set_params(keyframe_min_gap=0)
    ask(comp, ["a"])
    assert keys(comp, 30) == [True, False]


def test_a_request_for_a_session_whose_next_frame_is_a_keyframe_anyway_is_answered_by_it() -> None:
    comp = NodeHarness("compressor", keyframe_interval=1000, keyframe_min_gap=0)
    ask(comp, ["a", "nobody"])  # no frame of either yet: their first frames are keyframes
    assert keys(comp, 0) == [True, True] and keys(comp, 1) == [False, False]
    comp.set_params(force_keyframe=True)  # a person: every session, at once, whatever was asked
    ask(comp, ["a"])
    assert keys(comp, 2) == [True, True] and keys(comp, 3) == [False, False]
    assert comp.node.stats()["keyframe_requests_answered"] == 3 and comp.node.stats()["keyframes_requested"] == 0


def test_malformed_seen_values_count_as_not_said() -> None:
    comp = NodeHarness("compressor", keyframe_interval=1000, keyframe_min_gap=0)
    keys(comp, 0)
    for t, bad in enumerate(({"a": -1}, {"a": 70000}, {"a": True}, {"a": "5"}, "nonsense"), start=1):
        comp.feed("requests", Message("avatar/request", {"keyframe": ["a"], "seen": bad}))
        assert keys(comp, t)[0] is True  # asked without a seq: made
    assert wf.seq_after(0, 65535) and not wf.seq_after(65535, 0) and not wf.seq_after(3, 3)


def layer_out(comp: NodeHarness, t: int) -> tuple[list[bool], dict[str, tuple[bool, int]]]:
    """Layer 0's keyframe flags, and layer 1's (keyframe, seq) per session it had this frame."""
    [(_, out)] = comp.feed("in", frame(t))
    layer = out.data["layers"][0]
    names = ["a", "b"]
    return out.arrays["keyframe"].tolist(), {names[r]: (k, n) for r, k, n in zip(layer["rows"], layer["keyframe"],
                                                                                 layer["seq"])}


def test_a_layers_viewers_ask_for_that_layers_keyframe_and_each_layer_is_coalesced_on_its_own() -> None:
    comp = NodeHarness("compressor", keyframe_interval=1000, keyframe_min_gap=0, layers=[{"lod": 0, "bits": 6}])
    comp.feed("requests", Message("avatar/request", {"keyframe": [], "watched": ["a", "b"]}))
    frames = [layer_out(comp, t) for t in range(10)]
    assert frames[0][1]["a"][0] and not frames[9][1]["a"][0]  # the layer's own keyframe, then deltas
    seen = frames[9][1]["a"][1]

    def ask_layer(seen_seq: int) -> None:
        comp.feed("requests", Message("avatar/request", {"keyframe": [], "layer_keyframe": {"1": ["a"]},
                                                         "layer_seen": {"1": {"a": seen_seq}}}))

    ask_layer(seen)  # sink 1: a layer-1 viewer lost a packet
    base, layer = layer_out(comp, 10)
    assert base == [False, False] and layer["a"][0] and not layer["b"][0]  # that layer's keyframe alone
    ask_layer(seen)  # sink 2, the same loss, after the keyframe was made: answered by it
    ask(comp, ["a"], {"a": 9})  # a layer-0 loss: layer 0's keyframe, none on the layer
    base, layer = layer_out(comp, 11)
    assert base == [True, False] and not layer["a"][0]
    st = comp.node.stats()
    assert st["layer_keyframes_requested"] == [1] and st["layer_keyframe_requests_answered"] == [1]
    assert st["keyframes_requested"] == 1


# --- the viewer registry -----------------------------------------------------------------------
class _Transport:
    kind = "fake"
    framing_bytes = 60
    bundle_s = 0.0
    probe_train = False

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.packets.append(data)

    async def send_text(self, text: str) -> None:
        pass

    send_lossy = send_text

    async def close(self) -> None:
        pass


def test_a_viewer_on_a_layer_asks_for_that_layers_keyframe_with_that_layers_seq() -> None:
    base, low = wf.Encoder(keyframe_interval=1000), wf.Encoder(keyframe_interval=1000, sid_base=4096)
    clock, requests = [0], []

    def batch(t: int) -> tuple[list[bytes], dict[str, Any]]:
        b, layer = base.encode(["a"], W[:1], t * FRAME_NS, wf.TABLE_ARKIT52), low.encode(
            ["a"], W[:1], t * FRAME_NS, wf.TABLE_ARKIT52)
        k, n = packet_facts(layer)
        return b, {"rows": [0], "packets": layer, "keyframe": k.tolist(), "seq": n.tolist()}

    async def run() -> None:
        reg = Viewers(queue_size=64, keyframe_min_interval_ns=100_000_000, session_timeout_ns=3_000_000_000,
                      request=requests.append, clock=lambda: clock[0])
        top, slow = reg.add(_Transport(), "a", subscribe=True), reg.add(_Transport(), "a", subscribe=True)
        reg.set_layers({str(slow.id): 1})  # its network agent moved it down: a keyframe of layer 1
        assert requests[-1] == {"keyframe": [], "layer_keyframe": {"1": ["a"]}}  # nothing of layer 1 seen yet
        for t in range(20):
            clock[0] = t * FRAME_NS
            b, layer = batch(t)
            reg.dispatch(["a"], b, clock[0], *packet_facts(b), layers=[layer])
        await asyncio.sleep(0)
        assert slow.layer == 1 and not slow.waiting and reg.newest_layer[("a", 1)] == 19
        clock[0] += 200_000_000
        reg.handle_text(slow, json.dumps({"type": "keyframe", "seq": 12}))
        assert requests[-1] == {"keyframe": [], "layer_keyframe": {"1": ["a"]}, "layer_seen": {"1": {"a": 19}}}
        reg.handle_text(top, json.dumps({"type": "keyframe", "seq": 12}))  # layer 0's own ask, limited apart
        assert requests[-1] == {"keyframe": ["a"], "seen": {"a": 19}}
        for v in (top, slow):
            reg.remove(v)

    asyncio.run(run())


def test_a_viewers_ask_for_a_loss_a_keyframe_on_its_way_repairs_is_stale() -> None:
    enc = wf.Encoder(keyframe_interval=1000)
    batches = [enc.encode(["a"], W[:1], t * FRAME_NS, wf.TABLE_ARKIT52) for t in range(20)]
    clock, requests = [0], []

    async def run() -> None:
        reg = Viewers(queue_size=64, keyframe_min_interval_ns=100_000_000, session_timeout_ns=3_000_000_000,
                      request=requests.append, clock=lambda: clock[0])
        near, far = reg.add(_Transport(), "a", subscribe=True), reg.add(_Transport(), "a", subscribe=True)
        assert requests == [{"keyframe": ["a"]}]  # the first subscription; nothing seen yet
        for t in range(20):
            clock[0] = t * FRAME_NS
            reg.dispatch(["a"], batches[t], clock[0], *packet_facts(batches[t]))
        await asyncio.sleep(0)
        assert reg.newest["a"] == 19 and not near.waiting and not far.waiting
        clock[0] += 200_000_000
        reg.handle_text(near, json.dumps({"type": "keyframe", "seq": 12}))  # lost 11, could not decode 12
        assert near.waiting and requests[-1] == {"keyframe": ["a"], "seen": {"a": 19}}
        enc.request_keyframe(["a"])  # the compressor answers it
        key = enc.encode(["a"], W[:1], 20 * FRAME_NS, wf.TABLE_ARKIT52)
        reg.dispatch(["a"], key, clock[0], *packet_facts(key))
        assert not near.waiting and near.key_seq == far.key_seq == 20
        reg.handle_text(far, json.dumps({"type": "keyframe", "seq": 12}))  # the same loss, later: stale
        reg.handle_text(far, json.dumps({"type": "keyframe"}))  # a page that does not say: asks as before
        assert far.waiting
        st = reg.stats()
        assert st["keyframe_requests_stale"] == 1 and st["losses"] == 2
        reg.handle_text(far, json.dumps({"type": "keyframe", "seq": "12"}))
        assert reg.counts["protocol_errors"] == 1
        await reg.close_all()

    asyncio.run(run())


def test_an_ask_for_a_loss_on_the_layer_the_viewer_left_is_stale_on_the_new_one() -> None:
    """A viewer moved down a layer on a congested link: its page finds the old layer's losses
    after the new layer's keyframe left the sink (the link's queue holds it), and asks with the
    old layer's seq. That ask must not cost the new layer its deltas and a keyframe."""
    base, low = wf.Encoder(keyframe_interval=1000), wf.Encoder(keyframe_interval=1000, sid_base=4096)
    w = np.random.default_rng(2).uniform(0, 1, (1, 52)).astype(np.float32)
    clock, requests = [0], []

    async def run() -> None:
        reg = Viewers(queue_size=64, keyframe_min_interval_ns=0, session_timeout_ns=3_000_000_000,
                      request=requests.append, clock=lambda: clock[0])
        v = reg.add(_Transport(), "a", subscribe=True)

        def step(t: int) -> None:
            clock[0] = t * FRAME_NS
            b = base.encode(["a"], w, clock[0], wf.TABLE_ARKIT52)
            if t < 380:  # the layer is encoded once someone is about to take it: its seqs start late
                reg.dispatch(["a"], b, clock[0], *packet_facts(b))
                return
            if t in (400, 530):
                low.request_keyframe(["a"])  # the switch asked for the layer's keyframe (then the loss below)
            lp = low.encode(["a"], w, clock[0], wf.TABLE_ARKIT52)
            k, n = packet_facts(lp)
            reg.dispatch(["a"], b, clock[0], *packet_facts(b),
                         layers=[{"rows": [0], "packets": lp, "keyframe": k.tolist(), "seq": n.tolist()}])

        for t in range(400):
            step(t)
        await asyncio.sleep(0)
        reg.set_layers({str(v.id): 1})
        step(400)
        assert v.layer == 1 and v.key_seq == v.last_seq == 20 and not v.waiting
        for t in range(401, 404):
            step(t)
        await asyncio.sleep(0)
        asks = len(requests)
        for old in (395, 398):  # layer 0's seqs, lost before the switch: ahead of what layer 1 handed (23)
            reg.handle_text(v, json.dumps({"type": "keyframe", "seq": old}))
        reg.handle_text(v, json.dumps({"type": "keyframe", "seq": 5}))  # before the layer's keyframe
        assert not v.waiting and len(requests) == asks and reg.counts["keyframe_requests_stale"] == 3
        skipped = v.skipped
        step(404)
        assert v.skipped == skipped and v.last_seq == 24  # its deltas go on
        reg.handle_text(v, json.dumps({"type": "keyframe", "seq": 22}))  # a loss on this layer: asked
        assert v.waiting and requests[-1]["layer_keyframe"] == {"1": ["a"]}
        step(530)  # its keyframe, over 2 s after the switch: a seq it has not reached is no longer the old layer's
        assert not v.waiting and v.last_seq == 25
        reg.handle_text(v, json.dumps({"type": "keyframe", "seq": 398}))
        assert v.waiting and reg.counts["keyframe_requests_stale"] == 3
        await reg.close_all()

    asyncio.run(run())


def test_a_waiting_viewer_asks_again_when_packets_went_missing_before_the_sink() -> None:
    """The keyframe a viewer waits for may be what a leaky link dropped on the way to the sink."""
    enc = wf.Encoder(keyframe_interval=1000)
    batches = [enc.encode(["a"], W[:1], t * FRAME_NS, wf.TABLE_ARKIT52) for t in range(30)]
    clock, requests = [0], []

    async def run() -> None:
        reg = Viewers(queue_size=64, keyframe_min_interval_ns=0, session_timeout_ns=3_000_000_000,
                      request=requests.append, clock=lambda: clock[0])
        first = reg.add(_Transport(), "a", subscribe=True)
        for t in range(10):
            reg.dispatch(["a"], batches[t], 0, *packet_facts(batches[t]))
        reg.add(_Transport(), "a", subscribe=True)  # waits for a keyframe, asked for
        n = len(requests)
        for t in range(12, 15):  # seqs 10 and 11 never came (one was the keyframe, say)
            reg.dispatch(["a"], batches[t], 0, *packet_facts(batches[t]))
        assert requests[n:] == [{"keyframe": ["a"], "seen": {"a": 12}}] and not first.waiting
        await reg.close_all()

    asyncio.run(run())


# --- end to end ----------------------------------------------------------------------------------
@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    """Runners the test starts; stopped after it, every node process gone."""
    started: list[Runner] = []
    yield started
    for runner in started:
        pids = list(runner.pids().values())
        runner.stop(drain=False)
        assert wait_gone(pids) == [], "a node process outlived the graph"


@pytest.mark.parametrize("viewers,spread_s", [(1, 0.0), (10, 0.15), (100, 0.15)])
def test_viewers_losing_the_same_packet_cost_one_keyframe(runners, viewers: int, spread_s: float) -> None:
    """Each viewer loses the same packet before its decoder; each asks for a keyframe as the page
    does. Their links' delays spread from 0 to ``spread_s`` each way: the far ones ask after the
    keyframe left for them. The periodic keyframe is off (1000 frames), so every keyframe counts."""
    graph = parse_graph(graph_text(1000, sink_params={"queue_size": 64}), "<test>")
    runner = Runner(graph, stop_on_eos=False, control=None).start()
    runners.append(runner)
    url = wait(lambda: runner.stats()["nodes"]["web"]["node"].get("url"), 30, "the sink's URL")
    with ViewerPool(url, viewers, spread_s=spread_s) as pool:
        wait(pool.decoding, 60, lambda: f"{viewers} viewers to decode ({pool.problems()})")
        before = encoder_counts(runner)
        events = [loss_event(runner, pool, settle=30) for _ in range(2)]
        after = encoder_counts(runner)
    assert [e["requested"] for e in events] == [1, 1], events
    assert after["keyframes"] - before["keyframes"] == 2  # and nothing else: no periodic, no second
    sink = runner.stats()["nodes"]["web"]["node"]
    assert sink["losses"] >= 2 and sink["drops"] == 0
    if viewers > 1:
        assert sink["keyframe_requests_stale"] > 0  # the far viewers' asks came after the keyframe left


def test_two_sinks_whose_viewers_lose_the_same_packet_cost_one_keyframe(runners) -> None:
    doc = json.loads(graph_text(1000, sink_params={"queue_size": 64}))
    doc["nodes"]["web2"] = dict(doc["nodes"]["web"])
    doc["links"] += ["encode.out -> web2.in", {"from": "web2.requests", "to": "encode.requests", "feedback": True}]
    runner = Runner(parse_graph(json.dumps(doc), "<test>"), stop_on_eos=False, control=None).start()
    runners.append(runner)
    urls = [wait(lambda n=n: runner.stats()["nodes"][n]["node"].get("url"), 30, f"{n}'s URL") for n in ("web", "web2")]
    with ViewerPool(urls[0], 5, spread_s=0.1) as one, ViewerPool(urls[1], 5, spread_s=0.1) as two:
        wait(lambda: one.decoding() and two.decoding(), 60, lambda: f"the viewers to decode ({one.problems()}, "
                                                                  f"{two.problems()})")
        before = encoder_counts(runner)
        events = [loss_event(runner, [one, two]) for _ in range(2)]
        after = encoder_counts(runner)
    assert [e["requested"] for e in events] == [1, 1] and after["keyframes"] - before["keyframes"] == 2
    nodes = runner.stats()["nodes"]
    assert nodes["web"]["node"]["losses"] > 0 and nodes["web2"]["node"]["losses"] > 0  # both sinks asked
