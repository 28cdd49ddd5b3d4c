"""Tracebacks as the API shows them: file paths relative to their package, no machine paths
(install locations, home directories, virtualenvs say more about a host than a reader needs)."""

from __future__ import annotations

import re

_PATH = re.compile(
    r'File "(?:[^"]*?/(?:site-packages|dist-packages)/|[^"]*?/(?=service/)|[^"]*?/lib/(?=python3))'
)


def relative_paths(traceback: str | None) -> str | None:
    """`File "/home/x/.venv/lib/python3.11/site-packages/celery/app/trace.py"` →
    `File "celery/app/trace.py"`; docproc's own files from `service/`."""
    return None if traceback is None else _PATH.sub('File "', traceback)
