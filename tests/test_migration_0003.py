"""Migration 0003 folds addresses stored before it, on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import unicodedata
from datetime import datetime, timezone

import pytest
from alembic import command
from sqlalchemy import insert, select

from nurture import crud
from nurture.db import alembic_config, get_engine, session_scope, upgrade
from nurture.models import Email, Event, Handoff, History, Lead, Suppression

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
NFC = "léa@bücher.example"
NFD = unicodedata.normalize("NFD", "léa@xn--bcher-kva.example")


@pytest.fixture(params=["sqlite", "postgresql"])
def before_0003(request, tmp_path):
    """A store at revision 0002 holding leads as the old normaliser let them in."""
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    get_engine(url)
    command.upgrade(alembic_config(url), "0002")
    leads = [
        dict(id=1, key="k-plain", email="jane@globex.example", status="subscribed", attributes={"plan": "pro"}),
        dict(id=2, key="k-angle", email="<jane@globex.example>", status="unsubscribed", first_name="Jane",
             attributes={"plan": "free", "seats": "3"}),
        dict(id=3, key="k-quoted", email='"jane"@globex.example', status="subscribed", company="Globex"),
        dict(id=4, key="k-nfc", email=NFC, status="bounced"),
        dict(id=5, key="k-nfd", email=NFD, status="complained"),
        dict(id=6, key="k-comma", email="a,b@example.com", status="subscribed"),
        dict(id=7, key="k-fine", email="ok@acme.example", status="subscribed"),
        dict(id=8, key="k-x", email="<x@acme.example>", status="subscribed"),
    ]
    with get_engine(url).begin() as connection:
        connection.execute(insert(Lead.__table__), [{"stage": "lead", "score": 0, "fit": 0, "grade": "D",
                                                     "temperature": "cold", "bant": {}, "attributes": {},
                                                     "state_version": 1, "created_at": T0, "updated_at": T0,
                                                     **{k: None for k in ("first_name", "company")}, **lead}
                                                    for lead in leads])
        history = [("k-plain", 1), ("k-plain", 2), ("k-angle", 1), ("k-angle", 2), ("k-quoted", 1)]
        connection.execute(insert(History.__table__), [
            {"lead_key": key, "seq": seq, "at": T0, "kind": "note", "reason": f"{key} {seq}", "detail": {}}
            for key, seq in history])
        connection.execute(insert(Handoff.__table__), [
            {"lead_key": key, "number": 1, "email": email, "status": "open", "score": 0, "grade": "D",
             "snapshot": {}, "created_at": T0, "updated_at": T0}
            for key, email in (("k-plain", "jane@globex.example"), ("k-angle", "<jane@globex.example>"))])
        connection.execute(insert(Event.__table__), [
            {"id": "ev-angle", "lead_key": "k-angle", "email": "<jane@globex.example>", "type": "email_open",
             "at": T0, "data": {}, "received_at": T0, "dispatched_at": T0},
            # SendGrid reported the address the library had repaired: stored unmatched
            {"id": "sg:bounce-x", "lead_key": None, "email": "x@acme.example", "type": "email_bounce",
             "at": T0, "data": {}, "received_at": T0, "dispatched_at": T0},
        ])
        connection.execute(insert(Email.__table__), [
            {"send_id": "send-angle", "lead_key": "k-angle", "to": "<jane@globex.example>", "template": "welcome",
             "claimed_at": T0, "updated_at": T0, "status": "sent"}])
        connection.execute(insert(Suppression.__table__), [
            {"email_hash": hashlib.sha256(b'"jane"@globex.example').hexdigest(), "reason": "forgotten",
             "created_at": T0}])
    return url


def test_0003_merges_the_spellings_of_one_mailbox_strictest_status_wins(before_0003):
    upgrade(before_0003)

    with session_scope(before_0003) as session:
        leads = {lead.id: lead for lead in session.exec(select(Lead)).scalars()}
        assert sorted(leads) == [1, 4, 6, 7, 8]
        jane = leads[1]
        assert (jane.key, jane.email, jane.status) == ("k-plain", "jane@globex.example", "unsubscribed")
        assert (jane.first_name, jane.company) == ("Jane", "Globex")  # filled from the merged rows
        assert jane.attributes == {"plan": "pro", "seats": "3"}  # the survivor's own values win
        lea = leads[4]
        assert (lea.email, lea.status) == ("léa@xn--bcher-kva.example", "complained")
        assert leads[6].email == "a,b@example.com"  # not one mailbox: left as it is
        assert (leads[7].email, leads[7].key) == ("ok@acme.example", "k-fine")

        history = crud.list_history(session=session, key="k-plain")
        assert [(h.seq, h.reason) for h in history] == [
            (-3, "k-angle 1"), (-2, "k-angle 2"), (-1, "k-quoted 1"), (1, "k-plain 1"), (2, "k-plain 2")]
        handoffs = sorted((h.number, h.email) for h in session.exec(select(Handoff)).scalars())
        assert handoffs == [(-1, "jane@globex.example"), (1, "jane@globex.example")]
        assert {h.lead_key for h in session.exec(select(Handoff)).scalars()} == {"k-plain"}
        event = session.get(Event, "ev-angle")
        assert (event.lead_key, event.email) == ("k-plain", "jane@globex.example")
        assert [e.send_id for e in crud.emails_of(session=session, key="k-plain")] == ["send-angle"]

        # the forgotten spelling's suppression now holds for the canonical address too
        assert crud.is_suppressed(session=session, email_hash=hashlib.sha256(b"jane@globex.example").hexdigest())
        assert crud.is_suppressed(session=session,
                                  email_hash=hashlib.sha256("léa@xn--bcher-kva.example".encode()).hexdigest())


def test_0003_routes_a_stop_that_arrived_unmatched_to_its_lead(before_0003):
    upgrade(before_0003)

    with session_scope(before_0003) as session:
        lead = crud.get_lead(session=session, email="x@acme.example")
        assert (lead.key, lead.status) == ("k-x", "bounced")
        bounce = session.get(Event, "sg:bounce-x")
        assert (bounce.lead_key, bounce.dispatched_at) == ("k-x", None)  # the dispatcher delivers it
