from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import Connection, text

from service import indexing
from service.errors import DatabaseError, InvalidQuery, SearchError
from service.pipeline import Chunk
from service.search_syntax import parse
from service.settings import Settings
from service.store import documents, search, task_runs
from service.store.database import AsyncStore, Store
from service.store.documents import Extraction


def add_document(store: Store, content: bytes = b"hello", filename: str = "a.txt") -> str:
    document_id = str(uuid.uuid4())
    new = documents.NewDocument(
        id=document_id,
        filename=filename,
        content_type="text/plain",
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        task_id=str(uuid.uuid4()),
        correlation_id="c-1",
    )
    store.run(documents.insert_documents, [new])
    return document_id


def extraction(*paragraphs: str) -> Extraction:
    text = "\n\n".join(paragraphs)
    rows, start = [], 0
    for position, paragraph in enumerate(paragraphs):
        rows.append(
            Chunk(position=position, start=start, end=start + len(paragraph), text=paragraph)
        )
        start += len(paragraph) + 2
    return Extraction(
        detected_type="text", title="T", encoding="utf-8", page_count=None, text=text, chunks=rows
    )


def test_a_document_keeps_its_bytes_and_metadata(store: Store) -> None:
    document_id = add_document(store, b"\x00\xffbytes as sent", "report.pdf")

    upload = store.run(documents.get_upload, document_id)
    document = store.run(documents.get, document_id)

    assert upload is not None
    assert upload.content == b"\x00\xffbytes as sent"
    assert document is not None
    assert document.filename == "report.pdf"
    assert document.size == 15
    assert document.created_at.tzinfo is not None
    assert document.published_at is None
    assert store.run(documents.get, "no-such-id") is None


def test_a_document_is_processed_once_a_second_outcome_changes_nothing(store: Store) -> None:
    document_id = add_document(store)
    store.run(documents.store_extraction, document_id, extraction("alpha one", "beta two", "gamma"))

    with pytest.raises(documents.AlreadyProcessed):
        store.run(documents.store_extraction, document_id, extraction("other", "words"))

    assert store.run(documents.chunk_count, document_id) == 3
    assert store.run(documents.get_text, document_id) == "alpha one\n\nbeta two\n\ngamma"
    hits = store.run(search.search, parse("beta")).hits
    assert [(hit.document_id, hit.position) for hit in hits] == [(document_id, 1)]
    document = store.run(documents.get, document_id)
    assert document is not None
    assert (document.chunk_count, document.char_count) == (3, len("alpha one\n\nbeta two\n\ngamma"))


def test_search_ranks_by_relevance_and_highlights_the_match(store: Store) -> None:
    rare = add_document(store, filename="rare.txt")
    often = add_document(store, filename="often.txt")
    store.run(
        documents.store_extraction,
        rare,
        extraction("the harbour was quiet. " * 8 + "a lighthouse stood."),
    )
    store.run(
        documents.store_extraction, often, extraction("lighthouse keepers keep the lighthouse lit.")
    )

    hits = store.run(search.search, parse("lighthouse"), limit=5).hits

    assert [hit.document_id for hit in hits] == [often, rare]
    assert hits[0].score > hits[1].score
    assert "[lighthouse]" in hits[0].snippet
    assert hits[0].filename == "often.txt"


def test_search_finds_every_word_and_stems_them(store: Store) -> None:
    document_id = add_document(store)
    store.run(
        documents.store_extraction,
        document_id,
        extraction("Documents were processed quickly.", "Nothing else."),
    )

    assert [hit.position for hit in store.run(search.search, parse("document process")).hits] == [0]
    assert store.run(search.search, parse("document nothing")).hits == []


def test_an_underscore_separates_words_as_both_engines_split_them(store: Store) -> None:
    """FTS5 and PostgreSQL split "lighthouse_keeper" at the "_"; a query's "_" was a word of its
    own, which matched nothing and, ANDed with the rest, emptied the search."""
    document_id = add_document(store)
    store.run(documents.store_extraction, document_id, extraction("the lighthouse_keeper"))

    for query in ("lighthouse _", "lighthouse_keeper", "keeper_"):
        assert [hit.document_id for hit in store.run(search.search, parse(query)).hits] == [
            document_id
        ], query


@pytest.mark.parametrize("query", ['"unbalanced', "NEAR(a b", "col:value", "a* OR (", "x)) OR"])
def test_engine_syntax_in_a_query_is_only_words(store: Store, query: str) -> None:
    document_id = add_document(store)
    store.run(documents.store_extraction, document_id, extraction("value near unbalanced col"))

    store.run(search.search, parse(query))


@pytest.mark.parametrize("query", ["-", "", "-storm", "*** ))", "_", "__ -_"])
def test_a_query_with_nothing_to_find_is_refused_with_the_rule(query: str) -> None:
    with pytest.raises(InvalidQuery, match="phrase"):
        parse(query)


def test_phrases_or_exclusion_and_prefixes_work_on_both_stores(store: Store) -> None:
    texts = {
        "keeper": "The lighthouse keeper kept the lamp lit through the storm.",
        "house": "A house with a light in the window; the keeper slept.",
        "gale": "The gale came at night and the lighthouse stood.",
    }
    ids = {}
    for name, content in texts.items():
        ids[name] = add_document(store, content.encode(), f"{name}.txt")
        store.run(documents.store_extraction, ids[name], extraction(content))

    def found(query: str) -> set[str]:
        hits = store.run(search.search, parse(query)).hits
        return {
            name
            for name, document_id in ids.items()
            if document_id in {h.document_id for h in hits}
        }

    assert found('"lighthouse keeper"') == {"keeper"}
    assert found("keeper") == {"keeper", "house"}
    assert found("storm OR gale") == {"keeper", "gale"}
    assert found("lighthouse -storm") == {"gale"}
    assert found("lightho*") == {"keeper", "gale"}
    assert found('keeper -"lighthouse keeper"') == {"house"}
    # A term excluded and looked for among others: the exclusion was dropped as a term seen
    # before (and the search, the other way round), whichever came second.
    assert found("storm OR gale -storm") == {"gale"}
    assert found("-storm storm OR gale") == {"gale"}


def test_a_term_in_two_clauses_keeps_both_clauses(store: Store) -> None:
    """The second "gale" was dropped as a term seen before, and its OR then joined "rain" to the
    first clause: (storm OR gale OR rain) found a document with "storm" alone."""
    storm = add_document(store, b"storm", "storm.txt")
    store.run(documents.store_extraction, storm, extraction("A storm only."))
    both = add_document(store, b"both", "both.txt")
    store.run(documents.store_extraction, both, extraction("A storm and a gale."))

    def found(query: str) -> set[str]:
        return {hit.document_id for hit in store.run(search.search, parse(query)).hits}

    assert found("storm OR gale gale OR rain") == {both}
    assert found("storm gale OR storm") == {storm, both}
    assert found("storm storm") == {storm, both}


def test_an_exclusion_keeps_the_ranking(store: Store) -> None:
    """On PostgreSQL, ts_rank of a query with `!!` scored every match 1e-20: the order went."""
    once = add_document(store, b"once", "once.txt")
    store.run(documents.store_extraction, once, extraction("A keeper of sheep in the hills."))
    often = add_document(store, b"often", "often.txt")
    store.run(documents.store_extraction, often, extraction("The keeper's keeper kept the keeper."))

    for query in ("keeper", "keeper -storm", 'keeper -"a gale"'):
        hits = store.run(search.search, parse(query)).hits
        assert [hit.document_id for hit in hits] == [often, once], query
        assert hits[0].score > hits[1].score, query


@pytest.mark.parametrize(
    "prefix", ["under*", "up*", "off*", "over*", "understanding OR rest -over*"]
)
def test_a_prefix_that_is_a_stop_word_finds_the_words_it_starts(store: Store, prefix: str) -> None:
    """PostgreSQL's English configuration drops stop words from a query: `over*` asked for
    nothing, and found nothing (SQLite found the overview)."""
    document_id = add_document(store, b"stop words", "stop.txt")
    words = "the understanding of the update, the office overview"
    store.run(documents.store_extraction, document_id, extraction(words))
    other = add_document(store, b"other", "other.txt")
    store.run(documents.store_extraction, other, extraction("the rest of the text"))

    hits = store.run(search.search, parse(prefix)).hits

    expected = [other] if "-" in prefix else [document_id]
    assert [hit.document_id for hit in hits] == expected


@pytest.mark.parametrize(
    "token", ["example.com", "3.11.2", "report.pdf", "2024-05-01", "COVID-19", "x86-64"]
)
def test_a_dotted_or_hyphenated_token_finds_itself(store: Store, token: str) -> None:
    """PostgreSQL's parser keeps "example.com" whole in the index; the query asked for the
    phrase "example com", which nothing matched."""
    document_id = add_document(store, token.encode(), "token.txt")
    store.run(documents.store_extraction, document_id, extraction(f"alpha {token} omega"))

    hits = store.run(search.search, parse(token)).hits

    assert [hit.document_id for hit in hits] == [document_id]


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("e-mail", "fill in the e-mail-address field"),
        ("self-driving", "a self-driving-car company"),
        ('"e-mail address"', "fill in the e-mail-address field"),
        ("storm -e-mail", "storm report"),
    ],
)
def test_a_hyphenated_word_is_found_inside_a_longer_compound(
    store: Store, query: str, text: str
) -> None:
    """Read as PostgreSQL parses it, "e-mail" is one token, which "e-mail-address" does not
    hold: it must be looked for as its words too (an exclusion likewise)."""
    document_id = add_document(store, text.encode(), "compound.txt")
    store.run(documents.store_extraction, document_id, extraction(text))
    if query.startswith("storm"):
        excluded = add_document(store, b"excluded", "excluded.txt")
        store.run(documents.store_extraction, excluded, extraction("storm e-mail-address"))

    hits = store.run(search.search, parse(query)).hits

    assert [hit.document_id for hit in hits] == [document_id]


@pytest.mark.parametrize("query", ['"storm\x00gale"', "storm-\x00gale", '"storm \x01 gale"'])
def test_a_control_character_in_a_phrase_only_separates_words(store: Store, query: str) -> None:
    document_id = add_document(store, b"storm gale", "gale.txt")
    store.run(documents.store_extraction, document_id, extraction("a storm gale"))

    hits = store.run(search.search, parse(query)).hits

    assert [hit.document_id for hit in hits] == [document_id]


@pytest.mark.parametrize("query", ["storm -storm", "-storm storm", "rain OR storm -rain -storm"])
def test_a_query_that_excludes_what_it_needs_is_refused_saying_so(query: str) -> None:
    """ "storm -storm" found every storm (the exclusion dropped); "-storm storm" was refused as
    "only exclusions". Both are refused now, saying why nothing could match."""
    with pytest.raises(InvalidQuery, match="both searched for and excluded"):
        parse(query)


def test_each_content_names_its_earliest_document_in_one_statement(store: Store) -> None:
    first, _later, other = (add_document(store, content) for content in (b"same", b"same", b"x"))
    same, lone = (hashlib.sha256(content).hexdigest() for content in (b"same", b"x"))
    absent = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(300)]

    found = store.run(documents.earliest_with, [same, *absent, lone, same])

    assert found == {same: first, lone: other}
    assert store.run(documents.earliest_with, []) == {}


def test_deleting_nothing_and_storing_nothing_is_fine(store: Store) -> None:
    document_id = add_document(store)
    empty = Extraction(
        detected_type="text", title=None, encoding=None, page_count=None, text="", chunks=[]
    )

    store.run(documents.store_extraction, document_id, empty)

    assert store.run(documents.chunk_count, document_id) == 0


def test_unpublished_documents_are_found_until_marked(store: Store) -> None:
    document_id = add_document(store)
    later = datetime.now(UTC) + timedelta(seconds=1)

    assert [d.id for d in store.run(documents.unpublished, later, 10)] == [document_id]
    store.run(documents.mark_published, document_id)
    assert store.run(documents.unpublished, later, 10) == []


async def test_the_async_store_runs_the_same_operations(
    store: Store, async_store: AsyncStore
) -> None:
    document_id = add_document(store)
    await async_store.run(documents.store_extraction, document_id, extraction("asynchronous words"))

    hits = (await async_store.run(search.search, parse("asynchronous"))).hits

    assert [hit.document_id for hit in hits] == [document_id]


def test_an_unreachable_store_raises_a_database_error(tmp_path: object) -> None:
    store = Store("postgresql://nobody@127.0.0.1:1/nothing")
    with pytest.raises(DatabaseError, match="the store is unavailable"):
        store.run(documents.get, "x")


def test_documents_are_listed_newest_first_a_page_at_a_time_and_by_state(store: Store) -> None:
    added = [add_document(store, f"text {n}".encode(), f"{n}.txt") for n in range(5)]
    for document_id in added[:2]:
        document = store.run(documents.get, document_id)
        assert document is not None
        store.run(task_runs.record_pending, document.task_id, "t", document_id=document_id)

    first = store.run(documents.page, state=None, limit=3)
    rest = store.run(documents.page, state=None, limit=3, cursor=first.next_cursor)
    pending = store.run(documents.page, state="PENDING", limit=10)

    assert [item.id for item in first.items + rest.items] == added[::-1]
    assert rest.next_cursor is None
    assert [item.filename for item in pending.items] == ["1.txt", "0.txt"]
    assert {item.state for item in rest.items} == {"PENDING"}
    with pytest.raises(ValueError, match="not a cursor"):
        store.run(documents.page, state=None, limit=3, cursor="not-ours")


def test_a_documents_own_metadata_round_trips(store: Store) -> None:
    document_id = add_document(store)
    authored = datetime(2019, 5, 1, 8, 30, tzinfo=UTC)
    modified = datetime(2024, 2, 29, 23, 59, 59, 500_000, tzinfo=UTC)

    store.run(
        documents.store_extraction,
        document_id,
        msgspec.structs.replace(
            extraction("Ein Leuchtturm."),
            author="Anna Müller",
            authored_at=authored,
            modified_at=modified,
            language="de",
        ),
    )
    document = store.run(documents.get, document_id)

    assert document is not None
    assert (document.author, document.language) == ("Anna Müller", "de")
    assert (document.authored_at, document.modified_at) == (authored, modified)
    unknown = store.run(documents.get, add_document(store, b"other"))
    assert unknown is not None
    assert (unknown.author, unknown.authored_at, unknown.modified_at, unknown.language) == (
        None,
        None,
        None,
        None,
    )


def _filtered(store: Store, query: str, **filters: Any) -> set[str]:
    hits = store.run(search.search, parse(query), filters=search.Filters(**filters)).hits
    return {hit.document_id for hit in hits}


def test_search_filters_by_type_language_and_date_alone_and_together(store: Store) -> None:
    def add(kind: str, language: str | None, **dates: datetime) -> str:
        document_id = add_document(store, uuid.uuid4().bytes)
        store.run(
            documents.store_extraction,
            document_id,
            msgspec.structs.replace(
                extraction("the lighthouse keeper"),
                detected_type=kind,
                language=language,
                **dates,
            ),
        )
        return document_id

    old_pdf = add("pdf", "en", modified_at=datetime(2001, 1, 1, tzinfo=UTC))
    # Created recently but modified long ago: the modification decides.
    revised = add(
        "html",
        "de",
        authored_at=datetime(2030, 1, 1, tzinfo=UTC),
        modified_at=datetime(2005, 1, 1, tzinfo=UTC),
    )
    authored = add("pdf", "de", authored_at=datetime(2020, 6, 1, tzinfo=UTC))
    undated = add("text", None)  # dated by its acceptance: now

    assert _filtered(store, "lighthouse") == {old_pdf, revised, authored, undated}
    assert _filtered(store, "lighthouse", detected_type="pdf") == {old_pdf, authored}
    assert _filtered(store, "lighthouse", language="de") == {revised, authored}
    assert _filtered(store, "lighthouse", since=datetime(2010, 1, 1, tzinfo=UTC)) == {
        authored,
        undated,
    }
    assert _filtered(store, "lighthouse", since=datetime(2020, 6, 1, tzinfo=UTC)) == {
        authored,
        undated,
    }
    assert _filtered(
        store,
        "lighthouse",
        detected_type="pdf",
        language="de",
        since=datetime(2001, 1, 2, tzinfo=UTC),
    ) == {authored}
    assert _filtered(store, "lighthouse", detected_type="docx") == set()
    assert _filtered(store, "lighthouse", language="fr") == set()
    assert _filtered(store, "lighthouse", since=datetime.now(UTC) + timedelta(days=1)) == set()
    assert _filtered(store, "nothing-here", detected_type="pdf") == set()


def _harbours(store: Store, counts: list[int], language: str | None = None) -> list[str]:
    """A document per count, oldest first, whose one chunk says "harbour" that many times."""
    added = []
    for count in counts:
        document_id = add_document(store, uuid.uuid4().bytes)
        words = " ".join(["harbour"] * count + ["quay"] * (8 - count))
        store.run(
            documents.store_extraction,
            document_id,
            msgspec.structs.replace(extraction(words), language=language),
        )
        added.append(document_id)
    return added


def test_a_query_matching_more_than_the_window_ranks_its_newest_matches_and_says_so(
    store: Store,
) -> None:
    oldest, *newer = _harbours(store, [8, 1, 2, 3, 4])
    query = parse("harbour")

    whole = store.run(search.search, query, window=5)
    windowed = store.run(search.search, query, window=3)

    assert whole.complete
    assert [hit.document_id for hit in whole.hits] == [oldest, *newer[::-1]]
    assert not windowed.complete
    assert [hit.document_id for hit in windowed.hits] == newer[:0:-1]
    assert whole.hits[1].score == windowed.hits[0].score  # ranked as among all matches
    assert store.run(search.search, parse("harbour quay"), window=5).complete


def test_the_window_counts_the_matches_that_pass_the_filters(store: Store) -> None:
    english = _harbours(store, [8, 1], language="en")
    _harbours(store, [2, 3, 4], language="de")

    found = store.run(
        search.search, parse("harbour"), window=2, filters=search.Filters(language="en")
    )

    assert found.complete
    assert [hit.document_id for hit in found.hits] == english


def test_a_search_past_its_deadline_is_stopped_and_says_how_to_narrow_it(store: Store) -> None:
    document_id = add_document(store)
    store.run(
        documents.store_extraction,
        document_id,
        extraction(*(f"harbour quay number {n}" for n in range(3_000))),
    )

    with pytest.raises(SearchError, match=r"longer than 0.001 s and was stopped; narrow it"):
        store.run(search.search, parse("harbour"), deadline=0.001)

    assert len(store.run(search.search, parse("harbour")).hits) == 10


# PostgreSQL only: SQLite has no planner settings and no deadline setting to leave behind.
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_on_postgresql_a_search_plans_for_its_own_words_and_cached_pages_in_its_transaction(
    store: Store,
) -> None:
    add_document(store)
    setting = text(
        "SELECT current_setting('plan_cache_mode'), current_setting('statement_timeout'),"
        " current_setting('random_page_cost')"
    )

    def search_then_read(connection: Connection) -> tuple[str, ...]:
        search.search(connection, parse("harbour"))
        return tuple(connection.execute(setting).one())

    assert store.run(search_then_read) == ("force_custom_plan", "5s", "1.1")
    after = tuple(store.run(lambda connection: connection.execute(setting).one()))
    assert after == ("auto", "0", "4")


def test_indexing_stores_what_the_pipeline_read_of_the_document(store: Store) -> None:
    page = (
        "<html><head><title>Der Leuchtturm</title><meta name='author' content='Anna Müller'>"
        "<meta name='dcterms.created' content='2019-05-01T10:30:00+02:00'>"
        "<meta name='dcterms.modified' content='2024-02-29'></head><body><p>"
        + "Der Leuchtturmwärter stieg jeden Abend die schmale Treppe hinauf, um die Lampe "
        "anzuzünden. Die Schiffe an der felsigen Küste verließen sich auf sein Licht."
        + "</p></body></html>"
    ).encode()
    document_id = add_document(store, page, "leuchtturm.html")

    indexing.index_document(store, document_id, Settings())
    document = store.run(documents.get, document_id)

    assert document is not None
    assert (document.detected_type, document.title) == ("html", "Der Leuchtturm")
    assert (document.author, document.language) == ("Anna Müller", "de")
    assert document.authored_at == datetime(2019, 5, 1, 8, 30, tzinfo=UTC)
    assert document.modified_at == datetime(2024, 2, 29, tzinfo=UTC)
    assert _filtered(store, "Leuchtturmwärter", language="de", detected_type="html") == {
        document_id
    }


def test_identical_uploads_are_one_hit_each_naming_every_copy(store: Store) -> None:
    """Seven uploads of one document, each chunk matching: copies score alike and took the
    places of the first rows, so a search for two hits found one, naming some copies. Now each
    chunk is a hit once — as many as asked — naming every other copy."""
    copies = [add_document(store, b"the same bytes") for _ in range(7)]
    for document_id in copies:
        store.run(
            documents.store_extraction,
            document_id,
            extraction("lighthouse keeper", "the lighthouse"),
        )
    other = add_document(store, b"other bytes")
    store.run(documents.store_extraction, other, extraction("a lighthouse far away"))

    for limit in (1, 2, 3, 10):
        hits = store.run(search.search_collapsed, parse("lighthouse"), limit).hits
        assert len(hits) == min(limit, 3), limit
        keys = {(hit.sha256, hit.position) for hit in hits}
        assert len(keys) == len(hits), "each content's chunk once"
        for hit in hits:
            holders = {hit.document_id, *hit.duplicates}
            assert holders == (set(copies) if hit.document_id in copies else {other})
