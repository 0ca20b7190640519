"""`avatar validate` reports every bad-graph case with file, line and a useful message."""
from __future__ import annotations

import pytest

from tests.helpers import avatar

GOOD = """
name: demo
args:
  rate: 60
  out: out.msgpack
nodes:
  src:
    type: testsrc
    params: {rate: "${rate}", num_buffers: 10}
  mid:
    type: identity
  rec:
    type: recorder
    params: {path: "${out}"}
links:
  - src.out -> mid.in
  - {from: mid.out, to: rec.in, policy: block, size: 16}
"""


def check(graph_file, text: str, *expected: str, line: int | None = None, args=()) -> str:
    path = graph_file(text)
    r = avatar("validate", path, *args)
    assert r.returncode != 0, r.stdout
    for e in expected:
        assert e in r.stderr, r.stderr
    if line is not None:
        assert f"{path}:{line}: error:" in r.stderr, r.stderr
    return r.stderr


def test_good_graph_validates(graph_file):
    r = avatar("validate", graph_file(GOOD))
    assert r.returncode == 0, r.stderr
    assert "ok (3 nodes, 2 links)" in r.stdout


def test_unknown_node_type(graph_file):
    check(graph_file, GOOD.replace("type: identity", "type: identiti"),
          "node 'mid': unknown node type 'identiti' (did you mean 'identity'?)", line=10)


def test_unknown_pad(graph_file):
    check(graph_file, GOOD.replace("src.out -> mid.in", "src.out -> mid.input"),
          "node 'mid' (identity) has no input pad 'input'; its input pads: in", line=15)


def test_unknown_param_names_allowed(graph_file):
    check(graph_file, GOOD.replace("num_buffers: 10", "num_bufers: 10"),
          "unknown param 'num_bufers' (did you mean 'num_buffers'?)", "allowed params: caps, num_buffers, pattern, rate, session, width",
          line=8)


def test_ill_typed_param(graph_file):
    check(graph_file, GOOD.replace("num_buffers: 10", "num_buffers: lots"),
          "node 'src' (testsrc): param 'num_buffers' must be int, got str 'lots'", line=8)


def test_param_out_of_range(graph_file):
    check(graph_file, GOOD.replace("num_buffers: 10", "num_buffers: -5"), "param 'num_buffers' must be in -1 .. inf")


def test_caps_mismatch_names_both_pads_and_caps(graph_file):
    text = """
    nodes:
      src: {type: testsrc, params: {caps: audio/pcm}}
      dec: {type: identity}
      sink: {type: fakesink}
    links:
      - src -> dec
      - dec -> sink
      - {from: src.out, to: strict.in}
    """
    # an ordinary type accepting only one caps: the player produces what its param says
    text = """
    nodes:
      src: {type: testsrc, params: {caps: audio/pcm}}
      strict: {type: "tests.strict_sink:StrictSink"}
    links:
      - src.out -> strict.in
    """
    check(graph_file, text, "caps mismatch on link src.out -> strict.in: src.out produces 'audio/pcm' but strict.in accepts 'arkit/blendshapes'", line=5)


def test_caps_follow_passthrough_nodes(graph_file):
    text = """
    nodes:
      src: {type: testsrc, params: {caps: audio/pcm}}
      mid: {type: identity}
      strict: {type: "tests.strict_sink:StrictSink"}
    links:
      - src -> mid -> strict
    """
    check(graph_file, text, "mid.out produces 'audio/pcm' but strict.in accepts 'arkit/blendshapes'")


def test_duplicate_node_name(graph_file):
    text = GOOD.replace("  rec:\n", "  mid:\n    type: fakesink\n  rec:\n")
    check(graph_file, text, "duplicate key 'mid' (first at line 9)", line=11)


def test_unconnected_required_input(graph_file):
    check(graph_file, GOOD.replace("  - src.out -> mid.in\n", ""),
          "node 'mid' (identity): required input 'in' is not connected", line=9)


def test_cycle(graph_file):
    text = """
    nodes:
      a: {type: identity}
      b: {type: identity}
    links:
      - a -> b
      - b -> a
    """
    check(graph_file, text, "cycle in graph: a -> b -> a", line=5)


def test_yaml_syntax_error(graph_file):
    check(graph_file, GOOD.replace("  mid:\n    type: identity", "  mid:\n    type: [identity"), "YAML syntax error", line=11)


def test_undefined_arg_and_unknown_override(graph_file):
    check(graph_file, GOOD.replace("${out}", "${output}"), "undefined arg '${output}'; the graph's args: out, rate", line=13)
    check(graph_file, GOOD, "unknown arg 'speed' given on the command line; the graph's args: out, rate", args=["speed=2"])


def test_every_problem_is_reported_at_once(graph_file):
    text = GOOD.replace("type: identity", "type: nosuch").replace("num_buffers: 10", "num_buffers: x")
    err = check(graph_file, text, "unknown node type 'nosuch'", "param 'num_buffers' must be int")
    assert "2 problems found" in err


def test_link_to_unknown_node_and_bad_policy(graph_file):
    text = GOOD.replace("mid.out, to: rec.in, policy: block", "mid.out, to: rex.in, policy: drop")
    check(graph_file, text, "unknown node 'rex' (did you mean 'rec'?)", "policy must be 'leaky' or 'block', got 'drop'")


def test_args_substitute_with_types_and_overrides(graph_file):
    from runtime import load_graph

    g = load_graph(graph_file(GOOD), {"rate": "30", "out": "x/y.msgpack"})
    assert g.nodes["src"].params["rate"] == 30
    assert g.nodes["rec"].params["path"] == "x/y.msgpack"
    assert (g.links[1].policy, g.links[1].size) == ("block", 16)
    assert (g.links[0].policy, g.links[0].size) == ("leaky", 8)


@pytest.mark.parametrize("line, problem", [
    ("testsrc ! ! fakesink", "two '!' in a row"),
    ("testsrc ! fakesink !", "ends with '!'"),
    ("testsrc ! nope.", "refers to no node named 'nope'"),
])
def test_launch_line_errors(line, problem):
    r = avatar("launch", line)
    assert r.returncode == 2
    assert problem in r.stderr


def test_launch_builds_branches_and_names():
    from runtime import parse_launch, validate_graph

    g = parse_launch("testsrc name=src rate=30 ! identity ! fakesink  src. ! recorder path=x.msgpack")
    validate_graph(g)
    assert set(g.nodes) == {"src", "identity", "fakesink", "recorder"}
    assert g.nodes["src"].params["rate"] == 30.0
    assert sorted(str(l) for l in g.links) == [
        "identity.out -> fakesink.in", "src.out -> identity.in", "src.out -> recorder.in"]


def test_inspect_and_dot(graph_file):
    r = avatar("inspect")
    assert r.returncode == 0 and "identity" in r.stdout and "testsrc" in r.stdout
    r = avatar("inspect", "testsrc")
    assert "Output pads:" in r.stdout and "caps: from param 'caps'" in r.stdout
    assert "rate: frames per second" in r.stdout and "type: float   default: 60.0   range: 0.0 .. 1000000.0" in r.stdout
    r = avatar("inspect", "nosuch")
    assert r.returncode == 1 and "unknown node type 'nosuch'" in r.stderr
    r = avatar("dot", graph_file(GOOD))
    assert r.returncode == 0
    assert r.stdout.startswith('digraph "demo"') and '"mid" -> "rec"' in r.stdout and "block 16" in r.stdout
    assert "num_buffers=10" in r.stdout and "width=" not in r.stdout  # what the user wrote, not defaults


def test_caps_decided_by_params_are_checked(graph_file):
    """mapper's profile decides its caps: CC4 morphs cannot feed the blender's ARKit input."""
    text = """
    nodes:
      src: {type: arkit_source, params: {port: 0}}
      map: {type: mapper, params: {profile: standard}}
      blend: {type: blender}
      sink: {type: fakesink}
    links:
      - src -> map
      - map.out -> blend.capture
      - blend -> sink
    """
    check(graph_file, text, "caps mismatch on link map.out -> blend.capture: map.out produces 'morphs/cc4' "
                            "but blend.capture accepts 'arkit/blendshapes'", line=8)
    r = avatar("validate", graph_file(text.replace("profile: standard", "profile: identity")))
    assert r.returncode == 0, r.stderr


def test_node_config_problems_are_found_at_load(graph_file):
    text = """
    nodes:
      src: {type: arkit_source, params: {port: 0}}
      map: {type: mapper, params: {profile: no/such/table.yaml}}
      sink: {type: fakesink}
    links:
      - src -> map -> sink
    """
    check(graph_file, text, "node 'map' (mapper): mapper profile 'no/such/table.yaml': table 'no/such/table.yaml' not found", line=3)


def test_an_unnamed_input_pad_is_the_only_required_one(graph_file):
    """lod and compressor take optional `requests` beside `in`: a link naming no pad means `in`."""
    text = """
    nodes:
      src: {type: testsrc, params: {caps: arkit/blendshapes}}
      detail: {type: lod}
      encode: {type: compressor}
      rec: {type: recorder, params: {path: x.msgpack}}
    links:
      - src -> detail -> encode -> rec
    """
    r = avatar("validate", graph_file(text))
    assert r.returncode == 0, r.stderr
