"""The API's own documentation: the OpenAPI document and Swagger UI, served with no internet.

Swagger UI's files come from an installed package (swagger-ui-py ships swagger-ui-dist 5, which
reads OpenAPI 3.1) and are served by the API under /schema/assets, never from a CDN. A page of
/schema that does not exist is a problem+json 404 like every other error.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from litestar import Response
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components
from litestar.static_files import create_static_files_router

from service.api.params import no_nul_in_path
from service.api.problems import problem
from service.api.security import SCHEME, SECURITY_SCHEME
from service.settings import Settings

PATH = "/schema"
ASSETS = f"{PATH}/assets"
_STATIC = Path(str(files("swagger_ui") / "static"))

assets = create_static_files_router(
    path=ASSETS,
    directories=[_STATIC],
    include_in_schema=False,
    name="docs-assets",
    guards=[no_nul_in_path],
)


def openapi_config(settings: Settings) -> OpenAPIConfig:
    swagger = SwaggerRenderPlugin(
        path="/swagger",
        js_url=f"{ASSETS}/swagger-ui-bundle.js",
        css_url=f"{ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f'<link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png">',
    )
    return OpenAPIConfig(
        title="docproc",
        version="0.1.0",
        description="Documents in, searchable text out; every failure dead-lettered by "
        "RabbitMQ, and an operator's tools to inspect and re-publish them. "
        + (
            "This server requires an API key (Authorization: Bearer) on the operations that "
            "list the bearer scheme."
            if settings.api_keys
            else "This server sets no API keys: no operation needs one here."
        ),
        path=PATH,
        render_plugins=[swagger],
        components=Components(security_schemes={SCHEME: SECURITY_SCHEME}),
    )


async def problem_for_missing_page(response: Response[Any]) -> Response[Any]:
    """Litestar answers a missing /schema page in HTML: make it problem+json. (Async so that
    Litestar calls it on the loop, not in a thread for every response.)"""
    if not isinstance(response, Response) or response.status_code != 404:
        return response  # files (Swagger UI's assets) and everything that is found
    media_type = getattr(response.media_type, "value", response.media_type)
    if str(media_type).startswith("text/html"):
        return problem(404, "Not found", "no such page of the API's documentation")
    return response


__all__ = ["assets", "openapi_config", "problem_for_missing_page"]
