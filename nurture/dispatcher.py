"""Delivers stored engagement events to the leads' workflows.

The webhook (and any API call whose update did not get through) leaves events in the
`event` table with `dispatched_at` empty. This loop, run beside each worker, reads
them oldest first, groups them per lead (in order) and hands each group to the lead's
workflow with signal-with-start, then marks them dispatched. An event is marked only
after Temporal has durably taken the signal, so an event answered with a 2xx is never
lost: if Temporal is down the rows simply wait. Delivery is at-least-once; the
workflow drops event ids it has already applied, so a repeat changes nothing.

Several dispatchers (one per worker) may run at once. On PostgreSQL each claims its
batch with `SELECT ... FOR UPDATE SKIP LOCKED`, holding the row locks until it has
delivered and marked them, so two dispatchers never take the same rows. SQLite
ignores FOR UPDATE; there two dispatchers may deliver the same event twice, which is
harmless (duplicate ids are dropped by the workflow) and rare (SQLite means one host).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from activities.store import event_from_row
from nurture import crud
from nurture.config import Settings
from nurture.db import get_engine
from nurture.models import Event, Lead
from workflows.lead import EventsInput, LeadInput, LeadWorkflow

log = logging.getLogger("nurture.dispatcher")
CONCURRENCY = 50  # signal-with-start calls in flight at once
MAX_BACKOFF = 10.0  # seconds between attempts while Temporal is unreachable


class DispatchError(Exception):
    """Some events could not be handed to Temporal; they stay stored for the next pass."""


async def dispatch_once(settings: Settings, client: Client, *, batch: int = 500) -> int:
    """Deliver up to `batch` stored events; returns how many were delivered.

    Raises DispatchError (after marking what did get through) if any lead's workflow
    could not be reached.
    """
    session = Session(get_engine(settings.db_url), expire_on_commit=False)
    try:
        rows = await asyncio.to_thread(_claim, session, batch)
        if not rows:
            return 0
        groups: dict[str, list[Event]] = {}
        for row in rows:
            groups.setdefault(row.lead_key, []).append(row)  # type: ignore[arg-type]
        # A forgotten lead's workflow is gone for good: never start a new one for it.
        gone = await asyncio.to_thread(_forgotten, session, list(groups))
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
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        await asyncio.to_thread(_mark, session, delivered + skipped)
    finally:
        await asyncio.to_thread(session.close)  # rolls back (and unlocks) anything not marked
    if failures:
        first = failures[0]
        message = getattr(first, "message", None) or str(first) or type(first).__name__
        raise DispatchError(f"{len(failures)} of {len(groups)} lead(s) not reached: {message}")
    return len(delivered)


async def run_dispatcher(settings: Settings, client: Client, stop: asyncio.Event, *,
                         batch: int = 500, idle: float = 0.5) -> None:
    """Deliver stored events until `stop` is set; back off while Temporal is unreachable."""
    backoff = 0.0
    while not stop.is_set():
        try:
            delivered = await dispatch_once(settings, client, batch=batch)
        except Exception as error:  # noqa: BLE001 - Temporal or the database down: wait, retry
            if backoff == 0.0:
                log.warning("event dispatcher: %s; the events stay stored, retrying", str(error).splitlines()[0])
            backoff = min(MAX_BACKOFF, max(idle, backoff * 2))
            await _sleep(stop, backoff)
            continue
        if backoff:
            log.warning("event dispatcher: delivering again")
            backoff = 0.0
        if delivered < batch:
            await _sleep(stop, idle)  # a full batch means more may wait: go on at once


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def _claim(session: Session, batch: int) -> Sequence[Event]:
    # crud.undispatched_events plus the row locks (FOR UPDATE is ignored on SQLite).
    return session.exec(
        select(Event).where(col(Event.dispatched_at).is_(None), col(Event.lead_key).is_not(None))
        .order_by(col(Event.received_at)).limit(batch).with_for_update(skip_locked=True)
    ).all()


def _forgotten(session: Session, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        found.update(session.exec(select(Lead.key).where(col(Lead.key).in_(chunk), col(Lead.email).is_(None))).all())
    return found


def _mark(session: Session, ids: list[str]) -> None:
    for start in range(0, len(ids), 500):
        crud.mark_dispatched(session=session, ids=ids[start:start + 500])
    session.commit()

