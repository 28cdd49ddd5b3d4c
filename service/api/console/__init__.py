"""The console: web pages for documents, tasks and dead letters, served by the API itself.

Server-rendered Jinja2 templates, one hand-written script and one stylesheet, all package data
of this module: no build step, nothing from a CDN. Pages read through the store functions the
JSON API uses; the console's actions go to the JSON API's own handlers, mounted a second time
under /ui/api behind the console's session and CSRF check (service.api.console.session) instead
of a bearer key.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig

from service.api.console import pages, session
from service.api.console.filters import FILTERS
from service.api.params import no_nul_in_path

PREFIX = "/ui"
_HERE = Path(str(files("service.api.console")))


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    environment = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(FILTERS)
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def routers(api_handlers: list[Any]) -> list[Any]:
    """`GET /`, the pages under /ui, their assets, and the JSON API's handlers under /ui/api."""
    return [
        pages.root,
        Router(
            path=PREFIX,
            route_handlers=pages.PAGES,
            before_request=pages.sign_in_first,
            after_request=pages.keep_html,
            exception_handlers=pages.ERROR_PAGES,
            include_in_schema=False,
        ),
        Router(
            path=PREFIX,
            route_handlers=pages.SIGN_IN,
            after_request=pages.keep_html,
            exception_handlers=pages.ERROR_PAGES,
            include_in_schema=False,
        ),
        create_static_files_router(
            path=f"{PREFIX}/static",
            directories=[_HERE / "static"],
            include_in_schema=False,
            name="console-static",
            cache_control=CacheControlHeader(no_cache=True),
            guards=[no_nul_in_path],
        ),
        Router(
            path=f"{PREFIX}/api",
            route_handlers=api_handlers,
            guards=[session.require_console_session],
            include_in_schema=False,
        ),
    ]
