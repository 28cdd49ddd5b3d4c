"""Which of a workbook's cell styles show dates and times, and a date's serial number as text.

A date is stored as a number of days; only the cell's number format says it is one.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from lxml import etree

_BUILTIN_DATES = frozenset({14, 15, 16, 17, 18, 19, 20, 21, 22, 45, 46, 47})
"""The built-in number formats that show dates or times (ECMA-376, part 1, 18.8.30)."""
_LITERAL = re.compile(r'"[^"]*"|\[[^\]]*\]|\\.|_.|\*.')
"""Quoted text, [colours and locales], escaped characters and padding in a format code."""
_DATE_PART = re.compile(r"[dmyhs]", re.IGNORECASE)
_LAST_SERIAL = 2_958_465
"""9999-12-31, the last day a workbook can hold."""


def date_styles(styles: etree._Element | None) -> frozenset[int]:
    """The indexes of the cell formats (a cell's `s`) whose number format is a date or time."""
    if styles is None:
        return frozenset()
    custom = {fmt.get("numFmtId"): fmt.get("formatCode") or "" for fmt in styles.iter("{*}numFmt")}
    formats = styles.find("{*}cellXfs")
    if formats is None:
        return frozenset()
    dates = set()
    for index, xf in enumerate(formats.iterchildren("{*}xf")):
        number_format = xf.get("numFmtId") or "0"
        builtin = number_format.isdigit() and int(number_format) in _BUILTIN_DATES
        if builtin or _shows_a_date(custom.get(number_format, "")):
            dates.add(index)
    return frozenset(dates)


def _shows_a_date(code: str) -> bool:
    positive = code.split(";", 1)[0]
    return _DATE_PART.search(_LITERAL.sub("", positive)) is not None


def serial_date(value: str, date1904: bool) -> str:
    """A serial number as an ISO date, time, or both; the value itself if it is none."""
    try:
        serial = float(value)
    except ValueError:
        return value
    if not 0 <= serial <= _LAST_SERIAL:
        return value
    # Excel counts 1900-02-29, which was not a day: serials before it start a day later.
    # A workbook's times name no zone.
    epoch = datetime(1904, 1, 1) if date1904 else datetime(1899, 12, 31 if serial < 60 else 30)
    moment = epoch + timedelta(seconds=round(serial * 86400))
    if serial < 1:
        return moment.time().isoformat()
    if moment.time() == datetime.min.time():
        return moment.date().isoformat()
    return moment.isoformat(sep=" ")
