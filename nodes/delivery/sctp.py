"""aiortc's SCTP, corrected where it stalls a data channel on a slow, lossy link.

Measured on a link cut to 16-32 kbit/s under a viewer on the unreliable ``avatar`` channel
(``tools/net_scenario.py --transport webrtc``), aiortc 1.16 delivered 1 frame a second of 13:

- **FORWARD-TSN storm.** It answers every SACK that leaves abandoned chunks behind with a
  FORWARD-TSN, and the receiver SACKs every FORWARD-TSN: each lost chunk starts a ping-pong that
  lasts while losses go on. 30 FORWARD-TSNs a second filled the link. RFC 3758 (3.5, F2) lets
  a sender wait a round trip before a duplicate; dcsctp (Chromium's SCTP) sends at most one per
  smoothed round trip, capped at 200 ms. So does ``patch``; and it sends the same point again
  only after a retransmission timeout, not on each SACK that lags behind it (with half a second
  of queue on the link, one went out every 200 ms for seconds after a loss).
- **RTT samples that are not round trips.** It takes a sample from the oldest chunk each SACK
  acknowledges cumulatively. A chunk gap-acked long before, held back by a hole that only a
  FORWARD-TSN fills, gave samples of seconds: the RTO climbed from 1 s to 10 s, and every time
  all in flight was lost the association sat idle for the whole RTO. RFC 9260 6.3.1 (C5) keeps
  samples to acknowledgements no loss held back; ``patch`` skips a chunk already gap-acked, and
  bounds the RTO as dcsctp does below (400 ms rather than 1 s) and at ``RTO_MAX`` above.
- **A SACK for every packet.** Each of the viewer's reports, pongs and echoes (one per frame it
  decodes) cost a SACK on the slow downlink. RFC 9260 6.2 delays them (every second packet, or
  200 ms; at once for a gap or a duplicate), as browsers do; so does ``patch``, counting only
  packets that brought data (aiortc asks again after the peer's own SACKs while one is owed).

The sink's process applies it (``webrtc_sink``); aiortc has no settings for any of this, so it
replaces four methods of ``RTCSctpTransport`` and checks first that they are there.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

RTO_MIN = 0.4  # s: dcsctp's rto_min (aiortc: 1 s)
RTO_MAX = 3.0  # s: aiortc's 60 s left a link that lost a burst idle for up to a minute
SACK_DELAY = 0.2  # s: a SACK waits at most this for a second packet to acknowledge with it
FORWARD_TSN_EVERY = 0.2  # s: at most one FORWARD-TSN per this (or per smoothed round trip, if shorter)
_patched = False


def patch() -> bool:
    """Apply the corrections to aiortc's ``RTCSctpTransport`` (once per process); False (and a
    warning) if this aiortc is not shaped as expected, in which case it is left as it is."""
    global _patched
    if _patched:
        return True
    try:
        from aiortc import rtcsctptransport as m

        cls: Any = m.RTCSctpTransport
        receive_sack, update_rto, transmit = cls._receive_sack_chunk, cls._update_rto, cls._transmit
        send_sack = cls._send_sack
        cls.State.ESTABLISHED  # noqa: B018
        m.SCTP_RTO_MIN, m.SCTP_RTO_MAX, m.uint32_gt  # noqa: B018 - present, or this aiortc differs
    except (ImportError, AttributeError) as exc:
        log.warning("aiortc's SCTP left uncorrected (%s): a data channel may stall on a lossy link", exc)
        return False

    async def _receive_sack_chunk(self: Any, chunk: Any) -> None:
        queue = self._sent_queue
        # the chunk this SACK would sample is the oldest outstanding one; already gap-acked, its
        # acknowledgement was held back by a hole before it, so the time since it was sent is not
        # a round trip
        self._avatar_skip_rtt = bool(queue) and bool(getattr(queue[0], "_acked", False))
        try:
            await receive_sack(self, chunk)
        finally:
            self._avatar_skip_rtt = False

    def _update_rto(self: Any, r: float) -> None:
        if not getattr(self, "_avatar_skip_rtt", False):
            update_rto(self, r)

    async def _transmit(self: Any) -> None:
        fwd = self._forward_tsn_chunk
        if fwd is not None:
            now = time.monotonic()
            sent = getattr(self, "_avatar_fwd_sent", None)  # (cumulative TSN, when) of the last one out
            if sent is not None and not m.uint32_gt(fwd.cumulative_tsn, sent[0]) and now - sent[1] < self._rto:
                # the same point again, within a retransmission timeout of the last: that one is still on
                # its way (the peer's SACKs lag by the queue), so a copy only adds to the queue
                self._forward_tsn_chunk = fwd = None
            until = getattr(self, "_avatar_fwd_until", 0.0)
            if fwd is not None and now < until:  # one went out within the limit: this one waits (the newest replaces it)
                self._forward_tsn_chunk = None
                try:
                    await transmit(self)
                finally:
                    if self._forward_tsn_chunk is None:
                        self._forward_tsn_chunk = fwd
                if getattr(self, "_avatar_fwd_timer", None) is None:
                    self._avatar_fwd_timer = self._loop.call_later(until - now, _release, self)
                return
        if fwd is not None:
            srtt = self._srtt if self._srtt is not None else FORWARD_TSN_EVERY
            self._avatar_fwd_until = now + min(FORWARD_TSN_EVERY, srtt)
            self._avatar_fwd_sent = (fwd.cumulative_tsn, now)
        await transmit(self)

    def _release(self: Any) -> None:
        self._avatar_fwd_timer = None
        if self._forward_tsn_chunk is not None and self._association_state == cls.State.ESTABLISHED:
            asyncio.ensure_future(self._transmit())

    async def _send_sack(self: Any) -> None:
        # RFC 9260 6.2: a SACK for at least every second packet, and within 200 ms; at once for a
        # gap or a duplicate (the peer's loss recovery needs those)
        if self._sack_misordered or self._sack_duplicates or self._association_state != cls.State.ESTABLISHED:
            await _sack_now(self)
            return
        # aiortc calls this after every packet while a SACK is owed, also after one that brought no
        # DATA (the peer's own SACKs): only a packet that moved the cumulative TSN counts
        tsn = self._last_received_tsn
        if tsn != getattr(self, "_avatar_sack_tsn", None):
            self._avatar_sack_tsn = tsn
            self._avatar_unacked = getattr(self, "_avatar_unacked", 0) + 1
        if getattr(self, "_avatar_unacked", 0) >= 2:
            await _sack_now(self)
        elif getattr(self, "_avatar_sack_timer", None) is None:
            self._avatar_sack_timer = self._loop.call_later(SACK_DELAY, _sack_due, self)

    async def _sack_now(self: Any) -> None:
        timer = getattr(self, "_avatar_sack_timer", None)
        if timer is not None:
            timer.cancel()
        self._avatar_sack_timer, self._avatar_unacked = None, 0
        await send_sack(self)

    def _sack_due(self: Any) -> None:
        self._avatar_sack_timer = None
        if self._sack_needed and self._association_state == cls.State.ESTABLISHED:
            asyncio.ensure_future(_sack_now(self))

    cls._receive_sack_chunk, cls._update_rto, cls._transmit = _receive_sack_chunk, _update_rto, _transmit
    cls._send_sack = _send_sack
    m.SCTP_RTO_MIN, m.SCTP_RTO_MAX = RTO_MIN, RTO_MAX
    _patched = True
    return True
