"""kill -9 the Temporal server (persisted to its SQLite file) while 50 leads are in the
middle of their journeys and emails are going out, restart it on the same ports and
file: the worker process, left running, reconnects by itself; a new client finishes
the journeys; every email reached the provider once and no lead is stuck. Leads added
after the restart go through as well."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import timedelta
from pathlib import Path

from nurture.config import Settings
from nurture.db import upgrade
from nurture.service import Nurture
from nurture.temporal import DevServer, start_dev_server, wait_for_server
from nurture.timeskip import SimulatedTime, free_port
from tests.conftest import make_settings
from tests.faults._support import (
    STEPS,
    WorkerProcess,
    add_leads,
    assert_clean,
    campaigns_dir,
    forward_all,
    handles,
    lead_emails,
    leads_in_campaign,
    outcome,
    until,
)

LEADS = 50
LATE_LEADS = 10  # added once the server is back
TIME_SKIPPING = ["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"]


async def persisted_server(home: Path, port: int, ui_port: int) -> tuple[DevServer, SimulatedTime]:
    server = start_dev_server(home, port=port, ui_port=ui_port, persist=True, extra=TIME_SKIPPING)
    try:
        client = await wait_for_server(Settings(home=home), server)
    except BaseException:
        server.stop()
        raise
    return server, SimulatedTime(server, client)


async def test_a_killed_and_restarted_server_loses_no_lead_and_sends_nothing_twice(tmp_path, fake_sendgrid):
    home, port, ui_port = tmp_path / "temporal", free_port(), free_port()
    server, env = await persisted_server(home, port, ui_port)
    settings = make_settings(tmp_path, campaigns_dir=campaigns_dir(tmp_path),
                             sendgrid_api_key=fake_sendgrid.api_key, sendgrid_api_host=fake_sendgrid.url)
    upgrade(settings.db_url)
    emails = lead_emails(LEADS, "server-kill.example")
    late = lead_emails(LEADS + LATE_LEADS, "server-kill.example")[LEADS:]
    worker = WorkerProcess(settings, server.address, tmp_path / "worker.log")
    worker.start()
    stalled: list[str] = []
    started = time.monotonic()
    try:
        await asyncio.wait_for(add_leads(Nurture(settings, env.client), emails), timeout=60)
        # Emails answer in 0.3 s at the provider, so some are in flight when the server dies.
        fake_sendgrid.fail_rate(1.0, statuses=(), slow_seconds=0.3)
        moving = asyncio.ensure_future(forward_all(env, handles(env.client, settings, emails),
                                                   timedelta(hours=30), timeout=60))
        # Mid-journey: the welcome emails are out and the second ones are going out.
        assert await until(lambda: len(fake_sendgrid.messages) >= LEADS + LEADS // 3, 60, every=0.05), (
            f"the second emails did not start: {len(fake_sendgrid.messages)} accepted")
        at_kill = len(fake_sendgrid.messages)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        moving.cancel()
        await asyncio.gather(moving, return_exceptions=True)
        await asyncio.sleep(2)  # the worker meets a dead server for a moment
        fake_sendgrid.fail_rate(0)

        server, env = await persisted_server(home, port, ui_port)  # same ports, same file
        assert worker.alive(), f"the worker process died with the server:\n{worker.tail()}"
        nurture = Nurture(settings, env.client)
        await asyncio.wait_for(add_leads(nurture, late), timeout=60)
        everyone = handles(env.client, settings, emails + late)
        stalled += await forward_all(env, everyone, timedelta(days=3), timeout=90)
        await until(lambda: leads_in_campaign(settings) == 0, 30)
        assert worker.alive(), f"the worker process died after the restart:\n{worker.tail()}"
    finally:
        worker.kill()
        server.stop()
        fake_sendgrid.fail_rate(0)

    result = outcome(settings, emails + late, fake_sendgrid.count_by_send_id())
    logged = worker.exceptions()
    extra = [f"{len(stalled)} leads' clocks could not be moved after the restart: {stalled[:3]}"] if stalled else []
    extra += [f"the worker logged {count} x {name}; e.g. {example}" for name, (count, example) in logged.items()]
    report = f"\n  server killed at {at_kill} emails accepted; {time.monotonic() - started:.0f}s"
    assert_clean(result, context=report, extra=extra)
    # A server crash is not a provider call cut short: nothing is unknown.
    assert result.sent == len(STEPS) * (LEADS + LATE_LEADS) and not result.unknown, result.summary() + report
    print(f"\nserver kill: {result.summary()}{report}")
