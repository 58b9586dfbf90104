"""`nurture demo`: one lead's whole journey, end to end, in under a minute.

Everything is real: the Temporal dev server, the worker, the lead's workflow, the
SQLite store, the templates and the sample campaign. Only time is simulated: the
lead's clock is fast-forwarded, so weeks pass in seconds. Emails go to a local
outbox in a temporary folder; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from temporalio.service import RPCError

from nurture import crud, journey
from nurture.config import Settings
from nurture.db import upgrade
from nurture.service import LeadIn, Nurture
from nurture.timeskip import SETTLE_SECONDS, SimulatedTime

LEAD = LeadIn(email="jane.doe@globex.example", first_name="Jane", last_name="Doe", company="Globex",
              job_title="VP Operations", company_size=250, country="FR", timezone="Europe/Paris",
              locale="en-GB", source="web_form")
KIND_STYLE = {"score": "green", "fit": "cyan", "stage": "bold magenta", "email": "blue", "handoff": "bold yellow",
              "note": "dim", "event": "dim"}


def sample_dirs() -> tuple[Path, Path]:
    """The sample campaigns and templates: from the current folder, else the source tree."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / "campaigns" / "b2b-trial.yaml").exists() and (base / "templates" / "email").is_dir():
            return base / "campaigns", base / "templates" / "email"
    raise FileNotFoundError("the sample campaigns/ and templates/email/ folders are missing")


class Demo:
    def __init__(self, console: Console, nurture: Nurture, clock: SimulatedTime, pause: float) -> None:
        self.out, self.nurture, self.clock, self.pause = console, nurture, clock, pause
        self.shown = 0
        self.zone = ZoneInfo(LEAD.timezone or "UTC")

    @property
    def handle(self) -> Any:
        return self.clock.client.get_workflow_handle(self.nurture.settings.workflow_id(journey.lead_key(LEAD.email)))

    async def now(self) -> datetime:
        """The lead's simulated time (the wall clock until its workflow exists)."""
        try:
            return await self.clock.now(self.handle)
        except RPCError:
            return datetime.now(timezone.utc)

    async def scene(self, title: str) -> None:
        await asyncio.sleep(self.pause)
        moment = (await self.now()).astimezone(self.zone)
        self.out.print()
        self.out.rule(f"[bold]{title}[/bold]  [dim]{moment:%a %d %b %H:%M} (Jane's time, simulated)[/dim]")

    def news(self) -> None:
        """Print what the lead's history gained since the last look."""
        lead = self.nurture.show(LEAD.email)
        for entry in lead["history"][self.shown:]:
            at = datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).astimezone(self.zone)
            delta = f"{entry['delta']:+d}" if entry["delta"] not in (None, 0) else ""
            score = f"score {entry['score']}" if entry["kind"] == "score" else ""
            style = KIND_STYLE.get(entry["kind"], "")
            self.out.print(f"  [dim]{at:%a %d %b %H:%M}[/dim]  [{style}]{entry['kind']:<7}[/{style}] "
                           f"{_escape(entry['reason'])} [green]{delta}[/green] [dim]{score}[/dim]")
        self.shown = len(lead["history"])

    async def advance(self, title: str, *, until_email: bool = True) -> None:
        """Move Jane's clock to her journey's next action (a wait ending, a send window
        opening), as many times as it takes for the next email to go out."""
        await self.scene(title)
        for _ in range(6):
            lead = self.nurture.show(LEAD.email)
            due = lead["next_action_at"]
            step = timedelta(hours=1)
            if due:
                step = max(datetime.fromisoformat(due.replace("Z", "+00:00")) - await self.now(), timedelta(0))
            await self.clock.fast_forward(self.handle, step + timedelta(minutes=1), settle=SETTLE_SECONDS)
            sent_before = self.sent()
            self.news()
            if not until_email or self.sent() > sent_before or self.sent_count_changed(lead):
                return

    def sent(self) -> int:
        with self.nurture.session() as session:
            return sum(1 for row in crud.list_outbox(session=session) if row.status == "sent")

    def sent_count_changed(self, before: dict[str, Any]) -> bool:
        return self.nurture.show(LEAD.email)["step"] != before["step"] and self.sent() > 0

    async def settle(self, seconds: float = 3.0) -> None:
        """Let the journey act on what just happened (a send runs in real time), then show it."""
        before = self.sent()
        for _ in range(int(seconds / 0.1)):
            if self.sent() > before:
                break
            await asyncio.sleep(0.1)
        self.news()

    async def later(self, hours: float, title: str) -> None:
        await self.clock.fast_forward(self.handle, timedelta(hours=hours), settle=SETTLE_SECONDS)
        await self.scene(title)

    async def event(self, type_: str, **fields: Any) -> None:
        await self.nurture.record_event(LEAD.email, type_, at=await self.now(), **fields)

    async def run(self) -> None:
        await self.scene("A trial sign-up arrives from the website form")
        self.out.print(f"  [bold]{LEAD.first_name} {LEAD.last_name}[/bold], {LEAD.job_title} at {LEAD.company} "
                       f"({LEAD.company_size} people), Paris")
        await self.nurture.add_lead(LEAD)
        self.news()
        await self.advance("The send window opens (weekdays 09:00-17:30 in her time zone): welcome email")
        await self.advance("Two days later: a customer story (A/B subject, one variant per lead)")
        await self.later(3, "Jane opens it and clicks through to the story")
        await self.event("email_open", campaign="b2b-trial", step="case-study")
        await self.event("email_click", campaign="b2b-trial", step="case-study")
        await self.settle()
        await self.later(26, "Next day, she reads the pricing page and asks for a quote")
        await self.event("page_view", url="https://acme.example/pricing")
        await self.event("quote_request", form="quote")
        self.news()
        await self.later(4, "Sales qualifies her on a call (BANT)")
        await self.nurture.set_bant(LEAD.email, {"budget": True, "authority": True, "need": True, "timing": True})
        self.news()
        await self.later(2, "The owner accepts the handoff")
        handoff = self.handoffs()[0]
        await self.nurture.handoff_action(handoff.id, "accept")
        self.news()
        self.summary()

    def handoffs(self) -> list[Any]:
        with self.nurture.session() as session:
            return list(crud.list_handoffs(session=session))

    def summary(self) -> None:
        lead = self.nurture.show(LEAD.email)
        self.out.print()
        table = Table(title="Emails (local outbox: nothing left this machine)", title_justify="left")
        for column in ("to", "subject", "step", "status"):
            table.add_column(column)
        with self.nurture.session() as session:
            for row in crud.list_outbox(session=session):
                table.add_row(row.to or "", _escape(row.subject), row.step or "(to sales)", row.status)
        self.out.print(table)
        self.out.print(Panel.fit(
            f"[bold]{lead['email']}[/bold]\n"
            f"stage [bold magenta]{lead['stage']}[/bold magenta] · score [bold]{lead['score']}[/bold] · "
            f"grade {lead['grade']} · {lead['temperature']} · owner [bold]{lead['owner']}[/bold]\n"
            f"every point above is in `nurture lead show`, with the rule that gave it",
            title="Where Jane is now", border_style="green"))


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


async def run_demo(console: Console, *, pause: float = 0.6) -> None:
    campaigns, templates = sample_dirs()
    home = Path(tempfile.mkdtemp(prefix="nurture-demo-"))
    console.print(Panel.fit(
        "[bold]nurture demo[/bold]: one lead's journey through the sample B2B campaign\n"
        "A real Temporal server, worker and database run here. [bold yellow]Time is simulated[/bold yellow]: "
        "weeks pass in seconds.\nEmails go to a local outbox; nothing leaves this machine.",
        border_style="cyan"))
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'nurture.db'}", campaigns_dir=campaigns,
                        templates_dir=templates, task_queue="nurture-demo", secret="demo-secret",
                        sendgrid_api_key=None)
    upgrade(settings.db_url)
    # Activity retries log warnings; the story on screen already says what happened.
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    with console.status("starting a Temporal dev server and a worker..."):
        clock = await SimulatedTime.start(home / "temporal")
    try:
        from worker import build_worker

        async with build_worker(clock.client, settings):
            await Demo(console, Nurture(settings, clock.client), clock, pause).run()
    finally:
        await clock.stop()
        shutil.rmtree(home, ignore_errors=True)
    console.print("\nTry it for real: [bold]nurture up[/bold], then `nurture lead add --email you@company.example "
                  "--source web_form` in another terminal.")
