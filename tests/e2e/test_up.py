"""As a new user: `docproc up`, `docproc submit --wait`, a search, `docproc selftest`, Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import aio_pika
import httpx
import pytest

from tests import corpus, office_files
from tests.e2e.conftest import Running, alive, descendants, docproc
from tests.support import (
    ROOT,
    Process,
    Vhost,
    docproc_command,
    eventually,
    free_port,
    run_docproc,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]


async def test_a_new_user_runs_it_submits_a_folder_searches_and_stops_it_cleanly(
    running: Running,
) -> None:
    folder = running.directory / "inbox"
    folder.mkdir()
    samples = {
        "report.pdf": corpus.pdf_sample(),
        "table.docx": corpus.docx_sample(),
        "page.html": corpus.html_sample(),
        "notes.md": corpus.markdown_sample(),
    }
    for filename, sample in samples.items():
        (folder / filename).write_bytes(sample.data)
    # One of each office and mail format, and a word only it holds.
    office = {
        "stock.xlsx": (office_files.xlsx("gooseberry"), "gooseberry"),
        "deck.pptx": (office_files.pptx_file("semaphore"), "semaphore"),
        "shore.odt": (office_files.odt("foxglove"), "foxglove"),
        "orchard.ods": (office_files.ods("damson"), "damson"),
        "talk.odp": (office_files.odp("kittiwake"), "kittiwake"),
        "notes.rtf": (office_files.rtf("astrolabe"), "astrolabe"),
        "report.eml": (office_files.eml("guillemot"), "guillemot"),
    }
    for filename, (data, _) in office.items():
        (folder / filename).write_bytes(data)

    submitted = await asyncio.to_thread(docproc, running, "submit", str(folder), "--wait")

    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert submitted.stdout.count("SUCCESS") == len(samples) + len(office)
    async with httpx.AsyncClient(base_url=running.api) as api:
        hits = (await api.get("/search", params={"q": samples["report.pdf"].present[0]})).json()
        assert hits["items"], "the submitted PDF is found"
        found = (await api.get(f"/documents/{hits['items'][0]['document_id']}")).json()
        for filename, (_, word) in office.items():
            office_hits = (await api.get("/search", params={"q": word})).json()["items"]
            assert [hit["filename"] for hit in office_hits] == [filename], (word, office_hits)
    assert (found["detected_type"], found["language"]) == ("pdf", "en")
    only_html = await asyncio.to_thread(
        docproc, running, "search", "paragraph", "--type", "html", "--language", "en"
    )
    assert only_html.returncode == 0, only_html.stdout + only_html.stderr
    assert "page.html" in only_html.stdout
    assert "table.docx" not in only_html.stdout, "the DOCX says paragraph too"

    selftest = await asyncio.to_thread(docproc, running, "selftest", "--crash")
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    verdicts = [line.split()[0] for line in selftest.stdout.splitlines()[2:]]
    assert verdicts == ["ok"] * 5, "four paths and the clean-up"
    assert await active_dead_letters(running) == [], "selftest leaves no dead letter behind"

    await a_selftest_cut_short_cleans_up_after_itself(running)

    family = descendants(running.up.popen.pid)
    assert len(family) >= 4
    running.up.popen.send_signal(signal.SIGINT)
    status = await asyncio.to_thread(running.up.popen.wait, 90)

    assert status == 0, running.up.tail()
    assert not [pid for pid in family if alive(pid)], "no process is left behind"


async def active_dead_letters(running: Running) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=running.api) as api:
        items: list[dict[str, object]] = (await api.get("/dead-letters")).json()["items"]
    return items


async def a_selftest_cut_short_cleans_up_after_itself(running: Running) -> None:
    crashes_before = running.up.output().count("canary docproc.canary.crash: crashing")
    selftest = Process(
        docproc_command("selftest", "--crash", "--api", running.api),
        running.env,
        running.directory / "selftest.log",
        cwd=running.directory,
    )

    async def crashed() -> bool | None:
        crashes = running.up.output().count("canary docproc.canary.crash: crashing")
        return True if crashes > crashes_before else None

    try:
        await eventually(crashed, 60, "the crash canary to kill a worker process")
        selftest.popen.send_signal(signal.SIGINT)
        status = await asyncio.to_thread(selftest.popen.wait, 60)
    finally:
        selftest.stop()
    output = selftest.output()

    assert status == 130, output
    assert "Traceback" not in output
    assert "selftest interrupted; its canaries were cleaned up" in output

    async def crash_canary_gave_up() -> bool | None:
        return (
            True if "no selftest listens (report_to), not crashing" in running.up.output() else None
        )

    try:
        await eventually(crash_canary_gave_up, 60, "the crash canary to stop crashing")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{running.up.tail(80)}") from None
    assert await active_dead_letters(running) == [], "no canary dead letter is left"


async def test_a_worker_killed_under_up_is_restarted_and_every_document_ends(
    running: Running,
) -> None:
    folder = running.directory / "batch"
    folder.mkdir()
    for n in range(6):
        (folder / f"doc-{n}.pdf").write_bytes(corpus.pdf_sample(pages=30).data)
    submitting = asyncio.create_task(
        asyncio.to_thread(docproc, running, "submit", str(folder), "--wait")
    )

    async def worker_pid() -> int | None:
        # Up's own child: the worker's pool processes carry the same command line, and after
        # PIDs wrap around, the lowest PID need not be the main process.
        found = await asyncio.to_thread(
            subprocess.run,
            ["pgrep", "-P", str(running.up.popen.pid), "-f", "service serve worker"],
            capture_output=True,
            text=True,
            check=False,
        )
        mine = [int(p) for p in found.stdout.split()]
        return mine[0] if len(mine) == 1 else None

    async def busy() -> bool | None:
        return True if "docproc.document.process" in running.up.output() else None

    await eventually(busy, 30, "documents in flight")
    victim = await eventually(worker_pid, 10, "the worker child")
    os.kill(victim, signal.SIGKILL)

    submitted = await submitting

    assert "restarting it" in running.up.output()
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert submitted.stdout.count("SUCCESS") == 6


def test_up_without_a_broker_says_how_to_start_one_and_exits(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DOCPROC_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{port}//",
        # Its own API port: the check that the port is free comes first, and 8000 may be taken.
        "DOCPROC_API_PORT": str(free_port()),
    }
    env = {k: v for k, v in env.items() if not k.startswith("CELERY_")}
    started = time.monotonic()

    done = subprocess.run(
        docproc_command("up"),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )

    assert time.monotonic() - started < 25, "it gives up at once, it does not retry for ever"
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    [line] = [line for line in done.stderr.splitlines() if line.startswith("docproc:")]
    assert "RabbitMQ is not reachable" in line
    assert "infra/rabbitmq/local.sh" in line
    assert "docker compose" in line


async def test_a_child_that_keeps_dying_stops_up_with_a_message_naming_it(
    fresh_vhost: Vhost, tmp_path: Path
) -> None:
    # A dead letter waits, and the DLQ consumer is made to die as it stores one: it dies at
    # every start (the fault-injection hook the fault tests use).
    env = fresh_vhost.env(
        DOCPROC_API_PORT=str(free_port()),
        DOCPROC_RESTART_DELAY="0.2",
        DOCPROC_FAULT_INJECTION="before-commit",
        PYTHONPATH=str(ROOT),
    )
    declared = await asyncio.to_thread(run_docproc, "topology", "declare", env=env)
    assert declared.returncode == 0, declared.stderr
    connection = await fresh_vhost.connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("docproc.dlx", ensure=False)
        await exchange.publish(aio_pika.Message(b"poison"), routing_key="document_processing")

    done = await asyncio.to_thread(
        subprocess.run,
        docproc_command("up"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )

    assert done.returncode == 1
    assert "restarting it in 0.2 s" in done.stdout
    assert "docproc up: the dlq process keeps dying" in done.stderr
    assert "Traceback" not in done.stderr


def test_up_on_a_taken_port_says_so_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DOCPROC_API_PORT": str(port), "PYTHONPATH": str(ROOT)}
        started = time.monotonic()

        done = subprocess.run(
            docproc_command("up"),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )

    assert time.monotonic() - started < 15, "at once, not after a minute of restarts"
    assert done.returncode == 78
    [line] = [line for line in done.stderr.splitlines() if line.strip()]
    assert line == (
        f"docproc: 127.0.0.1:{port} is taken by another program: stop it, or set "
        "DOCPROC_API_PORT (and DOCPROC_API_HOST) to an address that is free"
    )
