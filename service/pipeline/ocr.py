"""Text from pictures of text, with Tesseract through tesserocr (its C++ API in-process: the
model is loaded once per process and reused for every page, no process spawned per page)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from service.errors import OcrUnavailable
from service.tessdata import OCR_AUTO, Ocr, OcrMode, problem, tessdata_dir

__all__ = ["OCR_AUTO", "OCR_MAX_PIXELS", "Ocr", "OcrMode", "problem", "recognise", "tessdata_dir"]

if TYPE_CHECKING:
    from PIL.Image import Image
    from tesserocr import PyTessBaseAPI

OCR_MAX_PIXELS = 12_000_000
"""Pixels handed to Tesseract at most: an A4 page at 300 dpi is 8.7 million, where Tesseract
reads best; a larger photo is scaled down to this first (less time and memory, no fewer words)."""


class _Engines:
    """One Tesseract instance per (directory, languages) in this process, made on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded: dict[tuple[str, str], PyTessBaseAPI] = {}


_engines = _Engines()


def _engine(ocr: Ocr) -> PyTessBaseAPI:
    directory = str(tessdata_dir(ocr))
    key = (directory, ocr.languages)
    with _engines.lock:
        engine = _engines.loaded.get(key)
        if engine is None:
            try:
                # Imported here: libtesseract is loaded only by the processes that run OCR.
                import tesserocr

                engine = tesserocr.PyTessBaseAPI(path=directory, lang=ocr.languages)
            except (ImportError, RuntimeError) as exc:
                raise OcrUnavailable(
                    f"Tesseract cannot start with {ocr.setting('languages')} from {directory}: "
                    f"{exc}"
                ) from exc
            _engines.loaded[key] = engine
        return engine


def recognise(image: Image, ocr: Ocr) -> str:
    """The text Tesseract reads in `image` (any mode; read as 8-bit grey)."""
    engine = _engine(ocr)
    grey = fit(image.convert("L") if image.mode != "L" else image, OCR_MAX_PIXELS)
    width, height = grey.size
    with _engines.lock:
        # Raw bytes rather than SetImage, which encodes the image as a BMP first. (The stub
        # says str; the bytes are what it takes.)
        pixels: Any = grey.tobytes()
        engine.SetImageBytes(pixels, width, height, 1, width)
        text: str = engine.GetUTF8Text()
        engine.Clear()
    return text


def fit(image: Image, pixels: int) -> Image:
    """`image`, scaled down to hold at most `pixels` pixels."""
    width, height = image.size
    if width * height <= pixels:
        return image
    factor = (pixels / (width * height)) ** 0.5
    return image.resize((max(1, int(width * factor)), max(1, int(height * factor))))
