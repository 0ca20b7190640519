"""The one clock every process on a host shares for pts and latency (CLOCK_MONOTONIC)."""
from __future__ import annotations

import time

now_ns = time.monotonic_ns
