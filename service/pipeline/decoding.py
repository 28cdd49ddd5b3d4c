"""Bytes to text: byte-order marks and strict UTF-8 first, charset-normalizer for the rest."""

from __future__ import annotations

import codecs
import contextlib
import re

import msgspec
from charset_normalizer import from_bytes

from service.errors import CorruptFile, UnsupportedType

# UTF-32 marks first: the UTF-32-LE mark begins with the UTF-16-LE one.
_BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# C0 controls other than \t \n \v \f \r and ESC (which coloured logs carry): text has almost none.
_BINARY_BYTES = bytes([*range(0x00, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20)])
_BINARY_CHARACTERS = re.compile(f"[{re.escape(_BINARY_BYTES.decode('latin-1'))}]")
_SAMPLE_SIZE = 8192
_MAX_BINARY_SHARE = 0.02

# Seven-bit encodings: their bytes are all ASCII, so UTF-8 would "decode" them into escape codes
# and base64 (RFC 1468 ISO-2022-JP, RFC 1557 ISO-2022-KR, RFC 1922 ISO-2022-CN, RFC 1843 HZ,
# RFC 2152 UTF-7). Each is recognised by its shifts, and taken only when the whole text decodes.
_ISO_2022_JP = re.compile(rb"\x1b(?:\$[@B]|\$\((?:[CDOPQ])|\([BIJ]|\$A|\.[AF])")
_ISO_2022_JP_CODECS = ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_2004",
                       "iso2022_jp_3")  # fmt: skip
_ISO_2022_KR = b"\x1b$)C"
_ISO_2022_CN = re.compile(rb"\x1b\$(?:\)[AEG]|\*H|\+[I-M])")
_UTF7_SHIFT = re.compile(rb"\+([A-Za-z0-9/+]+)")
_HZ_SHIFT = re.compile(rb"~\{(.*?)~\}", re.DOTALL)

_DECLARED_CHARSET = re.compile(
    rb"""<meta[^>]*?charset\s*=\s*["']?\s*([\w.:-]+)|<\?xml[^>]*?encoding\s*=\s*["']([\w.:-]+)""",
    re.IGNORECASE,
)


class Decoded(msgspec.Struct, frozen=True, kw_only=True):
    """Text decoded from bytes, and the encoding that decoded it."""

    text: str
    encoding: str


def decode(data: bytes) -> Decoded:
    """Decode a text document, or raise UnsupportedType when the bytes are not text."""
    for mark, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return _decode_strictly(data[len(mark) :], encoding)
    utf16 = _bomless_utf16(data)
    if utf16 is not None:
        return utf16
    if data.isascii():
        seven_bit = _seven_bit(data)
        if seven_bit is not None:
            return seven_bit
    if _looks_binary(data[:_SAMPLE_SIZE]):
        raise UnsupportedType("binary data, not a text document")
    # Valid UTF-8 wins even over a <meta> that says otherwise: mislabelled pages are far more
    # common than legacy text that happens to be valid UTF-8.
    try:
        return Decoded(text=data.decode("utf-8"), encoding="utf-8")
    except UnicodeDecodeError:
        pass
    declared = _declared_encoding(data[:1024])
    if declared is not None:
        try:
            return Decoded(text=data.decode(declared), encoding=declared)
        except UnicodeDecodeError:
            pass
    return _guess(data)


def _decode_strictly(data: bytes, encoding: str) -> Decoded:
    try:
        return Decoded(text=data.decode(encoding), encoding=encoding)
    except UnicodeDecodeError as exc:
        raise CorruptFile(f"marked as {encoding} text but not valid {encoding}: {exc}") from exc


def _bomless_utf16(data: bytes) -> Decoded | None:
    """UTF-16 without a byte-order mark, recognised by the NUL half of each Latin character."""
    sample = data[: _SAMPLE_SIZE & ~1]
    half = len(sample) // 2
    if half < 2:
        return None
    even_nuls, odd_nuls = sample[0::2].count(0), sample[1::2].count(0)
    if odd_nuls > 0.3 * half and even_nuls < 0.02 * half:
        encoding = "utf-16-le"
    elif even_nuls > 0.3 * half and odd_nuls < 0.02 * half:
        encoding = "utf-16-be"
    else:
        return None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        return None
    # Arrays of 16-bit numbers have the same NUL pattern; their "text" is mostly controls.
    if len(_BINARY_CHARACTERS.findall(text, 0, half)) > _MAX_BINARY_SHARE * half:
        return None
    return Decoded(text=text, encoding=encoding)


def _seven_bit(data: bytes) -> Decoded | None:
    """ASCII bytes in ISO-2022-JP or -KR, HZ or UTF-7; UnsupportedType for ISO-2022-CN, which
    Python cannot decode; None for plain ASCII."""
    if b"\x1b" in data:
        if _ISO_2022_KR in data:
            return _decode_strictly(data, "iso2022_kr")
        if _ISO_2022_CN.search(data):
            raise UnsupportedType("ISO-2022-CN text cannot be decoded; convert it to UTF-8")
        if _ISO_2022_JP.search(data):
            for encoding in _ISO_2022_JP_CODECS:
                with contextlib.suppress(UnicodeDecodeError):
                    return Decoded(text=data.decode(encoding), encoding=encoding)
            raise CorruptFile("shifts into ISO-2022-JP but is not valid ISO-2022-JP text")
    # A tilde first: one byte is found at memory speed, while looking for two costs 0.8 ms a
    # megabyte, and most text has no tilde at all.
    if b"~" in data and b"~{" in data:
        hz = _shifted(data, "hz", _HZ_SHIFT)
        if hz is not None:
            return hz
    if b"+" in data:
        return _shifted(data, "utf-7", _UTF7_SHIFT)
    return None


def _shifted(data: bytes, encoding: str, shift: re.Pattern[bytes]) -> Decoded | None:
    """Text in `encoding` when all of it decodes and every shifted run holds letters beyond ASCII
    (an encoder shifts for nothing else): "C++" or "a+b" stay plain ASCII.

    The runs are looked at before the whole is decoded: in a page that only has a "+" in a
    script, the first run ends the matter, where decoding it all as UTF-7 costs 4 ms a megabyte.
    """
    for run in shift.finditer(data):
        try:
            shifted = run[0].decode(encoding)
        except UnicodeDecodeError:
            return None
        if shifted.isascii() or not shifted.isprintable():
            return None
    try:
        return Decoded(text=data.decode(encoding), encoding=encoding)
    except UnicodeDecodeError:
        return None


def _looks_binary(sample: bytes) -> bool:
    binary = len(sample) - len(sample.translate(None, _BINARY_BYTES))
    return binary > _MAX_BINARY_SHARE * len(sample)


def _declared_encoding(head: bytes) -> str | None:
    """The charset a `<meta>` or XML declaration names, as browsers read it."""
    match = _DECLARED_CHARSET.search(head)
    if match is None:
        return None
    label = (match.group(1) or match.group(2)).decode("ascii")
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    if name.startswith(("utf-16", "utf-32")):
        return None  # an 8-bit page cannot really be UTF-16; the HTML standard ignores the claim
    if name in {"latin-1", "iso8859-1", "ascii"}:
        return "cp1252"  # what every browser does with these labels
    return name


def _guess(data: bytes) -> Decoded:
    matches = list(from_bytes(data))
    if not matches:
        raise UnsupportedType("binary data, or text in an encoding docproc cannot recognise")
    # On short text charset-normalizer cannot tell Western code pages apart and ranks them
    # arbitrarily (cp775 for French, say); among equally clean candidates cp1252, by far the most
    # common, wins.
    least_mess = min(match.chaos for match in matches)
    for match in matches:
        if match.chaos <= least_mess and "cp1252" in match.could_be_from_charset:
            try:
                return Decoded(text=data.decode("cp1252"), encoding="cp1252")
            except UnicodeDecodeError:
                break
    best = matches[0]
    return Decoded(text=str(best), encoding=codecs.lookup(best.encoding).name)
