"""`--profile DIR`: py-spy records every process the run starts (pool children included);
each profile is summarised as its top frames, by own time and by time including callees.

Only threads holding the GIL are sampled (`--gil`): the profile says where Python spends CPU.
Waiting — on the event loop, a socket, a lock, SQLite's busy handler, C code that releases the
GIL — is left out (py-spy cannot tell it from work when it does not pause the target). py-spy
samples from outside (`--nonblocking`), yet it takes CPU of its own on a small machine: the
figures of a profiled run are not the run's figures.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

RATE = 200
"""Samples per second."""
_LINE = re.compile(r":\d+\)$")


def attach(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` and its children until they exit, collapsed stacks to `output`."""
    py_spy = shutil.which("py-spy") or str(Path(__file__).parent.parent / ".venv/bin/py-spy")
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--gil",
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _frames(stack: str) -> list[str]:
    """A collapsed stack's frames without line numbers, process and thread names dropped."""
    return [
        _LINE.sub(")", frame)
        for frame in stack.split(";")
        if not frame.startswith(("process ", "thread "))
    ]


def summarise(path: Path, top: int = 15) -> str:
    """The top frames of one profile, in % of its samples: own time, then time including callees
    (the entry point, the CLI, the event loop and process pools left out). Samples taken
    while modules were imported (start-up) are set aside."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = importing = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = _frames(stack)
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        if any(frame.startswith(_IMPORTING) for frame in frames):
            importing += count
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"{path.name}: no samples"
    lines = [
        f"{path.name}: {total} samples at {RATE}/s, {importing} more while importing (left out)",
        "  own time:",
    ]
    lines += [f"    {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    lines.append("  including callees:")
    callers = [
        (frame, n)
        for frame, n in inclusive.most_common()
        if n < 0.9 * total and not any(wrapper in frame for wrapper in _WRAPPERS)
    ]
    lines += [f"    {n / total:6.1%}  {frame}" for frame, n in callers[: top * 2]]
    return "\n".join(lines)


_IMPORTING = ("_find_and_load ", "_call_with_frames_removed ")
_WRAPPERS = (
    "<frozen runpy>",
    "(click/",
    "(service/__main__.py)",
    "(service/cli/",
    "(asyncio/runners.py)",
    "(asyncio/base_events.py)",
    "(asyncio/events.py)",
    "(uvicorn/main.py)",
    "(uvicorn/server.py)",
    "(uvicorn/_compat.py)",
    "(threading.py)",
    "(billiard/",
    "(celery/bootsteps.py)",
    "(celery/worker/worker.py)",
    "(celery/concurrency/",
)
