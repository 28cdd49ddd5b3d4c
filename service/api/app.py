"""The Litestar application: `create_app(settings)`; its lifespan owns every connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.plugins.prometheus import PrometheusConfig
from loguru import logger

from service.api.correlation import correlation_middleware
from service.api.problems import EXCEPTION_HANDLERS
from service.api.routes import dead_letters, documents, operations, tasks
from service.api.services import PROVIDERS, Services
from service.broker.management import Management
from service.broker.publisher import Publisher
from service.deadletters.redrive import RedriveRunner
from service.intake import Intake
from service.logs import setup_logging
from service.settings import Settings
from service.store.database import AsyncStore


def create_app(settings: Settings) -> Litestar:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        store = AsyncStore(settings.resolved_database_url)
        publisher = Publisher(settings)
        management = Management.from_settings(settings)
        runner = RedriveRunner(store, publisher)
        intake = Intake(store, publisher)
        publisher.on_connect = intake.wake.set
        stop = asyncio.Event()
        await publisher.start()
        app.state.services = Services(
            settings=settings,
            store=store,
            publisher=publisher,
            management=management,
            redrives=runner,
            intake=intake,
        )
        background = [
            asyncio.create_task(runner.run(stop), name="redrive-runner"),
            asyncio.create_task(intake.run(stop), name="intake-relay"),
        ]
        logger.info("API ready at {}", settings.api_url)
        try:
            yield
        finally:
            stop.set()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await publisher.close()
            await management.aclose()
            await store.close()

    prometheus = PrometheusConfig(app_name="docproc", prefix="docproc", group_path=True)
    return Litestar(
        route_handlers=[
            documents.upload_handler(settings),
            documents.document,
            documents.document_text,
            documents.search_documents,
            tasks.task_status,
            tasks.retry_task,
            tasks.stats,
            *dead_letters.ROUTES,
            operations.health,
            operations.ready,
            operations.metrics,
        ],
        dependencies={name: Provide(provider) for name, provider in PROVIDERS.items()},
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[correlation_middleware, prometheus.middleware],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="docproc",
            version="0.1.0",
            description="Documents in, searchable text out; every failure dead-lettered by "
            "RabbitMQ, and an operator's tools to inspect and re-publish them.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        logging_config=None,  # logging is ours (service.logs), set up by the entry point
        debug=False,
    )


def create_app_from_environment() -> Litestar:
    """The factory `docproc serve api` hands to uvicorn (its worker processes call it)."""
    from service.cli.environment import load_settings

    settings = load_settings()
    setup_logging(settings.log_level, component="api")
    return create_app(settings)
