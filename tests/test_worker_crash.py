"""A worker process killed (SIGKILL) mid-journey and restarted: nothing is lost and
no email goes out twice, counted at the fake SendGrid by send id."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from nurture import crud, journey
from nurture.db import session_scope, upgrade
from nurture.service import LeadIn, Nurture
from tests.conftest import ROOT, make_settings
from tests.faults._support import until

LEADS = [f"lead{index}@crash.example" for index in range(6)]
STEPS = ["welcome", "case-study", "reminder", "end"]  # the sample campaign's no-click path


def worker_process(settings, env_address: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NURTURE_HOME": str(settings.home),
        "NURTURE_DATABASE_URL": settings.db_url,
        "NURTURE_TEMPORAL_ADDRESS": env_address,
        "NURTURE_TASK_QUEUE": settings.task_queue,
        "NURTURE_WORKFLOW_PREFIX": settings.workflow_prefix,
        "NURTURE_CAMPAIGNS_DIR": str(settings.campaigns_dir),
        "NURTURE_TEMPLATES_DIR": str(settings.templates_dir),
        "NURTURE_SECRET": settings.secret,
        "SENDGRID_API_KEY": settings.sendgrid_api_key,
        "NURTURE_SENDGRID_API_HOST": settings.sendgrid_api_host,
        "NURTURE_SENDGRID_TIMEOUT": "5",
    }
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, str(ROOT / "worker.py")], env=env, stdout=out, stderr=out,
                                cwd=str(ROOT))


async def test_a_killed_worker_loses_nothing_and_sends_nothing_twice(temporal_env, tmp_path, fake_sendgrid):
    settings = make_settings(tmp_path, sendgrid_api_key=fake_sendgrid.api_key, sendgrid_api_host=fake_sendgrid.url)
    upgrade(settings.db_url)
    nurture = Nurture(settings, temporal_env.client)
    log = tmp_path / "worker.log"
    worker = worker_process(settings, temporal_env.server.address, log)
    try:
        for email in LEADS:
            await nurture.add_lead(LeadIn(email=email, source="web_form"))
        handles = [temporal_env.client.get_workflow_handle(settings.workflow_id(journey.lead_key(e))) for e in LEADS]
        await asyncio.gather(*(temporal_env.fast_forward(h, timedelta(days=1)) for h in handles))

        # every send answers slowly from now on: the kill lands while emails are in flight
        fake_sendgrid.fail_rate(1.0, statuses=(), slow_seconds=1.0)
        moving = asyncio.gather(*(temporal_env.fast_forward(h, timedelta(days=3)) for h in handles))
        # Kill once a second email has reached SendGrid (it is answered a second later):
        # a fixed sleep raced a slow CI machine that had sent none yet.
        assert await until(lambda: len(fake_sendgrid.messages) > len(LEADS), 60, every=0.02), "no second email left"
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        in_flight = len(fake_sendgrid.messages)
        fake_sendgrid.fail_rate(0.0)
        worker = worker_process(settings, temporal_env.server.address, log)
        await asyncio.wait_for(moving, timeout=120)
        await asyncio.gather(*(temporal_env.fast_forward(h, timedelta(days=30)) for h in handles))
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)

    assert in_flight > len(LEADS)  # the kill did happen after some second emails left
    per_send = fake_sendgrid.count_by_send_id()
    assert max(per_send.values()) == 1, "an email went out twice"
    with session_scope(settings.db_url) as session:
        for email in LEADS:
            rows = crud.emails_of(session=session, key=journey.lead_key(email))
            assert [row.step for row in rows] == STEPS, email
            # each step is sent, or (the kill hit mid-call) recorded as unknown and not resent
            assert {row.status for row in rows} <= {"sent", "unknown"}
            assert all(per_send[row.send_id] == 1 for row in rows if row.status == "sent")
            lead = crud.get_lead(session=session, email=email)
            assert lead.campaign is None and lead.step is None  # none is stuck
