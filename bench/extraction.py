"""Extraction: MB/s of `service.pipeline.extract` against the library it wraps, called bare;
OCR's pages/s against Tesseract called bare.

PDF: PDFium's (pypdfium2) text of every page; pypdf's `extract_text`, docproc's fallback, is
measured beside it for the record. HTML: selectolax's LexborHTMLParser and `text()` on the
bytes. OCR: scans (PNG pages, and PDFs of one image a page) against tesserocr given the same
pages (decoded, or rendered by PDFium at the same scale), its model loaded once as docproc's is.
Both sides read the same generated corpus in this process; MB are of input bytes. The HTML
extractor's time is also split into its stages, to say what limits it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import pypdfium2 as pdfium
import tesserocr
from PIL import Image
from pypdf import PdfReader
from selectolax.lexbor import LexborHTMLParser

from bench.corpus import html_document, image_file, pdf_document, scan_lines, scanned_pdf
from bench.harness import Options
from bench.report import Comparison, Report, median
from service.pipeline import extract, normalise
from service.pipeline.detection import identify
from service.pipeline.html import break_lines, read_html
from service.pipeline.ocr import OCR_AUTO, tessdata_dir
from service.pipeline.pdf import OCR_DPI

Corpus = list[tuple[str, bytes]]
HTML_PAGE_BYTES = 200_000
PDF_PAGES = 8


def html_corpus(megabytes: float) -> Corpus:
    count = max(1, round(megabytes * 1e6 / HTML_PAGE_BYTES))
    return [(f"page-{n}.html", html_document(HTML_PAGE_BYTES, seed=n)) for n in range(count)]


DISTINCT_PDFS = 4
"""PDFs laid out for the corpus, then repeated up to its size: fpdf2 takes ~23 ms a page, so
the 21 of a quick run took 3.8 s to make, a fifth of the measure. Neither side keeps anything
from one file to the next, so a repeated file costs what a new one would."""


def pdf_corpus(megabytes: float) -> Corpus:
    distinct = [pdf_document(PDF_PAGES, seed=0)]
    count = max(1, round(megabytes * 1e6 / len(distinct[0])))
    distinct += [pdf_document(PDF_PAGES, seed=n) for n in range(1, min(count, DISTINCT_PDFS))]
    return [(f"report-{n}.pdf", distinct[n % len(distinct)]) for n in range(count)]


def bare_pdf(_: str, data: bytes) -> None:
    document = pdfium.PdfDocument(data)
    for page in document:
        textpage = page.get_textpage()
        textpage.get_text_range()
        textpage.close()
        page.close()
    document.close()


def bare_pypdf(_: str, data: bytes) -> None:
    reader = PdfReader(io.BytesIO(data))
    for page in reader.pages:
        page.extract_text()


def bare_html(_: str, data: bytes) -> None:
    LexborHTMLParser(data).text()


def docproc_extract(name: str, data: bytes) -> None:
    extract(data, name)


Reader = Callable[[str, bytes], None]


def interleaved(corpus: Corpus, readers: dict[str, Reader], rounds: int) -> dict[str, list[float]]:
    """MB/s of each reader over the corpus, once per round. File by file the readers take turns
    (their order flipped every file), so that a burst of load on this shared machine falls on
    both sides alike rather than on whichever ran that second."""
    size = sum(len(data) for _, data in corpus) / 1e6
    names = list(readers)
    results: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        seconds = dict.fromkeys(names, 0.0)
        for index, (filename, data) in enumerate(corpus):
            for name in names if index % 2 else reversed(names):
                started = time.perf_counter()
                readers[name](filename, data)
                seconds[name] += time.perf_counter() - started
        for name in names:
            results[name].append(size / seconds[name])
    return results


async def measure(options: Options, report: Report) -> None:
    corpora: dict[str, tuple[Corpus, Reader, str]] = {
        "pdf": (pdf_corpus(options.pdf_mb), bare_pdf, "PDFium (pypdfium2) text of every page"),
        "html": (html_corpus(options.html_mb), bare_html, "LexborHTMLParser(bytes).text()"),
    }
    # HTML's mark is lower: docproc does more than the bare parse (block-aware line breaks,
    # dropped script and style, normalisation); PDF's work is the parser's.
    marks = {"pdf": 0.9, "html": 0.7}
    for kind, (corpus, bare, bare_name) in corpora.items():
        readers = {"baseline": bare, "docproc": docproc_extract}
        interleaved(corpus, readers, 1)  # untimed: lazy imports and caches warmed on both sides
        rounds = interleaved(corpus, readers, options.rounds)
        size = sum(len(data) for _, data in corpus)
        report.compare(
            Comparison(
                measure="extraction",
                figure=f"{kind} extract",
                unit="MB/s",
                baseline_name=bare_name,
                docproc=rounds["docproc"],
                baseline=rounds["baseline"],
                target=marks[kind],
                details={"corpus": f"{len(corpus)} files, {size / 1e6:.1f} MB, read in turns"},
            )
        )
    split_html(corpora["html"][0], options.rounds, report)
    pdf_readers(corpora["pdf"][0], options.rounds, report)
    measure_ocr(options, report)


def pdf_readers(corpus: Corpus, rounds: int, report: Report) -> None:
    """PDFium against pypdf, both bare, on a quarter of the PDFs (pypdf took 3.6 s over the
    whole of a quick run's): why docproc moved to PDFium."""
    corpus = corpus[: max(DISTINCT_PDFS, len(corpus) // 4)]
    result = interleaved(corpus, {"pypdf": bare_pypdf, "pdfium": bare_pdf}, rounds)
    size = sum(len(data) for _, data in corpus)
    report.compare(
        Comparison(
            measure="extraction",
            figure="pdf: PDFium / pypdf, both bare",
            unit="MB/s",
            baseline_name="pypdf PdfReader + page.extract_text()",
            docproc=result["pdfium"],
            baseline=result["pypdf"],
            details={"corpus": f"{len(corpus)} files, {size / 1e6:.1f} MB"},
        )
    )


class BareTesseract:
    """Tesseract through tesserocr with nothing around it: one model, loaded once."""

    def __init__(self) -> None:
        self.api = tesserocr.PyTessBaseAPI(path=str(tessdata_dir(OCR_AUTO)), lang="eng")

    def read(self, image: Image.Image) -> str:
        self.api.SetImage(image)
        text: str = self.api.GetUTF8Text()
        return text

    def image(self, _: str, data: bytes) -> None:
        self.read(Image.open(io.BytesIO(data)))

    def scan(self, _: str, data: bytes) -> None:
        document = pdfium.PdfDocument(data)
        for page in document:
            bitmap = page.render(scale=OCR_DPI / 72, grayscale=True)
            self.read(bitmap.to_pil())
            bitmap.close()
            page.close()
        document.close()


def measure_ocr(options: Options, report: Report) -> None:
    """Pages a second of docproc's OCR against bare Tesseract on the same pages: PNG pages, and
    scanned PDFs of two pages."""
    pages = [
        scan_lines(options.ocr_lines, seed=n) for n in range(2 * max(1, options.ocr_pages // 2))
    ]
    bare = BareTesseract()
    corpora: dict[str, tuple[Corpus, Reader, str]] = {
        "image": (
            [(f"page-{n}.png", image_file(lines, "PNG")) for n, lines in enumerate(pages)],
            bare.image,
            "tesserocr, model loaded once",
        ),
        "scanned pdf": (
            [(f"scan-{n}.pdf", scanned_pdf(pages[n : n + 2])) for n in range(0, len(pages), 2)],
            bare.scan,
            "tesserocr, model loaded once, pages rendered by PDFium",
        ),
    }
    for kind, (corpus, baseline, baseline_name) in corpora.items():
        readers = {"baseline": baseline, "docproc": docproc_extract}
        interleaved(corpus[:1], readers, 1)  # untimed: both models loaded
        rates = interleaved(corpus, readers, options.rounds)
        size = sum(len(data) for _, data in corpus) / 1e6
        report.compare(
            Comparison(
                measure="extraction",
                figure=f"ocr, {kind}",
                unit="pages/s",
                baseline_name=baseline_name,
                docproc=[rate * len(pages) / size for rate in rates["docproc"]],
                baseline=[rate * len(pages) / size for rate in rates["baseline"]],
                target=0.9,
                details={
                    "pages": f"{len(pages)} pages of {options.ocr_lines} lines, 200 dpi, "
                    "read in turns"
                },
            )
        )


DETECT = "detect + decode bytes"
PASSES = "  block/cell line-break pass (re.split)"
READ = "read_html (line breaks, parse, strip, text)"
BARE = "  bare parse + text() of the same str"
NORMALISE = "normalise"


def _stages(name: str, data: bytes, markup: str, text: str) -> dict[str, Callable[[], object]]:
    return {
        DETECT: lambda: identify(data, name),
        READ: lambda: read_html(markup),
        PASSES: lambda: break_lines(markup),
        BARE: lambda: LexborHTMLParser(markup).text(),
        NORMALISE: lambda: normalise(text),
    }


def split_html(corpus: Corpus, rounds: int, report: Report) -> None:
    """Where extract() spends its time on HTML, stage by stage, in ms per MB of input."""
    size = sum(len(data) for _, data in corpus) / 1e6
    pages = []
    for name, data in corpus:
        found = identify(data, name).decoded
        assert found is not None
        pages.append(_stages(name, data, found.text, read_html(found.text).text))
    seconds: dict[str, list[float]] = {stage: [] for stage in pages[0]}
    for _ in range(rounds):
        totals = dict.fromkeys(seconds, 0.0)
        for stages in pages:
            for stage, work in stages.items():
                started = time.perf_counter()
                work()
                totals[stage] += time.perf_counter() - started
        for stage, total in totals.items():
            seconds[stage].append(total)
    whole = sum(median(seconds[stage]) for stage in (DETECT, READ, NORMALISE))
    for stage, spent in seconds.items():
        share = f"{median(spent) / whole:.0%} of extract()" if stage != BARE else "reference"
        report.read("extraction", f"html: {stage}", median(spent) * 1000 / size, "ms/MB", share)
