"""kill -9 everything (the Temporal server, the worker and the importing process) in
the middle of `nurture import` of 300 new leads, restart the server and the worker:
the leads the killed run had stored are started by the starter, a re-run of the file
brings in the rest and repairs nothing twice, and every lead gets its first email
exactly once (issue 17.3: before, the leads in flight got a workflow but were never
enrolled, and the re-run called them "unchanged")."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func
from sqlmodel import select

from nurture import journey
from nurture.db import session_scope, upgrade
from nurture.models import Email, Lead, LeadStart
from nurture.timeskip import free_port
from tests.conftest import ROOT, make_settings
from tests.faults._support import WorkerProcess, campaigns_dir, lead_emails, until
from tests.faults.test_server_kill import persisted_server

LEADS = 300  # the importer stores 200 rows a batch: the kill comes in the first one


def count(settings, table) -> int:
    with session_scope(settings.db_url) as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def first_emails(settings) -> Counter[str]:
    """Email rows of the journey's first step, per lead key."""
    with session_scope(settings.db_url) as session:
        return Counter(session.exec(select(Email.lead_key).where(Email.step == "first")).all())


def taken(settings) -> int:
    """Leads whose workflow has projected at least once."""
    with session_scope(settings.db_url) as session:
        return int(session.exec(select(func.count()).select_from(Lead).where(Lead.state_version > 0)).one())


def stored_keys(settings) -> set[str]:
    with session_scope(settings.db_url) as session:
        return set(session.exec(select(Lead.key)).all())


def run_import(env: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nurture.cli", "import", str(path)], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=180)


async def test_a_killed_import_leaves_no_lead_unstarted_and_emails_each_once(tmp_path):
    began = time.monotonic()
    home, port, ui_port = tmp_path / "temporal", free_port(), free_port()
    server, _ = await persisted_server(home, port, ui_port)
    # The default update timeout: the starter waits out the killed run's lease (30 + 15 s).
    settings = make_settings(tmp_path, campaigns_dir=campaigns_dir(tmp_path), update_timeout=30.0)
    upgrade(settings.db_url)
    emails = lead_emails(LEADS, "import-kill.example")
    path = tmp_path / "leads.csv"
    # A job title and a company size give fit points: a lead's first workflow task then
    # writes its projection, as real leads' do, even when its update was lost.
    path.write_text("email,first_name,job_title,company_size\n"
                    + "".join(f"{e},Lead{i},VP Sales,250\n" for i, e in enumerate(emails)), encoding="utf-8")
    worker = WorkerProcess(settings, server.address, tmp_path / "worker.log")
    worker.start()
    env = worker.env()
    try:
        importing = subprocess.Popen([sys.executable, "-m", "nurture.cli", "import", str(path)], env=env,
                                     cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert await until(lambda: taken(settings) >= 60, 60, every=0.05), "the import did not start"
        for process in (importing, worker.process, server.process):  # the machine goes down
            process.send_signal(signal.SIGKILL)
        for process in (importing, worker.process, server.process):
            process.wait(timeout=10)
        stored, marked, started = count(settings, Lead), count(settings, LeadStart), sum(first_emails(settings).values())
        assert 0 < marked and stored < LEADS, f"nothing in flight at the kill: {stored} stored, {marked} marked"

        server, _ = await persisted_server(home, port, ui_port)  # same ports, same file
        worker.start()
        # The starter alone: every lead the killed run stored gets its journey.
        keys = stored_keys(settings)
        repaired = await until(lambda: keys <= set(first_emails(settings)) and count(settings, LeadStart) == 0,
                               120, every=0.5)
        assert repaired, (f"{len(keys - set(first_emails(settings)))} of {len(keys)} stored leads never emailed; "
                          f"{count(settings, LeadStart)} still marked\n{worker.tail()}")

        again = run_import(env, path)
        assert again.returncode == 0, again.stderr
        assert f"{LEADS - stored} created, 0 updated, {stored} unchanged, 0 rejected" in again.stdout, again.stdout
        everyone = {journey.lead_key(e) for e in emails}
        assert await until(lambda: everyone <= set(first_emails(settings)), 60), "some leads got no first email"
        await asyncio.sleep(3)  # a second enrollment, if any, would send its first email by now
        third = run_import(env, path)
        assert f"0 created, 0 updated, {LEADS} unchanged" in third.stdout, third.stdout
    finally:
        worker.kill()
        server.stop()

    per_lead = first_emails(settings)
    assert set(per_lead) == everyone and set(per_lead.values()) == {1}, (
        f"leads emailed more than once: {[k for k, n in per_lead.items() if n > 1][:5]}")
    with session_scope(settings.db_url) as session:
        statuses = Counter(session.exec(select(Email.status).where(Email.step == "first")).all())
    # A write the kill cut short is recorded "unknown" and never retried (at most once):
    # only the worker's few in-flight activities can be in that state.
    assert set(statuses) <= {"sent", "unknown"} and statuses["unknown"] <= 10, statuses
    files = list(settings.outbox_dir.glob("*.eml"))
    assert statuses["sent"] <= len(files) <= LEADS, f"{len(files)} outbox files for {statuses} first emails"
    print(f"\nimport kill: killed with {stored} of {LEADS} leads stored ({marked} marked, {started} emailed); "
          f"every lead emailed once; {time.monotonic() - began:.0f}s")
