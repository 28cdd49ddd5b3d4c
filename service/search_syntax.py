"""The search syntax users write, read once into a small tree that each store renders its own way.

    lighthouse keeper       both words (any order, anywhere in a chunk)
    "lighthouse keeper"     the phrase
    storm OR gale           either
    -storm                  without it (also -"a phrase")
    light*                  words that start with it

Words are letters and digits; anything else separates them. Bounded so that no query can cost
much: duplicates are dropped, at most MAX_TERMS terms, MAX_WORD characters a word, MAX_PHRASE
words a phrase. A query with nothing left to find is refused with the rule, never sent.
"""

from __future__ import annotations

import re

import msgspec

from service.errors import InvalidQuery

MAX_TERMS = 16
MAX_WORD = 64
MAX_PHRASE = 8

_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')
_WORD = re.compile(r"[^\W_]+")  # letters and digits: both engines split words at "_" too


class Term(msgspec.Struct, frozen=True):
    """One word, a phrase (several words in order), or a prefix (one word and what follows).

    `said`: a phrase as the user wrote it, when that is other than its words and nothing of it
    was cut (nor has it a control character). PostgreSQL's parser keeps some tokens whole
    ("example.com", "3.11.2") and splits others its own way ("COVID-19"): the phrase is looked
    for as it wrote them too, as well as as our words ("e-mail" inside "e-mail-address")."""

    words: tuple[str, ...]
    prefix: bool = False
    said: str | None = None


class Query(msgspec.Struct, frozen=True):
    """Every clause must match (a clause: one term, or terms joined by OR); no excluded term may."""

    clauses: tuple[tuple[Term, ...], ...]
    excluded: tuple[Term, ...] = ()

    @property
    def terms(self) -> list[Term]:
        return [term for clause in self.clauses for term in clause] + list(self.excluded)


def _term(text: str, *, quoted: bool) -> Term | None:
    words = tuple(word.lower()[:MAX_WORD] for word in _WORD.findall(text))
    if not words:
        return None
    if quoted:
        said = text.strip()
        kept = said.isprintable() and len(words) <= MAX_PHRASE and max(map(len, words)) <= MAX_WORD
        return Term(words[:MAX_PHRASE], said=said if kept and said != " ".join(words) else None)
    prefix = text.endswith("*") and len(words) == 1
    return Term(words[-1:] if len(words) == 1 else words, prefix=prefix)


def parse(text: str) -> Query:
    """`text` as a Query; InvalidQuery when nothing is left to look for, or when nothing could
    match — a clause every term of which is excluded too ("storm -storm"). A term excluded and
    looked for among others ("rain OR storm -storm") is kept both ways: once, the second of the
    two was dropped as a term seen before, so the exclusion or the search went unsaid.

    A term said twice in one clause, a clause said twice, an exclusion said twice count once.
    A term is not dropped for being in another clause: "storm OR gale gale OR rain" is two
    clauses, (storm OR gale) and (gale OR rain) — dropped, its OR joined "rain" to the first."""
    clauses: list[list[Term]] = []
    excluded: list[Term] = []
    terms = 0
    join_next = False
    for match in _TOKEN.finditer(text):
        negated, phrase, bare = match.group(1), match.group(2), match.group(3)
        if bare == "OR":
            join_next = bool(clauses)
            continue
        negated = negated or (bare is not None and bare.startswith("-"))
        source = phrase if phrase is not None else (bare or "").lstrip("-")
        if bare is not None and not _WORD.search(source):
            continue
        # A bare token with inner punctuation ("e-mail", "U.S.") is a phrase of its words.
        term = _term(source, quoted=phrase is not None or len(_WORD.findall(source)) > 1)
        if term is not None and terms < MAX_TERMS:
            into = excluded if negated else clauses[-1] if join_next else None
            if into is None:
                clauses.append([term])
                terms += 1
            elif term not in into:
                into.append(term)
                terms += 1
        join_next = False
    clauses = [list(clause) for clause in dict.fromkeys(tuple(clause) for clause in clauses)]
    if not clauses:
        raise InvalidQuery(
            'a search needs at least one word to find — words, "a phrase", OR, -excluded, '
            "prefix* — not only exclusions or punctuation"
        )
    for clause in clauses:
        if all(term in excluded for term in clause):
            said = " OR ".join(" ".join(term.words) + "*" * term.prefix for term in clause)
            raise InvalidQuery(f"{said!r} is both searched for and excluded: nothing could match")
    return Query(tuple(tuple(clause) for clause in clauses), tuple(excluded))
