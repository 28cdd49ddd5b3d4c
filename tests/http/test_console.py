"""The console at HTTP level (a recording publisher stands for RabbitMQ): every view renders, its
assets come from the API itself, and the key and CSRF rules hold. The browser's side is
tests/console."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import pytest
from litestar.testing import AsyncTestClient

from service.api.app import create_app
from service.pipeline import Chunk
from service.settings import Settings
from service.store import dead_letters, documents, task_runs
from service.store.database import Store
from service.store.documents import Extraction
from tests.api.test_dead_letters_api import bury, dead_message
from tests.api.test_documents_api import processed
from tests.http.conftest import Client
from tests.support import RecordingPublisher

HTML = "text/html; charset=utf-8"
PROBLEM = "application/problem+json"
KEY = "console-test-key"


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found, "every page carries its CSRF token"
    return found.group(1)


async def upload(client: Client, name: str = "harbour.txt") -> httpx.Response:
    return await client.post(
        "/documents",
        files={"file": (name, b"The lighthouse keeper watched the storm.", "text/plain")},
    )


async def test_every_view_renders_from_the_api_itself(client: Client, store: Store) -> None:
    accepted = (await upload(client)).json()
    letters = bury(
        store,
        dead_message(queue="retry_queue"),
        dead_message(queue="document_processing"),
        error=("CorruptFile", "the PDF ends before its trailer"),
    )
    groups = (await client.get("/dead-letters/groups")).json()["items"]
    dry = await client.post("/dead-letters/redrive", json={"all": True, "rate": 1})
    redrive_id = dry.json()["id"]

    root = await client.get("/", follow_redirects=False)
    pages = {
        "overview": "/ui/",
        "overview, live part": "/ui/?part=live",
        "documents": "/ui/documents",
        "documents by state": "/ui/documents?state=PENDING",
        "document": f"/ui/documents/{accepted['document_id']}",
        "search": "/ui/search?q=lighthouse",
        "dead letters": "/ui/dead-letters?reason=rejected&status=all",
        "groups": "/ui/dead-letters/groups?status=all",
        "group": f"/ui/dead-letters/groups/{groups[0]['group']}",
        "dead letter": f"/ui/dead-letters/{letters[0]}",
        "redrives": "/ui/redrives",
        "redrive": f"/ui/redrives/{redrive_id}",
    }
    answers = {name: await client.get(path) for name, path in pages.items()}

    assert root.status_code == 302
    assert root.headers["location"] == "/ui/"
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(pages, 200)
    assert {r.headers["content-type"] for r in answers.values()} == {HTML}
    for name, answer in answers.items():
        assert "default-src 'self'" in answer.headers["content-security-policy"], name
        # Nothing is loaded from elsewhere: every script, stylesheet and icon is this server's.
        loaded = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="([^"]+)"', answer.text)
        assert all(url.startswith(("/ui/static/", "data:")) for url in loaded), (name, loaded)
    assert "harbour.txt" in answers["documents"].text
    assert "PENDING" in answers["document"].text
    assert "CorruptFile" in answers["groups"].text
    assert "the PDF ends before its trailer" in answers["dead letter"].text
    assert "x-death history" in answers["dead letter"].text
    assert "document_processing" in answers["overview"].text
    assert "<html" not in answers["overview, live part"].text, "a live part is the part alone"
    for asset in ("/ui/static/console.js", "/ui/static/console.css"):
        served = await client.get(asset)
        assert served.status_code == 200, asset


async def test_empty_views_say_what_to_do_next(client: Client) -> None:
    documents = await client.get("/ui/documents")
    letters = await client.get("/ui/dead-letters")
    groups = await client.get("/ui/dead-letters/groups")

    assert "No documents yet. Upload one" in documents.text
    assert "No active dead letters" in letters.text
    assert "no groups" in groups.text


async def test_a_bad_filter_or_a_missing_letter_is_a_page_with_the_apis_sentence(
    client: Client,
) -> None:
    bogus = await client.get("/ui/dead-letters", params={"reason": "bogus"})
    missing = await client.get("/ui/dead-letters/no-such-letter")

    assert bogus.status_code == 400
    assert bogus.headers["content-type"] == HTML
    assert "is not a reason a message dies for" in bogus.text
    assert missing.status_code == 404
    assert "no dead letter no-such-letter" in missing.text


async def test_a_change_from_the_console_needs_its_csrf_token(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    [letter] = bury(store, dead_message())
    token = csrf_of(await client.get("/ui/dead-letters"))

    forged = await client.post(f"/ui/api/dead-letters/{letter}/republish")
    wrong = await client.post(
        f"/ui/api/dead-letters/{letter}/republish", headers={"X-CSRF-Token": "x" * 43}
    )
    mine = await client.post(
        f"/ui/api/dead-letters/{letter}/republish", headers={"X-CSRF-Token": token}
    )
    read = await client.get("/ui/api/dead-letters")

    assert (forged.status_code, wrong.status_code) == (403, 403)
    assert forged.headers["content-type"] == PROBLEM
    assert "reload the page" in forged.json()["detail"]
    assert mine.status_code == 200
    assert len(publisher.sent) == 1, "only the request with the page's token re-published"
    assert read.status_code == 200, "reads need no token"


async def test_with_keys_the_console_asks_for_one_once_and_keeps_it_in_a_session_cookie(
    settings_for: Callable[..., Settings], publisher: RecordingPublisher
) -> None:
    app = create_app(settings_for(DOCPROC_API_KEYS=KEY), publisher=publisher)
    async with AsyncTestClient(app) as client:
        away = await client.get("/ui/dead-letters?reason=rejected", follow_redirects=False)
        api_away = await client.get("/ui/api/tasks/stats")
        login = await client.get(away.headers["location"])
        token = csrf_of(login)
        stale = await client.post(
            "/ui/login", data={"key": KEY, "next": "/ui/"}, follow_redirects=False
        )
        wrong = await client.post(
            "/ui/login",
            data={"key": "not-the-key", "csrf_token": token, "next": "/ui/"},
            follow_redirects=False,
        )
        assert "docproc_session" not in client.cookies
        right = await client.post(
            "/ui/login",
            data={"key": KEY, "csrf_token": token, "next": "/ui/dead-letters?reason=rejected"},
            follow_redirects=False,
        )
        cookie = right.headers["set-cookie"]
        inside = await client.get("/ui/dead-letters?reason=rejected")
        api_inside = await client.get("/ui/api/tasks/stats")
        json_api_by_cookie = await client.get("/tasks/stats")
        json_api_by_key = await client.get(
            "/tasks/stats", headers={"Authorization": f"Bearer {KEY}"}
        )
        change = await client.post(
            "/ui/api/dead-letters/redrive",
            json={"all": True, "dry_run": True},
            headers={"X-CSRF-Token": token},
        )
        client.cookies.set("docproc_session", client.cookies["docproc_session"][:-2] + "00")
        forged = await client.get("/ui/", follow_redirects=False)
        hostile = await client.get(
            "/ui/login?next=https://elsewhere.example/", follow_redirects=False
        )

    assert away.status_code == 303
    assert away.headers["location"] == "/ui/login?next=%2Fui%2Fdead-letters%3Freason%3Drejected"
    assert api_away.status_code == 401
    assert api_away.json()["sign_in"].startswith("/ui/login?next=")
    assert login.status_code == 200
    assert stale.status_code == 403, "the login form needs its CSRF token too"
    assert wrong.status_code == 403
    assert "the API key is not valid" in wrong.text
    assert right.status_code == 303
    assert right.headers["location"] == "/ui/dead-letters?reason=rejected"
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert KEY not in cookie, "the cookie never carries the key"
    assert inside.status_code == 200
    assert "Sign out" in inside.text
    assert api_inside.status_code == 200
    assert json_api_by_cookie.status_code == 401, "the JSON API still takes bearer keys only"
    assert json_api_by_key.status_code == 200
    assert change.status_code == 200
    assert forged.status_code == 303
    assert 'name="next" value="/ui/"' in hostile.text, "never sent back to another site"


async def test_without_keys_the_console_is_open_and_login_goes_straight_in(client: Client) -> None:
    overview = await client.get("/ui/")
    login = await client.get("/ui/login?next=/ui/documents", follow_redirects=False)

    assert overview.status_code == 200
    assert "Sign out" not in overview.text
    assert login.status_code == 303
    assert login.headers["location"] == "/ui/documents"


async def test_a_document_page_shows_its_own_metadata(client: Client, store: Store) -> None:
    accepted = (await upload(client)).json()
    content = "The lighthouse keeper watched the storm."
    store.run(
        documents.store_extraction,
        accepted["document_id"],
        Extraction(
            detected_type="text",
            title=None,
            encoding="utf-8",
            page_count=None,
            text=content,
            chunks=[Chunk(position=0, start=0, end=len(content), text=content)],
            author="Ann Lee",
            authored_at=datetime(2019, 5, 1, 8, 30, tzinfo=UTC),
            language="en",
        ),
    )

    page = (await client.get(f"/ui/documents/{accepted['document_id']}")).text

    assert "<dt>author</dt><dd>Ann Lee</dd>" in page
    assert "2019-05-01 08:30:00 UTC" in page
    assert "<dt>language</dt><dd>en</dd>" in page


async def test_a_document_page_shows_the_state_by_which_it_stops_refreshing(
    client: Client, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run dies (its dead letter is stored) just after the page's first read: the state the
    page shows and whether it keeps refreshing must come from the same read — a page that says
    FAILURE and stops refreshing says FAILURE for good."""
    accepted = (await upload(client)).json()

    def ended(state: Literal["FAILURE", "DEAD"]) -> None:
        store.run(
            task_runs.record_failure,
            accepted["task_id"],
            "docproc.document.process",
            state=state,
            error_type="CorruptFile",
            message="the PDF ends before its trailer",
        )

    ended("FAILURE")
    app_store = client.app.state.services.store
    reads = app_store.run
    calls = 0

    async def dies_after_the_first_read(operation: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        found = await reads(operation, *args, **kwargs)
        calls += 1
        if calls == 1:
            await asyncio.to_thread(ended, "DEAD")
        return found

    monkeypatch.setattr(app_store, "run", dies_after_the_first_read)
    page = (await client.get(f"/ui/documents/{accepted['document_id']}?part=live")).text

    shown = re.search(r'id="document-state">([A-Z]+)<', page)
    assert shown is not None
    assert ("data-live-stop" in page) == (shown.group(1) in {"SUCCESS", "DEAD", "REVOKED"}), page


async def test_the_search_page_keeps_its_filters_for_the_script(client: Client) -> None:
    page = await client.get(
        "/ui/search",
        params={"q": "lighthouse", "type": "pdf", "language": "de", "since": "2024-01-01"},
    )

    assert page.status_code == 200
    assert '<option value="pdf" selected>' in page.text
    assert 'data-type="pdf" data-language="de" data-since="2024-01-01"' in page.text


async def test_a_session_cookie_holding_anything_but_ascii_is_no_session_not_a_500(
    settings_for: Callable[..., Settings], publisher: RecordingPublisher
) -> None:
    """A forged cookie whose signature holds non-ASCII bytes (anyone who can set a cookie for
    the domain can plant one) made comparing it raise: a bare 500 on every console page, the
    sign-in page included, until the browser dropped the cookie."""
    planted = "docproc_session=1.abc.\xc3\xa9".encode("latin-1")  # "é" in UTF-8, read as latin-1
    app = create_app(settings_for(DOCPROC_API_KEYS=KEY), publisher=publisher)
    async with AsyncTestClient(app) as client:
        page = await client.get("/ui/", headers={"cookie": planted}, follow_redirects=False)
        login = await client.get("/ui/login", headers={"cookie": planted})
        api = await client.get("/ui/api/tasks/stats", headers={"cookie": planted})

    assert page.status_code == 303, "asked to sign in"
    assert login.status_code == 200
    assert api.status_code == 401


async def test_a_letter_whose_task_succeeded_since_shows_as_superseded(
    client: Client, store: Store
) -> None:
    """Listed under `status=superseded`, each row said "active", and so did the letter's page."""
    [letter] = bury(store, dead_message())
    store.run(dead_letters.supersede, str(store.run(dead_letters.get, letter).task_id))  # type: ignore[union-attr]

    listed = (await client.get("/ui/dead-letters", params={"status": "superseded"})).text
    page = (await client.get(f"/ui/dead-letters/{letter}")).text
    answer = (await client.get(f"/dead-letters/{letter}")).json()

    assert '<td data-label="status">superseded</td>' in listed
    assert "<dt>status</dt><dd>superseded: its task succeeded" in page
    assert answer["superseded_at"] is not None


async def test_the_search_page_takes_every_query_the_api_takes(client: Client) -> None:
    """Its form and /search take 500 characters; the page refused more than 255 (a 400)."""
    query = "lighthouse " * 45 + "storm keeper"  # 507 characters
    query = query[:500]

    page = await client.get("/ui/search", params={"q": query})
    longer = await client.get("/ui/search", params={"q": query + "x"})

    assert page.status_code == 200
    assert longer.status_code == 400


async def test_a_document_pages_json_link_is_one_the_console_may_follow(
    client: Client, store: Store
) -> None:
    """It linked to /documents/{id}/text, which takes a bearer key only: with keys set, a 401."""
    document_id = (await upload(client)).json()["document_id"]
    processed(store, document_id)

    page = (await client.get(f"/ui/documents/{document_id}")).text

    assert f'<a href="/ui/api/documents/{document_id}/text">As JSON</a>' in page
    assert (await client.get(f"/ui/api/documents/{document_id}/text")).status_code == 200
