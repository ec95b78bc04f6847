"""The console tests' browser: Debian's Chromium, headless, driven by Playwright; one per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-quic",
                              "--no-first-run", "--disable-background-networking", "--disable-component-update",
                              "--disable-sync"])  # fmt: skip
        yield b
        b.close()


@pytest.fixture(scope="module")
def open_page(browser):
    """open_page(url): a new 1280x800 English page on `url` (30 s waits), closed when the module ends."""
    contexts = []

    def open_at(url: str):
        context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        return page

    yield open_at
    for context in contexts:
        context.close()
