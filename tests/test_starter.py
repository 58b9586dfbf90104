"""Stored leads whose workflow never took them are started, once: by the starter of
every worker, or by a re-run of the import (issue 17.3).

The crash is reproduced exactly: the lead row and its start mark are stored, and the
lead's workflow runs its first task (as update-with-start leaves it when the server
loses the update in flight) but never hears of the profile update that would enroll it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import select

from nurture import crud, journey
from nurture.db import session_scope, upgrade
from nurture.importer import import_file
from nurture.messages import LeadInput
from nurture.models import LeadStart, utcnow
from nurture.service import LeadIn
from nurture.starter import start_once
from tests.conftest import _stack, make_settings
from tests.faults._support import CAMPAIGN, campaigns_dir, until
from workflows.lead import LeadWorkflow


@pytest.fixture
async def three(temporal_env, tmp_path):
    """A stack whose only campaign is the three-email journey (first email at once)."""
    async with _stack(temporal_env, make_settings(tmp_path, campaigns_dir=campaigns_dir(tmp_path))) as value:
        yield value


async def lost_update(stack, email: str) -> None:
    """Store the lead as any door does, then start its workflow without the update."""
    with stack.session() as session:
        stored = stack.nurture.store_lead(session, LeadIn(email=email, first_name="Ann"))
    await stack.client.start_workflow(
        LeadWorkflow.run, LeadInput(key=stored.key, profile=stored.profile, one_read_start=True),
        id=stack.settings.workflow_id(stored.key), task_queue=stack.settings.task_queue)
    assert await until(lambda: stored_version(stack, email) > 0, timeout=30)  # its first task projected
    assert stack.show(email)["campaign"] is None


def stored_version(stack, email: str) -> int:
    with stack.session() as session:
        return crud.get_lead(session=session, email=email).state_version


async def one_first_email(stack, email: str) -> bool:
    """The first step's email has been sent to the lead, once (its journey goes on)."""
    return await until(lambda: first_emails(stack, email) == ["first"], timeout=30)


def first_emails(stack, email: str) -> list[str]:
    with stack.session() as session:
        lead = crud.get_lead(session=session, email=email)
        return [row.step for row in crud.emails_of(session=session, key=lead.key) if row.step == "first"]


def marks(stack) -> list[LeadStart]:
    with stack.session() as session:
        return list(session.exec(select(LeadStart)).all())


def expire_leases(stack) -> None:
    """As if the process that wrote the marks had died a lease ago."""
    with stack.session() as session:
        session.execute(update(LeadStart).values(claimed_until=utcnow() - timedelta(seconds=1)))


async def test_a_rerun_of_the_import_starts_a_lead_whose_update_was_lost(three, tmp_path):
    email = "ann@acme.example"
    await lost_update(three, email)
    path = tmp_path / "leads.csv"
    path.write_text(f"email,first_name\n{email},Ann\n", encoding="utf-8")

    report = await import_file(three.nurture, path)

    assert (report.created, report.updated, report.unchanged, report.problems) == (1, 0, 0, [])
    assert three.show(email)["campaign"] == CAMPAIGN
    assert await one_first_email(three, email)
    assert marks(three) == []
    again = await import_file(three.nurture, path)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 1)
    assert first_emails(three, email) == ["first"]


async def test_the_starter_starts_a_marked_lead_once_its_lease_has_run_out(three):
    email = "bea@acme.example"
    await lost_update(three, email)

    assert await start_once(three.nurture) == 0  # still leased to the process that stored it
    assert three.show(email)["campaign"] is None
    expire_leases(three)
    assert await start_once(three.nurture) == 1

    assert three.show(email)["campaign"] == CAMPAIGN
    assert await one_first_email(three, email)
    assert marks(three) == []
    assert await start_once(three.nurture) == 0


async def test_a_lead_started_twice_gets_its_first_email_once(three):
    """A crash after the update answered but before the mark was cleared: the starter
    hands the lead over again, and the workflow does not enroll it a second time."""
    email = "cy@acme.example"
    await three.nurture.add_lead(LeadIn(email=email))
    assert await one_first_email(three, email)
    with three.session() as session:
        crud.mark_start(session=session, key=crud.get_lead(session=session, email=email).key, created=True,
                        campaign=None, lease=timedelta(0))
    expire_leases(three)

    assert await start_once(three.nurture) == 1

    assert first_emails(three, email) == ["first"]
    history = [entry["reason"] for entry in three.show(email)["history"]]
    assert sum(reason.startswith(f"enrolled in {CAMPAIGN}") for reason in history) == 1
    assert marks(three) == []


async def test_a_stored_lead_keeps_its_mark_while_temporal_is_down_and_a_forgotten_one_loses_it(three):
    with three.session() as session:
        kept = three.nurture.store_lead(session, LeadIn(email="dee@acme.example"))
        gone = three.nurture.store_lead(session, LeadIn(email="eli@acme.example"))
        crud.forget_lead(session=session, lead=crud.get_lead(session=session, email="eli@acme.example"),
                         email_hash="0" * 64)
    assert {mark.lead_key for mark in marks(three)} == {kept.key, gone.key}
    expire_leases(three)
    await three.worker.__aexit__(None, None, None)  # no worker: the update cannot be answered
    three.settings.update_timeout = 1

    with pytest.raises(Exception, match="not started"):
        await start_once(three.nurture)

    assert [mark.lead_key for mark in marks(three)] == [kept.key]
    assert marks(three)[0].claimed_until is None  # released for the next pass at once


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


def test_start_marks_are_leased_to_one_taker_and_cleared_by_their_own_token(db_url):
    with session_scope(db_url) as session:
        first = crud.mark_start(session=session, key="k1", created=True, campaign=None, lease=timedelta(minutes=1))
        crud.mark_start(session=session, key="k2", created=False, campaign=None, lease=timedelta(0))
    with session_scope(db_url) as session:  # k1 is still with its writer; k2's lease is over
        assert [m.lead_key for m in crud.claim_starts(session=session, limit=10, lease=timedelta(minutes=1))] == ["k2"]
    with session_scope(db_url) as session:
        assert crud.claim_starts(session=session, limit=10, lease=timedelta(minutes=1)) == []  # k2 now leased
        again = crud.mark_start(session=session, key="k1", created=False, campaign="b2b-trial",
                                lease=timedelta(minutes=1))
        assert (again.created, again.campaign) == (True, "b2b-trial")  # still new, and now a campaign asked
        crud.clear_start(session=session, key="k1", token=first.token)  # a late clear of the older mark
        assert crud.start_marks(session=session, keys=["k1", "k2", "k3"]) == {"k1": True, "k2": False}
        crud.clear_start(session=session, key="k1", token=again.token)
        crud.release_starts(session=session, keys=["k2"])
    with session_scope(db_url) as session:
        assert [m.lead_key for m in crud.claim_starts(session=session, limit=10, lease=timedelta(minutes=1))] == ["k2"]
        assert crud.start_marks(session=session, keys=["k1", "k2"]) == {"k2": False}


def test_the_migration_marks_leads_stored_before_it_whose_workflow_never_ran(db_url):
    from alembic import command

    from nurture.db import alembic_config

    command.downgrade(alembic_config(db_url), "0003")
    with session_scope(db_url) as session:
        for email in ("new@acme.example", "old@acme.example"):
            crud.upsert_lead(session=session, key=journey.lead_key(email), email=email, profile={"attributes": {}})
        # old@ has had its workflow's first projection; new@ never got that far
        crud.apply_projection(session=session, key=journey.lead_key("old@acme.example"), version=3, fields={})
    upgrade(db_url)
    with session_scope(db_url) as session:
        (mark,) = crud.claim_starts(session=session, limit=10, lease=timedelta(minutes=1))
    assert (mark.lead_key, mark.created) == (journey.lead_key("new@acme.example"), True)
