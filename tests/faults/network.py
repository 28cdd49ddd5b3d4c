"""A network namespace joined to this machine by a veth pair: a worker run inside it reaches
RabbitMQ and PostgreSQL only across the veth, so taking the link down partitions it from both —
packets are dropped silently, as between two hosts, and TCP carries on once the link is back.

Needs root and `ip` (iproute2). Everything is named so that a run cut short leaves nothing a later
run cannot remove: `Namespace.remove()` runs at the start and at the end of every session.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess

from tests.support import CuttableLink

NAME = "docproc-faults"
HOST_LINK = "dpfaults0"
INSIDE_LINK = "dpfaults1"
HOST_ADDRESS = "10.213.77.1"
INSIDE_ADDRESS = "10.213.77.2"
PREFIX = 30


def ip(*args: str, inside: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", "netns", "exec", NAME, "ip", *args] if inside else ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done


class Namespace:
    """`NAME`, with `INSIDE_ADDRESS` inside and `HOST_ADDRESS` on this machine's end."""

    @staticmethod
    def available() -> str | None:
        """Why a namespace cannot be made here, or None."""
        if shutil.which("ip") is None:
            return "`ip` is not installed (apt-get install iproute2)"
        probe = ip("netns", "list", check=False)
        if probe.returncode != 0:
            return f"`ip netns` does not work here: {probe.stderr.strip()}"
        return None

    @staticmethod
    def remove() -> None:
        """Remove the namespace and the veth pair, whatever is left of them."""
        ip("link", "del", HOST_LINK, check=False)  # takes its peer with it
        ip("netns", "del", NAME, check=False)

    def create(self) -> None:
        self.remove()
        ip("netns", "add", NAME)
        ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", INSIDE_LINK)
        ip("link", "set", INSIDE_LINK, "netns", NAME)
        ip("addr", "add", f"{HOST_ADDRESS}/{PREFIX}", "dev", HOST_LINK)
        ip("addr", "add", f"{INSIDE_ADDRESS}/{PREFIX}", "dev", INSIDE_LINK, inside=True)
        ip("link", "set", "lo", "up", inside=True)
        ip("link", "set", INSIDE_LINK, "up", inside=True)
        self.heal()

    def cut(self) -> None:
        """The partition: the host's end goes down, the inside sees no carrier; nothing is sent
        either way, and no connection is told."""
        ip("link", "set", HOST_LINK, "down")

    def heal(self) -> None:
        ip("link", "set", HOST_LINK, "up")

    @staticmethod
    def command(args: list[str]) -> list[str]:
        """`args` run inside the namespace (`ip netns exec` execs them: the pid is theirs)."""
        return ["ip", "netns", "exec", NAME, *args]


class Relay(CuttableLink):
    """A TCP relay on the host's end of the veth to a server that listens on loopback only
    (PostgreSQL here): what the namespace sends it crosses the veth, so a cut link stops it."""

    def __init__(self, host: str, port: int, listen_port: int) -> None:
        super().__init__(host, port)
        self.port = listen_port

    async def heal(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, HOST_ADDRESS, self.port)

    start = heal
    stop = CuttableLink.cut
