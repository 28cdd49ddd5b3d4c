"""A document's own metadata in GET /documents/{id}, and /search filtered by type, language and
date, against a real broker and store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.pipeline import Chunk
from service.store import documents
from service.store.database import Store
from service.store.documents import Extraction
from tests.api.conftest import Client

pytestmark = pytest.mark.rabbitmq

PHRASE = "The lighthouse keeper kept the lamp lit."


async def processed(client: Client, store: Store, content: str, **metadata: Any) -> str:
    """An uploaded document, processed as the worker would with this metadata."""
    response = await client.post(
        "/documents", files={"file": ("note.txt", content.encode(), "text/plain")}
    )
    document_id: str = response.json()["document_id"]
    store.run(
        documents.store_extraction,
        document_id,
        Extraction(
            detected_type=metadata.pop("detected_type", "text"),
            title=None,
            encoding="utf-8",
            page_count=None,
            text=content,
            chunks=[Chunk(position=0, start=0, end=len(content), text=content)],
            **metadata,
        ),
    )
    return document_id


async def test_a_document_shows_its_author_dates_and_language(client: Client, store: Store) -> None:
    document_id = await processed(
        client,
        store,
        PHRASE + " one",
        author="Ann Lee",
        authored_at=datetime(2019, 5, 1, 8, 30, tzinfo=UTC),
        modified_at=datetime(2024, 2, 29, tzinfo=UTC),
        language="en",
    )
    bare = await processed(client, store, PHRASE + " two")

    shown = (await client.get(f"/documents/{document_id}")).json()
    unknown = (await client.get(f"/documents/{bare}")).json()

    assert shown["author"] == "Ann Lee"
    assert datetime.fromisoformat(shown["authored_at"]) == datetime(2019, 5, 1, 8, 30, tzinfo=UTC)
    assert datetime.fromisoformat(shown["modified_at"]) == datetime(2024, 2, 29, tzinfo=UTC)
    assert shown["language"] == "en"
    assert {"title", "page_count", "detected_type", "created_at"} <= shown.keys()
    assert [unknown[key] for key in ("author", "authored_at", "modified_at", "language")] == [
        None,
        None,
        None,
        None,
    ]


async def test_search_is_narrowed_by_type_language_and_since(client: Client, store: Store) -> None:
    english_pdf = await processed(
        client,
        store,
        PHRASE + " alpha",
        detected_type="pdf",
        language="en",
        modified_at=datetime(2001, 1, 1, tzinfo=UTC),
    )
    german_html = await processed(
        client,
        store,
        PHRASE + " beta",
        detected_type="html",
        language="de",
        authored_at=datetime(2024, 6, 1, 12, tzinfo=UTC),
    )

    async def found(**params: str) -> set[str]:
        response = await client.get("/search", params={"q": "lighthouse", **params})
        assert response.status_code == 200, response.text
        return {hit["document_id"] for hit in response.json()["items"]}

    assert await found() == {english_pdf, german_html}
    assert await found(type="pdf") == {english_pdf}
    assert await found(type="docx") == set()
    assert await found(language="de") == {german_html}
    assert await found(language="DE") == {german_html}
    assert await found(language="fr") == set()
    assert await found(since="2024-06-01") == {german_html}
    assert await found(since="2024-06-01T14:00:01+02:00") == set()
    assert await found(since="2024-06-01T12:00:00Z") == {german_html}
    assert await found(type="pdf", since="2000-01-01", language="en") == {english_pdf}
    assert await found(type="html", language="en") == set()


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"type": "spreadsheet"}, "one of text, markdown, html, pdf, docx"),
        ({"language": "english"}, "ISO 639-1"),
        ({"language": "e1"}, "ISO 639-1"),
        ({"since": "yesterday"}, "ISO 8601"),
        ({"since": "2024-13-01"}, "2024-05-01T12:00:00Z"),
        ({"since": "0001-01-01T00:00:00+05:00"}, "out of range"),
    ],
)
async def test_a_bad_filter_is_a_problem_naming_the_value_and_what_is_allowed(
    client: Client, params: dict[str, str], says: str
) -> None:
    response = await client.get("/search", params={"q": "lighthouse", **params})

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    [(name, value)] = params.items()
    assert f"{name}={value!r}" in response.json()["detail"]
    assert says in response.json()["detail"]
