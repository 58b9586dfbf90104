"""A broken funnel.yaml or campaign file never ends a journey (issue 17.0).

Each test breaks a file under running journeys on the real dev server (time skipped),
then repairs it: no workflow fails, no lead leaves its campaign, no enrollment is lost.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console
from temporalio.client import WorkflowExecutionStatus

from nurture.journey import LeadEvent
from nurture.lastvalid import ConfigFiles
from nurture.messages import EventsInput
from nurture.service import UserError
from nurture.temporal import TemporalUnavailable
from tests.conftest import ROOT, _stack, make_settings
from tests.test_cli import cli  # noqa: F401 - the fixture, over this module's stack
from tests.test_webhooks import serve
from workflows.lead import LeadWorkflow

MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
TRIAL = {"first_name": "Ann", "job_title": "VP Marketing", "company_size": 200, "source": "web_form",
         "timezone": "Europe/Paris"}
PARTNER_CAMPAIGN = """\
name: partners
sender: {from: "Acme <hello@acme.example>"}
enroll: {where: {source: [partner]}, auto_on: [created], priority: 1}
steps:
  - send: welcome
  - wait: 3d
"""


def campaigns_copy(home: Path) -> Path:
    directory = home / "campaigns"
    shutil.copytree(ROOT / "campaigns", directory)
    (directory / "partners.yaml").write_text(PARTNER_CAMPAIGN, encoding="utf-8")
    return directory


@pytest.fixture
async def stack(temporal_env, tmp_path):
    """The sample campaigns (and a partners campaign) in a folder of the test's own."""
    async with _stack(temporal_env, make_settings(tmp_path, campaigns_dir=campaigns_copy(tmp_path))) as value:
        yield value


def break_file(path: Path) -> str:
    """One unknown key, as a marketer's typo; returns the text to put back."""
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "\nunknown_key: 1\n", encoding="utf-8")
    return text


def reasons(lead: dict) -> list[str]:
    return [entry["reason"] for entry in lead["history"]]


async def assert_running(stack, *emails: str) -> None:
    for email in emails:
        description = await stack.handle(email).describe()
        assert description.status == WorkflowExecutionStatus.RUNNING, (email, description.status)


async def test_a_broken_funnel_keeps_journeys_on_its_last_valid_version(stack, cli):
    directory = stack.settings.campaigns_dir
    ann = "ann@globex.example"
    assert (await stack.add(ann, **TRIAL))["campaign"] == "b2b-trial"
    funnel = directory / "funnel.yaml"
    text = break_file(funnel)
    assert "funnel.yaml is invalid" in ConfigFiles(stack.settings).broken()[0].line()

    # past the funnel's re-read interval, the next events meet the broken file: a signal
    # from the webhook dispatcher (this failed the workflow), then an update
    await stack.forward(ann, 2 * MINUTE)
    view = LeadEvent(id="view-1", type="page_view", at=datetime.now(timezone.utc), url="/blog")
    await stack.handle(ann).signal(LeadWorkflow.events, EventsInput([view]))
    lead = (await stack.nurture.record_event(ann, "email_click")).lead
    assert lead["score"] == 7 and lead["campaign"] == "b2b-trial"  # scored by the last valid version
    # a lead created meanwhile starts on it too and enters its campaign
    bob = "bob@initech.example"
    assert (await stack.add(bob, **TRIAL))["campaign"] == "b2b-trial"
    await assert_running(stack, ann, bob)
    shown = await cli("funnel", "show")  # what is in force, and that the file is broken
    assert shown.returncode == 1 and "# funnel in force: the last valid version" in shown.stdout
    assert shown.stderr.count("\n") == 1 and "funnel.yaml is invalid, running on its last valid version" in shown.stderr
    # a rescore asks for the file as it is now: refused, saying why
    with pytest.raises(UserError, match=r"rescore refused while funnel.yaml is invalid: .*\.yaml:\d+: unknown_key"):
        await stack.nurture.rescore(ann)

    # repaired, with email_click now worth 7: picked up a minute later
    funnel.write_text(text.replace("email_click: 5", "email_click: 7"), encoding="utf-8")
    await stack.forward(ann, 2 * MINUTE)
    lead = (await stack.nurture.record_event(ann, "email_click", event_id="second-click")).lead
    assert lead["score"] == 14 and lead["campaign"] == "b2b-trial"
    assert not ConfigFiles(stack.settings).broken()
    lead = await stack.until(ann, lambda lead: lead["step"] == "wait-click")
    assert not any(r.startswith("left campaign") for r in reasons(lead))
    await assert_running(stack, ann, bob)


async def test_a_broken_campaign_file_keeps_its_last_valid_version_for_old_and_new_leads(stack):
    directory = stack.settings.campaigns_dir
    ann = "ann@globex.example"
    assert (await stack.add(ann, **TRIAL))["campaign"] == "b2b-trial"
    text = break_file(directory / "b2b-trial.yaml")

    bob = "bob@initech.example"
    assert (await stack.add(bob, **TRIAL))["campaign"] == "b2b-trial"  # its last valid version
    carol = "carol@partner.example"
    assert (await stack.add(carol, source="partner"))["campaign"] == "partners"  # the others still run
    lead = await stack.until(ann, lambda lead: lead["step"] == "wait-click")
    assert lead["campaign"] == "b2b-trial"
    (directory / "b2b-trial.yaml").write_text(text, encoding="utf-8")
    lead = await stack.until(bob, lambda lead: lead["step"] == "wait-click")
    assert lead["campaign"] == "b2b-trial"
    await assert_running(stack, ann, bob, carol)


async def test_a_lead_waits_for_a_campaign_file_never_seen_valid_and_enters_once_it_is(stack):
    directory = stack.settings.campaigns_dir
    text = break_file(directory / "b2b-trial.yaml")  # broken before the worker read it: no copy
    dan = "dan@globex.example"
    lead = await stack.add(dan, **TRIAL)
    assert lead["campaign"] is None
    assert any("automatic enrollment (created) waits" in r and "b2b-trial.yaml invalid" in r
               for r in reasons(lead))
    carol = "carol@partner.example"
    assert (await stack.add(carol, source="partner"))["campaign"] == "partners"

    await stack.forward(dan, 3 * HOUR)  # still broken: still waiting, still running
    assert stack.show(dan)["campaign"] is None
    await assert_running(stack, dan)

    (directory / "b2b-trial.yaml").write_text(text, encoding="utf-8")
    lead = await stack.until(dan, lambda lead: lead["campaign"] == "b2b-trial", step=HOUR, limit=2 * HOUR)
    assert any("auto_on created, once the files were valid" in r for r in reasons(lead))
    lead = await stack.until(dan, lambda lead: lead["step"] == "wait-click")
    assert sum(r.startswith("enrolled in b2b-trial") for r in reasons(lead)) == 1
    await assert_running(stack, dan, carol)


async def test_without_any_valid_funnel_a_lead_keeps_its_own_and_a_new_lead_waits_for_the_file(temporal_env, tmp_path):
    directory = campaigns_copy(tmp_path)
    settings = make_settings(tmp_path, campaigns_dir=directory, update_timeout=3.0)
    async with _stack(temporal_env, settings) as stack:
        ann = "ann@globex.example"
        assert (await stack.add(ann, **TRIAL))["campaign"] == "b2b-trial"
        funnel = directory / "funnel.yaml"
        text = break_file(funnel)
        shutil.rmtree(tmp_path / "last-valid")  # no valid version left on this machine

        await stack.forward(ann, 2 * MINUTE)
        lead = (await stack.nurture.record_event(ann, "email_click")).lead
        assert lead["score"] == 5 and lead["campaign"] == "b2b-trial"  # the funnel its workflow holds

        bob = "bob@initech.example"
        with pytest.raises(TemporalUnavailable, match="funnel.yaml is invalid, no valid version yet"):
            await stack.add(bob, **TRIAL)
        await assert_running(stack, ann, bob)
        funnel.write_text(text, encoding="utf-8")
        await stack.forward(bob, 2 * MINUTE)  # its next look at the file finds it valid
        lead = await stack.until(bob, lambda lead: lead["campaign"] == "b2b-trial", step=MINUTE, limit=5 * MINUTE)
        assert lead["grade"] == "A"
        await assert_running(stack, ann, bob)


async def test_healthz_campaign_list_and_lead_show_say_which_file_is_broken(stack, cli):
    ann = "ann@globex.example"
    await stack.add(ann, **TRIAL)
    async with serve(stack) as http:
        assert (await http.get("/healthz")).json() == {"ok": True}
        text = break_file(stack.settings.campaigns_dir / "b2b-trial.yaml")
        health = await http.get("/healthz")
        assert health.status_code == 200  # alive and serving: journeys go on
        (line,) = health.json()["degraded"]
        assert health.json()["ok"] is False
        assert "b2b-trial.yaml is invalid, running on its last valid version" in line and "unknown_key" in line

        listed = await cli("campaign", "list", "--json")
        assert listed.returncode == 1
        assert [c["name"] for c in json.loads(listed.stdout)] == ["b2b-trial", "partners", "recycled-nurture"]
        assert "b2b-trial.yaml is invalid" in listed.stderr and "Traceback" not in listed.stderr
        shown = await cli("lead", "show", ann)
        assert shown.returncode == 0 and "warning:" in shown.stdout and "b2b-trial.yaml is invalid" in shown.stdout

        (stack.settings.campaigns_dir / "b2b-trial.yaml").write_text(text, encoding="utf-8")
        assert (await http.get("/healthz")).json() == {"ok": True}
        assert (await cli("campaign", "list")).returncode == 0
        assert "warning" not in (await cli("lead", "show", ann)).stdout


async def test_the_terminal_of_nurture_up_says_when_a_file_breaks_and_when_it_is_fixed(tmp_path):
    from nurture.runner import _report_broken_files

    settings = make_settings(tmp_path, campaigns_dir=campaigns_copy(tmp_path))
    console = Console(record=True, width=80)
    stop = asyncio.Event()
    watcher = asyncio.create_task(_report_broken_files(settings, console, stop))
    await asyncio.sleep(0.3)  # it has seen the files valid: nothing to say
    assert console.export_text(clear=False) == ""
    text = break_file(settings.funnel_file)
    for _ in range(60):
        await asyncio.sleep(0.1)
        if "config error" in console.export_text(clear=False):
            break
    settings.funnel_file.write_text(text, encoding="utf-8")
    for _ in range(60):
        await asyncio.sleep(0.1)
        if "config fixed" in console.export_text(clear=False):
            break
    stop.set()
    await watcher
    lines = console.export_text().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"config error {settings.funnel_file} is invalid, running on its last valid version")
    assert "unknown_key" in lines[0]
    assert lines[1] == f"config fixed {settings.funnel_file} is valid again and in force"


def test_a_removed_campaign_file_takes_its_last_valid_version_along(tmp_path):
    settings = make_settings(tmp_path, campaigns_dir=campaigns_copy(tmp_path))
    config = ConfigFiles(settings)
    names = lambda: [campaign.name for campaign in config.campaigns()]  # noqa: E731
    assert names() == ["b2b-trial", "partners", "recycled-nurture"]
    partners = settings.campaigns_dir / "partners.yaml"
    break_file(partners)
    assert names() == ["b2b-trial", "partners", "recycled-nurture"]  # its last valid version
    partners.unlink()
    assert names() == ["b2b-trial", "recycled-nurture"] and not config.broken()
    partners.write_text(PARTNER_CAMPAIGN + "unknown_key: 1\n", encoding="utf-8")
    assert names() == ["b2b-trial", "recycled-nurture"]  # a new file, broken: not the old one back
    (broken,) = config.broken()
    assert broken.line().startswith(f"{partners} is invalid, no valid version yet: not in use until it is fixed")


async def test_a_pending_enrollment_survives_continue_as_new_and_a_new_worker(temporal_env, tmp_path):
    directory = campaigns_copy(tmp_path)
    text = break_file(directory / "b2b-trial.yaml")
    async with _stack(temporal_env, make_settings(tmp_path, campaigns_dir=directory, max_history=60)) as stack:
        gus = "gus@wayne.example"
        await stack.add(gus, **TRIAL)
        first_run = (await stack.handle(gus).describe()).run_id
        for index in range(12):  # enough history to continue as new while it waits
            await stack.nurture.record_event(gus, "email_open", event_id=f"open-{index}")
        # (the server starts a run that follows a short one a second later, in real time)
        for _ in range(100):
            if (await stack.handle(gus).describe()).run_id != first_run:
                break
            await asyncio.sleep(0.1)
        assert (await stack.handle(gus).describe()).run_id != first_run
        await stack.worker.__aexit__(None, None, None)  # another worker takes over
        async with stack.start_worker():
            (directory / "b2b-trial.yaml").write_text(text, encoding="utf-8")
            lead = await stack.until(gus, lambda lead: lead["campaign"] == "b2b-trial", step=MINUTE, limit=HOUR)
            assert lead["score"] == 12
            assert sum(r.startswith("enrolled in b2b-trial") for r in reasons(lead)) == 1
            await assert_running(stack, gus)


async def test_the_funnel_a_lead_holds_is_carried_over_continue_as_new(temporal_env, tmp_path):
    directory = campaigns_copy(tmp_path)
    settings = make_settings(tmp_path, campaigns_dir=directory, max_history=60, update_timeout=5.0)
    async with _stack(temporal_env, settings) as stack:
        hal = "hal@cyberdyne.example"
        await stack.add(hal, **TRIAL)
        first_run = (await stack.handle(hal).describe()).run_id
        break_file(directory / "funnel.yaml")
        shutil.rmtree(tmp_path / "last-valid")  # no valid funnel anywhere but in the workflow
        await stack.forward(hal, 2 * MINUTE)
        for index in range(12):  # enough history to continue as new
            await stack.nurture.record_event(hal, "email_open", event_id=f"open-{index}")
        for _ in range(100):  # (the next run starts a second later, in real time)
            if (await stack.handle(hal).describe()).run_id != first_run:
                break
            await asyncio.sleep(0.1)
        assert (await stack.handle(hal).describe()).run_id != first_run
        lead = (await stack.nurture.record_event(hal, "email_click")).lead
        assert lead["score"] == 17 and lead["campaign"] == "b2b-trial"
        await assert_running(stack, hal)
