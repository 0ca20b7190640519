"""Plays recordings into a graph's ``arkit_source`` over UDP, each as its own phone, at real time.

Every stream is one device (its id is the session id the graph sees) sending Live Link Face v6
packets at the recording's 60 fps, looped; all streams keep one clock, so frame ``i`` of every
stream goes out together (one ``sendmmsg`` where ``nodes.livelink._udp`` is built).
"""
from __future__ import annotations

import socket
import threading
import time

import numpy as np

from nodes.compiled import load
from nodes.livelink import build_packets

from .recordings import FPS

_udp = load("nodes.livelink._udp")  # sendmmsg; None: sendto per packet


class Feed(threading.Thread):
    """Sends ``streams`` (device id -> (N, 61) values, looped) to 127.0.0.1:``port`` until stopped."""

    def __init__(self, port: int, streams: dict[str, np.ndarray], fps: float = FPS, host: str = "127.0.0.1"):
        super().__init__(daemon=True, name="orchestrator-feed")
        self.port, self.host, self.fps = port, host, fps
        self.ids = list(streams)
        self.values = [np.asarray(v, np.float32) for v in streams.values()]
        self.stop_event = threading.Event()
        self.frames = 0

    def run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((self.host, self.port))
        start = time.monotonic()
        try:
            while not self.stop_event.is_set():
                i = self.frames
                delay = start + i / self.fps - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    break
                rows = np.stack([v[i % len(v)] for v in self.values])
                packets = build_packets(self.ids, rows, subject="orchestrator", frame=i, fps=(int(round(self.fps)), 1))
                if _udp is not None:
                    _udp.send_batch(sock.fileno(), packets)
                else:
                    for p in packets:
                        try:
                            sock.send(p)
                        except ConnectionRefusedError:  # nobody listening yet: as a phone, send on
                            pass
                self.frames += 1
        finally:
            sock.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
