"""The `nurture` command line (contract section 4).

Exit codes: 0 ok, 1 user error (bad input, unknown lead), 2 usage error, 3 a service
cannot be reached. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nurture import when
from nurture.wording import plural
from nurture.config import Settings, settings as load_settings
from nurture.temporal import CORE_LOGGER
from nurture.terminal import SafeConsole, json_safe, strip_controls

# Plain help (rich_markup_mode=None): Typer's rich panels print `<bool>` beside every flag.
app = typer.Typer(help="nurture: lead nurturing journeys on Temporal.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)
campaign_app = typer.Typer(help="Validate and inspect campaigns.", no_args_is_help=True, rich_markup_mode=None)
funnel_app = typer.Typer(help="The funnel model (scoring, qualification, handoff).", no_args_is_help=True,
                         rich_markup_mode=None)
lead_app = typer.Typer(help="Add, list, show and forget leads.", no_args_is_help=True, rich_markup_mode=None)
handoff_app = typer.Typer(help="Sales handoffs: list, accept, reject, won, lost.", no_args_is_help=True,
                          rich_markup_mode=None)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True, rich_markup_mode=None)
user_app = typer.Typer(help="Web app users: add, list, remove.", no_args_is_help=True, rich_markup_mode=None)
segment_app = typer.Typer(help="Segments: the named audiences of campaigns/segments.yaml.", no_args_is_help=True,
                          rich_markup_mode=None)
app.add_typer(campaign_app, name="campaign")
app.add_typer(funnel_app, name="funnel")
app.add_typer(lead_app, name="lead")
app.add_typer(handoff_app, name="handoff")
app.add_typer(db_app, name="db")
email_app = typer.Typer(help="Preview an email for a lead, or send yourself a proof.", no_args_is_help=True)
app.add_typer(email_app, name="email")
app.add_typer(user_app, name="user")
app.add_typer(segment_app, name="segment")

out = SafeConsole(highlight=False)
err = SafeConsole(stderr=True, highlight=False)
JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")
EmailArg = typer.Argument(..., metavar="EMAIL", help="The lead's email address.")
HandoffArg = typer.Argument(..., metavar="ID", help="The handoff's id (see `nurture handoff list`).")
YES_NO = {"yes": True, "y": True, "true": True, "no": False, "n": False, "false": False,
          "unknown": None, "null": None}


# ---------------------------------------------------------------- plumbing


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def finish(code: int = 0) -> NoReturn:
    """End the process once output is flushed: the Temporal client can abort at interpreter
    exit (sdk-python issue 300), which must never turn a success into a failure."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(make: Callable[[], Coroutine[Any, Any, Any]], *, unavailable_hint: str = "") -> Any:
    """Run async work, mapping our errors to exit codes and one-line messages;
    `unavailable_hint` ends the line when a service cannot be reached."""
    import asyncio  # here, not at the top: read commands never run async work

    from sqlalchemy.exc import DBAPIError

    from nurture.audiences import AudienceError
    from nurture.campaign import CampaignError
    from nurture.service import UserError
    from nurture.temporal import TemporalUnavailable

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(quiet_loop_errors)
        return await make()

    try:
        return asyncio.run(main())
    except TemporalUnavailable as error:
        fail(f"{error}{unavailable_hint}", 3)
    except DBAPIError as error:  # locked past the busy timeout, or the server is down
        fail(f"database: {store_reason(error)}; nothing was changed, try again", 3)
    except (UserError, CampaignError, AudienceError) as error:
        fail(str(error).splitlines()[0] if isinstance(error, CampaignError) else str(error), 1)
    except KeyboardInterrupt:
        finish(130)
    except Exception as error:  # a bug of ours: still one line, with how to see more
        if os.environ.get("NURTURE_DEBUG"):
            raise
        fail(f"unexpected {type(error).__name__}: {error} (set NURTURE_DEBUG=1 for the traceback)", 1)


def quiet_loop_errors(loop: Any, context: dict[str, Any]) -> None:
    """asyncio's report of a task whose error nobody read, a traceback on stderr at exit.
    Seen when Temporal goes away mid-import: the calls still in flight fail after the
    command has already stopped on the first one, whose one line (exit 3) says it all.
    NURTURE_DEBUG=1 shows asyncio's report."""
    if os.environ.get("NURTURE_DEBUG"):
        loop.default_exception_handler(context)


def store_reason(error: Any) -> str:
    orig = getattr(error, "orig", None) or error
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def cfg() -> Settings:
    try:
        return load_settings()
    except Exception as error:  # pydantic ValidationError on a bad environment variable
        fail(f"environment: {str(error).splitlines()[0]}: {error}".replace("\n", " "), 1)


def service() -> Any:
    """The service over a store at the schema this version uses. Only `up`, `worker`,
    `api` and `db upgrade` migrate; other commands refuse a store at another revision
    (exit 1) and give a brand-new one its tables (nurture.db.ensure_schema)."""
    from nurture.service import Nurture

    settings = cfg()
    read_store(settings)
    return Nurture(settings)


def read_store(settings: Settings) -> None:
    """A store at this version's schema (a brand-new one gets its tables), never migrated:
    what a command that only reads the store needs (exit 1 for a store at another revision)."""
    from nurture.db import SchemaMismatch, ensure_schema

    try:
        upgrade_quietly(settings, ensure_schema)
    except SchemaMismatch as error:
        fail(str(error), 1)


def upgrade_quietly(settings: Settings, upgrade: Callable[[str], None]) -> None:
    from nurture.db import SchemaMismatch

    try:
        upgrade(settings.db_url)
    except SchemaMismatch:
        raise
    except Exception as error:  # the database itself cannot be reached
        fail(f"database {settings.db_url.split('@')[-1]}: {store_reason(error)}", 3)


def print_json(value: Any) -> None:
    sys.stdout.write(json_safe(json.dumps(value, indent=2, default=str, ensure_ascii=False)) + "\n")


def parse_at(value: str | None, option: str = "--at") -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option}: '{value}' is not an ISO 8601 time (e.g. 2026-11-23T09:30:00Z)")
    if parsed.tzinfo is None:
        fail(f"{option}: '{value}' has no time zone; add Z or +01:00")
    from nurture.leadfields import FieldError, check_time

    try:
        return check_time(option, parsed)
    except FieldError as error:
        fail(str(error))


def yes_no(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() not in YES_NO:
        fail(f"--{name}: expected yes or no, got '{value}'", 2)
    return YES_NO[value.lower()]


# ---------------------------------------------------------------- services


@app.command()
def up() -> None:
    """Embedded Temporal dev server (or NURTURE_TEMPORAL_ADDRESS) + worker + HTTP API. Ctrl-C stops all."""
    from nurture.runner import run_up

    settings = cfg()
    run(lambda: run_up(settings, out))
    finish(0)


@app.command()
def worker() -> None:
    """Run one worker (start several to scale out). Same as `python worker.py`."""
    from nurture.runner import run_worker

    settings = cfg()
    run(lambda: run_worker(settings, out))
    finish(0)


@app.command()
def api() -> None:
    """Run only the HTTP API on NURTURE_HTTP_PORT."""
    from nurture.runner import run_api

    settings = cfg()
    run(lambda: run_api(settings, out))
    finish(0)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (up/worker/api do it at start)."""
    from nurture.db import upgrade

    settings = cfg()
    upgrade_quietly(settings, upgrade)
    out.print(f"database schema up to date ({settings.db_url.split('@')[-1]})")


@app.command()
def demo(fast: bool = typer.Option(False, "--fast", help="No pauses between scenes.")) -> None:
    """A complete journey end to end in under a minute, with no setup (time is simulated)."""
    from nurture.demo import run_demo

    run(lambda: run_demo(out, pause=0 if fast else 0.6))
    finish(0)


# ---------------------------------------------------------------- campaigns and funnel


@campaign_app.command("validate")
def campaign_validate(paths: list[Path] = typer.Argument(..., help="Campaign files or folders.")) -> None:
    """Exit 0 if all valid; else exit 1 with one line per problem: FILE:LINE: dotted.path: message."""
    from nurture.campaign import validate_paths

    settings = cfg()
    problems = validate_paths(paths, settings.templates_dir, settings.funnel_file)
    for problem in problems:
        (err if problem.severity == "error" else out).print(problem.shown(), markup=False, soft_wrap=True)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise typer.Exit(1)
    out.print(f"ok: {', '.join(str(p) for p in paths)}" + (f" ({plural(len(problems), 'warning')})" if problems else ""))


@campaign_app.command("list")
def campaign_list(as_json: bool = JsonOpt) -> None:
    """The campaigns in NURTURE_CAMPAIGNS_DIR (a broken file: its last valid version, and exit 1)."""
    from nurture.lastvalid import ConfigFiles

    settings = cfg()
    config = ConfigFiles(settings)
    campaigns = config.campaigns()
    states = _campaign_states(settings)
    rows = [{"name": c.name, "status": states.get(c.name, "active"), "description": c.description,
             "steps": len(c.steps), "version": c.version, "auto_on": [_trigger_name(t) for t in c.enroll.auto_on],
             "file": c.source_file}
            for c in campaigns]
    if as_json:
        print_json(rows)
    else:
        print_campaigns(rows)
    broken = config.broken()
    for file in broken:
        err.print(f"error: {file.line()}", markup=False, soft_wrap=True)
    if broken:
        fail(f"{plural(len(broken), 'file')} invalid (run `nurture campaign validate {settings.campaigns_dir}`)")


def _trigger_name(trigger: Any) -> str:
    """`created`, `recycled`, or `event TYPE` (its `where` in the campaign file)."""
    return trigger if isinstance(trigger, str) else f"event {trigger.event}"


def _campaign_states(settings: Settings) -> dict[str, str]:
    """Campaigns paused or stopped, from the store (none while there is no store yet)."""
    from sqlalchemy.exc import SQLAlchemyError

    from nurture import crud
    from nurture.db import session_scope

    if settings.db_url.startswith("sqlite:///") and not Path(settings.db_url.removeprefix("sqlite:///")).exists():
        return {}
    try:
        with session_scope(settings.db_url) as session:
            return {name: row.state for name, row in crud.campaign_controls(session=session).items()}
    except SQLAlchemyError:  # a store at an older schema: `db upgrade` says so elsewhere
        return {}


def print_campaigns(rows: list[dict[str, Any]]) -> None:
    table = table_of("name", "status", "steps", "auto_on", "version", "file", "description", numeric=("steps",))
    for row in rows:
        table.add_row(row["name"], row["status"], str(row["steps"]), ", ".join(row["auto_on"]) or "-", row["version"],
                      row["file"], row["description"])
    out.print(table)


def _control(name: str, action: str) -> None:
    nurture = service()
    report = run(lambda: nurture.control_campaign(name, action))
    leads = plural(report.told, "lead")
    said = {"paused": f"{leads} held where they are until `nurture campaign resume {name}`",
            "active": f"{leads} told to go on where they were",
            "stopped": f"{leads} left it (campaign stopped)"}[report.state]
    word = {"paused": "paused", "active": "resumed", "stopped": "stopped"}[report.state]
    again = "" if report.changed else f" (it already was {report.state}: its leads were told again)"
    missing = f"; {plural(report.missing, 'lead')} had no running journey" if report.missing else ""
    out.print(f"campaign {name} {word}{again}: {said}{missing}", markup=False, soft_wrap=True)
    finish(0)


@campaign_app.command("pause")
def campaign_pause(name: str = typer.Argument(..., metavar="NAME", help="The campaign's name.")) -> None:
    """Stop sending: the campaign's leads wait where they are and it takes no new leads."""
    _control(name, "pause")


@campaign_app.command("resume")
def campaign_resume(name: str = typer.Argument(..., metavar="NAME", help="The campaign's name.")) -> None:
    """Go on: each lead continues where it was (a wait already over sends now, in its window)."""
    _control(name, "resume")


@campaign_app.command("stop")
def campaign_stop(name: str = typer.Argument(..., metavar="NAME", help="The campaign's name.")) -> None:
    """End the campaign for every lead in it (exit reason `campaign stopped`); no new leads."""
    _control(name, "stop")


@campaign_app.command("show")
def campaign_show(
    name: str = typer.Argument(..., metavar="NAME", help="The campaign's name (see `nurture campaign list`)."),
    since: Optional[str] = typer.Option(None, "--since", help="Count only from this ISO 8601 time on."),
    as_json: bool = JsonOpt,
) -> None:
    """A campaign's status, versions and stats: the numbers of its web page."""
    from nurture import stats
    from nurture.campaign import CampaignError
    from nurture.db import upgrade

    settings = cfg()
    upgrade_quietly(settings, upgrade)
    try:
        _, document = stats.stats_of(settings, name, parse_at(since, "--since"))
    except CampaignError as error:
        fail(str(error).splitlines()[0])
    if as_json:
        print_json(document)
        return
    print_campaign_stats(document)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def print_campaign_stats(doc: dict[str, Any]) -> None:
    exited = ", ".join(f"{reason} {count}" for reason, count in doc["exited"].items()) or "none"
    out.print(f"{doc['campaign']}: {doc['status']}, version {doc['version']}"
              + (f", since {doc['since']}" if doc["since"] else ""), markup=False)
    out.print(f"enrolled {doc['enrolled']}, in it now {doc['active']}, completed {doc['completed']}; "
              f"exited: {exited}", markup=False)
    out.print("conversions: " + ", ".join(f"{stage} {count} ({percent(doc['conversion_rates'][stage])})"
                                          for stage, count in doc["conversions"].items()), markup=False)
    versions = table_of("version", "enrolled", "first enrolled", "last enrolled", numeric=("enrolled",), title="versions")
    for version in doc["versions"]:
        versions.add_row(version["version"], str(version["enrolled"]), version["first_enrolled_at"], version["last_enrolled_at"])
    out.print(versions)
    counts = ("reached", "waiting", "sent", "delivered", "unique_opens", "unique_clicks", "bounced", "unsubscribed")
    steps = table_of("step", "kind", *counts, numeric=counts, title="steps")
    for step in doc["steps"]:
        steps.add_row(step["id"], step["kind"], *(str(step[name]) if name in step else "" for name in counts))
    out.print(steps)
    for step in doc["steps"]:
        if len(step.get("variants", [])) < 2:
            continue
        ab = table_of("subject", "sent", "unique_opens", "open rate", "unique_clicks", "click rate",
                      numeric=("sent", "unique_opens", "open rate", "unique_clicks", "click rate"), title=f"A/B: {step['id']}")
        for variant in step["variants"]:
            ab.add_row(Text(variant["subject"]), str(variant["sent"]), str(variant["unique_opens"]),
                       percent(variant["open_rate"]), str(variant["unique_clicks"]), percent(variant["click_rate"]))
        out.print(ab)
        for metric, test in step["significance"].items():
            verdict = "no test yet" if test["p_value"] is None else (
                f"p = {test['p_value']}: " + ("significant" if test["significant"] else "not significant")
                + f" at {test['confidence']:.0%}")
            out.print(f"  {metric}: {verdict}", markup=False)


@campaign_app.command("test")
def campaign_test(
    file: Path = typer.Argument(..., help="The campaign file to preview."),
    lead: Path = typer.Option(..., "--lead", help="LEAD.json: an object of lead fields (email required)."),
    events: Optional[Path] = typer.Option(None, "--events", help="EVENTS.yaml: [{at: 2d3h, type: email_click, step: ...}]"),
    with_text: bool = typer.Option(False, "--render", help="Include each sent email's rendered text."),
    as_json: bool = JsonOpt,
) -> None:
    """Run a campaign for one lead under simulated time, sending nothing, and print its timeline."""
    from nurture.campaign import CampaignError
    from nurture.preview import check_campaign, format_offset, read_events, read_lead, render, run_preview
    from nurture.service import UserError

    settings = cfg()
    try:
        campaign, warnings = check_campaign(file, settings.templates_dir, settings.funnel_file)
        data = read_lead(lead)
        scripted = read_events(events, campaign) if events else []
    except CampaignError as error:
        for problem in error.problems or [str(error)]:
            err.print(str(problem), markup=False, soft_wrap=True)
        finish(1)
    except UserError as error:
        fail(str(error))
    for warning in warnings:
        err.print(str(warning), markup=False, soft_wrap=True)
    with err.status("simulating on an embedded Temporal server..."):
        timeline = run(lambda: run_preview(file, data, scripted, settings))
    if not with_text:
        for entry in timeline.entries:
            entry.text = None
    if as_json:
        print_json([entry.as_json() for entry in timeline.entries])
    else:
        render(timeline, out, texts=with_text)
    for entry in timeline.failed:  # the timeline shows them; the exit code tells scripts and CI
        err.print(f"error: step {entry.detail.get('step')} at {format_offset(entry.offset)}: {entry.reason}",
                  markup=False, soft_wrap=True)
    finish(1 if timeline.failed else 0)


@campaign_app.command("schema")
def campaign_schema() -> None:
    """JSON Schema of the campaign format, for editors."""
    from nurture.campaign import campaign_json_schema

    print_json(campaign_json_schema())


@funnel_app.command("schema")
def funnel_schema() -> None:
    """JSON Schema of funnel.yaml, for editors."""
    from nurture.campaign import funnel_json_schema

    print_json(funnel_json_schema())


@funnel_app.command("show")
def funnel_show(as_json: bool = JsonOpt) -> None:
    """The funnel model in force (defaults filled in); while funnel.yaml is broken, its last
    valid version, and exit 1."""
    import yaml

    from nurture.lastvalid import ConfigFiles, NoValidFunnel

    settings = cfg()
    path = settings.funnel_file
    config = ConfigFiles(settings)
    try:
        funnel = config.funnel()
    except NoValidFunnel as error:
        fail(str(error))
    data = funnel.model_dump(mode="json", by_alias=True, exclude={"version", "source_file"})
    broken = [file for file in config.broken() if file.is_funnel]
    if as_json:
        print_json(data)
    else:
        shown = path if path.exists() else "built-in defaults"
        if broken:
            shown = f"the last valid version ({funnel.version}) of {path}"
        out.print(f"# funnel in force: {shown}", markup=False, soft_wrap=True)
        out.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), markup=False)
    if broken:
        fail(broken[0].line())


# ---------------------------------------------------------------- leads


def _attrs(values: list[str]) -> dict[str, str]:
    attributes = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--attr: expected KEY=VALUE, got '{item}'", 2)
        attributes[key.strip()] = value
    return attributes


@lead_app.command("add")
def lead_add(
    email: str = typer.Option(..., "--email", help="The lead's address."),
    first_name: Optional[str] = typer.Option(None, "--first-name", help="First name (templates: lead.first_name)."),
    last_name: Optional[str] = typer.Option(None, "--last-name", help="Last name."),
    company: Optional[str] = typer.Option(None, "--company", help="Company name."),
    job_title: Optional[str] = typer.Option(None, "--job-title", help="Job title (fit rules may score it)."),
    company_size: Optional[int] = typer.Option(None, "--company-size", min=0, help="Number of employees."),
    country: Optional[str] = typer.Option(None, "--country", help="ISO 3166 two-letter code."),
    timezone: Optional[str] = typer.Option(None, "--timezone", help="IANA name, e.g. Europe/Paris."),
    locale: Optional[str] = typer.Option(None, "--locale", help="e.g. fr-FR."),
    source: Optional[str] = typer.Option(None, "--source", help="Where the lead came from, e.g. web_form."),
    attr: list[str] = typer.Option([], "--attr", help="KEY=VALUE, repeatable."),
    campaign: Optional[str] = typer.Option(None, "--campaign", help="Enroll in this campaign."),
    as_json: bool = JsonOpt,
) -> None:
    """Create or update a lead by email (and enroll it)."""
    from nurture.service import LeadIn

    # Every value is checked by the validator the API and CSV import use (nurture.leadfields).
    data = LeadIn(email=email, first_name=first_name, last_name=last_name, company=company, job_title=job_title,
                  company_size=company_size, country=country, timezone=timezone,
                  locale=locale, source=source, attributes=_attrs(attr))
    nurture = service()
    result = run(lambda: nurture.add_lead(data, campaign=campaign))
    lead = nurture.show(email)
    if as_json:
        print_json(lead)
    else:
        out.print(f"lead {lead['email']}: stage {lead['stage']}, score {lead['score']}, grade {lead['grade']}"
                  + (f", campaign {lead['campaign']}" if lead["campaign"] else ""), markup=False)
    if result.message:
        fail(f"lead saved, but not enrolled in {campaign}: {result.message}")
    finish(0)


@lead_app.command("show")
def lead_show(email: str = EmailArg, as_json: bool = JsonOpt) -> None:
    """Stage, status, score, grade, temperature, owner, BANT, campaign, step and history."""
    from nurture.service import UserError

    nurture = service()
    try:
        lead = nurture.show(email)
    except UserError as error:
        fail(str(error))
    if as_json:
        print_json(lead)
        return
    render_lead(lead)
    render_broken_files(lead, nurture.settings)


def render_broken_files(lead: dict[str, Any], settings: Settings) -> None:
    """The configuration files this lead's journey depends on that are broken now: it runs
    on their last valid version (or waits for one), and the reader should know."""
    from nurture.lastvalid import ConfigFiles

    for broken in ConfigFiles(settings).broken():
        waits = lead["campaign"] is None and not broken.fallback  # its automatic enrollment may wait
        if broken.is_funnel or broken.campaign == lead["campaign"] or waits:
            out.print(Text(f"warning: {broken.line()}", style="yellow"), soft_wrap=True)


def render_lead(lead: dict[str, Any]) -> None:
    bant = "  ".join(f"{k}={'yes' if v else 'no' if v is False else '?'}" for k, v in lead["bant"].items())
    name = " ".join(filter(None, [lead.get("first_name"), lead.get("last_name")]))
    out.print(f"[bold]{escape(lead['email'])}[/bold] {escape(name)}  {escape(lead.get('company') or '')}")
    render_profile(lead)
    out.print(f"stage [bold]{lead['stage']}[/bold]  status {lead['status']}  score [bold]{lead['score']}[/bold]"
              f"  grade {lead['grade']}  {lead['temperature']}  owner {lead['owner'] or '-'}")
    out.print(f"BANT {bant}")
    zone = lead.get("timezone")  # a lead's own times are shown in its zone (nurture.when)
    render_journey(lead)
    table = table_of(when.header("at", zone), "kind", "delta", "score", "reason", numeric=("delta", "score"),
                     title="history")
    for entry in lead["history"]:
        delta = "" if entry["delta"] is None else f"{entry['delta']:+d}"
        # Text, not markup: rule texts hold brackets ([gmail.com, ...]) that are data.
        table.add_row(when.clock(entry["at"], zone), entry["kind"], delta,
                      "" if entry["score"] is None else str(entry["score"]), Text(history_reason(entry)))
    out.print(table)


def table_of(*columns: str, numeric: tuple[str, ...] = (), title: str | None = None) -> Table:
    """A Rich table whose number columns are right-aligned, their headers with them."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left")
    return table


SEND_HOLDS = ("send window", "frequency cap")  # what a step's email may wait for (workflows/lead.py)


def render_journey(lead: dict[str, Any]) -> None:
    """Where the lead is in its campaign and what it waits for; an email held by the
    send window or the frequency cap says so, and when it will leave."""
    if not lead["campaign"]:
        return
    where = f"campaign {lead['campaign']}, step {lead['step']}"
    waiting = lead.get("waiting_for")
    until = f" until {when.labelled(lead['next_action_at'], lead.get('timezone'))}" if lead.get("next_action_at") else ""
    if waiting in SEND_HOLDS:
        where += f": its email waits for the {waiting}{until}"
    elif waiting:
        where += f", waiting for {waiting}{until}"
    out.print(Text(where), soft_wrap=True)


PROFILE_LABELS = (("job_title", "job title"), ("company_size", "company size"), ("country", "country"),
                  ("timezone", "timezone"), ("locale", "locale"), ("source", "source"))


def render_profile(lead: dict[str, Any]) -> None:
    """What the lead told us (or the import or form did): every stored profile field, then
    the attributes; '-' where nothing is stored."""
    fields = "  ".join(f"{label} {lead.get(name) if lead.get(name) is not None else '-'}"
                       for name, label in PROFILE_LABELS)
    attributes = lead.get("attributes") or {}
    listed = "  ".join(f"{key}={value}" for key, value in sorted(attributes.items())) if attributes else "-"
    # Text, not markup (the values are data); soft_wrap: a line per field group, never cut.
    out.print(Text(fields), soft_wrap=True)
    out.print(Text(f"attributes {listed}"), soft_wrap=True)


def history_reason(entry: dict[str, Any]) -> str:
    """The reason as the table shows it: a scored event also names the rule that gave
    its points, by position and text (the JSON keeps it in detail.rule)."""
    reason = entry["reason"]
    rule = (entry.get("detail") or {}).get("rule")
    if rule and rule not in reason:
        reason = f"{reason}: rule {rule}"
    return reason


@lead_app.command("list")
def lead_list(
    stage: Optional[str] = typer.Option(None, "--stage", help="Only leads at this stage (lead, mql, sql, ...)."),
    grade: Optional[str] = typer.Option(None, "--grade", help="Only leads of this grade (A, B, C, D, F)."),
    temperature: Optional[str] = typer.Option(None, "--temperature", help="cold, warm or hot."),
    status: Optional[str] = typer.Option(None, "--status", help="subscribed, unsubscribed, bounced or complained."),
    campaign: Optional[str] = typer.Option(None, "--campaign", help="Only leads now in this campaign."),
    segment: Optional[str] = typer.Option(None, "--segment", metavar="NAME",
                                          help="Only leads of this segment (campaigns/segments.yaml)."),
    q: Optional[str] = typer.Option(None, "--q", help="Search: part of the address, the name or the company."),
    limit: int = typer.Option(50, "--limit", help="Leads per page (1-500)."),
    cursor: Optional[str] = typer.Option(None, "--cursor", help="Where to go on: the cursor the last page printed."),
    as_json: bool = JsonOpt,
) -> None:
    """Leads matching the filters, oldest first, a page at a time."""
    from nurture.db import session_scope
    from nurture.leads import FilterError, lead_filters, list_page

    try:
        filters = lead_filters(stage=stage, grade=grade, temperature=temperature, status=status,
                               campaign=campaign, q=q, limit=limit, cursor=cursor)
    except FilterError as error:
        fail(f"--{error.field}: {error.message}", 2)
    settings = cfg()
    chosen = None
    if segment is not None:
        from nurture import audiences

        chosen = _segments_call(lambda: audiences.find(settings, segment))
    read_store(settings)
    with session_scope(settings.db_url) as session:
        where = None if chosen is None else audiences.condition(session, chosen)
        page = _segments_call(lambda: list_page(session, filters, where=where))
    if as_json:
        print_json(page)
        return
    render_lead_page(page)


def render_lead_page(page: dict[str, Any]) -> None:
    table = Table()
    # The address is what a reader copies into the next command: never cut short.
    table.add_column("email", no_wrap=True, min_width=max((len(lead["email"]) for lead in page["leads"]), default=5))
    for header in ("name", "company", "stage", "score", "grade", "temperature", "status", "campaign", "step"):
        table.add_column(header, overflow="fold", justify="right" if header == "score" else "left")
    for lead in page["leads"]:
        name = " ".join(filter(None, [lead.get("first_name"), lead.get("last_name")]))
        table.add_row(Text(lead["email"]), Text(name), Text(lead.get("company") or ""), lead["stage"],
                      str(lead["score"]), lead["grade"], lead["temperature"], lead["status"],
                      Text(lead["campaign"] or "-"), Text(lead["step"] or "-"))
    out.print(table)
    shown = f"{len(page['leads'])} lead(s)"
    if page["next_cursor"]:
        out.print(f"{shown}; more with --cursor {page['next_cursor']}", markup=False)
    else:
        out.print(shown, markup=False)


@lead_app.command("forget")
def lead_forget(email: str = EmailArg) -> None:
    """Erase personal data, stop journeys, keep a suppression hash."""
    nurture = service()
    run(lambda: nurture.forget(email))
    out.print("forgotten: personal data erased, address kept only as a hash so it is never mailed again")
    finish(0)


@app.command()
def enroll(first: str = typer.Argument(..., metavar="EMAIL", help="The lead's email address (none with --segment)."),
           second: Optional[str] = typer.Argument(None, metavar="CAMPAIGN", help="The campaign's name."),
           switch: bool = typer.Option(False, "--switch", help="Leave the current campaign first."),
           segment: Optional[str] = typer.Option(None, "--segment", metavar="NAME",
                                                 help="Enroll every lead of this segment: enroll --segment NAME CAMPAIGN."),
           dry_run: bool = typer.Option(False, "--dry-run", help="With --segment: say how many would enter, change nothing."),
           rate: float = typer.Option(50.0, "--rate", min=0.1, help="With --segment: enrollments a second, at most."),
           concurrency: int = typer.Option(8, "--concurrency", min=1, max=100,
                                           help="With --segment: enrollments in flight at once, at most.")) -> None:
    """Enroll a lead in a campaign (EMAIL CAMPAIGN), or a whole segment (--segment NAME CAMPAIGN)."""
    if segment is not None:
        if second is not None or switch:
            fail("enroll --segment NAME CAMPAIGN takes the campaign only (no EMAIL, no --switch)", 2)
        _enroll_segment(segment, first, dry_run=dry_run, rate=rate, concurrency=concurrency)
    if second is None or dry_run:
        fail("enroll EMAIL CAMPAIGN [--switch], or enroll --segment NAME CAMPAIGN [--dry-run]", 2)
    nurture = service()
    result = run(lambda: nurture.enroll(first, second, switch=switch))
    out.print(f"{result.lead['email']} enrolled in {result.lead['campaign']}, at step {result.lead['step']}", markup=False)
    finish(0)


def _enroll_segment(segment: str, campaign: str, *, dry_run: bool, rate: float, concurrency: int) -> NoReturn:
    from nurture import audiences

    nurture = service()
    try:
        first = audiences.plan(nurture, segment, campaign)  # bad input: one line, nothing written
    except audiences.AudienceError as error:
        fail(str(error))
    if dry_run:
        out.print(first.line(), markup=False, soft_wrap=True)
        finish(0)
    report = run(lambda: _bulk(nurture, segment, campaign, rate, concurrency))
    out.print(report.line(segment, campaign), markup=False, soft_wrap=True)
    finish(0)


async def _bulk(nurture: Any, segment: str, campaign: str, rate: float, concurrency: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from nurture import audiences

    with Progress(TextColumn(f"enrolling {segment} in {campaign}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as progress:
        task = progress.add_task("enroll", total=None)
        return await audiences.enroll_segment(
            nurture, segment, campaign, rate=rate, concurrency=concurrency,
            progress=lambda done, total: progress.update(task, completed=done, total=total))


# ---------------------------------------------------------------- segments
# These read the store only: no Temporal code is loaded (read commands stay quick).


def _segments_call(call: Callable[[], Any]) -> Any:
    from sqlalchemy.exc import DBAPIError

    from nurture.audiences import AudienceError

    try:
        return call()
    except AudienceError as error:
        fail(str(error))
    except DBAPIError as error:
        fail(f"database: {store_reason(error)}", 3)


@segment_app.command("list")
def segment_list(as_json: bool = JsonOpt) -> None:
    """The segments of campaigns/segments.yaml and what each asks."""
    from nurture import audiences
    from nurture.rules import flow_yaml
    from nurture.segments import describe

    found = _segments_call(lambda: audiences.segments_in_force(cfg()))
    rows = [{"name": name, "definition": describe(segment)} for name, segment in sorted(found.items())]
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("no segments (campaigns/segments.yaml defines them)")
        return
    table = table_of("segment", "conditions")
    for row in rows:
        table.add_row(Text(row["name"]), Text(flow_yaml(row["definition"])))
    out.print(table)


@segment_app.command("show")
def segment_show(name: str = typer.Argument(..., metavar="NAME", help="The segment's name."),
                 with_count: bool = typer.Option(False, "--count", help="Count the leads in it now."),
                 as_json: bool = JsonOpt) -> None:
    """One segment: its conditions and, with --count, how many leads are in it."""
    from nurture import audiences
    from nurture.rules import flow_yaml
    from nurture.segments import describe

    settings = cfg()
    segment = _segments_call(lambda: audiences.find(settings, name))
    document: dict[str, Any] = {"name": name, "definition": describe(segment)}
    if with_count:
        read_store(settings)
        document["count"] = _segments_call(lambda: audiences.count(settings, segment))
    if as_json:
        print_json(document)
        return
    out.print(f"{name}: {flow_yaml(document['definition'])}", markup=False, soft_wrap=True)
    if with_count:
        out.print(plural(document["count"], "lead"), markup=False)


@app.command()
def remove(email: str = EmailArg) -> None:
    """Take a lead out of its current campaign now (it leaves with reason `removed`)."""
    nurture = service()
    result = run(lambda: nurture.remove(email))
    out.print(f"{result.lead['email']} {result.message}: removed; stage {result.lead['stage']}", markup=False)
    finish(0)


@app.command()
def event(
    email: str = EmailArg,
    type_: str = typer.Argument(..., metavar="TYPE", help="e.g. email_click, page_view, quote_request."),
    url: Optional[str] = typer.Option(None, "--url", help="The page (page_view, email_click)."),
    asset: Optional[str] = typer.Option(None, "--asset", help="What was downloaded (content_download)."),
    form: Optional[str] = typer.Option(None, "--form", help="Which form (form_submit)."),
    event_name: Optional[str] = typer.Option(None, "--event", help="Which event (event_attended, webinars)."),
    campaign: Optional[str] = typer.Option(None, "--campaign", help="The campaign of the email it is about."),
    step: Optional[str] = typer.Option(None, "--step", help="The step of the email it is about."),
    at: Optional[str] = typer.Option(None, "--at", help="ISO 8601; defaults to now."),
) -> None:
    """Record an engagement event for a lead."""
    from nurture.journey import is_event_type

    if not is_event_type(type_):
        fail(f"TYPE: '{type_}' is not an event type (lower-case letters, digits and _)", 2)
    when = parse_at(at)
    nurture = service()
    result = run(lambda: nurture.record_event(email, type_, at=when, url=url, asset=asset, form=form,
                                              event=event_name, campaign=campaign, step=step))
    lead = result.lead
    out.print(f"{lead['email']}: {type_} recorded; score {lead['score']}, stage {lead['stage']}", markup=False)
    finish(0)


@app.command()
def bant(
    email: str = EmailArg,
    budget: Optional[str] = typer.Option(None, "--budget", help="yes|no"),
    authority: Optional[str] = typer.Option(None, "--authority", help="yes|no"),
    need: Optional[str] = typer.Option(None, "--need", help="yes|no"),
    timing: Optional[str] = typer.Option(None, "--timing", help="yes|no"),
) -> None:
    """Set BANT qualification facts (Budget, Authority, Need, Timing)."""
    given = {"budget": budget, "authority": authority, "need": need, "timing": timing}
    facts = {name: yes_no(name, value) for name, value in given.items() if value is not None}
    nurture = service()
    result = run(lambda: nurture.set_bant(email, facts))
    lead = result.lead
    out.print(f"{lead['email']}: stage {lead['stage']}, owner {lead['owner'] or '-'}", markup=False)
    finish(0)


@app.command()
def rescore(
    email: Optional[str] = typer.Argument(None, help="The lead to rescore (or --all)."),
    all_leads: bool = typer.Option(False, "--all", help="Every lead, with a progress bar."),
) -> None:
    """Recompute scores from the stored events under the funnel in force now.

    Each lead whose score changes gets one history entry with the difference; a lead
    that moves up qualifies as after any change, one that goes down keeps its stage.
    """
    if (email is None) == (not all_leads):
        fail("rescore: give one EMAIL or --all (see `nurture rescore --help`)", 2)
    nurture = service()
    if email is not None:
        result = run(lambda: nurture.rescore(email))
        lead = result.lead
        what = result.message or f"score {lead['score']} unchanged"
        out.print(f"{lead['email']}: {what}; stage {lead['stage']}", markup=False)
        finish(0)
    report = run(lambda: _rescore_all(nurture))
    for address, message in report.changed:
        out.print(f"{address}: {message}", markup=False)
    for address, why in report.failed:
        err.print(f"error: {address}: {why}", markup=False, soft_wrap=True)
    out.print(f"{plural(report.leads, 'lead')} rescored: {len(report.changed)} changed, {report.unchanged} unchanged"
              + (f", {len(report.failed)} failed" if report.failed else ""), markup=False)
    finish(1 if report.failed else 0)


async def _rescore_all(nurture: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("rescoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("rescore", total=None)
        return await nurture.rescore_all(progress=lambda done, total: progress.update(task, completed=done, total=total))


@app.command("import")
def import_csv(file: Path = typer.Argument(..., help="CSV with a header row of lead fields."),
               campaign: Optional[str] = typer.Option(None, "--campaign", help="Enroll each new lead.")) -> None:
    """Import leads from CSV: bad rows reported with their line numbers, good rows kept."""
    from nurture.importer import import_file

    nurture = service()
    report = run(lambda: import_file(nurture, file, campaign=campaign, console=err), unavailable_hint=(
        "; the rows stored so far are kept: run the same import again once Temporal answers"))
    for problem in report.problems:
        err.print(problem, markup=False, soft_wrap=True)
    out.print(f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged, "
              f"{report.rejected} rejected ({report.rows} rows in {report.seconds:.1f}s)")
    finish(1 if report.rejected else 0)


# ---------------------------------------------------------------- handoffs and outbox


@handoff_app.command("list")
def handoff_list(as_json: bool = JsonOpt) -> None:
    """Handoffs to sales, oldest first."""
    from nurture import crud
    from nurture.models import as_utc
    from nurture.vocabulary import iso

    nurture = service()
    with nurture.session() as session:
        rows = [{"id": h.id, "email": h.email, "owner": h.owner, "status": h.status,
                 "created_at": iso(as_utc(h.created_at)), "score": h.score, "grade": h.grade,
                 "reason": h.reason, "webhook": h.webhook_status} for h in crud.list_handoffs(session=session)]
    if as_json:
        print_json(rows)
        return
    created = when.header("created")
    table = table_of("id", "email", "owner", "status", created, "score", "grade", "reason", "webhook",
                     numeric=("id", "score"))
    for row in rows:
        table.add_row(str(row["id"]), row["email"] or "(forgotten)", row["owner"] or "-", row["status"],
                      when.clock(row["created_at"]), str(row["score"]), row["grade"], Text(row["reason"] or ""),
                      Text(row["webhook"] or "-"))  # Text: a reason typed by sales is data, not markup
    out.print(table)


def _handoff(handoff_id: int, outcome: str, reason: str | None) -> None:
    nurture = service()
    result = run(lambda: nurture.handoff_action(handoff_id, outcome, reason))
    lead = result.lead
    out.print(f"handoff {handoff_id} {outcome}: {lead['email']} is now {lead['stage']}"
              + (f" (campaign {lead['campaign']})" if lead.get("campaign") else ""), markup=False)
    finish(0)


@handoff_app.command("accept")
def handoff_accept(handoff_id: int = HandoffArg) -> None:
    """Sales accepts: the lead becomes an opportunity."""
    _handoff(handoff_id, "accept", None)


@handoff_app.command("reject")
def handoff_reject(handoff_id: int = HandoffArg,
                   reason: str = typer.Option(..., "--reason", help="Why (kept in history).")) -> None:
    """Sales rejects: the lead is recycled into nurture, score reset."""
    _handoff(handoff_id, "reject", reason)


@handoff_app.command("won")
def handoff_won(handoff_id: int = HandoffArg) -> None:
    """The deal is won: the lead becomes a customer."""
    _handoff(handoff_id, "won", None)


@handoff_app.command("lost")
def handoff_lost(handoff_id: int = HandoffArg,
                 reason: str = typer.Option(..., "--reason", help="Why (kept in history).")) -> None:
    """The deal is lost: the lead is recycled into nurture."""
    _handoff(handoff_id, "lost", reason)


@app.command()
def outbox(as_json: bool = JsonOpt) -> None:
    """Emails sent in local-outbox mode (and every send's status), then test sends, then
    those waiting to leave."""
    from nurture import crud
    from nurture.vocabulary import iso
    from nurture.models import as_utc
    from nurture.outbox import read_proofs

    nurture = service()
    with nurture.session() as session:
        rows = [{"to": e.to, "subject": e.subject, "campaign": e.campaign, "step": e.step,
                 "template": e.template, "variant": e.variant, "status": e.status, "provider": e.provider,
                 "sent_at": iso(as_utc(e.sent_at)), "send_id": e.send_id,
                 "file": str(nurture.settings.outbox_dir / f"{e.send_id}.eml") if e.provider == "outbox" else None,
                 "test": False}
                for e in crud.list_outbox(session=session)]
        held = [] if as_json else crud.held_emails(session=session, holds=SEND_HOLDS)
    rows += [{**proof, "campaign": None, "step": None, "template": None, "variant": None, "status": "sent",
              "provider": "outbox", "sent_at": iso(as_utc(proof["sent_at"])), "send_id": Path(proof["file"]).stem,
              "test": True} for proof in read_proofs(nurture.settings.outbox_dir)]
    if as_json:
        print_json(rows)
        return
    table = table_of(when.header("sent"), "to", "subject", "campaign", "step", "status")
    for row in rows:
        table.add_row(when.clock(row["sent_at"]), row["to"] or "(forgotten)", Text(row["subject"] or ""),
                      row["campaign"] or "-", row["step"] or "-", row["status"])
    out.print(table)
    render_held(held, sent=len(rows))


def render_held(held: list[Any], *, sent: int) -> None:
    """Emails not in the outbox yet because they wait (send window, frequency cap): an
    empty outbox at night is not a fault, and this says so."""
    if not held:
        if not sent:
            out.print("nothing sent yet, and no email is waiting to leave", markup=False)
        return
    out.print(f"{'nothing sent yet; ' if not sent else ''}{len(held)} email(s) waiting to leave:", markup=False)
    for lead in held:
        until = when.labelled(lead.next_action_at, lead.timezone)
        out.print(Text(f"  {lead.email}: {lead.campaign}, step {lead.step}, waits for the {lead.waiting_for} until {until}"),
                  soft_wrap=True)


# ---------------------------------------------------------------- emails

LeadFileOpt = typer.Option(None, "--lead", help="LEAD.json: an object of lead fields (email required).")
LeadEmailOpt = typer.Option(None, "--email", help="A lead in the store, by address.")
CampaignOpt = typer.Option(None, "--campaign", help="The campaign whose step sends it (sender, subject variant).")
StepOpt = typer.Option(None, "--step", help="The step id within --campaign.")


def _email_lead(settings: Settings, lead: Optional[Path], email: Optional[str]) -> Any:
    """The lead to render for: --lead FILE, --email (the store), else the sample lead."""
    # nurture.proofs imports the send activity's module (temporalio): only commands that need it load it.
    from nurture.db import upgrade
    from nurture.proofs import file_lead, sample_lead, stored_lead

    if lead is not None and email is not None:
        fail("give --lead or --email, not both")
    if email is not None:
        upgrade_quietly(settings, upgrade)
        return stored_lead(settings, email)
    return file_lead(lead) if lead is not None else sample_lead()


@email_app.command("preview")
def email_preview(
    name: str = typer.Argument(..., help="The email: templates/email/NAME.html and NAME.txt."),
    lead: Optional[Path] = LeadFileOpt,
    email: Optional[str] = LeadEmailOpt,
    campaign: Optional[str] = CampaignOpt,
    step: Optional[str] = StepOpt,
    html: Optional[Path] = typer.Option(None, "--html", help="Write the HTML part to this file."),
    text_only: bool = typer.Option(False, "--text", help="Print the text part only."),
    as_json: bool = JsonOpt,
) -> None:
    """Exactly what the send would send this lead: prints the headers and the text part."""
    from nurture.proofs import preview
    from nurture.service import UserError

    settings = cfg()
    try:
        shown = preview(settings, name, _email_lead(settings, lead, email), campaign=campaign, step=step)
        if html is not None:
            html.write_text(shown.email.html, encoding="utf-8")
    except UserError as error:
        fail(str(error))
    except OSError as error:
        fail(f"--html {html}: cannot write it: {error.strerror or error}")
    if as_json:
        print_json(shown.as_json())
        return
    if text_only:
        sys.stdout.write(strip_controls(shown.email.text))
        return
    data = shown.as_json()
    for label, key in (("From", "from"), ("Reply-To", "reply_to"), ("To", "to"), ("Subject", "subject")):
        if data[key]:
            out.print(Text(f"{label}: {data[key]}"), soft_wrap=True)
    where = [f"campaign {data['campaign']} step {data['step']}" if data["campaign"] else "no campaign",
             f"template {name}{'.' + data['locale'] if data['locale'] else ''}"]
    if data["variant"] is not None:
        where.append(f"subject variant {data['variant']}")
    out.print(Text(f"({'; '.join(where)}; HTML: {len(shown.email.html.encode())} bytes"
                   + (f", written to {html})" if html else ", --html FILE writes it)")), soft_wrap=True)
    out.print()
    sys.stdout.flush()
    text = strip_controls(shown.email.text)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@email_app.command("test-send")
def email_test_send(
    name: str = typer.Argument(..., help="The email: templates/email/NAME.html and NAME.txt."),
    to: str = typer.Option(..., "--to", help="Who gets the proof: a web app user or one of NURTURE_TEST_RECIPIENTS."),
    lead: Optional[Path] = LeadFileOpt,
    email: Optional[str] = LeadEmailOpt,
    campaign: Optional[str] = CampaignOpt,
    step: Optional[str] = StepOpt,
) -> None:
    """Send one proof, subject prefixed [TEST]: recorded on no lead, counted in no stats."""
    from nurture.db import upgrade
    from nurture.proofs import send_test
    from nurture.service import UserError

    settings = cfg()
    try:
        chosen = _email_lead(settings, lead, email)
        upgrade_quietly(settings, upgrade)  # the rate limit is counted in the store
        sent = send_test(settings, name, to, chosen, campaign=campaign, step=step)
    except UserError as error:
        fail(str(error))
    where = f"written to {sent.file}" if sent.file else f"sent through SendGrid (message id {sent.message_id or '?'})"
    out.print(Text(f"test send to {to}: \"{sent.subject}\" {where}"), soft_wrap=True)


# ---------------------------------------------------------------- web app users


def _store() -> Any:
    """The session factory of a migrated store, without the Temporal client: user
    commands never talk to Temporal (and stay fast)."""
    from nurture.db import session_scope, upgrade

    settings = cfg()
    upgrade_quietly(settings, upgrade)
    return lambda: session_scope(settings.db_url)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        fail("password: stdin is not a terminal; pipe the password with --password-stdin", 2)
    import getpass

    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        fail("password: the two entries differ; nothing was changed")
    return first


@user_app.command("add")
def user_add(
    email: str = typer.Argument(..., metavar="EMAIL", help="The user's email address (they sign in with it)."),
    role: str = typer.Option(..., "--role", help="marketer, sales or admin."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from the first line of stdin."),
    zone: Optional[str] = typer.Option(None, "--timezone", metavar="ZONE",
                                       help="The zone their pages show times in, e.g. Europe/Paris (default UTC)."),
) -> None:
    """Add a web app user; without --password-stdin, asks for the password twice (hidden)."""
    # Imported here: argon2 and the store are not needed by other commands.
    from nurture import crud, users

    try:
        timezone = users.check_zone(zone)
    except users.UserProblem as error:
        fail(f"--{error}")
    password = _read_password(password_stdin)
    try:
        address = users.check_new(email, role, password)
    except users.UserProblem as error:
        fail(str(error))
    with _store()() as session:
        added = crud.add_user(session=session, email=address, role=role, password_hash=users.hash_password(password),
                              timezone=timezone)
    if added is None:
        fail(f"{address}: a user with this address already exists (remove it first)")
    out.print(f"user {address} added ({role})", markup=False)


@user_app.command("list")
def user_list(as_json: bool = JsonOpt) -> None:
    """The web app users and their roles."""
    from nurture import crud
    from nurture.journey import iso
    from nurture.models import as_utc

    with _store()() as session:
        rows = [{"email": u.email, "role": u.role, "timezone": u.timezone or "UTC", "created_at": iso(as_utc(u.created_at))}
                for u in crud.list_users(session=session)]
    if as_json:
        print_json(rows)
        return
    table = table_of("email", "role", "time zone", when.header("created"))
    for row in rows:
        table.add_row(row["email"], row["role"], row["timezone"], when.clock(row["created_at"]))
    out.print(table)


@user_app.command("remove")
def user_remove(email: str = typer.Argument(..., metavar="EMAIL", help="The user's email address.")) -> None:
    """Remove a web app user; their sessions stop working at once."""
    from nurture import addresses, crud

    try:
        address = addresses.canonical_email(email)
    except ValueError as error:
        fail(f"EMAIL: {error}")
    with _store()() as session:
        removed = crud.remove_user(session=session, email=address)
    if not removed:
        fail(f"{address}: no such user")
    out.print(f"user {address} removed", markup=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors too are one line on stderr (exit 2), not a usage box."""
    from typer import Abort, Exit, TyperException
    from typer._click.exceptions import NoArgsIsHelpError

    # NURTURE_HOME holds the store, the signing secret and every email sent: what this
    # process creates (and the dev server it starts) is for its owner only.
    os.umask(0o077)
    # A one-shot command says why it failed in one line; the SDK core's retry warnings
    # would only repeat it (`up` and `worker` raise them back to warnings).
    logging.getLogger(CORE_LOGGER).setLevel(logging.ERROR)
    try:
        result = app(args=argv, prog_name="nurture", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except Exit as exit_:
        code = exit_.exit_code
    except Abort:
        err.print("aborted")
        code = 130
    except NoArgsIsHelpError as error:  # `nurture lead` alone: show that group's help
        if getattr(error, "ctx", None) is not None:
            sys.stdout.write(error.ctx.get_help() + "\n")
        code = 0 if argv == [] else 2
    except TyperException as error:
        where = error.ctx.command_path if getattr(error, "ctx", None) else "nurture"
        err.print(f"error: {where}: {error.format_message()} (see `{where} --help`)", markup=False, soft_wrap=True)
        code = error.exit_code
    finish(code)


if __name__ == "__main__":
    main()
