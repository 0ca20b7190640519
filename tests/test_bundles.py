"""Bundles: a slow WebRTC viewer's packets gathered into one message (nodes/delivery/bundle.py),
and the viewer registry sending them only to a reduced layer of a transport that bundles."""
from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes import wire as wf
from nodes.delivery import Viewers, bundle
from nodes.delivery.voice import VoicePacket, voice_frame
from nodes.wire import packet_facts

FRAME_NS = 16_666_667


def _stream(n: int, seed: int = 3) -> list[bytes]:
    enc = wf.Encoder(keyframe_interval=10)
    w = np.random.default_rng(seed).uniform(0, 1, (n, 52)).astype(np.float32)
    return [enc.encode(["a"], w[i:i + 1], i * FRAME_NS, wf.TABLE_ARKIT52)[0] for i in range(n)]


@settings(max_examples=50, deadline=None)
@given(st.integers(2, bundle.MAX_PACKETS), st.integers(0, 1000))
def test_a_bundle_gives_back_its_packets_unchanged_and_decodes_as_the_stream(n: int, seed: int) -> None:
    packets = _stream(n, seed)  # a keyframe first, then deltas (another keyframe at 10)
    data = bundle.pack(packets)
    assert bundle.is_bundle(data) and bundle.unpack(data) == packets
    dec = wf.Decoder()
    assert all(dec.decode(p) is not None for p in bundle.unpack(data)) and dec.counts["lost"] == 0


def test_a_single_packet_a_keyframe_or_a_voice_frame_is_no_bundle() -> None:
    key, delta = _stream(2)
    assert bundle.pack([key]) == key and bundle.unpack(key) == [key]  # a keyframe: an array of 9, an int first
    assert not bundle.is_bundle(key) and not bundle.is_bundle(delta) and bundle.unpack(delta) == [delta]
    frame = voice_frame("a", VoicePacket("opus", 0, b"\x01\x02", 960))
    assert not bundle.is_bundle(frame)
    with pytest.raises(ValueError, match="holds 2..15"):
        bundle.pack([delta] * (bundle.MAX_PACKETS + 1))
    with pytest.raises(ValueError, match="only bins"):
        bundle.unpack(msgpack.packb([b"x", 1]))


class _Transport:
    kind = "fake"
    framing_bytes = 93
    probe_train = True

    def __init__(self, bundle_s: float) -> None:
        self.bundle_s = bundle_s
        self.messages: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.messages.append(data)

    async def send_text(self, text: str) -> None:
        pass

    send_lossy = send_text

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("bundle_s, most", [(0.05, 25), (1.0, 20)])
def test_only_a_reduced_layer_of_a_bundling_transport_gets_bundles_and_every_packet_arrives(
        bundle_s: float, most: int) -> None:
    base, low = wf.Encoder(keyframe_interval=1000), wf.Encoder(keyframe_interval=1000, sid_base=4096)
    w = np.random.default_rng(1).uniform(0, 1, (1, 52)).astype(np.float32)

    async def run() -> None:
        # a queue of 8: a bundle longer than it holds (1 s at 60 Hz) goes when half of it waits
        reg = Viewers(queue_size=8, keyframe_min_interval_ns=0, session_timeout_ns=3_000_000_000,
                      request=lambda r: None, clock=lambda: 0)
        top_t, slow_t, ws_t = _Transport(bundle_s), _Transport(bundle_s), _Transport(0.0)
        top, slow, ws = (reg.add(t, "a", subscribe=True) for t in (top_t, slow_t, ws_t))
        reg.set_layers({str(slow.id): 1, str(ws.id): 1})  # both on the reduced layer; one transport bundles
        layer_packets = []
        for t in range(60):  # a second at 60 Hz, dispatched as it comes
            b = base.encode(["a"], w, t * FRAME_NS, wf.TABLE_ARKIT52)
            lp = low.encode(["a"], w, t * FRAME_NS, wf.TABLE_ARKIT52)
            layer_packets.append(lp[0])
            k, n = packet_facts(lp)
            reg.dispatch(["a"], b, t * FRAME_NS, *packet_facts(b),
                         layers=[{"rows": [0], "packets": lp, "keyframe": k.tolist(), "seq": n.tolist()}])
            await asyncio.sleep(FRAME_NS / 1e9)
        await asyncio.sleep(bundle_s + 0.1)  # the last, fewer than half a queue, go when the bundle is due
        assert len(top_t.messages) == 60 and not any(bundle.is_bundle(m) for m in top_t.messages)  # layer 0
        assert not any(bundle.is_bundle(m) for m in ws_t.messages)  # a WebSocket: TCP coalesces by itself
        got = [p for m in slow_t.messages for p in bundle.unpack(m)]
        assert got == layer_packets and slow.sent == 60 and slow.drops == 0  # all of them, in order, unchanged
        # fewer messages than packets: the point of it
        assert len(slow_t.messages) <= most and reg.counts["bundles"] >= 10
        for v in (top, slow, ws):
            reg.remove(v)

    asyncio.run(run())
