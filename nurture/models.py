"""SQLModel tables: what the CLI, the API and reports read.

The lead's workflow decides; these tables are its projection (written by activities)
plus what arrives from outside (profiles, events) before a workflow sees it.
Times are stored in UTC; SQLite drops the zone, so readers go through `as_utc`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, String, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def sqlite_time(value: datetime | None) -> str | None:
    """How a time is stored in SQLite: UTC text in SQLAlchemy's own format."""
    value = as_utc(value)
    return None if value is None else value.replace(tzinfo=None).isoformat(" ", "microseconds")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend.

    SQLite keeps no zone: without this, 01:30+01:00 would be stored as 01:30 and read
    back as 01:30 UTC, an hour off.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        # On SQLite, the same text SQLAlchemy writes ("2026-12-01 09:00:00.000000", so
        # stored rows and their order are unchanged), made by C isoformat/fromisoformat:
        # SQLAlchemy's own per-value formatting was an eighth of a webhook batch's time.
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String())
        return dialect.type_descriptor(self.impl)

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | str | None:
        return sqlite_time(value) if dialect.name == "sqlite" else as_utc(value)

    def process_result_value(self, value: datetime | str | None, dialect: Any) -> datetime | None:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return as_utc(value)


def _ts(*, nullable: bool, index: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True, index=index))
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=index))


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Lead(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=64)  # derived from the address; names the workflow
    email: str | None = Field(default=None, unique=True, max_length=254)  # None once forgotten
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    company: str | None = Field(default=None, max_length=200)
    job_title: str | None = Field(default=None, max_length=200)
    company_size: int | None = None
    country: str | None = Field(default=None, max_length=2)
    timezone: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=16)
    source: str | None = Field(default=None, max_length=100)
    anonymous_id: str | None = Field(default=None, index=True, max_length=200)
    attributes: dict[str, Any] = _json()
    consent_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)
    # Projection of the workflow's state, newest `state_version` wins.
    stage: str = Field(default="lead", max_length=20)
    status: str = Field(default="subscribed", max_length=20)
    score: int = 0
    fit: int = 0
    grade: str = Field(default="D", max_length=1)
    temperature: str = Field(default="cold", max_length=10)
    owner: str | None = Field(default=None, max_length=254)
    bant: dict[str, Any] = _json()
    campaign: str | None = Field(default=None, max_length=100)
    step: str | None = Field(default=None, max_length=100)
    waiting_for: str | None = Field(default=None, max_length=200)
    next_action_at: datetime | None = _ts(nullable=True)
    state_version: int = 0

    # `lead list` filters walk the first two in id order (keyset pagination); the campaign
    # stats count who waits where with the third.
    __table_args__ = (Index("ix_lead_stage_id", "stage", "id"), Index("ix_lead_campaign_id", "campaign", "id"),
                      Index("ix_lead_campaign_step", "campaign", "step"))


class LeadStart(SQLModel, table=True):
    """A stored lead whose workflow has not yet confirmed taking this profile.

    Written in the same transaction as the lead row and deleted once the workflow's
    update has answered (started, enrolled by `created` or by name): whatever crashes
    in between, the mark is there, and the starter in every worker (or a re-run of the
    import) hands the lead to its workflow again. `token` changes with each mark, so a
    late clear never erases a newer mark; `claimed_until` leases it to one process.
    """

    __tablename__ = "lead_start"
    lead_key: str = Field(primary_key=True, max_length=64)
    created: bool = False  # the lead is new to its workflow: `auto_on: created` applies
    campaign: str | None = Field(default=None, max_length=100)  # enroll by name
    token: str = Field(max_length=32)
    marked_at: datetime = _ts(nullable=False)
    claimed_until: datetime | None = _ts(nullable=True)


class Event(SQLModel, table=True):
    """Every engagement event as received; `dispatched_at` is set once a workflow has it."""

    # Segments' `did` / `not_did`: EXISTS (this lead, this type, since then) walks this index.
    __table_args__ = (Index("ix_event_lead_type_at", "lead_key", "type", "at"),)

    id: str = Field(primary_key=True, max_length=200)  # idempotency key (sg_event_id, client id, ...)
    lead_key: str | None = Field(default=None, index=True, max_length=64)
    email: str | None = Field(default=None, max_length=254)
    anonymous_id: str | None = Field(default=None, index=True, max_length=200)
    type: str = Field(max_length=64)
    at: datetime = _ts(nullable=False)
    data: dict[str, Any] = _json()  # url, asset, form, event, campaign, step, send_id, ...
    received_at: datetime = _ts(nullable=False)
    dispatched_at: datetime | None = _ts(nullable=True, index=True)
    claimed_until: datetime | None = _ts(nullable=True)  # a dispatcher is delivering it until then


class History(SQLModel, table=True):
    """The lead's explainable history: every score, fit, stage, email, event, handoff change."""

    # (kind, lead_key): the campaign stats find stage changes without reading other lines.
    __table_args__ = (UniqueConstraint("lead_key", "seq"), Index("ix_history_kind_lead", "kind", "lead_key"))
    id: int | None = Field(default=None, primary_key=True)
    lead_key: str = Field(index=True, max_length=64)
    seq: int
    at: datetime = _ts(nullable=False)
    kind: str = Field(max_length=20)
    delta: int | None = None
    reason: str = Field(default="", max_length=500)
    score: int | None = None
    detail: dict[str, Any] = _json()


class Email(SQLModel, table=True):
    """One row per (lead, enrollment, step) send: the claim that makes sending at-most-once."""

    __table_args__ = (Index("ix_email_campaign_step", "campaign", "step"),)
    send_id: str = Field(primary_key=True, max_length=64)
    lead_key: str = Field(index=True, max_length=64)
    to: str | None = Field(default=None, max_length=254)
    campaign: str | None = Field(default=None, max_length=100)
    step: str | None = Field(default=None, max_length=100)
    template: str = Field(max_length=100)
    subject: str = Field(default="", max_length=500)
    variant: int | None = None
    marketing: bool = True
    provider: str = Field(default="outbox", max_length=20)
    provider_message_id: str | None = Field(default=None, max_length=200)
    # claimed -> sending -> sent | failed | unknown; then delivered/bounced/... from the webhook
    status: str = Field(default="claimed", max_length=20)
    error: str | None = Field(default=None, max_length=1000)
    attempts: int = 0
    claimed_at: datetime = _ts(nullable=False)
    sent_at: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts(nullable=False)
    # First time of each engagement with this send, from the webhook (human opens only):
    # the campaign stats count them with one GROUP BY instead of joining the events.
    delivered_at: datetime | None = _ts(nullable=True)
    opened_at: datetime | None = _ts(nullable=True)
    clicked_at: datetime | None = _ts(nullable=True)
    bounced_at: datetime | None = _ts(nullable=True)
    unsubscribed_at: datetime | None = _ts(nullable=True)


class CampaignEnrollment(SQLModel, table=True):
    """One journey of a lead through a campaign, from the workflow's history (enrolled,
    left): the cohort the campaign stats count. Holds no personal data, so it outlives forget."""

    __tablename__ = "enrollment"
    lead_key: str = Field(primary_key=True, max_length=64)
    number: int = Field(primary_key=True)  # the lead's n-th enrollment
    campaign: str = Field(index=True, max_length=100)
    version: str = Field(default="", max_length=64)
    enrolled_at: datetime = _ts(nullable=False)
    ended_at: datetime | None = _ts(nullable=True)
    exit_reason: str | None = Field(default=None, max_length=500)  # completed, unsubscribed, ...


class StepVisit(SQLModel, table=True):
    """A lead entered a step during one enrollment (the stats' `reached`)."""

    __tablename__ = "step_visit"
    __table_args__ = (Index("ix_step_visit_campaign_step", "campaign", "step"),)
    lead_key: str = Field(primary_key=True, max_length=64)
    number: int = Field(primary_key=True)
    step: str = Field(primary_key=True, max_length=100)
    campaign: str = Field(max_length=100)
    at: datetime = _ts(nullable=False)


class Handoff(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("lead_key", "number"),)
    id: int | None = Field(default=None, primary_key=True)
    lead_key: str = Field(index=True, max_length=64)
    number: int = 1  # the lead's n-th handoff: makes creating it idempotent
    email: str | None = Field(default=None, max_length=254)
    owner: str | None = Field(default=None, max_length=254)
    status: str = Field(default="open", max_length=20)  # open accepted rejected won lost
    score: int = 0
    grade: str = Field(default="D", max_length=1)
    reason: str | None = Field(default=None, max_length=1000)
    snapshot: dict[str, Any] = _json()
    webhook_status: str | None = Field(default=None, max_length=200)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class Counter(SQLModel, table=True):
    """Named counters (round-robin assignment) incremented atomically in SQL."""

    name: str = Field(primary_key=True, max_length=100)
    value: int = 0


class Suppression(SQLModel, table=True):
    """Addresses never to mail again, kept as hashes so forgotten leads leave no address."""

    email_hash: str = Field(primary_key=True, max_length=64)
    reason: str = Field(max_length=50)
    created_at: datetime = _ts(nullable=False)


class User(SQLModel, table=True):
    """A person who signs in to the web app (contract section 7); the password only as an
    argon2id hash."""

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, max_length=254)
    role: str = Field(max_length=20)  # marketer | sales | admin
    password_hash: str = Field(max_length=200)
    created_at: datetime = _ts(nullable=False)
    timezone: str | None = Field(default=None, max_length=64)  # their pages' times; None: UTC


class CampaignControl(SQLModel, table=True):
    """A marketer's pause, resume or stop of a campaign (contract section 8). The store
    holds it so it outlives every process; `seq` orders the changes, so a lead applying
    them in any order (signal, or the send activity's re-check) keeps the newest."""

    __tablename__ = "campaign_control"
    campaign: str = Field(primary_key=True, max_length=100)
    state: str = Field(max_length=10)  # active | paused | stopped
    seq: int = 0
    changed_at: datetime = _ts(nullable=False)
    changed_by: str | None = Field(default=None, max_length=254)


class SignInFailure(SQLModel, table=True):
    """A failed sign-in, kept in the store so the throttle holds across API processes."""

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(index=True, max_length=254)
    address: str = Field(index=True, max_length=64)
    at: datetime = _ts(nullable=False, index=True)
class BulkRun(SQLModel, table=True):
    """`nurture enroll --segment S C`: one run per (segment, campaign), resumed by a re-run."""

    __table_args__ = (UniqueConstraint("segment", "campaign"),)
    id: int | None = Field(default=None, primary_key=True)
    segment: str = Field(max_length=100)
    campaign: str = Field(max_length=100)
    started_at: datetime = _ts(nullable=False)
    finished_at: datetime | None = _ts(nullable=True)


class BulkEnrollment(SQLModel, table=True):
    """One lead of a bulk run: `pending` before its workflow is asked, then `enrolled` or
    `refused` (with why). A pending row after a crash is settled from the lead's history."""

    run_id: int = Field(primary_key=True)
    lead_key: str = Field(primary_key=True, max_length=64)
    status: str = Field(default="pending", max_length=20)
    reason: str | None = Field(default=None, max_length=500)
    enrollments_before: int = 0  # the lead's enrollments in the campaign when this row was written
    updated_at: datetime = _ts(nullable=False)
