"""What the API's handlers work with, opened by the app's lifespan and handed to them as typed
dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.datastructures import State
from litestar.di import NamedDependency

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


def _services(state: State) -> Services:
    services: Services = state.services
    return services


async def provide_settings(state: State) -> Settings:
    return _services(state).settings


async def provide_store(state: State) -> AsyncStore:
    return _services(state).store


async def provide_publisher(state: State) -> TaskPublisher:
    return _services(state).publisher


async def provide_management(state: State) -> Management:
    return _services(state).management


async def provide_redrives(state: State) -> RedriveRunner:
    return _services(state).redrives


async def provide_intake(state: State) -> Intake:
    return _services(state).intake


PROVIDERS: dict[str, Any] = {
    "settings": provide_settings,
    "store": provide_store,
    "publisher": provide_publisher,
    "management": provide_management,
    "redrives_runner": provide_redrives,
    "intake": provide_intake,
}

# What handlers declare, by the names above.
SettingsDep = NamedDependency[Settings]
StoreDep = NamedDependency[AsyncStore]
PublisherDep = NamedDependency[TaskPublisher]
ManagementDep = NamedDependency[Management]
RedrivesDep = NamedDependency[RedriveRunner]
IntakeDep = NamedDependency[Intake]
