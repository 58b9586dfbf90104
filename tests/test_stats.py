"""Campaign statistics: a scripted journey on the real dev server, driven through the
signed SendGrid webhook, then the stats JSON, `campaign show --json` and the pages
checked number by number."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from typing import Any

import httpx
from sqlmodel import select

from nurture import journey, rules, stats
from nurture.dispatcher import dispatch_once
from nurture.models import Email
from tests.conftest import Stack
from tests.test_web import MARKETER, REP, add_user, sign_in
from tests.test_webhooks import hook, post, serve, sg, until  # noqa: F401 - hook: the webhook fixture

DAY = timedelta(days=1)
AUTH = {"Authorization": "Bearer test-key"}
CAMPAIGN = "b2b-trial"


def case_study_variant(email: str) -> int:
    return rules.ab_variant(CAMPAIGN, "case-study", journey.lead_key(email), 2)


def addresses(variant_0: int, variant_1: int) -> list[str]:
    """Lead addresses whose case-study subject is known in advance: the split is by hash."""
    picked: dict[int, list[str]] = {0: [], 1: []}
    wanted = {0: variant_0, 1: variant_1}
    for n in range(200):
        email = f"lead{n}@globex.example"
        variant = case_study_variant(email)
        if len(picked[variant]) < wanted[variant]:
            picked[variant].append(email)
    return picked[0] + picked[1]


def email_of(stack: Stack, email: str, step: str) -> Email | None:
    with stack.session() as session:
        return session.exec(select(Email).where(Email.lead_key == journey.lead_key(email), Email.step == step)).first()


async def sent(stack: Stack, email: str, step: str) -> Email:
    await stack.until(email, lambda _: (row := email_of(stack, email, step)) is not None and row.status == "sent")
    row = email_of(stack, email, step)
    assert row is not None
    return row


async def scripted_journey(stack: Stack, http: httpx.AsyncClient) -> dict[str, str]:
    """Four leads through b2b-trial; returns who is who.

    - ann, bob (case-study variant 0) and cat (variant 1) get welcome and case-study;
      dan's welcome bounces, which ends his journey (`status bounced`).
    - welcome: delivered to ann, bob, cat; ann opened it only through a privacy proxy
      (a machine open: not an open), bob opened it twice, cat clicked it.
    - case-study: bob clicks (so goes on to demo-invite), cat opens it; ann does nothing.
    - bob becomes an MQL after enrolling (quote request, webinar, download: 60 points).
    """
    ann, bob, cat, dan = addresses(2, 1)[0], addresses(2, 1)[1], addresses(2, 1)[2], "dan@initech.example"
    for email in (ann, bob, cat, dan):
        await stack.add(email, first_name="Pat", job_title="VP Sales", source="web_form", timezone="Europe/Paris")
    welcome = {email: await sent(stack, email, "welcome") for email in (ann, bob, cat, dan)}
    batch = [sg("delivered", email, welcome[email]) for email in (ann, bob, cat)]
    batch += [sg("open", ann, welcome[ann], sg_machine_open=True),
              sg("open", bob, welcome[bob]), sg("open", bob, welcome[bob]),
              sg("click", cat, welcome[cat], url="https://acme.example/trial"),
              sg("bounce", dan, welcome[dan], type="bounce", reason="550 no such user")]
    assert (await post(http, batch)).status_code == 200
    await dispatch_once(stack.settings, stack.client)
    await until(lambda: stack.show(dan)["campaign"] is None)

    case = {email: await sent(stack, email, "case-study") for email in (ann, bob, cat)}
    assert [case[e].variant for e in (ann, bob, cat)] == [0, 0, 1]
    batch = [sg("delivered", email, case[email]) for email in (ann, bob, cat)]
    batch += [sg("click", bob, case[bob], url="https://acme.example/story"), sg("open", cat, case[cat])]
    assert (await post(http, batch)).status_code == 200
    await dispatch_once(stack.settings, stack.client)
    await sent(stack, bob, "demo-invite")
    await stack.nurture.ingest_events([{"email": bob, "type": kind} for kind in
                                       ("quote_request", "webinar_attended", "content_download")])
    await until(lambda: stack.show(bob)["stage"] == "mql")
    await until(lambda: all(stack.show(e)["step"] == "wait-click" for e in (ann, cat)))
    return {"ann": ann, "bob": bob, "cat": cat, "dan": dan}


def step(document: dict[str, Any], step_id: str) -> dict[str, Any]:
    (found,) = [s for s in document["steps"] if s["id"] == step_id]
    return found


async def test_stats_count_the_scripted_journey_exactly(hook):
    stack, http = hook
    await scripted_journey(stack, http)
    response = await http.get(f"/v1/campaigns/{CAMPAIGN}/stats", headers=AUTH)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert (doc["campaign"], doc["enrolled"], doc["active"], doc["completed"]) == (CAMPAIGN, 4, 3, 0)
    assert doc["exited"] == {"status bounced": 1}
    assert doc["conversions"] == {"mql": 1, "sql": 0, "opportunity": 0, "customer": 0}
    assert doc["conversion_rates"]["mql"] == 0.25
    assert [(s["id"], s["kind"]) for s in doc["steps"]] == [
        ("welcome", "send"), ("step-2", "wait"), ("case-study", "send"), ("wait-click", "wait_for"),
        ("demo-invite", "send"), ("step-6", "goto"), ("reminder", "send"), ("branch-hot", "if"),
        ("step-9", "wait"), ("end", "send")]

    welcome = step(doc, "welcome")
    assert {k: welcome[k] for k in ("reached", "waiting", "sent", "delivered", "unique_opens", "unique_clicks",
                                    "bounced", "unsubscribed")} == {
        "reached": 4, "waiting": 0, "sent": 4, "delivered": 3, "unique_opens": 1, "unique_clicks": 1,
        "bounced": 1, "unsubscribed": 0}
    assert welcome["rates"] == {"delivered": 0.75, "open": 0.25, "click": 0.25, "bounce": 0.25, "unsubscribe": 0.0}
    assert welcome["variants"] == []  # its subject comes from the template: no split

    case = step(doc, "case-study")
    assert (case["reached"], case["sent"], case["delivered"], case["unique_opens"], case["unique_clicks"]) == (3, 3, 3, 1, 1)
    assert case["variants"] == [
        {"subject": "Save 30% like Globex", "sent": 2, "unique_opens": 0, "unique_clicks": 1,
         "open_rate": 0.0, "click_rate": 0.5},
        {"subject": "{{ lead.first_name or 'Hi' }}, a story for you", "sent": 1, "unique_opens": 1,
         "unique_clicks": 0, "open_rate": 1.0, "click_rate": 0.0}]
    assert case["significance"]["unique_clicks"]["significant"] is False
    assert 0 < case["significance"]["unique_clicks"]["p_value"] <= 1
    assert (step(doc, "step-2")["reached"], step(doc, "wait-click")["reached"], step(doc, "wait-click")["waiting"]) == (4, 3, 2)
    assert (step(doc, "demo-invite")["reached"], step(doc, "demo-invite")["sent"], step(doc, "reminder")["reached"]) == (1, 1, 0)
    assert sum(day["sent"] for day in doc["per_day"]) == 8
    assert sum(day["unique_clicks"] for day in doc["per_day"]) == 2

    listed = (await http.get("/v1/campaigns", headers=AUTH)).json()["campaigns"]
    (mine,) = [c for c in listed if c["campaign"] == CAMPAIGN]
    assert {k: mine[k] for k in ("enrolled", "active", "completed", "exited", "conversions")} == {
        k: doc[k] for k in ("enrolled", "active", "completed", "exited", "conversions")}

    await pages_and_cli_show_the_same_numbers(stack, http, doc)


def cells(html: str, row: str) -> dict[str, int]:
    """The numbers of a table row (`<tr data-...="row">`), by each cell's data-field."""
    found = re.search(rf'<tr data-(?:step|campaign|variant)="{re.escape(row)}">(.*?)</tr>', html, re.S)
    assert found, row
    return {name: int(value) for name, value in re.findall(r'data-field="(\w+)">(\d+)', found.group(1))}


async def pages_and_cli_show_the_same_numbers(stack: Stack, http: httpx.AsyncClient, doc: dict[str, Any]) -> None:
    assert (await http.get(f"/campaigns/{CAMPAIGN}")).status_code == 303  # signed-in users only
    add_user(stack, MARKETER, "marketer")
    await sign_in(http, MARKETER)
    page = await http.get(f"/campaigns/{CAMPAIGN}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for entry in doc["steps"]:
        shown = cells(html, entry["id"])
        assert shown == {k: entry[k] for k in shown} and shown["reached"] == entry["reached"], entry["id"]
        if entry["kind"] == "send":
            assert set(shown) == {"reached", "waiting", "sent", "delivered", "unique_opens", "unique_clicks",
                                  "bounced", "unsubscribed"}
    ab = html.split('<table class="ab" data-step="case-study">', 1)[1].split("</table>", 1)[0]
    for index, variant in enumerate(step(doc, "case-study")["variants"]):
        assert cells(ab, str(index)) == {k: variant[k] for k in ("sent", "unique_opens", "unique_clicks")}
    assert re.search(r"unique clicks:\s+p = [0-9.]+, not significant", ab)
    assert html.count('<g class="step"') == len(doc["steps"]) and "<script" not in html
    assert re.search(r'<text [^>]*>reached 3 \(75\.0% of enrolled\) · waiting now 0</text>', html)  # case-study box
    assert "−1 reached the next step" in html  # welcome 4 -> step-2 4 -> case-study 3... the drop is drawn
    assert 'aria-labelledby="daily-title"' in html

    overview = (await http.get("/")).text
    assert cells(overview, CAMPAIGN) == {"enrolled": 4, "active": 3, "completed": 0, "mql": 1, "sql": 0,
                                         "opportunity": 0, "customer": 0}
    assert '<span data-exit="status bounced">status bounced: 1</span>' in overview
    assert "(25.0%)" in overview
    assert "@globex.example" not in overview and "@globex.example" not in html  # no lead address on them

    env = {**os.environ, "NURTURE_HOME": str(stack.settings.home), "NURTURE_DATABASE_URL": stack.settings.db_url,
           "NURTURE_CAMPAIGNS_DIR": str(stack.settings.campaigns_dir)}
    shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "nurture.cli", "campaign", "show",
                                                     CAMPAIGN, "--json"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == doc
    table = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "nurture.cli", "campaign", "show", CAMPAIGN],
                                    capture_output=True, text=True, env={**env, "COLUMNS": "200"})
    assert table.returncode == 0 and "enrolled 4, in it now 3, completed 0; exited: status bounced 1" in table.stdout
    assert "mql 1 (25.0%)" in table.stdout and "A/B: case-study" in table.stdout


async def test_unknown_campaign_and_bad_since_are_clear_errors(stack):
    async with serve(stack) as http:
        missing = await http.get("/v1/campaigns/nope/stats", headers=AUTH)
        assert missing.status_code == 404 and missing.json()["field"] == "name"
        assert "unknown campaign 'nope'" in missing.json()["error"]
        bad = await http.get(f"/v1/campaigns/{CAMPAIGN}/stats?since=yesterday", headers=AUTH)
        assert bad.status_code == 422 and bad.json()["field"] == "since"
        assert (await http.get(f"/v1/campaigns/{CAMPAIGN}/stats")).status_code == 401
        assert (await http.get("/v1/campaigns")).status_code == 401
        add_user(stack, MARKETER, "marketer")
        await sign_in(http, MARKETER)
        page = await http.get("/campaigns/nope")
        assert page.status_code == 404 and "There is no campaign named &#39;nope&#39;." in page.text
        later = await http.get(f"/v1/campaigns/{CAMPAIGN}/stats?since=2999-01-01T00:00:00Z", headers=AUTH)
        assert later.status_code == 200 and later.json()["enrolled"] == 0
    env = {**os.environ, "NURTURE_HOME": str(stack.settings.home), "NURTURE_DATABASE_URL": stack.settings.db_url,
           "NURTURE_CAMPAIGNS_DIR": str(stack.settings.campaigns_dir)}
    result = subprocess.run([sys.executable, "-m", "nurture.cli", "campaign", "show", "nope"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1 and result.stderr.startswith("error: unknown campaign 'nope'")
    assert len(result.stderr.strip().splitlines()) == 1


async def test_sales_reps_go_to_their_inbox_not_the_campaign_pages(stack):
    """Contract section 7: sales reps see only handoffs and the leads handed to them."""
    add_user(stack, REP, "sales")
    async with serve(stack) as http:
        await sign_in(http, REP)
        home = await http.get("/")
        assert home.status_code == 303 and home.headers["location"] == "/handoffs"
        page = await http.get(f"/campaigns/{CAMPAIGN}")
        assert page.status_code == 403 and "inbox" in page.text


def test_significance_is_scipys_two_proportion_test():
    # 120/1000 against 80/1000 clicks: z = 2.98, p = 0.00287 (the two-proportion z-test).
    strong = stats.significance([(120, 1000), (80, 1000)])
    assert strong["significant"] is True and abs(strong["p_value"] - 0.002869) < 1e-6
    weak = stats.significance([(12, 100), (10, 100)])
    assert weak["significant"] is False and 0.6 < weak["p_value"] < 0.7
    assert stats.significance([(0, 10), (0, 12)])["p_value"] is None  # never clicked: no test
    assert stats.significance([(3, 10), (0, 0)])["p_value"] is None  # a variant not sent yet
