"""Campaign control (contract section 8): pause, resume and stop, on the real server with
time skipping. A paused campaign sends nothing and its leads wait where they are; resume
goes on where each lead was; stop makes every lead leave with `campaign stopped`; the
state is the store's, so a lead that never got the signal still holds."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from nurture import crud, journey, stats
from nurture.campaign import find_campaign
from nurture.service import UserError
from tests.conftest import Stack
from tests.test_cli import cli, one_error_line  # noqa: F401 - cli: the fixture
from tests.test_web import MARKETER, REP, add_user, csrf_of, sign_in
from tests.test_webhooks import sent_steps, serve

CAMPAIGN = "b2b-trial"
DAY = timedelta(days=1)


async def at_step_2(stack: Stack, email: str) -> None:
    """The lead got its welcome and waits out step-2 (wait 2d) before the case study."""
    await stack.add(email, first_name="Pat", source="web_form")
    await stack.until(email, lambda lead: lead["step"] == "step-2")
    assert sent_steps(stack.show(email)) == ["welcome"]


async def test_a_paused_campaign_holds_its_leads_and_resume_goes_on_where_each_was(stack):
    email = "ann@globex.example"
    await at_step_2(stack, email)

    report = await stack.nurture.control_campaign(CAMPAIGN, "pause", by="mia@acme.example")
    assert (report.state, report.changed, report.told) == ("paused", True, 1)
    await stack.until(email, lambda lead: lead["waiting_for"] == "campaign paused", limit=DAY)
    for _ in range(6):  # three days: step-2's wait runs out, still nothing is sent
        await stack.forward(email, timedelta(hours=12))
    lead = stack.show(email)
    assert (lead["step"], lead["waiting_for"], sent_steps(lead)) == ("step-2", "campaign paused", ["welcome"])
    assert any(h["reason"] == f"campaign {CAMPAIGN} paused" for h in lead["history"])
    with stack.session() as session:
        assert stats.overview(session, [find_campaign(stack.settings.campaigns_dir, CAMPAIGN)], None)[0]["status"] == "paused"

    with pytest.raises(UserError, match=f"campaign '{CAMPAIGN}' is paused: it takes no leads"):
        await stack.add("bob@globex.example", campaign=CAMPAIGN)
    with stack.session() as session:
        assert crud.get_lead(session=session, email="bob@globex.example") is None  # refused before anything is written

    again = await stack.nurture.control_campaign(CAMPAIGN, "pause")
    assert (again.changed, again.told) == (False, 1)  # idempotent: told again, nothing else

    resumed = await stack.nurture.control_campaign(CAMPAIGN, "resume")
    assert (resumed.state, resumed.changed) == ("active", True)
    # the wait ran out while paused: the case study goes out at once (in its send window)
    lead = await stack.until(email, lambda lead: "case-study" in sent_steps(lead), step=timedelta(hours=4), limit=3 * DAY)
    assert any(h["reason"] == f"campaign {CAMPAIGN} resumed" for h in lead["history"])
    assert lead["waiting_for"] != "campaign paused"


async def test_stop_makes_every_lead_leave_and_takes_no_new_ones(stack):
    leads = ["cat@globex.example", "dan@globex.example"]
    for email in leads:
        await at_step_2(stack, email)
    report = await stack.nurture.control_campaign(CAMPAIGN, "stop")
    assert (report.state, report.told) == ("stopped", 2)
    for email in leads:
        lead = await stack.until(email, lambda lead: lead["campaign"] is None, limit=DAY)
        assert any(h["reason"] == f"left campaign {CAMPAIGN}: campaign stopped" for h in lead["history"])
        for _ in range(8):
            await stack.forward(email, timedelta(hours=12))
        assert sent_steps(stack.show(email)) == ["welcome"]
    with stack.session() as session:
        (overview,) = stats.overview(session, [find_campaign(stack.settings.campaigns_dir, CAMPAIGN)], None)
    assert overview["status"] == "stopped" and overview["exited"] == {"campaign stopped": 2}

    # a new lead that would enter by itself (auto_on: created) does not
    assert (await stack.add("eve@globex.example", source="web_form"))["campaign"] is None
    with pytest.raises(UserError, match="is stopped: resume it first"):
        await stack.nurture.control_campaign(CAMPAIGN, "pause")
    assert (await stack.nurture.control_campaign(CAMPAIGN, "resume")).state == "active"
    assert (await stack.add("fay@globex.example", source="web_form"))["campaign"] == CAMPAIGN


async def test_a_lead_that_missed_the_signal_holds_at_its_next_email(stack):
    """The store says paused, no signal was sent (as when Temporal was away at the time):
    the send activity re-reads the state and nothing leaves; resume then tells the lead."""
    email = "gus@globex.example"
    await at_step_2(stack, email)
    with stack.session() as session:
        crud.set_campaign_control(session=session, campaign=CAMPAIGN, state="paused", by=None)
    lead = await stack.until(email, lambda lead: lead["waiting_for"] == "campaign paused", limit=4 * DAY)
    assert sent_steps(lead) == ["welcome"]
    with stack.session() as session:
        assert [e.step for e in crud.emails_of(session=session, key=journey.lead_key(email))] == ["welcome"]  # not even claimed
    await stack.nurture.control_campaign(CAMPAIGN, "resume")
    await stack.until(email, lambda lead: "case-study" in sent_steps(lead), step=timedelta(hours=4), limit=3 * DAY)


async def test_unknown_campaign_and_cli_lines(cli, stack):
    missing = await cli("campaign", "pause", "no-such")
    assert missing.returncode == 1 and "no-such" in one_error_line(missing)
    added = await cli("lead", "add", "--email", "hal@globex.example", "--source", "web_form")
    assert added.returncode == 0, added.stderr
    paused = await cli("campaign", "pause", CAMPAIGN)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == (f"campaign {CAMPAIGN} paused: 1 lead held where they are until "
                                     f"`nurture campaign resume {CAMPAIGN}`")
    listed = json.loads((await cli("campaign", "list", "--json")).stdout)
    assert {row["name"]: row["status"] for row in listed}[CAMPAIGN] == "paused"
    refused = await cli("enroll", "ivy@globex.example", CAMPAIGN)
    assert refused.returncode == 1
    await cli("lead", "add", "--email", "ivy@globex.example")
    refused = await cli("enroll", "ivy@globex.example", CAMPAIGN)
    assert refused.returncode == 1 and one_error_line(refused) == (
        f"error: campaign: campaign '{CAMPAIGN}' is paused: it takes no leads (nurture campaign resume {CAMPAIGN})")
    stopped = await cli("campaign", "stop", CAMPAIGN)
    assert stopped.returncode == 0 and "1 lead left it (campaign stopped)" in stopped.stdout


async def test_marketers_pause_resume_and_stop_from_the_campaign_page(stack):
    email = "jo@globex.example"
    await at_step_2(stack, email)
    add_user(stack, MARKETER, "marketer")
    add_user(stack, REP, "sales")
    async with serve(stack) as http:
        await sign_in(http, MARKETER)
        page = await http.get(f"/campaigns/{CAMPAIGN}")
        assert page.status_code == 200 and f'action="/campaigns/{CAMPAIGN}/pause"' in page.text
        token = csrf_of(page.text)
        assert (await http.post(f"/campaigns/{CAMPAIGN}/pause", data={})).status_code == 403  # no CSRF token
        assert stack.show(email)["waiting_for"] != "campaign paused"
        paused = await http.post(f"/campaigns/{CAMPAIGN}/pause", data={"csrf_token": token})
        assert paused.status_code == 303 and paused.headers["location"] == f"/campaigns/{CAMPAIGN}?done=pause"
        page = await http.get(paused.headers["location"])
        assert "Status <strong>paused</strong>" in page.text and "Paused: nothing is sent" in page.text
        assert f'action="/campaigns/{CAMPAIGN}/resume"' in page.text
        await stack.until(email, lambda lead: lead["waiting_for"] == "campaign paused", limit=DAY)

        unconfirmed = await http.post(f"/campaigns/{CAMPAIGN}/stop", data={"csrf_token": token})
        assert unconfirmed.status_code == 400 and 'id="stop-error"' in unconfirmed.text
        assert stack.show(email)["campaign"] == CAMPAIGN
        stopped = await http.post(f"/campaigns/{CAMPAIGN}/stop", data={"csrf_token": token, "confirm": "stop"})
        assert stopped.status_code == 303
        await stack.until(email, lambda lead: lead["campaign"] is None, limit=DAY)
        assert (await http.post(f"/campaigns/{CAMPAIGN}/explode", data={"csrf_token": token})).status_code == 404
        missing = await http.post("/campaigns/no-such/pause", data={"csrf_token": token})
        assert missing.status_code == 409 and "no-such" in missing.text

        await http.post("/logout", data={"csrf_token": token})
        await sign_in(http, REP)
        rep_token = csrf_of((await http.get("/handoffs")).text)
        refused = await http.post(f"/campaigns/{CAMPAIGN}/resume", data={"csrf_token": rep_token})
        assert refused.status_code == 403
    with stack.session() as session:
        assert crud.campaign_control(session=session, campaign=CAMPAIGN).state == "stopped"
