"""The store (crud + Alembic migrations) on SQLite and on PostgreSQL.

PostgreSQL tests use a fresh database on 127.0.0.1:5432 (these machines run one) and
skip with the reason when it cannot be reached."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect
from sqlmodel import col, select

from nurture import crud
from nurture.db import get_engine, session_scope, upgrade
from nurture.models import Counter, Email, Event, Handoff, History


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def db(db_url):
    upgrade(db_url)
    return db_url


def test_migrations_create_every_table_and_are_idempotent(db_url):
    upgrade(db_url)
    upgrade(db_url)  # a second run changes nothing
    tables = set(inspect(get_engine(db_url)).get_table_names())
    assert {"lead", "event", "history", "email", "handoff", "counter", "suppression", "alembic_version"} <= tables


def test_the_migrations_build_exactly_the_schema_the_models_declare(db):
    """Tables, columns, indexes and constraints of models.py equal what the migrations made
    (a model change without its migration, or a class whose second `__table_args__` hid
    the first, fails here). Column types are left out: UTCDateTime is DATETIME in SQLite."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import nurture.models  # noqa: F401 - registers every table on SQLModel.metadata

    with get_engine(db).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        assert compare_metadata(context, SQLModel.metadata) == []


def test_upsert_keeps_fields_not_given_again(db):
    with session_scope(db) as session:
        _, created = crud.upsert_lead(session=session, key="k1", email="a@b.example",
                                      profile={"first_name": "Ann", "company": "Globex", "attributes": {"plan": "pro"}})
        assert created
    with session_scope(db) as session:
        lead, created = crud.upsert_lead(session=session, key="k1", email="a@b.example",
                                         profile={"job_title": "VP", "attributes": {"seats": "12"}})
        assert not created
    with session_scope(db) as session:
        lead = crud.get_lead(session=session, email="a@b.example")
        assert (lead.first_name, lead.company, lead.job_title) == ("Ann", "Globex", "VP")
        assert lead.attributes == {"plan": "pro", "seats": "12"}


def test_projection_newest_version_wins_and_history_is_written_once(db):
    with session_scope(db) as session:
        crud.upsert_lead(session=session, key="k2", email="c@d.example", profile={})
    now = datetime.now(timezone.utc)
    with session_scope(db) as session:
        crud.apply_projection(session=session, key="k2", version=5, fields={"score": 50, "stage": "mql"})
        crud.apply_projection(session=session, key="k2", version=3, fields={"score": 10, "stage": "lead"})
        entries = [{"seq": n, "at": now, "kind": "score", "reason": "email_click", "delta": 5, "score": 5 * n,
                    "detail": {}} for n in (1, 2)]
        crud.add_history(session=session, key="k2", entries=entries)
    with session_scope(db) as session:
        crud.add_history(session=session, key="k2", entries=entries)  # a retried sync
        lead = crud.get_lead(session=session, email="c@d.example")
        assert (lead.score, lead.stage, lead.state_version) == (50, "mql", 5)
        assert [h.seq for h in crud.list_history(session=session, key="k2")] == [1, 2]


def test_an_event_id_is_stored_once(db):
    event = dict(id="sg:abc", lead_key="k3", type="email_open", at=datetime.now(timezone.utc), data={})
    with session_scope(db) as session:
        assert crud.add_event(session=session, event=Event(**event))
    with session_scope(db) as session:
        assert not crud.add_event(session=session, event=Event(**event))
        assert [e.id for e in crud.undispatched_events(session=session, limit=10)] == ["sg:abc"]
        crud.mark_dispatched(session=session, ids=["sg:abc"])
    with session_scope(db) as session:
        assert crud.undispatched_events(session=session, limit=10) == []


def test_claiming_a_send_twice_returns_the_first_claim(db):
    with session_scope(db) as session:
        first = crud.claim_email(session=session, email=Email(send_id="s1", lead_key="k", template="welcome"))
        crud.set_email_status(session=session, send_id="s1", status="sending")
    with session_scope(db) as session:
        again = crud.claim_email(session=session, email=Email(send_id="s1", lead_key="k", template="other"))
        assert first.send_id == again.send_id and again.status == "sending" and again.template == "welcome"


def test_round_robin_counter_is_atomic_across_threads(db):
    taken: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(10):
            with session_scope(db) as session:
                value = crud.next_counter(session=session, name="rr")
            with lock:
                taken.append(value)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == list(range(40))


def test_a_rate_limit_allows_its_uses_per_window_and_forgets_past_windows(db):
    minute = datetime(2026, 3, 2, 9, 30, 5, tzinfo=timezone.utc)

    def take(now: datetime) -> bool:
        with session_scope(db) as session:
            return crud.take_rate_slot(session=session, name="test-send", limit=3, window_seconds=60, now=now)

    assert [take(minute + timedelta(seconds=i)) for i in range(4)] == [True, True, True, False]
    assert take(minute + timedelta(minutes=1)) is True  # a new minute, a new allowance
    with session_scope(db) as session:
        assert crud.next_counter(session=session, name="other") == 0  # other counters are not touched
        assert crud.take_rate_slot(session=session, name="test-send", limit=3, window_seconds=60,
                                   now=minute + timedelta(minutes=1, seconds=30))
        names = session.exec(select(Counter.name).where(col(Counter.name).startswith("test-send:"))).all()
    assert len(names) == 1  # the past minute's counter is gone


def test_handoff_number_is_unique_per_lead_and_forget_erases_personal_data(db):
    with session_scope(db) as session:
        lead, _ = crud.upsert_lead(session=session, key="k4", email="e@f.example", profile={"first_name": "Eve"})
        crud.create_handoff(session=session, handoff=Handoff(lead_key="k4", number=1, email="e@f.example",
                                                             snapshot={"lead": {"email": "e@f.example"}}))
        assert crud.find_handoff(session=session, key="k4", number=1) is not None
    with session_scope(db) as session:
        lead = crud.get_lead(session=session, email="e@f.example")
        crud.forget_lead(session=session, lead=lead, email_hash="h" * 64)
    with session_scope(db) as session:
        assert crud.get_lead(session=session, email="e@f.example") is None
        kept = crud.get_lead_by_key(session=session, key="k4")
        assert kept.first_name is None and kept.email is None and kept.status == "unsubscribed"
        assert crud.find_handoff(session=session, key="k4", number=1).snapshot == {}
        assert crud.is_suppressed(session=session, email_hash="h" * 64) == "forgotten"


def test_forget_blanks_the_subjects_and_the_texts_that_quote_the_lead(db):
    with session_scope(db) as session:
        crud.upsert_lead(session=session, key="k7", email="eve.adams@f.example",
                         profile={"first_name": "Eve", "last_name": "Adams"})
        crud.claim_email(session=session, email=Email(send_id="s7", lead_key="k7", to="eve.adams@f.example",
                                                      template="welcome", subject="Eve, welcome"))
        crud.create_handoff(session=session, handoff=Handoff(lead_key="k7", number=1, reason="eve asked for Adams Ltd"))
        session.add(History(lead_key="k7", seq=1, at=datetime.now(timezone.utc), kind="email",
                            reason='sent welcome: "Eve, welcome" to eve.adams@f.example (Steve saw it)'))
    with session_scope(db) as session:
        lead = crud.get_lead_by_key(session=session, key="k7")
        assert crud.forget_lead(session=session, lead=lead, email_hash="e" * 64) == ["s7"]
    with session_scope(db) as session:
        (email,) = crud.emails_of(session=session, key="k7")
        assert email.subject == "" and email.to is None
        assert crud.find_handoff(session=session, key="k7", number=1).reason == "[forgotten] asked for [forgotten] Ltd"
        (entry,) = session.exec(select(History).where(History.lead_key == "k7")).all()
        assert entry.reason == 'sent welcome: "[forgotten], welcome" to [forgotten] (Steve saw it)'


def test_times_read_back_in_utc(db):
    at = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=1)))
    with session_scope(db) as session:
        crud.add_event(session=session, event=Event(id="t1", type="page_view", at=at, data={}))
    with session_scope(db) as session:
        from nurture.models import as_utc

        stored = session.get(Event, "t1")
        assert as_utc(stored.at) == at


def test_a_retried_reassignment_takes_one_round_robin_turn(db, tmp_path):
    # The reassignment activity may run twice (its first attempt's answer lost): the retry
    # finds the handoff already moved off the excluded owner and takes no second turn.
    from activities.handoff import HandoffActivities, OpenHandoffInput
    from nurture.campaign import load_funnel
    from tests.conftest import ROOT, make_settings

    rules = load_funnel(ROOT / "campaigns" / "funnel.yaml").handoff
    activities = HandoffActivities(make_settings(tmp_path, database_url=db))

    def open_(exclude: str | None) -> tuple[int, str | None]:
        result = activities.open_handoff(OpenHandoffInput(
            lead_key="k1", number=1, email="a@b.example", profile={}, rules=rules, score=60, grade="A",
            snapshot={}, exclude_owner=exclude))
        return result.id, result.owner

    first_id, first_owner = open_(None)
    assert open_(None) == (first_id, first_owner)  # a retried open: same handoff, same owner
    moved = open_(first_owner)
    assert moved[0] == first_id and moved[1] not in (None, first_owner)
    assert open_(first_owner) == moved  # the retried reassignment
    with session_scope(db) as session:
        assert crud.next_counter(session=session, name="handoff_round_robin") == 2  # turns 0 and 1 only


def test_visitors_are_anonymous_ids_no_lead_has_claimed(db):
    at = datetime(2027, 1, 4, 10, 0, tzinfo=timezone.utc)
    with session_scope(db) as session:
        for number, anonymous_id in enumerate(["v1", "v1", "v2", "v3", None]):
            crud.add_event(session=session, event=Event(id=f"a{number}", type="page_view", at=at, data={},
                                                        anonymous_id=anonymous_id))
        assert crud.count_visitors(session=session) == 3
        crud.upsert_lead(session=session, key="kv", email="v2@f.example", profile={"anonymous_id": "v2"})
    with session_scope(db) as session:
        assert crud.count_visitors(session=session) == 2


def test_reclaiming_an_erase_says_when_a_reader_keeps_the_old_pages(tmp_path):
    import sqlite3

    from nurture.db import reclaim_erased

    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    with session_scope(url) as session:
        crud.upsert_lead(session=session, key="kr", email="reader@f.example", profile={})
    reader = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT email FROM lead").fetchall() == [("reader@f.example",)]
    with session_scope(url) as session:
        crud.forget_lead(session=session, lead=crud.get_lead_by_key(session=session, key="kr"), email_hash="r" * 64)
    assert reclaim_erased(url) is False  # the reader still sees the old page in the log
    reader.execute("COMMIT")
    assert reclaim_erased(url) is True
    assert (tmp_path / "store.db-wal").stat().st_size == 0
    assert b"reader@f.example" not in (tmp_path / "store.db").read_bytes()
