"""RTF: the text of the document, and the title, author and times of its \\info group.

One pass over the control words with a stack of groups. Not striprtf: it converts in one call
that cannot check the CPU budget or count characters as it goes, skips a \\bin block only inside
a picture (elsewhere its bytes are read as markup, braces and all), and matches hyperlinks with a
regular expression that is quadratic on a long line.
"""

from __future__ import annotations

import codecs
import re
from datetime import datetime

from service.errors import CorruptFile, TooLarge
from service.pipeline.blocks import Blocks
from service.pipeline.limits import CpuBudget
from service.pipeline.models import RawDocument
from service.pipeline.office.package import aware

MAX_DEPTH = 1024
"""Groups nested at most; Word nests a few dozen deep. The stack costs no recursion, but a
file of nothing but opening braces is not a document."""
_TOKEN = re.compile(
    rb"\\([a-zA-Z]{1,32})(-?\d{1,10})? ?"  # a control word and its parameter
    rb"|\\'([0-9a-fA-F]{2})"  # a byte in the code page
    rb"|\\(.)"  # a control symbol
    rb"|([{}])"
    rb"|[\r\n]+"  # line ends in RTF are not text
    rb"|([^\\{}\r\n]+)",  # text
    re.DOTALL,
)
_TOKENS_BETWEEN_CHECKS = 4096
_SKIPPED = frozenset({
    b"fonttbl", b"colortbl", b"stylesheet", b"listtable", b"listoverridetable", b"revtbl",
    b"rsidtbl", b"generator", b"pict", b"object", b"objdata", b"themedata", b"datastore",
    b"colorschememapping", b"latentstyles", b"xmlnstbl", b"fldinst", b"filetbl", b"bkmkstart",
    b"bkmkend", b"shpinst", b"nonshppict", b"pgdsctbl", b"mmathPr", b"wgrffmtfilter",
})  # fmt: skip
"""Destinations that hold no text of the document (tables, pictures, field instructions)."""
_INFO_TEXT = {b"title": "title", b"author": "author"}
_INFO_TIMES = {b"creatim": "created", b"revtim": "modified"}
_TIME_PARTS = {b"yr": 0, b"mo": 1, b"dy": 2, b"hr": 3, b"min": 4}
_WORDS = {
    b"par": "\n", b"line": "\n", b"sect": "\n\n", b"page": "\n\n", b"tab": "\t",
    b"cell": " | ", b"row": "\n", b"emdash": "\u2014", b"endash": "\u2013",
    b"bullet": "\u2022", b"lquote": "\u2018", b"rquote": "\u2019", b"ldblquote": "\u201c",
    b"rdblquote": "\u201d", b"emspace": " ", b"enspace": " ",
}  # fmt: skip
_SYMBOLS = {
    b"~": "\u00a0", b"_": "\u2011", b"-": "", b"\\": "\\", b"{": "{", b"}": "}",
    b"\n": "\n", b"\r": "\n",  # a backslash ending a line is a \par
}  # fmt: skip


class _Group:
    """What a group inherits from its parent, and may change for its own content."""

    __slots__ = ("field", "skip", "ucskip")

    def __init__(self, skip: bool = False, ucskip: int = 1, field: str = "") -> None:
        self.skip = skip
        self.ucskip = ucskip
        self.field = field
        """The \\info field this group's text goes to ("title", "created"...), or ""."""

    def copy(self) -> _Group:
        return _Group(self.skip, self.ucskip, self.field)


def read_rtf(data: bytes, budget: CpuBudget) -> RawDocument:
    """The text, paragraphs on lines of their own; TooLarge past `max_chars` (counted as text is
    found), the CPU budget (checked every few thousand tokens) or `MAX_DEPTH` groups."""
    reader = _Reader(data, budget)
    try:
        reader.read()
    except (TooLarge, MemoryError):
        raise
    except Exception as exc:
        raise CorruptFile(f"not a valid RTF document: {exc}") from exc
    return RawDocument(
        text=reader.blocks.text(),
        title=reader.info.get("title", "").strip() or None,
        author=reader.info.get("author", "").strip() or None,
        created=reader.times.get("created"),
        modified=reader.times.get("modified"),
    )


class _Reader:
    def __init__(self, data: bytes, budget: CpuBudget) -> None:
        self.data = data
        self.blocks = Blocks(budget, "the RTF document")
        self.budget = budget
        self.codec = "cp1252"
        self.out: list[str] = []
        self.chars = 0
        self.pending = bytearray()
        """Bytes of the code page (\\'xx and 8-bit text), decoded when text of another kind
        follows: a character of a double-byte code page is two of them."""
        self.info: dict[str, str] = {}
        self.time: list[int] = [0, 1, 1, 0, 0]
        self.times: dict[str, datetime | None] = {}
        self.skip_chars = 0

    def read(self) -> None:
        group = _Group()
        stack: list[_Group] = []
        position = tokens = 0
        size = len(self.data)
        while position < size:
            token = _TOKEN.match(self.data, position)
            if token is None:  # a lone backslash at the end
                break
            position = token.end()
            tokens += 1
            if tokens % _TOKENS_BETWEEN_CHECKS == 0:
                self.budget.check("in the RTF")
            word, parameter, byte, symbol, brace, text = token.groups()
            if brace == b"{":
                self._flush(group)
                stack.append(group)
                if len(stack) > MAX_DEPTH:
                    raise TooLarge(
                        f"the RTF nests groups more than {MAX_DEPTH:,} deep; docproc reads at "
                        f"most {MAX_DEPTH:,}"
                    )
                group = group.copy()
            elif brace == b"}":
                self._flush(group)
                self._close(group)
                if not stack:
                    break  # the document's group is closed: what follows is not RTF
                group = stack.pop()
            elif word is not None:
                if word == b"bin":
                    self._flush(group)
                    # Raw bytes of a picture or object, whatever they look like: jumped over.
                    position += max(int(parameter or 0), 0)
                    continue
                self._word(group, word, parameter)
            else:
                self._content(group, byte, symbol, text)
        self._flush(group)
        self.blocks.add("".join(self.out))

    def _content(
        self, group: _Group, byte: bytes | None, symbol: bytes | None, text: bytes | None
    ) -> None:
        """A byte of the code page, a control symbol, or a run of text."""
        if byte is not None:
            if not group.skip and not self._skipped():
                self.pending.append(int(byte, 16))
        elif symbol is not None:
            if symbol == b"*":
                # An optional destination: skipped, unless it is one we know to read.
                group.skip = True
            elif symbol in _SYMBOLS:
                self._text(group, _SYMBOLS[symbol])
        elif text is not None:
            self._flush(group)
            if self.skip_chars:
                skipped = min(self.skip_chars, len(text))
                self.skip_chars -= skipped
                text = text[skipped:]
            self._text(group, text.decode(self.codec, "replace"))

    def _word(self, group: _Group, word: bytes, parameter: bytes | None) -> None:
        self._flush(group)
        if word in _SKIPPED:
            group.skip = True
        elif word == b"info":
            group.field = "info"
        elif group.field and (word in _INFO_TEXT or word in _INFO_TIMES):
            group.field = _INFO_TEXT.get(word) or _INFO_TIMES[word]
            group.skip = False  # \info's fields follow \*-less, but are not body text
            self.time = [0, 1, 1, 0, 0]
        elif word in _TIME_PARTS and parameter is not None and group.field in _INFO_TIMES.values():
            self.time[_TIME_PARTS[word]] = int(parameter)
        elif word == b"ansicpg" and parameter is not None:
            self.codec = _codec(int(parameter), self.codec)
        elif word == b"uc" and parameter is not None:
            group.ucskip = max(int(parameter), 0)
        elif word == b"u" and parameter is not None:
            self._text(group, chr(int(parameter) % 0x10000))
            self.skip_chars = group.ucskip  # the fallback for readers without Unicode
        elif word == b"row" and self.out and self.out[-1] == _WORDS[b"cell"]:
            self.out[-1] = "\n"  # a row's last cell ends the line, not another cell
        elif word in _WORDS:
            self._text(group, _WORDS[word])

    def _skipped(self) -> bool:
        if self.skip_chars:
            self.skip_chars -= 1
            return True
        return False

    def _text(self, group: _Group, text: str) -> None:
        if group.skip or not text:
            return
        if group.field in _INFO_TEXT.values():
            self.info[group.field] = self.info.get(group.field, "") + text[:1000]
            return
        if group.field:
            return  # other \info fields, and times: only their control words count
        self.out.append(text)
        self.chars += len(text)
        if len(self.out) % 256 == 0:
            self.blocks.check(self.chars)

    def _flush(self, group: _Group) -> None:
        if self.pending:
            text = bytes(self.pending).decode(self.codec, "replace")
            self.pending.clear()
            self._text(group, text)

    def _close(self, group: _Group) -> None:
        """At the end of a \\creatim or \\revtim group, its time."""
        if group.field in _INFO_TIMES.values() and group.field not in self.times:
            year, month, day, hour, minute = self.time
            try:
                self.times[group.field] = aware(datetime(year, month, day, hour, minute))
            except ValueError:
                self.times[group.field] = None  # a bad date costs the date, not the document


def _codec(codepage: int, current: str) -> str:
    try:
        return codecs.lookup(f"cp{codepage}").name
    except LookupError:
        return current
