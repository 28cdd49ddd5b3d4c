"""The private three-node RabbitMQ cluster of `infra/rabbitmq/cluster.sh`, driven by the suite:
start, stop a node, restart them all, reset — and what its management API says about who is
connected where, which node leads a queue, and which connection consumes what."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.support import ROOT

SCRIPT = ROOT / "infra" / "rabbitmq" / "cluster.sh"
LETTERS = ("a", "b", "c")
AMQP_PORTS = {letter: 5701 + i for i, letter in enumerate(LETTERS)}
MANAGEMENT_PORTS = {letter: 15701 + i for i, letter in enumerate(LETTERS)}
CLIENT = "docproc-faults"
"""The user that clients outside loopback connect as (guest may come from loopback only)."""


def letter_of(node: str) -> str:
    """`docproc-b@localhost` → `b`."""
    found = re.fullmatch(r"docproc-([a-i])@.*", node)
    if found is None:
        raise ValueError(f"{node} is not a node of the private cluster")
    return found.group(1)


@dataclass
class Consumer:
    queue: str
    peer_host: str
    peer_port: int
    node: str


class Cluster:
    """cluster.sh with its own base directory and the extra listen addresses the suite needs."""

    def __init__(self, directory: Path, listen: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.listen = listen
        self.password = secrets.token_hex(12)
        self._http = httpx.AsyncClient(timeout=5, auth=("guest", "guest"))

    def _env(self) -> dict[str, str]:
        return dict(os.environ) | {
            "DOCPROC_CLUSTER_DIR": str(self.directory),
            "DOCPROC_CLUSTER_LISTEN": " ".join(self.listen),
            "DOCPROC_CLUSTER_TIMEOUT": "90",
        }

    async def script(self, *args: str) -> str:
        """Run cluster.sh off the event loop (relays and probes keep running meanwhile)."""
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", str(SCRIPT), *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"cluster.sh {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    async def start(self) -> None:
        await self.script("start")

    async def whole(self) -> bool:
        """Whether every node runs (the management API's word: no rabbitmqctl to boot)."""
        try:
            nodes = await self.json("/api/nodes?columns=name,running")
        except httpx.HTTPError:
            return False
        return sum(bool(node.get("running")) for node in nodes) == len(LETTERS)

    async def stop(self) -> None:
        await self.script("stop")

    async def stop_node(self, letter: str) -> None:
        await self.script("stop-node", letter)

    async def start_node(self, letter: str) -> None:
        await self.script("start-node", letter)

    async def reset(self) -> None:
        await self.script("reset")
        await self._http.aclose()

    # -- where clients go ------------------------------------------------------------------

    def broker_url(self, vhost: str, host: str = "127.0.0.1", user: str = "guest") -> str:
        password = "guest" if user == "guest" else self.password
        return ";".join(
            f"amqp://{user}:{password}@{host}:{AMQP_PORTS[letter]}/{quote(vhost, safe='')}"
            for letter in LETTERS
        )

    @property
    def management_url(self) -> str:
        return ";".join(f"http://127.0.0.1:{MANAGEMENT_PORTS[letter]}" for letter in LETTERS)

    # -- the management API, on whichever node answers -------------------------------------

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        errors = []
        for letter in LETTERS:
            url = f"http://127.0.0.1:{MANAGEMENT_PORTS[letter]}{path}"
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                errors.append(f"{letter}: {exc!r}")
                continue
            if response.status_code < 500:
                return response
            errors.append(f"{letter}: {response.status_code}")
        raise httpx.ConnectError(f"no node's management API answered {path}: {errors}")

    async def json(self, path: str) -> Any:
        response = await self.request("GET", path)
        response.raise_for_status()
        return response.json()

    async def create_vhost(self, vhost: str) -> None:
        """A vhost that guest and the suite's client user may use."""
        v = quote(vhost, safe="")
        (await self.request("PUT", f"/api/vhosts/{v}")).raise_for_status()
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        for user in ("guest", CLIENT):
            response = await self.request("PUT", f"/api/permissions/{v}/{user}", json=everything)
            response.raise_for_status()

    async def delete_vhost(self, vhost: str) -> None:
        response = await self.request("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")
        if response.status_code != 404:
            response.raise_for_status()

    async def create_client_user(self) -> None:
        response = await self.request(
            "PUT", f"/api/users/{CLIENT}", json={"password": self.password, "tags": ""}
        )
        response.raise_for_status()

    async def leader_of(self, vhost: str, queue: str) -> str:
        """The letter of the node that leads a quorum queue."""
        info = await self.json(f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}")
        return letter_of(str(info.get("leader") or info["node"]))

    async def connections_per_node(self, vhost: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for connection in await self.json(f"/api/vhosts/{quote(vhost, safe='')}/connections"):
            letter = letter_of(connection["node"])
            found[letter] = found.get(letter, 0) + 1
        return found

    async def consumers(self, vhost: str) -> list[Consumer]:
        return [
            Consumer(
                queue=item["queue"]["name"],
                peer_host=channel["peer_host"],
                peer_port=int(channel["peer_port"]),
                node=channel.get("node", ""),
            )
            for item in await self.json(f"/api/consumers/{quote(vhost, safe='')}")
            # A channel the answering node knows nothing of yet comes as an empty list.
            if isinstance(channel := item.get("channel_details"), dict) and channel
        ]

    async def messages(self, vhost: str) -> dict[str, int]:
        """Every queue of the vhost (Celery's delay queues included) with its messages, ready
        and unacknowledged."""
        queues = await self.json(f"/api/queues/{quote(vhost, safe='')}?columns=name,messages")
        return {queue["name"]: int(queue.get("messages") or 0) for queue in queues}


def local_ports_by_pid(namespace: list[str] | None = None) -> Mapping[int, set[int]]:
    """Local port → pids of every established TCP connection to one of the cluster's AMQP ports
    (`ss`, in this network namespace or, with `namespace` — a command prefix such as
    `ip netns exec NAME` — in that one): which process a consumer's connection belongs to, and
    whether that process still holds it. Several pids: a pool process forked after the
    connection was made holds it too."""
    done = subprocess.run(
        [*(namespace or []), "ss", "-tnpH", "state", "established"],
        capture_output=True,
        text=True,
        check=False,
    )
    found: dict[int, set[int]] = {}
    amqp = {str(port) for port in AMQP_PORTS.values()}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[3].rsplit(":", 1)[-1] not in amqp:
            continue
        pids = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if pids:
            found[int(fields[2].rsplit(":", 1)[-1])] = pids
    return found
