"""The corrections to aiortc's SCTP (``nodes.delivery.sctp``), on a real association: two aiortc
peers in this process, ICE on loopback, DTLS and SCTP as a sink and a viewer run them."""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Callable

from nodes.delivery import restrict_host_addresses
from nodes.delivery.sctp import patch


async def _pair() -> tuple[Any, Any, Any, Any]:
    """(sink pc, viewer pc, the sink's channel, the viewer's end of it), open."""
    from aiortc import RTCPeerConnection

    sink, viewer = RTCPeerConnection(), RTCPeerConnection()
    ch = sink.createDataChannel("avatar", ordered=False, maxRetransmits=0)
    got: asyncio.Future = asyncio.get_running_loop().create_future()
    viewer.on("datachannel", lambda c: got.done() or got.set_result(c))
    await sink.setLocalDescription(await sink.createOffer())
    await viewer.setRemoteDescription(sink.localDescription)
    await viewer.setLocalDescription(await viewer.createAnswer())
    await sink.setRemoteDescription(viewer.localDescription)
    far = await asyncio.wait_for(got, 20)
    while ch.readyState != "open" or far.readyState != "open":
        await asyncio.sleep(0.01)
    return sink, viewer, ch, far


def _on_send(pc: Any, seen: Callable[[Any], None]) -> None:
    """Show ``seen`` each chunk ``pc``'s SCTP sends (this one association only)."""
    assoc = pc.sctp
    send = assoc._send_chunk

    async def watched(chunk: Any) -> None:
        seen(chunk)
        await send(chunk)

    assoc._send_chunk = watched


def test_a_viewer_echoing_every_frame_gets_a_sack_for_every_second_packet_not_every_one() -> None:
    """The page echoes each frame it decodes. With the sink's frames going the other way, every
    echo packet came with the viewer's SACK for a frame; aiortc asked the delayed SACK again after
    each of those, so the sink sent a SACK per echo on the (slow) downlink."""
    assert patch()
    restrict_host_addresses(["127.0.0.1"])

    async def run() -> dict[str, int]:
        sink, viewer, ch, far = await _pair()
        echoes: list[bytes] = []
        far.on("message", lambda m: far.send(b"echo"))  # the viewer: an echo per frame
        ch.on("message", echoes.append)
        counts: Counter[str] = Counter()
        _on_send(sink, lambda c: counts.update([type(c).__name__]))
        try:
            for _ in range(120):  # 60 frames a second, for 2 s
                ch.send(b"f" * 20)
                await asyncio.sleep(1 / 60)
            deadline = asyncio.get_running_loop().time() + 5
            while len(echoes) < 110 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # the last delayed SACK
        finally:
            await sink.close()
            await viewer.close()
        return {"echoes": len(echoes), **counts}

    counts = asyncio.run(run())
    assert counts["echoes"] >= 110, counts  # loopback loses nothing
    # every second packet that brought data (or 200 ms): about half as many SACKs as echoes
    # (without the correction: one per echo)
    assert counts.get("SackChunk", 0) <= 0.6 * counts["echoes"], counts
    assert counts.get("SackChunk", 0) >= 0.4 * counts["echoes"], counts


def test_a_forward_tsn_goes_once_per_point_while_the_peers_sacks_lag_behind_it() -> None:
    """A lost chunk on the unreliable channel is skipped with a FORWARD-TSN. With a queue on the
    link the viewer's SACKs come late and still show the hole; aiortc answered each of them with
    the same FORWARD-TSN again (five a second, for seconds, on the link that was already full)."""
    assert patch()
    restrict_host_addresses(["127.0.0.1"])
    from aiortc.rtcsctptransport import DataChunk, ForwardTsnChunk

    async def run() -> tuple[list[int], int]:
        sink, viewer, ch, far = await _pair()
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        far.on("message", got.append)
        v = viewer.sctp
        receive, send = v._receive_chunk, v._send_chunk
        seen = [0]

        async def lossy(chunk: Any) -> None:  # every 8th frame lost on the way to the viewer
            if isinstance(chunk, DataChunk) and chunk.user_data.startswith(b"f"):
                seen[0] += 1
                if seen[0] % 8 == 0:
                    return
            await receive(chunk)

        def late(chunk: Any) -> Any:  # what the viewer sends waits 300 ms, in order: a queue
            loop.call_later(0.3, lambda: asyncio.ensure_future(send(chunk)))
            return asyncio.sleep(0)

        v._receive_chunk, v._send_chunk = lossy, late
        fwd: list[int] = []
        _on_send(sink, lambda c: fwd.append(c.cumulative_tsn) if isinstance(c, ForwardTsnChunk) else None)
        try:
            for _ in range(180):  # 60 frames a second, for 3 s
                ch.send(b"f" * 20)
                await asyncio.sleep(1 / 60)
            await asyncio.sleep(1.0)
        finally:
            await sink.close()
            await viewer.close()
        return fwd, len(got)

    fwd, got = asyncio.run(run())
    assert 150 <= got <= 160, got  # 7 of 8 arrive
    assert len(set(fwd)) >= 5, fwd  # the points skipped: most of the 22 losses, several at a time
    # each point goes once (again only after a retransmission timeout, which loopback's round trip
    # of 300 ms keeps near 1 s)
    assert len(fwd) <= len(set(fwd)) + 3, fwd
