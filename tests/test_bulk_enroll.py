"""`nurture enroll --segment NAME CAMPAIGN` as a user runs it (a subprocess against the
test server and this test's worker): bad input refused in one line with nothing written,
each lead enrolled once, a re-run and a run killed mid-way enrolling no lead twice."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from nurture.models import BulkEnrollment, BulkRun, CampaignEnrollment
from nurture.service import LeadIn
from tests.conftest import ROOT, _stack, make_settings

CAMPAIGN = """\
name: spring-followup
description: Leads of the spring webinar
sender: {from: "Acme <hello@acme.example>"}
enroll:
  stages: [lead]
  where: {source: web_form}
  reenroll: after_exit        # the workflow alone would let a lead in again once it left
steps:
  - {id: breath, wait: 1s}
"""
SEGMENTS = """\
segments:
  fr: {where: {country: FR}}
  nobody: {where: {country: JP}}
"""


@pytest.fixture
async def bulk(temporal_env, tmp_path):
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    shutil.copy(ROOT / "campaigns" / "funnel.yaml", campaigns / "funnel.yaml")
    (campaigns / "spring-followup.yaml").write_text(CAMPAIGN)
    (campaigns / "segments.yaml").write_text(SEGMENTS)
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        yield stack


def cli_env(stack: Any) -> dict[str, str]:
    env = {**os.environ,
           "NURTURE_HOME": str(stack.settings.home), "NURTURE_DATABASE_URL": stack.settings.db_url,
           "NURTURE_TEMPORAL_ADDRESS": stack.env.server.address, "NURTURE_TASK_QUEUE": stack.settings.task_queue,
           "NURTURE_WORKFLOW_PREFIX": stack.settings.workflow_prefix,
           "NURTURE_CAMPAIGNS_DIR": str(stack.settings.campaigns_dir),
           "NURTURE_TEMPLATES_DIR": str(stack.settings.templates_dir), "NURTURE_SECRET": "cli-test-secret",
           "NURTURE_UPDATE_TIMEOUT": "20"}
    env.pop("SENDGRID_API_KEY", None)
    return env


async def start(stack: Any, *args: str) -> asyncio.subprocess.Process:
    # A subprocess of this loop: the test's worker runs on it and must keep serving.
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nurture.cli", *args, env=cli_env(stack),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def cli(stack: Any, *args: str) -> tuple[int, str, str]:
    process = await start(stack, *args)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode or 0, out.decode(), err.decode()


async def add_leads(stack: Any, count: int, **fields: Any) -> list[str]:
    tag = fields.get("source", "web_form").replace("_", "-")
    emails = [f"lead{number}@{tag}.example" for number in range(count)]
    for email in emails:
        await stack.nurture.add_lead(LeadIn(email=email, **{"country": "FR", "source": "web_form", **fields}))
    return emails


def enrollments(stack: Any) -> dict[str, int]:
    """Each lead's journeys through spring-followup, by address."""
    from nurture.models import Lead

    with stack.session() as session:
        rows = session.execute(select(Lead.email, func.count(CampaignEnrollment.number))
                               .join(CampaignEnrollment, CampaignEnrollment.lead_key == Lead.key)
                               .where(CampaignEnrollment.campaign == "spring-followup").group_by(Lead.email)).all()
    return {email: int(count) for email, count in rows}


def bulk_rows(stack: Any) -> tuple[int, int]:
    with stack.session() as session:
        return (int(session.execute(select(func.count()).select_from(BulkRun)).scalar_one()),
                int(session.execute(select(func.count()).select_from(BulkEnrollment)).scalar_one()))


async def all_left(stack: Any, emails: list[str]) -> None:
    """Wait (real time: the campaign's one wait is a second) until no lead is in it."""
    deadline = time.monotonic() + 30
    while any(stack.show(email)["campaign"] for email in emails):
        assert time.monotonic() < deadline, [stack.show(email)["campaign"] for email in emails]
        await asyncio.sleep(0.3)


async def test_bad_input_is_one_line_and_writes_nothing(bulk):
    await add_leads(bulk, 2)
    cases = [(("enroll", "--segment", "nobdy", "spring-followup"), "error: unknown segment 'nobdy' (did you mean 'nobody'?)"),
             (("enroll", "--segment", "fr", "spring-folowup"), "error: unknown campaign 'spring-folowup'"),
             (("enroll", "--segment", "nobody", "spring-followup"),
              "error: segment 'nobody' matches no lead: nothing to enroll"),
             (("enroll", "--segment", "nobody", "spring-followup", "--dry-run"),
              "error: segment 'nobody' matches no lead: nothing to enroll")]
    for args, says in cases:
        code, out, err = await cli(bulk, *args)
        assert code == 1, (args, out, err)
        assert err.strip().splitlines() == [err.strip()] and err.startswith(says), (args, err)
        assert "Traceback" not in err
    assert bulk_rows(bulk) == (0, 0)
    assert enrollments(bulk) == {}

    await bulk.nurture.control_campaign("spring-followup", "pause")
    code, out, err = await cli(bulk, "enroll", "--segment", "fr", "spring-followup")
    assert code == 1 and err.strip() == ("error: campaign 'spring-followup' is paused: it takes no leads "
                                         "(nurture campaign resume spring-followup)"), err
    assert bulk_rows(bulk) == (0, 0)


async def test_each_lead_is_enrolled_once_and_a_rerun_enrolls_none(bulk):
    emails = await add_leads(bulk, 5)
    await add_leads(bulk, 1, source="import", first_name="Other")  # fr, but not the campaign's enroll.where
    code, out, err = await cli(bulk, "enroll", "--segment", "fr", "spring-followup", "--dry-run")
    assert code == 0, err
    assert out.strip() == ("segment fr: 6 leads; 5 would enter spring-followup, "
                           "1 skipped (1 not matching the campaign's enroll.where)")
    assert bulk_rows(bulk) == (0, 0)  # a dry run writes nothing

    began = time.monotonic()
    code, out, err = await cli(bulk, "enroll", "--segment", "fr", "spring-followup", "--rate", "4")
    assert code == 0, err
    assert time.monotonic() - began >= 1.0  # 5 at 4 a second, spread evenly: paced
    assert out.strip() == ("5 enrolled in spring-followup from segment fr; "
                           "skipped: 1 not matching the campaign's enroll.where")
    assert enrollments(bulk) == {email: 1 for email in emails}

    await all_left(bulk, emails)  # completed: reenroll after_exit would let each in again
    code, out, err = await cli(bulk, "enroll", "--segment", "fr", "spring-followup")
    assert code == 0, err
    assert out.strip() == ("0 enrolled in spring-followup from segment fr; skipped: "
                           "5 enrolled by an earlier run of this command, 1 not matching the campaign's enroll.where")
    assert enrollments(bulk) == {email: 1 for email in emails}
    # The run's record is what held them back: one by hand enters again.
    await bulk.nurture.enroll(emails[0], "spring-followup")
    assert enrollments(bulk)[emails[0]] == 2


async def test_a_run_killed_mid_way_and_run_again_enrolls_every_lead_once(bulk):
    emails = await add_leads(bulk, 24)
    process = await start(bulk, "enroll", "--segment", "fr", "spring-followup", "--rate", "8", "--concurrency", "3")
    deadline = time.monotonic() + 60
    while len(enrollments(bulk)) < 6:
        assert time.monotonic() < deadline and process.returncode is None
        await asyncio.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    await process.wait()
    first = enrollments(bulk)
    assert 6 <= len(first) < len(emails), len(first)  # really killed mid-way

    await all_left(bulk, list(first))  # those it enrolled have left: the workflow would take them again
    code, out, err = await cli(bulk, "enroll", "--segment", "fr", "spring-followup", "--rate", "50")
    assert code == 0, err
    assert enrollments(bulk) == {email: 1 for email in emails}
    enrolled_now = int(out.split(" enrolled in ")[0])
    settled = int(out.split("; ")[1].split(" found enrolled")[0]) if "found enrolled" in out else 0
    assert enrolled_now + settled + int(out.split("skipped: ")[1].split(" enrolled by")[0]) == len(emails), out
