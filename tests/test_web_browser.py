"""The web app in a real browser: Debian's chromium, headless, driven by Playwright
(launched with `executable_path`, never a downloaded browser). Screenshots of every
page go to tests/screenshots/ (git-ignored) for review."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.test_handoff import handoff_of, to_sql
from tests.test_web import MARKETER, PASSWORD, add_user, handoff_email_link
from tests.test_webhooks import serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).parent / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")


async def browser_page(playwright, profile: str):  # type: ignore[no-untyped-def]
    context = await playwright.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                                  args=ARGS)
    return context, context.pages[0] if context.pages else await context.new_page()


async def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_in_a_browser_sign_in_pages_a_rep_accepts_from_the_email_and_a_post_without_csrf_changes_nothing(stack):
    from playwright.async_api import async_playwright

    email = "vic@wayne.example"
    add_user(stack, MARKETER, "marketer")
    await to_sql(stack, email, first_name="Vic", company="Wayne")
    handoff = handoff_of(stack, email)
    link = handoff_email_link(stack, email)
    async with serve(stack) as http, async_playwright() as playwright:
        base = str(http.base_url).rstrip("/")
        context, page = await browser_page(playwright, tempfile.mkdtemp(prefix="nurture-chromium-"))
        try:
            await page.goto(f"{base}/leads")
            assert page.url.startswith(f"{base}/login?next=")
            await shot(page, "login")
            await page.fill("#email", MARKETER)
            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            assert page.url == f"{base}/leads"
            await shot(page, "leads")
            for path, name in (("/", "dashboard"), (f"/leads/{email}", "lead"), ("/handoffs", "handoffs"),
                               (f"/handoffs/{handoff.id}", "handoff"), (f"/leads/{email}/forget", "forget"),
                               ("/leads/nobody@wayne.example", "not-found")):
                await page.goto(base + path)
                await shot(page, name)
            # the confirmation form, its CSRF token taken out before submitting: refused, nothing changed
            await page.goto(f"{base}/leads/{email}/forget")
            await page.evaluate("document.querySelector(\"form[action$='/forget'] input[name=csrf_token]\").remove()")
            await page.click("button.danger")
            assert "Refused" in await page.inner_text("h1")
            await shot(page, "csrf-refused")
            assert stack.show(email)["first_name"] == "Vic"
            # the rep, not signed in, opens the link of the email and accepts
            await context.clear_cookies()
            await page.goto(base + link)
            await shot(page, "handoff-link")
            assert stack.show(email)["stage"] == "sql"  # opening it changed nothing
            await page.click("form:has(input[value=accept]) button")
            assert "opportunity" in await page.inner_text("main")
            await shot(page, "handoff-link-accepted")
            assert stack.show(email)["stage"] == "opportunity"
            await page.goto(base + link)
            assert "no longer works" in await page.inner_text("h1")
            await shot(page, "handoff-link-void")
        finally:
            await context.close()
