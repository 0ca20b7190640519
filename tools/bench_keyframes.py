#!/usr/bin/env python3
"""Keyframes per loss event: N viewers of one session lose the same packet; how many keyframes follow?

    python tools/bench_keyframes.py [--viewers 1 10 100] [--events 5] [--transport websocket]

The graph is ``graphs/face.yaml``'s path (a recorded take, looped at 60 fps, as one session ->
mapper -> blender -> lod -> compressor -> the sink on a free port, the sink's ``requests`` fed
back to the compressor), with the compressor's periodic keyframe every ``--interval`` frames.
N headless viewers (``tools/simulator.py``'s, decoding like the page) watch the session. For
each loss event every viewer loses the same packet (a wire ``seq`` a little ahead of the
newest one seen) before its decoder sees it; each then asks for a keyframe as the page does.
An event ends when every viewer has decoded a frame past the lost one and the compressor has
coded ``--settle`` more frames (a late keyframe would show by then).

The compressor counts its keyframes by cause (``stats``: ``keyframes_requested`` made for a
request, the rest periodic or a new session's first), so the table separates the two. Prints a
table, or JSON (``--json``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from polling import wait  # noqa: E402
from simulator import Viewer, run_webrtc, run_websocket  # noqa: E402

from nodes.wire import SEQ_MOD  # noqa: E402
from runtime import Runner, parse_graph  # noqa: E402

TAKE = ROOT / "tests" / "data" / "llf_dao_take.csv"
AHEAD = 20  # the lost packet: this many seqs past the newest one a viewer saw (a third of a second)
QUEUE = 64  # packets a viewer's queue at the sink holds: a viewer thread slowed by a busy machine
            # must not make losses of its own (queue drops) beside the one measured


def graph_text(interval: int, sink: str = "websocket_sink", sink_params: dict | None = None,
               compressor_params: dict | None = None) -> str:
    """face.yaml's path with the sink on a free port; ``interval``: the periodic keyframe interval."""
    enc = {"keyframe_interval": interval, "ref_interval": 1, **(compressor_params or {})}
    web = {"host": "127.0.0.1", "port": 0, **(sink_params or {})}
    if sink == "webrtc_sink":
        web["ice_addresses"] = ["127.0.0.1"]
    return json.dumps({
        "name": "bench-keyframes", "link_defaults": {"policy": "leaky", "size": 4},
        "nodes": {
            "take": {"type": "arkit_replay", "params": {"path": str(TAKE), "loop": True, "session": "s1"}},
            "retarget": {"type": "mapper", "params": {"profile": "identity"}},
            "face": {"type": "blender", "params": {"rate": 60, "tick_on_capture": True}},
            "detail": {"type": "lod", "params": {"level": 0}},
            "encode": {"type": "compressor", "params": enc},
            "web": {"type": sink, "params": web},
        },
        "links": [{"chain": "take -> retarget -> face.capture", "size": 2}, "face -> detail -> encode.in",
                  "encode.out -> web.in",
                  {"from": "web.requests", "to": "encode.requests", "feedback": True},
                  {"from": "web.requests", "to": "detail.requests", "feedback": True}],
    })


# --- viewers on a loop of their own --------------------------------------------------------------
class ViewerPool:
    """N simulator viewers of one session, on an event loop in a thread of their own, so the caller
    (a test, this bench) can poll the graph's stats and tell the viewers which packet to lose."""

    def __init__(self, url: str, n: int, transport: str = "websocket", session: str | None = None,
                 loss: float = 0.0, spread_s: float = 0.0):
        """``spread_s``: the viewers' link delays (each way) spread evenly from 0 to this."""
        self.url, self.transport = url, transport
        self.viewers = [Viewer(i, transport, session, None, keep=False, loss=loss,
                               delay_s=spread_s * i / max(1, n - 1)) for i in range(n)]
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="viewers", daemon=True)

    def __enter__(self) -> "ViewerPool":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        run = run_webrtc if self.transport == "webrtc" else run_websocket

        async def one(v: Viewer) -> None:
            try:
                await run(v, self.url, self._stop)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - reported per viewer
                v.closed = f"{type(exc).__name__}: {exc}"

        await asyncio.gather(*(one(v) for v in self.viewers))

    def close(self) -> None:
        """Every viewer disconnects; the thread ends (within 20 s)."""
        if self._thread.is_alive():
            while self._stop is None:
                time.sleep(0.01)
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(20)

    def set_loss(self, loss: float) -> None:
        """Every viewer's link loses each packet with this probability from now on."""
        for v in self.viewers:
            v.loss = loss

    def decoding(self) -> bool:
        """Every viewer has decoded a frame and waits for nothing."""
        return all(v.frames and not v.decoder.waiting and not v.closed for v in self.viewers)

    def newest_seq(self) -> int:
        return max(v.last_seq for v in self.viewers)

    def lose(self, seq: int) -> None:
        """Every viewer loses the packet with this wire seq (when it comes)."""
        for v in self.viewers:
            v.lose.add(seq)

    def past(self, seq: int) -> bool:
        """Every viewer has decoded a frame after ``seq`` (and waits for nothing)."""
        return all(v.frames and after(v.frames[-1][3], seq) and not v.decoder.waiting for v in self.viewers)

    def problems(self) -> list[str]:
        return [f"viewer {v.index}: {v.closed or '; '.join(v.errors[:2])}" for v in self.viewers if v.closed or v.errors]


def after(a: int, b: int) -> bool:
    """Wire seq ``a`` comes after ``b`` (serial number arithmetic, modulo SEQ_MOD)."""
    return 0 < (a - b) % SEQ_MOD < SEQ_MOD // 2




# --- loss events ---------------------------------------------------------------------------------
def encoder_counts(runner: Runner, node: str = "encode") -> dict[str, int]:
    s = runner.stats()["nodes"][node]["node"]
    return {"packets": s["packets"], "keyframes": s["keyframes"], "requested": s["keyframes_requested"],
            "answered": s["keyframe_requests_answered"]}


def loss_event(runner: Runner, pools: ViewerPool | list[ViewerPool], settle: int = 30,
               timeout: float = 30.0) -> dict[str, Any]:
    """One loss every viewer (of every pool: one per sink) shares; the keyframes the compressor
    made for it (and the periodic ones meanwhile)."""
    pools = pools if isinstance(pools, list) else [pools]
    viewers = [v for pool in pools for v in pool.viewers]
    seq = (max(pool.newest_seq() for pool in pools) + AHEAD) % SEQ_MOD
    before = encoder_counts(runner)
    dropped = [v.dropped for v in viewers]
    problems = lambda: "; ".join(p for pool in pools for p in pool.problems())  # noqa: E731
    for pool in pools:
        pool.lose(seq)
    wait(lambda: all(v.dropped > d for v, d in zip(viewers, dropped)), timeout,
         lambda: f"every viewer to lose packet {seq} ({problems()})")
    wait(lambda: all(pool.past(seq) for pool in pools), timeout,
         lambda: f"every viewer to decode past packet {seq} ({problems()})")
    mid = encoder_counts(runner)
    wait(lambda: encoder_counts(runner)["packets"] >= mid["packets"] + settle, timeout,
         f"the compressor to code {settle} more frames")
    end = encoder_counts(runner)
    total, requested = end["keyframes"] - before["keyframes"], end["requested"] - before["requested"]
    return {"seq": seq, "requested": requested, "periodic": total - requested, "frames": end["packets"] - before["packets"],
            "answered": end["answered"] - before["answered"]}


def measure(n: int, events: int, interval: int, transport: str, settle: int, spread_s: float = 0.0) -> dict[str, Any]:
    """``events`` loss events with ``n`` viewers of one session (link delays spread over 0 ..
    ``spread_s``), in a fresh graph."""
    sink = "webrtc_sink" if transport == "webrtc" else "websocket_sink"
    graph = parse_graph(graph_text(interval, sink, {"queue_size": QUEUE}), "<bench_keyframes>")
    with Runner(graph, stop_on_eos=False, control=None) as runner:
        url = wait(lambda: runner.stats()["nodes"]["web"]["node"].get("url"), 30, "the sink's URL")
        with ViewerPool(url, n, transport, spread_s=spread_s) as pool:
            wait(pool.decoding, 60, lambda: f"{n} viewers to decode ({pool.problems()})")
            rows = [loss_event(runner, pool, settle) for _ in range(events)]
            sink_stats = runner.stats()["nodes"]["web"]["node"]
    requested = [r["requested"] for r in rows]
    return {"viewers": n, "spread_ms": round(spread_s * 1000), "events": events, "per_event": requested, "min": min(requested), "max": max(requested),
            "mean": sum(requested) / len(requested), "periodic": sum(r["periodic"] for r in rows),
            "frames": sum(r["frames"] for r in rows), "asks": sum(v.keyframe_requests for v in pool.viewers),
            "stale": sink_stats["keyframe_requests_stale"], "sink_requests": sink_stats["keyframe_requests"],
            "answered": sum(r["answered"] for r in rows), "sink_drops": sink_stats["drops"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--events", type=int, default=5, help="loss events per viewer count (default 5)")
    ap.add_argument("--interval", type=int, default=120, help="the compressor's keyframe_interval (default 120)")
    ap.add_argument("--settle", type=int, default=30, help="frames coded after recovery before an event ends")
    ap.add_argument("--spread", type=float, nargs="+", default=[0.0, 150.0], metavar="MS",
                    help="viewers' link delays spread from 0 to this many ms each way (default: 0 and 150)")
    ap.add_argument("--transport", choices=("websocket", "webrtc"), default="websocket")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if any(n < 1 for n in a.viewers) or a.events < 1:
        ap.error("--viewers and --events must be at least 1")
    results = [measure(n, a.events, a.interval, a.transport, a.settle, ms / 1000) for ms in a.spread for n in a.viewers]
    if a.json:
        print(json.dumps(results, indent=1))
        return 0
    head = (f"{'viewers':>7} {'delays ms':>9} {'events':>6} {'keyframes/event':>15} {'min':>4} {'max':>4} "
            f"{'periodic':>8} {'frames':>6} {'asks':>5} {'stale':>5} {'sink reqs':>9} {'answered':>8} {'drops':>5}")
    print(head)
    for r in results:
        delays = f"0-{r['spread_ms']}" if r["spread_ms"] else "0"
        print(f"{r['viewers']:>7} {delays:>9} {r['events']:>6} {r['mean']:>15.2f} {r['min']:>4} {r['max']:>4} "
              f"{r['periodic']:>8} {r['frames']:>6} {r['asks']:>5} {r['stale']:>5} {r['sink_requests']:>9} "
              f"{r['answered']:>8} {r['sink_drops']:>5}")
    print(f"\n{a.transport}; periodic keyframe every {a.interval} frames. keyframes/event: made by the compressor "
          "for a request; periodic: the others in the events' frames; asks: the viewers' keyframe asks; stale: "
          "asks the sink dropped (a keyframe after the lost packet was on its way); sink reqs: requests upstream "
          "(with the subscriptions'); answered: requests the compressor dropped (a keyframe was coming)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
