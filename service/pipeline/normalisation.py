"""One shape for all extracted text: NFC, no control characters, single spaces, paragraphs split
by exactly one blank line.

Built from str methods rather than regular expressions on the common path: on a megabyte of text a
regex pass costs as much as parsing the HTML it came from, while `split`, `strip`, `replace` and
`isprintable` run at C speed. Text that holds anything unusual takes the slower, general path.
"""

from __future__ import annotations

import re
import unicodedata

from service.errors import EmptyDocument

_LINE_BREAK = re.compile("\r\n?|[\v\f\x1c-\x1e\x85\u2028]")
_PARAGRAPH_BREAK = "\u2029"
_SPACE = re.compile("[\t\xa0\u1680\u2000-\u200a\u202f\u205f\u3000]")
# Control characters, plus the invisible soft hyphen, zero-width space, word joiner and stray
# byte-order marks. Joiners (U+200C, U+200D) stay: Persian and emoji sequences need them.
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\xad\u200b\u2060\ufeff]")
_SPACES = re.compile("  +")
_HYPHENATED = re.compile(r"(?<=[^\W\d_])[-\u2010]\n(?=([^\W\d_]))")


def normalise(text: str, *, join_hyphenated: bool = False) -> str:
    """Normalised text; raises EmptyDocument when nothing but whitespace and controls is left."""
    if not text.isascii():
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if "\xa0" in text:
            text = text.replace("\xa0", " ")
    if "\t" in text:
        text = text.replace("\t", " ")
    lines = text.split("\n")
    if not all(map(str.isprintable, lines)):
        lines = _clean(text).split("\n")
    text = "\n".join(map(str.strip, lines))
    if "  " in text:
        text = _SPACES.sub(" ", text)  # one pass; `while "  " in text: replace` took three
    # Lines are stripped, so empty paragraphs are runs of blank lines: one split drops them all.
    text = "\n\n".join(filter(None, map(str.strip, text.split("\n\n"))))
    # The regex tries every position: looked for only where a line ends with a hyphen.
    if join_hyphenated and ("-\n" in text or "\u2010\n" in text):
        text = _HYPHENATED.sub(_join_hyphenated_word, text)
    if not text:
        raise EmptyDocument("the document contains no text")
    return text


MAX_LINE = 1000
"""Characters kept of a title or an author: a document's metadata is whatever its writer put
there, and a megabyte of "title" would be carried in every search hit and list."""


def single_line(text: str | None) -> str | None:
    """A title-like string on one normalised line of at most MAX_LINE characters (cut at a word
    when one ends in the last tenth, marked with "…"), or None when nothing is left of it."""
    if text is None:
        return None
    # Cut before normalising too, so that a huge value costs no more than a long one.
    line = " ".join(unicodedata.normalize("NFC", _INVISIBLE.sub("", text[: 4 * MAX_LINE])).split())
    if len(line) > MAX_LINE:
        cut = line.rfind(" ", MAX_LINE - MAX_LINE // 10, MAX_LINE)
        line = line[: cut if cut > 0 else MAX_LINE - 1].rstrip() + "…"
    return line or None


def _clean(text: str) -> str:
    """The general path: line breaks to \n, odd spaces to ' ', controls and invisibles gone."""
    text = _LINE_BREAK.sub("\n", text).replace(_PARAGRAPH_BREAK, "\n\n")
    return _INVISIBLE.sub("", _SPACE.sub(" ", text))


def _join_hyphenated_word(match: re.Match[str]) -> str:
    # "docu-\nment" is one word broken by the line; before a capital the hyphen is the word's own
    # ("Jean-\nPaul"), so only the line break goes.
    return "" if match.group(1).islower() else match.group(0)[0]
