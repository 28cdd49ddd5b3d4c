from __future__ import annotations

import subprocess
import sys

import pytest

from service.errors import ConfigError
from service.settings import ENVIRONMENT, Settings
from service.store import search
from tests.support import ROOT


def test_defaults_are_those_of_the_design() -> None:
    settings = Settings.from_env({})

    assert settings.broker_url == "amqp://guest:guest@localhost:5672//"
    assert settings.management_url == "http://localhost:15672"
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_database_url.endswith("/var/docproc.db")
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8000)
    assert settings.queue_type == "quorum"
    assert settings.delivery_limit == 5
    assert settings.concurrency == 2
    assert settings.max_retries == 3
    assert settings.retry_delay == 60
    assert (settings.soft_time_limit, settings.time_limit) == (1800, 2400)
    assert settings.result_expires == 3600
    assert settings.dead_letter_retention == 14 * 86400


def test_every_variable_is_read() -> None:
    env = {
        "DOCPROC_BROKER_URL": "amqps://u:p@rabbit:5671/prod",
        "DOCPROC_MANAGEMENT_URL": "https://rabbit:15671",
        "DOCPROC_DATA_DIR": "/srv/docproc",
        "DOCPROC_DATABASE_URL": "postgresql://docproc@db/docproc",
        "DOCPROC_API_HOST": "0.0.0.0",
        "DOCPROC_API_PORT": "9000",
        "DOCPROC_QUEUE_TYPE": "Classic",
        "DOCPROC_DELIVERY_LIMIT": "7",
        "DOCPROC_API_KEYS": "k1, k2,",
        "DOCPROC_PUBLIC_READS": "true",
        "DOCPROC_MAX_UPLOAD_BYTES": "1024",
        "DOCPROC_MAX_INFLATED_BYTES": "4096",
        "DOCPROC_MAX_CHARS": "100000",
        "DOCPROC_MAX_PAGES": "50",
        "DOCPROC_MAX_CHUNKS": "200",
        "DOCPROC_MAX_CPU_SECONDS": "2m",
        "DOCPROC_MAX_PIXELS": "1000000",
        "DOCPROC_OCR": "Force",
        "DOCPROC_OCR_LANGUAGES": "eng+deu",
        "TESSDATA_PREFIX": "/opt/tessdata",
        "DOCPROC_DEAD_LETTER_RETENTION": "7d",
        "DOCPROC_HANDLED_DEAD_LETTER_RETENTION": "1d",
        "DOCPROC_DEAD_LETTER_BATCH_BYTES": "1048576",
        "DOCPROC_API_WORKERS": "3",
        "DOCPROC_WORKER_METRICS_PORT": "0",
        "DOCPROC_RESTART_DELAY": "0.5s",
        "DOCPROC_RECONCILE_AFTER": "15m",
        "DOCPROC_CHUNK_SIZE": "500",
        "DOCPROC_CHUNK_OVERLAP": "50",
        "DOCPROC_SEARCH_WINDOW": "50000",
        "CELERY_LOG_LEVEL": "debug",
        "DOCPROC_LOG_FORMAT": "Human",
        "CELERY_CONCURRENCY": "4",
        "CELERY_TASK_EVENTS": "false",
        "CELERY_MAX_MEMORY_PER_CHILD": "0",
        "CELERY_MAX_RETRIES": "0",
        "CELERY_RETRY_DELAY": "2.5",
        "CELERY_RETRY_BACKOFF_MAX": "10m",
        "CELERY_SOFT_TIME_LIMIT": "10",
        "CELERY_TIME_LIMIT": "20",
        "CELERY_RESULT_EXPIRES": "1h",
    }
    assert set(env) == set(ENVIRONMENT.values())

    settings = Settings.from_env(env)

    assert settings.queue_type == "classic"
    assert settings.api_keys == ("k1", "k2")
    assert settings.public_reads is True
    assert settings.task_events is False
    assert settings.dead_letter_retention == 7 * 86400
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "human"
    assert settings.retry_backoff_max == 600
    assert (settings.ocr, settings.ocr_languages) == ("force", "eng+deu")
    assert settings.result_expires == 3600
    assert settings.max_retries == 0
    assert settings.restart_delay == 0.5
    assert settings.reconcile_after == 900
    assert settings.worker_metrics_port == 0
    assert (settings.max_inflated_bytes, settings.max_chars) == (4096, 100_000)
    assert (settings.max_pages, settings.max_chunks) == (50, 200)
    assert settings.max_cpu_seconds == 120
    assert settings.max_memory_per_child == 0
    assert settings.search_window == 50_000
    assert settings.dead_letter_batch_bytes == 1024 * 1024
    assert settings.resolved_database_url == "postgresql://docproc@db/docproc"


def test_the_search_window_defaults_to_the_stores_own() -> None:
    assert Settings().search_window == search.WINDOW


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("DOCPROC_QUEUE_TYPE", "fast", "expected one of quorum, classic"),
        ("CELERY_CONCURRENCY", "-1", "expected an integer >= 1"),
        ("CELERY_CONCURRENCY", "two", "expected an integer"),
        ("DOCPROC_API_PORT", "70000", "<= 65535"),
        ("DOCPROC_BROKER_URL", "localhost:5672", "expected an amqp or amqps URL with a host"),
        ("DOCPROC_BROKER_URL", "amqp://host:port/", "Port could not be cast"),
        ("DOCPROC_MANAGEMENT_URL", "ftp://x", "expected an http or https URL"),
        ("DOCPROC_DATABASE_URL", "mysql://db/x", "expected sqlite:///path.db or postgresql://"),
        ("DOCPROC_DATABASE_URL", "sqlite://", "a SQLite URL is sqlite:///"),
        ("CELERY_RETRY_DELAY", "0", "expected a number > 0"),
        ("DOCPROC_OCR", "sometimes", "expected one of auto, off, force"),
        ("DOCPROC_OCR_LANGUAGES", "eng;rm -rf", "expected str matching"),
        ("DOCPROC_DEAD_LETTER_RETENTION", "xd", "such as 90s, 30m, 12h, 14d"),
        ("CELERY_LOG_LEVEL", "loud", "expected one of TRACE, DEBUG"),
        ("DOCPROC_MAX_PAGES", "0", "expected an integer >= 1"),
        ("DOCPROC_DEAD_LETTER_BATCH_BYTES", "0", "expected an integer >= 1"),
        ("DOCPROC_MAX_INFLATED_BYTES", "lots", "expected an integer"),
        ("DOCPROC_MAX_CPU_SECONDS", "-5", "expected a number > 0"),
        ("CELERY_MAX_MEMORY_PER_CHILD", "-1", "expected an integer >= 0"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(
    variable: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: value})

    message = str(raised.value)
    assert message.startswith(f"{variable}={value!r} is not allowed: ")
    assert allowed in message
    assert "\n" not in message


def test_a_soft_time_limit_must_be_shorter_than_the_hard_one() -> None:
    with pytest.raises(ConfigError, match=r"CELERY_SOFT_TIME_LIMIT=50 is not allowed.*shorter"):
        Settings.from_env({"CELERY_SOFT_TIME_LIMIT": "50", "CELERY_TIME_LIMIT": "40"})


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "service", "topology", "export"],
        [sys.executable, "-m", "service", "serve", "worker"],
        [sys.executable, "-m", "celery", "-A", "service.worker.celery", "worker"],
    ],
)
def test_a_process_with_a_bad_setting_stops_with_one_line_and_no_traceback(
    command: list[str],
) -> None:
    env = {"PATH": "/usr/bin:/bin", "DOCPROC_QUEUE_TYPE": "fast", "CELERY_CONCURRENCY": "2"}

    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )

    assert done.returncode == 78
    assert done.stderr.strip() == (
        "docproc: DOCPROC_QUEUE_TYPE='fast' is not allowed: expected one of quorum, classic"
    )


def test_a_cluster_is_a_list_of_nodes_and_passwords_never_show() -> None:
    settings = Settings.from_env(
        {
            "DOCPROC_BROKER_URL": "amqp://u:s3cret@a:5672/prod;amqp://u:s3cret@b:5672/prod",
            "DOCPROC_MANAGEMENT_URL": "http://a:15672;http://b:15672",
        }
    )

    assert settings.broker_urls == ("amqp://u:s3cret@a:5672/prod", "amqp://u:s3cret@b:5672/prod")
    assert settings.management_urls == ("http://a:15672", "http://b:15672")
    assert settings.vhost == "prod"
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"DOCPROC_BROKER_URL": "amqp://u:s3cret@a/prod;amqp://u:s3cret@b/test"})
    assert "s3cret" not in str(refused.value)
    assert "u:***@a" in str(refused.value)
    with pytest.raises(ConfigError) as bad:
        Settings.from_env({"DOCPROC_BROKER_URL": "amqp://u:s3cret@a/;http://u:s3cret@b/"})
    assert "s3cret" not in str(bad.value)
