"""The Litestar application: `create_app(settings)`; its lifespan owns every connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Router
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from loguru import logger

from service import heap, telemetry
from service.api import console, docs
from service.api.correlation import correlation_middleware
from service.api.http_metrics import http_metrics_middleware
from service.api.problems import EXCEPTION_HANDLERS
from service.api.routes import dead_letters, documents, operations, tasks
from service.api.security import REQUIRED, api_key_middleware, cross_site_middleware
from service.api.server import slow_body_middleware
from service.api.services import Providers, Services
from service.broker import doubles
from service.broker.management import Management
from service.broker.publisher import Publisher, TaskPublisher
from service.deadletters.redrive import RedriveRunner
from service.intake import Intake
from service.logs import setup_logging
from service.settings import Settings
from service.store.database import AsyncStore


def create_app(settings: Settings, *, publisher: TaskPublisher | None = None) -> Litestar:
    """The API for `settings`; `publisher` replaces RabbitMQ's in tests that are about HTTP."""
    doubles.install()  # what the API publishes through aio-pika keeps its floats

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        store = AsyncStore(settings.resolved_database_url)
        publishing = publisher or Publisher(settings)
        management = Management.from_settings(settings)
        runner = RedriveRunner(store, publishing, group_bytes=settings.dead_letter_batch_bytes)
        intake = Intake(store, publishing)
        publishing.on_connect = intake.wake.set
        stop = asyncio.Event()
        await publishing.start()
        app.state.services = Services(
            settings=settings,
            store=store,
            publisher=publishing,
            management=management,
            redrives=runner,
            intake=intake,
        )
        background = [
            asyncio.create_task(runner.run(stop), name="redrive-runner"),
            asyncio.create_task(intake.run(stop), name="intake"),
        ]
        logger.info("API ready at {}", settings.api_url)
        try:
            yield
        finally:
            stop.set()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await publishing.close()
            await management.aclose()
            await store.close()

    # Everything but liveness, readiness, metrics and the OpenAPI document takes a key, when
    # keys are set (service.api.security).
    api = [
        documents.upload_handler(settings),
        documents.document,
        documents.document_text,
        documents.search_documents,
        tasks.task_status,
        tasks.task_statuses,
        tasks.task_detail,
        tasks.retry_task,
        tasks.stats,
        *dead_letters.ROUTES,
    ]
    keyed = Router(
        path="/",
        route_handlers=api,
        middleware=[
            cross_site_middleware,
            *(
                [api_key_middleware(settings.api_keys, public_reads=settings.public_reads)]
                if settings.api_keys
                else []
            ),
        ],
        security=REQUIRED,
    )
    if settings.api_keys and settings.public_reads:
        logger.warning("DOCPROC_PUBLIC_READS=true: reads need no API key, only writes do")
    providers = Providers()
    app = Litestar(
        # Traces (service.telemetry) only when exported: otherwise no middleware at all.
        plugins=_tracing_plugins() if telemetry.active() else [],
        route_handlers=[
            keyed,
            operations.health,
            operations.ready,
            operations.metrics,
            docs.assets,
            *console.routers(api),
        ],
        dependencies=providers.dependencies(),
        exception_handlers=EXCEPTION_HANDLERS,
        after_request=docs.problem_for_missing_page,
        middleware=[correlation_middleware, slow_body_middleware, http_metrics_middleware],
        lifespan=[lifespan],
        openapi_config=docs.openapi_config(settings),
        template_config=console.template_config(),
        logging_config=None,  # logging is ours (service.logs), set up by the entry point
        debug=False,
    )
    providers.app = app
    app.asgi_handler = _head_as_get(app.asgi_handler)
    return app


def _head_as_get(handler: ASGIApp) -> ASGIApp:
    """HEAD answered as GET is, without the body (RFC 9110 9.3.2): Litestar routes a HEAD only to
    handlers declared for it, and answered 405 to `HEAD /health` — a load balancer's or an uptime
    monitor's probe. The app sees a GET; uvicorn, whose scope still says HEAD, sends the head of
    the response (Content-Length included) and drops its body."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}  # a copy, for the app
        await handler(scope, receive, send)

    return answer


def _tracing_plugins() -> list[Any]:
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    return [OpenTelemetryPlugin(OpenTelemetryConfig())]


def create_app_from_environment() -> Litestar:
    """The factory `docproc serve api` hands to uvicorn (its worker processes call it)."""
    from service.settings import load_settings

    settings = load_settings()
    setup_logging(settings.log_level, component="api", log_format=settings.log_format)
    telemetry.setup("api")
    app = create_app(settings)
    heap.settle()  # the code and the app leave the sweeps, before the lifespan connects
    return app
