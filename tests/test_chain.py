"""Real processes, real sockets: a chain moves every message, in order, and starts/ends cleanly."""
from __future__ import annotations

from runtime import Runner, parse_graph
from runtime.recording import read_records
from runtime.testing import run_to_eos
from tests.helpers import abstract_sockets, wait_gone

CHAIN = """
name: chain
args: {n: 10000, out: out.msgpack, rate: 0}
link_defaults: {policy: block, size: 64}
nodes:
  src: {type: testsrc, params: {rate: "${rate}", num_buffers: "${n}", pattern: counter, width: 52}}
  a: {type: identity}
  b: {type: identity}
  rec: {type: recorder, params: {path: "${out}"}}
links:
  - src -> a -> b -> rec
"""


def test_four_node_chain_moves_10000_messages_in_order(tmp_path):
    out = tmp_path / "out.msgpack"
    runner = run_to_eos(CHAIN, out=out)
    try:
        assert runner.exit_code == 0
        records = list(read_records(out))
        assert len(records) == 10000
        assert [r["data"]["n"] for r in records] == list(range(10000))
        assert [r["seq"] for r in records] == list(range(10000))  # link seq: no gap on the last link
        assert all(r["arrays"]["values"][1] == [52] for r in records)
        assert runner.bus.messages("EOS")
        assert not runner.bus.messages("ERROR")
    finally:
        runner.stop(drain=False)


def test_each_node_is_its_own_process_and_nothing_is_left_behind(tmp_path):
    runner = Runner(parse_graph(CHAIN, "<test>", {"rate": "200", "n": "-1", "out": str(tmp_path / "o.msgpack")}))
    runner.start()
    try:
        pids = runner.pids()
        assert len(set(pids.values())) == 4
        assert not set(pids.values()) & {__import__("os").getpid()}
        stats = runner.stats()
        assert stats["state"] == "PLAYING"
        assert {n: s["pid"] for n, s in stats["nodes"].items()} == pids
        assert abstract_sockets(runner.run_id)
    finally:
        assert runner.stop(drain=True) == 0
    assert wait_gone(pids.values()) == []
    assert abstract_sockets(runner.run_id) == []
    states = [m["new"] for m in runner.bus.messages("STATE_CHANGED", node=None)]
    assert states == ["READY", "PLAYING", "NULL"]
    # drained on stop: the source's EOS reached the sink behind its data
    records = list(read_records(tmp_path / "o.msgpack"))
    assert [r["data"]["n"] for r in records] == list(range(len(records)))
    assert runner.bus.messages("EOS")


def test_finite_source_loses_nothing_at_start_or_end(tmp_path):
    """Sources start only once everything downstream plays; EOS travels behind the data."""
    out = tmp_path / "few.msgpack"
    runner = run_to_eos(CHAIN.replace("policy: block", "policy: leaky"), out=out, n=5, rate=1000)
    runner.stop()
    assert [r["data"]["n"] for r in read_records(out)] == [0, 1, 2, 3, 4]


def test_fan_out_and_fan_in(tmp_path):
    text = """
    link_defaults: {policy: block, size: 32}
    nodes:
      src: {type: testsrc, params: {rate: 0, num_buffers: 500, pattern: counter}}
      left: {type: identity, params: {label: L}}
      right: {type: identity, params: {label: R}}
      rec: {type: recorder, params: {path: "${out}"}}
      count: {type: fakesink}
    args: {out: x}
    links:
      - src -> left -> rec
      - src -> right -> rec
      - src -> count
    """
    out = tmp_path / "fan.msgpack"
    runner = run_to_eos(text, out=out)
    runner.stop()
    records = list(read_records(out))
    assert sorted((r["data"]["n"], r["data"]["via"]) for r in records) == \
        sorted([(n, "L") for n in range(500)] + [(n, "R") for n in range(500)])
    for label in "LR":  # each branch arrives in order; branches interleave by pts as they arrive
        assert [r["data"]["n"] for r in records if r["data"]["via"] == label] == list(range(500))


def test_malformed_messages_on_a_link_are_counted_and_the_stream_goes_on(tmp_path):
    """Garbage pushed into a running chain: a frame too short for the prefix is refused by the link
    it arrives on; a good prefix with a broken body passes the passthrough identities unread and is
    refused by the first node that reads it (the recorder); a connection that breaks the link's
    own framing is closed and counted. Nothing crashes and the stream flows on."""
    import socket

    import msgpack

    from runtime.message import PREFIX
    from runtime.unixlink import address, records
    from tests.helpers import wait_until

    graph = parse_graph(CHAIN, "<test>", {"rate": "200", "n": "-1", "out": str(tmp_path / "o.msgpack")})
    runner = Runner(graph).start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    broken = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        link = next(l for l in runner.stats()["links"] if l.startswith("src.out"))
        sock.connect(address(runner.endpoints[link]))
        for frame in (b"\x00\x01",  # shorter than the prefix
                      PREFIX.pack(0, 0, 0, 0) + msgpack.packb(["x", None, None, [["a", "<f4", [4], b"ab"]], None]),
                      PREFIX.pack(0, 0, 0, 0) + b"\xc1\xc1"):  # not msgpack
            for rec in records([frame]):
                sock.sendmsg(rec)
        broken.connect(address(runner.endpoints[link]))
        broken.send(b"\xff\xff\xff\xff not a message")  # announces 4 GiB: the connection is closed
        last: dict = {}

        def counted() -> bool:
            last["stats"] = stats = runner.stats()
            a_in, rec_in = stats["nodes"]["a"]["inputs"], stats["nodes"]["rec"]["inputs"]
            return sum(l["malformed"] for l in a_in.values()) == 2 and sum(l["malformed"] for l in rec_in.values()) == 2

        wait_until(counted, 10, 0.05, lambda: "malformed counts a 2, rec 2: a {}, rec {}".format(
            last["stats"]["nodes"]["a"]["inputs"], last["stats"]["nodes"]["rec"]["inputs"]))
        assert broken.recv(16) == b""  # closed by the receiver
        stats = last["stats"]
        count = stats["nodes"]["rec"]["in"]
        wait_until(lambda: runner.stats()["nodes"]["rec"]["in"] > count + 20, 10, what="the stream to flow on")
        assert {n["pid"] for n in stats["nodes"].values()} == {n["pid"] for n in runner.stats()["nodes"].values()}
        assert not runner.bus.messages("ERROR")
    finally:
        sock.close()
        broken.close()
        runner.stop(drain=False)
