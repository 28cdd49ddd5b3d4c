"""A scenario's load: documents of several types, each unique and carrying a token its text must
show, about one in twenty a bad file that must end DEAD with the right error — sent through the
API as a client that cannot lose work would send them: an Idempotency-Key per file, and the same
request again, under the same key, for as long as the answer is not a 202."""

from __future__ import annotations

import asyncio
import io
import random
import time
import zipfile
from dataclasses import dataclass

import httpx

from tests.corpus import _pdf

BAD_EVERY = 20
KINDS = ("txt", "md", "html", "pdf")


@dataclass
class Submission:
    filename: str
    data: bytes
    key: str
    token: str
    good: bool
    error: str | None = None  # what a bad file must die of
    receipt: dict[str, object] | None = None
    attempts: int = 0


def _good(kind: str, token: str, rng: random.Random, heavy: bool) -> bytes:
    words = " ".join(
        rng.choice(("storm", "harbour", "keeper", "lantern", "tide")) for _ in range(40)
    )
    if heavy:  # a few megabytes of text: a task of a second or two, long enough to be cut mid-way
        return (f"{token} heavy report. " + f"{words}. " * 6000).encode()
    if kind == "txt":
        return f"Plain notes {token}.\n{words}\n".encode()
    if kind == "md":
        return f"# Notes {token}\n\nSome **bold** words: {words}.\n\n- one\n- two\n".encode()
    if kind == "html":
        return (
            f"<!DOCTYPE html><html><head><title>Page {token}</title></head>"
            f"<body><h1>Heading</h1><p>{token} {words}</p></body></html>"
        ).encode()
    return _pdf([f"{token} speaks", words[:60], words[60:120]])


def _bad(number: int, rng: random.Random) -> tuple[str, bytes, str]:
    """A file the API accepts (its type is detected) that the worker cannot read."""
    if number % 2 == 0:
        return "pdf", b"%PDF-1.7\n" + rng.randbytes(3000), "CorruptFile"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Override PartName="/word/document.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        zipped.writestr("word/document.xml", b"not XML <w:body " + rng.randbytes(16).hex().encode())
    return "docx", archive.getvalue(), "CorruptFile"


def corpus(
    scenario: str, count: int, *, heavy: int = 0, bad_every: int = BAD_EVERY, seed: int = 11
) -> list[Submission]:
    """`count` submissions for `scenario`, one in `bad_every` a bad file; `heavy` of the good
    text files, spread over the load, are large."""
    rng = random.Random(f"{scenario}-{seed}")
    made: list[Submission] = []
    heavy_left = heavy
    spacing = max(1, count // len(KINDS) // max(1, heavy))
    for number in range(count):
        token = f"fault{scenario.replace('-', '')}{number:04d}mark"
        key = f"faults-{scenario}-{number}-{seed}"
        if number % bad_every == bad_every - 1:
            extension, data, error = _bad(number, rng)
            made.append(
                Submission(f"{scenario}-{number:04d}.{extension}", data, key, token, False, error)
            )
            continue
        kind = KINDS[number % len(KINDS)]
        is_heavy = heavy_left > 0 and kind == "txt" and (number // len(KINDS)) % spacing == 0
        heavy_left -= is_heavy
        data = _good(kind, token, rng, is_heavy)
        made.append(Submission(f"{scenario}-{number:04d}.{kind}", data, key, token, True))
    return made


class Load:
    """Sends submissions spread over `window` seconds, `concurrency` at a time, in the
    background; each retried under its key until a 202 (or until `patience` runs out)."""

    def __init__(
        self,
        api: str,
        submissions: list[Submission],
        *,
        window: float,
        concurrency: int = 8,
        patience: float = 240.0,
    ) -> None:
        self.api = api
        self.submissions = submissions
        self.window = window
        self.concurrency = concurrency
        self.patience = patience
        self.answered = 0
        self.refusals: list[str] = []
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Load:
        self._task = asyncio.create_task(self._run(), name="faults-load")
        return self

    async def reached(self, count: int, timeout: float = 120) -> None:
        """Until `count` submissions were answered 202."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.answered >= count), timeout)

    async def done(self) -> None:
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        gate = asyncio.Semaphore(self.concurrency)
        began = time.monotonic()
        step = self.window / max(1, len(self.submissions))
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def send(number: int, submission: Submission) -> None:
                await asyncio.sleep(max(0.0, began + number * step - time.monotonic()))
                async with gate:
                    await self._send(client, submission)

            await asyncio.gather(
                *(send(number, item) for number, item in enumerate(self.submissions))
            )

    async def _send(self, client: httpx.AsyncClient, submission: Submission) -> None:
        deadline = time.monotonic() + self.patience
        pause = 0.1
        while time.monotonic() < deadline:
            submission.attempts += 1
            try:
                response = await client.post(
                    f"{self.api}/documents",
                    files={"file": (submission.filename, submission.data)},
                    headers={"Idempotency-Key": submission.key},
                )
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 202:
                submission.receipt = response.json()
                async with self._progress:
                    self.answered += 1
                    self._progress.notify_all()
                return
            if response is not None and response.status_code < 500 and response.status_code != 429:
                self.refusals.append(
                    f"{submission.filename}: {response.status_code} {response.text[:200]}"
                )
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
        self.refusals.append(f"{submission.filename}: no 202 within {self.patience:g} s")
