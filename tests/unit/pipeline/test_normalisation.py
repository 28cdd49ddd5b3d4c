from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import EmptyDocument
from service.pipeline import normalise
from service.pipeline.normalisation import MAX_LINE, single_line


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("cafe\u0301", "café"),
        ("a\x00b\x07c\x1bd\x7fe", "abcde"),
        ("col one\tcol two", "col one col two"),
        ("one\r\ntwo\rthree", "one\ntwo\nthree"),
        ("many    spaces   here", "many spaces here"),
        ("  leading\ntrailing  \n   both   ", "leading\ntrailing\nboth"),
        ("para one\n\n\n\n\npara two", "para one\n\npara two"),
        ("para one\n  \n \t \n\npara two", "para one\n\npara two"),
        ("\n\n  text  \n\n", "text"),
        ("non\xa0breaking\u2003em space", "non breaking em space"),
        ("zero\u200bwidth soft\xadhyphen \ufeffmark", "zerowidth softhyphen mark"),
        ("family: \U0001f468\u200d\U0001f469", "family: \U0001f468\u200d\U0001f469"),
        ("line\u2028separator\u2029paragraph", "line\nseparator\n\nparagraph"),
        ("page\fbreak", "page\nbreak"),
        ("caf\xe9\x85soft\xadhyphen\x9f end", "café\nsofthyphen end"),
        ("cafe\u0301\xa0au\xa0lait", "café au lait"),
    ],
    ids=["nfc", "controls", "tabs", "crlf", "spaces", "strip-lines", "blank-lines",
         "blank-lines-with-spaces", "strip-result", "unicode-spaces", "invisibles", "zwj-kept",
         "unicode-breaks", "form-feed", "latin-1-controls", "nfc-after-no-break-spaces"],
)  # fmt: skip
def test_normalisation_rules(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("the docu-\nment ends", "the document ends"),
        ("Jean-\nPaul Sartre", "Jean-Paul Sartre"),
        ("COVID-\n19 cases", "COVID-\n19 cases"),
        ("a list -\nnext", "a list -\nnext"),
        ("end of para-\n\ngraph", "end of para-\n\ngraph"),
        ("the docu-  \n  ment", "the document"),
    ],
    ids=["word", "capital", "digits", "dash", "paragraph", "spaces-around"],
)
def test_hyphenated_line_breaks_are_joined_on_request(raw: str, expected: str) -> None:
    assert normalise(raw, join_hyphenated=True) == expected


def test_hyphenated_line_breaks_stay_by_default() -> None:
    assert normalise("the docu-\nment") == "the docu-\nment"


@pytest.mark.parametrize("raw", ["", "   ", "\n\n\t\r\n", "\x00\x01\u200b"])
def test_nothing_left_is_an_empty_document(raw: str) -> None:
    with pytest.raises(EmptyDocument):
        normalise(raw)


@settings(database=None, derandomize=True, max_examples=300)
@given(st.text(st.characters(codec="utf-8"), min_size=1))
def test_normalising_twice_changes_nothing(raw: str) -> None:
    try:
        once = normalise(raw)
    except EmptyDocument:
        return
    assert normalise(once) == once
    assert once == once.strip()
    assert "\n\n\n" not in once
    assert "  " not in once
    assert all(line == line.strip() for line in once.split("\n"))


def test_a_title_or_author_is_one_line_of_bounded_length() -> None:
    assert single_line("  Annual\n report\u200b 2026 ") == "Annual report 2026"
    assert single_line(" \n\t") is None
    words = single_line("lighthouse " * 1_000_000)  # a megabyte of "title"
    assert words is not None
    assert len(words) <= MAX_LINE
    assert words.endswith("lighthouse…")
    unbroken = single_line("x" * 5000)
    assert unbroken == "x" * (MAX_LINE - 1) + "…"
