"""Overlapping chunks of text, cut on paragraph and sentence boundaries.

The text is first cut into sentences (spans without surrounding whitespace); a sentence longer
than a chunk is cut into its words, and a word longer than a chunk anywhere. Chunks are packed
from whole sentences, and each next chunk starts with the last sentences of the one before, so
that consecutive chunks share up to `overlap` characters.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from service.pipeline.limits import NO_LIMITS, Limits
from service.pipeline.models import Chunk

# The whitespace after a sentence: after ".", "!", "?" or "…" and any closing quotes or brackets;
# after CJK full stops, even without whitespace; and any blank line. A match starts with the
# character that opens a gap — a stop, or the first line break of a blank line — so that the regex
# engine skips in C to where one can begin (a pattern that starts with a set of characters is
# searched that way) instead of trying the pattern at every character: 124 → 37 µs for 2 KB of
# prose. What follows it is told by a lookbehind at that character. A stop after a stop never
# starts a gap (the second lookbehind), and a line break after another in one run of spaces is
# never reached (the first took the run, every gap ending with all the whitespace after it); no
# alternative backtracks (possessive quantifiers), so a megabyte of dots or spaces costs one
# pass, not one per character. A blank line's gap begins at the spaces before its line break
# (`_sentences` finds where).
_SENTENCE_GAP = re.compile(
    r"[.!?\u2026\u3002\uff01\uff1f\n](?:"
    r"(?<=[.!?\u2026])(?<![.!?\u2026][.!?\u2026])"
    r"(?P<stop>[.!?\u2026]*+[\"'\u2019\u201d\u00bb)\]]*+)\s++"
    r"|(?<=[\u3002\uff01\uff1f])[\u3002\uff01\uff1f]*+\s*+"
    r"|(?<=\n)[^\S\n]*+\n\s*+"
    r")"
)
_WORD = re.compile(r"\S+")
_WORD_START = re.compile(r"(?<!\S)\S")


class _Span(NamedTuple):
    start: int
    end: int
    closes_paragraph: bool


def chunk_text(
    text: str, *, size: int = 1000, overlap: int = 150, limits: Limits = NO_LIMITS
) -> list[Chunk]:
    """Chunks of at most `size` characters; consecutive ones share up to `overlap` characters.
    TooLarge once there would be more than `limits.max_chunks`."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, not {size}")
    if not 0 <= overlap < size:
        raise ValueError(
            f"overlap must be at least 0 and smaller than size ({size}), not {overlap}"
        )
    spans = _sentences(text, size)
    chunks: list[Chunk] = []
    first = 0
    start = spans[0].start if spans else 0
    most = limits.max_chunks
    while first < len(spans):
        if most is not None and len(chunks) >= most:
            raise limits.exceeded("max_chunks", "the text makes too many chunks")
        last = _last_sentence(spans, first, start, size)
        end = spans[last].end
        chunks.append(Chunk(position=len(chunks), start=start, end=end, text=text[start:end]))
        first = last + 1
        if first < len(spans):
            start = _next_start(text, spans, last, start, size=size, overlap=overlap)
    return chunks


def _sentences(text: str, size: int) -> list[_Span]:
    spans: list[_Span] = []
    start = len(text) - len(text.lstrip())
    for gap in _SENTENCE_GAP.finditer(text):
        following = text[gap.end() : gap.end() + 1]
        if gap["stop"] is not None and following.islower() and "\n" not in gap[0]:
            continue  # "e.g. this", "approx. ten": an abbreviation, not the end of a sentence
        end = gap.start() + len(gap[0].rstrip())
        if gap[0][0] == "\n":
            # A blank line: the sentence ends before the spaces that lead to it. No line break is
            # among them (the first would have started the gap), and no gap ends inside them.
            end = start + len(text[start:end].rstrip())
        if end > start:
            spans.extend(_fitting(text, _Span(start, end, gap[0].count("\n") > 1), size))
        start = gap.end()
    end = len(text.rstrip())
    if end > start:
        spans.extend(_fitting(text, _Span(start, end, True), size))
    return spans


def _fitting(text: str, sentence: _Span, size: int) -> list[_Span]:
    """The sentence itself, or, when it is longer than a chunk, its words (each cut into pieces
    of `size` if need be), so that packing and overlap can work word by word."""
    if sentence.end - sentence.start <= size:
        return [sentence]
    words: list[_Span] = []
    for word in _WORD.finditer(text, sentence.start, sentence.end):
        start, end = word.span()
        words.extend(
            _Span(piece, min(piece + size, end), False) for piece in range(start, end, size)
        )
    words[-1] = words[-1]._replace(closes_paragraph=sentence.closes_paragraph)
    return words


def _last_sentence(spans: list[_Span], first: int, start: int, size: int) -> int:
    """The last sentence of a chunk that begins at `start`: as many as fit, though a paragraph's
    end is preferred while it still fills half the chunk."""
    last, paragraph_end = first, -1
    while last + 1 < len(spans) and spans[last + 1].end - start <= size:
        if spans[last].closes_paragraph:
            paragraph_end = last
        last += 1
    if (
        not spans[last].closes_paragraph
        and paragraph_end >= 0
        and spans[paragraph_end].end - start >= size // 2
    ):
        return paragraph_end
    return last


def _next_start(
    text: str, spans: list[_Span], last: int, start: int, *, size: int, overlap: int
) -> int:
    """Where the chunk after one ending with sentence `last` begins.

    At the earliest whole sentence within `overlap` of the end; when even the last sentence is
    longer than that, at the earliest word within it. Never so early that the next sentence no
    longer fits, nor at or before this chunk's own start.
    """
    end, following = spans[last].end, spans[last + 1]
    earliest = max(end - overlap, following.end - size, start + 1)
    sentence = last + 1
    while sentence > 0 and spans[sentence - 1].start >= earliest:
        sentence -= 1
    if sentence <= last:
        return spans[sentence].start
    word = _WORD_START.search(text, earliest, end)
    return word.start() if word is not None else following.start
