"""Delivers stored engagement events to the leads' workflows.

The webhook (and any API call whose update did not get through) leaves events in the
`event` table with `dispatched_at` empty. This loop, run beside each worker, reads
them oldest first, groups them per lead (in order) and hands each group to the lead's
workflow with signal-with-start, then marks them dispatched. An event is marked only
after Temporal has durably taken the signal, so an event answered with a 2xx is never
lost: if Temporal is down the rows simply wait. Delivery is at-least-once; the
workflow drops event ids it has already applied, so a repeat changes nothing.

Several dispatchers (one per worker) may run at once. Each takes its batch with one
UPDATE that leases the rows (`claimed_until`, a minute ahead), on SQLite as on
PostgreSQL (where the read also skips rows another claim has locked), so two
dispatchers never deliver the same events. A dispatcher that dies mid-batch leaves its
rows to the next one when the lease runs out; rows it could not deliver are released
at once for the next pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from sqlalchemy import and_, update
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from activities.store import event_from_row
from nurture import crud
from nurture.config import Settings
from nurture.db import session_scope
from nurture.models import Event, Lead
from workflows.lead import EventsInput, LeadInput, LeadWorkflow

log = logging.getLogger("nurture.dispatcher")
CONCURRENCY = 50  # signal-with-start calls in flight at once
MAX_BACKOFF = 10.0  # seconds between attempts while Temporal is unreachable
LEASE = timedelta(minutes=1)  # a claimed batch is delivered well within this


class DispatchError(Exception):
    """Some events could not be handed to Temporal; they stay stored for the next pass."""


async def dispatch_once(settings: Settings, client: Client, *, batch: int = 500, lease: timedelta = LEASE) -> int:
    """Deliver up to `batch` stored events; returns how many were delivered.

    Raises DispatchError (after marking what did get through) if any lead's workflow
    could not be reached.
    """
    rows = await asyncio.to_thread(_claim, settings.db_url, batch, lease)
    if not rows:
        return 0
    groups: dict[str, list[Event]] = {}
    for row in rows:
        groups.setdefault(row.lead_key, []).append(row)  # type: ignore[arg-type]
    # A forgotten lead's workflow is gone for good: never start a new one for it.
    gone = await asyncio.to_thread(_forgotten, settings.db_url, list(groups))
    skipped = [row.id for key in gone for row in groups.pop(key, [])]
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def deliver(key: str, group: list[Event]) -> None:
        async with semaphore:
            await client.start_workflow(
                LeadWorkflow.run,
                LeadInput(key=key, sales_sender=settings.sales_sender, max_history=settings.max_history),
                id=settings.workflow_id(key),
                task_queue=settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                start_signal="events",
                start_signal_args=[EventsInput([event_from_row(row) for row in group])],
            )

    outcomes = await asyncio.gather(*(deliver(k, g) for k, g in groups.items()), return_exceptions=True)
    delivered = [row.id for group, outcome in zip(groups.values(), outcomes)
                 if not isinstance(outcome, BaseException) for row in group]
    failed = [row.id for group, outcome in zip(groups.values(), outcomes)
              if isinstance(outcome, BaseException) for row in group]
    await asyncio.to_thread(_mark, settings.db_url, delivered + skipped, failed)
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        first = failures[0]
        message = getattr(first, "message", None) or str(first) or type(first).__name__
        raise DispatchError(f"{len(failures)} of {len(groups)} lead(s) not reached: {message}")
    return len(delivered)


async def run_dispatcher(settings: Settings, client: Client, stop: asyncio.Event, *,
                         batch: int = 500, idle: float = 0.5) -> None:
    """Deliver stored events until `stop` is set; back off while Temporal is unreachable."""
    await poll_until_stopped(stop, lambda: dispatch_once(settings, client, batch=batch), batch=batch, idle=idle,
                             name="event dispatcher", kept="the events stay stored", again="delivering again")


async def poll_until_stopped(stop: asyncio.Event, once: Callable[[], Awaitable[int]], *, batch: int, idle: float,
                             name: str, kept: str, again: str) -> None:
    """Call `once` (it handles up to `batch` rows, returns how many) until `stop` is set:
    at once again after a full batch, after `idle` seconds otherwise, with a growing
    pause (logged once) while it fails because Temporal or the database is down."""
    backoff = 0.0
    while not stop.is_set():
        try:
            done = await once()
        except Exception as error:  # noqa: BLE001 - Temporal or the database down: wait, retry
            if backoff == 0.0:
                log.warning("%s: %s; %s, retrying", name, str(error).splitlines()[0], kept)
            backoff = min(MAX_BACKOFF, max(idle, backoff * 2))
            await sleep_or_stop(stop, backoff)
            continue
        if backoff:
            log.warning("%s: %s", name, again)
            backoff = 0.0
        if done < batch:
            await sleep_or_stop(stop, idle)  # a full batch means more may wait: go on at once


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def _claim(url: str, batch: int, lease: timedelta) -> Sequence[Event]:
    """Lease up to `batch` undelivered events, oldest first, and read them."""
    event = Event.__table__  # type: ignore[attr-defined]
    with session_scope(url) as session:
        ids = crud.lease_rows(session=session, key=event.c.id, claimed_until=event.c.claimed_until,
                              oldest_first=event.c.received_at, limit=batch, lease=lease,
                              where=and_(event.c.dispatched_at.is_(None), event.c.lead_key.is_not(None)))
        if not ids:
            return []
        # Each lead's events in the order they happened.
        return session.exec(select(Event).where(col(Event.id).in_(ids))
                            .order_by(col(Event.received_at), col(Event.at), col(Event.id))).all()


def _forgotten(url: str, keys: list[str]) -> set[str]:
    found: set[str] = set()
    with session_scope(url) as session:
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            found.update(session.exec(select(Lead.key).where(col(Lead.key).in_(chunk), col(Lead.email).is_(None))).all())
    return found


def _mark(url: str, done: list[str], failed: list[str]) -> None:
    """Delivered rows are done; the others go back for the next pass now, not at lease end."""
    event = Event.__table__  # type: ignore[attr-defined]
    with session_scope(url) as session:
        for start in range(0, len(done), 500):
            crud.mark_dispatched(session=session, ids=done[start:start + 500])
        for start in range(0, len(failed), 500):
            session.execute(update(event).where(event.c.id.in_(failed[start:start + 500])).values(claimed_until=None))
