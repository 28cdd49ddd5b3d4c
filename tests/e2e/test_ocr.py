"""OCR against a real `docproc up`: text drawn into images and into a scanned PDF is found through
/search; image bombs end DEAD naming their limit, the worker's memory bounded; without
Tesseract's language data `up` says so at start and the worker fails images with the reason."""

from __future__ import annotations

import functools
import io
from typing import Any

import httpx
import pytest
from fpdf import FPDF

from bench.corpus import image_file, scanned_pdf, text_image
from tests import hostile_files
from tests.e2e.conftest import Running
from tests.e2e.test_hostile_input import LIMITS, Watch
from tests.support import eventually

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]

OCR_LIMITS = LIMITS | {"DOCPROC_MAX_PIXELS": "20000000"}
MEMORY_BOUND = 300 * 1024
"""KiB of resident memory any process may reach while it reads these: 172 MB was measured (a pool
process with Tesseract's English model loaded and a page rendered at 300 dpi)."""


@pytest.fixture
def up_env() -> dict[str, str]:
    return OCR_LIMITS


def huge_scanned_page() -> bytes:
    """A 200-inch square page holding one picture: 3.6 billion pixels, rendered at 300 dpi."""
    pdf = FPDF(unit="pt", format=(14400, 14400))
    pdf.add_page()
    picture = io.BytesIO()
    text_image(["Osprey quarry beacon"], size=60).save(picture, "PNG")
    pdf.image(picture, x=0, y=0, w=14400)
    return bytes(pdf.output())


def tiff_of(*pages: list[str]) -> bytes:
    out = io.BytesIO()
    first, *others = [text_image(lines) for lines in pages]
    first.save(out, "TIFF", save_all=True, append_images=others)
    return out.getvalue()


async def upload_all(http: httpx.AsyncClient, files: dict[str, bytes]) -> dict[str, Any]:
    accepted = {}
    for name, data in files.items():
        response = await http.post("/documents", files={"file": (name, data)})
        assert response.status_code == 202, (name, response.text)
        accepted[name] = response.json()
    return accepted


async def outcome(http: httpx.AsyncClient, task_id: str) -> dict[str, Any] | None:
    status: dict[str, Any] = (await http.get(f"/tasks/{task_id}/status")).json()
    return status if status["state"] in {"SUCCESS", "DEAD"} else None


async def test_text_in_images_and_scans_is_found_and_bombs_die_in_bounded_memory(
    running: Running,
) -> None:
    readable = {
        "receipt.png": (image_file(["Pelican harbour ledger"], "PNG"), "pelican"),
        "photo.jpg": (image_file(["Walrus meadow archive"], "JPEG"), "walrus"),
        "fax.tiff": (tiff_of(["First page of the fax"], ["Badger orchard lantern"]), "badger"),
        "scan.pdf": (scanned_pdf([["Cover page"], ["Heron granite compass"]]), "heron"),
        "poster.pdf": (huge_scanned_page(), "osprey"),
    }
    bombs = {
        "bomb.png": (
            hostile_files.png_declaring(100_000, 100_000),
            "the image declares 10,000,000,000 pixels, more than DOCPROC_MAX_PIXELS=20,000,000",
        ),
        "pages.tiff": (
            hostile_files.tiff_of_pages(100_000),
            "the image has at least 51 pages, more than DOCPROC_MAX_PAGES=50",
        ),
        "wide.tiff": (
            hostile_files.tiff_of_pages(1, 8_000, 8_000),
            "page 1 of the image is 8,000 by 8,000 pixels, more than DOCPROC_MAX_PIXELS",
        ),
    }
    with Watch(running.api, running.up.popen.pid) as watch:
        async with httpx.AsyncClient(base_url=running.api, timeout=60) as http:
            files = {name: data for name, (data, _) in (readable | bombs).items()}
            accepted = await upload_all(http, files)
            for name, (_, word) in readable.items():
                task = functools.partial(outcome, http, accepted[name]["task_id"])
                status = await eventually(task, 120, f"{name} to be processed")
                assert status["state"] == "SUCCESS", (name, status)
                hits = (await http.get("/search", params={"q": word})).json()["items"]
                found = {hit["document_id"] for hit in hits}
                assert accepted[name]["document_id"] in found, (name, word, hits)
            for name, (_, reason) in bombs.items():
                task = functools.partial(outcome, http, accepted[name]["task_id"])
                status = await eventually(task, 120, f"{name} to be dead")
                assert status["state"] == "DEAD", (name, status)
                assert status["error"]["type"] == "TooLarge", (name, status["error"])
                assert reason in status["error"]["message"], (name, status["error"])
    command, peak = watch.largest()
    print(f"largest process: {command} at {peak // 1024} MB")
    assert peak < MEMORY_BOUND, f"{command} grew to {peak // 1024} MB"
    assert not watch.failures, watch.failures[:5]


@pytest.mark.parametrize("up_env", [{"TESSDATA_PREFIX": "/nonexistent/tessdata"}])
async def test_without_language_data_up_says_so_and_images_die_with_the_reason(
    running: Running,
) -> None:
    output = running.up.output()
    assert "docproc up: warning: OCR needs Tesseract's language data" in output
    assert "install tesseract-ocr tesseract-ocr-eng" in output
    async with httpx.AsyncClient(base_url=running.api, timeout=60) as http:
        accepted = await upload_all(http, {"receipt.png": image_file(["Pelican"], "PNG")})
        task = functools.partial(outcome, http, accepted["receipt.png"]["task_id"])
        status = await eventually(task, 60, "the image to be dead")
    assert status["state"] == "DEAD"
    assert status["error"]["type"] == "OcrUnavailable"
    assert "TESSDATA_PREFIX" in status["error"]["message"]
    assert "DOCPROC_OCR=off" in status["error"]["message"]
    assert running.up.alive()
