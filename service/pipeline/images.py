"""Images (PNG, JPEG, TIFF with all its pages, WebP, BMP): their text, read by OCR.

Pillow opens an image by its header alone; the pixels its header declares are checked against
the limit before anything is decoded, frame by frame.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator

from PIL import Image

from service.errors import CorruptFile, EmptyDocument, OcrUnavailable, TooLarge
from service.pipeline.limits import CpuBudget, Limits
from service.pipeline.models import RawDocument
from service.pipeline.ocr import OCR_MAX_PIXELS, Ocr, recognise
from service.pipeline.pages import Pages

_POSSIBLE_BOMB = re.compile(r"\((\d+) pixels\)")
"""The pixels Pillow's DecompressionBombError says the image declares."""
FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP")
"""What Pillow may open: no other decoder of its is reachable from an upload."""


def read_image(data: bytes, budget: CpuBudget, ocr: Ocr) -> RawDocument:
    """The text of each page (a TIFF's every page, other formats' first frame), split by a blank
    line; TooLarge past the limits on pixels (from the header, before decoding), pages,
    characters and CPU time."""
    if ocr.mode == "off":
        raise EmptyDocument(
            f"an image has no text without OCR, which is off: {ocr.setting('mode')}"
        )
    limits = budget.limits
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own bound (89 million pixels), which DOCPROC_MAX_PIXELS sets
            # for docproc; past twice that it refuses (DecompressionBombError, below).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                pages = Pages(budget, "the image", _page_count(image, limits))
                for number, frame in enumerate(_frames(image, limits), start=1):
                    pages.begin(number)
                    pages.add(recognise(frame, ocr))
    except (TooLarge, OcrUnavailable, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own bound, twice its MAX_IMAGE_PIXELS, met as it opens the image.
        declared = _POSSIBLE_BOMB.search(str(exc))
        found = f"the image declares {int(declared[1]):,} pixels" if declared else str(exc)
        raise limits.exceeded("max_pixels", found) from exc
    except Exception as exc:
        # Pillow says a damaged image with OSError, SyntaxError, ValueError, struct.error...
        raise CorruptFile(f"not a valid image (damaged or truncated): {exc}") from exc
    if not pages.text:
        raise EmptyDocument("OCR found no text in the image")
    return RawDocument(text=pages.text, page_count=len(pages.texts))


def _page_count(image: Image.Image, limits: Limits) -> int:
    """A TIFF's pages, counted from their directories (nothing decoded), up to one past the
    limit; 1 for the other formats."""
    if image.format != "TIFF":
        return 1
    if limits.max_pages is not None:
        try:
            image.seek(limits.max_pages)  # the page after the last one allowed
        except EOFError:
            pass
        else:
            limits.check(
                "max_pages", limits.max_pages + 1, "the image has at least {count:,} pages"
            )
        image.seek(0)
    frames: int = getattr(image, "n_frames", 1)
    return frames


def _frames(image: Image.Image, limits: Limits) -> Iterator[Image.Image]:
    """Each page, decoded only once its declared size is within the limits."""
    number = 1
    while True:
        width, height = image.size
        limits.check(
            "max_pixels",
            width * height,
            f"page {number} of the image is {width:,} by {height:,} pixels",
        )
        # A JPEG is decoded at 1/2, 1/4 or 1/8 of its size when that is all OCR will use.
        image.draft("L", _within(image.size, OCR_MAX_PIXELS))
        image.load()
        yield _on_white(image)
        if image.format != "TIFF":
            return
        try:
            image.seek(number)
        except EOFError:
            return
        number += 1


def _within(size: tuple[int, int], pixels: int) -> tuple[int, int]:
    width, height = size
    factor = min(1.0, (pixels / max(1, width * height)) ** 0.5)
    return max(1, int(width * factor)), max(1, int(height * factor))


def _on_white(image: Image.Image) -> Image.Image:
    """Transparent pixels as white paper: converted as they are, they read as black."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        paper = Image.new("RGBA", image.size, "white")
        return Image.alpha_composite(paper, image.convert("RGBA"))
    return image
