"""Who may use the console, and proof that a change came from its own pages.

With DOCPROC_API_KEYS set, a person signs in once with one of the keys and gets a session cookie:
`issued.nonce.mac`, signed with a secret derived from every configured key — so it works across
the API's worker processes with no shared state, never carries a key, and dies when the keys
change. Without keys the console is open, as the API is (DOCPROC_PUBLIC_READS opens its reads).

Every change the console makes (a POST, PUT or DELETE under /ui) carries a CSRF token: the
value of the `docproc_csrf` cookie, which its pages hold in a meta tag and its script sends back
in `X-CSRF-Token` (forms in a field `csrf_token`). Another site can neither read that cookie nor
send it (both cookies are HttpOnly and SameSite=Strict), so it cannot forge the pair.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import quote

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from service.api.security import READS
from service.settings import Settings

SESSION_COOKIE = "docproc_session"
CSRF_COOKIE = "docproc_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 12 * 3600
"""A session ends with the browser, or after this long, whichever comes first."""
STALE_FORM = (
    "this page's form is stale or came from another site (no matching CSRF token): "
    "reload the page and try again"
)


def _secret(keys: tuple[str, ...]) -> bytes:
    return hashlib.sha256(("docproc-console\n" + "\n".join(sorted(keys))).encode()).digest()


def _mac(keys: tuple[str, ...], payload: str) -> str:
    return hmac.new(_secret(keys), payload.encode(), hashlib.sha256).hexdigest()


def new_session(keys: tuple[str, ...], now: float | None = None) -> str:
    payload = f"{int(now if now is not None else time.time())}.{secrets.token_urlsafe(16)}"
    return f"{payload}.{_mac(keys, payload)}"


def valid_session(keys: tuple[str, ...], value: str, now: float | None = None) -> bool:
    issued, _dot, rest = value.partition(".")
    nonce, _dot, mac = rest.partition(".")
    if not (issued.isascii() and issued.isdigit()) or not nonce or not mac:
        return False
    # As bytes: compare_digest refuses str holding anything but ASCII (a forged cookie's).
    if not hmac.compare_digest(_mac(keys, f"{issued}.{nonce}").encode(), mac.encode()):
        return False
    age = (now if now is not None else time.time()) - int(issued)
    return 0 <= age <= SESSION_SECONDS


def cookie(name: str, value: str, *, max_age: int | None = None) -> Cookie:
    return Cookie(
        key=name,
        value=value,
        path="/",
        httponly=True,
        samesite="strict",
        max_age=max_age,
    )


def csrf_of(connection: ASGIConnection[Any, Any, Any, Any]) -> tuple[str, Cookie | None]:
    """This browser's CSRF token, and the cookie to set when it has none yet."""
    token = connection.cookies.get(CSRF_COOKIE)
    if token and len(token) == 43:
        return token, None
    token = secrets.token_urlsafe(32)
    return token, cookie(CSRF_COOKIE, token)


def csrf_matches(connection: ASGIConnection[Any, Any, Any, Any], given: str | None) -> bool:
    expected = connection.cookies.get(CSRF_COOKIE)
    return bool(expected and given and hmac.compare_digest(expected.encode(), given.encode()))


def settings_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Settings:
    settings: Settings = connection.app.state.services.settings
    return settings


def needs_sign_in(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether this request needs a session it does not have."""
    settings = settings_of(connection)
    if not settings.api_keys:
        return False
    if settings.public_reads and connection.scope.get("method") in READS:
        return False
    value = connection.cookies.get(SESSION_COOKIE)
    return not (value and valid_session(settings.api_keys, value))


def sign_in_path(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The login page, coming back here afterwards."""
    here = connection.scope["path"]
    query = connection.scope.get("query_string", b"").decode("latin-1")
    return "/ui/login?next=" + quote(here + (f"?{query}" if query else ""), safe="")


async def require_console_session(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The console's API: a change needs its CSRF token; anything needs a session when keys are
    set (401, then the page sends the person to sign in). Async: it never waits."""
    if connection.scope.get("method") not in READS and not csrf_matches(
        connection, connection.headers.get(CSRF_HEADER)
    ):
        raise PermissionDeniedException(detail=STALE_FORM)
    if needs_sign_in(connection):
        raise NotAuthorizedException(
            detail="sign in to the console first (your session ended, or the keys changed)",
            extra={"sign_in": sign_in_path(connection)},
        )
