"""Record the lead-workflow histories that tests/test_replay.py replays.

    python scripts/record_histories.py            # all journeys into tests/histories/
    python scripts/record_histories.py click_path # only these
    python scripts/record_histories.py --out /tmp/h   # elsewhere, e.g. to compare

Each journey runs one lead through the sample campaigns (campaigns/, templates/email/)
with the current workflow code, on a throw-away Temporal dev server with simulated time,
an in-process worker and a temporary SQLite store in outbox mode (nothing is sent), then
writes the lead workflow's full history to tests/histories/NAME.json. A journey stays
far below the 10,000 events that trigger continue-as-new, so one file is one whole run.

Re-record only to guard a new journey shape, never to make a replay failure go away:
see "Changing workflow code" in README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's code, whatever is installed

from nurture import crud, journey
from nurture.config import Settings
from nurture.db import upgrade
from nurture.dispatcher import dispatch_once
from nurture.preview import advance_until
from nurture.service import LeadIn, Nurture
from nurture.timeskip import SimulatedTime
from nurture.webhooks import store_batch
from worker import build_worker

OUT = ROOT / "tests" / "histories"
HORIZON = timedelta(days=120)


class Journey:
    """One lead's run: its service, clock and the helpers the journeys below share."""

    def __init__(self, nurture: Nurture, clock: SimulatedTime, email: str) -> None:
        self.nurture, self.clock, self.email = nurture, clock, email
        self.handle = clock.client.get_workflow_handle(nurture.settings.workflow_id(journey.lead_key(email)))

    async def add(self, **fields: Any) -> None:
        await self.nurture.add_lead(LeadIn(email=self.email, **fields))

    async def now(self) -> datetime:
        return await self.clock.now(self.handle)

    async def until(self, done: Callable[[dict[str, Any]], bool]) -> None:
        if not await advance_until(self.nurture, self.clock, self.email, done, await self.now() + HORIZON):
            raise RuntimeError(f"{self.email}: still waiting after {HORIZON.days} simulated days")

    async def event(self, type_: str, **fields: Any) -> None:
        await self.nurture.record_event(self.email, type_, at=await self.now(), **fields)

    async def forward(self, duration: timedelta) -> None:
        await self.clock.fast_forward(self.handle, duration)

    async def sendgrid(self, kind: str, **fields: Any) -> None:
        """A SendGrid webhook event about the lead's first email, stored and dispatched
        as the webhook and the dispatcher do it."""
        with self.nurture.session() as session:
            first = crud.emails_of(session=session, key=journey.lead_key(self.email))[0]
        raw = {"event": kind, "email": self.email, "timestamp": int((await self.now()).timestamp()),
               "sg_event_id": f"record-{kind}", "lead": first.lead_key, "send_id": first.send_id,
               "campaign": first.campaign, "step": first.step, **fields}
        store_batch(self.nurture.settings, [raw])
        await dispatch_once(self.nurture.settings, self.clock.client)

    def handoff_id(self) -> int:
        with self.nurture.session() as session:
            return crud.list_handoffs(session=session)[-1].id


def sent(step: str) -> Callable[[dict[str, Any]], bool]:
    return lambda lead: any(h["kind"] == "email" and (h.get("detail") or {}).get("step") == step
                            and h["detail"].get("status") == "sent" for h in lead["history"])


def left(lead: dict[str, Any]) -> bool:
    return lead["campaign"] is None


async def click_path(j: Journey) -> None:
    """welcome, wait 2d, case study, a click: demo invite, goto end, last email (held by the cap)."""
    await j.add(first_name="Ann", job_title="VP Marketing", company_size=200, source="web_form", timezone="Europe/Paris")
    await j.until(lambda lead: lead["step"] == "wait-click")
    await j.event("email_open", campaign="b2b-trial", step="case-study")
    await j.event("email_click", campaign="b2b-trial", step="case-study")
    await j.until(left)


async def timeout_path(j: Journey) -> None:
    """No click within 3d: reminder, branch-hot does not hold, wait 5d, last email."""
    await j.add(first_name="Bob", source="content_download", timezone="America/New_York")
    await j.until(left)


async def mql_sql_accept(j: Journey) -> None:
    """Scoring to MQL (capped pricing views), BANT to SQL: handoff, owner mail; accepted."""
    await j.add(first_name="Cara", job_title="Head of Sales", company_size=80, source="web_form")
    await j.until(sent("welcome"))
    for _ in range(2):
        await j.event("page_view", url="https://acme.example/pricing")
    await j.event("quote_request", form="quote")
    await j.event("webinar_attended")
    await j.nurture.set_bant(j.email, {"budget": True, "authority": True, "need": True, "timing": True})
    await j.nurture.handoff_action(j.handoff_id(), "accept")
    await j.forward(timedelta(days=31))  # past a decay period


async def reject_recycled(j: Journey) -> None:
    """SQL, rejected by sales: recycled with score 0 into recycled-nurture, run to its end."""
    await j.add(job_title="CTO", company_size=500, source="web_form")
    await j.event("quote_request")
    await j.event("webinar_attended")
    await j.nurture.set_bant(j.email, {"budget": True, "authority": True, "need": True, "timing": True})
    await j.nurture.handoff_action(j.handoff_id(), "reject", "no budget this year")
    await j.until(left)


async def handoff_sla(j: Journey) -> None:
    """An SQL nobody answers: the owner is reminded after the SLA, then the lead is reassigned."""
    await j.add(job_title="Director", company_size=300, source="web_form")
    await j.event("meeting_booked")
    await j.event("contact_request")
    await j.nurture.set_bant(j.email, {"budget": True, "authority": True, "need": True, "timing": True})
    await j.forward(timedelta(days=5))


async def unsubscribe(j: Journey) -> None:
    """Unsubscribed after the welcome: the journey ends at once, nothing more is sent."""
    await j.add(source="web_form")
    await j.until(sent("welcome"))
    await j.event("email_unsubscribe", campaign="b2b-trial", step="welcome")
    await j.forward(timedelta(days=30))


async def drop_resubscribe(j: Journey) -> None:
    """A drop for the account's quota (noted, the lead stays subscribed), then a SendGrid
    group unsubscribe and resubscribe: subscribed again."""
    await j.add(source="web_form")
    await j.until(sent("welcome"))
    await j.sendgrid("dropped", reason="Recipient List over Package Quota")
    await j.sendgrid("group_unsubscribe", asm_group_id=1)
    await j.sendgrid("group_resubscribe", asm_group_id=1)
    await j.forward(timedelta(days=30))


async def broken_files(j: Journey) -> None:
    """A campaign file broken before it was ever read: the automatic enrollment waits, and the
    lead enters once the file is fixed; then funnel.yaml broken with no valid version left:
    the lead's workflow goes on with the funnel it holds."""
    settings = j.nurture.settings
    trial, funnel = settings.campaigns_dir / "b2b-trial.yaml", settings.funnel_file
    shutil.rmtree(settings.home / "last-valid", ignore_errors=True)
    trial_text, funnel_text = trial.read_text(encoding="utf-8"), funnel.read_text(encoding="utf-8")
    trial.write_text(trial_text + "\nunknown_key: 1\n", encoding="utf-8")
    await j.add(first_name="Fay", job_title="VP Marketing", company_size=200, source="web_form")
    await j.forward(timedelta(hours=2))
    trial.write_text(trial_text, encoding="utf-8")
    await j.until(sent("welcome"))
    funnel.write_text(funnel_text + "\nunknown_key: 1\n", encoding="utf-8")
    shutil.rmtree(settings.home / "last-valid")
    await j.forward(timedelta(minutes=2))
    await j.event("email_click", campaign="b2b-trial", step="welcome")
    funnel.write_text(funnel_text, encoding="utf-8")
    await j.forward(timedelta(days=3))


JOURNEYS: dict[str, tuple[str, Callable[[Journey], Awaitable[None]]]] = {
    "click_path": ("ann@globex.example", click_path),
    "timeout_path": ("bob@initech.example", timeout_path),
    "mql_sql_accept": ("cara@acme-customer.example", mql_sql_accept),
    "reject_recycled": ("dan@hooli.example", reject_recycled),
    "handoff_sla": ("hal@cyberdyne.example", handoff_sla),
    "unsubscribe": ("eve@umbrella.example", unsubscribe),
    "drop_resubscribe": ("fay@stark.example", drop_resubscribe),
    "broken_files": ("fay@wayne.example", broken_files),  # last: it breaks and repairs the files
}


async def record(names: list[str], out: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="nurture-record-"))
    campaigns = home / "campaigns"  # a copy: the broken_files journey edits its files
    shutil.copytree(ROOT / "campaigns", campaigns)
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'nurture.db'}", campaigns_dir=campaigns,
                        templates_dir=ROOT / "templates" / "email", task_queue="record", secret="record-secret",
                        sendgrid_api_key=None)
    upgrade(settings.db_url)
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    clock = await SimulatedTime.start(home / "temporal")
    out.mkdir(parents=True, exist_ok=True)
    try:
        async with build_worker(clock.client, settings):
            nurture = Nurture(settings, clock.client)
            for name in names:
                email, run = JOURNEYS[name]
                lead = Journey(nurture, clock, email)
                await run(lead)
                await asyncio.sleep(1)  # let the last workflow task finish before reading the history
                history = await lead.handle.fetch_history()
                (out / f"{name}.json").write_text(history.to_json(), encoding="utf-8")
                print(f"{out / name}.json: {len(history.events)} events")
    finally:
        await clock.stop()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Record lead-workflow histories for tests/test_replay.py.")
    parser.add_argument("journeys", nargs="*", metavar="JOURNEY",
                        help=f"some of: {', '.join(JOURNEYS)} (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for NAME.json (default: tests/histories)")
    args = parser.parse_args()
    unknown = [name for name in args.journeys if name not in JOURNEYS]
    if unknown:
        parser.error(f"unknown journey(s): {', '.join(unknown)} (known: {', '.join(JOURNEYS)})")
    asyncio.run(record(args.journeys or list(JOURNEYS), args.out))
    # The Temporal client can abort the interpreter at exit (sdk-python issue 300).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
