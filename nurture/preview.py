"""`nurture campaign test FILE --lead LEAD.json [--events EVENTS.yaml]`: a campaign's
exact path for one lead, before launch.

It runs the same workflow code as production, on an embedded Temporal dev server with
simulated time (like `nurture demo`), an in-process worker and a throw-away home
(SQLite store, local outbox, SendGrid key forced off): nothing leaves the machine. The
campaigns folder of that home holds the file under test alone, plus the real
funnel.yaml so scoring and qualification match production. Scripted engagement is
recorded at its offset from enrollment, except an event about one of the campaign's
emails (`step:`) that had not gone out by then: a real lead cannot open or click an
email before it is sent (a send window may hold it), so the timeline says it was
ignored and why. Then the lead's clock follows the journey's next action until the
campaign ends. The timeline is the lead's own history.

Nothing here can reach sales either: a handoff needs BANT facts, which a preview never
sets, so no owner is mailed and no CRM webhook is posted.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from nurture import journey
from nurture.addresses import canonical_email
from nurture.campaign import (
    FUNNEL_FILES,
    STAGES,
    Campaign,
    CampaignError,
    Problem,
    SendWindow,
    _closest,
    _read_yaml,
    _shown,
    _yaml_loader,
    load_campaign,
    load_funnel,
    parse_duration,
    validate_paths,
)
from nurture.config import Settings
from nurture.service import LeadIn, Nurture, UserError

HORIZON = timedelta(days=400)  # simulated time after enrollment before giving up on an end
STEP_MARGIN = timedelta(minutes=1)  # past a due time, so the timer has surely fired
LEAD_FIELDS = tuple(f.name for f in fields(LeadIn) if f.name not in ("attributes", "consent_at"))
EVENT_KEYS = ("at", "type", "step", "url", "asset", "form", "event", "campaign")
_ZERO = re.compile(r"^(0+[smhdw]?)+$")


# ---------------------------------------------------------------- inputs


def check_campaign(path: Path, templates_dir: Path, funnel_file: Path | None = None) -> tuple[Campaign, list[Problem]]:
    """The campaign in `path` and its warnings; CampaignError with every error (templates
    included: a template that does not render would only show up as a failed send).
    `funnel_file`: the funnel the run uses (its `sender.address`)."""
    if not path.is_file():
        raise CampaignError([Problem(str(path), 1, "(file)", "no such file")])
    problems = validate_paths([path], templates_dir, funnel_file)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise CampaignError(errors)
    return load_campaign(path), [p for p in problems if p.severity != "error"]


def read_lead(path: Path) -> LeadIn:
    """LEAD.json: an object of lead fields, checked as `nurture import` checks a row."""
    from nurture.importer import parse_row

    file = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"{file}: cannot read it: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise UserError(f"{file}: not UTF-8 text") from error
    except json.JSONDecodeError as error:
        raise UserError(f"{file}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno})") from error
    if not isinstance(data, dict):
        raise UserError(f'{file}: expected a JSON object of lead fields, like {{"email": "jane@globex.example"}}, '
                        f"got {_shown(data)}")
    cells: dict[str, str] = {}
    for name, value in data.items():
        if name == "attributes":
            continue
        if name not in LEAD_FIELDS:
            hint = _closest(name, (*LEAD_FIELDS, "attributes"))
            tail = f"did you mean '{hint}'?" if hint else f"expected one of: {', '.join(LEAD_FIELDS)}, attributes"
            raise UserError(f"{file}: {name}: unknown lead field ({tail})")
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise UserError(f"{file}: {name}: expected text, got {_shown(value)}")
        cells[name] = str(value)
    if "email" not in cells:
        raise UserError(f"{file}: email: missing (the lead's address is required)")
    parsed = parse_row(cells, {name: name for name in cells})
    if parsed.problems:
        column, message = parsed.problems[0]
        raise UserError(f"{file}: {column}: {message}")
    attributes = data.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise UserError(f"{file}: attributes: expected an object of name: value, got {_shown(attributes)}")
    for key, value in attributes.items():
        if isinstance(value, (dict, list)):
            raise UserError(f"{file}: attributes.{key}: expected text, a number or true/false, got {_shown(value)}")
    return LeadIn(email=parsed.email, attributes=attributes, **parsed.fields)


@dataclass(frozen=True)
class ScriptedEvent:
    at: timedelta  # after enrollment
    type: str
    fields: dict[str, str]
    line: int


def read_events(path: Path, campaign: Campaign) -> list[ScriptedEvent]:
    """EVENTS.yaml: a list of `{at: 2d3h, type: email_click, step: case-study, ...}`, in
    offset order. CampaignError with every problem as FILE:LINE: N.key: message."""
    source, problems = _read_yaml(path)
    if source is None:
        raise CampaignError(problems)
    data = source.data if source.data is not None else []
    if not isinstance(data, list):
        raise CampaignError([source.problem((), f"expected a list of events like "
                                                f"`- {{at: 2d3h, type: email_click, step: case-study}}`, "
                                                f"got {_shown(data)}")])
    steps = [step.id for step in campaign.steps]
    events = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            problems.append(source.problem((index,), f"expected an event like {{at: 2d, type: email_open}}, "
                                                     f"got {_shown(item)}"))
            continue
        found = _event_problems(source, index, item, campaign.name, steps)
        problems += found
        if not found:
            offset = _offset(item["at"])
            extra = {key: str(value) for key, value in item.items() if key not in ("at", "type") and value is not None}
            if "step" in extra:
                extra.setdefault("campaign", campaign.name)  # as a webhook event about that email says
            events.append(ScriptedEvent(offset, item["type"], extra, source.line((index,))))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise CampaignError(sorted(errors, key=lambda p: p.line))
    return sorted(events, key=lambda event: event.at)


def _event_problems(source: Any, index: int, item: dict[str, Any], name: str, steps: list[str]) -> list[Problem]:
    problems = []
    for key in item:
        if key not in EVENT_KEYS:
            hint = _closest(key, EVENT_KEYS)
            tail = f"did you mean '{hint}'?" if hint else f"expected one of: {', '.join(EVENT_KEYS)}"
            problems.append(source.problem((index, key), f"unknown key '{key}' ({tail})"))
    for key in ("at", "type"):
        if key not in item:
            problems.append(source.problem((index,), f"missing '{key}'"))
    if "at" in item:
        try:
            _offset(item["at"])
        except ValueError as error:
            problems.append(source.problem((index, "at"), f"{error} (time after enrollment)"))
    if "type" in item and not (isinstance(item["type"], str) and journey.is_event_type(item["type"])):
        problems.append(source.problem((index, "type"), f"expected an event type like email_click "
                                                         f"(lower-case letters, digits and _), got {_shown(item['type'])}"))
    step = item.get("step")
    if step is not None and item.get("campaign", name) == name and str(step) not in steps:
        hint = _closest(step, steps)
        tail = f"did you mean '{hint}'?" if hint else f"its steps: {', '.join(steps)}"
        problems.append(source.problem((index, "step"), f"campaign {name} has no step {_shown(step)} ({tail})"))
    return problems


def _offset(value: Any) -> timedelta:
    if (isinstance(value, str) and _ZERO.match(value.strip().lower())) or (type(value) is int and value == 0):
        return timedelta(0)  # "at once": no wait is a valid offset, unlike a `wait: 0` step
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return parse_duration(value)
    raise ValueError(f"expected a duration like 2d3h, got {_shown(value)}")


# ---------------------------------------------------------------- the run


@dataclass
class Entry:
    at: datetime  # in the lead's zone
    offset: timedelta  # from enrollment
    kind: str
    reason: str
    delta: int | None
    score: int | None
    detail: dict[str, Any] = field(default_factory=dict)
    text: str | None = None  # a sent email's text part, as the lead would read it (`--render`)

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "offset": format_offset(self.offset), "kind": self.kind,
                "reason": self.reason, "delta": self.delta, "score": self.score,
                **({"detail": self.detail} if self.detail else {}),
                **({"text": self.text} if self.text is not None else {})}


@dataclass
class Timeline:
    campaign: Campaign
    lead: dict[str, Any]  # `nurture lead show --json` at the end
    zone: ZoneInfo
    enrolled_at: datetime | None
    entries: list[Entry]
    ended: bool  # the campaign ended within HORIZON (or the lead never entered it)
    notes: list[str] = field(default_factory=list)

    @property
    def sent(self) -> list[Entry]:
        return self._emails("sent")

    @property
    def failed(self) -> list[Entry]:
        """Emails of the campaign that failed (a template that does not render for this
        lead, a refused send): the campaign would not do what it says."""
        return self._emails("failed")

    def _emails(self, status: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == "email" and e.detail.get("status") == status
                and e.detail.get("campaign") == self.campaign.name]

    def summary(self) -> str:
        lead, name = self.lead, self.campaign.name
        count = len(self.sent)
        failed = len(self.failed)
        numbers = (f"{count} email{'s' if count != 1 else ''} sent"
                   + (f", {failed} failed" if failed else "")
                   + f"; final stage {lead['stage']}, score {lead['score']} (grade {lead['grade']}, {lead['temperature']})")
        if self.enrolled_at is None:
            return f"{numbers}; the lead never entered {name}"
        if not self.ended:
            return (f"{numbers}; still in {name} at step {lead['step']} after {HORIZON.days} days simulated: "
                    "the campaign had not ended")
        left = [e for e in self.entries if e.kind == "note" and e.reason.startswith(f"left campaign {name}: ")]
        if not left:
            return numbers
        why = left[-1].reason.split(": ", 1)[1]
        step = left[-1].detail.get("step")
        return f"{numbers}; left {name} at {format_offset(left[-1].offset)}" + (f" (step {step})" if step else "") + f": {why}"


def format_offset(value: timedelta) -> str:
    """+2d 09:00: days and hours:minutes after enrollment."""
    sign = "-" if value <= -timedelta(minutes=1) else "+"  # the same minute as enrollment is +0d 00:00
    minutes = int(abs(value).total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    return f"{sign}{days}d {minutes // 60:02d}:{minutes % 60:02d}"


def lead_zone(campaign: Campaign, lead_timezone: str | None) -> ZoneInfo:
    """The lead's own zone if valid, else the campaign's default_timezone, else UTC."""
    from nurture import rules

    default = campaign.send_window.default_timezone if campaign.send_window else "UTC"
    return rules.lead_zone(SendWindow(timezone="lead", default_timezone=default), lead_timezone)


def preview_settings(settings: Settings, home: Path) -> Settings:
    """The user's settings (templates, public URL, senders) on a throw-away home: its own
    store and campaigns folder, and never SendGrid whatever SENDGRID_API_KEY says."""
    return settings.model_copy(update={
        "home": home, "database_url": f"sqlite:///{home / 'nurture.db'}", "campaigns_dir": home / "campaigns",
        "templates_dir": Path(settings.templates_dir).resolve(), "task_queue": "nurture-preview",
        "workflow_prefix": "preview-", "sendgrid_api_key": None, "secret": "preview-secret",
    })


async def run_preview(campaign_file: Path, lead: LeadIn, events: list[ScriptedEvent], settings: Settings, *,
                      horizon: timedelta = HORIZON) -> Timeline:
    """Run the campaign in `campaign_file` for `lead` under simulated time; see the module doc."""
    from nurture.db import upgrade
    from nurture.timeskip import SimulatedTime
    from worker import build_worker

    campaign = load_campaign(campaign_file)
    funnel_file = Path(settings.funnel_file)
    load_funnel(funnel_file if funnel_file.exists() else None)  # a broken funnel: CampaignError, before any run
    home = Path(tempfile.mkdtemp(prefix="nurture-preview-"))
    try:
        local = preview_settings(settings, home)
        local.campaigns_dir.mkdir()
        copy = local.campaigns_dir / ("campaign.yaml" if campaign_file.name in FUNNEL_FILES else campaign_file.name)
        shutil.copyfile(campaign_file, copy)
        if funnel_file.exists():
            shutil.copyfile(funnel_file, local.campaigns_dir / "funnel.yaml")
        upgrade(local.db_url)
        logging.getLogger("temporalio").setLevel(logging.ERROR)  # activity retries are in the timeline
        clock = await SimulatedTime.start(home / "temporal")
        try:
            async with build_worker(clock.client, local):
                return await _Run(Nurture(local, clock.client), clock, campaign, copy, lead).go(events, horizon)
        finally:
            await clock.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


class _Run:
    def __init__(self, nurture: Nurture, clock: Any, campaign: Campaign, copy: Path, lead: LeadIn) -> None:
        self.nurture, self.clock, self.campaign, self.copy, self.lead = nurture, clock, campaign, copy, lead
        self.email = canonical_email(lead.email)
        self.handle = clock.client.get_workflow_handle(nurture.settings.workflow_id(journey.lead_key(self.email)))
        self.notes: list[str] = []
        self.ignored: list[_Ignored] = []

    async def go(self, events: list[ScriptedEvent], horizon: timedelta) -> Timeline:
        enrolled_at = await self.enroll()
        start = enrolled_at or await self.clock.now(self.handle)
        for index, scripted in enumerate(events):
            await self.forward_to(start + scripted.at)
            now = await self.clock.now(self.handle)
            waiting = self.unsent_step(scripted, now)
            if waiting is not None:
                self.ignored.append(_Ignored(now, scripted, waiting))
                continue
            await self.nurture.record_event(self.email, scripted.type, at=now, event_id=f"preview-{index}",
                                            **scripted.fields)
        ended = enrolled_at is None or await self.until_end(start + horizon)
        return self.timeline(enrolled_at, ended)

    def unsent_step(self, scripted: ScriptedEvent, now: datetime) -> str | None:
        """An event about one of this campaign's emails (an open, a click) can only come
        after that email went out: when it has not by `now`, what the lead was doing
        instead ("the lead was at step case-study (send window)"); else None."""
        step = scripted.fields.get("step")
        if step is None or scripted.fields.get("campaign") != self.campaign.name:
            return None
        lead = self.nurture.show(self.email)
        if any(_utc(h["at"]) <= now for h in _sent(lead["history"], self.campaign.name, step)):
            return None
        if lead["campaign"] != self.campaign.name:
            return "the lead was no longer in the campaign"
        waiting = f" ({lead['waiting_for']})" if lead["waiting_for"] else ""
        return f"the lead was at step {lead['step']}{waiting}"

    async def enroll(self) -> datetime | None:
        """Enroll explicitly; a lead the enroll rules would keep out is let in (and told)."""
        name = self.campaign.name
        result = await self.nurture.add_lead(self.lead, campaign=name)
        refusal = result.message
        if refusal and (refusal.startswith("stage '") or "enroll.where" in refusal):
            self.notes.append(f"this lead would not enter {name} ({refusal}); previewed as if its enroll rules let it in")
            self._open_enroll_rules()
            await self.nurture.enroll(self.email, name)
        elif refusal:
            self.notes.append(f"not enrolled in {name}: {refusal}")
            return None
        enrolled = [h for h in self.nurture.show(self.email)["history"]
                    if h["kind"] == "note" and h["reason"].startswith(f"enrolled in {name} ")]
        return _utc(enrolled[-1]["at"])

    def _open_enroll_rules(self) -> None:
        """Rewrite the preview's own copy with every stage allowed and no `where` (steps untouched)."""
        import yaml

        data = yaml.load(self.copy.read_text(encoding="utf-8"), Loader=_yaml_loader())
        enroll = {k: v for k, v in (data.get("enroll") or {}).items() if k != "where"}
        data["enroll"] = {**enroll, "stages": list(STAGES)}
        self.copy.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")

    def sent_texts(self) -> dict[tuple[str | None, str | None], list[str]]:
        """The text part of each email that went out, read back from the preview's own
        outbox (what the send activity wrote), by (campaign, step), oldest first."""
        import email
        from email import policy

        from nurture import crud

        settings = self.nurture.settings
        texts: dict[tuple[str | None, str | None], list[str]] = {}
        with self.nurture.session() as session:
            rows = [(row.campaign, row.step, row.send_id) for row in
                    crud.emails_of(session=session, key=journey.lead_key(self.email)) if row.status == "sent"]
        for campaign, step, send_id in rows:
            path = settings.outbox_dir / f"{send_id}.eml"
            if path.exists():
                message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
                body = message.get_body(("plain",))  # type: ignore[attr-defined]
                texts.setdefault((campaign, step), []).append(body.get_content() if body is not None else "")
        return texts

    async def forward_to(self, moment: datetime) -> None:
        from nurture.timeskip import SETTLE_SECONDS

        gap = moment - await self.clock.now(self.handle)
        if gap > timedelta(0):
            await self.clock.fast_forward(self.handle, gap, settle=SETTLE_SECONDS)

    async def until_end(self, limit: datetime) -> bool:
        name = self.campaign.name
        return await advance_until(self.nurture, self.clock, self.email, lambda lead: lead["campaign"] != name, limit)

    def timeline(self, enrolled_at: datetime | None, ended: bool) -> Timeline:
        lead = self.nurture.show(self.email)
        zone = lead_zone(self.campaign, self.lead.timezone)
        origin = enrolled_at or (_utc(lead["history"][0]["at"]) if lead["history"] else datetime.now(timezone.utc))
        texts = self.sent_texts()
        entries = [Entry(at=_utc(h["at"]).astimezone(zone), offset=_utc(h["at"]) - origin, kind=h["kind"],
                         reason=h["reason"], delta=h["delta"], score=h["score"], detail=h.get("detail") or {},
                         text=_text_of(h, texts))
                   for h in lead["history"]]
        entries += [item.entry(zone, origin, lead["history"], self.campaign.name) for item in self.ignored]
        entries.sort(key=lambda entry: entry.at)  # stable: the history's own order within a moment
        return Timeline(self.campaign, lead, zone, enrolled_at, entries, ended, self.notes)


@dataclass(frozen=True)
class _Ignored:
    """A scripted event about an email that had not gone out yet: left out of the run."""

    at: datetime
    event: ScriptedEvent
    waiting: str

    def entry(self, zone: ZoneInfo, origin: datetime, history: list[dict[str, Any]], campaign: str) -> Entry:
        step = self.event.fields["step"]
        sent = [_utc(h["at"]) for h in _sent(history, campaign, step)]
        later = f"; it went out at {format_offset(sent[0] - origin)}" if sent else "; it was never sent"
        reason = f"scripted {self.event.type} on {step} ignored: that email had not been sent yet, {self.waiting}{later}"
        return Entry(at=self.at.astimezone(zone), offset=self.at - origin, kind="note", reason=reason, delta=None,
                     score=None, detail={"scripted": True, "line": self.event.line, "step": step, "ignored": True})


def _text_of(entry: dict[str, Any], texts: dict[tuple[str | None, str | None], list[str]]) -> str | None:
    """The text of the email a `sent` history entry is about (each used once, in order)."""
    detail = entry.get("detail") or {}
    if entry["kind"] != "email" or detail.get("status") != "sent":
        return None
    waiting = texts.get((detail.get("campaign"), detail.get("step")))
    return waiting.pop(0) if waiting else None


def _sent(history: list[dict[str, Any]], campaign: str, step: str) -> list[dict[str, Any]]:
    """The history entries of `step`'s email of `campaign` that went out."""
    return [h for h in history if h["kind"] == "email" and (h.get("detail") or {}).get("status") == "sent"
            and h["detail"].get("campaign") == campaign and h["detail"].get("step") == step]


async def advance_until(nurture: Nurture, clock: Any, email: str, done: Callable[[dict[str, Any]], bool],
                        limit: datetime) -> bool:
    """Move the lead's clock from one next action of its journey to the next (a wait
    ending, a send window opening) until `done(lead)` holds (True) or its clock reaches
    `limit` (False). `lead` is `nurture.show(email)`."""
    from nurture.timeskip import SETTLE_SECONDS

    handle = clock.client.get_workflow_handle(nurture.settings.workflow_id(journey.lead_key(email)))
    while True:
        lead = nurture.show(email)
        if done(lead):
            return True
        now = await clock.now(handle)
        if now >= limit:
            return False
        due = _utc(lead["next_action_at"]) if lead["next_action_at"] else now
        await clock.fast_forward(handle, min(max(due - now, timedelta(0)) + STEP_MARGIN, limit - now),
                                 settle=SETTLE_SECONDS)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def render(timeline: Timeline, console: Any, *, texts: bool = False) -> None:
    """The timeline as a table, then (with `texts`) each sent email's text, then one summary line."""
    from rich.table import Table
    from rich.text import Text

    from nurture.cli import history_reason  # worded as `nurture lead show` does: a score names its rule

    table = Table(title=f"{timeline.campaign.name} for {timeline.lead['email']} (simulated; nothing was sent)",
                  title_justify="left")
    table.add_column(f"time ({timeline.zone.key})", no_wrap=True)
    table.add_column("offset", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("reason", ratio=1)
    table.add_column("delta", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    for entry in timeline.entries:
        table.add_row(f"{entry.at:%a %d %b %H:%M}", format_offset(entry.offset), entry.kind,
                      Text(history_reason({"reason": entry.reason, "detail": entry.detail})),
                      "" if entry.delta in (None, 0) else f"{entry.delta:+d}",
                      "" if entry.score is None else str(entry.score))
    console.print(table)
    for entry in timeline.entries if texts else ():
        if entry.text is not None:
            console.print(Text(f"--- {format_offset(entry.offset)} {entry.reason}"), soft_wrap=True)
            console.print(Text(entry.text.rstrip("\n")), soft_wrap=True)
    for note in timeline.notes:
        console.print(Text(f"note: {note}"))
    console.print(Text(timeline.summary()))
