"""Segments read from the store, and bulk enrollment of a segment in a campaign.

`nurture segment show/list`, `lead list --segment` and `enroll --segment` go through
here. Bulk enrollment is resumable and idempotent: the run of (segment, campaign) and
each lead's outcome in it are rows of the store, a lead is marked `pending` before
its workflow is asked, and the workflow itself refuses a lead already in a campaign.
A lead left `pending` by a crash is settled from the enrollment table (a journey in the
campaign more than when it was marked: the crashed run enrolled it) before anything is
asked again, so no lead is enrolled twice by this command, even after it has left the
campaign (`reenroll: after_exit` would let the workflow take it again).
It is paced (a few leads at a time, at most `rate` a second) so the journeys already
running keep their worker's attention.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nurture import crud
from nurture.campaign import Campaign, CampaignError, find_campaign
from nurture.config import Settings
from nurture.db import session_scope
from nurture.segments import Segment, load_segments
from nurture.segments_sql import enroll_skip, segment_condition
from nurture.models import utcnow

PAGE = 500  # leads read (and marked pending) at a time
CONCURRENCY = 8  # workflow updates in flight at once
RATE = 50.0  # enrollments started per second, at most


class AudienceError(Exception):
    """Bad input: an unknown segment or campaign, a broken file, an empty segment (CLI exit 1)."""


def segments_in_force(settings: Settings) -> dict[str, Segment]:
    try:
        return load_segments(settings.campaigns_dir).by_name
    except CampaignError as error:
        raise AudienceError(str(error).splitlines()[0]) from None


def find(settings: Settings, name: str) -> Segment:
    try:
        return load_segments(settings.campaigns_dir).find(name)
    except CampaignError as error:
        raise AudienceError(str(error).splitlines()[0]) from None


def condition(session: Any, segment: Segment) -> Any:
    """The segment as an SQL condition on the lead table, for the session's database."""
    return segment_condition(segment, dialect=session.get_bind().dialect.name, now=utcnow())


def count(settings: Settings, segment: Segment) -> int:
    with session_scope(settings.db_url) as session:
        return crud.count_leads(session=session, where=condition(session, segment))


# ---------------------------------------------------------------- bulk enrollment


@dataclass
class Plan:
    """What `enroll --segment --dry-run` says: how many would enter, how many not and why."""

    segment: str
    campaign: str
    matching: int
    entering: int
    skipped: dict[str, int]

    def line(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items(), key=lambda item: -item[1]))
        tail = f", {sum(self.skipped.values())} skipped ({why})" if self.skipped else ", none skipped"
        return (f"segment {self.segment}: {self.matching} lead{'s' if self.matching != 1 else ''}; "
                f"{self.entering} would enter {self.campaign}{tail}")


@dataclass
class Report:
    """What a bulk run did: leads it enrolled now, found enrolled by an interrupted run, refused (why)."""

    enrolled: int = 0
    settled: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    plan: Plan | None = None

    def line(self, segment: str, campaign: str) -> str:
        parts = [f"{self.enrolled} enrolled in {campaign} from segment {segment}"]
        if self.settled:
            parts.append(f"{self.settled} found enrolled by the interrupted run")
        if self.refused:
            parts.append("refused: " + ", ".join(f"{n} {why}" for why, n in sorted(self.refused.items())))
        if self.plan and self.plan.skipped:
            parts.append("skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(self.plan.skipped.items())))
        return "; ".join(parts)


def _resolve(nurture: Any, segment_name: str, campaign_name: str) -> tuple[Segment, Campaign]:
    """The segment and the campaign, or AudienceError: unknown, a broken file, a campaign
    paused or stopped (the service's own refusal of a single enrollment)."""
    segment = find(nurture.settings, segment_name)
    problem = nurture.campaign_problem(campaign_name)
    if problem:
        raise AudienceError(problem)
    try:
        campaign = find_campaign(nurture.settings.campaigns_dir, campaign_name)
    except CampaignError as error:
        raise AudienceError(str(error).splitlines()[0]) from None
    return segment, campaign


def plan(nurture: Any, segment_name: str, campaign_name: str) -> Plan:
    """Counts in SQL; AudienceError for an unknown segment or campaign, or a segment that matches no lead."""
    settings = nurture.settings
    segment, campaign = _resolve(nurture, segment_name, campaign_name)
    with session_scope(settings.db_url) as session:
        run = crud.find_bulk_run(session=session, segment=segment_name, campaign=campaign_name)
        skip = enroll_skip(campaign, dialect=session.get_bind().dialect.name, run_id=run.id if run else None)
        counts = crud.count_by(session=session, where=condition(session, segment), label=skip)
    matching = sum(counts.values())
    if not matching:
        raise AudienceError(f"segment '{segment_name}' matches no lead: nothing to enroll")
    entering = counts.pop(None, 0)
    return Plan(segment_name, campaign_name, matching, entering, {str(k): v for k, v in counts.items()})


class _Pace:
    """At most `rate` starts a second, spread evenly (no burst at each second's start)."""

    def __init__(self, rate: float) -> None:
        self.gap = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            if self.next > now:
                await asyncio.sleep(self.next - now)
            self.next = max(now, self.next) + self.gap


async def enroll_segment(nurture: Any, segment_name: str, campaign_name: str, *,
                         progress: Callable[[int, int], None] | None = None,
                         concurrency: int = CONCURRENCY, rate: float = RATE) -> Report:
    """Enroll every lead of the segment that may enter the campaign, once.
    `progress(done, total)` after each lead; TemporalUnavailable stops the run (a re-run resumes it)."""
    settings = nurture.settings
    first = plan(nurture, segment_name, campaign_name)  # refuses bad input before anything is written
    segment, campaign = _resolve(nurture, segment_name, campaign_name)
    report = Report(plan=first)
    with session_scope(settings.db_url) as session:
        run_id = crud.bulk_run(session=session, segment=segment_name, campaign=campaign_name).id
    _settle_pending(settings, run_id, campaign.name, report)
    pace, slots = _Pace(rate), asyncio.Semaphore(max(1, concurrency))
    done, after_id = 0, 0
    while True:
        page = _next_page(settings, segment, campaign, run_id, after_id)
        if not page:
            break
        after_id = page[-1][0]
        keys = [key for _, key in page]
        _mark_pending(settings, run_id, campaign.name, keys)

        async def one(key: str) -> None:
            nonlocal done
            async with slots:
                await pace.wait()
                status, reason = await _enroll_one(nurture, key, campaign.name)
                with session_scope(settings.db_url) as session:
                    crud.set_bulk_rows(session=session, run_id=run_id, rows={key: (status, reason, None)})
                if status == "enrolled":
                    report.enrolled += 1
                else:
                    report.refused[reason or status] = report.refused.get(reason or status, 0) + 1
                done += 1
                if progress is not None:
                    progress(done, first.entering)

        tasks = [asyncio.ensure_future(one(key)) for key in keys]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
    with session_scope(settings.db_url) as session:
        crud.finish_bulk_run(session=session, run_id=run_id)
    return report


def _next_page(settings: Settings, segment: Segment, campaign: Campaign, run_id: int,
               after_id: int) -> list[tuple[int, str]]:
    """The next leads (id, key) of the segment that would enter: the others are never asked."""
    with session_scope(settings.db_url) as session:
        skip = enroll_skip(campaign, dialect=session.get_bind().dialect.name, run_id=run_id)
        where = condition(session, segment) & skip.is_(None)
        return [(lead.id or 0, lead.key) for lead in crud.list_leads(session=session, where=where,
                                                                      after_id=after_id, limit=PAGE)]


def _settle_pending(settings: Settings, run_id: int, campaign: str, report: Report) -> None:
    """Leads an interrupted run left pending: those whose history shows an enrollment in
    the campaign since they were marked were enrolled by it (settled, never asked again);
    the others stay pending and are asked if they still may enter."""
    with session_scope(settings.db_url) as session:
        pending = crud.pending_bulk_rows(session=session, run_id=run_id)
        for start in range(0, len(pending), PAGE):
            chunk = pending[start:start + PAGE]
            counts = crud.enrollment_counts(session=session, keys=[row.lead_key for row in chunk], campaign=campaign)
            enrolled = {row.lead_key: ("enrolled", "enrolled by an interrupted run", None)
                        for row in chunk if counts.get(row.lead_key, 0) > row.enrollments_before}
            crud.set_bulk_rows(session=session, run_id=run_id, rows=enrolled)
            report.settled += len(enrolled)


def _mark_pending(settings: Settings, run_id: int, campaign: str, keys: list[str]) -> None:
    """Mark the page's leads pending, with their enrollments in the campaign so far (a
    lead still pending keeps the count it was marked with), before any is asked."""
    with session_scope(settings.db_url) as session:
        stored = crud.bulk_rows(session=session, run_id=run_id, keys=keys)
        counts = crud.enrollment_counts(session=session, keys=keys, campaign=campaign)
        crud.set_bulk_rows(session=session, run_id=run_id, rows={
            key: ("pending", None, None if key in stored and stored[key].status == "pending" else counts.get(key, 0))
            for key in keys})


async def _enroll_one(nurture: Any, key: str, campaign: str) -> tuple[str, str | None]:
    # Imported here: the service loads Temporal, which read commands of this module do not need.
    from nurture.service import UserError

    try:
        await nurture.enroll_key(key, campaign)
    except UserError as error:
        return "refused", str(error)
    return "enrolled", None
