"""Text from pictures of text, with Tesseract through tesserocr (its C++ API in-process: the
model is loaded once per process and reused for every page, no process spawned per page)."""

from __future__ import annotations

import glob
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from service.errors import OcrUnavailable

if TYPE_CHECKING:
    from PIL.Image import Image
    from tesserocr import PyTessBaseAPI

OcrMode = Literal["auto", "off", "force"]

OCR_MAX_PIXELS = 12_000_000
"""Pixels handed to Tesseract at most: an A4 page at 300 dpi is 8.7 million, where Tesseract
reads best; a larger photo is scaled down to this first (less time and memory, no fewer words)."""

TESSDATA_PLACES = (
    "/usr/share/tesseract-ocr/*/tessdata",  # Debian, Ubuntu
    "/usr/share/tessdata",  # Fedora, Arch, Alpine
    "/usr/local/share/tessdata",  # built from source
    "/opt/homebrew/share/tessdata",  # Homebrew on macOS
)
"""Where distributions install Tesseract's language data, searched when TESSDATA_PREFIX is unset."""


class Ocr(msgspec.Struct, frozen=True, kw_only=True):
    """Whether and how to read pages without a text layer, and images."""

    mode: OcrMode = "auto"
    """auto: pages without a usable text layer; off: none; force: every page."""
    languages: str = "eng"
    """Tesseract's language codes joined by `+`, e.g. `eng+deu`."""
    tessdata: str = ""
    """The directory of the `.traineddata` files; empty: the first of TESSDATA_PLACES with them."""
    names: Mapping[str, str] = msgspec.field(default_factory=dict)
    """The caller's name for each field (field name → environment variable), said in failures."""

    def setting(self, field: str) -> str:
        """`VARIABLE=value` for one field, as failures say it."""
        return f"{self.names.get(field, field)}={getattr(self, field)}"


OCR_AUTO = Ocr()


def tessdata_dir(ocr: Ocr) -> Path:
    """The directory of language data holding every language `ocr` asks for.

    Raises OcrUnavailable naming what is missing and how to install it.
    """
    languages = ocr.languages.split("+")
    places = [ocr.tessdata] if ocr.tessdata else sorted(_expand(TESSDATA_PLACES), reverse=True)
    for place in places:
        directory = Path(place)
        if all((directory / f"{language}.traineddata").is_file() for language in languages):
            return directory
    tessdata, mode = ocr.names.get("tessdata", "tessdata"), ocr.names.get("mode", "mode")
    found = [place for place in places if Path(place).is_dir()]
    if ocr.tessdata:
        where = f"not in {ocr.tessdata} ({tessdata})"
    else:
        where = f"not in {', '.join(found)}" if found else "nowhere: Tesseract is not installed"
    debian = " ".join(f"tesseract-ocr-{language}" for language in languages)
    raise OcrUnavailable(
        f"OCR needs Tesseract's language data for {ocr.setting('languages')} and found it "
        f"{where} (install tesseract-ocr {debian}, set "
        f"{tessdata} to its directory, or {mode}=off)"
    )


def _expand(patterns: tuple[str, ...]) -> list[str]:
    return [match for pattern in patterns for match in glob.glob(pattern)]


def problem(ocr: Ocr) -> str | None:
    """Why OCR as configured cannot run here, or None when it can (or is off)."""
    if ocr.mode == "off":
        return None
    try:
        tessdata_dir(ocr)
        import tesserocr  # noqa: F401 -- only whether it loads: no model is read here
    except OcrUnavailable as exc:
        return str(exc)
    except ImportError as exc:
        return f"OCR needs tesserocr, which cannot be loaded: {exc}"
    return None


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
