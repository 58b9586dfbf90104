"""The SQL of the campaign statistics: aggregates only, each one indexed GROUP BY.

No function here reads a lead or an email into Python: the stats of a campaign with
100,000 leads cost a handful of grouped counts. Every function takes campaign names,
so the overview of all campaigns costs the same queries as one campaign's page.
`since` limits the cohort to enrollments begun, steps reached and emails sent from then.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, true
from sqlmodel import Session, col, select

from nurture.models import CampaignEnrollment, Email, History, Lead, StepVisit

CONVERSION_STAGES = ("mql", "sql", "opportunity", "customer")
EMAIL_COUNTS = ("delivered_at", "opened_at", "clicked_at", "bounced_at", "unsubscribed_at")


def _after(column: Any, since: datetime | None) -> Any:
    return column >= since if since is not None else true()


def enrollment_ends(*, session: Session, campaigns: Sequence[str],
                    since: datetime | None) -> list[tuple[str, str | None, int]]:
    """(campaign, exit reason or None while still in it, enrollments)."""
    e = CampaignEnrollment
    return [tuple(row) for row in session.exec(  # type: ignore[misc]
        select(e.campaign, e.exit_reason, func.count())
        .where(col(e.campaign).in_(campaigns), _after(col(e.enrolled_at), since))
        .group_by(e.campaign, e.exit_reason))]


def enrollment_versions(*, session: Session, campaign: str) -> list[tuple[str, int, datetime, datetime]]:
    """(version, enrollments, first, last enrollment) of every version leads entered."""
    e = CampaignEnrollment
    return [tuple(row) for row in session.exec(  # type: ignore[misc]
        select(e.version, func.count(), func.min(e.enrolled_at), func.max(e.enrolled_at))
        .where(e.campaign == campaign).group_by(e.version).order_by(func.min(e.enrolled_at)))]


def conversions(*, session: Session, campaigns: Sequence[str],
                since: datetime | None) -> list[tuple[str, str, int]]:
    """(campaign, stage, leads enrolled in it that entered the stage after enrolling).

    A stage change's history line reads `before -> stage: why`."""
    e, h = CampaignEnrollment, History
    stage = case(*[(col(h.reason).like(f"% -> {name}:%"), name) for name in CONVERSION_STAGES])
    rows = session.exec(
        select(e.campaign, stage, func.count(func.distinct(e.lead_key)))
        .join(h, and_(col(h.lead_key) == col(e.lead_key), col(h.kind) == "stage", col(h.at) >= col(e.enrolled_at)))
        .where(col(e.campaign).in_(campaigns), _after(col(e.enrolled_at), since), stage.is_not(None))
        .group_by(e.campaign, stage))
    return [(campaign, name, count) for campaign, name, count in rows if name in CONVERSION_STAGES]


def steps_reached(*, session: Session, campaign: str, since: datetime | None) -> dict[str, int]:
    """Step id -> distinct leads that entered it."""
    v = StepVisit
    return dict(session.exec(  # type: ignore[arg-type]
        select(v.step, func.count(func.distinct(v.lead_key)))
        .where(v.campaign == campaign, _after(col(v.at), since)).group_by(v.step)).all())


def waiting_now(*, session: Session, campaigns: Sequence[str]) -> list[tuple[str, str | None, int]]:
    """(campaign, step, leads in it now at that step)."""
    return [tuple(row) for row in session.exec(  # type: ignore[misc]
        select(Lead.campaign, Lead.step, func.count())
        .where(col(Lead.campaign).in_(campaigns)).group_by(Lead.campaign, Lead.step))]


def email_counts(*, session: Session, campaign: str, since: datetime | None) -> list[tuple[Any, ...]]:
    """(step, variant, sent, delivered, opened, clicked, bounced, unsubscribed): emails
    sent, and how many of them had each engagement (human opens only)."""
    em = Email
    counts = [func.count(getattr(em, name)) for name in EMAIL_COUNTS]
    return [tuple(row) for row in session.exec(
        select(em.step, em.variant, func.count(), *counts)
        .where(em.campaign == campaign, col(em.sent_at).is_not(None), _after(col(em.sent_at), since))
        .group_by(em.step, em.variant))]


def per_day(*, session: Session, campaign: str, since: datetime | None) -> dict[str, tuple[int, int]]:
    """UTC day (YYYY-MM-DD) -> (emails sent, emails first clicked) that day."""
    sent = _per_day(session, campaign, col(Email.sent_at), since)
    clicked = _per_day(session, campaign, col(Email.clicked_at), since)
    return {day: (sent.get(day, 0), clicked.get(day, 0)) for day in sorted({*sent, *clicked})}


def _per_day(session: Session, campaign: str, column: Any, since: datetime | None) -> dict[str, int]:
    if session.get_bind().dialect.name == "sqlite":  # stored as UTC text: its first ten characters
        day = func.substr(column, 1, 10)
    else:
        day = func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return dict(session.exec(  # type: ignore[arg-type]
        select(day, func.count()).where(Email.campaign == campaign, column.is_not(None), _after(column, since))
        .group_by(day)).all())


def leads_per(*, session: Session, column: Any) -> dict[str, int]:
    """Leads per value of a lead column (stage, status): the funnel under the campaigns."""
    return dict(session.exec(select(column, func.count()).group_by(column)).all())  # type: ignore[arg-type]
