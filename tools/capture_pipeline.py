"""The full capture pipeline the scale tools drive, as graph YAML text.

arkit_source (UDP on 127.0.0.1, a free port) -> mapper (identity) -> blender -> lod -> compressor
-> websocket_sink (a free port), with the sink's keyframe and LOD requests on feedback links:
graphs/capture.yaml's chain, with loopback addresses and free ports for benchmarks. With
``bin="middle"`` the four nodes between source and sink run in one process (a ``bin`` node named
``encode``, its nodes named as the separate ones), as ``graphs/capture-bin.yaml``; with
``bin="all"`` all six do (a ``bin`` named ``all``).
"""
from __future__ import annotations

_SOURCE = """
name: {name}
link_defaults: {{policy: leaky, size: 4}}
nodes:
  capture:
    type: arkit_source
    params: {{host: 127.0.0.1, port: 0, rate: {gather_rate}, batch: {batch}, session_timeout: {session_timeout},
             max_sessions: {max_sessions}}}
"""

_GRAPH = _SOURCE + """  retarget: {{type: mapper, params: {{profile: identity}}}}
  face: {{type: blender, params: {{rate: {rate}, tick_on_capture: {sync}}}}}
  detail: {{type: lod}}
  encode: {{type: compressor, params: {{keyframe_interval: 120, ref_interval: 1}}}}
  web: {{type: websocket_sink, params: {{host: 127.0.0.1, port: 0, queue_size: 16}}}}
links:
  - {{chain: "capture -> retarget -> face.capture", size: 8}}
  - face -> detail -> encode.in
  - encode.out -> web.in
  - {{from: web.requests, to: encode.requests, feedback: true}}
  - {{from: web.requests, to: detail.requests, feedback: true}}
"""

_MIDDLE = _SOURCE + """  encode:
    type: bin
    params:
      nodes:
        - {{name: retarget, type: mapper, params: {{profile: identity}}}}
        - {{name: face, type: blender, input: capture, params: {{rate: {rate}, tick_on_capture: {sync}}}}}
        - {{name: detail, type: lod}}
        - {{name: encode, type: compressor, params: {{keyframe_interval: 120, ref_interval: 1}}}}
  web: {{type: websocket_sink, params: {{host: 127.0.0.1, port: 0, queue_size: 16}}}}
links:
  - {{from: capture, to: encode.in, size: 8}}
  - encode.out -> web.in
  - {{from: web.requests, to: encode.requests, feedback: true}}
"""

# the bins' steps: source to blender, then lod to sink
_FRONT = """        - {{name: capture, type: arkit_source, params: {{host: 127.0.0.1, port: 0, rate: {gather_rate}, batch: {batch},
                                                     session_timeout: {session_timeout}, max_sessions: {max_sessions}}}}}
        - {{name: retarget, type: mapper, params: {{profile: identity}}}}
        - {{name: face, type: blender, input: capture, params: {{rate: {rate}, tick_on_capture: {sync}}}}}
"""
_BACK = """        - {{name: detail, type: lod}}
        - {{name: encode, type: compressor, params: {{keyframe_interval: 120, ref_interval: 1}}}}
        - {{name: web, type: websocket_sink, params: {{host: 127.0.0.1, port: 0, queue_size: 16}}}}
"""
_ALL = """
name: {name}
nodes:
  all:
    type: bin
    params:
      nodes:
""" + _FRONT + _BACK
_SPLIT = """
name: {name}
nodes:
  front:
    type: bin
    params:
      nodes:
""" + _FRONT + """  back:
    type: bin
    params:
      nodes:
""" + _BACK + """links:
  - {{from: front, to: back.in, size: 8}}
"""
_TAIL = _SOURCE + """  rest:
    type: bin
    params:
      nodes:
        - {{name: retarget, type: mapper, params: {{profile: identity}}}}
        - {{name: face, type: blender, input: capture, params: {{rate: {rate}, tick_on_capture: {sync}}}}}
""" + _BACK + """links:
  - {{from: capture, to: rest.in, size: 8}}
"""
BINS = {"none": _GRAPH, "middle": _MIDDLE, "all": _ALL, "split": _SPLIT, "tail": _TAIL}


def capture_pipeline(name: str, *, rate: float = 60.0, gather_rate: float | None = 240.0, batch: str = "fresh",
                     max_sessions: int = 4096, session_timeout: float = 2.0, tick_on_capture: bool = True,
                     bin: str = "none") -> str:
    """Graph text. ``rate``: the blender's frame rate; ``gather_rate`` and ``batch``: arkit_source's
    tick rate (None: ``rate``) and what a tick's batch holds (``all`` or ``fresh``), by default as
    in graphs/capture.yaml;
    ``tick_on_capture``: frames follow each session's capture (else the blender's timer alone);
    ``bin``: every node its own process (``none``), mapper, blender, lod and compressor in one
    (``middle``), the whole pipeline in one (``all``), or in two, one a core (``split``: source to
    blender, lod to sink; ``tail``: the source, then mapper to sink)."""
    return BINS[bin].format(name=name, rate=rate, gather_rate=gather_rate or rate, batch=batch,
                                                max_sessions=max_sessions, session_timeout=session_timeout,
                                                sync=str(tick_on_capture).lower())
