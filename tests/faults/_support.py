"""Shared pieces of the fault-injection tests: a tiny three-email campaign, a worker
in its own process (to kill -9), driving many leads' clocks at once, and the checks
every fault test ends with (each email once at the provider, no lead stuck)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from nurture import crud, journey
from nurture.config import Settings
from nurture.db import session_scope
from nurture.models import Email, Lead
from nurture.service import LeadIn, Nurture
from tests.conftest import ROOT

CAMPAIGN = "faults-three"
STEPS = ("first", "second", "third")
THREE_EMAILS = f"""\
# Three emails a day apart: the smallest journey with sends on both sides of a timer.
name: {CAMPAIGN}
description: fault-injection journey
sender: {{from: "Acme <hello@acme.example>"}}
enroll:
  stages: [lead]
  auto_on: [created]
steps:
  - {{id: first, send: welcome}}
  - {{wait: 1d}}
  - {{id: second, send: case_study}}
  - {{wait: 1d}}
  - {{id: third, send: last_chance}}
"""


def campaigns_dir(tmp_path: Path) -> Path:
    """A campaigns folder holding only the three-email journey and the sample funnel."""
    folder = tmp_path / "campaigns"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{CAMPAIGN}.yaml").write_text(THREE_EMAILS, encoding="utf-8")
    shutil.copy(ROOT / "campaigns" / "funnel.yaml", folder / "funnel.yaml")
    return folder


def lead_emails(count: int, domain: str) -> list[str]:
    return [f"lead{index:04d}@{domain}" for index in range(count)]


async def bounded(limit: int, calls: Iterable[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the calls concurrently, at most `limit` at a time."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


async def add_leads(nurture: Nurture, emails: Sequence[str], limit: int = 25) -> None:
    await bounded(limit, [lambda e=e: nurture.add_lead(LeadIn(email=e)) for e in emails])


def handles(client: Any, settings: Settings, emails: Sequence[str]) -> list[Any]:
    return [client.get_workflow_handle(settings.workflow_id(journey.lead_key(e))) for e in emails]


async def forward_all(env: Any, all_handles: Sequence[Any], duration: timedelta, *, timeout: float,
                      limit: int = 100) -> list[str]:
    """Advance every lead's clock by `duration`, `limit` fast-forwards in flight at once.

    Returns the workflow ids whose fast-forward had not completed after `timeout`
    seconds (given up): a lead that cannot reach its next moment is a finding to
    report with the rest, not a bare TimeoutError.
    """
    gate = asyncio.Semaphore(limit)

    async def one(handle: Any) -> None:
        async with gate:
            await env.fast_forward(handle, duration)

    tasks = {handle.id: asyncio.ensure_future(one(handle)) for handle in all_handles}
    try:
        _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
    finally:  # given up, or this call cancelled: no fast-forward keeps polling behind our back
        unfinished = [task for task in tasks.values() if not task.done()]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
    for task in tasks.values():
        if task not in pending:
            task.result()  # a failed fast-forward call is an error of the test itself
    return [workflow_id for workflow_id, task in tasks.items() if task in pending]


def leads_in_campaign(settings: Settings) -> int:
    with session_scope(settings.db_url) as session:
        return int(session.exec(select(func.count()).select_from(Lead).where(col(Lead.campaign).is_not(None))).one())


async def until(condition: Callable[[], bool], timeout: float, every: float = 0.5) -> bool:
    """Poll `condition` (a blocking check, run in a thread) until it holds (True) or
    `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)
    return True


# ---------------------------------------------------------------- a worker to kill


@dataclass
class WorkerProcess:
    """`python worker.py` in its own process, configured like a deployment would be."""

    settings: Settings
    address: str
    log: Path
    sendgrid_timeout: float = 5.0
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0
    starts: list[float] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        s = self.settings
        values = {
            "NURTURE_HOME": str(s.home),
            "NURTURE_DATABASE_URL": s.db_url,
            "NURTURE_TEMPORAL_ADDRESS": self.address,
            "NURTURE_TASK_QUEUE": s.task_queue,
            "NURTURE_WORKFLOW_PREFIX": s.workflow_prefix,
            "NURTURE_CAMPAIGNS_DIR": str(s.campaigns_dir),
            "NURTURE_TEMPLATES_DIR": str(s.templates_dir),
            "NURTURE_SECRET": s.secret or "",
            "NURTURE_SENDGRID_TIMEOUT": str(self.sendgrid_timeout),
            "NURTURE_UPDATE_TIMEOUT": str(s.update_timeout),
        }
        if s.sendgrid_api_key:
            values["SENDGRID_API_KEY"] = s.sendgrid_api_key
            values["NURTURE_SENDGRID_API_HOST"] = s.sendgrid_api_host
        base = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_") and k != "SENDGRID_API_KEY"}
        return {**base, **values}

    def start(self) -> WorkerProcess:
        assert self.process is None or self.process.poll() is not None, "a worker is already running"
        with open(self.log, "ab") as out:
            out.write(f"\n===== worker start {len(self.starts) + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.process = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], env=self.env(),
                                            stdout=out, stderr=out, cwd=str(ROOT))
        self.starts.append(time.monotonic())
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, in-flight activities and workflow tasks just stop."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.kills += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no worker log)"

    def exceptions(self) -> dict[str, tuple[int, str]]:
        """Every exception the worker processes logged a traceback for: type name ->
        (how many, one example: the last frame in this repository and the message)."""
        return logged_exceptions(self.log.read_text(errors="replace") if self.log.exists() else "")


# What a network or provider fault may legitimately raise inside a send (the outcome is
# then `unknown` or retried, as documented). Anything else in a worker log is a bug.
NETWORK_ERRORS = frozenset({"ConnectionResetError", "BrokenPipeError", "RemoteDisconnected", "TimeoutError",
                            "URLError", "IncompleteRead"})


def logged_exceptions(text: str) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    frames: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            inside, frames = True, []
        elif inside and line.startswith("  File "):
            frames.append(line.strip())
        elif inside and line and not line[0].isspace():
            name = line.split(":", 1)[0].strip().rsplit(".", 1)[-1]
            ours = [f for f in frames if str(ROOT) in f]
            where = ours[-1].replace(str(ROOT) + "/", "") if ours else (frames[-1] if frames else "?")
            count, example = found.get(name, (0, f"{where}: {line.strip()[:200]}"))
            found[name] = (count + 1, example)
            inside = False
    return found


# ---------------------------------------------------------------- the outcome


@dataclass
class Outcome:
    """What the store and the provider say after the journeys: every figure a fault test reports."""

    leads: int
    sent: int = 0
    unknown: list[str] = field(default_factory=list)  # send ids recorded `unknown`
    unknown_received: int = 0  # of those, how many the provider did take (once)
    duplicates: dict[str, int] = field(default_factory=dict)  # send id -> times received (> 1)
    statuses: dict[str, str] = field(default_factory=dict)  # send id -> the email row's status
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.leads} leads, {self.sent} emails sent, {len(self.unknown)} unknown "
                f"({self.unknown_received} of them did reach the provider), "
                f"{len(self.duplicates)} duplicates")


def outcome(settings: Settings, emails: Sequence[str], received: Counter[str],
            steps: Sequence[str] = STEPS) -> Outcome:
    """Check every lead: each step has exactly one email row, `sent` (received exactly
    once by the provider) or `unknown` (received at most once); the journey has ended;
    the provider received nothing else and nothing twice."""
    result = Outcome(leads=len(emails))
    result.duplicates = {send_id: n for send_id, n in received.items() if n > 1}
    ours: set[str] = set()
    with session_scope(settings.db_url) as session:
        for email in emails:
            key = journey.lead_key(email)
            rows: list[Email] = list(crud.emails_of(session=session, key=key))
            ours.update(row.send_id for row in rows)
            found = sorted(row.step or "" for row in rows)
            if found != sorted(steps):
                result.problems.append(f"{email}: email rows for steps {found}, expected {sorted(steps)}")
            for row in rows:
                result.statuses[row.send_id] = row.status
                expected_id = journey.send_id(key, CAMPAIGN, 1, row.step or "")
                if row.send_id != expected_id:
                    result.problems.append(f"{email}: {row.step} has send id {row.send_id}, expected {expected_id}")
                got = received.get(row.send_id, 0)
                if row.status == "sent":
                    result.sent += 1
                    if got != 1:
                        result.problems.append(f"{email}: {row.step} is sent but the provider received it {got} times")
                elif row.status == "unknown":
                    result.unknown.append(row.send_id)
                    result.unknown_received += got
                    if got > 1:
                        result.problems.append(f"{email}: {row.step} is unknown and was received {got} times")
                else:
                    result.problems.append(
                        f"{email}: {row.step} ended {row.status!r} ({row.error}), received {got} times")
            lead = crud.get_lead(session=session, email=email)
            if lead is None:
                result.problems.append(f"{email}: no lead row")
            elif lead.campaign is not None or lead.step is not None:
                result.problems.append(f"{email}: stuck in {lead.campaign} at step {lead.step} ({lead.waiting_for})")
    strays = sorted(set(received) - ours)
    if strays:
        result.problems.append(f"the provider received {len(strays)} send ids with no email row: {strays[:5]}")
    return result


def assert_clean(result: Outcome, *, context: str = "", extra: Sequence[str] = ()) -> None:
    """No problem in the outcome, no duplicate, and none of the `extra` problems the test found."""
    problems = [*extra, *result.problems]
    detail = "\n  ".join(problems[:25])
    more = f"\n  ... and {len(problems) - 25} more" if len(problems) > 25 else ""
    assert not problems and not result.duplicates, (
        f"{result.summary()}{context}\n  {detail}{more}\n  duplicates: {dict(list(result.duplicates.items())[:10])}")
