"""Campaign control: a marketer pauses, resumes or stops a campaign (contract section 8).

The store holds each campaign's state with a sequence number (crud.set_campaign_control,
the one writer); every lead the store shows in the campaign then hears it by a signal.
A lead that misses the signal (it was enrolling, or Temporal was away) still hears it
from the send activity, which re-reads the state before any email leaves: so a paused
or stopped campaign never sends, whatever reached whom first. Resume and stop need the
signal to reach the lead; running the same command again sends it again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nurture import crud
from nurture.campaign import CampaignError, find_campaign
from nurture.service import UserError

if TYPE_CHECKING:
    from nurture.service import Nurture

ACTIONS = {"pause": "paused", "resume": "active", "stop": "stopped"}
FAN_OUT = 32  # signals in flight at once: live journeys keep their share of the server


@dataclass
class ControlReport:
    campaign: str
    state: str
    changed: bool  # False: it already was in that state, the leads were told again
    told: int  # leads signalled
    missing: int  # leads the store shows in it with no running journey


async def change(nurture: Nurture, name: str, action: str, *, by: str | None = None) -> ControlReport:
    """Pause, resume or stop `name`, then tell each of its leads."""
    target = ACTIONS[action]
    try:
        find_campaign(nurture.settings.campaigns_dir, name)
    except CampaignError as error:
        raise UserError(str(error).splitlines()[0]) from error
    with nurture.session() as session:
        current = crud.campaign_control(session=session, campaign=name)
        state = current.state if current else "active"
        if action == "pause" and state == "stopped":
            raise UserError(f"campaign '{name}' is stopped: resume it first (nurture campaign resume {name})")
        changed = state != target
        row = crud.set_campaign_control(session=session, campaign=name, state=target, by=by) if changed else current
        seq = row.seq if row is not None else 0
        keys = list(crud.keys_in_campaign(session=session, campaign=name))
    told, missing = await _tell(nurture, keys, name, target, seq)
    return ControlReport(name, target, changed, told, missing)


async def _tell(nurture: Nurture, keys: list[str], name: str, state: str, seq: int) -> tuple[int, int]:
    from temporalio.service import RPCError, RPCStatusCode

    from nurture.temporal import TemporalUnavailable
    from workflows.lead import ControlInput, LeadWorkflow

    client = await nurture.client()
    slots = asyncio.Semaphore(FAN_OUT)
    missing = 0

    async def one(key: str) -> None:
        nonlocal missing
        async with slots:
            handle = client.get_workflow_handle(nurture.settings.workflow_id(key))
            try:
                await handle.signal(LeadWorkflow.campaign_control, ControlInput(name, state, seq))
            except RPCError as error:
                if error.status != RPCStatusCode.NOT_FOUND:
                    raise TemporalUnavailable(
                        f"campaign '{name}' is {state} in the store, but not every lead was told "
                        f"({error.message}): run the same command again once Temporal answers") from error
                missing += 1

    await asyncio.gather(*(one(key) for key in keys))
    return len(keys) - missing, missing
