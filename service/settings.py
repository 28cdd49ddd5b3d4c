"""The one typed settings object, built from the environment at an entry point and passed down."""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit

import msgspec

from service.errors import ConfigError, abort
from service.redaction import redact

QueueType = Literal["quorum", "classic"]
LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]

PLACEHOLDER_PASSWORD = "change-me"  # noqa: S105 -- the refused placeholder, not a password
"""How infra/.env.example's passwords begin: never accepted as a real one."""

INT64_MAX = 2**63 - 1
"""The largest integer an AMQP table (x-delivery-limit) or SQL's bigint holds: no count or size
docproc hands on may be larger."""
MAX_PROCESSES = 1024
"""Processes one setting may start on one machine (CELERY_CONCURRENCY, DOCPROC_API_WORKERS): past
it, a typo forks until the machine stops."""
CENTURY = 100 * 365.25 * 86400
"""The longest duration (seconds): maintenance subtracts durations from today's date, and an
infinite or millennial one is an OverflowError at every run."""
LONGEST_DELAY = 2**28 - 1
"""The longest retry delay (seconds, about 8.5 years): Celery's native delayed delivery writes a
delay as 28 bits of its routing key (kombu.transport.native_delayed_delivery)."""
SEARCH_WINDOW_MAX = 2**31 - 1
"""PostgreSQL's search adds one to the window in SQL (service.store.search): kept well within its
bigint; a window of billions of matches could never be ranked within a request anyway."""

PositiveInt = Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Processes = Annotated[int, msgspec.Meta(ge=1, le=MAX_PROCESSES)]
Duration = Annotated[float, msgspec.Meta(gt=0, le=CENTURY, description="seconds: 100 years")]
RetryDelay = Annotated[
    float,
    msgspec.Meta(
        gt=0,
        le=LONGEST_DELAY,
        description="seconds: about 8.5 years, the longest Celery's delayed delivery holds",
    ),
]
SearchWindow = Annotated[int, msgspec.Meta(ge=1, le=SEARCH_WINDOW_MAX)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
OcrLanguages = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*$")]
"""Tesseract's language codes joined by `+`: eng, eng+deu."""


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Everything docproc can be configured with; see ENVIRONMENT for the variable names."""

    broker_url: str = "amqp://guest:guest@localhost:5672//"
    management_url: str = "http://localhost:15672"
    data_dir: str = "./var"
    database_url: str = ""
    api_host: str = "127.0.0.1"
    api_port: Port = 8000
    queue_type: QueueType = "quorum"
    delivery_limit: PositiveInt = 5
    api_keys: tuple[str, ...] = ()
    public_reads: bool = False
    max_upload_bytes: PositiveInt = 50 * 1024 * 1024
    max_inflated_bytes: PositiveInt = 128 * 1024 * 1024
    max_chars: PositiveInt = 10_000_000
    max_pages: PositiveInt = 5_000
    max_chunks: PositiveInt = 25_000
    max_cpu_seconds: Duration = 600.0
    max_pixels: PositiveInt = 40_000_000
    ocr: Literal["auto", "off", "force"] = "auto"
    ocr_languages: OcrLanguages = "eng"
    tessdata: str = ""
    dead_letter_retention: Duration = 14 * 24 * 3600.0
    handled_dead_letter_retention: Duration = 3 * 24 * 3600.0
    dead_letter_batch_bytes: PositiveInt = 64 * 1024 * 1024  # the DLQ's batch, a redrive's group
    api_workers: Processes = 1
    worker_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9808
    restart_delay: Duration = 1.0
    reconcile_after: Duration = 600.0
    chunk_size: Annotated[int, msgspec.Meta(ge=100, le=INT64_MAX)] = 1000
    chunk_overlap: NonNegativeInt = 150
    search_window: SearchWindow = 10_000  # service.store.search.WINDOW, which says why
    log_level: LogLevel = "INFO"
    log_format: Literal["auto", "json", "human"] = "auto"
    concurrency: Processes = 2
    task_events: bool = True
    max_memory_per_child: NonNegativeInt = 512 * 1024  # KiB, as Celery counts it; 0: never
    max_retries: NonNegativeInt = 3
    retry_delay: RetryDelay = 60.0
    retry_backoff_max: RetryDelay = 3600.0
    soft_time_limit: Duration = 1800.0
    time_limit: Duration = 2400.0
    result_expires: Duration = 3600.0

    @property
    def resolved_database_url(self) -> str:
        """`database_url`, or the SQLite file under `data_dir` when it is not set."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir).resolve() / 'docproc.db'}"

    @property
    def broker_urls(self) -> tuple[str, ...]:
        """The nodes of DOCPROC_BROKER_URL: one URL, or several separated by `;` (a cluster)."""
        return split_urls(self.broker_url)

    @property
    def management_urls(self) -> tuple[str, ...]:
        return split_urls(self.management_url)

    @property
    def vhost(self) -> str:
        """The vhost the broker URL names (every node of a cluster serves the same ones)."""
        path = urlsplit(self.broker_urls[0]).path
        return "/" if path in ("", "/") else unquote(path[1:])

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the environment; raise ConfigError naming the first bad variable."""
        env = os.environ if environ is None else environ
        types = typing.get_type_hints(cls, include_extras=True)
        values: dict[str, Any] = {}
        for field, variable in ENVIRONMENT.items():
            raw = env.get(variable)
            if raw is None or raw == "":
                continue
            values[field] = _convert(variable, raw, types[field])
        if "api_keys" in values and not values["api_keys"]:
            # Set, and naming no key ("," or " , "): the API would run open, as if unset.
            raise ConfigError(
                f"DOCPROC_API_KEYS={env['DOCPROC_API_KEYS']!r} is not allowed: it holds no key, "
                "and with none every endpoint is open; set the keys separated by commas, or "
                "unset the variable to run without keys"
            )
        settings = msgspec.convert(values, cls)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Checks that involve more than one field or a URL's shape."""
        for number, key in enumerate(self.api_keys, start=1):
            if not (key.isascii() and key.isprintable()):
                # The key itself is never said: it is a secret, and may be the others' neighbour.
                raise ConfigError(
                    f"DOCPROC_API_KEYS is not allowed: key {number} of {len(self.api_keys)} is "
                    "not printable ASCII, and an HTTP header (Authorization) carries no other "
                    "text: no client could send it; use letters, digits and punctuation"
                )
        for url in self.broker_urls or ("",):
            _check_url(
                "DOCPROC_BROKER_URL",
                url,
                ("amqp", "amqps"),
                "amqp://user:password@localhost:5672/vhost (several: separated by ;)",
            )
        for variable, url in (
            *(("DOCPROC_BROKER_URL", u) for u in self.broker_urls),
            *(("DOCPROC_MANAGEMENT_URL", u) for u in self.management_urls),
            ("DOCPROC_DATABASE_URL", self.database_url),
        ):
            if (_split(variable, url).password or "").startswith(PLACEHOLDER_PASSWORD):
                raise ConfigError(
                    f"{variable} uses a {PLACEHOLDER_PASSWORD}… password, the placeholder of "
                    "infra/.env.example: set a real one (in infra/.env for Docker Compose)"
                )
        vhosts = {urlsplit(url).path.rstrip("/") or "/" for url in self.broker_urls}
        if len(vhosts) > 1:
            raise ConfigError(
                f"DOCPROC_BROKER_URL={redact(self.broker_url)!r} is not allowed: the nodes of "
                f"a cluster serve the same vhost, these name {len(vhosts)} different ones"
            )
        for url in self.management_urls or ("",):
            _check_url(
                "DOCPROC_MANAGEMENT_URL",
                url,
                ("http", "https"),
                "http://localhost:15672 (several: separated by ;)",
            )
        if self.database_url:
            _check_database_url(self.database_url)
        if self.chunk_overlap >= self.chunk_size:
            raise ConfigError(
                f"DOCPROC_CHUNK_OVERLAP={self.chunk_overlap} is not allowed: it must be smaller "
                f"than DOCPROC_CHUNK_SIZE={self.chunk_size}"
            )
        if self.soft_time_limit >= self.time_limit:
            raise ConfigError(
                f"CELERY_SOFT_TIME_LIMIT={self.soft_time_limit:g} is not allowed: it must be "
                f"shorter than CELERY_TIME_LIMIT={self.time_limit:g}, or the task never gets "
                "the chance to record its failure"
            )


def load_settings() -> Settings:
    """Settings for an entry point: read once, or end the process with the one-line reason."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        abort(exc)


ENVIRONMENT: dict[str, str] = {
    "broker_url": "DOCPROC_BROKER_URL",
    "management_url": "DOCPROC_MANAGEMENT_URL",
    "data_dir": "DOCPROC_DATA_DIR",
    "database_url": "DOCPROC_DATABASE_URL",
    "api_host": "DOCPROC_API_HOST",
    "api_port": "DOCPROC_API_PORT",
    "queue_type": "DOCPROC_QUEUE_TYPE",
    "delivery_limit": "DOCPROC_DELIVERY_LIMIT",
    "api_keys": "DOCPROC_API_KEYS",
    "public_reads": "DOCPROC_PUBLIC_READS",
    "max_upload_bytes": "DOCPROC_MAX_UPLOAD_BYTES",
    "max_inflated_bytes": "DOCPROC_MAX_INFLATED_BYTES",
    "max_chars": "DOCPROC_MAX_CHARS",
    "max_pages": "DOCPROC_MAX_PAGES",
    "max_chunks": "DOCPROC_MAX_CHUNKS",
    "max_cpu_seconds": "DOCPROC_MAX_CPU_SECONDS",
    "max_pixels": "DOCPROC_MAX_PIXELS",
    "ocr": "DOCPROC_OCR",
    "ocr_languages": "DOCPROC_OCR_LANGUAGES",
    "tessdata": "TESSDATA_PREFIX",  # Tesseract's own variable
    "dead_letter_retention": "DOCPROC_DEAD_LETTER_RETENTION",
    "handled_dead_letter_retention": "DOCPROC_HANDLED_DEAD_LETTER_RETENTION",
    "dead_letter_batch_bytes": "DOCPROC_DEAD_LETTER_BATCH_BYTES",
    "api_workers": "DOCPROC_API_WORKERS",
    "worker_metrics_port": "DOCPROC_WORKER_METRICS_PORT",
    "restart_delay": "DOCPROC_RESTART_DELAY",
    "reconcile_after": "DOCPROC_RECONCILE_AFTER",
    "chunk_size": "DOCPROC_CHUNK_SIZE",
    "chunk_overlap": "DOCPROC_CHUNK_OVERLAP",
    "search_window": "DOCPROC_SEARCH_WINDOW",
    "log_level": "CELERY_LOG_LEVEL",
    "log_format": "DOCPROC_LOG_FORMAT",
    "concurrency": "CELERY_CONCURRENCY",
    "task_events": "CELERY_TASK_EVENTS",
    "max_memory_per_child": "CELERY_MAX_MEMORY_PER_CHILD",
    "max_retries": "CELERY_MAX_RETRIES",
    "retry_delay": "CELERY_RETRY_DELAY",
    "retry_backoff_max": "CELERY_RETRY_BACKOFF_MAX",
    "soft_time_limit": "CELERY_SOFT_TIME_LIMIT",
    "time_limit": "CELERY_TIME_LIMIT",
    "result_expires": "CELERY_RESULT_EXPIRES",
}
"""Which environment variable sets which field (README.md, "Configuration")."""

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _convert(variable: str, raw: str, annotation: Any) -> Any:
    """Turn one variable's text into its field's type, or raise a one-line ConfigError."""
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else None
    target = base if base is not None else annotation
    value: Any = raw.strip()
    if target == tuple[str, ...]:
        value = [part.strip() for part in raw.split(",") if part.strip()]
    elif target is float and value[-1:].lower() in _DURATION_UNITS:
        value = _duration(variable, value)
    elif typing.get_origin(target) is Literal:
        choices = typing.get_args(target)
        value = next((c for c in choices if str(c).lower() == value.lower()), value)
    try:
        return msgspec.convert(value, annotation, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(
            f"{variable}={redact(raw)!r} is not allowed: {_allowed(annotation, exc)}"
        ) from None


def _duration(variable: str, text: str) -> float:
    try:
        return float(text[:-1]) * _DURATION_UNITS[text[-1].lower()]
    except ValueError:
        raise ConfigError(
            f"{variable}={text!r} is not allowed: expected a number of seconds or a duration "
            "such as 90s, 30m, 12h, 14d"
        ) from None


_OUT_OF_BOUNDS = re.compile(r"Expected `(int|float)` [<>]|Number out of range")
"""How msgspec says a number is past a field's bounds (or past a float's, as 1e400 is)."""


def _allowed(annotation: Any, exc: msgspec.ValidationError) -> str:
    args = typing.get_args(annotation) if typing.get_origin(annotation) is Annotated else ()
    target = args[0] if args else annotation
    if typing.get_origin(target) is Literal:
        return "expected one of " + ", ".join(str(a) for a in typing.get_args(target))
    # msgspec says e.g. "Expected `int` >= 1, got `-1`"; the path suffix means nothing here.
    text = str(exc).split(" - at ", 1)[0]
    meta = next((a for a in args[1:] if isinstance(a, msgspec.Meta)), None)
    if meta is not None and _OUT_OF_BOUNDS.match(text):
        return "expected " + _bounds(target, meta)
    text = text.replace("`", "").replace("Expected", "expected", 1)
    return text.replace("expected int", "expected an integer").replace(
        "expected float", "expected a number"
    )


def _bounds(target: Any, meta: msgspec.Meta) -> str:
    """The range a field's Meta allows, as "an integer >= 1 and <= 1024 (why)"."""
    limits = [
        f"{sign} {_number(bound)}"
        for sign, bound in ((">=", meta.ge), (">", meta.gt), ("<=", meta.le), ("<", meta.lt))
        if bound is not None
    ]
    said = f"{'an integer' if target is int else 'a number'} {' and '.join(limits)}"
    return f"{said} ({meta.description})" if meta.description else said


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def split_urls(value: str) -> tuple[str, ...]:
    """`a;b;c` → the URLs, in order (kombu's notation for a cluster's nodes)."""
    return tuple(part.strip() for part in value.split(";") if part.strip())


def _split(variable: str, url: str) -> SplitResult:
    """`url`'s parts, its port checked; a one-line ConfigError (its password hidden) where
    urlsplit raises: a port that is not a number, a "[" with no "]" (Invalid IPv6 URL)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number
    except ValueError as exc:
        hint = (
            " (an IPv6 address is written whole in brackets: [::1])" if "IPv6" in str(exc) else ""
        )
        raise ConfigError(f"{variable}={redact(url)!r} is not allowed: {exc}{hint}") from None
    return parts


def _check_url(variable: str, url: str, schemes: tuple[str, ...], example: str) -> None:
    parts = _split(variable, url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(
            f"{variable}={redact(url)!r} is not allowed: expected an {' or '.join(schemes)} URL "
            f"with a host, such as {example}"
        )


def _check_database_url(url: str) -> None:
    scheme = _split("DOCPROC_DATABASE_URL", url).scheme
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise ConfigError(
                f"DOCPROC_DATABASE_URL={redact(url)!r} is not allowed: a SQLite URL is "
                "sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        return
    if scheme in ("postgresql", "postgres"):
        _check_url(
            "DOCPROC_DATABASE_URL",
            url,
            ("postgresql", "postgres"),
            "postgresql://user@localhost:5432/docproc",
        )
        _check_read_alike(url)
        return
    raise ConfigError(
        f"DOCPROC_DATABASE_URL={redact(url)!r} is not allowed: expected sqlite:///path.db "
        "or postgresql://user@host/database"
    )


def _check_read_alike(url: str) -> None:
    """The store connects where SQLAlchemy reads the URL, and SQLAlchemy ends the password at
    its first "@" (sqlalchemy.engine.url's pattern) where urlsplit, these checks and redaction
    end it at the last: `postgres:Sec@ret@db` is host `ret@db` to SQLAlchemy."""
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    if "@" in userinfo.partition(":")[2]:
        raise ConfigError(
            f"DOCPROC_DATABASE_URL={redact(url)!r} is not allowed: its password holds a raw "
            '"@", where SQLAlchemy ends it, taking the rest for the host: percent-encode it as '
            '%40 (":" as %3A, "/" as %2F)'
        )
