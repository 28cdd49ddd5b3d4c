"""Where Tesseract's language data is, and whether OCR as configured can run on this machine.

Apart from the pipeline's OCR reader (service.pipeline.ocr), which uses these, so that `docproc up`
can check OCR at start without loading the pipeline and the store into its supervisor (0.3 s and
~55 MB that process would keep for a few file checks).
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from service.errors import OcrUnavailable
from service.settings import ENVIRONMENT, Settings

OcrMode = Literal["auto", "off", "force"]

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


def configured(settings: Settings) -> Ocr:
    """OCR as configured, each setting named by its environment variable."""
    fields = {"mode": "ocr", "languages": "ocr_languages", "tessdata": "tessdata"}
    return Ocr(
        mode=settings.ocr,
        languages=settings.ocr_languages,
        tessdata=settings.tessdata,
        names={name: ENVIRONMENT[field] for name, field in fields.items()},
    )
