"""A lead's whole journey on the real dev server, with simulated (skipped) time.

The sample campaign `b2b-trial` (campaigns/b2b-trial.yaml): welcome, wait 2d,
case-study, wait-click (3d, on_timeout: reminder), demo-invite, goto end, reminder,
branch-hot, wait 5d, end. Sends wait for weekday office hours in the lead's zone, and
at most 3 marketing emails go out per 7 days.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from nurture.service import UserError

DAY = timedelta(days=1)
VP = {"first_name": "Ann", "job_title": "VP Marketing", "company_size": 200, "source": "web_form",
      "timezone": "Europe/Paris"}


def sent_steps(lead: dict) -> list[str]:
    return [h["detail"]["step"] for h in lead["history"]
            if h["kind"] == "email" and h["reason"].startswith("sent ") and "step" in h.get("detail", {})]


def stages(lead: dict) -> list[str]:
    return [h["detail"]["to"] for h in lead["history"] if h["kind"] == "stage"]


async def test_click_path_runs_the_sample_campaign_to_its_end(sendgrid_stack):
    stack, fake = sendgrid_stack, sendgrid_stack.extras["sendgrid"]
    email = "ann@globex.example"
    lead = await stack.add(email, **VP)
    assert lead["campaign"] == "b2b-trial"

    # welcome in office hours, then 2 days, then the case study
    lead = await stack.until(email, lambda lead: lead["step"] == "wait-click")
    assert sent_steps(lead) == ["welcome", "case-study"]
    assert lead["step"] == "wait-click"

    await stack.nurture.record_event(email, "email_click", step="case-study", campaign="b2b-trial")
    await stack.forward(email, 14 * DAY)
    lead = stack.show(email)
    assert sent_steps(lead) == ["welcome", "case-study", "demo-invite", "end"]
    assert lead["campaign"] is None and lead["step"] is None
    # the 4th email in 7 days waited for the frequency cap, and the history says so
    assert any("frequency cap" in h["reason"] for h in lead["history"])
    assert any("left campaign b2b-trial: completed" in h["reason"] for h in lead["history"])
    by_send = fake.count_by_send_id()
    assert len(by_send) == 4 and set(by_send.values()) == {1}


async def test_no_click_takes_the_timeout_branch(stack):
    email = "bob@initech.example"
    await stack.add(email, first_name="Bob", source="content_download", timezone="America/New_York")
    await stack.forward(email, 30 * DAY)
    lead = stack.show(email)
    assert sent_steps(lead) == ["welcome", "case-study", "reminder", "end"]
    reasons = [h["reason"] for h in lead["history"]]
    assert any("wait-click: no email_click on case-study within 3d, going to reminder" in r for r in reasons)
    assert any("branch-hot: condition does not hold" in r for r in reasons)


async def test_scoring_to_mql_then_bant_to_sql_creates_the_handoff_and_accept(stack):
    email = "cara@acme-customer.example"
    await stack.add(email, first_name="Cara", job_title="Head of Sales", company_size=80, source="web_form")
    for _ in range(2):  # the second pricing view of the day is capped by max_per_day
        await stack.nurture.record_event(email, "page_view", url="https://acme.example/pricing")
    assert stack.show(email)["score"] == 15
    await stack.nurture.record_event(email, "quote_request")
    await stack.nurture.record_event(email, "webinar_attended")
    lead = stack.show(email)
    assert lead["score"] >= 50 and lead["stage"] == "mql" and lead["temperature"] == "hot"

    await stack.nurture.set_bant(email, {"budget": True, "authority": True, "need": True})
    assert stack.show(email)["stage"] == "mql"  # sql needs all four facts in the sample funnel
    await stack.nurture.set_bant(email, {"timing": True})
    lead = stack.show(email)
    assert lead["stage"] == "sql"
    assert lead["campaign"] is None  # marketing email stops at SQL
    assert lead["owner"] in ("alice@acme.example", "bob@acme.example", "chloe@acme.example")
    with stack.session() as session:
        from nurture import crud

        (handoff,) = crud.list_handoffs(session=session)
        owner_mail = [e for e in crud.list_outbox(session=session) if e.to == lead["owner"]]
    assert handoff.status == "open" and handoff.owner == lead["owner"] and handoff.snapshot["bant"]["timing"] is True
    assert len(owner_mail) == 1 and owner_mail[0].marketing is False

    lead = (await stack.nurture.handoff_action(handoff.id, "accept")).lead
    assert lead["stage"] == "opportunity"
    assert stages(stack.show(email)) == ["mql", "sql", "opportunity"]


async def test_rejected_lead_is_recycled_with_score_reset_and_reenters_nurture(stack):
    email = "dan@hooli.example"
    await stack.add(email, job_title="CTO", company_size=500, source="web_form")
    await stack.nurture.record_event(email, "quote_request")
    await stack.nurture.record_event(email, "webinar_attended")
    await stack.nurture.set_bant(email, {"budget": True, "authority": True, "need": True, "timing": True})
    lead = stack.show(email)
    assert lead["stage"] == "sql"
    with stack.session() as session:
        from nurture import crud

        (handoff,) = crud.list_handoffs(session=session)

    with pytest.raises(UserError, match="needs a reason"):
        await stack.nurture.handoff_action(handoff.id, "reject", "  ")
    lead = (await stack.nurture.handoff_action(handoff.id, "reject", "no budget this year")).lead
    assert lead["stage"] == "recycled" and lead["score"] == 0 and lead["owner"] is None
    assert lead["campaign"] == "recycled-nurture"  # auto_on: recycled
    with stack.session() as session:
        assert crud.get_handoff(session=session, handoff_id=handoff.id).status == "rejected"
        assert crud.get_handoff(session=session, handoff_id=handoff.id).reason == "no budget this year"


async def test_unsubscribe_stops_everything_at_once(stack):
    email = "eve@umbrella.example"
    await stack.add(email, source="web_form")
    await stack.until(email, lambda lead: sent_steps(lead) == ["welcome"])
    await stack.nurture.record_event(email, "email_unsubscribe")
    await stack.forward(email, 30 * DAY)
    lead = stack.show(email)
    assert lead["status"] == "unsubscribed"
    assert sent_steps(lead) == ["welcome"]
    assert lead["campaign"] is None
    with pytest.raises(UserError, match="cannot receive marketing email"):
        await stack.nurture.enroll(email, "b2b-trial")


async def test_a_second_enrollment_is_refused_unless_switching(stack):
    email = "fay@stark.example"
    await stack.add(email, source="web_form")
    with pytest.raises(UserError, match="already in campaign 'b2b-trial'"):
        await stack.nurture.enroll(email, "b2b-trial")
    with pytest.raises(UserError, match="unknown campaign 'nope'"):
        await stack.nurture.enroll(email, "nope", switch=True)
    # recycled-nurture only takes recycled leads: refused, and the lead stays where it was
    with pytest.raises(UserError, match=r"stage 'lead' is not in enroll.stages \['recycled'\]"):
        await stack.nurture.enroll(email, "recycled-nurture", switch=True)
    assert stack.show(email)["campaign"] == "b2b-trial"


async def test_state_survives_continue_as_new(temporal_env, tmp_path):
    from tests.conftest import _stack, make_settings

    async with _stack(temporal_env, make_settings(tmp_path, max_history=60)) as stack:
        email = "gus@wayne.example"
        await stack.add(email, source="web_form", job_title="Director", company_size=60)
        first_run = (await stack.handle(email).describe()).run_id
        for index in range(12):
            await stack.nurture.record_event(email, "email_open", event_id=f"open-{index}")
        await stack.until(email, lambda lead: lead["step"] == "wait-click")
        assert (await stack.handle(email).describe()).run_id != first_run  # it continued as new
        lead = await stack.query(email)
        assert lead["score"] == 12
        assert lead["step"] == "wait-click" and lead["campaign"] == "b2b-trial"
        # a duplicate from before the continue-as-new still counts once
        await stack.nurture.record_event(email, "email_open", event_id="open-3")
        assert stack.show(email)["score"] == 12
        await stack.forward(email, 30 * DAY)
        assert sent_steps(stack.show(email)) == ["welcome", "case-study", "reminder", "end"]


# ---------------------------------------------------------------- send windows across DST

DST_CAMPAIGN = """\
name: dst-check
sender: {from: "Acme <hello@acme.example>"}
send_window: {timezone: lead, default_timezone: Europe/Paris, days: [mon, tue, wed, thu, fri], hours: "09:00-17:30"}
steps:
  - {id: hello, send: welcome}
"""


@pytest.mark.parametrize("zone, due, sent", [
    # due on the Saturday of the change weekend; sent Monday 09:00 local, after the change
    ("Europe/Paris", "2027-03-27T10:00:00+00:00", "2027-03-29T07:00:00Z"),  # CET -> CEST (+2)
    ("Europe/Paris", "2027-10-30T10:00:00+00:00", "2027-11-01T08:00:00Z"),  # CEST -> CET (+1)
    ("America/New_York", "2027-03-13T15:00:00+00:00", "2027-03-15T13:00:00Z"),  # EST -> EDT (-4)
    ("America/New_York", "2027-11-06T15:00:00+00:00", "2027-11-08T14:00:00Z"),  # EDT -> EST (-5)
])
async def test_an_email_due_on_a_dst_weekend_goes_out_monday_9_local(temporal_env, tmp_path, zone, due, sent):
    # On the real server: the lead's clock is moved to the weekend of the change, the lead is
    # enrolled, and the send waits for Monday 09:00 in its zone, whose UTC offset has changed.
    from datetime import datetime

    from tests.conftest import ROOT, _stack, make_settings

    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "dst-check.yaml").write_text(DST_CAMPAIGN)
    (campaigns / "funnel.yaml").write_text((ROOT / "campaigns" / "funnel.yaml").read_text())
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        email = "dst@globex.example"
        await stack.add(email, first_name="Dana", timezone=zone, source="web_form")
        handle = stack.handle(email)
        await stack.forward(email, datetime.fromisoformat(due) - await stack.env.now(handle))
        await stack.nurture.enroll(email, "dst-check")
        held = [h for h in stack.show(email)["history"] if "held for the send window" in h["reason"]]
        assert [h["detail"]["until"] for h in held] == [sent]
        await stack.forward(email, 3 * DAY)
        lead = stack.show(email)
        (mail,) = [h for h in lead["history"] if h["kind"] == "email" and h["reason"].startswith("sent welcome")]
        assert mail["at"][:16] == sent[:16], (mail["at"], sent)
