"""A paused campaign stays paused across a restart of everything (issue 14.5): the
Temporal server (its file kept), the worker and the process that paused it are killed
with SIGKILL while a lead waits in the campaign; after the restart the lead still holds,
though its wait ran out, and resume sends its next email once."""

from __future__ import annotations

import signal
from datetime import timedelta

from nurture import crud, journey
from nurture.db import session_scope, upgrade
from nurture.service import LeadIn, Nurture
from nurture.timeskip import SETTLE_SECONDS, free_port
from tests.conftest import make_settings
from tests.faults._support import CAMPAIGN, WorkerProcess, campaigns_dir, until
from tests.faults.test_server_kill import persisted_server


def steps_sent(settings, email: str) -> list[str]:
    with session_scope(settings.db_url) as session:
        return [row.step for row in crud.emails_of(session=session, key=journey.lead_key(email)) if row.status == "sent"]


async def test_a_paused_campaign_stays_paused_across_a_restart_of_everything(tmp_path):
    home, port, ui_port = tmp_path / "temporal", free_port(), free_port()
    server, env = await persisted_server(home, port, ui_port)
    settings = make_settings(tmp_path, campaigns_dir=campaigns_dir(tmp_path))
    upgrade(settings.db_url)
    worker = WorkerProcess(settings, server.address, tmp_path / "worker.log").start()
    email = "pat@restart.example"
    try:
        nurture = Nurture(settings, env.client)
        await nurture.add_lead(LeadIn(email=email))
        assert await until(lambda: steps_sent(settings, email) == ["first"], 60), worker.tail()
        assert (await nurture.control_campaign(CAMPAIGN, "pause")).told == 1
        assert await until(lambda: nurture.show(email)["waiting_for"] == "campaign paused", 30), worker.tail()

        worker.kill()  # the machine goes down: worker, server (its file kept) and this client
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        server, env = await persisted_server(home, port, ui_port)
        worker.start()
        nurture = Nurture(settings, env.client)
        handle = env.client.get_workflow_handle(settings.workflow_id(journey.lead_key(email)))
        await env.fast_forward(handle, timedelta(days=2), settle=SETTLE_SECONDS)  # its 1-day wait runs out
        lead = nurture.show(email)
        assert (lead["step"], lead["waiting_for"], steps_sent(settings, email)) == ("step-2", "campaign paused", ["first"])

        assert (await nurture.control_campaign(CAMPAIGN, "resume")).changed
        assert await until(lambda: steps_sent(settings, email) == ["first", "second"], 60), worker.tail()
    finally:
        worker.kill()
        server.stop()
