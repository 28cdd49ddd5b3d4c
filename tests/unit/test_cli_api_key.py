"""An API key the CLI cannot send (not printable ASCII: HTTP headers carry no other text) ends
in one line naming where it came from, never a UnicodeEncodeError's traceback, and never shows
the key. The commands run with catch_exceptions=False: a traceback fails the test."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from service.cli import cli
from tests.support import free_port

KEYS = ["ключ", "clé", "a\nb", "tab\there"]


@pytest.mark.parametrize("key", KEYS)
def test_a_key_from_the_environment_is_a_setting_error(key: str) -> None:
    api = f"http://127.0.0.1:{free_port()}"  # nothing listens: nothing is asked

    result = CliRunner().invoke(
        cli, ["status", "t-1", "--api", api], env={"DOCPROC_API_KEY": key}, catch_exceptions=False
    )

    assert result.exit_code == 78, result.output
    assert result.stderr.splitlines() == [
        "docproc: DOCPROC_API_KEY is not allowed: an API key must be printable ASCII: it is "
        "sent in an HTTP header (Authorization), which carries no other text"
    ]
    assert key not in result.output


@pytest.mark.parametrize("key", KEYS)
def test_a_key_given_as_the_option_is_a_usage_error(key: str) -> None:
    api = f"http://127.0.0.1:{free_port()}"

    result = CliRunner().invoke(
        cli,
        ["dead-letters", "list", "--api", api, "--api-key", key],
        env={"DOCPROC_API_KEY": None},
        catch_exceptions=False,
    )

    assert result.exit_code == 2, result.output
    assert "Invalid value for '--api-key': an API key must be printable ASCII" in result.stderr
    assert key not in result.output
