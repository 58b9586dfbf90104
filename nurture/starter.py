"""Starts the stored leads whose workflow never took them.

Storing a lead and handing it to its workflow are two steps (the store, then a Temporal
update): a process killed between them, or a Temporal server that loses an update in
flight, would leave a lead stored but never enrolled or emailed. So the lead row is
written with a start mark (`lead_start`, same transaction), and the mark is deleted
only once the workflow's update has answered. This loop, run beside each worker like
the event dispatcher, leases the marks whose writer's lease has run out (the writer
crashed or gave up) and hands each lead to its workflow again with the same update.

Exactly once: the update is idempotent for a lead its workflow already took (the
workflow refuses a second `auto_on: created` enrollment while the lead is in or has
finished a `reenroll: never` campaign, and each step's email is sent at most once per
enrollment), and a lease keeps two processes from handing over the same mark at once.
Not covered: a crash after the workflow answered but before the mark was cleared, for
a lead that finished, within the lease, a campaign it may re-enter (`reenroll:
after_exit` or `always`): that lead would enter it again. The store cannot tell this
case apart (its history rows are written inside the workflow task, so they can be
ahead of what the server kept when it died); only the workflow could.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from temporalio.client import Client

from nurture import crud
from nurture.config import Settings
from nurture.dispatcher import poll_until_stopped
from nurture.journey import LeadProfile
from nurture.models import LeadStart
from nurture.service import Nurture, StoredLead, UserError

log = logging.getLogger("nurture.starter")
CONCURRENCY = 16  # updates in flight at once


class StartError(Exception):
    """Some marked leads could not be handed to Temporal; their marks stay for the next pass."""


async def start_once(nurture: Nurture, *, batch: int = 200) -> int:
    """Hand up to `batch` marked leads to their workflows; returns how many were taken.

    Raises StartError (after releasing the marks it could not hand over) if Temporal
    or a worker did not answer for some of them.
    """
    lease = nurture.start_lease
    marks = await asyncio.to_thread(_claim, nurture, batch, lease)
    if not marks:
        return 0
    leads = await asyncio.to_thread(_stored, nurture, marks)
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def start(stored: StoredLead) -> None:
        async with semaphore:
            try:
                result = await nurture.start_lead(stored)
            except UserError as error:  # refused for good (forgotten meanwhile): the mark is gone
                log.warning("lead start: %s: %s", stored.profile.email, error)
                return
            if result.message:
                log.warning("lead start: %s not enrolled in %s: %s", stored.profile.email, stored.campaign,
                            result.message)

    outcomes = await asyncio.gather(*(start(stored) for stored in leads), return_exceptions=True)
    failed = [stored.key for stored, outcome in zip(leads, outcomes) if isinstance(outcome, BaseException)]
    if failed:
        await asyncio.to_thread(_release, nurture, failed)
        first = next(outcome for outcome in outcomes if isinstance(outcome, BaseException))
        raise StartError(f"{len(failed)} of {len(leads)} lead(s) not started: {str(first) or type(first).__name__}")
    return len(leads)


async def run_starter(settings: Settings, client: Client, stop: asyncio.Event, *,
                      batch: int = 200, idle: float = 1.0) -> None:
    """Start marked leads until `stop` is set; back off while Temporal is unreachable."""
    nurture = Nurture(settings, client)
    await poll_until_stopped(stop, lambda: start_once(nurture, batch=batch), batch=batch, idle=idle,
                             name="lead starter", kept="the leads stay marked", again="starting leads again")


def _claim(nurture: Nurture, batch: int, lease: timedelta) -> Sequence[LeadStart]:
    with nurture.session() as session:
        return crud.claim_starts(session=session, limit=batch, lease=lease)


def _stored(nurture: Nurture, marks: Sequence[LeadStart]) -> list[StoredLead]:
    """The marked leads as stored; a mark whose lead is gone or forgotten is dropped."""
    leads: list[StoredLead] = []
    with nurture.session() as session:
        found = crud.leads_by_key(session=session, keys=[mark.lead_key for mark in marks])
        for mark in marks:
            lead = found.get(mark.lead_key)
            if lead is None or lead.email is None:
                crud.clear_start(session=session, key=mark.lead_key, token=mark.token)
                continue
            leads.append(StoredLead(lead.key, LeadProfile(**crud.profile_of(lead)), mark.created,
                                    mark.campaign, mark.token))
    return leads


def _release(nurture: Nurture, keys: list[str]) -> None:
    with nurture.session() as session:
        crud.release_starts(session=session, keys=keys)
