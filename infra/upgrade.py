"""`tox -e upgrade`: meet upstream releases on purpose, before users do.

Re-resolves every dependency to its newest release (`uv lock --upgrade`), prints what changed,
runs the whole suite and the lint env on exactly that lock, and keeps the new uv.lock only if both
pass; otherwise (or on Ctrl-C) the tested lock is put back. Arguments go to pytest.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "uv.lock"


def versions(lock: Path) -> dict[str, str]:
    packages = tomllib.loads(lock.read_text())["package"]
    return {p["name"]: p.get("version", "") for p in packages if "version" in p}


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name, "-"), after.get(name, "-")
        if old != new:
            lines.append(f"  {name}: {old} -> {new}")
    return lines


def main(pytest_args: list[str]) -> int:
    uv = shutil.which("uv")
    if uv is None:
        print("upgrade: uv is not on PATH (python3 -m pip install uv)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        tested = Path(scratch) / "uv.lock"
        shutil.copy2(LOCK, tested)
        advanced = False
        try:
            subprocess.run([uv, "lock", "--upgrade"], cwd=ROOT, check=True)
            changed = changes(versions(tested), versions(LOCK))
            if not changed:
                print("upgrade: every dependency is already at its newest release")
                advanced = True
                return 0
            print("upgrade: the newest releases differ from the lock:", *changed, sep="\n")
            status = subprocess.run(
                [sys.executable, "-m", "tox", "run", "-e", "py,lint", "--", *pytest_args],
                cwd=ROOT,
                check=False,
            ).returncode
            if status == 0:
                advanced = True
                print("upgrade: suite and lint pass on the newest releases; uv.lock advanced")
                print("upgrade: commit it (git add uv.lock) with the list above")
            else:
                print(
                    "upgrade: the newest releases break docproc (see above); uv.lock kept as "
                    "tested. Fix the code, or pin the release that breaks with an upper bound "
                    "in pyproject.toml and say why",
                    file=sys.stderr,
                )
            return status
        finally:
            if not advanced:
                shutil.copy2(tested, LOCK)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
