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


# Regression tests for crashes and a hang the fuzz tests found (tests/test_fuzz.py, "Known bugs"):
# every malformed graph is a GraphError naming file and line, and `avatar validate` exits 2.
def check2(graph_file, text: str, expected: str, line: int) -> None:
    path = graph_file(text)
    r = avatar("validate", path, timeout=20)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert f"{path}:{line}: error: {expected}" in r.stderr, r.stderr


@pytest.mark.parametrize("text, line, expected", [
    ("args: [1, 2]\nnodes: {a: testsrc}\n", 1, "'args' must be a mapping of arg name -> value, got a list"),
    ("args: {1: 2}\nnodes: {a: {type: testsrc, params: {caps: '${x}'}}}\n", 1,
     "bad arg name 1: use letters, digits and '_', not starting with a digit"),
    ("link_defaults: [1]\nnodes: {a: testsrc}\n", 1,
     "'link_defaults' must be a mapping like {policy: leaky, size: 8}, got a list"),
    ("nodes: {a: testsrc}\nlink_defaults: {port: 5}\n", 2,
     "link_defaults: unknown key 'port' (allowed: policy, size, feedback)"),
    ("nodes:\n  a: {type: testsrc, max_restarts: abc}\n", 2, "node 'a': max_restarts must be a whole number >= 0, got 'abc'"),
    ("nodes: {a: testsrc}\nlinks: 5\n", 2,
     "'links' must be a list of links ('a.out -> b.in' or {from: a.out, to: b.in}), got int 5"),
    ("nodes:\n  a:\n    type: testsrc\n    params: {1: 2}\n", 4, "node 'a': a param name is a string, got int 1"),
    ("nodes: {a: testsrc}\n? [a]\n: 1\n", 2, "YAML syntax error: a key must be a name or other scalar, not a list"),
    ("nodes:\n  a: {type: ':'}\n", 2, "node 'a': bad node type ':': expected 'module:Class'"),
    ("nodes:\n  a: {type: ~}\n", 2, "node 'a': type must be a node type name or 'module:Class', got None"),
    ("nodes:\n  a: " + "[" * 2000 + "]" * 2000 + "\n", 2,
     "YAML nested too deeply (more than 100 levels of lists and mappings)"),
    ("nodes:\n  a: {type: testsrc, params: {rate: " + "9" * 5000 + "}}\n", 2, "YAML syntax error: integer too large"),
    ("nodes:\n  a: {type: testsrc, params: {num_buffers: " + "9" * 30 + "}}\n", 2,
     "node 'a' (testsrc): param 'num_buffers' must be int in -1 .. inf, got an int beyond 64 bits"),
    ("nodes:\n  a: te\x07st\n", 2, "YAML syntax error: unacceptable character #x0007"),
], ids=["args-list", "arg-name-int", "link_defaults-list", "link_defaults-port", "max_restarts-str", "links-int",
        "param-name-int", "complex-key", "type-empty-module", "type-null", "deep-nesting", "int-too-long",
        "int-beyond-64-bits", "control-character"])
def test_malformed_graphs_are_errors_with_lines(graph_file, text, line, expected):
    check2(graph_file, text, expected, line)


def test_a_graph_that_is_not_utf8(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_bytes(b"nodes:\n  a: testsrc\n  b: \xff\n")
    r = avatar("validate", path)
    assert r.returncode == 2, r.stderr
    assert f"{path}:3: error: not UTF-8 text: byte 0xff (invalid start byte)" in r.stderr, r.stderr


def test_lines_count_newlines_only(tmp_path):
    """PyYAML also breaks lines at \\x85, \\u2028, \\u2029 and a lone \\r, so its line numbers could run past
    a file's last line: errors and every line of a graph count '\\n' only, as editors and grep do."""
    path = tmp_path / "g.yaml"
    path.write_bytes('description: "one\x85two\u2028three"\nnodes:\n  a: testsrc\n  a: fakesink\n'.encode())
    r = avatar("validate", path)
    assert r.returncode == 2, r.stderr
    assert f"{path}:4: error: YAML syntax error: duplicate key 'a' (first at line 3)" in r.stderr, r.stderr
    path.write_bytes('description: "one\x85two"\nnodes:\n  a: {type: testsrc, params: {rat: 1}}\n'.encode())
    r = avatar("validate", path)
    assert f"{path}:3: error: node 'a' (testsrc): unknown param 'rat'" in r.stderr, r.stderr
    path.write_bytes(b"nodes:\r\n  a: testsrc\r\n  b: [\r\n")  # Windows line ends: one line each
    r = avatar("validate", path)
    assert f"{path}:4: error: YAML syntax error" in r.stderr, r.stderr


LAUGHS = "args:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 8)) + \
    "nodes: {n: {type: testsrc, params: {caps: *a7}}}\n"


def test_alias_expansion_is_refused_at_once(graph_file):
    """9 lines whose aliases expand to 10**8 strings (a 'billion laughs'): refused, not expanded."""
    import time

    from runtime import parse_graph
    from runtime.errors import GraphError

    t0 = time.monotonic()
    with pytest.raises(GraphError) as exc:
        parse_graph(LAUGHS, "laughs.yaml")
    assert time.monotonic() - t0 < 1
    assert str(exc.value) == ("laughs.yaml:6: error: YAML aliases expand this value to 111111 values, more than the "
                              "100000 a graph may have (each *alias repeats what its &anchor names)")
    check2(graph_file, LAUGHS, "YAML aliases expand this value to 111111 values", 6)


def test_aliases_nested_deeper_than_the_text_are_refused(graph_file):
    text = "args:\n  a0: &a0 [x]\n" + "".join(f"  a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 400)) + \
        "nodes: {n: testsrc}\n"
    err = check(graph_file, text, "nested too deeply (more than 100 levels of lists and mappings, counting what "
                                  "aliases refer to)")
    assert "Traceback" not in err


def test_small_aliases_still_work(graph_file):
    text = """
    args:
      common: &common {rate: 30, num_buffers: 5}
    nodes:
      a: {type: testsrc, params: *common}
      b: {type: testsrc, params: {<<: *common, caps: audio/pcm}}
    """
    from runtime import load_graph, validate_graph

    g = load_graph(graph_file(text))
    validate_graph(g)
    assert g.nodes["a"].params["rate"] == 30 and g.nodes["b"].params["num_buffers"] == 5
    assert g.nodes["b"].params["caps"] == "audio/pcm"


@pytest.mark.parametrize("value, message", [
    (".nan", "param 'rate' must be a number, got nan"),
    (".inf", "param 'rate' must be a finite number in 0.0 .. 1000000.0, got inf"),
    ("-.inf", "param 'rate' must be a finite number in 0.0 .. 1000000.0, got -inf"),
])
def test_nan_and_inf_params_are_refused(graph_file, value, message):
    check2(graph_file, f"nodes:\n  src:\n    type: testsrc\n    params: {{rate: {value}}}\n",
           f"node 'src' (testsrc): {message}", 4)


def test_param_coerce_refuses_nan_always_and_inf_given_bounds():
    import math

    from runtime.errors import ParamError
    from runtime.params import Param, check_params

    bounded, lower, free = Param(float, 1.0, min=0.0, max=10.0), Param(float, 1.0, min=0.0), Param(float, 1.0)
    for spec in (bounded, lower, free):
        with pytest.raises(ParamError, match="param 'x' must be a number, got nan"):
            spec.coerce("x", float("nan"))
    with pytest.raises(ParamError, match=r"param 'x' must be a finite number in 0\.0 \.\. inf, got inf"):
        lower.coerce("x", math.inf)
    with pytest.raises(ParamError, match=r"must be a finite number in 0\.0 \.\. 10\.0, got -inf"):
        bounded.coerce("x", -math.inf)
    assert free.coerce("x", math.inf) == math.inf  # no bounds: inf is a value like any other
    assert bounded.coerce("x", 3) == 3.0
    with pytest.raises(ParamError, match="a param name is a string, got int 1"):
        check_params({"x": free}, {1: 2.0})


def test_a_wrong_param_that_decides_caps_is_one_clear_problem(graph_file):
    text = """
    nodes: {a: {type: testsrc, params: {caps: false}}, b: fakesink}
    links: [a -> b]
    """
    err = check(graph_file, text, "node 'a' (testsrc): param 'caps' must be str, got bool False", line=1)
    assert "Traceback" not in err and "1 problem found" in err
