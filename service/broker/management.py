"""A small async client of RabbitMQ's management HTTP API: what the broker holds, in one vhost."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, unquote, urlsplit

import httpx
import msgspec

from service.errors import BrokerUnavailable
from service.settings import Settings, split_urls


class QueueInfo(msgspec.Struct, kw_only=True):
    name: str
    arguments: dict[str, Any] = {}
    type: str = "classic"
    durable: bool = True
    messages: int = 0
    messages_ready: int = 0
    messages_unacknowledged: int = 0
    messages_dlx: int = 0
    """A quorum queue's messages dead-lettered (at least once) but not yet confirmed by their
    dead-letter queue: still held here, out of `messages`."""
    consumers: int = 0


class ExchangeInfo(msgspec.Struct, kw_only=True):
    name: str
    type: str
    durable: bool = True
    arguments: dict[str, Any] = {}


class BindingInfo(msgspec.Struct, kw_only=True):
    source: str
    destination: str
    destination_type: str
    routing_key: str


class QueuePolicy(msgspec.Struct, kw_only=True):
    """A queue's own arguments and the policy definition in effect on it (RabbitMQ merges its
    policy and operator policy into `effective_policy_definition`)."""

    name: str
    arguments: dict[str, Any] = {}
    policy: str | None = None
    # An empty definition can come as [] (an empty Erlang property list), not {}.
    effective_policy_definition: dict[str, Any] | list[Any] = {}


def credentials_of(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return unquote(parts.username or "guest"), unquote(parts.password or "guest")


class Management:
    """The management API of one vhost, on one node or several (a cluster: `a;b;c`, each tried
    in turn when one does not answer); the broker URL's credentials unless a URL has its own."""

    def __init__(self, url: str, vhost: str, auth: tuple[str, str], timeout: float = 10.0) -> None:
        self._nodes: list[tuple[str, tuple[str, str]]] = []
        for node in split_urls(url):
            parts = urlsplit(node)
            port = f":{parts.port}" if parts.port else ""
            base = f"{parts.scheme}://{parts.hostname}{port}{parts.path}".rstrip("/")
            self._nodes.append((base, credentials_of(node) if parts.username else auth))
        self.url = self._nodes[0][0]
        self.vhost = vhost
        self._client = httpx.AsyncClient(timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> Management:
        return cls(
            settings.management_url,
            settings.vhost,
            credentials_of(settings.broker_urls[0]),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def _v(self) -> str:
        return quote(self.vhost, safe="")

    def _demote(self, base: str) -> None:
        """The next node first, from now on — unless another request moved on already."""
        if self._nodes[0][0] == base:
            self._nodes.append(self._nodes.pop(0))

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        failures = []
        for _ in range(len(self._nodes)):
            base, auth = self._nodes[0]
            try:
                response = await self._client.request(method, base + path, auth=auth, **kwargs)
                break
            except httpx.HTTPError as exc:
                failures.append(f"{base} ({exc!r})")
                self._demote(base)
            except asyncio.CancelledError:
                # Cut off by the caller's deadline (/metrics gives it seconds, not a node's
                # timeout): a node that hangs is not the first one asked next time either.
                self._demote(base)
                raise
        else:
            raise BrokerUnavailable(
                f"RabbitMQ's management API did not answer at {'; '.join(failures)}; is the "
                "rabbitmq_management plugin enabled (rabbitmq-plugins enable rabbitmq_management)?"
            )
        self.url = base
        if response.status_code in (401, 403):
            raise BrokerUnavailable(
                f"RabbitMQ's management API at {self.url} refused the credentials "
                f"({response.status_code}); set DOCPROC_MANAGEMENT_URL with a user that has the "
                "management tag"
            )
        return response

    async def _get(self, path: str, type_: type[Any]) -> Any:
        response = await self._request("GET", path)
        response.raise_for_status()
        return msgspec.json.decode(response.content, type=type_)

    async def queues(self) -> list[QueueInfo]:
        return list(await self._get(f"/api/queues/{self._v}", list[QueueInfo]))

    async def queue(self, name: str) -> QueueInfo | None:
        response = await self._request("GET", f"/api/queues/{self._v}/{quote(name, safe='')}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return msgspec.json.decode(response.content, type=QueueInfo)

    async def exchanges(self) -> list[ExchangeInfo]:
        return list(await self._get(f"/api/exchanges/{self._v}", list[ExchangeInfo]))

    async def bindings(self) -> list[BindingInfo]:
        return list(await self._get(f"/api/bindings/{self._v}", list[BindingInfo]))

    async def overview(self) -> dict[str, Any]:
        return dict(await self._get("/api/overview", dict[str, Any]))

    async def queue_policies(self) -> list[QueuePolicy]:
        """Each queue's arguments and effective policy: what can override a node-wide setting."""
        columns = "name,arguments,policy,effective_policy_definition"
        path = f"/api/queues/{self._v}?columns={columns}"
        return list(await self._get(path, list[QueuePolicy]))

    async def create_vhost(self) -> None:
        """Create this client's vhost and give the current user full permissions on it."""
        response = await self._request("PUT", f"/api/vhosts/{self._v}")
        response.raise_for_status()
        whoami = await self._get("/api/whoami", dict[str, Any])
        response = await self._request(
            "PUT",
            f"/api/permissions/{self._v}/{quote(whoami['name'], safe='')}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        )
        response.raise_for_status()

    async def delete_vhost(self) -> None:
        response = await self._request("DELETE", f"/api/vhosts/{self._v}")
        if response.status_code != 404:
            response.raise_for_status()
