"""Submit: documents accepted per second through `POST /documents`, against aio-pika publishing
the same task messages with publisher confirms, at the same concurrency.

The API is the real `docproc serve api` under uvicorn; the client is bench.wire's, which costs far
less CPU per request than the server (reported beside the rate). The baseline is what the API
must do at least: one confirmed publish per document, on one channel.
"""

from __future__ import annotations

import itertools
import uuid

import aio_pika

from bench.corpus import text_document
from bench.harness import BenchError, Session, alternate
from bench.load import Load, client_cpu, drive, http_load, latency
from bench.report import Comparison, median
from bench.wire import Client, multipart
from service.broker.publisher import task_message
from service.task_contract import PROCESS_DOCUMENT
from service.topology import DOCUMENT_QUEUE, EXCHANGE

DOCUMENT_BYTES = 2000
WARM_UP = 64


async def purge(run: Session, queue: str) -> None:
    connection = await aio_pika.connect(run.broker_url)
    async with connection:
        channel = await connection.channel()
        await (await channel.get_queue(queue, ensure=False)).purge()


async def measure(run: Session) -> None:
    options = run.options
    body = text_document(DOCUMENT_BYTES)
    api, url = await run.start_docproc("api")
    assert url is not None
    connection = await aio_pika.connect(run.broker_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)

        uploads = itertools.count()

        async def upload(client: Client, index: int) -> None:
            # Every upload its own bytes, as users' files are: the same bytes each time made
            # every upload after the first a copy, which the API finds with one lookup a batch.
            content = f"Upload {next(uploads)}.\n\n".encode() + body
            content_type, form = multipart("file", "doc.txt", content, "text/plain")
            request = client.prepare("POST", "/documents", form, {"Content-Type": content_type})
            answer = await client.send(request)
            if answer.status != 202:
                raise BenchError(f"POST /documents: {answer.status} {answer.body[:500]!r}")

        async def publish(index: int) -> None:
            message = task_message(
                PROCESS_DOCUMENT,
                str(uuid.uuid4()),
                kwargs={"document_id": str(uuid.uuid4())},
                correlation_id=str(uuid.uuid4()),
            )
            await exchange.publish(message, routing_key=DOCUMENT_QUEUE, mandatory=True)

        cpu: list[float] = []

        async def docproc() -> Load:
            before = api.cpu()
            load = await http_load(url, options.submit_documents, options.concurrency, upload)
            cpu.append((api.cpu() - before) / (load.count + options.concurrency) * 1e6)
            await purge(run, DOCUMENT_QUEUE)
            return load

        async def baseline() -> Load:
            await drive(options.concurrency, options.concurrency, publish)
            load = await drive(options.submit_documents, options.concurrency, publish)
            await purge(run, DOCUMENT_QUEUE)
            return load

        await http_load(url, WARM_UP, options.concurrency, upload)
        await drive(WARM_UP, options.concurrency, publish)
        rounds = await alternate(options.rounds, {"baseline": baseline, "docproc": docproc})
    finally:
        await connection.close()
        run.stop(api)
    mine, raw = rounds["docproc"], rounds["baseline"]
    run.report.compare(
        Comparison(
            measure="submit",
            figure="documents accepted",
            unit="/s",
            baseline_name=f"aio-pika confirmed publish, {options.concurrency} concurrent",
            docproc=[load.rate for load in mine],
            baseline=[load.rate for load in raw],
            target=0.3,
            details={
                "docproc p50 / p99 ms": latency(mine),
                "baseline p50 / p99 ms": latency(raw),
                "API CPU µs per document": median(cpu),
                "client CPU µs per document, HTTP / aio-pika": f"{client_cpu(mine):.0f} / "
                f"{client_cpu(raw):.0f}",
                "documents": f"{options.submit_documents} x ~{DOCUMENT_BYTES} B text per round, "
                "each its own",
            },
        )
    )
    # The rate above is shared with the client; CPU per document is the server's own. The
    # baseline's is what publishing alone costs the process that does it (aio-pika, confirms).
    run.report.compare(
        Comparison(
            measure="submit",
            figure="documents per server CPU second",
            unit="/s",
            baseline_name="the aio-pika publisher's CPU per confirmed publish",
            docproc=[1e6 / us for us in cpu],
            baseline=[1e6 / load.client_us for load in raw],
            target=0.25,
            details={
                "CPU µs per document, API / publisher": f"{median(cpu):.0f} / "
                f"{client_cpu(raw):.0f}",
            },
        )
    )
