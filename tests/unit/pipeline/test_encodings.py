from __future__ import annotations

import codecs
from collections.abc import Callable

import pytest

from service.errors import CorruptFile, UnsupportedType
from service.pipeline import extract
from tests.corpus import Sample, cp1252_text_sample, utf16_text_sample

GREETING = "Grüße aus Köln: naïve café, “curly quotes” and the euro sign €."


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (GREETING.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + GREETING.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF16_LE + GREETING.encode("utf-16-le"), "utf-16-le"),
        (codecs.BOM_UTF16_BE + GREETING.encode("utf-16-be"), "utf-16-be"),
        (GREETING.encode("utf-16-le"), "utf-16-le"),
        (GREETING.encode("utf-16-be"), "utf-16-be"),
        (codecs.BOM_UTF32_LE + GREETING.encode("utf-32-le"), "utf-32-le"),
        (GREETING.encode("cp1252"), "cp1252"),
    ],
    ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom", "utf16le", "utf16be", "utf32le-bom",
         "cp1252"],
)  # fmt: skip
def test_text_in_common_encodings_decodes_to_the_same_words(data: bytes, encoding: str) -> None:
    extracted = extract(data, "greeting.txt")

    assert extracted.text == GREETING
    assert extracted.encoding == encoding
    assert extracted.detected_type == "text"


@pytest.mark.parametrize("build", [cp1252_text_sample, utf16_text_sample])
def test_corpus_text_samples_decode(build: Callable[[], Sample]) -> None:
    sample = build()
    extracted = extract(sample.data, sample.filename)

    assert extracted.encoding == sample.encoding
    assert all(phrase in extracted.text for phrase in sample.present)


def test_latin1_text_decodes_with_its_accents() -> None:
    text = "Grüße aus Köln, schöne Größe, déjà vu."

    assert extract(text.encode("latin-1")).text == text


def test_an_html_page_is_decoded_as_its_meta_charset_declares() -> None:
    page = '<html><head><meta charset="koi8-r"></head><body><p>Привет, мир</p></body></html>'

    extracted = extract(page.encode("koi8-r"), "page.html")

    assert extracted.text == "Привет, мир"
    assert extracted.encoding == "koi8-r"


@pytest.mark.parametrize("label", ["ISO-8859-1", "latin1", "us-ascii"])
def test_a_page_declared_latin1_is_read_as_cp1252_like_browsers_do(label: str) -> None:
    # Guessing alone reads some of these as cp1250 or cp775.
    page = f'<meta charset="{label}"><p>Price 5 € “quoted” café</p>'

    extracted = extract(page.encode("cp1252"), "page.html")

    assert extracted.text == "Price 5 € “quoted” café"
    assert extracted.encoding == "cp1252"


def test_a_byte_order_mark_over_bytes_that_do_not_follow_it_is_corrupt() -> None:
    with pytest.raises(CorruptFile, match="utf-16"):
        extract(codecs.BOM_UTF16_LE + b"\x00\xd8\x41")


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("日本語の文書です。カタカナとひらがな。", "iso2022_jp"),
        ("半角ｶﾀｶﾅの混じる文書。", "iso2022_jp_ext"),
        ("한국어 문서입니다. 잘 읽히나요?", "iso2022_kr"),
        ("中文文档，简体字。", "hz"),  # noqa: RUF001 -- the fullwidth comma is Chinese punctuation
        ("Grüße, 日本語 and a smile ☺ in UTF-7.", "utf-7"),
    ],
)
def test_seven_bit_encodings_are_decoded_not_stored_as_escape_codes(
    text: str, encoding: str
) -> None:
    data = text.encode(encoding)
    assert data.isascii(), "all of them are valid UTF-8 too"

    extracted = extract(data, "note.txt")

    assert (extracted.text, extracted.encoding) == (text, encoding)


def test_an_iso_2022_jp_web_page_is_read_as_such() -> None:
    page = '<html><head><meta charset="iso-2022-jp"><title>題名</title></head><body><p>本文</p>'

    extracted = extract(page.encode("iso2022_jp"), "page.html")

    assert (extracted.title, extracted.text) == ("題名", "本文")


def test_iso_2022_cn_is_refused_by_name() -> None:
    data = b"\x1b$)A\x0e=;;;\x0f text"

    with pytest.raises(UnsupportedType, match="ISO-2022-CN"):
        extract(data, "note.txt")


@pytest.mark.parametrize(
    "text",
    [
        "C++ and 1+1=2, call +49 30 123456, a+b-c, foo+bar@example.com",
        "+ADw-script+AD4- is ASCII in UTF-7 clothing",  # shifted runs of plain ASCII
        "\x1b[31mred\x1b[0m: a log with colours",
        "~{ braces ~} in a shell script",
    ],
)
def test_ascii_that_merely_looks_shifted_stays_as_it_is(text: str) -> None:
    extracted = extract(text.encode(), "note.txt")

    assert extracted.encoding == "utf-8"
    assert extracted.text == text.replace("\x1b", "")
