"""What the client commands share: the API's address and key, and its errors as one clear line."""

from __future__ import annotations

import json as _json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import click
import urllib3
from click.core import ParameterSource

from service.cli.deadlines import Deadline, Deadlines
from service.errors import BrokerUnavailable, ConfigError, DocprocError, abort
from service.terminal import printable

API_KEY_VARIABLE = "DOCPROC_API_KEY"
CLIENT_KEEP_ALIVE = 2
"""Seconds this client keeps an idle connection: less than the API does
(`service.cli.serve.SERVER_KEEP_ALIVE`), or a request sent on a connection as the server closes
it fails ("Server disconnected without sending a response": with the client keeping them 5 s,
as long as the server, it happened in CI to a request after a 5 s wait)."""


RETRY_PAUSES = (0.1, 0.5)
"""Seconds before each new try of a request that may be sent twice (`Api.send`)."""

REQUEST_DEADLINE = 30.0
"""Seconds a request may take as a whole, its answer read, however slowly the API answers (the
timeout, 30 s too, bounds each connect and each read); an upload has one more a megabyte it
sends (UPLOAD_PACE)."""

UPLOAD_PACE = 1_000_000
"""Bytes a second the deadline allows a request's body: a 50 MB upload (the API's default limit)
may take 80 s."""

ANSWER_LIMIT = 256 * 1024 * 1024
"""Bytes of an answer's body the client reads at most: the largest the API gives is a
document's text, at most DOCPROC_MAX_CHARS characters (10 million by default), 40 MB of JSON at
4 bytes a character; this leaves room for a limit raised six-fold, while an endless answer
(another service at --api) ends in one line, not in a MemoryError."""

READ_SIZE = 1024 * 1024
"""Bytes an answer's body is read by."""

API_SETTINGS = ("DOCPROC_API_HOST", "DOCPROC_API_PORT")
"""Where --api is when it is not given."""


def default_api_url() -> str:
    host = os.environ.get("DOCPROC_API_HOST", "127.0.0.1")
    port = os.environ.get("DOCPROC_API_PORT", "8000")
    return f"http://{host}:{port}"


def address_problem(url: str) -> str | None:
    """What keeps `url` from being an address of the API; None when nothing does."""
    try:
        parts = urllib3.util.parse_url(url)
    except urllib3.exceptions.LocationParseError:
        return "not a valid address (its host or port)"
    if parts.scheme not in ("http", "https") or not parts.host:
        return "not an http:// or https:// address"
    return None


def _checked_address(context: click.Context, parameter: click.Parameter, url: str) -> str:
    """--api, or the address its settings make, as a one-line reason when it is not one: a
    usage error for the option, a setting's error (exit 78, as `docproc up` says it) for the
    variables, never urllib3's traceback."""
    problem = address_problem(url)
    if problem is None:
        return url
    if context.get_parameter_source(str(parameter.name)) is ParameterSource.DEFAULT:
        values = ", ".join(
            f"{name}={os.environ[name]!r}" for name in API_SETTINGS if name in os.environ
        )
        abort(
            ConfigError(
                printable(
                    f"{values} is not allowed: {url} is {problem}; set a host name or IP "
                    "address, and a port from 1 to 65535 (or pass --api)"
                )
            )
        )
    raise click.BadParameter(
        printable(f"{url} is {problem}; give one such as http://127.0.0.1:8000"),
        context,
        parameter,
    )


KEY_PROBLEM = (
    "an API key must be printable ASCII: it is sent in an HTTP header (Authorization), which "
    "carries no other text"
)


def key_problem(key: str | None) -> str | None:
    """What keeps `key` from going in a request's header; None when nothing does. http.client
    writes headers in Latin-1, and raised UnicodeEncodeError (or ValueError, for a newline)."""
    if key is None or (key.isascii() and key.isprintable()):
        return None
    return KEY_PROBLEM


def _checked_key(context: click.Context, parameter: click.Parameter, key: str | None) -> str | None:
    """--api-key, or DOCPROC_API_KEY, as a one-line reason when it cannot be sent: a usage error
    for the option, a setting's error (exit 78) for the variable; the key itself never shown."""
    problem = key_problem(key)
    if problem is None:
        return key
    if context.get_parameter_source(str(parameter.name)) is ParameterSource.ENVIRONMENT:
        abort(ConfigError(f"{API_KEY_VARIABLE} is not allowed: {problem}"))
    raise click.BadParameter(problem, context, parameter)


def api_option(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--api-key",
        envvar=API_KEY_VARIABLE,
        default=None,
        help=f"Bearer key for mutating endpoints (or {API_KEY_VARIABLE}).",
        callback=_checked_key,
    )(command)
    return click.option(
        "--api",
        "api_url",
        default=default_api_url,
        show_default="http://DOCPROC_API_HOST:DOCPROC_API_PORT",
        help="Where the docproc API answers.",
        callback=_checked_address,
    )(command)


class UnexpectedAnswer(DocprocError):
    """An answer the docproc API does not give: not JSON, JSON of another shape, larger than
    ANSWER_LIMIT, or in a Content-Encoding the client did not ask for."""


class AnswerCutShort(urllib3.exceptions.ProtocolError):
    """An answer whose head came and whose body did not, whole: the connection closed or broke
    before its end. A ProtocolError, so that a request that may be sent twice is."""

    def __init__(self, what: str, *, done: bool) -> None:
        super().__init__(what)
        self.done = done
        """The API answered a change it may have made (a POST's 202): sent again, it is made
        twice."""


def as_is(found: Any) -> Any:
    """An answer's JSON, taken whole."""
    return found


def problem_detail(problem: Any) -> str:
    """What an error's problem details say."""
    return str(problem.get("detail") or problem.get("title") or "")


class Answer:
    """The API's answer to one request: its status, headers and body, and what was asked (the
    API's address, and the path as the caller gave it, before it was encoded)."""

    def __init__(
        self, url: str, method: str, path: str, response: urllib3.BaseHTTPResponse
    ) -> None:
        self.url = url
        self.method = method
        self.path = path
        self.status_code = response.status
        self.headers = response.headers
        self.content = b""  # until `receive` reads it

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return _json.loads(self.content)

    def read(self, read: Callable[[Any], Any] = as_is) -> Any:
        """What `read` takes from the body as JSON — every command reads its answers so.
        UnexpectedAnswer, naming the request, when the body is not JSON or `read` does not find
        in it what it looks for: a proxy's error page, or another service at --api, is one
        line that says so, not a traceback."""
        try:
            found = self.json()
        except (ValueError, RecursionError):
            kind = self.headers.get("content-type") or "no content type"
            raise self._unexpected(f"with {kind}, not JSON") from None
        try:
            return read(found)
        # ArithmeticError: a number JSON holds and int() does not (1e400 is infinity).
        except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            shape = f"with JSON of another shape ({exc.__class__.__name__}: {exc})"
            raise self._unexpected(shape) from None

    def receive(self, response: urllib3.BaseHTTPResponse) -> None:
        """Reads the body, ANSWER_LIMIT bytes at most, as it came: the client asks for no
        Content-Encoding, and one it did not ask for (a gzip bomb unpacks to gigabytes) is not
        the API's. UnexpectedAnswer for either; AnswerCutShort when the body ends early."""
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        declared = response.headers.get("content-length", "")
        body = bytearray()
        try:
            if encoding not in ("", "identity"):
                raise self._unexpected(f"in Content-Encoding {encoding}, not asked for")
            if declared.isdigit() and int(declared) > ANSWER_LIMIT:
                raise self._unexpected(f"with a body of {declared} bytes, {self._limit()}")
            for chunk in response.stream(READ_SIZE, decode_content=False):
                body += chunk
                if len(body) > ANSWER_LIMIT:
                    raise self._unexpected(f"with a body of {self._limit()}")
        except urllib3.exceptions.ProtocolError as exc:
            cause = exc.args[1] if len(exc.args) > 1 else exc
            raise AnswerCutShort(
                f"its answer to {self.method} {self.path} ({self.status_code}) was cut short "
                f"after {len(body)} bytes of its body ({cause!r})",
                done=self.method not in ("GET", "HEAD") and self.status_code < 400,
            ) from exc
        except UnexpectedAnswer:
            response.close()  # what is left of the body is not read: not a connection to reuse
            raise
        finally:
            response.release_conn()
        self.content = bytes(body)

    @staticmethod
    def _limit() -> str:
        return f"more than the {ANSWER_LIMIT // (1024 * 1024)} MiB the API's answers take at most"

    def _unexpected(self, what: str) -> UnexpectedAnswer:
        said = (
            f"{self.method} {self.url}{self.path}: the API answered {self.status_code} {what}: "
            "is --api pointing at docproc?"
        )
        return UnexpectedAnswer(printable(said))


_sending = threading.local()
"""The deadline of the request this thread sends (`Api._once`), told of its socket as its
connection is taken (or connects) and of its end as the connection is put back."""


def _sent_on(sock: Any) -> None:
    deadline: Deadline | None = getattr(_sending, "deadline", None)
    if deadline is not None and sock is not None:
        deadline.hold(sock)


class _Connection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _sent_on(self.sock)


class _SecureConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _sent_on(self.sock)


class _Connections(urllib3.HTTPConnectionPool):
    """urllib3's pool of connections to one host, closing those idle longer than
    CLIENT_KEEP_ALIVE when they are taken: urllib3 keeps them however long they sat."""

    ConnectionCls: type[urllib3.connection.HTTPConnection] = _Connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadlines = Deadlines()

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            conn.docproc_idle_since = time.monotonic()
        deadline: Deadline | None = getattr(_sending, "deadline", None)
        if deadline is not None:
            deadline.end()
        super()._put_conn(conn)

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        idle_since = getattr(conn, "docproc_idle_since", None)
        if idle_since is not None and time.monotonic() - idle_since > CLIENT_KEEP_ALIVE:
            conn.close()  # urllib3 connects a closed connection again on its next request
        _sent_on(getattr(conn, "sock", None))  # None: it connects first
        return conn

    def close(self) -> None:
        self.deadlines.close()
        super().close()


class _SecureConnections(_Connections, urllib3.HTTPSConnectionPool):
    ConnectionCls = _SecureConnection


RETRIED: tuple[type[Exception], ...] = (
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.NewConnectionError,
)
"""A connection that failed before the answer came (reset, closed as the request went out, or
refused); a timeout is not among them."""

TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError,)
"""What a request raises when the API did not answer it."""


class DeadlineExceeded(urllib3.exceptions.TimeoutError):
    """No whole answer within the request's deadline (REQUEST_DEADLINE)."""


def _late(method: str, path: str, seconds: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"no whole answer to {method} {path} within {seconds:.3g} s")


def _quoted(path: str) -> str:
    """`path` with what a URL's path may not hold percent-encoded: an id typed with a space, a
    "?", a "%" or a control character is asked for — and not found — rather than cut short or
    refused by http.client before it is sent. Queries go as `params`."""
    return quote(path, safe="/:@!$&'()*+,;=~")


class Api:
    """A thin client of the HTTP API: JSON in and out, problems turned into a one-line exit.

    On urllib3 rather than httpx, which the rest of docproc uses (asynchronously): the CLI sends
    a request a file, from threads, and httpx took 1.9 ms of the command's CPU an upload against
    urllib3's 0.8 (8 threads, uploads of 2 kB)."""

    def __init__(self, url: str, key: str | None, timeout: float = 30.0, size: int = 8) -> None:
        self.url = url.rstrip("/")
        problem = address_problem(self.url)
        if problem is not None:
            abort(DocprocError(printable(f"--api {self.url}: {problem}")))
        if key_problem(key) is not None:
            abort(ConfigError(f"--api-key / {API_KEY_VARIABLE}: {KEY_PROBLEM}"))
        parts = urllib3.util.parse_url(self.url)
        self.base = (parts.path or "").rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.deadline = REQUEST_DEADLINE
        pool = _SecureConnections if parts.scheme == "https" else _Connections
        self.http = pool(
            parts.host,
            parts.port,
            maxsize=size,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=False,  # Api.send decides what is sent again
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def interrupt(self) -> None:
        """Ends every request under way now (Ctrl-C), as at its deadline: the threads waiting
        on them are free at once, not after the API's answer or 30 s."""
        self.http.deadlines.interrupt()

    def unreachable(self, exc: Exception) -> NoReturn:
        """The one-line exit for an API that does not answer, or whose answer broke off."""
        if isinstance(exc, AnswerCutShort):
            again = (
                "it was done, most likely: look (docproc status, dead-letters redrives) before "
                "you send it again"
                if exc.done
                else "try again"
            )
            abort(
                BrokerUnavailable(
                    f"the docproc API at {printable(self.url)} answered, but "
                    f"{printable(exc.args[0])}: {again}; if it recurs, look at what is between "
                    "here and the API"
                )
            )
        why = str(exc) if isinstance(exc, DeadlineExceeded) else exc.__class__.__name__
        abort(
            BrokerUnavailable(
                f"the docproc API at {printable(self.url)} does not answer ({printable(why)}); "
                "start it with `docproc up`, or pass --api"
            )
        )

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        json: Any = None,
        files: Mapping[str, tuple[str, bytes]] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """`method` on `path`; a request that may be sent twice — a read, or one with an
        Idempotency-Key — is sent again when its connection fails before the answer came
        (a reset, a close as the request went out): one such hiccup would otherwise end a
        `docproc submit --wait` of thousands of files that had all been accepted. Timeouts are
        not retried: a slow API is not helped by more requests."""
        # identity: urllib3 would unpack a gzip answer whatever its size.
        sent = {"Accept-Encoding": "identity", **self.headers, **(headers or {})}
        body = content
        if json is not None:
            body = _json.dumps(json).encode()
            sent["Content-Type"] = "application/json"
        elif files is not None:
            body, sent["Content-Type"] = urllib3.encode_multipart_formdata(files)
        target = self.base + _quoted(path)
        if params:
            target += "?" + urlencode(params, doseq=True)
        again = method == "GET" or any(name.lower() == "idempotency-key" for name in sent)
        for pause in RETRY_PAUSES if again else ():
            try:
                return self._once(method, path, target, body, sent)
            except RETRIED:
                time.sleep(pause)
        return self._once(method, path, target, body, sent)

    def _once(
        self, method: str, path: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> Answer:
        seconds = self.deadline + len(body or b"") / UPLOAD_PACE
        deadline = _sending.deadline = self.http.deadlines.begin(seconds)
        try:
            response = self.http.urlopen(
                method, target, body=body, headers=headers, redirect=False, preload_content=False
            )
            answer = Answer(self.url, method, path, response)
            answer.receive(response)
        except TRANSPORT_ERRORS as exc:
            if deadline.expired:  # its socket shut down: not a failure to send again
                raise _late(method, path, seconds) from exc
            raise
        finally:
            _sending.deadline = None
            deadline.end()
        if deadline.expired:  # what came before the socket was shut down is not the answer
            raise _late(method, path, seconds)
        return answer

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: Sequence[int] = (),
        read: Callable[[Any], Any] = as_is,
        **kwargs: Any,
    ) -> Any:
        """What `read` takes from the answer's JSON (`Answer.read`); None for a 204."""
        try:
            response = self.send(method, path, **kwargs)
        except TRANSPORT_ERRORS as exc:
            self.unreachable(exc)
        except UnexpectedAnswer as exc:
            abort(exc)
        if response.status_code >= 400 and response.status_code not in ok:
            self.fail(response)
        if response.status_code == 204:
            return None
        try:
            return response.read(read)
        except UnexpectedAnswer as exc:
            abort(exc)

    def fail(self, response: Answer) -> NoReturn:
        try:
            detail = response.read(problem_detail)
        except UnexpectedAnswer as exc:
            abort(exc)
        # The path as asked and the API's words, escaped: either may hold what the user typed.
        said = f"{response.method} {response.path}: {response.status_code} {detail}"
        abort(DocprocError(printable(said)))

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)


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
