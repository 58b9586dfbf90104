"""The database briefly unavailable while journeys need to write, emails are in flight
at the provider and a user calls the CLI and the API.

SQLite: another connection holds the write lock (`BEGIN EXCLUSIVE`) for 15 s, longer
than the 10 s busy timeout. PostgreSQL: the test database refuses connections and its
sessions are terminated for 10 s (the server itself keeps running for everyone else).

Expected: activities retry until the database is back; then every journey completes,
every email went out once and is recorded `sent` (the provider did answer: a database
outage is not the unknown-outcome case), nothing is doubled; meanwhile the API answers
503 with a JSON error and the CLI exits 3 with one line, as for an unreachable Temporal,
and nothing is half-written; once the database is back the same API call succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from nurture.api import create_app
from nurture.db import upgrade
from nurture.service import NotFound, Nurture
from tests.conftest import ROOT, make_settings
from tests.faults._support import (
    NETWORK_ERRORS,
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

LEADS = 20
# A worker blocked on the database fails its attempt (OperationalError) or has it timed
# out and cancelled by the server (CancelledError); a terminated PostgreSQL session
# invalidates the pool (InvalidatePoolError, AdminShutdown). All are retried.
DATABASE_ERRORS = frozenset({"OperationalError", "CancelledError", "InvalidatePoolError", "AdminShutdown"})


@contextlib.asynccontextmanager
async def sqlite_write_lock(path: str) -> AsyncIterator[None]:
    lock = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            lock.execute("ROLLBACK")
        lock.close()


@contextlib.asynccontextmanager
async def postgres_refusing(admin_url: str, database: str) -> AsyncIterator[None]:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": database})
        yield
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()


async def journeys_through_an_outage(temporal_env: Any, tmp_path: Any, fake_sendgrid: Any, database_url: str,
                                     outage: Callable[[], Any], seconds: float, label: str) -> None:
    settings = make_settings(tmp_path, database_url=database_url, campaigns_dir=campaigns_dir(tmp_path),
                             sendgrid_api_key=fake_sendgrid.api_key, sendgrid_api_host=fake_sendgrid.url)
    upgrade(settings.db_url)
    emails = lead_emails(LEADS, f"{label}-down.example")
    api_lead, cli_lead = f"api@{label}-down.example", f"cli@{label}-down.example"
    app = create_app(settings, temporal_env.client)
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                            base_url="http://127.0.0.1", headers={"Authorization": "Bearer test-key"})
    worker = WorkerProcess(settings, temporal_env.server.address, tmp_path / "worker.log")
    worker.start()
    problems: list[str] = []
    stalled: list[str] = []
    started = time.monotonic()
    try:
        await asyncio.wait_for(add_leads(Nurture(settings, temporal_env.client), emails), timeout=60)
        all_handles = handles(temporal_env.client, settings, emails)
        # Every provider call takes 0.5 s: when the database goes, emails are in flight.
        fake_sendgrid.fail_rate(1.0, statuses=(), slow_seconds=0.5)
        moving = asyncio.ensure_future(forward_all(temporal_env, all_handles, timedelta(hours=30), timeout=120))
        assert await until(lambda: len(fake_sendgrid.messages) >= LEADS + 3, 60, every=0.02), (
            f"the second emails did not start: {len(fake_sendgrid.messages)} accepted")
        at_outage = len(fake_sendgrid.messages)
        async with outage():
            down = time.monotonic()
            cli = subprocess.Popen([sys.executable, "-m", "nurture.cli", "lead", "add", "--email", cli_lead],
                                   env=worker.env(), cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            during = await api.post("/v1/leads", json={"email": api_lead})
            await asyncio.sleep(max(0.0, seconds - (time.monotonic() - down)))
        fake_sendgrid.fail_rate(0)
        cli_out, cli_err = await asyncio.to_thread(cli.communicate, timeout=90)

        if during.status_code != 503 or not during.headers.get("content-type", "").startswith("application/json"):
            problems.append(f"API during the outage: HTTP {during.status_code} "
                            f"{during.headers.get('content-type')} {during.text[:120]!r}, expected a 503 JSON error")
        err_lines = cli_err.decode(errors="replace").strip().splitlines()
        if cli.returncode != 3 or len(err_lines) != 1:
            problems.append(f"CLI `nurture lead add` during the outage: exit {cli.returncode}, {len(err_lines)} "
                            f"stderr lines ({(err_lines or [''])[0][:160]!r}), expected exit 3 and one line")
        with contextlib.suppress(NotFound):  # a refused add leaves nothing behind
            Nurture(settings, temporal_env.client).show(cli_lead)
            problems.append(f"{cli_lead}: the CLI failed, yet a lead row was written")

        after = await api.post("/v1/leads", json={"email": api_lead})
        if after.status_code not in (200, 201):
            problems.append(f"API once the database is back: HTTP {after.status_code} {after.text[:200]!r}")
        everyone = emails + [api_lead]
        stalled += await moving
        stalled += await forward_all(temporal_env, handles(temporal_env.client, settings, everyone),
                                     timedelta(days=3), timeout=120)
        await until(lambda: leads_in_campaign(settings) == 0, 30)
    finally:
        worker.kill()
        fake_sendgrid.fail_rate(0)
        await api.aclose()

    result = outcome(settings, everyone, fake_sendgrid.count_by_send_id())
    if result.unknown:
        problems.append(f"{len(result.unknown)} emails are recorded 'unknown' although the provider answered "
                        f"(it received {result.unknown_received} of them, once each): the write of 'sent' failed "
                        "while the database was down, and the retry took the row for an interrupted send")
    if stalled:
        problems.append(f"{len(stalled)} leads' clocks could not be moved: {stalled[:3]}")
    for name, (count, example) in worker.exceptions().items():
        if name not in DATABASE_ERRORS | NETWORK_ERRORS:
            problems.append(f"the worker logged {count} x {name}; e.g. {example}")
    report = (f"\n  {label}: database unavailable {seconds:g}s from {at_outage} emails accepted; "
              f"{time.monotonic() - started:.0f}s")
    assert_clean(result, context=report, extra=problems)
    assert result.sent == len(STEPS) * len(everyone), result.summary() + report
    print(f"\ndatabase down ({label}): {result.summary()}{report}")


async def test_sqlite_write_locked_past_the_busy_timeout(temporal_env, tmp_path, fake_sendgrid):
    path = tmp_path / "nurture.db"
    await journeys_through_an_outage(temporal_env, tmp_path, fake_sendgrid, f"sqlite:///{path}",
                                     lambda: sqlite_write_lock(str(path)), 15, "sqlite")


async def test_postgresql_refusing_connections(temporal_env, tmp_path, fake_sendgrid, postgres_admin, postgres_url):
    database = postgres_url.rsplit("/", 1)[1]
    await journeys_through_an_outage(temporal_env, tmp_path, fake_sendgrid, postgres_url,
                                     lambda: postgres_refusing(postgres_admin, database), 10, "postgresql")
