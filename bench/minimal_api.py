"""The status-read baseline: the smallest Litestar app with docproc's status route, returning a
constant, served by uvicorn with the options `docproc serve api` uses.

`python -m bench.minimal_api PORT`
"""

from __future__ import annotations

import sys

import msgspec
import uvicorn
from litestar import Litestar, get


class Status(msgspec.Struct, kw_only=True):
    task_id: str
    state: str
    progress: float
    retries: int
    error: str | None


CONSTANT = Status(
    task_id="00000000-0000-0000-0000-000000000000",
    state="SUCCESS",
    progress=100.0,
    retries=0,
    error=None,
)


@get("/tasks/{task_id:str}/status")
async def task_status(task_id: str) -> Status:
    return CONSTANT


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def create_app() -> Litestar:
    return Litestar(route_handlers=[task_status, health], logging_config=None, debug=False)


def main(port: int) -> None:
    uvicorn.run(
        "bench.minimal_api:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=1,
        log_config=None,
        proxy_headers=False,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
