"""Settings that docproc accepted, and that broke later: a URL urlsplit cannot read, a password
SQLAlchemy reads otherwise, numbers past what their consumers take, API keys no client can send.
Each is refused at start, in one line naming the variable and what is allowed (exit 78)."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import unquote, urlsplit

import amqp.serialization
import msgspec
import pamqp.encode
import pytest
import yarl
from kombu.transport.native_delayed_delivery import MAX_NUMBER_OF_BITS_TO_USE, calculate_routing_key
from kombu.utils.url import parse_url
from sqlalchemy.engine import make_url

from service.errors import ConfigError
from service.settings import ENVIRONMENT, Settings


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DOCPROC_DATABASE_URL", "postgresql://[::1/db"),
        ("DOCPROC_DATABASE_URL", "postgresql://docproc:s3cret@[::1/db"),
        ("DOCPROC_MANAGEMENT_URL", "http://[::1:15672"),
        ("DOCPROC_MANAGEMENT_URL", "http://admin:s3cret@[::1:15672"),
        ("DOCPROC_BROKER_URL", "amqp://guest:s3cret@[::1:5672/"),
    ],
)
def test_a_malformed_ipv6_host_is_a_setting_error_naming_the_variable(
    variable: str, value: str
) -> None:
    message = refusal({variable: value})

    assert message.startswith(f"{variable}=")
    assert "Invalid IPv6 URL" in message
    assert "[::1]" in message  # how it is written
    assert "s3cret" not in message


def test_a_raw_at_sign_in_a_postgresql_password_is_refused_and_its_encoding_accepted() -> None:
    raw = "postgresql://postgres:Sec@ret99@127.0.0.1:5432/x"
    assert make_url(raw).host != "127.0.0.1"  # what the store would have connected to

    message = refusal({"DOCPROC_DATABASE_URL": raw})

    assert message.startswith("DOCPROC_DATABASE_URL=")
    assert "%40" in message
    assert "Sec" not in message
    assert "ret99" not in message  # neither half of the password, nor SQLAlchemy's host
    encoded = "postgresql://postgres:Sec%40ret99@127.0.0.1:5432/x"
    settings = Settings.from_env({"DOCPROC_DATABASE_URL": encoded})
    read = make_url(settings.resolved_database_url)
    assert (read.host, read.password) == ("127.0.0.1", "Sec@ret99")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://post@gres:secret@db.example:5432/docproc",
        "postgresql://u:p%3Aq@[::1]:5432/docproc",
        "postgresql://u:a:b@db/docproc",
        "postgres://docproc@DB/docproc",
        "postgresql://docproc@db/docproc?host=/run/postgresql",
        "postgresql://a@b@db/docproc",
        "postgresql://u:p@q@db:5432/docproc",
        "postgresql://u@x:p@db/docproc",
        "postgresql://u:@@db/docproc",
    ],
)
def test_a_postgresql_url_is_accepted_exactly_when_sqlalchemy_reads_it_as_written(
    url: str,
) -> None:
    parts, read = urlsplit(url), make_url(url)
    alike = (read.host or "").lower() == parts.hostname and (read.password or "") == unquote(
        parts.password or ""
    )

    if alike:
        Settings.from_env({"DOCPROC_DATABASE_URL": url})
    else:  # SQLAlchemy would connect to another host, or with another password
        assert "%40" in refusal({"DOCPROC_DATABASE_URL": url})


def test_a_raw_at_sign_in_a_broker_password_reaches_the_same_host_through_every_client() -> None:
    # kombu (Celery) and yarl (aio-pika) split at the last "@", as urlsplit does: nothing to
    # refuse today; this says so if an upgrade of either changes its mind.
    url = "amqp://guest:Sec@ret@127.0.0.1:5672/v"
    settings = Settings.from_env({"DOCPROC_BROKER_URL": url})

    parts, kombu, aio = urlsplit(url), parse_url(url), yarl.URL(url)
    assert settings.vhost == "v"
    assert (parts.hostname, parts.password) == ("127.0.0.1", "Sec@ret")
    assert (kombu["hostname"], kombu["password"]) == ("127.0.0.1", "Sec@ret")
    assert (aio.host, aio.password) == ("127.0.0.1", "Sec@ret")


HINTS = typing.get_type_hints(Settings, include_extras=True)
NUMBERS = [
    field
    for field, hint in HINTS.items()
    if typing.get_origin(hint) is Annotated and typing.get_args(hint)[0] in (int, float)
]


@pytest.mark.parametrize("field", NUMBERS)
def test_every_number_has_a_finite_upper_bound_that_its_default_is_within(field: str) -> None:
    [meta] = [a for a in typing.get_args(HINTS[field])[1:] if isinstance(a, msgspec.Meta)]

    assert meta.le is not None, f"{ENVIRONMENT[field]} takes any number, infinity included"
    assert meta.le < 2**63
    assert getattr(Settings(), field) <= meta.le


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("DOCPROC_DELIVERY_LIMIT", "9223372036854775808", "<= 9223372036854775807"),
        ("DOCPROC_SEARCH_WINDOW", "9223372036854775808", "<= 2147483647"),
        ("DOCPROC_SEARCH_WINDOW", "2147483648", "<= 2147483647"),
        ("CELERY_CONCURRENCY", "100000", "an integer >= 1 and <= 1024"),
        ("DOCPROC_API_WORKERS", "1025", "an integer >= 1 and <= 1024"),
        ("DOCPROC_MAX_UPLOAD_BYTES", "9223372036854775808", "<= 9223372036854775807"),
        ("CELERY_MAX_RETRIES", "9223372036854775808", "<= 9223372036854775807"),
        ("DOCPROC_DEAD_LETTER_RETENTION", "inf", "a number > 0 and <= 3155760000"),
        ("DOCPROC_HANDLED_DEAD_LETTER_RETENTION", "infd", "<= 3155760000 (seconds: 100 years)"),
        ("DOCPROC_RECONCILE_AFTER", "1e400", "<= 3155760000"),
        ("CELERY_RESULT_EXPIRES", "6e10", "<= 3155760000"),
        ("CELERY_TIME_LIMIT", "36526d", "<= 3155760000"),
        ("DOCPROC_MAX_CPU_SECONDS", "inf", "<= 3155760000"),
        ("DOCPROC_RESTART_DELAY", "inf", "<= 3155760000"),
        ("CELERY_RETRY_BACKOFF_MAX", "3107d", "<= 268435455"),
        ("CELERY_RETRY_DELAY", "inf", "<= 268435455"),
    ],
)
def test_a_number_past_what_its_consumer_takes_is_refused_with_the_range(
    variable: str, value: str, allowed: str
) -> None:
    message = refusal({variable: value})

    assert message.startswith(f"{variable}={value!r} is not allowed: expected ")
    assert allowed in message


def test_the_largest_delivery_limit_is_an_amqp_table_value() -> None:
    limit = Settings.from_env({"DOCPROC_DELIVERY_LIMIT": str(2**63 - 1)}).delivery_limit

    pamqp.encode.table_integer(limit)  # aio-pika's declarations: raised TypeError past it
    amqp.serialization.dumps("F", ({"x-delivery-limit": limit},))  # Celery's


def test_the_longest_durations_can_be_subtracted_from_now() -> None:
    century = "36525d"
    settings = Settings.from_env(
        {
            "DOCPROC_DEAD_LETTER_RETENTION": century,
            "DOCPROC_HANDLED_DEAD_LETTER_RETENTION": century,
            "DOCPROC_RECONCILE_AFTER": century,
            "CELERY_RESULT_EXPIRES": century,
            "CELERY_SOFT_TIME_LIMIT": "36524d",
            "CELERY_TIME_LIMIT": century,
        }
    )

    now = datetime.now(UTC)
    for seconds in (
        settings.dead_letter_retention,
        settings.handled_dead_letter_retention,
        settings.reconcile_after,
        settings.result_expires,
        settings.time_limit + 60,  # a run's liveness window (service.worker.lifecycle)
    ):
        assert now - timedelta(seconds=seconds) < now  # OverflowError for inf, or > 6e10 s


def test_the_longest_retry_delay_fits_celerys_delayed_delivery() -> None:
    settings = Settings.from_env({"CELERY_RETRY_BACKOFF_MAX": "268435455"})

    key = calculate_routing_key(int(settings.retry_backoff_max), "document_processing")
    assert len(key.split(".")) == MAX_NUMBER_OF_BITS_TO_USE + 1


def test_an_api_key_no_client_can_send_is_refused_without_showing_it() -> None:
    message = refusal({"DOCPROC_API_KEYS": "good-key, ключ"})

    assert message.startswith("DOCPROC_API_KEYS is not allowed: key 2 of 2 ")
    assert "printable ASCII" in message
    assert "ключ" not in message
    assert "good-key" not in message


@pytest.mark.parametrize("value", [",", " , ", ",,"])
def test_api_keys_that_name_no_key_are_refused_rather_than_opening_the_api(value: str) -> None:
    message = refusal({"DOCPROC_API_KEYS": value})

    assert message.startswith(f"DOCPROC_API_KEYS={value!r} is not allowed: ")
    assert "every endpoint is open" in message


def test_api_keys_empty_is_unset_and_keys_with_inner_spaces_are_kept() -> None:
    assert Settings.from_env({"DOCPROC_API_KEYS": ""}).api_keys == ()
    assert Settings.from_env({"DOCPROC_API_KEYS": "a key, k2"}).api_keys == ("a key", "k2")
