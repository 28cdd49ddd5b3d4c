from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.pipeline import extract
from service.pipeline.language import SAMPLE_CHARS, detect_language

SAMPLES = {
    "en": "The lighthouse keeper climbed the narrow stairs every evening to light the lamp. "
    "Ships passing the rocky coast relied on its beam to find their way through the storm.",
    "de": "Der Leuchtturmwärter stieg jeden Abend die schmale Treppe hinauf, um die Lampe "
    "anzuzünden. Die Schiffe an der felsigen Küste verließen sich auf sein Licht.",
    "fr": "Le gardien du phare montait chaque soir l'escalier étroit pour allumer la lampe. "
    "Les navires qui longeaient la côte rocheuse comptaient sur sa lumière.",
    "ja": "灯台守は毎晩、狭い階段を上ってランプに火をともしました。岩だらけの海岸を通る船は、"
    "嵐の中で道を見つけるためにその光を頼りにしていました。",
    "he": "שומר המגדלור עלה בכל ערב במדרגות הצרות כדי להדליק את המנורה, והספינות שעברו "
    "ליד החוף הסלעי סמכו על האור שלו כדי למצוא את דרכן בסערה.",
}


@pytest.mark.parametrize("language", sorted(SAMPLES))
def test_the_language_of_a_paragraph_is_its_iso_639_1_code(language: str) -> None:
    assert detect_language(SAMPLES[language]) == language


@pytest.mark.parametrize("text", ["Hello", "Bonjour", "12345 67890", "Total: 45.00 EUR", ""])
def test_too_little_text_has_no_language(text: str) -> None:
    assert detect_language(text) is None


def test_a_long_text_is_told_from_a_bounded_sample_of_its_start_and_middle() -> None:
    # A cover page of names, then German prose: the middle decides.
    text = "Dr. Jane Smith, John Doe\n" * 120 + (SAMPLES["de"] + "\n") * 2000

    assert len(text) > 50 * SAMPLE_CHARS
    assert detect_language(text) == "de"


def test_characters_cld2_refuses_are_left_out_rather_than_losing_the_language() -> None:
    text = SAMPLES["fr"] + "\ufdd0\uffff\U0010ffff\ud800" + SAMPLES["fr"]

    assert detect_language(text) == "fr"


def test_extraction_carries_the_language() -> None:
    extracted = extract(SAMPLES["de"].encode(), "leuchtturm.txt")

    assert extracted.language == "de"
    assert extract(b"Hello", "short.txt").language is None


@given(st.text())
def test_any_text_gives_a_two_letter_code_or_none(text: str) -> None:
    found = detect_language(text)

    assert found is None or (len(found) == 2 and found.isascii() and found.islower())
