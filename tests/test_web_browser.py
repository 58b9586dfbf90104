"""The web app in a real browser: Debian's chromium, headless, driven by Playwright
(launched with `executable_path`, never a downloaded browser). Screenshots of every
page go to tests/screenshots/ (git-ignored) for review."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.test_handoff import handoff_of, to_sql
from tests.test_stats import CAMPAIGN, scripted_journey
from tests.test_web import MARKETER, PASSWORD, add_user, handoff_email_link
from tests.test_webhooks import hook, serve  # noqa: F401 - hook: the webhook fixture

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
            for path, name in (("/", "campaigns"), (f"/leads/{email}", "lead"), ("/handoffs", "handoffs"),
                               (f"/handoffs/{handoff.id}", "handoff"), (f"/leads/{email}/forget", "forget"),
                               ("/leads/nobody@wayne.example", "not-found"), ("/account", "account")):
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


async def test_in_a_browser_the_campaign_page_shows_the_counts_of_a_scripted_journey(hook):
    """Four leads through b2b-trial (tests.test_stats.scripted_journey): the numbers a
    marketer reads on the page are the ones the journey produced, step by step and per
    subject variant."""
    from playwright.async_api import async_playwright

    stack, http = hook
    await scripted_journey(stack, http)
    add_user(stack, MARKETER, "marketer")
    expected = {  # step: (reached, sent, unique clicks)
        "welcome": (4, 4, 1), "case-study": (3, 3, 1), "wait-click": (3, None, None), "demo-invite": (1, 1, 0),
        "reminder": (0, 0, 0),
    }
    async with async_playwright() as playwright:
        base = str(http.base_url).rstrip("/")
        context, page = await browser_page(playwright, tempfile.mkdtemp(prefix="nurture-chromium-"))
        try:
            await page.goto(f"{base}/campaigns/{CAMPAIGN}")
            await page.fill("#email", MARKETER)
            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            assert page.url == f"{base}/campaigns/{CAMPAIGN}"
            await shot(page, "campaign")

            async def cell(scope: str, field: str) -> int | None:
                text = (await page.inner_text(f"{scope} td[data-field={field}]")).split()
                return int(text[0]) if text else None

            for step_id, figures in expected.items():
                row = f"table.steps tr[data-step={step_id}]"
                assert (await cell(row, "reached"), await cell(row, "sent"), await cell(row, "unique_clicks")) == figures, step_id
            variants = [(await cell(f"table.ab[data-step=case-study] tr[data-variant='{n}']", "sent"),
                         await cell(f"table.ab[data-step=case-study] tr[data-variant='{n}']", "unique_clicks"))
                        for n in (0, 1)]
            assert variants == [(2, 1), (1, 0)]  # ann and bob got variant 0, bob clicked; cat got 1
            await page.goto(f"{base}/?range=7")
            assert "b2b-trial" in await page.inner_text("main")
            await shot(page, "campaigns-7-days")
        finally:
            await context.close()
