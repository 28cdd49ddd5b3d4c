"""An operator at the console, in Chromium, against a real `docproc up` with an API key: signs in,
uploads, watches a document succeed and finds it, sees a corrupt PDF die into its group, counts,
redrives, cancels and discards — every request staying on 127.0.0.1, no error in the browser's
console. The screenshots of every view, at 390 and 1280 px, come from here too."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from service.store import dead_letters
from service.store.database import Store
from tests.api.test_dead_letters_api import bury, dead_message
from tests.console.conftest import (
    KEY,
    Tab,
    open_tab,
    screenshot,
    sign_in,
)
from tests.corpus import corrupt_pdf_sample
from tests.e2e.conftest import Running
from tests.support import eventually

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker, pytest.mark.browser]

SLOW = 90_000
"""Milliseconds the page may take to show what the worker and DLQ consumer do."""


async def test_the_console_asks_for_a_key_once_and_refuses_a_wrong_one(
    browser: Browser, console: Running
) -> None:
    context = await browser.new_context()
    tab = await open_tab(context, console.api)
    try:
        await tab.go("/ui/dead-letters/groups")
        await expect(tab.page).to_have_url(re.compile(r"/ui/login\?next="))
        await sign_in(tab, key="not-" + KEY)
        await expect(tab.page.get_by_role("alert")).to_have_text("the API key is not valid")
        tab.refused(403, "/ui/login")

        await sign_in(tab)
        await expect(tab.page).to_have_url(re.compile(r"/ui/?$"))
        await tab.go("/ui/dead-letters/groups")
        await expect(tab.page.get_by_role("heading", level=1)).to_have_text("Dead letters by cause")

        # An action whose session is forged is refused, and the page sends the person to sign in.
        [session] = [c for c in await context.cookies() if c["name"] == "docproc_session"]
        assert session["httpOnly"]
        assert session["sameSite"] == "Strict"
        await context.add_cookies([{**session, "value": session["value"][:-4] + "0000"}])
        await tab.go("/ui/")
        await expect(tab.page).to_have_url(re.compile(r"/ui/login\?next="))
        tab.assert_clean()
    finally:
        await context.close()


async def test_an_upload_through_the_page_reaches_success_and_search_finds_it(
    signed_in: Tab,
) -> None:
    page = signed_in.page
    await signed_in.go("/ui/documents")
    await page.set_input_files(
        "#files",
        files=[
            {
                "name": "harbour-log.txt",
                "mimeType": "text/plain",
                "buffer": b"The lighthouse keeper logged a westerly gale at dusk.",
            },
            {"name": "empty.txt", "mimeType": "text/plain", "buffer": b""},
        ],
    )
    # A second file dropped on the zone, as a person drags one from a file manager.
    await page.evaluate(
        """() => {
            const dropped = new DataTransfer();
            dropped.items.add(new File(["Brass compass, velvet case."], "dropped.md"));
            document.getElementById("dropzone").dispatchEvent(
                new DragEvent("drop", {dataTransfer: dropped, bubbles: true, cancelable: true}));
        }"""
    )
    uploads = page.locator("#uploads li")
    await expect(uploads).to_have_count(3)
    accepted = uploads.filter(has_text="harbour-log.txt").get_by_role("link", name="accepted")
    await expect(accepted).to_be_visible()
    await expect(uploads.filter(has_text="dropped.md").get_by_role("link")).to_be_visible()
    refused = uploads.filter(has_text="empty.txt").locator(".upload-status")
    await expect(refused).to_have_text(re.compile(r"^refused: .*empty"))
    signed_in.refused(422, "/ui/api/documents")
    assert (
        await uploads.filter(has_text="harbour-log.txt")
        .locator("progress")
        .evaluate("bar => bar.value === bar.max")
    )

    await accepted.click()
    await expect(page.locator("#document-state")).to_have_text("SUCCESS", timeout=SLOW)
    await expect(page.get_by_label("extracted text", exact=True)).to_contain_text("westerly gale")
    # accepted, started, its four steps (load, extract, chunk, index) and finished
    await expect(page.locator(".timeline li")).to_have_count(7)
    await expect(page.locator(".timeline li").nth(3)).to_contain_text("extract")

    await signed_in.go("/ui/search")
    await page.get_by_label("Words to find").fill("lighthouse gale")
    await page.get_by_role("button", name="Search").click()
    hit = page.locator(".hits li").filter(has_text="harbour-log.txt")
    await expect(hit).to_be_visible()
    await expect(hit.locator("mark").first).to_have_text(re.compile("lighthouse|gale", re.I))
    # Narrowed by the document's type and language, then by a type it is not.
    await page.get_by_label("type").select_option("text")
    await page.get_by_label("language").fill("en")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator(".hits li").filter(has_text="harbour-log.txt")).to_be_visible()
    await page.get_by_label("type").select_option("pdf")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#results")).to_contain_text("Nothing matches")


async def test_a_corrupt_pdf_dies_into_its_group_which_is_redriven_cancelled_and_discarded(
    signed_in: Tab, shots: Path
) -> None:
    page = signed_in.page
    broken = corrupt_pdf_sample().data
    await signed_in.go("/ui/documents")
    await page.set_input_files(
        "#files",
        files=[
            {"name": f"broken-{n}.pdf", "mimeType": "application/pdf", "buffer": broken}
            for n in range(3)
        ],
    )
    links = page.locator("#uploads li a")
    await expect(links).to_have_count(3)
    for href in [await link.get_attribute("href") for link in await links.all()]:
        await signed_in.go(str(href))
        await expect(page.locator("#document-state")).to_have_text("DEAD", timeout=SLOW)
    await expect(page.get_by_role("button", name="Retry this task")).to_be_visible()

    await signed_in.go("/ui/dead-letters/groups")
    group = page.locator("tr[data-group]").filter(has_text="CorruptFile")
    await expect(group).to_have_count(1)
    await expect(group.locator("td.num")).to_have_text("3")
    await group.get_by_role("link").first.click()
    await expect(page.locator("#group-active")).to_have_text("3")

    # A dry run first: it counts, and publishes nothing.
    await page.get_by_role("button", name="Count (dry run)").click()
    await expect(page.locator('[data-redrive="preview"]')).to_have_text(
        re.compile(r"^3 letter\(s\) would be re-published \(3 to document_processing\)")
    )
    await page.get_by_label("Rate (letters per second)").fill("50")
    await page.get_by_role("button", name="Redrive 3 letter(s)").click()
    await expect(page.locator('[data-redrive="progress-text"]')).to_have_text(
        re.compile(r"^finished: 3 published, 0 failed, of 3"), timeout=SLOW
    )
    assert await page.locator('[data-redrive="bar"]').evaluate("bar => bar.value === bar.max")
    await screenshot(signed_in, shots, "group-redriven")

    # The same corrupt files die again: three new active letters, re-published from the old.
    await _until_active(signed_in, 3)
    await screenshot(signed_in, shots, "group")
    letter = page.locator("tr[data-letter]").first
    await letter.get_by_role("link").click()
    await expect(page.get_by_text("re-published from")).to_be_visible()
    await expect(page.locator("dd a[href^='/ui/dead-letters/']")).to_be_visible()
    await page.go_back()

    # A slow redrive, cancelled while it runs: what it did not publish stays untouched.
    await page.get_by_role("button", name="Count (dry run)").click()
    await expect(page.locator('[data-redrive="preview"]')).to_contain_text("3 letter(s)")
    await page.get_by_label("Rate (letters per second)").fill("0.2")
    await page.get_by_role("button", name="Redrive 3 letter(s)").click()
    await page.get_by_role("button", name="Cancel the redrive").click()
    await expect(page.locator('[data-redrive="progress-text"]')).to_have_text(
        re.compile(r"^cancelled: [012] published"), timeout=SLOW
    )

    # Discarding the group says how many letters it will discard, and discards that many.
    await _until_active(signed_in, 3)
    await page.get_by_role("button", name="Discard the group's active letters…").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Discard 3 active dead letter(s) of this group?")
    await dialog.get_by_role("button", name="Discard 3 letter(s)").click()
    await expect(page.locator("#notice")).to_have_text("Discarded 3 letter(s).")
    await expect(page.locator("#group-active")).to_have_text("0", timeout=SLOW)


async def test_a_group_of_letters_that_killed_workers_is_redriven_only_when_asked(
    signed_in: Tab, console: Running
) -> None:
    store = Store(f"sqlite:///{console.directory / 'var' / 'docproc.db'}")
    try:
        task = f"docproc.maintenance.poison{time.time_ns()}"
        ids = bury(store, *(dead_message(queue="celery", task=task, reason="delivery_limit"),) * 2)
        letter = store.run(dead_letters.get, ids[0])
    finally:
        store.close()
    assert letter is not None
    page = signed_in.page
    await signed_in.go(f"/ui/dead-letters/groups/{letter.fingerprint}")
    preview = page.locator('[data-redrive="preview"]')
    await page.get_by_role("button", name="Count (dry run)").click()
    await expect(preview).to_have_text(
        re.compile(r"^0 letter\(s\) would be re-published; left out: 2 died at the delivery limit")
    )
    await expect(page.locator('[data-redrive="start"]')).to_be_disabled()

    await page.get_by_label("Also letters that died at the delivery limit").check()
    await expect(preview).to_have_text("")
    await page.get_by_role("button", name="Count (dry run)").click()
    await expect(preview).to_have_text(
        re.compile(r"^2 letter\(s\) would be re-published \(2 to celery\)\.")
    )
    await page.get_by_label("Rate (letters per second)").fill("50")
    await page.get_by_role("button", name="Redrive 2 letter(s)").click()
    await expect(page.locator('[data-redrive="progress-text"]')).to_have_text(
        re.compile(r"^finished: 2 published, 0 failed, of 2"), timeout=SLOW
    )


async def test_a_caution_is_read_before_it_is_overruled_and_a_count_is_what_is_taken(
    signed_in: Tab, console: Running
) -> None:
    """The Re-publish button of a letter re-published before sent force=true after a dialog
    that named only that — overruling a death at the delivery limit it never showed. A group's
    discard, confirmed for the letters counted, took every one that had died since."""
    store = Store(f"sqlite:///{console.directory / 'var' / 'docproc.db'}")
    task = f"docproc.maintenance.caution{time.time_ns()}"
    try:
        [letter_id] = bury(store, dead_message(queue="celery", task=task, reason="delivery_limit"))
        letter = store.run(dead_letters.get, letter_id)
        assert letter is not None
        page = signed_in.page
        await signed_in.go(f"/ui/dead-letters/{letter_id}")
        await page.get_by_role("button", name="Re-publish to celery").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text("it died at the delivery limit")
        await expect(dialog).to_contain_text("Re-publish it all the same?")
        await dialog.get_by_role("button", name="Cancel").click()
        signed_in.refused(409, f"/ui/api/dead-letters/{letter_id}/republish")
        assert store.run(dead_letters.get, letter_id).republish_count == 0  # type: ignore[union-attr]

        await signed_in.go(f"/ui/dead-letters/groups/{letter.fingerprint}")
        await page.get_by_role("button", name="Discard the group's active letters…").click()
        await expect(dialog).to_contain_text("Discard 1 active dead letter(s) of this group?")
        bury(store, dead_message(queue="celery", task=task, reason="delivery_limit"))  # meanwhile
        await dialog.get_by_role("button", name="Discard 1 letter(s)").click()
        await expect(page.locator("#notice")).to_contain_text(
            "2 letter(s) match now, not the 1 counted and confirmed: nothing was discarded"
        )
        signed_in.refused(409, f"/ui/api/dead-letters/groups/{letter.fingerprint}")
        active = dead_letters.Filters(group=letter.fingerprint)
        assert len(store.run(dead_letters.matching, active)) == 2
    finally:
        store.close()


async def _until_active(tab: Tab, count: int) -> None:
    """The group page, reloaded until `count` of its letters are active."""

    async def active() -> bool | None:
        await tab.page.reload()
        return True if await tab.page.locator("#group-active").inner_text() == str(count) else None

    await eventually(active, SLOW / 1000, f"{count} active letters in the group", interval=0.5)


VIEWS = {
    "overview": "/ui/",
    "documents": "/ui/documents",
    "search": "/ui/search?q=lighthouse",
    "dead-letters": "/ui/dead-letters?status=all",
    "groups": "/ui/dead-letters/groups?status=all",
    "redrives": "/ui/redrives",
}


async def test_every_view_reads_at_390_and_1280_px_with_visible_focus(
    signed_in: Tab, shots: Path
) -> None:
    page = signed_in.page
    views = dict(VIEWS)
    await signed_in.go("/ui/dead-letters/groups?status=all")
    views["group-handled"] = str(await page.locator("tr[data-group] a").first.get_attribute("href"))
    await signed_in.go(views["group-handled"])
    views["dead-letter"] = str(await page.locator("tr[data-letter] a").first.get_attribute("href"))
    await signed_in.go("/ui/documents?state=SUCCESS")
    views["document"] = str(await page.locator("td.name a").first.get_attribute("href"))
    await signed_in.go("/ui/redrives")
    views["redrive"] = str(await page.locator("td a").first.get_attribute("href"))

    for name, path in views.items():
        await signed_in.go(path)
        await screenshot(signed_in, shots, name)
    await page.set_viewport_size({"width": 1280, "height": 900})

    # Keyboard: the first Tab lands on the skip link, with a focus ring one can see.
    await signed_in.go("/ui/")
    await page.keyboard.press("Tab")
    focused = await page.evaluate(
        "() => [document.activeElement.textContent, getComputedStyle(document.activeElement)"
        ".outlineStyle]"
    )
    assert focused == ["Skip to content", "solid"]
    # Times are the browser's, with the ISO time on hover.
    await signed_in.go("/ui/dead-letters?status=all")
    time = page.locator("time").first
    assert re.match(r"\d{4}-\d\d-\d\dT", str(await time.get_attribute("title")))
    assert "UTC" not in await time.inner_text(), "shown in the browser's zone, by the script"
