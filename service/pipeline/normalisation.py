"""One shape for all extracted text: NFC, no control characters, single spaces, paragraphs split
by exactly one blank line.

The common path is built from str and bytes methods (`split`, `strip`, `replace`, `translate`),
which run at C speed, and from regular expressions only where they start with a literal of two or
more characters, which the regex engine scans for without trying a match at each position: a
pass of a regex that stops at every space or letter costs as much as parsing the HTML the text
came from. Text that holds anything unusual takes the slower, general path.
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
# Two literal spaces give the regex engine a two-character prefix to scan for; "  +" has a
# one-character one, and stops to try a match at every space (1.9 against 1.2 ms a megabyte).
_SPACES = re.compile("   *")
_BLANK_LINES = re.compile("\n\n\n+")
# The printable characters of Latin-1, and the line break that separates lines.
_PRINTABLE_LATIN_1 = bytes(byte for byte in range(256) if chr(byte).isprintable()) + b"\n"
_HYPHENATED = re.compile(r"(?<=[^\W\d_])[-\u2010]\n(?=([^\W\d_]))")


def normalise(text: str, *, join_hyphenated: bool = False) -> str:
    """Normalised text; raises EmptyDocument when nothing but whitespace and controls is left."""
    if not text.isascii():
        # No-break spaces first: they are often the only characters of Western text beyond
        # ASCII, which then needs no NFC check (2 ms a megabyte). Neither kind of space composes
        # with anything, so the order changes nothing.
        if "\xa0" in text:
            text = text.replace("\xa0", " ")
        if not text.isascii() and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
    if "\t" in text:
        text = text.replace("\t", " ")
    lines = text.split("\n")
    if not _printable(text, lines):
        lines = _clean(text).split("\n")
    # No whitespace but " " is left (tabs, odd spaces and line breaks are gone), so stripping
    # the lines leaves blank ones empty.
    text = "\n".join(map(str.strip, lines))
    if "  " in text:
        text = _SPACES.sub(" ", text)  # one pass; `while "  " in text: replace` took three
    # Lines are stripped, so empty paragraphs are runs of three or more line breaks.
    text = _BLANK_LINES.sub("\n\n", text).strip("\n")
    # The regex tries every position: looked for only where a line ends with a hyphen.
    if join_hyphenated and ("-\n" in text or "\u2010\n" in text):
        text = _HYPHENATED.sub(_join_hyphenated_word, text)
    if not text:
        raise EmptyDocument("the document contains no text")
    return text


def _printable(text: str, lines: list[str]) -> bool:
    """Whether `lines` hold only printable characters (`str.isprintable`).

    Text within Latin-1 (English, most Western European languages) is checked as bytes, for a
    sixth of what `isprintable` costs (0.3-0.4 against 2.6 ms a megabyte): encoding it is a
    copy, and deleting the printable bytes leaves the others.
    """
    try:
        return not text.encode("latin-1").translate(None, _PRINTABLE_LATIN_1)
    except UnicodeEncodeError:
        return all(map(str.isprintable, lines))


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
