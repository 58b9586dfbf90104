"""Scoring, fit and qualification through the real workflow, and `nurture rescore`.

The sample funnel (campaigns/funnel.yaml): page_view /pricing 15 (max 15 a day), /demo 10,
any other page 2 (max 10 a day); email_click 5, quote_request 30, webinar_attended 20,
email_unsubscribe -10; decay 10 points per full 30 days; MQL at 50 with grade C or better;
a job title like VP/Head/CxO is fit 20, 50+ employees 15, a personal mailbox -20, a
student -25, and grade F (negative fit) disqualifies.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from nurture import crud, journey
from nurture.campaign import load_funnel
from nurture.journey import LeadEvent
from tests.conftest import ROOT, _stack, make_settings

DAY = timedelta(days=1)
VP = {"job_title": "VP Sales", "company_size": 200}  # fit 35: grade A
PRICING = "https://acme.example/pricing"
FUNNEL = load_funnel(ROOT / "campaigns" / "funnel.yaml")


def entries(lead: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [h for h in lead["history"] if h["kind"] == kind]


def scores(lead: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(h["reason"], h["delta"], h["score"]) for h in entries(lead, "score")]


def decays(lead: dict[str, Any]) -> list[tuple[int, int]]:
    return [(h["delta"], h["score"]) for h in entries(lead, "score") if h["reason"].startswith("decay")]


def rescores(lead: dict[str, Any]) -> list[dict[str, Any]]:
    return [h for h in entries(lead, "score") if h["reason"].startswith("rescore")]


# ---------------------------------------------------------------- engagement points


async def test_first_matching_rule_wins_and_max_per_day_counts_per_utc_day(stack):
    email = "ann@globex.example"
    await stack.add(email)
    day = datetime.now(timezone.utc).replace(hour=9, minute=0, second=0, microsecond=0) - 3 * DAY
    for at in (day, day + timedelta(hours=5), day + DAY):  # two views one UTC day, one the next
        await stack.nurture.record_event(email, "page_view", url=PRICING, at=at)
    lead = stack.show(email)
    assert lead["score"] == 30
    views = [h for h in lead["history"] if h["reason"].startswith("page_view")]
    assert [h["delta"] for h in views] == [15, None, 15]
    assert views[1]["kind"] == "event" and "daily maximum reached, 0 points" in views[1]["reason"]
    assert all(h["detail"]["rule"] == "page_view#1 {url: {contains: /pricing}} +15 max 15/day" for h in views)

    # a URL that matches the pricing and the demo rules gets the first one's points only
    await stack.nurture.record_event(email, "page_view", url="https://acme.example/demo/pricing-tour")
    await stack.nurture.record_event(email, "page_view", url="https://acme.example/demo")
    await stack.nurture.record_event(email, "page_view", url="https://acme.example/blog/funnels")
    last = scores(stack.show(email))[-3:]
    assert [(delta, score) for _, delta, score in last] == [(15, 45), (10, 55), (2, 57)]
    rules = [h["detail"]["rule"] for h in entries(stack.show(email), "score")[-3:]]
    assert rules == ["page_view#1 {url: {contains: /pricing}} +15 max 15/day",
                     "page_view#2 {url: {contains: /demo}} +10 max 10/day", "page_view#3 +2 max 10/day"]
    assert all(h["reason"] == "page_view" for h in entries(stack.show(email), "score")[-3:])  # JSON reason: the type


async def test_negative_points_never_take_the_score_below_zero(stack):
    email = "neg@globex.example"
    await stack.add(email)
    await stack.nurture.record_event(email, "email_click")
    await stack.nurture.record_event(email, "email_unsubscribe")
    lead = stack.show(email)
    assert lead["score"] == 0 and lead["status"] == "unsubscribed"
    (unsubscribe,) = [h for h in entries(lead, "score") if h["reason"] == "email_unsubscribe"]
    # the entry names the rule and its points; the score after it shows the floor at 0
    assert (unsubscribe["delta"], unsubscribe["score"]) == (-10, 0)
    assert unsubscribe["detail"]["rule"] == "email_unsubscribe#1 -10"
    await stack.nurture.record_event(email, "email_unsubscribe", event_id="again")  # at 0 already
    assert stack.show(email)["score"] == 0


async def test_events_without_a_rule_and_machine_opens_are_stored_but_not_scored(stack):
    email = "quiet@globex.example"
    await stack.add(email)
    await stack.nurture.record_event(email, "email_delivered")
    await stack.nurture.record_event(email, "trial_started")  # a custom event
    await stack.nurture.record_event(email, "email_open", machine_open=True)  # a privacy proxy
    await stack.nurture.ingest_events([{"email": email, "type": "email_open", "machine_open": True}])
    await stack.nurture.record_event(email, "email_open")  # a person: 1 point
    lead = stack.show(email)
    assert lead["score"] == 1
    reasons = [h["reason"] for h in entries(lead, "event")]
    assert reasons == ["email_delivered (no scoring rule)", "trial_started (no scoring rule)",
                       "email_open (machine open, not scored)", "email_open (machine open, not scored)"]
    with stack.session() as session:
        stored = crud.events_of(session=session, key=journey.lead_key(email))
    assert [e.type for e in stored] == ["email_delivered", "trial_started", "email_open", "email_open", "email_open"]
    assert [bool(e.data.get("machine_open")) for e in stored] == [False, False, True, True, False]


# ---------------------------------------------------------------- decay


async def test_decay_takes_ten_points_per_full_thirty_days_and_stops_at_zero(stack):
    email = "fade@globex.example"
    await stack.add(email)
    await stack.nurture.record_event(email, "quote_request")
    assert stack.show(email)["score"] == 30
    await stack.forward(email, 95 * DAY)
    lead = stack.show(email)
    assert lead["score"] == 0
    assert decays(lead) == [(-10, 20), (-10, 10), (-10, 0)]
    assert [h["reason"] for h in entries(lead, "score")[-3:]] == ["decay: 1 x 30d inactive"] * 3
    await stack.forward(email, 40 * DAY)  # at 0 nothing more happens
    assert decays(stack.show(email)) == [(-10, 20), (-10, 10), (-10, 0)]


async def test_a_scored_event_restarts_the_decay_clock(stack):
    email = "keen@globex.example"
    await stack.add(email)
    await stack.nurture.record_event(email, "quote_request")
    await stack.forward(email, 20 * DAY)
    await stack.nurture.record_event(email, "email_click")
    await stack.forward(email, 20 * DAY)  # 40 days since the first event, 20 since the click
    lead = stack.show(email)
    assert lead["score"] == 35 and decays(lead) == []
    await stack.forward(email, 11 * DAY)  # 31 days since the click
    assert decays(stack.show(email)) == [(-10, 25)]


async def test_a_falling_score_does_not_demote_an_mql(stack):
    email = "mql@globex.example"
    await stack.add(email, **VP)
    await stack.nurture.record_event(email, "quote_request")
    await stack.nurture.record_event(email, "webinar_attended")
    lead = stack.show(email)
    assert lead["stage"] == "mql" and lead["score"] == 50
    await stack.forward(email, 31 * DAY)
    lead = stack.show(email)
    assert lead["score"] == 40 and lead["temperature"] == "warm"
    assert lead["stage"] == "mql"
    assert [h["detail"]["to"] for h in entries(lead, "stage")] == ["mql"]


# ---------------------------------------------------------------- fit, grade, disqualification


async def test_fit_and_grade_are_recomputed_when_the_profile_changes(stack):
    email = "eng@globex.example"
    lead = await stack.add(email, job_title="Engineer", company_size=200)
    assert (lead["fit"], lead["grade"]) == (15, "C")
    lead = await stack.add(email, job_title="VP Engineering")  # company_size is kept
    assert (lead["fit"], lead["grade"]) == (35, "A")
    fit = entries(lead, "fit")
    assert [h["detail"]["grade"] for h in fit] == ["C", "A"]
    assert fit[-1]["delta"] == 20 and fit[-1]["reason"].startswith("fit 35 -> grade A: fit#1 ")
    assert [rule.split(" ", 1)[0] for rule in fit[-1]["detail"]["rules"]] == ["fit#1", "fit#2"]
    await stack.add(email, company="Globex")  # no change of fit: no new entry
    assert len(entries(stack.show(email), "fit")) == 2


async def test_a_personal_mailbox_student_is_disqualified_and_never_emailed(stack):
    student = "kid@gmail.com"
    lead = await stack.add(student, job_title="Student", source="web_form")  # b2b-trial would take it
    assert (lead["fit"], lead["grade"], lead["stage"]) == (-45, "F", "disqualified")
    assert lead["campaign"] is None
    assert [h["reason"] for h in entries(lead, "stage")] == ["lead -> disqualified: disqualify rule matched (grade F)"]

    # a lead already in a campaign that turns out to be an intern: the journey ends there
    intern = "pat@initech.example"
    await stack.add(intern, source="web_form")
    for _ in range(4):  # the welcome waits for office hours (a weekend, at worst)
        if sent_to(stack, intern):
            break
        await stack.forward(intern, 1 * DAY)
    before = sent_to(stack, intern)
    assert before[0] == "welcome"
    lead = await stack.add(intern, job_title="Summer Intern")
    assert lead["stage"] == "disqualified" and lead["grade"] == "F"
    await stack.forward(intern, 1 * DAY)
    assert stack.show(intern)["campaign"] is None
    assert any(h["reason"] == "left campaign b2b-trial: stage disqualified" for h in stack.show(intern)["history"])

    await stack.nurture.record_event(student, "quote_request")  # still scored, never qualified
    await asyncio.gather(stack.forward(student, 20 * DAY), stack.forward(intern, 20 * DAY))
    assert sent_to(stack, student) == [] and sent_to(stack, intern) == before
    assert stack.show(student)["stage"] == "disqualified" and stack.show(student)["score"] == 30


def sent_to(stack: Any, email: str) -> list[str | None]:
    with stack.session() as session:
        return [e.step for e in crud.emails_of(session=session, key=journey.lead_key(email))]


# ---------------------------------------------------------------- visitor to lead


async def test_a_visitors_events_of_the_last_30_days_count_for_the_new_lead(stack):
    visitor = "anon-7f3a"
    now = datetime.now(timezone.utc)
    report = await stack.nurture.ingest_events([
        {"anonymous_id": visitor, "type": "quote_request", "at": now - 40 * DAY},  # too old
        {"anonymous_id": visitor, "type": "page_view", "url": PRICING, "at": now - 5 * DAY},
        {"anonymous_id": visitor, "type": "content_download", "asset": "buyers-guide-2026", "at": now - 2 * DAY},
        {"anonymous_id": "someone-else", "type": "webinar_attended", "at": now - 1 * DAY},
    ])
    assert report["anonymous"] == 4 and report["applied"] == 0

    email = "vis@globex.example"
    lead = await stack.add(email, anonymous_id=visitor)
    assert lead["score"] == 30
    assert [(reason, delta) for reason, delta, _ in scores(lead)] == [("page_view", 15), ("content_download", 15)]
    assert entries(lead, "score")[-1]["detail"]["rule"] == "content_download#1 {asset: {startswith: buyers-guide}} +15"

    # from now on the visitor id reaches the lead directly
    report = await stack.nurture.ingest_events([{"anonymous_id": visitor, "type": "email_click"}])
    assert report["applied"] == 1 and stack.show(email)["score"] == 35


# ---------------------------------------------------------------- rescore


def test_rescore_replays_the_events_with_the_live_scoring_rules():
    """The pure replay: first match, daily caps, machine opens, floor at 0, decay, resets."""
    t0 = datetime(2026, 3, 2, 9, tzinfo=timezone.utc)

    def ev(n: int, type_: str, at: datetime, **fields: Any) -> LeadEvent:
        return LeadEvent(id=f"e{n}", type=type_, at=at, **fields)

    events = [
        ev(1, "page_view", t0, url=PRICING), ev(2, "page_view", t0 + timedelta(hours=3), url=PRICING),
        ev(3, "page_view", t0 + DAY, url=PRICING), ev(4, "email_open", t0 + DAY, machine_open=True),
        ev(5, "email_delivered", t0 + DAY), ev(6, "quote_request", t0 + 2 * DAY),
    ]
    result = journey.rescore_events(FUNNEL, list(reversed(events)), t0 + 2 * DAY)  # order: by time
    assert (result.score, result.scored, result.events) == (60, 3, 6)
    assert result.last_scored_at == t0 + 2 * DAY and result.decay_applied == 0
    # 65 days later: two decays
    assert journey.rescore_events(FUNNEL, events, t0 + 67 * DAY).score == 40
    # decay between events: 30 days after the first, it had lost 10 before the next scored
    spaced = [ev(1, "quote_request", t0), ev(2, "email_click", t0 + 31 * DAY)]
    assert journey.rescore_events(FUNNEL, spaced, t0 + 31 * DAY).score == 25
    # recycled on day 1 at noon: only what came after counts
    assert journey.rescore_events(FUNNEL, events, t0 + 3 * DAY, resets=[t0 + DAY + timedelta(hours=12)]).score == 30
    # a penalty cannot take it below 0
    assert journey.rescore_events(FUNNEL, [ev(1, "email_click", t0), ev(2, "email_unsubscribe", t0 + DAY)],
                                  t0 + DAY).score == 0

    # only events the workflow applied are replayed; one still on its way is not
    state = journey.LeadState(key="k", profile=journey.LeadProfile(email="a@b.example"), created_at=t0,
                              seen_event_ids=["e1", "e2"])
    assert [e.id for e in journey.applied_events(state, events, delivered=["e3"])] == ["e1", "e2"]
    state.score = 30
    entry = journey.apply_rescore(state, FUNNEL, events[:2], t0 + DAY)
    assert entry is not None and (entry.delta, entry.score, state.score) == (-15, 15, 15)
    assert entry.reason == f"rescore under funnel version {FUNNEL.version}: 30 -> 15"
    assert journey.apply_rescore(state, FUNNEL, events[:2], t0 + DAY) is None  # unchanged: no entry


def edit_funnel(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new) + f"# edited: {old} -> {new}\n")
    return load_funnel(path).version


def cli_env(settings: Any, address: str) -> dict[str, str]:
    env = {
        **os.environ,
        "NURTURE_HOME": str(settings.home),
        "NURTURE_DATABASE_URL": settings.db_url,
        "NURTURE_TEMPORAL_ADDRESS": address,
        "NURTURE_TASK_QUEUE": settings.task_queue,
        "NURTURE_WORKFLOW_PREFIX": settings.workflow_prefix,
        "NURTURE_CAMPAIGNS_DIR": str(settings.campaigns_dir),
        "NURTURE_TEMPLATES_DIR": str(settings.templates_dir),
        "NURTURE_SECRET": "cli-test-secret",
        "NURTURE_UPDATE_TIMEOUT": "20",
        "COLUMNS": "250",
    }
    env.pop("SENDGRID_API_KEY", None)
    return env


async def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # In a thread: the test's worker runs on this event loop and must keep serving.
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "nurture.cli", *args],
                                   capture_output=True, text=True, env=env, timeout=90)


async def test_rescore_after_a_funnel_change_one_lead_all_leads_and_the_cli(temporal_env, tmp_path):
    campaigns = tmp_path / "campaigns"
    shutil.copytree(ROOT / "campaigns", campaigns)
    funnel_file = campaigns / "funnel.yaml"
    settings = make_settings(tmp_path / "home", campaigns_dir=campaigns)
    async with _stack(temporal_env, settings) as stack:
        ann, bob, cy = "ann@globex.example", "bob@globex.example", "cy@globex.example"
        await stack.add(ann, **VP)
        for type_, fields in (("email_click", {}), ("quote_request", {}), ("page_view", {"url": PRICING})):
            await stack.nurture.record_event(ann, type_, **fields)
        await stack.add(bob)
        await stack.nurture.record_event(bob, "email_click", event_id="bob-1")
        await stack.nurture.record_event(bob, "email_click", event_id="bob-2")
        await stack.add(cy)
        await stack.nurture.record_event(cy, "quote_request")
        assert [stack.show(e)["score"] for e in (ann, bob, cy)] == [50, 10, 30]
        assert stack.show(ann)["stage"] == "mql"

        unchanged = await stack.nurture.rescore(ann)  # same funnel: nothing to say, nothing written
        assert unchanged.message is None and rescores(stack.show(ann)) == []

        version = edit_funnel(funnel_file, "quote_request: 30", "quote_request: 15")
        result = await stack.nurture.rescore(ann)
        assert result.message == f"rescore under funnel version {version}: 50 -> 35"
        lead = stack.show(ann)
        (entry,) = rescores(lead)
        assert (entry["delta"], entry["score"], entry["detail"]["funnel_version"]) == (-15, 35, version)
        assert lead["score"] == 35 and lead["stage"] == "mql"  # a lower score does not demote
        assert (await stack.nurture.rescore(ann)).message is None  # done once: no second entry
        assert len(rescores(stack.show(ann))) == 1

        seen: list[tuple[int, int]] = []
        report = await stack.nurture.rescore_all(progress=lambda done, total: seen.append((done, total)))
        assert report.leads == 3 and report.failed == [] and report.unchanged == 2
        assert report.changed == [(cy, f"rescore under funnel version {version}: 30 -> 15")]
        assert seen[-1] == (3, 3) and len(seen) == 3
        assert [stack.show(e)["score"] for e in (ann, bob, cy)] == [35, 10, 15]

        # new points after the rescore follow the new rules, on top of the rescored score
        await stack.nurture.record_event(cy, "quote_request", event_id="cy-2")
        assert stack.show(cy)["score"] == 30

        # the command line
        env = cli_env(settings, temporal_env.server.address)
        version = edit_funnel(funnel_file, "email_click: 5", "email_click: 8")
        one = await run_cli(env, "rescore", bob)
        assert one.returncode == 0, one.stderr
        assert one.stdout.strip() == f"{bob}: rescore under funnel version {version}: 10 -> 16; stage lead"
        every = await run_cli(env, "rescore", "--all")
        assert every.returncode == 0, every.stderr
        assert every.stdout.strip().splitlines() == [
            f"{ann}: rescore under funnel version {version}: 35 -> 38",
            "3 leads rescored: 1 changed, 2 unchanged",
        ]
        assert "Traceback" not in every.stderr
        again = await run_cli(env, "rescore", "--all")
        assert again.stdout.strip() == "3 leads rescored: 0 changed, 3 unchanged"
        assert [len(rescores(stack.show(e))) for e in (ann, bob, cy)] == [2, 1, 1]

        usage = await run_cli(env, "rescore")
        assert usage.returncode == 2 and "give one EMAIL or --all" in usage.stderr
        unknown = await run_cli(env, "rescore", "nobody@nowhere.example")
        assert unknown.returncode == 1 and unknown.stderr.strip() == "error: nobody@nowhere.example: no such lead"

        # the table explains every point: the rule by position and text, next to the reason
        table = await run_cli(env, "lead", "show", ann)
        assert table.returncode == 0, table.stderr
        assert "page_view: rule page_view#1 {url: {contains: /pricing}} +15 max 15/day" in table.stdout
        assert f"rescore under funnel version {version}: 35 -> 38" in table.stdout
        shown = json.loads((await run_cli(env, "lead", "show", ann, "--json")).stdout)
        click = next(h for h in shown["history"] if h["kind"] == "score" and h["delta"] == 5)
        assert click["reason"] == "email_click" and click["detail"]["rule"] == "email_click#1 +5"
