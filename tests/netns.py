"""A private network namespace for tests: only its own loopback, made and removed by the test.

Tests that open servers a browser talks to run them inside one, so every packet stays on a
loopback nobody else shares, and fixed ports never collide with anything on the machine.
Where namespaces cannot be made (not root, no ``ip``), ``NetNS.make`` returns None and the
caller runs on the host's loopback instead, saying so.

Two namespaces joined by a veth pair (``NetNS.join``) act as two machines on one network.
"""
from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

_CLONE_NEWNET = 0x40000000


class NetNS:
    def __init__(self, name: str):
        self.name = name

    @classmethod
    def make(cls, name: str | None = None) -> "NetNS | None":
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return None
        ns = cls(name or f"avatar-test-{os.getpid()}-{secrets.token_hex(2)}")
        if subprocess.run(["ip", "netns", "add", ns.name], capture_output=True).returncode != 0:
            return None
        subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
        return ns

    def join(self, other: "NetNS", address: str, other_address: str, prefix: int = 24) -> tuple[str, str]:
        """A veth pair between the two namespaces, one end in each with its address, both up.

        Returns the two interface names (this namespace's, the other's). Removing either namespace
        removes the pair. Raises CalledProcessError if it cannot be made.
        """
        tag = secrets.token_hex(3)
        mine, theirs = f"avm{tag}a", f"avm{tag}b"  # interface names: at most 15 characters
        subprocess.run(["ip", "link", "add", mine, "type", "veth", "peer", "name", theirs], check=True,
                       capture_output=True)
        try:
            for ns, dev, addr in ((self, mine, address), (other, theirs, other_address)):
                subprocess.run(["ip", "link", "set", dev, "netns", ns.name], check=True, capture_output=True)
                subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{addr}/{prefix}", "dev", dev], check=True,
                               capture_output=True)
                subprocess.run(["ip", "-n", ns.name, "link", "set", dev, "up"], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            for dev in (mine, theirs):  # still in our namespace if the move failed
                subprocess.run(["ip", "link", "del", dev], capture_output=True)
            raise
        return mine, theirs

    def set_link(self, dev: str, up: bool) -> None:
        """Take an interface of the namespace down (a pulled cable: no reset, no FIN) or up again."""
        subprocess.run(["ip", "-n", self.name, "link", "set", dev, "up" if up else "down"], check=True)

    def pids(self) -> list[int]:
        """Processes running inside the namespace (``ip netns pids``)."""
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill_all(self) -> list[int]:
        """SIGKILL every process inside the namespace (all of them started by the test); their pids."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

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
