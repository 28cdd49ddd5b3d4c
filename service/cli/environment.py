"""Settings for a command: read once, or end the command with the one-line reason."""

from __future__ import annotations

from service.errors import ConfigError, abort
from service.settings import Settings


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        abort(exc)
