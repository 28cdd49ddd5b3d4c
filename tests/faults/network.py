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
from dataclasses import dataclass

from tests.support import CuttableLink

NAME = "docproc-faults"
HOST_LINK = "dpfaults0"
INSIDE_LINK = "dpfaults1"
HOST_ADDRESS = "10.213.77.1"
INSIDE_ADDRESS = "10.213.77.2"
PREFIX = 30


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class Namespace:
    """A namespace (the fault suite's unless named otherwise), with `inside_address` inside and
    `host_address` on this machine's end of its veth pair (`host_link` - `inside_link`)."""

    name: str = NAME
    host_link: str = HOST_LINK
    inside_link: str = INSIDE_LINK
    host_address: str = HOST_ADDRESS
    inside_address: str = INSIDE_ADDRESS

    @staticmethod
    def available() -> str | None:
        """Why a namespace cannot be made here, or None."""
        if shutil.which("ip") is None:
            return "`ip` is not installed (apt-get install iproute2)"
        probe = ip("netns", "list", check=False)
        if probe.returncode != 0:
            return f"`ip netns` does not work here: {probe.stderr.strip()}"
        return None

    def remove(self) -> None:
        """Remove the namespace and the veth pair, whatever is left of them."""
        ip("link", "del", self.host_link, check=False)  # takes its peer with it
        ip("netns", "del", self.name, check=False)

    def create(self) -> None:
        self.remove()
        ip("netns", "add", self.name)
        ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.inside_link)
        ip("link", "set", self.inside_link, "netns", self.name)
        ip("addr", "add", f"{self.host_address}/{PREFIX}", "dev", self.host_link)
        inside = self._inside
        inside("addr", "add", f"{self.inside_address}/{PREFIX}", "dev", self.inside_link)
        inside("link", "set", "lo", "up")
        inside("link", "set", self.inside_link, "up")
        self.heal()

    def _inside(self, *args: str) -> None:
        ip("netns", "exec", self.name, "ip", *args)

    def cut(self) -> None:
        """The partition: the host's end goes down, the inside sees no carrier; nothing is sent
        either way, and no connection is told."""
        ip("link", "set", self.host_link, "down")

    def heal(self) -> None:
        ip("link", "set", self.host_link, "up")

    def command(self, args: list[str]) -> list[str]:
        """`args` run inside the namespace (`ip netns exec` execs them: the pid is theirs)."""
        return ["ip", "netns", "exec", self.name, *args]


class Relay(CuttableLink):
    """A TCP relay on the host's end of the veth to a server that listens on loopback only
    (PostgreSQL, or this machine's RabbitMQ): what the namespace sends it crosses the veth, so a
    cut link stops it."""

    def __init__(
        self, host: str, port: int, listen_port: int, listen_address: str = HOST_ADDRESS
    ) -> None:
        super().__init__(host, port)
        self.port = listen_port
        self.address = listen_address

    async def heal(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.address, self.port)

    start = heal
    stop = CuttableLink.cut
