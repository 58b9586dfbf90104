"""The campaign stats' store queries on SQLite and on PostgreSQL, from rows written the
way the workflow's sync and the webhook write them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from nurture import crud, stats
from nurture.campaign import find_campaign
from nurture.db import session_scope
from nurture.models import Email
from tests.test_store import db, db_url  # noqa: F401 - the SQLite/PostgreSQL store fixtures

CAMPAIGNS = Path(__file__).resolve().parent.parent / "campaigns"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def line(seq: int, at: datetime, reason: str, kind: str = "note", **detail: object) -> dict[str, object]:
    return {"seq": seq, "at": at, "kind": kind, "reason": reason, "delta": None, "score": 0, "detail": detail}


def enrolled(seq: int, at: datetime, number: int = 1) -> dict[str, object]:
    return line(seq, at, "enrolled in b2b-trial (request, version v1)", campaign="b2b-trial", version="v1",
                journey="enrolled", enrollment=number)


def reached(seq: int, at: datetime, step: str, number: int = 1) -> dict[str, object]:
    return line(seq, at, f"{step}: reached", campaign="b2b-trial", step=step, journey="step", enrollment=number)


def left(seq: int, at: datetime, why: str, number: int = 1) -> dict[str, object]:
    return line(seq, at, f"left campaign b2b-trial: {why}", campaign="b2b-trial", journey="left",
                enrollment=number, exit=why)


def stage(seq: int, at: datetime, change: str) -> dict[str, object]:
    return line(seq, at, f"{change}: score 55 >= 50", kind="stage")


def send(key: str, step: str, variant: int | None, at: datetime) -> Email:
    return Email(send_id=f"{key}-{step}", lead_key=key, campaign="b2b-trial", step=step, template=step,
                 variant=variant, status="sent", sent_at=at)


def test_stats_queries_count_leads_steps_emails_and_conversions(db):
    hour = timedelta(hours=1)
    with session_scope(db) as session:
        for key in ("k1", "k2", "k3"):
            crud.upsert_lead(session=session, key=key, email=f"{key}@globex.example", profile={})
        # k2 was an MQL before it enrolled: not this campaign's conversion.
        crud.add_history(session=session, key="k2", entries=[stage(1, T0 - hour, "lead -> mql")])
        crud.add_history(session=session, key="k1", entries=[
            enrolled(1, T0), reached(2, T0, "welcome"), reached(3, T0 + hour, "step-2"),
            reached(4, T0 + 2 * hour, "welcome"),  # entered again (a loop): one visit
            stage(5, T0 + 3 * hour, "lead -> mql"), stage(6, T0 + 4 * hour, "mql -> sql")])
        crud.add_history(session=session, key="k2", entries=[
            enrolled(2, T0), reached(3, T0, "welcome"), reached(4, T0 + hour, "step-2"), left(5, T0 + 9 * hour, "completed")])
        crud.add_history(session=session, key="k3", entries=[
            enrolled(1, T0 + 30 * hour), reached(2, T0 + 30 * hour, "welcome"), left(3, T0 + 31 * hour, "status bounced")])
        crud.add_history(session=session, key="k3", entries=[reached(2, T0 + 30 * hour, "welcome")])  # a retried sync
        crud.apply_projection(session=session, key="k1", version=1, fields={"campaign": "b2b-trial", "step": "step-2"})
        for row in (send("k1", "welcome", None, T0), send("k2", "welcome", None, T0), send("k3", "welcome", None, T0 + 30 * hour),
                    send("k1", "case-study", 0, T0 + 49 * hour), send("k2", "case-study", 1, T0 + 49 * hour),
                    Email(send_id="k3-unsent", lead_key="k3", campaign="b2b-trial", step="end", template="x", status="failed")):
            crud.claim_email(session=session, email=row)
        crud.note_engagement(session=session, firsts={
            ("k1-welcome", "delivered_at"): T0, ("k2-welcome", "delivered_at"): T0, ("k1-welcome", "opened_at"): T0 + 2 * hour,
            ("k2-welcome", "clicked_at"): T0 + 25 * hour, ("k3-welcome", "bounced_at"): T0 + 31 * hour,
            ("k1-case-study", "clicked_at"): T0 + 50 * hour, ("k2-case-study", "unsubscribed_at"): T0 + 50 * hour})
        # A later open of the same email keeps the first time; an earlier one replaces it.
        crud.note_engagement(session=session, firsts={("k1-welcome", "opened_at"): T0 + 5 * hour})
        crud.note_engagement(session=session, firsts={("k2-welcome", "clicked_at"): T0 + 24 * hour})
    campaign = find_campaign(CAMPAIGNS, "b2b-trial")
    with session_scope(db) as session:
        doc = stats.campaign_stats(session, campaign, None)
        assert session.get(Email, "k1-welcome").opened_at == T0 + 2 * hour
    assert (doc["enrolled"], doc["active"], doc["completed"], doc["exited"]) == (3, 1, 1, {"status bounced": 1})
    assert doc["conversions"] == {"mql": 1, "sql": 1, "opportunity": 0, "customer": 0}
    steps = {s["id"]: s for s in doc["steps"]}
    assert (steps["welcome"]["reached"], steps["step-2"]["reached"], steps["step-2"]["waiting"]) == (3, 2, 1)
    welcome = steps["welcome"]
    assert [welcome[k] for k in ("sent", "delivered", "unique_opens", "unique_clicks", "bounced", "unsubscribed")] == [3, 2, 1, 1, 1, 0]
    assert [(v["sent"], v["unique_clicks"]) for v in steps["case-study"]["variants"]] == [(1, 1), (1, 0)]
    assert steps["case-study"]["unsubscribed"] == 1 and steps["end"]["sent"] == 0  # a failed send is not sent
    assert doc["per_day"] == [{"day": "2026-11-02", "sent": 2, "unique_clicks": 0},
                              {"day": "2026-11-03", "sent": 1, "unique_clicks": 1},
                              {"day": "2026-11-04", "sent": 2, "unique_clicks": 1}]
    assert doc["versions"][0]["version"] == "v1" and doc["versions"][0]["enrolled"] == 3

    with session_scope(db) as session:  # since: only k3 enrolled, reached and was mailed after it
        later = stats.campaign_stats(session, campaign, T0 + 12 * hour)
        crud.forget_lead(session=session, lead=crud.get_lead_by_key(session=session, key="k1"), email_hash="h1")
    assert (later["enrolled"], later["exited"], later["conversions"]["mql"]) == (1, {"status bounced": 1}, 0)
    assert {s["id"]: s["reached"] for s in later["steps"]}["welcome"] == 1
    with session_scope(db) as session:  # a forgotten lead's journey ends; its counts stay
        after = stats.campaign_stats(session, campaign, None)
        (overview,) = stats.overview(session, [campaign], None)
    assert (after["enrolled"], after["active"], after["exited"]) == (3, 0, {"forgotten": 1, "status bounced": 1})
    assert {k: overview[k] for k in ("enrolled", "active", "exited", "conversions")} == {
        k: after[k] for k in ("enrolled", "active", "exited", "conversions")}
