"""The console in a real browser: Chromium (Debian's, at /usr/bin/chromium — browsers cannot be
downloaded here) driven by Playwright against a real `docproc up` with API keys set."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    async_playwright,
)

from tests.e2e.conftest import Running, docproc_up
from tests.support import RabbitMQ, missing

CHROMIUM = "/usr/bin/chromium"
KEY = "console-e2e-key"
WIDTHS = ((390, 844), (1280, 900))


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: DOCPROC_CONSOLE_SCREENSHOTS (docs/console for the README's),
    else a temporary directory."""
    chosen = os.environ.get("DOCPROC_CONSOLE_SCREENSHOTS")
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        return Path(chosen)
    return tmp_path_factory.mktemp("screenshots")


async def screenshot(tab: Tab, directory: Path, name: str) -> None:
    """The page at each width, whole, after checking nothing is wider than the window."""
    page = tab.page
    for width, height in WIDTHS:
        await page.set_viewport_size({"width": width, "height": height})
        await page.wait_for_load_state("networkidle")
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"{name} is wider than {width} px by {overflow} px"
        await page.screenshot(path=str(directory / f"{name}-{width}.png"), full_page=True)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (once, before anything runs)
        missing(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run installs it)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def console(
    rabbitmq: RabbitMQ, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    """One `docproc up` for the module, with an API key set, on its own vhost and store."""
    async with docproc_up(
        rabbitmq, tmp_path_factory.mktemp("console"), DOCPROC_API_KEYS=KEY
    ) as running:
        yield running


@dataclass
class Tab:
    """A browser tab that keeps a log of every request it made and every error it met."""

    page: Page
    base: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def go(self, path: str) -> None:
        await self.page.goto(self.base + path)

    def refused(self, status: int, path: str) -> None:
        """Chromium logs every refused request as a console error: take out the one the test
        made on purpose (and fail if it is not there)."""
        [logged] = [e for e in self.errors if f"status of {status}" in e and path in e]
        self.errors.remove(logged)

    def assert_clean(self) -> None:
        hosts = {urlsplit(url).hostname for url in self.requests if not url.startswith("data:")}
        assert hosts == {"127.0.0.1"}, f"requests left 127.0.0.1: {sorted(self.requests)}"
        assert self.errors == [], "the browser's console had errors"


async def open_tab(context: BrowserContext, base: str) -> Tab:
    page = await context.new_page()
    tab = Tab(page=page, base=base)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            tab.errors.append(f"{message.text} at {message.location}")

    def on_request(request: Request) -> None:
        tab.requests.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda error: tab.errors.append(f"page error: {error}"))
    page.on("request", on_request)
    return tab


async def sign_in(tab: Tab, key: str = KEY) -> None:
    await tab.go("/ui/")
    await tab.page.get_by_label("API key").fill(key)
    await tab.page.get_by_role("button", name="Sign in").click()


@pytest_asyncio.fixture(loop_scope="session")
async def signed_in(browser: Browser, console: Running) -> AsyncIterator[Tab]:
    """A tab of a fresh browser context, signed in with the right key; clean at the end."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    tab = await open_tab(context, console.api)
    await sign_in(tab)
    await tab.page.wait_for_url(re.compile(r"/ui/?$"))
    try:
        yield tab
        tab.assert_clean()
    finally:
        await context.close()
