"""What the client commands share: the API's address and key, and its errors as one clear line."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click
import httpx

from service.errors import BrokerUnavailable, DocprocError, abort

API_KEY_VARIABLE = "DOCPROC_API_KEY"
CLIENT_KEEP_ALIVE = 2
"""Seconds this client keeps an idle connection: less than the API does
(`service.cli.serve.SERVER_KEEP_ALIVE`), or a request sent on a connection as the server closes
it fails with "Server disconnected without sending a response" (httpx's default, 5 s, is the
server's: it happened in CI to a request after a 5 s wait)."""


RETRY_PAUSES = (0.1, 0.5)
"""Seconds before each new try of a request that may be sent twice (`Api.send`)."""


def default_api_url() -> str:
    host = os.environ.get("DOCPROC_API_HOST", "127.0.0.1")
    port = os.environ.get("DOCPROC_API_PORT", "8000")
    return f"http://{host}:{port}"


def api_option(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--api-key",
        envvar=API_KEY_VARIABLE,
        default=None,
        help=f"Bearer key for mutating endpoints (or {API_KEY_VARIABLE}).",
    )(command)
    return click.option(
        "--api",
        "api_url",
        default=default_api_url,
        show_default="http://DOCPROC_API_HOST:DOCPROC_API_PORT",
        help="Where the docproc API answers.",
    )(command)


class Api:
    """A thin client of the HTTP API: JSON in and out, problems turned into a one-line exit."""

    def __init__(self, url: str, key: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE),
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def unreachable(self, exc: httpx.TransportError) -> NoReturn:
        """The one-line exit for an API that does not answer."""
        abort(
            BrokerUnavailable(
                f"the docproc API at {self.url} does not answer ({exc.__class__.__name__}); "
                "start it with `docproc up`, or pass --api"
            )
        )

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """`method` on `path`; a request that may be sent twice — a read, or one with an
        Idempotency-Key — is sent again when its connection fails before the answer came
        (a reset, a close as the request went out): one such hiccup would otherwise end a
        `docproc submit --wait` of thousands of files that had all been accepted. Timeouts are
        not retried: a slow API is not helped by more requests."""
        headers = kwargs.get("headers") or {}
        again = method == "GET" or any(name.lower() == "idempotency-key" for name in headers)
        for pause in RETRY_PAUSES if again else ():
            try:
                return self.http.request(method, path, **kwargs)
            except (httpx.NetworkError, httpx.RemoteProtocolError):
                time.sleep(pause)
        return self.http.request(method, path, **kwargs)

    def request(self, method: str, path: str, *, ok: Sequence[int] = (), **kwargs: Any) -> Any:
        try:
            response = self.send(method, path, **kwargs)
        except httpx.TransportError as exc:
            self.unreachable(exc)
        if response.status_code >= 400 and response.status_code not in ok:
            self.fail(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            abort(
                DocprocError(
                    f"{method} {self.url}{path}: {response.status_code}, but the answer is not "
                    f"JSON ({response.headers.get('content-type', 'no content type')}); is "
                    "--api the docproc API?"
                )
            )

    def fail(self, response: httpx.Response) -> NoReturn:
        try:
            problem = response.json()
            detail = problem.get("detail") or problem.get("title")
        except ValueError:
            detail = response.text[:200]
        abort(
            DocprocError(
                f"{response.request.method} {response.request.url.path}: "
                f"{response.status_code} {detail}"
            )
        )

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: object) -> str:
    """`value` as text a terminal shows as it is: control characters (escape sequences that
    could retitle the window or recolour the screen, newlines that break a table) escaped."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """Rows as a plain aligned table, every cell printable."""
    cells = [[printable(h) for h in headers]] + [[printable(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
