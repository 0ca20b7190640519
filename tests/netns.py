"""A private network namespace for tests: only its own loopback, made and removed by the test.

Tests that open servers a browser talks to run them inside one, so every packet stays on a
loopback nobody else shares, and fixed ports never collide with anything on the machine.
Where namespaces cannot be made (not root, no ``ip``), ``NetNS.make`` returns None and the
caller runs on the host's loopback instead, saying so.
"""
from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import threading
from pathlib import Path

_CLONE_NEWNET = 0x40000000


class NetNS:
    def __init__(self, name: str):
        self.name = name

    @classmethod
    def make(cls) -> "NetNS | None":
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return None
        ns = cls(f"avatar-test-{os.getpid()}-{secrets.token_hex(2)}")
        if subprocess.run(["ip", "netns", "add", ns.name], capture_output=True).returncode != 0:
            return None
        subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
        return ns

    @staticmethod
    def reason() -> str:
        return "network namespaces need root and iproute2 ('ip'); running on the host's loopback"

    @property
    def prefix(self) -> list[str]:
        """Put before a command to run it inside the namespace (``ip netns exec`` execs, no fork)."""
        return ["ip", "netns", "exec", self.name]

    def wrapper(self, program: str, where: Path) -> str:
        """An executable script that runs ``program`` inside the namespace (for Playwright's launch)."""
        path = where / f"{Path(program).name}-in-{self.name}"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {program} "$@"\n')
        path.chmod(0o755)
        return str(path)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket that lives in the namespace (network namespaces are per thread: made in one that joined it)."""
        made: list[socket.socket | BaseException] = []

        def inside() -> None:
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                made.append(socket.socket(family, type))
            except BaseException as exc:  # handed to the caller's thread
                made.append(exc)

        t = threading.Thread(target=inside)
        t.start()
        t.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        return made[0]

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
