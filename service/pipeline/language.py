"""The language of a document's text, as an ISO 639-1 code, by CLD2 (pycld2).

CLD2's model is compiled into the extension: nothing is loaded at start or fetched at run time,
and one call on a few kilobytes costs tens of microseconds. It says itself when its answer is
unreliable (too little text, or no language clearly ahead), which becomes None here.
"""

from __future__ import annotations

import unicodedata

import pycld2

SAMPLE_CHARS = 1024
"""Characters looked at, half from the start and half from the middle of a longer text: some 150
words, which CLD2 (made for snippets of web pages) tells reliably, at a cost (about 30 µs) that
stays the same however long the document is. 2,048 cost a PDF of eight pages 2 % of its
extraction next to bare PDFium; small documents are a hot path too."""

# CLD2's codes that ISO 639-1 spells otherwise; codes of three letters or more (Cebuano, a bare
# script such as "xx-Latn") have no ISO 639-1 form and give None.
_ISO_639_1 = {"iw": "he", "jw": "jv", "zh-Hant": "zh", "sr-ME": "sr"}
# Besides surrogates and noncharacters, CLD2 refuses the control characters that normalisation
# keeps (line breaks and tabs are fine).
_REFUSED = frozenset({"Cs", "Cn", "Cc"})


def detect_language(text: str) -> str | None:
    """The text's language (ISO 639-1), or None when too short, mixed or unclear to tell."""
    sample = _sample(text)
    try:
        reliable, _, details = pycld2.detect(sample, isPlainText=True)
    except (pycld2.error, UnicodeEncodeError):
        # Rare (a noncharacter or a lone surrogate), so the slow filter is only paid here.
        kept = "".join(c for c in sample if c in "\n\t" or unicodedata.category(c) not in _REFUSED)
        try:
            reliable, _, details = pycld2.detect(kept, isPlainText=True)
        except (pycld2.error, UnicodeEncodeError):
            return None  # the language is a nicety: a text CLD2 cannot take is still indexed
    code = str(details[0][1])
    code = _ISO_639_1.get(code, code)
    return code if reliable and len(code) == 2 and code != "un" else None


def _sample(text: str) -> str:
    if len(text) <= SAMPLE_CHARS:
        return text
    half = SAMPLE_CHARS // 2
    middle = len(text) // 2
    # A document's start is often a cover page or a header of names; its middle is its prose.
    return text[:half] + "\n" + text[middle : middle + half]
