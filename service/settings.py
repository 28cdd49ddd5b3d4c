"""The one typed settings object, built from the environment at an entry point and passed down."""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec

from service.errors import ConfigError, abort
from service.redaction import redact

QueueType = Literal["quorum", "classic"]
LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]

PLACEHOLDER_PASSWORD = "change-me"  # noqa: S105 -- the refused placeholder, not a password
"""How infra/.env.example's passwords begin: never accepted as a real one."""

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
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
    max_cpu_seconds: PositiveFloat = 600.0
    max_pixels: PositiveInt = 40_000_000
    ocr: Literal["auto", "off", "force"] = "auto"
    ocr_languages: OcrLanguages = "eng"
    tessdata: str = ""
    dead_letter_retention: PositiveFloat = 14 * 24 * 3600.0
    handled_dead_letter_retention: PositiveFloat = 3 * 24 * 3600.0
    dead_letter_batch_bytes: PositiveInt = 64 * 1024 * 1024  # the DLQ's batch, a redrive's group
    api_workers: PositiveInt = 1
    worker_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9808
    restart_delay: PositiveFloat = 1.0
    reconcile_after: PositiveFloat = 600.0
    chunk_size: Annotated[int, msgspec.Meta(ge=100)] = 1000
    chunk_overlap: NonNegativeInt = 150
    search_window: PositiveInt = 10_000  # service.store.search.WINDOW, which says why
    log_level: LogLevel = "INFO"
    log_format: Literal["auto", "json", "human"] = "auto"
    concurrency: PositiveInt = 2
    task_events: bool = True
    max_memory_per_child: NonNegativeInt = 512 * 1024  # KiB, as Celery counts it; 0: never
    max_retries: NonNegativeInt = 3
    retry_delay: PositiveFloat = 60.0
    retry_backoff_max: PositiveFloat = 3600.0
    soft_time_limit: PositiveFloat = 1800.0
    time_limit: PositiveFloat = 2400.0
    result_expires: PositiveFloat = 3600.0

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
        settings = msgspec.convert(values, cls)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Checks that involve more than one field or a URL's shape."""
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
            if (urlsplit(url).password or "").startswith(PLACEHOLDER_PASSWORD):
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
            f"{variable}={redact(raw)!r} is not allowed: {_allowed(target, exc)}"
        ) from None


def _duration(variable: str, text: str) -> float:
    try:
        return float(text[:-1]) * _DURATION_UNITS[text[-1].lower()]
    except ValueError:
        raise ConfigError(
            f"{variable}={text!r} is not allowed: expected a number of seconds or a duration "
            "such as 90s, 30m, 12h, 14d"
        ) from None


def _allowed(target: Any, exc: msgspec.ValidationError) -> str:
    if typing.get_origin(target) is Literal:
        return "expected one of " + ", ".join(str(a) for a in typing.get_args(target))
    # msgspec says e.g. "Expected `int` >= 1, got `-1`"; the path suffix means nothing here.
    text = str(exc).split(" - at ", 1)[0].replace("`", "").replace("Expected", "expected", 1)
    return text.replace("expected int", "expected an integer").replace(
        "expected float", "expected a number"
    )


def split_urls(value: str) -> tuple[str, ...]:
    """`a;b;c` → the URLs, in order (kombu's notation for a cluster's nodes)."""
    return tuple(part.strip() for part in value.split(";") if part.strip())


def _check_url(variable: str, url: str, schemes: tuple[str, ...], example: str) -> None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{variable}={redact(url)!r} is not allowed: {exc}") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(
            f"{variable}={redact(url)!r} is not allowed: expected an {' or '.join(schemes)} URL "
            f"with a host, such as {example}"
        )


def _check_database_url(url: str) -> None:
    scheme = urlsplit(url).scheme
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
        return
    raise ConfigError(
        f"DOCPROC_DATABASE_URL={redact(url)!r} is not allowed: expected sqlite:///path.db "
        "or postgresql://user@host/database"
    )
