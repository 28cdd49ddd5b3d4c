from __future__ import annotations

import random
import re
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.pipeline import Chunk, chunk_text
from service.pipeline.chunking import _sentences
from tests.support import cpu_since, cpu_start

WORDS = ["amber", "brisk", "crimson", "delta", "ember", "fjord", "granite", "harbour", "indigo"]


def _prose(sentences: int, seed: int = 0, paragraph_every: int = 6) -> str:
    rng = random.Random(seed)
    parts = []
    for number in range(1, sentences + 1):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]  # under 100 characters
        parts.append(" ".join(words).capitalize() + rng.choice(".!?"))
        parts.append("\n\n" if number % paragraph_every == 0 else " ")
    return "".join(parts).strip()


def assert_invariants(text: str, chunks: list[Chunk], size: int) -> None:
    """What every chunking must satisfy, whatever the text."""
    assert [chunk.position for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert 0 < len(chunk.text) <= size
        assert chunk.text == chunk.text.strip()
    for before, after in pairwise(chunks):
        assert after.start > before.start
        assert after.end > before.end
        assert text[before.end : after.start].strip() == ""  # nothing between chunks is lost
    if chunks:
        assert chunks[0].start == len(text) - len(text.lstrip())
        assert chunks[-1].end == len(text.rstrip())
    else:
        assert not text.strip()


def test_prose_chunks_keep_the_invariants_and_the_size() -> None:
    text = _prose(400)

    chunks = chunk_text(text, size=500, overlap=100)

    assert len(chunks) > 20
    assert_invariants(text, chunks, 500)


def test_chunks_end_and_start_on_sentence_boundaries() -> None:
    text = _prose(300)

    chunks = chunk_text(text, size=400, overlap=100)

    for chunk in chunks:
        assert chunk.text[-1] in ".!?"
        assert chunk.text[0].isupper()
        assert chunk.start == 0 or text[chunk.start - 2] in ".!?"


def test_consecutive_chunks_overlap_by_whole_sentences_up_to_the_overlap() -> None:
    text = _prose(300)

    chunks = chunk_text(text, size=400, overlap=100)

    shared = [before.end - after.start for before, after in pairwise(chunks)]
    assert all(0 < length <= 100 for length in shared)
    assert sum(shared) / len(shared) > 50
    for before, after in pairwise(chunks):
        assert before.text.endswith(text[after.start : before.end])


def test_a_sentence_longer_than_the_overlap_overlaps_by_its_last_words() -> None:
    text = ("Short one. " * 10) + " ".join(["lengthy"] * 30) + ". " + ("Tail here. " * 10)

    chunks = chunk_text(text.strip(), size=150, overlap=40)

    for before, after in pairwise(chunks):
        assert 0 < before.end - after.start <= 40


def test_without_overlap_chunks_only_touch() -> None:
    text = _prose(100)

    chunks = chunk_text(text, size=300, overlap=0)

    assert all(after.start > before.end for before, after in pairwise(chunks))
    assert_invariants(text, chunks, 300)


def test_a_chunk_prefers_to_end_with_its_paragraph() -> None:
    first = "Alpha sentence one is here. Alpha sentence two is here too."
    second = "Beta sentence follows on. " * 6
    text = f"{first}\n\n{second.strip()}"

    chunks = chunk_text(text, size=100, overlap=20)

    assert chunks[0].text == first


def test_a_sentence_longer_than_a_chunk_is_cut_between_words() -> None:
    text = " ".join(f"word{n}" for n in range(400)) + "."

    chunks = chunk_text(text, size=100, overlap=20)

    assert_invariants(text, chunks, 100)
    for chunk in chunks:
        assert chunk.start == 0 or text[chunk.start - 1] == " "
        assert chunk.end == len(text) or text[chunk.end] == " "
    assert all(after.start < before.end for before, after in pairwise(chunks))


def test_a_word_longer_than_a_chunk_is_cut_hard() -> None:
    text = "x" * 2500

    chunks = chunk_text(text, size=1000, overlap=150)

    assert [len(chunk.text) for chunk in chunks] == [1000, 1000, 500]
    assert_invariants(text, chunks, 1000)


def test_abbreviations_do_not_end_sentences() -> None:
    text = "Alpha beta gamma. See e.g. this one."

    chunks = chunk_text(text, size=30, overlap=0)

    assert [chunk.text for chunk in chunks] == ["Alpha beta gamma.", "See e.g. this one."]


def test_short_text_is_one_chunk_and_empty_text_none() -> None:
    assert chunk_text("  Just this.  ") == [Chunk(position=0, start=2, end=12, text="Just this.")]
    assert chunk_text("") == []
    assert chunk_text(" \n\n \t") == []


def test_chunking_is_deterministic() -> None:
    text = _prose(200, seed=3)

    assert chunk_text(text, size=300, overlap=50) == chunk_text(text, size=300, overlap=50)


@pytest.mark.parametrize(("size", "overlap"), [(100, 100), (100, 150), (0, 0), (100, -1)])
def test_impossible_sizes_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match=r"size|overlap"):
        chunk_text("Some text.", size=size, overlap=overlap)


SHAPES = {
    "prose": lambda n: _prose(n // 60, seed=1),
    "no-punctuation": lambda n: " ".join(["unpunctuated"] * (n // 13)),
    "one-word": lambda n: "x" * n,
    "spaces": lambda n: "a" + " " * n + "b",
    "dots": lambda n: "a" + "." * n + "b",
    "blank-lines": lambda n: "a" + "\n \n" * (n // 3) + "b",
}


def _cpu_seconds(text: str) -> float:
    """The best of three runs, in this thread's CPU time: other processes' load hardly moves it."""
    timings = []
    for _ in range(3):
        started = cpu_start()
        chunk_text(text)
        timings.append(cpu_since(started))
    return min(timings)


@pytest.mark.parametrize("shape", SHAPES)
def test_chunking_time_grows_linearly_even_for_pathological_text(shape: str) -> None:
    # A claim about growth, not about this machine's speed (that is bench/'s job): eight times
    # the text takes about eight times the CPU; a quadratic step would take sixty-four.
    small, large = SHAPES[shape](125_000), SHAPES[shape](1_000_000)
    assert_invariants(large, chunk_text(large), 1000)

    ratio = _cpu_seconds(large) / max(_cpu_seconds(small), 1e-4)

    assert ratio < 24, f"8x the text took {ratio:.1f}x the CPU"


_SENTENCE_ALPHABET = st.sampled_from(
    ["a", "b", "Z", "é", " ", "  ", "\n", "\n\n", "\t", ".", "!", "?", "…", "”", "e.g.", "。", "-"]
)


@settings(database=None, derandomize=True, max_examples=400, deadline=None)
@given(
    text=st.lists(_SENTENCE_ALPHABET | st.text(max_size=5), max_size=120).map("".join),
    size=st.integers(1, 80),
    overlap_share=st.floats(0, 0.99),
)
def test_any_text_chunks_with_the_invariants(text: str, size: int, overlap_share: float) -> None:
    overlap = int(size * overlap_share)

    chunks = chunk_text(text, size=size, overlap=overlap)

    assert_invariants(text, chunks, size)
    assert chunks == chunk_text(text, size=size, overlap=overlap)


# The gaps between sentences as the plain pattern says them, tried at every character: where each
# one starts (a run of stops, a CJK stop, the spaces before a blank line) and what it holds. The
# chunker finds the same gaps with a pattern that skips to where one can start.
_GAP_AT_EVERY_CHARACTER = re.compile(
    r"(?<![.!?\u2026])(?P<stop>[.!?\u2026]++[\"'\u2019\u201d\u00bb)\]]*+)\s++"
    r"|[\u3002\uff01\uff1f]++\s*+"
    r"|(?<!\s)(?:[^\S\n]*+\n){2}\s*+"
)


def _sentences_by_the_plain_pattern(text: str) -> list[tuple[int, int, bool]]:
    spans = []
    start = len(text) - len(text.lstrip())
    for gap in _GAP_AT_EVERY_CHARACTER.finditer(text):
        following = text[gap.end() : gap.end() + 1]
        if gap["stop"] is not None and following.islower() and "\n" not in gap[0]:
            continue
        end = gap.start() + len(gap[0].rstrip())
        if end > start:
            spans.append((start, end, gap[0].count("\n") > 1))
        start = gap.end()
    if len(text.rstrip()) > start:
        spans.append((start, len(text.rstrip()), True))
    return spans


@settings(database=None, derandomize=True, max_examples=2000, deadline=None)
@given(
    text=st.lists(
        _SENTENCE_ALPHABET
        | st.sampled_from(["\u3000", "\xa0", "\u2028", "\x85", "\r", ")", "'", "...", " \n \n"])
        | st.text(max_size=5),
        max_size=80,
    ).map("".join)
)
def test_sentences_end_where_the_plain_pattern_says(text: str) -> None:
    # Chunks no larger than any text here: each sentence is one span, as the pattern cuts it.
    spans = _sentences(text, len(text) + 1)

    assert [tuple(span) for span in spans] == _sentences_by_the_plain_pattern(text)
