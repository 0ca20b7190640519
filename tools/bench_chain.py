#!/usr/bin/env python3
"""Runtime chain vs bare pyzmq chain: latency at 60 Hz and max throughput, measured in one run.

    python tools/bench_chain.py [--sizes 1 4 8] [--seconds 5] [--rounds 3] [--messages 20000]

The runtime chain is ``testsrc ! identity x N ! fakesink`` (block links). The baseline is the
same number of plain processes: a source, N relays and a sink doing PUSH/PULL over ipc with a
msgpack header and a 52 float32 payload, and nothing else (frames copied, which for frames this
small is faster than pyzmq's zero-copy path). Latency is sink arrival time minus
the source's timestamp (CLOCK_MONOTONIC, shared by processes on one host). The 60 Hz latency
runs alternate bare and runtime ``--rounds`` times and each side reports the median of its
rounds' p50 (and p99), so a slow moment of the machine does not fall on one side only.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402


# --- bare pyzmq chain -------------------------------------------------------------------------
def bare_role(role: str, inp: str | None, out: str | None, rate: float, count: int) -> None:
    ctx = zmq.Context()
    pull = push = None
    if inp:
        pull = ctx.socket(zmq.PULL)
        pull.bind(inp)
    if out:
        push = ctx.socket(zmq.PUSH)
        push.connect(out)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    if role == "source":
        payload = np.zeros(52, dtype=np.float32)
        period = 1.0 / rate if rate > 0 else 0.0
        due = time.monotonic()
        for i in range(count):
            if period:
                due += period
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            head = msgpack.packb((0, "test/frame", i, time.monotonic_ns(), "test", {"n": i}, (("values", "<f4", (52,)),), None))
            push.send_multipart([head, payload])
    elif role == "relay":
        for _ in range(count):
            push.send_multipart(pull.recv_multipart())
    else:  # sink
        lat = np.zeros(count, dtype=np.int64)
        first = 0
        for i in range(count):
            frames = pull.recv_multipart()
            t = time.monotonic_ns()
            if i == 0:
                first = t
            lat[i] = t - msgpack.unpackb(frames[0])[3]
        print(json.dumps({"lat_us": (lat / 1000).tolist(), "first": first, "last": t}), flush=True)
    if push is not None:
        push.close(-1)
    if pull is not None:
        pull.close(0)
    ctx.term()


def run_bare(n: int, rate: float, count: int) -> dict:
    run = secrets.token_hex(3)
    eps = [f"ipc://@bench-{run}/{i}" for i in range(n + 1)]
    roles = [("source", None, eps[0])] + [("relay", eps[i], eps[i + 1]) for i in range(n)] + [("sink", eps[n], None)]
    procs = []
    for r, i, o in reversed(roles):  # downstream first: each binds before its upstream connects
        p = subprocess.Popen([sys.executable, __file__, "--bare-role", r, "--inp", i or "", "--out", o or "",
                              "--rate", str(rate), "--count", str(count)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        procs.insert(0, p)
    time.sleep(0.2)  # let the connects complete, as the runtime's READY -> PLAYING does
    for p in reversed(procs):
        p.stdin.write("go\n")
        p.stdin.flush()
    result = json.loads(procs[-1].stdout.readline())
    for p in procs:
        p.wait(30)
    lat = np.array(result["lat_us"])
    return {"p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99)),
            "msgs_per_s": count / max(1e-9, (result["last"] - result["first"]) / 1e9)}


# --- runtime chain ------------------------------------------------------------------------------
def run_runtime(n: int, rate: float, count: int) -> dict:
    from runtime import Runner, parse_launch

    line = "testsrc pattern=zeros width=52 rate={} num_buffers={} ! {} fakesink".format(
        rate, count, "identity ! " * n)
    runner = Runner(parse_launch(line, policy="block", size=64), stop_on_eos=False).start()
    try:
        runner.bus.wait_for("EOS", timeout=120)
        sink = runner.stats()["nodes"]["fakesink"]["node"]
    finally:
        runner.stop(drain=False)
    assert sink["count"] == count, f"runtime chain delivered {sink['count']} of {count}"
    return {"p50_us": sink["latency_us_p50"], "p99_us": sink["latency_us_p99"],
            "msgs_per_s": count / max(1e-9, (sink["last_ns"] - sink["first_ns"]) / 1e9)}


def _median_round(runs: list[dict]) -> dict:
    return {k: float(np.median([r[k] for r in runs])) for k in ("p50_us", "p99_us")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8], help="chain lengths N (default 1 4 8)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each 60 Hz latency run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="60 Hz latency runs per side, alternating (default 3)")
    ap.add_argument("--messages", type=int, default=20000, help="messages per throughput run (default 20000)")
    ap.add_argument("--bare-role", help=argparse.SUPPRESS)
    ap.add_argument("--inp", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=60.0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.bare_role:
        bare_role(a.bare_role, a.inp or None, a.out or None, a.rate, a.count)
        return
    n60 = int(60 * a.seconds)
    print(f"chain benchmark on {os.cpu_count()} cores: 60 Hz latency over {n60} messages x {a.rounds} rounds, "
          f"throughput over {a.messages} messages (block links, 52 float32 payload)\n")
    hdr = f"{'N':>2} | {'bare p50':>9} {'p99':>8} {'msg/s':>8} | {'runtime p50':>11} {'p99':>8} {'msg/s':>8} | {'lat ratio':>9} {'thr ratio':>9}"
    print(hdr)
    print("-" * len(hdr))
    rows = []
    for n in a.sizes:
        rounds = [(run_bare(n, 60.0, n60), run_runtime(n, 60.0, n60)) for _ in range(max(1, a.rounds))]
        bare_lat, rt_lat = (_median_round([r[i] for r in rounds]) for i in (0, 1))
        bare_thr, rt_thr = run_bare(n, 0.0, a.messages), run_runtime(n, 0.0, a.messages)
        lat_ratio = rt_lat["p50_us"] / bare_lat["p50_us"]
        thr_ratio = rt_thr["msgs_per_s"] / bare_thr["msgs_per_s"]
        rows.append((n, lat_ratio, thr_ratio))
        print(f"{n:>2} | {bare_lat['p50_us']:>7.0f}us {bare_lat['p99_us']:>6.0f}us {bare_thr['msgs_per_s']:>8.0f} | "
              f"{rt_lat['p50_us']:>9.0f}us {rt_lat['p99_us']:>6.0f}us {rt_thr['msgs_per_s']:>8.0f} | "
              f"{lat_ratio:>8.2f}x {thr_ratio:>8.2f}x", flush=True)
    print("\ntargets: runtime median latency <= 1.3x bare, throughput >= 0.7x bare")
    for n, lr, tr in rows:
        print(f"  N={n}: latency {'ok' if lr <= 1.3 else 'MISSED'} ({lr:.2f}x), "
              f"throughput {'ok' if tr >= 0.7 else 'MISSED'} ({tr:.2f}x)")


if __name__ == "__main__":
    main()
