"""What the API's handlers work with, opened by the app's lifespan and handed to them as typed
dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar.di import NamedDependency, Provide

from service.broker.management import Management
from service.broker.publisher import TaskPublisher
from service.deadletters.redrive import RedriveRunner
from service.intake import Intake
from service.settings import Settings
from service.store.database import AsyncStore


@dataclass
class Services:
    settings: Settings
    store: AsyncStore
    publisher: TaskPublisher
    management: Management
    redrives: RedriveRunner
    intake: Intake


class Providers:
    """The dependencies of one app: each of its `Services`, as the lifespan put them in the app's
    state. A provider takes no parameters — Litestar resolves such a dependency in ~5 µs of a
    request, one that takes the app's `State` to find them there in ~12 (a `State` made and a
    signature parsed each time; in process, 20,000 requests) — so it reaches the app through
    this object, which `create_app` gives the app as soon as it is made."""

    def __init__(self) -> None:
        self.app: Litestar | None = None

    def _services(self) -> Services:
        if self.app is None:
            raise RuntimeError("the providers were not given their app")
        services: Services = self.app.state.services
        return services

    def dependencies(self) -> dict[str, Provide]:
        """By the names handlers declare (below): the `Services` field each provides."""

        def provider(field: str) -> Callable[[], Awaitable[Any]]:
            async def provide() -> Any:
                return getattr(self._services(), field)

            return provide

        return {name: Provide(provider(field)) for name, field in _PROVIDED.items()}


_PROVIDED = {
    "settings": "settings",
    "store": "store",
    "publisher": "publisher",
    "management": "management",
    "redrives_runner": "redrives",
    "intake": "intake",
}

# What handlers declare, by the names above.
SettingsDep = NamedDependency[Settings]
StoreDep = NamedDependency[AsyncStore]
PublisherDep = NamedDependency[TaskPublisher]
ManagementDep = NamedDependency[Management]
RedrivesDep = NamedDependency[RedriveRunner]
IntakeDep = NamedDependency[Intake]
