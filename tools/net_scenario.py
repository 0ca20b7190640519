#!/usr/bin/env python3
"""The network agent's scenario: a viewer's link is cut below its layer, then given back.

    python tools/net_scenario.py                  # cut to 16 kbit/s for 16 s, then free for 15 s
    python tools/net_scenario.py --cut 24kbit --json
    python tools/net_scenario.py --delay 40 --loss 1   # the same on a link that always has 40 ms and 1 % loss

Three network namespaces (root and iproute2 needed): the graph (a replay of the recorded take, a
compressor with two extra layers, a websocket_sink and a ``network`` agent) in one, and two
viewers, each in its own, joined to it by veth pairs. Each viewer decodes as the page does and
sends receiver reports (``tools/simulator.py``). One link gets a ``tc`` token bucket (``tbf``) at
``--cut``, ``--before`` seconds after its viewer's first frame; after ``--hold`` seconds it is
taken off. ``--delay``, ``--jitter`` and ``--loss`` give that link steady background conditions
for the whole run (its viewer connects through them, the cut comes on top), in the direction the
stream flows (the round trip grows by the delay): ``tc netem`` where the kernel has it, else
iptables and an NFQUEUE delayer (``tools/netem.py``; the output says which). From the graph's bus
(AGENT messages) and the viewers' counts it prints how soon the cut viewer moved down and back,
its frame loss before the cut and in between, the changes under steady conditions, and what the
other viewer saw (tests/test_agent_network.py asserts on these numbers).
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from netem import Conditions, Link, Unsupported  # noqa: E402
from simulator import Viewer, run_webrtc, run_websocket  # noqa: E402

from tests.helpers import AvatarProcess, wait_until  # noqa: E402
from tests.netns import NetNS  # noqa: E402

GRAPH = """
name: nettest
nodes:
  take: {type: arkit_replay, params: {path: tests/data/llf_dao_take.csv, loop: true, session: a}}
  encode: {type: compressor, params: {layers: [{lod: 2, bits: 6}, {lod: 3, bits: 5}]}}
  web: {type: SINK, params: {host: 0.0.0.0, port: 18080}}
links:
  - take -> encode.in
  - {from: encode, to: web, policy: block, size: 64}
  - {from: web.requests, to: encode.requests, feedback: true}
agents:
  net: {type: network, node: web}
"""


def layer_share(layer: int) -> float:
    """The share of the source's frames a layer of GRAPH's compressor carries (its level's rate
    decimation; layer 0 is level 0)."""
    import yaml

    from nodes.face import load_lod_table

    lods = [0, *(spec["lod"] for spec in yaml.safe_load(GRAPH)["nodes"]["encode"]["params"]["layers"])]
    every, _ = load_lod_table("mappings/lod.yaml")
    return 1.0 / int(every[lods[layer]])


def _tc_works(ns: NetNS, dev: str) -> bool:
    ok = subprocess.run([*ns.prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", "1mbit", "burst",
                         "16kb", "latency", "50ms"], capture_output=True).returncode == 0
    subprocess.run([*ns.prefix, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
    return ok


def _viewer(ns: NetNS, url: str, stop: threading.Event, transport: str = "websocket") -> tuple[Viewer, threading.Thread]:
    """A simulated page decoding inside ``ns`` (its sockets are made by a thread that joined it)."""
    v = Viewer(0, transport, "a", None, keep=False)
    run_viewer = run_webrtc if transport == "webrtc" else run_websocket

    def run() -> None:
        fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
                raise OSError("setns failed")
        finally:
            os.close(fd)

        async def main() -> None:
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            threading.Thread(target=lambda: (stop.wait(), loop.call_soon_threadsafe(done.set)), daemon=True).start()
            try:
                await run_viewer(v, url, done)
            except Exception as exc:  # noqa: BLE001 - reported through the viewer
                v.closed = f"{type(exc).__name__}: {exc}"

        asyncio.run(main())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return v, t


def _lost_in(v: Viewer, streams: set) -> int:
    """Of the viewer's lost packets, those of ``streams``."""
    return sum(n for sid, n in dict(v.lost_in).items() if sid in streams)


def run_scenario(cut: str = "16kbit", hold_s: float = 16.0, after_s: float = 15.0, delay_ms: float = 0.0,
                 jitter_ms: float = 0.0, loss_pct: float = 0.0, before_s: float = 8.0,
                 transport: str = "websocket") -> dict[str, Any]:
    """Run it; the measurements (``skipped``: why it could not run here; with ``conditions_unsupported``
    it was the background delay/loss that could not be made: the rate cut alone can run).
    ``transport``: the viewers' (``webrtc``: a webrtc_sink, the frames on a DataChannel)."""
    made = [NetNS.make(f"avnet-{n}-{os.getpid()}") for n in ("s", "c1", "c2")]
    try:
        if any(ns is None for ns in made):
            return {"skipped": NetNS.reason()}
        server, near, far = made  # type: ignore[misc]
        server.join(near, "10.78.1.1", "10.78.1.2")
        s_cut, c_cut = server.join(far, "10.78.2.1", "10.78.2.2")
        if not _tc_works(server, s_cut):
            return {"skipped": "tc cannot shape here (no tbf qdisc)"}
        # the cut viewer's link, server -> viewer: the rate at the server's end (its egress); without
        # sch_netem the delay and loss act where the packets arrive, at the viewer's end (tools/netem.py)
        link = Link(server.prefix, s_cut, peer=(far.prefix, c_cut))
        steady = Conditions(delay_ms, jitter_ms, loss_pct)
        try:
            link.apply(steady)
        except Unsupported as exc:
            link.clear()
            return {"skipped": str(exc), "conditions_unsupported": True}
        with link, tempfile.TemporaryDirectory() as tmp:
            graph = Path(tmp) / "net.yaml"
            graph.write_text(GRAPH.replace("SINK", "webrtc_sink" if transport == "webrtc" else "websocket_sink"))
            proc = AvatarProcess("run", graph, prefix=server.prefix)
            stop = threading.Event()
            threads = []
            try:
                proc.wait_playing()
                cutv, t = _viewer(far, "http://10.78.2.1:18080/", stop, transport)  # viewer 1
                threads.append(t)
                wait_until(lambda: cutv.decoder.counts["decoded"] > 0, timeout=30)
                t_first = time.time()
                wait_until(lambda: cutv.decoder.counts["decoded"] > 120, timeout=30)
                lost_b, got_b = cutv.lost, cutv.decoder.counts["decoded"]  # from here to the cut: steady
                free, t = _viewer(near, "http://10.78.1.1:18080/", stop, transport)  # viewer 2
                threads.append(t)
                wait_until(lambda: free.decoder.counts["decoded"] > 300, timeout=30)
                free_before = (free.decoder.counts["decoded"], time.monotonic())
                wait_until(lambda: time.time() - t_first >= before_s, timeout=before_s + 10)

                t_cut = time.time()
                lost_c, got_c = cutv.lost, cutv.decoder.counts["decoded"]
                left = set(cutv._stream_seen)  # the streams of the layer it is on: the one it will leave
                link.apply(replace(steady, rate=cut))
                mechanism = link.mechanism
                down = proc.wait_for(lambda m: m["type"] == "AGENT" and m.get("key") == "1" and m["new"] > m["old"], 20)
                wait_until(lambda: time.time() - down["ts"] >= 1.0, timeout=10)
                lost0, got0, left0 = cutv.lost, cutv.decoder.counts["decoded"], _lost_in(cutv, left)
                wait_until(lambda: time.time() - t_cut >= hold_s, timeout=hold_s + 10)
                lost1, got1, left1 = cutv.lost, cutv.decoder.counts["decoded"], _lost_in(cutv, left)

                t_back = time.time()
                link.apply(steady)  # the rate off; the delay and loss stay
                up = proc.wait_for(lambda m: m["type"] == "AGENT" and m.get("key") == "1" and m["new"] == 0, 30)
                wait_until(lambda: time.time() - up["ts"] >= after_s, timeout=after_s + 10)
                free_fps = (free.decoder.counts["decoded"] - free_before[0]) / (time.monotonic() - free_before[1])
            finally:
                stop.set()
                for th in threads:
                    th.join(20)
                try:
                    subprocess.run([*server.prefix, sys.executable, "-m", "runtime.cli", "stop", "-g", "nettest",
                                    "--now"], capture_output=True, timeout=60)
                    proc.finish(30)
                except (subprocess.TimeoutExpired, OSError):
                    pass
                finally:
                    proc.kill()  # the whole process group: the runner and its nodes
        new_lost = lost1 - lost0 - (left1 - left0)  # after the move, on the layer it moved to
        actions = [m for m in proc.bus if m["type"] == "AGENT"]
        mine = [m for m in actions if m.get("key") == "1"]
        return {
            "cut": cut, "conditions": str(steady), "mechanism": mechanism,
            "before_s": round(t_cut - t_first, 1), "changes_before": len([m for m in mine if m["ts"] < t_cut]),
            "before_frames": got_c - got_b, "before_lost": lost_c - lost_b,
            "before_loss": round((lost_c - lost_b) / max(1, got_c - got_b + lost_c - lost_b), 4),
            "down_s": round(down["ts"] - t_cut, 2), "down_to": down["new"],
            # lost on the layer it moved to; apart, the layer it left: its packets the cut dropped in the
            # link's queue, found missing late (a data channel: the queue drains over seconds)
            "cut_frames": got1 - got0, "cut_lost": new_lost, "cut_lost_left": left1 - left0,
            "cut_loss": round(new_lost / max(1, got1 - got0 + new_lost), 4),
            "cut_fps": round((got1 - got0) / max(1e-3, t_back - down["ts"] - 1.0), 1),
            # what the layer it moved to carries: the source's rate (the other viewer's, on layer 0)
            # decimated as the layer's level is
            "cut_layer_fps": round(free_fps * layer_share(down["new"]), 1),
            "back_s": round(up["ts"] - t_back, 2),
            "changes_cut_steady": len([m for m in mine if down["ts"] < m["ts"] < t_back]),
            "changes_back_steady": len([m for m in mine if m["ts"] > up["ts"]]),
            "free_changes": len([m for m in actions if m.get("key") == "2"]),
            "free_lost": free.decoder.counts["lost"] + free.lost, "free_fps": round(free_fps, 1),
            "actions": [{k: m.get(k) for k in ("key", "old", "new", "reason", "inputs")} for m in actions],
            "errors": cutv.errors[:3] + free.errors[:3] + [x for x in (cutv.closed, free.closed) if x],
        }
    finally:
        for ns in made:
            if ns is not None:
                ns.kill_all()
                ns.remove()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cut", default="16kbit", help="the cut link's rate (tc units; default 16kbit)")
    ap.add_argument("--hold", type=float, default=16.0, metavar="S", help="seconds the link stays cut (default 16)")
    ap.add_argument("--after", type=float, default=15.0, metavar="S", help="seconds watched after it is back (default 15)")
    ap.add_argument("--before", type=float, default=8.0, metavar="S",
                    help="seconds from the cut viewer's first frame to the cut (default 8)")
    ap.add_argument("--delay", type=float, default=0.0, metavar="MS",
                    help="the cut viewer's link: added delay toward the viewer, the whole run (default 0)")
    ap.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="+- this around the delay (default 0)")
    ap.add_argument("--loss", type=float, default=0.0, metavar="PCT",
                    help="the cut viewer's link: random loss toward the viewer, %% (default 0)")
    ap.add_argument("--transport", choices=("websocket", "webrtc"), default="websocket",
                    help="the viewers' transport (default websocket; webrtc: a webrtc_sink, frames on a DataChannel)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = run_scenario(a.cut, a.hold, a.after, a.delay, a.jitter, a.loss, a.before, a.transport)
    if a.json or r.get("skipped"):
        print(json.dumps(r, indent=2))
        return 0 if not r.get("skipped") else 2
    print(f"the cut viewer's link: {r['conditions']} throughout ({r['mechanism']})")
    print(f"  before the cut ({r['before_s']} s): {r['before_frames']} frames, {r['before_lost']} lost "
          f"({100 * r['before_loss']:.2f} %), {r['changes_before']} changes")
    print(f"link cut to {r['cut']}: moved down to layer {r['down_to']} after {r['down_s']} s")
    print(f"  then, until the link came back: {r['cut_frames']} frames at {r['cut_fps']} fps "
          f"(the layer carries {r['cut_layer_fps']}), "
          f"{r['cut_lost']} lost ({100 * r['cut_loss']:.2f} %; of the layer left, {r['cut_lost_left']} found missing "
          f"late), {r['changes_cut_steady']} further changes")
    print(f"link back: layer 0 after {r['back_s']} s; {r['changes_back_steady']} changes in the next {a.after:g} s")
    print(f"the other viewer: {r['free_changes']} changes, {r['free_lost']} lost, {r['free_fps']} fps")
    for m in r["actions"]:
        print(f"  viewer {m['key']}: {m['old']} -> {m['new']}: {m['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
