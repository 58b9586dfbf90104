"""The sales handoff end to end: owner assignment, notification, SLA, webhook, outcomes.

A lead reaches SQL here in one call: a VP of a 200-person company (grade A) who asked
for a quote (30), attended a webinar (20) and sent a form (10) that carries all four
BANT facts, so it is an MQL and then an SQL within one change, and the handoff opens.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nurture import crud, journey, security
from nurture.models import Handoff
from nurture.service import UserError
from tests.conftest import ROOT, Stack, _stack, edited_campaigns, make_settings

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
OWNERS = ["alice@acme.example", "bob@acme.example", "chloe@acme.example"]
ALL_BANT = {"budget": True, "authority": True, "need": True, "timing": True}


async def to_sql(stack: Stack, email: str, **profile: Any) -> dict[str, Any]:
    await stack.add(email, **{"job_title": "VP Sales", "company_size": 200, **profile})
    await stack.nurture.ingest_events([
        {"email": email, "type": "quote_request"},
        {"email": email, "type": "webinar_attended"},
        {"email": email, "type": "form_submit", "form": "talk-to-sales", "bant": ALL_BANT},
    ])
    lead = stack.show(email)
    assert lead["stage"] == "sql", lead["history"]
    return lead


def handoff_of(stack: Stack, email: str) -> Handoff:
    with stack.session() as session:
        (handoff,) = [h for h in crud.list_handoffs(session=session) if h.email == email]
    return handoff


def owner_mail(stack: Stack, email: str) -> list[tuple[str, str]]:
    """(to, kind) of the sales_handoff emails about this lead, from the email table and history."""
    with stack.session() as session:
        rows = {row.send_id: row for row in crud.emails_of(session=session, key=journey.lead_key(email))}
    assert all(row.template == "sales_handoff" and row.marketing is False and row.status == "sent"
               for row in rows.values())
    kinds = [h["detail"] for h in stack.show(email)["history"]
             if h["kind"] == "email" and h.get("detail", {}).get("template") == "sales_handoff"]
    assert len(kinds) == len(rows)
    assert sorted(row.to for row in rows.values()) == sorted(detail["to"] for detail in kinds)
    return [(detail["to"], detail["kind"]) for detail in kinds]


def campaigns_with_funnel(tmp_path: Path, replace: dict[str, str]) -> Path:
    """A copy of the sample campaigns whose funnel.yaml has some lines replaced."""
    return edited_campaigns(tmp_path, "funnel.yaml", replace)


# ---------------------------------------------------------------- SLA


async def test_an_unanswered_handoff_reminds_once_then_goes_to_the_next_owner(stack):
    email = "sla@globex.example"
    lead = await to_sql(stack, email)
    first = lead["owner"]
    assert first in OWNERS and owner_mail(stack, email) == [(first, "new")]

    await stack.forward(email, 2 * DAY + HOUR)  # sla: 2d
    assert owner_mail(stack, email) == [(first, "new"), (first, "reminder")]
    assert handoff_of(stack, email).owner == first
    reasons = [h["reason"] for h in stack.show(email)["history"] if h["kind"] == "handoff"]
    assert reasons[-1] == f"handoff {handoff_of(stack, email).id}: no answer within 2d, reminded {first}"

    await stack.forward(email, 2 * DAY)  # a second SLA without an answer
    handoff = handoff_of(stack, email)
    second = handoff.owner
    assert second in OWNERS and second != first
    assert handoff.status == "open"
    lead = stack.show(email)
    assert lead["owner"] == second and lead["stage"] == "sql"
    assert owner_mail(stack, email) == [(first, "new"), (first, "reminder"), (second, "reassigned"),
                                        (first, "taken-away")]
    assert any(h["reason"] == f"handoff {handoff.id} reassigned from {first} to {second} (SLA missed)"
               for h in lead["history"])

    await stack.forward(email, 10 * DAY)  # reminded once, reassigned once: nothing more
    assert len(owner_mail(stack, email)) == 4
    lead = (await stack.nurture.handoff_action(handoff.id, "accept")).lead
    assert lead["stage"] == "opportunity" and lead["owner"] == second


# ---------------------------------------------------------------- assignment


async def test_round_robin_stays_fair_after_a_reassignment(stack):
    # alice gets the first lead and misses the SLA twice: it goes to bob, the next in
    # line; the next leads go on round the whole list (chloe, then alice), one each.
    first = "first@globex.example"
    assert (await to_sql(stack, first))["owner"] == OWNERS[0]
    await stack.forward(first, 4 * DAY + HOUR)
    assert handoff_of(stack, first).owner == OWNERS[1]
    later = ["second@initech.example", "third@hooli.example"]
    for email in later:
        await to_sql(stack, email)
    assert [handoff_of(stack, email).owner for email in [first, *later]] == [OWNERS[1], OWNERS[2], OWNERS[0]]
    turns = Counter(to for email in [first, *later] for to, kind in owner_mail(stack, email)
                    if kind in ("new", "reassigned"))
    assert turns == {OWNERS[0]: 2, OWNERS[1]: 1, OWNERS[2]: 1}  # the cycle went on: alice's turn came back


@pytest.mark.parametrize("exclude, turns_taken, owner", [
    (None, 1, "alice@acme.example"),  # turn 3 of 3 owners: the first again
    ("bob@acme.example", 1, "alice@acme.example"),
    ("alice@acme.example", 2, "bob@acme.example"),  # the turn is the owner left: the next turn
])
def test_a_reassignment_keeps_the_cycle_of_the_whole_list(exclude, turns_taken, owner):
    from activities.handoff import choose_owner
    from nurture.campaign import load_funnel

    rules = load_funnel(ROOT / "campaigns" / "funnel.yaml").handoff
    turns = iter(range(3, 10))
    taken: list[int] = []

    def take_turn() -> int:
        taken.append(next(turns))
        return taken[-1]

    assert choose_owner(rules, {}, take_turn, exclude) == owner
    assert len(taken) == turns_taken


async def test_round_robin_gives_each_owner_ten_of_thirty_across_a_worker_restart(temporal_env, tmp_path):
    # A generous update timeout: updates in flight while the worker restarts wait for the new one.
    settings = make_settings(tmp_path, update_timeout=120)
    async with _stack(temporal_env, settings) as stack:
        emails = [f"buyer{index:02d}@corp{index:02d}.example" for index in range(30)]
        await asyncio.gather(*(to_sql(stack, email) for email in emails[:15]))
        assert len(handoffs(stack)) == 15

        second_wave = asyncio.gather(*(to_sql(stack, email) for email in emails[15:]))
        while len(handoffs(stack)) < 18 and not second_wave.done():
            await asyncio.sleep(0.02)
        # a new worker process has no memory of whose turn it is: the counter is in the database
        assert stack.worker is not None and not second_wave.done(), "restart while handoffs are in flight"
        await stack.worker.shutdown()
        await stack.start_worker().__aenter__()
        await asyncio.wait_for(second_wave, timeout=240)

        rows = handoffs(stack)
        assert sorted(h.email for h in rows) == emails
        assert Counter(h.owner for h in rows) == {owner: 10 for owner in OWNERS}
        assert all(stack.show(email)["owner"] == handoff_of(stack, email).owner for email in emails)


def handoffs(stack: Stack) -> list[Handoff]:
    with stack.session() as session:
        return list(crud.list_handoffs(session=session))


async def test_assignment_by_country_with_a_fallback(temporal_env, tmp_path):
    campaigns = campaigns_with_funnel(tmp_path, {
        "  assign: round_robin\n": "  assign: {by: country, map: {FR: chloe@acme.example, "
                                   "DE: bob@acme.example, \"*\": alice@acme.example}}\n",
    })
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        expected = {"fr@globex.example": ("FR", "chloe@acme.example"), "de@globex.example": ("DE", "bob@acme.example"),
                    "us@globex.example": ("US", "alice@acme.example"), "none@globex.example": (None, "alice@acme.example")}
        for email, (country, _) in expected.items():
            await to_sql(stack, email, country=country)
        for email, (_, owner) in expected.items():
            assert handoff_of(stack, email).owner == owner
            assert stack.show(email)["owner"] == owner
            assert owner_mail(stack, email) == [(owner, "new")]


# ---------------------------------------------------------------- CRM webhook


class _Crm:
    """A CRM endpoint on loopback that fails the first `failures` POSTs with a 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[int, dict[str, str], bytes]] = []
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = 500 if len(crm.requests) < crm.failures else 200
                crm.requests.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}' if status == 200 else b'{"error": "try later"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/lead"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Crm:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_the_crm_webhook_is_signed_retried_and_its_delivery_shown(temporal_env, tmp_path):
    with _Crm(failures=2) as crm:
        campaigns = campaigns_with_funnel(tmp_path, {
            '    # webhook: "https://crm.example/hooks/lead"': f'    webhook: "{crm.url}"',
        })
        settings = make_settings(tmp_path / "home", campaigns_dir=campaigns)
        async with _stack(temporal_env, settings) as stack:
            email = "hook@globex.example"
            lead = await to_sql(stack, email, first_name="Hana", company="Globex")
            handoff_id = handoff_of(stack, email).id
            # WEBHOOK_RETRY waits 10 s, then 20 s, between attempts; the lead's simulated
            # clock skips that backoff too, once the first attempt has failed.
            for _ in range(200):
                if (handoff_of(stack, email).webhook_status or "").startswith("delivered"):
                    break
                if crm.requests:
                    await stack.forward(email, timedelta(minutes=1))
                await asyncio.sleep(0.1)
            handoff = handoff_of(stack, email)
            assert handoff.webhook_status == "delivered (HTTP 200, attempt 3)"

    assert [status for status, _, _ in crm.requests] == [500, 500, 200]
    bodies = {body for _, _, body in crm.requests}
    assert len(bodies) == 1  # every attempt posts the same snapshot
    status, headers, body = crm.requests[-1]
    assert headers["X-Nurture-Signature"] == security.webhook_signature(settings.secret, body)
    assert headers["Content-Type"] == "application/json"
    snapshot = json.loads(body)
    assert snapshot["handoff_id"] == handoff_id and snapshot["owner"] == lead["owner"]
    assert snapshot["lead"]["email"] == email and snapshot["lead"]["company"] == "Globex"
    assert (snapshot["score"], snapshot["grade"], snapshot["bant"]) == (60, "A", ALL_BANT)
    assert [e["type"] for e in snapshot["events"]] == ["quote_request", "webinar_attended", "form_submit"]
    history = [h["reason"] for h in stack.show(email)["history"] if h["kind"] == "handoff"]
    assert f"handoff {handoff_id} webhook delivered (HTTP 200, attempt 3)" in history


# ---------------------------------------------------------------- outcomes


async def test_won_makes_a_customer_and_lost_recycles_into_nurture(stack):
    won, lost = "won@globex.example", "lost@initech.example"
    await to_sql(stack, won)
    await to_sql(stack, lost)
    won_id, lost_id = handoff_of(stack, won).id, handoff_of(stack, lost).id

    lead = (await stack.nurture.handoff_action(won_id, "won")).lead
    assert lead["stage"] == "customer"
    assert handoff_of(stack, won).status == "won"
    history = stack.show(won)["history"]
    assert any(h["kind"] == "handoff" and h["reason"].startswith(f"handoff {won_id} won by ") for h in history)
    assert [h["reason"] for h in history if h["kind"] == "stage"][-1] == "sql -> customer: handoff won"
    with pytest.raises(UserError, match=f"handoff {won_id} is won; cannot mark it lost$"):
        await stack.nurture.handoff_action(won_id, "lost", "changed their mind")
    with pytest.raises(UserError, match=f"handoff {won_id} is won; cannot mark it won$"):
        await stack.nurture.handoff_action(won_id, "won")

    for outcome in ("lost", "reject"):
        with pytest.raises(UserError, match=f"{outcome} needs a reason"):
            await stack.nurture.handoff_action(lost_id, outcome, None)
    assert stack.show(lost)["stage"] == "sql" and handoff_of(stack, lost).status == "open"

    lead = (await stack.nurture.handoff_action(lost_id, "lost", "went with a competitor")).lead
    assert lead["stage"] == "recycled" and lead["score"] == 0 and lead["owner"] is None
    assert lead["campaign"] == "recycled-nurture"  # auto_on: recycled
    handoff = handoff_of(stack, lost)
    assert (handoff.status, handoff.reason) == ("lost", "went with a competitor")
    reasons = [(h["kind"], h["reason"]) for h in stack.show(lost)["history"]]
    tail = reasons[reasons.index(("handoff", f"handoff {lost_id} lost by {handoff.owner}: went with a competitor")):]
    assert tail[:3] == [
        ("handoff", f"handoff {lost_id} lost by {handoff.owner}: went with a competitor"),
        ("stage", "sql -> recycled: sales: went with a competitor"),
        ("score", "recycled: score reset"),
    ]
    assert tail[3][0] == "note" and tail[3][1].startswith("enrolled in recycled-nurture (auto_on recycled, version ")
    reset = next(h for h in stack.show(lost)["history"] if h["reason"] == "recycled: score reset")
    assert (reset["delta"], reset["score"]) == (-60, 0)


async def test_a_webhook_still_retrying_is_carried_over_a_continue_as_new(temporal_env, tmp_path):
    # The CRM is down when the handoff opens; meanwhile the lead's history grows past
    # max_history and the workflow continues as new. The post must not be lost with the
    # old run: the new run takes it over and delivers it once the CRM is back.
    with _Crm(failures=3) as crm:
        campaigns = campaigns_with_funnel(tmp_path, {
            '    # webhook: "https://crm.example/hooks/lead"': f'    webhook: "{crm.url}"',
        })
        settings = make_settings(tmp_path / "home", campaigns_dir=campaigns, max_history=80)
        async with _stack(temporal_env, settings) as stack:
            email = "carried@globex.example"
            await to_sql(stack, email)
            handoff_id = handoff_of(stack, email).id
            first_run = (await stack.handle(email).describe()).run_id
            for _ in range(100):
                if crm.requests:
                    break
                await asyncio.sleep(0.1)
            assert crm.requests, "the first webhook attempt never came"
            for index in range(25):
                await stack.nurture.record_event(email, "page_view", event_id=f"view-{index}", url=f"/docs/{index}")
            for _ in range(300):
                if (await stack.handle(email).describe()).run_id != first_run:
                    break
                await asyncio.sleep(0.1)
            assert (await stack.handle(email).describe()).run_id != first_run  # it continued as new
            for _ in range(300):
                if (handoff_of(stack, email).webhook_status or "").startswith("delivered"):
                    break
                await stack.forward(email, timedelta(minutes=5))
                await asyncio.sleep(0.1)
            assert (handoff_of(stack, email).webhook_status or "").startswith("delivered (HTTP 200")
            history = [h["reason"] for h in stack.show(email)["history"] if h["kind"] == "handoff"]
            assert sum(reason.startswith(f"handoff {handoff_id} webhook delivered") for reason in history) == 1
            assert (await stack.query(email))["score"] == stack.show(email)["score"]

    assert [status for status, _, _ in crm.requests][-1] == 200
    assert len({body for _, _, body in crm.requests}) == 1  # the same snapshot, before and after


async def test_assignment_by_a_field_ignores_case_and_spaces(temporal_env, tmp_path):
    campaigns = campaigns_with_funnel(tmp_path, {
        "  assign: round_robin\n": "  assign: {by: country, map: {FR: chloe@acme.example, \"*\": alice@acme.example}}\n",
    })
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        await to_sql(stack, "lower@globex.example", country=" fr ")
        assert handoff_of(stack, "lower@globex.example").owner == "chloe@acme.example"
