"""What runs the tests is what uv.lock pins: the product a new user installs is the one tested."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import distributions

from tests.support import ROOT


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_installed_dependency_is_the_locked_release() -> None:
    packages = tomllib.loads((ROOT / "uv.lock").read_text())["package"]
    locked = {_name(p["name"]): p["version"] for p in packages if "version" in p}
    installed = {_name(d.metadata["Name"]): d.version for d in distributions()}

    differ = {
        name: f"installed {installed[name]}, locked {version}"
        for name, version in locked.items()
        if name in installed and installed[name] != version
    }

    assert not differ, (
        f"this environment was not installed from uv.lock (use `uv run --locked tox`): {differ}"
    )
    assert {"msgspec", "sqlalchemy", "celery", "litestar"} <= installed.keys() & locked.keys()
