"""Text a terminal shows as it is, for the CLI's output and the human log lines alike."""

from __future__ import annotations

import re

# C0, DEL and C1 controls, the line and paragraph separators that some viewers break lines at,
# and lone surrogates, which no terminal's encoding can write.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CONTROL_IN_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escaped(character: str) -> str:
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (os.fsdecode's)
        return f"\\x{code - 0xDC00:02x}"
    return character.encode("unicode_escape").decode("ascii")


def printable(value: object, *, lines: bool = False) -> str:
    """`value` as text a terminal shows as it is: control characters (escape sequences that
    could retitle the window or recolour the screen, newlines that break a table or forge a log
    line) escaped, and the surrogates that stand for a file name's bytes that are not UTF-8,
    which no terminal's encoding can write, as those bytes ("bad\\xff.txt"); a lone one from the
    API as "\\ud800". With `lines`, newlines and tabs are kept: for text shown whole, as a
    document's."""
    text = "" if value is None else str(value)
    return (_CONTROL_IN_LINES if lines else _CONTROL).sub(lambda m: _escaped(m.group()), text)
