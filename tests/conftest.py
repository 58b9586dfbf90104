"""Shared fixtures: one real Temporal dev server with time skipping, a fresh store,
task queue and worker per test, and a local fake SendGrid on loopback."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from nurture import journey
from nurture.config import Settings
from nurture.db import session_scope, upgrade
from nurture.service import LeadIn, Nurture
from nurture.timeskip import SETTLE_SECONDS, SimulatedTime
from tests.fake_sendgrid import FakeSendGrid
from worker import build_worker

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("NURTURE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
async def temporal_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SimulatedTime]:
    """One real Temporal dev server for the session, with per-workflow simulated time."""
    env = await SimulatedTime.start(tmp_path_factory.mktemp("temporal"))
    try:
        yield env
    finally:
        await env.stop()


def edited_campaigns(tmp_path: Path, file: str, replace: dict[str, str]) -> Path:
    """A copy of the sample campaigns folder where `file` has some text replaced (each
    piece must be there, so a sample change cannot turn an edit into a no-op)."""
    campaigns = tmp_path / "campaigns"
    shutil.copytree(ROOT / "campaigns", campaigns)
    path = campaigns / file
    text = path.read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return campaigns


def make_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "database_url": f"sqlite:///{home / 'nurture.db'}",
        "campaigns_dir": ROOT / "campaigns",
        "templates_dir": ROOT / "templates" / "email",
        "task_queue": f"test-{uuid.uuid4().hex[:12]}",
        # tests share one server: their leads must not meet each other's workflows
        "workflow_prefix": f"lead-{uuid.uuid4().hex[:8]}-",
        "secret": "test-secret-do-not-use",
        "api_keys": "test-key",
        # Production runs unsandboxed for speed; the tests keep the sandbox's guard, so a
        # non-deterministic call in workflow code fails here instead of in a replay.
        "workflow_sandbox": True,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Stack:
    """A test's nurture: its settings, store, worker and service over the shared server."""

    env: SimulatedTime
    settings: Settings
    nurture: Nurture
    worker: Worker | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self) -> Client:
        return self.env.client

    def handle(self, email: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(self.settings.workflow_id(journey.lead_key(email)))

    async def add(self, email: str, campaign: str | None = None, **fields: Any) -> dict[str, Any]:
        await self.nurture.add_lead(LeadIn(email=email, **fields), campaign=campaign)
        return self.nurture.show(email)

    async def forward(self, email: str, duration: timedelta) -> None:
        """Advance this lead's clock (its workflow's virtual time) by `duration`."""
        await self.env.fast_forward(self.handle(email), duration, settle=SETTLE_SECONDS)

    async def until(self, email: str, done: Any, *, step: timedelta = timedelta(hours=12),
                    limit: timedelta = timedelta(days=14)) -> dict[str, Any]:
        """Advance the lead's clock step by step until `done(lead)` holds.

        Sends wait for weekday office hours, so how far "the next email" is depends on
        the weekday the test runs: tests wait for the outcome, not for a fixed time.
        """
        waited = timedelta(0)
        while not done(lead := self.show(email)):
            assert waited < limit, f"{email}: not reached after {limit} (step {lead['step']}, {lead['waiting_for']})"
            await self.forward(email, step)
            waited += step
        return lead

    def show(self, email: str) -> dict[str, Any]:
        return self.nurture.show(email)

    async def query(self, email: str) -> dict[str, Any]:
        return await self.handle(email).query("show")

    def session(self) -> Any:
        return session_scope(self.settings.db_url)

    def start_worker(self) -> Worker:
        self.worker = build_worker(self.client, self.settings)
        return self.worker


@pytest.fixture
def fake_sendgrid() -> Iterator[FakeSendGrid]:
    fake = FakeSendGrid(api_key="SG.test-key")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
async def stack(temporal_env: SimulatedTime, tmp_path: Path) -> AsyncIterator[Stack]:
    """Outbox mode (no SendGrid key), SQLite store, sample campaigns."""
    async with _stack(temporal_env, make_settings(tmp_path)) as value:
        yield value


@pytest.fixture
async def sendgrid_stack(temporal_env: SimulatedTime, tmp_path: Path,
                         fake_sendgrid: FakeSendGrid) -> AsyncIterator[Stack]:
    """Sending through the sendgrid library to the fake SendGrid on loopback."""
    settings = make_settings(tmp_path, sendgrid_api_key=fake_sendgrid.api_key,
                             sendgrid_api_host=fake_sendgrid.url, sendgrid_timeout=2.0)
    async with _stack(temporal_env, settings) as value:
        value.extras["sendgrid"] = fake_sendgrid
        yield value


class _stack:
    def __init__(self, env: SimulatedTime, settings: Settings) -> None:
        self.env, self.settings = env, settings

    async def __aenter__(self) -> Stack:
        upgrade(self.settings.db_url)
        self.value = Stack(self.env, self.settings, Nurture(self.settings, self.env.client))
        self.worker = self.value.start_worker()
        await self.worker.__aenter__()
        return self.value

    async def __aexit__(self, *exc: Any) -> None:
        worker = self.value.worker
        if worker is not None and worker.is_running:
            await worker.__aexit__(*exc)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """The PostgreSQL server of these machines, or a skip saying why not."""
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as error:  # noqa: BLE001 - any failure means: no server here
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(error).splitlines()[0]}")
    yield PG_ADMIN_URL
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A fresh database per test, dropped afterwards."""
    name = f"nurture_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from nurture.db import get_engine

        get_engine(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# The Temporal client can abort the interpreter at exit (sdk-python issue 300, see
# shared notes): once pytest has printed everything, leave with pytest's own status.
_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _exit_status and not os.environ.get("NURTURE_TEST_NO_HARD_EXIT"):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])
