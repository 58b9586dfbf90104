"""Every SQL statement of nurture: small keyword-only functions that take a session.

Routes, CLI commands and activities call these; none opens a session of its own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, insert, literal, or_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from nurture import security
from nurture.leadfields import check_attributes
from nurture.models import (
    BulkEnrollment, BulkRun, CampaignControl, CampaignEnrollment, Counter, Email, Event, Handoff, History, Lead, LeadStart, SignInFailure, StepVisit,
    Suppression, User, utcnow,
)
from nurture.vocabulary import suppressing_status

PROFILE_COLUMNS = (
    "first_name", "last_name", "company", "job_title", "company_size",
    "country", "timezone", "locale", "source", "anonymous_id",
)


# ---------------------------------------------------------------- leads


def get_lead(*, session: Session, email: str) -> Lead | None:
    return session.exec(select(Lead).where(Lead.email == email)).first()


def leads_by_email(*, session: Session, emails: Sequence[str]) -> dict[str, Lead]:
    """The stored leads among these addresses, by address (one query per 500)."""
    return {lead.email or "": lead for lead in _leads_where(session, col(Lead.email), emails)}


def leads_by_key(*, session: Session, keys: Sequence[str]) -> dict[str, Lead]:
    """The stored leads among these keys, by key (one query per 500)."""
    return {lead.key: lead for lead in _leads_where(session, col(Lead.key), keys)}


def _leads_where(session: Session, column: Any, values: Sequence[str]) -> list[Lead]:
    found: list[Lead] = []
    for start in range(0, len(values), 500):
        found.extend(session.exec(select(Lead).where(column.in_(list(values[start:start + 500])))))
    return found


def get_lead_by_key(*, session: Session, key: str) -> Lead | None:
    return session.exec(select(Lead).where(Lead.key == key)).first()


def lead_emails(*, session: Session) -> list[str]:
    """Every lead's address (forgotten leads have none), oldest lead first."""
    return [email for email in session.exec(
        select(Lead.email).where(col(Lead.email).is_not(None)).order_by(col(Lead.id))).all() if email]


def lead_by_anonymous_id(*, session: Session, anonymous_id: str) -> Lead | None:
    return session.exec(select(Lead).where(Lead.anonymous_id == anonymous_id)).first()


def upsert_lead(*, session: Session, key: str, email: str, profile: dict[str, Any],
                consent_at: datetime | None = None) -> tuple[Lead, bool]:
    """Create the lead or fill in the fields given; returns (lead, created).

    Fields given as None keep their stored value: a form that does not ask for the
    company must not erase it.
    """
    # By address first: a lead folded from another spelling of it (migration 0003)
    # keeps the key, and so the workflow, it had.
    lead = get_lead(session=session, email=email) or get_lead_by_key(session=session, key=key)
    created = lead is None
    if profile.get("attributes"):
        # Bounded once merged, checked before anything is changed (FieldError).
        check_attributes({**((lead.attributes or {}) if lead else {}), **profile["attributes"]})
    if lead is None:
        lead = Lead(key=key, email=email)
    for name in PROFILE_COLUMNS:
        if profile.get(name) is not None:
            setattr(lead, name, profile[name])
    if profile.get("attributes"):
        lead.attributes = {**(lead.attributes or {}), **profile["attributes"]}
    if consent_at is not None and lead.consent_at is None:
        lead.consent_at = consent_at
    lead.updated_at = utcnow()
    session.add(lead)
    session.flush()
    return lead, created


def list_leads(*, session: Session, after_id: int, limit: int, stage: str | None = None,
               grade: str | None = None, temperature: str | None = None, status: str | None = None,
               campaign: str | None = None, q: str | None = None, where: Any = None) -> Sequence[Lead]:
    """Leads matching every filter given, in id order after `after_id` (keyset
    pagination: no lead is repeated or skipped from page to page, new leads come last;
    only a lead whose filtered fields change meanwhile may enter or leave the list).
    `q` finds a case-insensitive substring of the address, the name or the company.
    Forgotten leads (no address) are left out. `where`: one more condition (a segment's)."""
    query = select(Lead).where(col(Lead.email).is_not(None), col(Lead.id) > after_id)
    if where is not None:
        query = query.where(where)
    for column, value in ((Lead.stage, stage), (Lead.grade, grade), (Lead.temperature, temperature),
                          (Lead.status, status), (Lead.campaign, campaign)):
        if value is not None:
            query = query.where(col(column) == value)
    if q:
        pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        name = func.coalesce(Lead.first_name, "") + " " + func.coalesce(Lead.last_name, "")
        query = query.where(or_(*(func.lower(text_).like(pattern, escape="\\") for text_ in
                                  (col(Lead.email), name, func.coalesce(Lead.company, "")))))
    return session.exec(query.order_by(col(Lead.id)).limit(limit)).all()


def profile_of(lead: Lead) -> dict[str, Any]:
    return {"email": lead.email, **{name: getattr(lead, name) for name in PROFILE_COLUMNS},
            "attributes": dict(lead.attributes or {})}


def apply_projection(*, session: Session, key: str, version: int, fields: dict[str, Any]) -> None:
    """Write the workflow's view of the lead unless a newer one is already stored.

    Syncs can arrive out of order (retries, concurrent handlers); the version makes
    the newest win. Written as a Core statement: this runs after every change of every
    lead, and the ORM's bulk-update bookkeeping was most of a worker's CPU here.
    """
    lead = Lead.__table__
    fields = dict(fields)
    status = fields.pop("status", None)
    opted_in = fields.pop("opted_in", False)
    if status is not None:
        # A stop written at once by the webhook or the unsubscribe page must not be
        # undone by a projection computed before the workflow heard of it; going back
        # to subscribed is written by the resubscribe page itself, or by the projection
        # of a SendGrid group resubscribe (an unsubscribe only, never a bounce or complaint).
        undoable = ("subscribed", "unsubscribed") if opted_in else ("subscribed",)
        fields["status"] = case((and_(lead.c.status.not_in(undoable), literal(status) == "subscribed"), lead.c.status),
                                else_=literal(status))
    session.connection().execute(
        update(lead)
        .where(lead.c.key == key, lead.c.state_version < version)
        .values(**fields, state_version=version, updated_at=utcnow())
    )


def add_history(*, session: Session, key: str, entries: Iterable[dict[str, Any]]) -> None:
    """Append history rows; a row already stored (same lead and seq) is skipped."""
    entries = list(entries)
    if not entries:
        return
    history = History.__table__
    seqs = [entry["seq"] for entry in entries]
    connection = session.connection()
    known = set(connection.execute(
        select(history.c.seq).where(history.c.lead_key == key, history.c.seq.in_(seqs))).scalars())
    rows = [{**entry, "lead_key": key} for entry in entries if entry["seq"] not in known]
    if rows:
        connection.execute(insert(history), rows)
        _record_journeys(session=session, key=key, rows=rows)


def _insert_once(session: Session, model: Any, **values: Any) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on the primary key, in either dialect."""
    dialect = session.get_bind().dialect.name
    insert_ = sqlite_insert if dialect == "sqlite" else postgresql_insert
    session.connection().execute(insert_(model.__table__).values(**values).on_conflict_do_nothing())


def _record_journeys(*, session: Session, key: str, rows: list[dict[str, Any]]) -> None:
    """Keep the enrollment and step-visit tables (the campaign stats) in step with the
    history lines the workflow marks `journey` (enrolled, step, left), in its order."""
    for row in rows:
        detail = row.get("detail") or {}
        what, number = detail.get("journey"), detail.get("enrollment")
        if what is None or number is None:
            continue
        if what == "enrolled":
            _insert_once(session, CampaignEnrollment, lead_key=key, number=number, campaign=detail["campaign"],
                         version=detail.get("version", ""), enrolled_at=row["at"])
        elif what == "step":  # a step entered again (a goto loop) keeps its first visit
            _insert_once(session, StepVisit, lead_key=key, number=number, step=detail["step"],
                         campaign=detail["campaign"], at=row["at"])
        elif what == "left":
            session.execute(update(CampaignEnrollment)
                            .where(col(CampaignEnrollment.lead_key) == key, col(CampaignEnrollment.number) == number)
                            .values(ended_at=row["at"], exit_reason=str(detail.get("exit", ""))[:500]))


def list_history(*, session: Session, key: str) -> Sequence[History]:
    return session.exec(select(History).where(History.lead_key == key).order_by(col(History.seq))).all()


def stage_changes(*, session: Session, key: str, to: str) -> list[datetime]:
    """When the lead entered stage `to` (from its stage history), oldest first."""
    rows = session.exec(select(History).where(History.lead_key == key, History.kind == "stage")
                        .order_by(col(History.seq))).all()
    return [row.at for row in rows if (row.detail or {}).get("to") == to]


def forget_lead(*, session: Session, lead: Lead, email_hash: str) -> list[str]:
    """Erase personal data; keep the key, the history's numbers and a suppression hash.

    Returns the send ids of the lead's emails, whose outbox files the caller removes.
    Free text that may quote the lead (history reasons such as `sent welcome: "Ann, ..."`,
    a sales rep's reject reason) keeps its words with the address and names blanked."""
    suppress(session=session, email_hash=email_hash, reason="forgotten")
    blank = _personal_text(lead)
    if lead.anonymous_id:  # what it did as a visitor is its too (and it must not count as one again)
        session.execute(update(Event).where(col(Event.anonymous_id) == lead.anonymous_id, col(Event.lead_key).is_(None))
                        .values(anonymous_id=None, data={}))
    for name in PROFILE_COLUMNS:
        setattr(lead, name, None)
    lead.email = None
    lead.attributes = {}
    lead.status = "unsubscribed"
    lead.campaign = lead.step = lead.waiting_for = None
    session.add(lead)
    # Its workflow ends without a `left` line: the journey it was on ends here.
    session.execute(update(CampaignEnrollment).where(col(CampaignEnrollment.lead_key) == lead.key,
                                                     col(CampaignEnrollment.ended_at).is_(None))
                    .values(ended_at=utcnow(), exit_reason="forgotten"))
    sends = list(session.exec(select(Email.send_id).where(Email.lead_key == lead.key)).all())
    session.execute(update(Email).where(col(Email.lead_key) == lead.key).values(to=None, subject="", error=None))
    session.execute(update(Event).where(col(Event.lead_key) == lead.key).values(email=None, data={}))
    session.execute(update(Handoff).where(col(Handoff.lead_key) == lead.key).values(email=None, snapshot={}))
    for handoff in session.exec(select(Handoff).where(Handoff.lead_key == lead.key, col(Handoff.reason).is_not(None))):
        handoff.reason = blank(handoff.reason or "")
        session.add(handoff)
    for entry in session.exec(select(History).where(History.lead_key == lead.key)).all():
        entry.detail = {}
        entry.reason = blank(entry.reason)
        session.add(entry)
    return sends


def _personal_text(lead: Lead) -> Callable[[str], str]:
    """A function that blanks the lead's address and names (whole words, any case) in a text."""
    values = sorted({v.strip() for v in (lead.email, lead.first_name, lead.last_name) if v and v.strip()},
                    key=len, reverse=True)
    if not values:
        return lambda text: text
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(v)}(?!\w)" for v in values), re.IGNORECASE)
    return lambda text: pattern.sub("[forgotten]", text)


# ---------------------------------------------------------------- lead starts


def mark_start(*, session: Session, key: str, created: bool, campaign: str | None,
               lease: timedelta) -> LeadStart:
    """Mark the lead as not yet taken by its workflow, in the caller's transaction (the
    one that writes its row), leased to the caller for `lease`. A mark already there
    keeps what it asked for: a lead still new stays new, a campaign asked stays asked."""
    mark = session.get(LeadStart, key)
    if mark is None:
        mark = LeadStart(lead_key=key, token="")
    mark.created = mark.created or created
    mark.campaign = campaign or mark.campaign
    mark.token = uuid.uuid4().hex
    mark.marked_at = utcnow()
    mark.claimed_until = mark.marked_at + lease
    session.add(mark)
    session.flush()
    return mark


def clear_start(*, session: Session, key: str, token: str) -> None:
    """The workflow has the lead: drop its mark, unless it was marked again since."""
    session.execute(delete(LeadStart).where(col(LeadStart.lead_key) == key, col(LeadStart.token) == token))


def start_marks(*, session: Session, keys: Sequence[str]) -> dict[str, bool]:
    """The keys among these whose workflow has not yet taken the stored lead, each with
    whether the lead is still new to it (`created`)."""
    found: dict[str, bool] = {}
    for start in range(0, len(keys), 500):
        chunk = list(keys[start:start + 500])
        found.update(session.exec(select(LeadStart.lead_key, LeadStart.created)
                                  .where(col(LeadStart.lead_key).in_(chunk))).all())
    return found


def claim_starts(*, session: Session, limit: int, lease: timedelta) -> Sequence[LeadStart]:
    """Lease up to `limit` marks no process holds (their lease ran out), oldest first."""
    table = LeadStart.__table__  # type: ignore[attr-defined]
    keys = lease_rows(session=session, key=table.c.lead_key, claimed_until=table.c.claimed_until,
                      oldest_first=table.c.marked_at, limit=limit, lease=lease)
    if not keys:
        return []
    return session.exec(select(LeadStart).where(col(LeadStart.lead_key).in_(keys))
                        .order_by(col(LeadStart.marked_at))).all()


def lease_rows(*, session: Session, key: Any, claimed_until: Any, oldest_first: Any, limit: int,
               lease: timedelta, where: Any = None) -> list[Any]:
    """Lease up to `limit` rows of `key`'s table that match `where` and no lease holds,
    oldest first, until now + `lease`; returns their keys. Several workers may call this
    at once, on SQLite as on PostgreSQL: a row is leased to one of them only."""
    table = key.table
    now = utcnow()
    free = or_(claimed_until.is_(None), claimed_until < now)
    if where is not None:
        free = and_(where, free)
    # A plain read first: an idle poll (nearly all of them) must not take SQLite's write lock.
    found = select(key).where(free).order_by(oldest_first).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        found = found.with_for_update(skip_locked=True)  # concurrent claims pass each other by
    candidates = session.execute(found).scalars().all()
    if not candidates:
        return []
    # The lease, re-checked in the UPDATE: rows another process leased meanwhile drop out.
    return list(session.execute(update(table).where(key.in_(candidates), free)
                                .values({claimed_until.name: now + lease}).returning(key)).scalars().all())


def release_starts(*, session: Session, keys: Sequence[str]) -> None:
    """Marks that could not be started now go back for the next pass."""
    if keys:
        session.execute(update(LeadStart).where(col(LeadStart.lead_key).in_(list(keys))).values(claimed_until=None))


# ---------------------------------------------------------------- suppression


def suppress(*, session: Session, email_hash: str, reason: str) -> None:
    if session.get(Suppression, email_hash) is None:
        session.add(Suppression(email_hash=email_hash, reason=reason))
        session.flush()


def suppress_now(*, session: Session, lead: Any, address: str | None, type_: str,
                 reason: str | None = None) -> None:
    """An unsubscribe, bounce, spam report or a drop for a reason about the address
    (`reason`: SendGrid's) ends marketing email now, not when the workflow hears of it:
    the send activity re-checks this row before every send. Other drops change nothing.

    `lead` is a Lead or any object with its `key`, `email` and `status` (the webhook
    reads only those columns); the row is changed by one UPDATE either way."""
    status = suppressing_status(type_, reason)
    if status is None:
        return
    target = address or (lead.email if lead is not None else None)
    if status == "complained" and target:
        suppress(session=session, email_hash=security.stored_email_hash(target), reason="complained")
    if lead is not None and lead.email is not None and lead.status == "subscribed":
        session.execute(update(Lead).where(col(Lead.key) == lead.key, col(Lead.status) == "subscribed")
                        .values(status=status, updated_at=utcnow()))
        lead.status = status  # later events of the same batch see it


def lead_status(*, session: Session, key: str) -> str | None:
    """The lead's status column alone (None for an unknown key)."""
    return session.execute(select(Lead.status).where(Lead.key == key)).scalar_one_or_none()


def campaign_control(*, session: Session, campaign: str) -> CampaignControl | None:
    """The campaign's pause/stop state; None: never changed (active)."""
    return session.get(CampaignControl, campaign)


def campaign_controls(*, session: Session) -> dict[str, CampaignControl]:
    return {row.campaign: row for row in session.exec(select(CampaignControl)).all()}


def set_campaign_control(*, session: Session, campaign: str, state: str, by: str | None) -> CampaignControl:
    """Record the campaign's new state with the next sequence number (one writer: the
    service's pause/resume/stop; the row is locked for the read-and-bump)."""
    row = session.exec(select(CampaignControl).where(col(CampaignControl.campaign) == campaign)
                       .with_for_update()).first()
    if row is None:
        row = CampaignControl(campaign=campaign, state=state, seq=1, changed_at=utcnow(), changed_by=by)
    else:
        row.state, row.seq, row.changed_at, row.changed_by = state, row.seq + 1, utcnow(), by
    session.add(row)
    session.flush()
    return row


def keys_in_campaign(*, session: Session, campaign: str) -> Sequence[str]:
    """Keys of the leads the store shows in the campaign now (a control change's fan-out)."""
    return session.exec(select(Lead.key).where(col(Lead.campaign) == campaign).order_by(col(Lead.id))).all()


def is_suppressed(*, session: Session, email_hash: str) -> str | None:
    row = session.get(Suppression, email_hash)
    return row.reason if row else None


# ---------------------------------------------------------------- events


def add_event(*, session: Session, event: Event) -> bool:
    """Store an event once; False if its id is already stored (a retry or a replay)."""
    if session.get(Event, event.id) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(event)
    except IntegrityError:  # a concurrent insert of the same id won the race
        return False
    return True


def event_owners(*, session: Session, ids: Sequence[str]) -> dict[str, tuple[str | None, str | None, str | None]]:
    """Stored events among these ids: id -> (lead key, email, anonymous id)."""
    table = Event.__table__
    found: dict[str, tuple[str | None, str | None, str | None]] = {}
    unique = sorted(set(ids))
    for start in range(0, len(unique), 500):
        rows = session.connection().execute(select(table.c.id, table.c.lead_key, table.c.email, table.c.anonymous_id)
                                            .where(table.c.id.in_(unique[start:start + 500])))
        found.update((row[0], (row[1], row[2], row[3])) for row in rows)
    return found


def mark_dispatched(*, session: Session, ids: Sequence[str]) -> None:
    if ids:
        session.execute(update(Event).where(col(Event.id).in_(ids)).values(dispatched_at=utcnow(), claimed_until=None))


def undispatched_events(*, session: Session, limit: int) -> Sequence[Event]:
    return session.exec(
        select(Event).where(col(Event.dispatched_at).is_(None), col(Event.lead_key).is_not(None))
        .order_by(col(Event.received_at)).limit(limit)
    ).all()


def count_visitors(*, session: Session) -> int:
    """Visitors (stage `visitor`): distinct anonymous ids with events that no lead has claimed yet."""
    linked = select(Lead.anonymous_id).where(col(Lead.anonymous_id).is_not(None))
    return session.exec(
        select(func.count(func.distinct(Event.anonymous_id))).where(
            col(Event.anonymous_id).is_not(None), col(Event.lead_key).is_(None), col(Event.anonymous_id).not_in(linked))
    ).one()


def anonymous_events(*, session: Session, anonymous_id: str, since: datetime) -> Sequence[Event]:
    return session.exec(
        select(Event).where(Event.anonymous_id == anonymous_id, col(Event.lead_key).is_(None), col(Event.at) >= since)
        .order_by(col(Event.at))
    ).all()


def events_of(*, session: Session, key: str) -> Sequence[Event]:
    return session.exec(select(Event).where(Event.lead_key == key).order_by(col(Event.at))).all()


def scoring_events(*, session: Session, key: str, anonymous_id: str | None, types: Sequence[str]) -> Sequence[Event]:
    """The lead's events of the given types, and those of its earlier visitor id, oldest first."""
    whose = col(Event.lead_key) == key
    if anonymous_id:
        whose = or_(whose, and_(col(Event.lead_key).is_(None), col(Event.anonymous_id) == anonymous_id))
    return session.exec(select(Event).where(whose, col(Event.type).in_(list(types)))
                        .order_by(col(Event.at), col(Event.id))).all()


# ---------------------------------------------------------------- emails


def claim_email(*, session: Session, email: Email) -> Email:
    """Insert the send's row, or return the row an earlier attempt already claimed."""
    existing = session.get(Email, email.send_id)
    if existing is not None:
        return existing
    try:
        with session.begin_nested():
            session.add(email)
    except IntegrityError:
        existing = session.get(Email, email.send_id)
        assert existing is not None
        return existing
    return email


def set_email_status(*, session: Session, send_id: str, status: str, **fields: Any) -> None:
    # Core statements here and below: every send runs them, and the ORM's bulk-update
    # bookkeeping (matching the session's objects) cost more than the write itself.
    email = Email.__table__
    session.connection().execute(
        update(email).where(email.c.send_id == send_id).values(status=status, updated_at=utcnow(), **fields))


def take_for_sending(*, session: Session, send_id: str, attempts: int, subject: str) -> bool:
    """Move a claimed send to `sending`, only if no other attempt has moved it since this
    one read it (compare-and-set on status and attempts). Two attempts racing after a
    timeout can then never both reach the provider."""
    email = Email.__table__
    result = session.connection().execute(
        update(email)
        .where(email.c.send_id == send_id, email.c.status == "claimed", email.c.attempts == attempts)
        .values(status="sending", subject=subject, attempts=attempts + 1, updated_at=utcnow()))
    return result.rowcount == 1


def held_emails(*, session: Session, holds: Sequence[str], limit: int = 100) -> Sequence[Lead]:
    """Leads whose next email waits for one of `holds` (send window, frequency cap),
    the soonest to leave first."""
    return session.exec(select(Lead).where(col(Lead.waiting_for).in_(list(holds)), col(Lead.campaign).is_not(None),
                                           col(Lead.email).is_not(None))
                        .order_by(col(Lead.next_action_at), col(Lead.id)).limit(limit)).all()


def note_engagement(*, session: Session, firsts: dict[tuple[str, str], datetime]) -> None:
    """Record the first time of each (send id, engagement column), e.g. ("s1", "opened_at"):
    an earlier time replaces a later one, so batches may arrive in any order."""
    email = Email.__table__
    by_column: dict[str, list[dict[str, Any]]] = {}
    for (send_id, column), at in sorted(firsts.items()):
        by_column.setdefault(column, []).append({"b_send_id": send_id, "b_at": at})
    for column, params in by_column.items():  # one executemany per column
        current = email.c[column]
        session.connection().execute(
            update(email).where(email.c.send_id == bindparam("b_send_id"),
                                or_(current.is_(None), current > bindparam("b_at", type_=current.type)))
            .values({column: bindparam("b_at", type_=current.type)}), params)


def note_link_unsubscribe(*, session: Session, key: str, at: datetime) -> None:
    """An unsubscribe through the link counts against the lead's latest marketing email."""
    latest = session.exec(select(Email.send_id).where(Email.lead_key == key, col(Email.marketing).is_(True),
                                                      col(Email.sent_at).is_not(None))
                          .order_by(col(Email.sent_at).desc()).limit(1)).first()
    if latest is not None:
        note_engagement(session=session, firsts={(latest, "unsubscribed_at"): at})


def list_outbox(*, session: Session, limit: int = 1000) -> Sequence[Email]:
    return session.exec(select(Email).order_by(col(Email.claimed_at)).limit(limit)).all()


def emails_of(*, session: Session, key: str) -> Sequence[Email]:
    return session.exec(select(Email).where(Email.lead_key == key).order_by(col(Email.claimed_at))).all()


# ---------------------------------------------------------------- handoffs


def next_counter(*, session: Session, name: str) -> int:
    """Atomically take the next value of a named counter (0, 1, 2, ...).

    One UPDATE ... RETURNING, so concurrent workers never take the same value.
    """
    try:
        with session.begin_nested():
            session.add(Counter(name=name, value=0))
    except IntegrityError:
        pass
    taken = session.execute(
        update(Counter).where(col(Counter.name) == name).values(value=Counter.value + 1).returning(Counter.value)
    ).scalar_one()
    return taken - 1


def take_rate_slot(*, session: Session, name: str, limit: int, window_seconds: int, now: datetime) -> bool:
    """One use of the rate limit `name`, shared by every process on this store: True while
    fewer than `limit` uses were taken in the current fixed window (counted from the epoch,
    so every process agrees on it). Counters of past windows are deleted as we go."""
    bucket = f"{name}:{int(now.timestamp()) // window_seconds}"
    session.execute(delete(Counter).where(col(Counter.name).startswith(f"{name}:"), col(Counter.name) != bucket))
    return next_counter(session=session, name=bucket) < limit


def create_handoff(*, session: Session, handoff: Handoff) -> Handoff:
    session.add(handoff)
    session.flush()
    return handoff


def get_handoff(*, session: Session, handoff_id: int) -> Handoff | None:
    return session.get(Handoff, handoff_id)


def find_handoff(*, session: Session, key: str, number: int) -> Handoff | None:
    """The lead's n-th handoff, if an earlier attempt of the activity created it."""
    return session.exec(
        select(Handoff).where(Handoff.lead_key == key, Handoff.number == number)
    ).first()


def update_handoff(*, session: Session, handoff_id: int, **fields: Any) -> None:
    session.execute(update(Handoff).where(col(Handoff.id) == handoff_id).values(updated_at=utcnow(), **fields))


def list_handoffs(*, session: Session, status: str | None = None) -> Sequence[Handoff]:
    query = select(Handoff).order_by(col(Handoff.id))
    if status:
        query = query.where(Handoff.status == status)
    return session.exec(query).all()



def handoffs_of(*, session: Session, owner: str | None = None, key: str | None = None) -> Sequence[Handoff]:
    """Handoffs, newest first: all, one owner's, or one lead's."""
    query = select(Handoff).order_by(col(Handoff.id).desc())
    if owner is not None:
        query = query.where(Handoff.owner == owner)
    if key is not None:
        query = query.where(Handoff.lead_key == key)
    return session.exec(query).all()


# ---------------------------------------------------------------- web app users


def get_user(*, session: Session, email: str) -> User | None:
    return session.exec(select(User).where(User.email == email)).first()


def get_user_by_id(*, session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def add_user(*, session: Session, email: str, role: str, password_hash: str,
             timezone: str | None = None) -> User | None:
    """A new user, or None when the address already has one."""
    user = User(email=email, role=role, password_hash=password_hash, timezone=timezone)
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        return None
    return user


def list_users(*, session: Session) -> Sequence[User]:
    return session.exec(select(User).order_by(col(User.email))).all()


def remove_user(*, session: Session, email: str) -> bool:
    return bool(session.execute(delete(User).where(col(User.email) == email)).rowcount)  # type: ignore[attr-defined]


def set_user_timezone(*, session: Session, user_id: int, timezone: str | None) -> None:
    session.execute(update(User).where(col(User.id) == user_id).values(timezone=timezone))


def set_password_hash(*, session: Session, user_id: int, password_hash: str) -> None:
    session.execute(update(User).where(col(User.id) == user_id).values(password_hash=password_hash))


def add_signin_failure(*, session: Session, account: str, address: str) -> None:
    session.add(SignInFailure(account=account, address=address))


def signin_failures(*, session: Session, account: str, address: str, since: datetime) -> tuple[list[datetime], list[datetime]]:
    """When sign-ins failed since `since`, oldest first: for the account, for the address."""
    found = session.exec(select(SignInFailure).where(
        col(SignInFailure.at) >= since,
        or_(col(SignInFailure.account) == account, col(SignInFailure.address) == address),
    ).order_by(col(SignInFailure.at))).all()
    return ([f.at for f in found if f.account == account], [f.at for f in found if f.address == address])


def prune_signin_failures(*, session: Session, before: datetime) -> None:
    """Failures too old to matter to the throttle."""
    session.execute(delete(SignInFailure).where(col(SignInFailure.at) < before))


# ---------------------------------------------------------------- operations metrics (/metrics)


def email_status_counts(*, session: Session) -> dict[str, int]:
    """Email rows per status (sent, delivered, failed, unknown, ...)."""
    return dict(session.execute(select(Email.status, func.count()).group_by(Email.status)).all())  # type: ignore[arg-type]


def event_counts(*, session: Session) -> tuple[int, int, datetime | None]:
    """(events received, events delivered to a workflow, the oldest one still waiting to be
    delivered); events of no known lead wait for none and are left out of the last."""
    received = session.execute(select(func.count()).select_from(Event)).scalar_one()
    delivered = session.execute(select(func.count()).select_from(Event)
                                .where(col(Event.dispatched_at).is_not(None))).scalar_one()
    oldest = session.execute(select(func.min(Event.received_at)).where(
        col(Event.dispatched_at).is_(None), col(Event.lead_key).is_not(None))).scalar_one()
    return int(received), int(delivered), oldest


def lead_stage_counts(*, session: Session) -> dict[str, int]:
    return dict(session.execute(select(Lead.stage, func.count()).group_by(Lead.stage)).all())  # type: ignore[arg-type]


def open_handoff_count(*, session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(Handoff).where(Handoff.status == "open")).scalar_one())


# ---------------------------------------------------------------- segments and bulk enrollment
# `where` is a condition on the lead table from nurture.segments_sql.


def count_leads(*, session: Session, where: Any) -> int:
    return int(session.execute(select(func.count()).select_from(Lead).where(where)).scalar_one())


def lead_matches(*, session: Session, key: str, where: Any) -> bool:
    """The lead `key` meets `where` (a segment's condition): one indexed lookup."""
    return session.execute(select(Lead.id).where(col(Lead.key) == key, where).limit(1)).first() is not None


def count_by(*, session: Session, where: Any, label: Any) -> dict[str | None, int]:
    """How many leads matching `where` have each value of `label` (an SQL expression)."""
    rows = session.execute(select(label.label("label"), func.count()).select_from(Lead).where(where)
                           .group_by(label)).all()
    return {row[0]: int(row[1]) for row in rows}


def bulk_run(*, session: Session, segment: str, campaign: str) -> BulkRun:
    """The run of (segment, campaign), created at its first use; a re-run resumes it."""
    run = session.exec(select(BulkRun).where(BulkRun.segment == segment, BulkRun.campaign == campaign)).first()
    if run is None:
        try:
            with session.begin_nested():
                run = BulkRun(segment=segment, campaign=campaign)
                session.add(run)
        except IntegrityError:  # a concurrent run created it
            run = session.exec(select(BulkRun).where(BulkRun.segment == segment, BulkRun.campaign == campaign)).one()
    return run


def find_bulk_run(*, session: Session, segment: str, campaign: str) -> BulkRun | None:
    return session.exec(select(BulkRun).where(BulkRun.segment == segment, BulkRun.campaign == campaign)).first()


def enrollment_counts(*, session: Session, keys: Sequence[str], campaign: str) -> dict[str, int]:
    """How many times each lead has been enrolled in `campaign` (its journeys, from history)."""
    rows = session.execute(select(CampaignEnrollment.lead_key, func.count()).where(
        col(CampaignEnrollment.lead_key).in_(list(keys)), CampaignEnrollment.campaign == campaign)
        .group_by(CampaignEnrollment.lead_key)).all()
    return {row[0]: int(row[1]) for row in rows}


def bulk_rows(*, session: Session, run_id: int, keys: Sequence[str]) -> dict[str, BulkEnrollment]:
    return {row.lead_key: row for row in session.exec(select(BulkEnrollment).where(
        BulkEnrollment.run_id == run_id, col(BulkEnrollment.lead_key).in_(list(keys))))}


def set_bulk_rows(*, session: Session, run_id: int, rows: dict[str, tuple[str, str | None, int | None]]) -> None:
    """Write each lead's (status, reason, enrollments before) in the run; a None count keeps the stored one."""
    stored = bulk_rows(session=session, run_id=run_id, keys=list(rows))
    for key, (status, reason, before) in rows.items():
        row = stored.get(key) or BulkEnrollment(run_id=run_id, lead_key=key)
        row.status, row.reason, row.updated_at = status, reason, utcnow()
        if before is not None:
            row.enrollments_before = before
        session.add(row)
    session.flush()


def pending_bulk_rows(*, session: Session, run_id: int) -> Sequence[BulkEnrollment]:
    return session.exec(select(BulkEnrollment).where(BulkEnrollment.run_id == run_id,
                                                     BulkEnrollment.status == "pending")).all()


def finish_bulk_run(*, session: Session, run_id: int) -> None:
    session.execute(update(BulkRun).where(col(BulkRun.id) == run_id).values(finished_at=utcnow()))


def bulk_statuses(*, session: Session, run_id: int) -> dict[str, int]:
    """How many leads of the run are pending, enrolled, refused."""
    rows = session.execute(select(BulkEnrollment.status, func.count()).where(BulkEnrollment.run_id == run_id)
                           .group_by(BulkEnrollment.status)).all()
    return {row[0]: int(row[1]) for row in rows}
