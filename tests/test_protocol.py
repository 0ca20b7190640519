"""The runner <-> node process protocol is written once: the spawn spec survives the trip, and
every request op has its handler in the worker."""
from __future__ import annotations

from runtime import protocol as op
from runtime.protocol import InputSpec, OutputSpec, SpawnSpec
from runtime.worker import Worker

REQUESTS = (op.STATS, op.PARAMS, op.STATE, op.HOLD, op.RELINK, op.DRAIN, op.BIND, op.EOS, op.STOP, op.LATENCY, op.CALL)


def test_spawn_spec_round_trip():
    spec = SpawnSpec(name="mid", type="identity", params={"label": "x"}, instance=3, run_id="ab12",
                     control="ipc://@avatar-ab12/runner", parent_pid=1, host="edge-1", hang_timeout=1.5,
                     inputs=[InputSpec("a.out-mid.in", "in", "tcp://*:5000", "block", 8, peer="edge-2", defer=True)],
                     outputs=[OutputSpec("mid.out-b.in", "out", "ipc://@x", "leaky", 4, seq=7)])
    back = SpawnSpec.from_wire(spec.to_wire())
    assert back == spec and back.identity == b"mid#3"
    assert op.beat_identity(back.identity) == b"mid#3/hb"


def test_worker_handles_every_request_op_and_no_other():
    spec = SpawnSpec(name="mid", type="identity", params={}, instance=0, run_id="ab12",
                     control="ipc://@avatar-test-protocol/runner", parent_pid=1)
    worker = Worker(spec)
    try:
        assert set(worker._ops) == set(REQUESTS)
    finally:
        worker.control.close(0)
        worker.zctx.term()


def test_beats_come_four_times_per_hang_timeout_at_least():
    assert op.beat_period(5.0) == 1.0 and op.beat_period(1.0) == 0.25
