"""Limits of the avatar stream that the codec, the lod node and the viewers all enforce, written once.

``web/js`` keeps its own copy of each (JavaScript), with a comment naming this module.
"""
from __future__ import annotations

MAX_SESSION_ID = 1024  # characters of a session id, in a packet and in a viewer's request
N_LOD_LEVELS = 4  # levels of detail 0..3, from the lod node's table to a viewer's request
