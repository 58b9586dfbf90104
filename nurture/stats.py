"""Campaign statistics (contract section 7): the stats document, from grouped counts.

`campaign_stats` is the one document the JSON API, `nurture campaign show` and the web
pages all show, so their numbers are equal by construction. Its parts are plain
functions of the counts `nurture.stats_store` reads; rates are shares of emails sent
(conversions: of enrollments), rounded to four places.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session

from nurture import crud, stats_store
from nurture.campaign import Campaign, find_campaign, load_campaigns
from nurture.config import Settings
from nurture.db import session_scope
from nurture.models import Lead, as_utc

CONFIDENCE = 0.95
SEND_FIELDS = ("sent", "delivered", "unique_opens", "unique_clicks", "bounced", "unsubscribed")
RATES = {"delivered": "delivered", "unique_opens": "open", "unique_clicks": "click",
         "bounced": "bounce", "unsubscribed": "unsubscribe"}


@dataclass
class Totals:
    """A campaign's enrollments by outcome, and its conversions."""

    ends: dict[str | None, int] = field(default_factory=dict)  # exit reason (None: still in it) -> count
    conversions: dict[str, int] = field(default_factory=dict)
    waiting: dict[str | None, int] = field(default_factory=dict)  # step -> leads there now


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def totals_document(campaign: Campaign, totals: Totals, status: str) -> dict[str, Any]:
    """The head of the stats document: what the overview shows per campaign."""
    enrolled = sum(totals.ends.values())
    exited = {reason: count for reason, count in sorted(totals.ends.items(), key=lambda item: (-item[1], item[0] or ""))
              if reason not in (None, "completed")}  # `goal reached` is among them, and a conversion too
    conversions = {stage: totals.conversions.get(stage, 0) for stage in stats_store.CONVERSION_STAGES}
    if campaign.goal:  # the campaign's own conversion: enrollments that left with `goal reached`
        conversions["goal"] = totals.ends.get("goal reached", 0)
    return {
        "campaign": campaign.name, "status": status, "version": campaign.version,
        "enrolled": enrolled, "active": totals.ends.get(None, 0), "completed": totals.ends.get("completed", 0),
        "exited": exited, "conversions": conversions,
        "conversion_rates": {stage: rate(count, enrolled) for stage, count in conversions.items()},
    }


def step_documents(campaign: Campaign, reached: dict[str, int], waiting: dict[str | None, int],
                   emails: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """One entry per step, in the campaign's order."""
    by_step: dict[str, dict[int | None, list[int]]] = {}
    for step_id, variant, *counts in emails:
        by_step.setdefault(step_id, {})[variant] = list(counts)
    steps = []
    for step in campaign.steps:
        entry: dict[str, Any] = {"id": step.id, "kind": step.kind, "reached": reached.get(step.id, 0),
                                 "waiting": waiting.get(step.id, 0)}
        if step.kind == "send":
            entry.update(_send_document(step, by_step.get(step.id, {})))
        steps.append(entry)
    return steps


def _send_document(step: Any, variants: dict[int | None, list[int]]) -> dict[str, Any]:
    summed = [sum(column) for column in zip(*variants.values())] or [0] * len(SEND_FIELDS)
    document: dict[str, Any] = dict(zip(SEND_FIELDS, summed))
    document["rates"] = {name: rate(document[counted], document["sent"]) for counted, name in RATES.items()}
    rows = []
    for index, subject in enumerate(step.subject or []):
        sent, _, opens, clicks, *_ = variants.get(index) or [0] * len(SEND_FIELDS)
        rows.append({"subject": subject, "sent": sent, "unique_opens": opens, "unique_clicks": clicks,
                     "open_rate": rate(opens, sent), "click_rate": rate(clicks, sent)})
    document["variants"] = rows
    if len(rows) >= 2:
        document["significance"] = {metric: significance([(v[metric], v["sent"]) for v in rows])
                                    for metric in ("unique_opens", "unique_clicks")}
    return document


def significance(groups: Sequence[tuple[int, int]], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Whether the variants' rates differ: Pearson's chi-squared test on the variants'
    successes and failures (for two variants, the two-proportion z-test squared).

    No test (p_value null) until every variant has a send and the outcome is neither
    never nor always seen: the test is undefined there."""
    table = [[hits, sent - hits] for hits, sent in groups]
    testable = all(sent > 0 for _, sent in groups) and all(sum(column) > 0 for column in zip(*table))
    if not testable:
        return {"p_value": None, "significant": False, "confidence": confidence}
    # Imported here: scipy costs a second to import, and the CLI's read commands must stay fast.
    from scipy.stats import chi2_contingency

    p_value = float(chi2_contingency(table, correction=False).pvalue)
    return {"p_value": round(p_value, 6), "significant": p_value < 1 - confidence, "confidence": confidence}


def per_day_document(days: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    return [{"day": day, "sent": sent, "unique_clicks": clicks} for day, (sent, clicks) in days.items()]


# ---------------------------------------------------------------- reading


def status_of(session: Session, names: Sequence[str]) -> dict[str, str]:
    """active (a valid file in force: it enrolls and sends), or paused / stopped by a
    marketer (`nurture campaign pause|stop`)."""
    controls = crud.campaign_controls(session=session)
    return {name: controls[name].state if name in controls else "active" for name in names}


def read_totals(session: Session, campaigns: Sequence[Campaign], since: datetime | None) -> dict[str, Totals]:
    """Every campaign's totals, in three grouped queries whatever their number."""
    names = [campaign.name for campaign in campaigns]
    found = {name: Totals() for name in names}
    for name, reason, count in stats_store.enrollment_ends(session=session, campaigns=names, since=since):
        found[name].ends[reason] = count
    for name, stage, count in stats_store.conversions(session=session, campaigns=names, since=since):
        found[name].conversions[stage] = count
    for name, step, count in stats_store.waiting_now(session=session, campaigns=names):
        found[name].waiting[step] = count
    return found


def overview(session: Session, campaigns: Sequence[Campaign], since: datetime | None) -> list[dict[str, Any]]:
    """The head of every campaign's stats document (`GET /v1/campaigns`, the `/` page)."""
    totals = read_totals(session, campaigns, since)
    status = status_of(session, [c.name for c in campaigns])
    return [{**totals_document(c, totals[c.name], status[c.name]), "steps": len(c.steps)} for c in campaigns]


def campaign_stats(session: Session, campaign: Campaign, since: datetime | None) -> dict[str, Any]:
    """The whole stats document of one campaign."""
    totals = read_totals(session, [campaign], since)[campaign.name]
    reached = stats_store.steps_reached(session=session, campaign=campaign.name, since=since)
    emails = stats_store.email_counts(session=session, campaign=campaign.name, since=since)
    versions = stats_store.enrollment_versions(session=session, campaign=campaign.name)
    return {
        **totals_document(campaign, totals, status_of(session, [campaign.name])[campaign.name]),
        "since": as_utc(since).isoformat() if since else None,
        "versions": [{"version": version, "enrolled": count, "first_enrolled_at": as_utc(first).isoformat(),
                      "last_enrolled_at": as_utc(last).isoformat()} for version, count, first, last in versions],
        "steps": step_documents(campaign, reached, totals.waiting, emails),
        "per_day": per_day_document(stats_store.per_day(session=session, campaign=campaign.name, since=since)),
    }


def stats_of(settings: Settings, name: str, since: datetime | None) -> tuple[Campaign, dict[str, Any]]:
    """The campaign file named `name` and its stats (UnknownCampaignError if none)."""
    campaign = find_campaign(settings.campaigns_dir, name)
    with session_scope(settings.db_url) as session:
        return campaign, campaign_stats(session, campaign, since)


def overview_of(settings: Settings, since: datetime | None) -> list[dict[str, Any]]:
    """Every campaign in NURTURE_CAMPAIGNS_DIR with its totals (CampaignError if a file is invalid)."""
    campaigns = load_campaigns(settings.campaigns_dir) if settings.campaigns_dir.exists() else []
    with session_scope(settings.db_url) as session:
        return overview(session, campaigns, since)


FUNNEL_ORDER = ("visitor", "lead", "mql", "sql", "opportunity", "customer", "recycled", "disqualified")
STATUS_ORDER = ("subscribed", "unsubscribed", "bounced", "complained")


def funnel_of(settings: Settings) -> dict[str, Any]:
    """Leads now per stage (anonymous visitors at stage visitor) and per subscription status."""
    with session_scope(settings.db_url) as session:
        stages = stats_store.leads_per(session=session, column=Lead.stage)
        statuses = stats_store.leads_per(session=session, column=Lead.status)
        visitors = crud.count_visitors(session=session)
    stages["visitor"] = stages.get("visitor", 0) + visitors
    return {"leads": sum(statuses.values()), "visitors": visitors,
            "stages": {name: stages.get(name, 0) for name in (*FUNNEL_ORDER, *sorted(set(stages) - set(FUNNEL_ORDER)))},
            "statuses": {name: statuses.get(name, 0)
                         for name in (*STATUS_ORDER, *sorted(set(statuses) - set(STATUS_ORDER)))}}
