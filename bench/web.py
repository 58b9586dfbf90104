"""`python -m bench --web`: server time of the campaign pages, a filtered lead list and
the stats JSON with 10,000 leads and 50,000 emails inserted in the store directly, on
SQLite and PostgreSQL, as a signed-in marketer.

Requests go to the app in-process (httpx's ASGI transport): the time measured is the
server's (routing, queries, rendering), not the network's. No Temporal is needed.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
from sqlalchemy import create_engine, insert, text

from nurture import crud, users
from nurture.config import Settings
from nurture.db import get_engine, session_scope, upgrade
from nurture.models import CampaignEnrollment, Email, History, Lead, StepVisit

LEADS, EMAILS_PER_LEAD, REQUESTS = 10_000, 5, 30
STEPS = ["welcome", "step-2", "case-study", "wait-click", "demo-invite", "step-6", "reminder", "branch-hot",
         "step-9", "end"]
SENDS = ["welcome", "case-study", "demo-invite", "reminder", "end"]
T0 = datetime(2026, 9, 1, tzinfo=timezone.utc)


def _fill(url: str) -> None:
    """10,000 leads enrolled in b2b-trial, 50,000 emails with engagement, visits and stage changes."""
    rng = random.Random(7)
    leads, enrollments, visits, emails, history = [], [], [], [], []
    for n in range(LEADS):
        key, at = f"k{n:05d}", T0 + timedelta(minutes=13 * n)
        depth = rng.randint(1, len(STEPS))
        done = depth == len(STEPS) and rng.random() < 0.7
        leads.append({"key": key, "email": f"lead{n}@bench.example", "attributes": {}, "bant": {},
                      "campaign": None if done else "b2b-trial", "step": None if done else STEPS[depth - 1],
                      "stage": "mql" if n % 5 == 0 else "lead", "company": f"Company {n % 700}",
                      "created_at": at, "updated_at": at})
        enrollments.append({"lead_key": key, "number": 1, "campaign": "b2b-trial", "version": "v1", "enrolled_at": at,
                            "ended_at": at + timedelta(days=12) if done else None,
                            "exit_reason": "completed" if done else None})
        visits += [{"lead_key": key, "number": 1, "step": s, "campaign": "b2b-trial", "at": at + timedelta(hours=i)}
                   for i, s in enumerate(STEPS[:depth])]
        for i, step in enumerate(SENDS[:EMAILS_PER_LEAD]):
            sent = at + timedelta(days=2 * i)
            emails.append({"send_id": f"{key}-{step}", "lead_key": key, "campaign": "b2b-trial", "step": step,
                           "template": step, "subject": "s", "variant": rng.randint(0, 1) if step == "case-study" else None,
                           "marketing": True, "provider": "sendgrid", "status": "delivered", "attempts": 1,
                           "claimed_at": sent, "sent_at": sent, "updated_at": sent, "delivered_at": sent,
                           "opened_at": sent if rng.random() < 0.4 else None,
                           "clicked_at": sent if rng.random() < 0.1 else None,
                           "bounced_at": None, "unsubscribed_at": None})
        if rng.random() < 0.2:
            history.append({"lead_key": key, "seq": 1, "at": at + timedelta(days=3), "kind": "stage",
                            "reason": "lead -> mql: score 50 >= 50", "detail": {}})
    engine = get_engine(url)
    with engine.begin() as connection:
        for model, rows in ((Lead, leads), (CampaignEnrollment, enrollments), (StepVisit, visits),
                            (Email, emails), (History, history)):
            for start in range(0, len(rows), 5000):
                connection.execute(insert(model.__table__), rows[start:start + 5000])  # type: ignore[attr-defined]
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE"))


MARKETER, PASSWORD = "bench@acme.example", "bench-password-1234"


async def _sign_in(http: httpx.AsyncClient) -> None:
    """The pages are behind sign-in: the client keeps the session cookie."""
    form = await http.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None, form.text[:200]
    signed = await http.post("/login", data={"email": MARKETER, "password": PASSWORD, "csrf_token": token.group(1)})
    assert signed.status_code == 303 and "/login" not in signed.headers["location"], signed.text[:200]


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


async def _time(url: str, home: Path) -> dict[str, float]:
    from nurture.api import create_app

    settings = Settings(home=home, database_url=url, campaigns_dir=Path(__file__).resolve().parent.parent / "campaigns",
                        api_keys="bench-key", secret="bench-secret")
    app = create_app(settings)
    with session_scope(url) as session:
        crud.add_user(session=session, email=MARKETER, role="marketer", password_hash=users.hash_password(PASSWORD))
    figures = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        await _sign_in(http)
        for name, path in (("overview", "/"), ("campaign_page", "/campaigns/b2b-trial"),
                           ("leads_filtered", "/leads?stage=mql&q=company+7"),
                           ("stats_json", "/v1/campaigns/b2b-trial/stats")):
            times = []
            for _ in range(REQUESTS):
                started = time.perf_counter()
                response = await http.get(path, headers={"Authorization": "Bearer bench-key"})
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (path, response.status_code, response.text[:200])
            figures[f"{name}_p95_ms"] = round(_p95(times), 1)
    return figures


async def web_phase(home: Path, postgres_admin: str | None) -> dict[str, Any]:
    """The p95 figures per backend (PostgreSQL when an admin URL is given)."""
    results: dict[str, Any] = {"leads": LEADS, "emails": LEADS * EMAILS_PER_LEAD, "requests_each": REQUESTS}
    for backend, url in scratch_stores(home / "web.db", postgres_admin):
        _fill(url)
        results[backend] = await _time(url, home)
    return results


def scratch_stores(sqlite_file: Path, postgres_admin: str | None) -> Iterator[tuple[str, str]]:
    """("sqlite", URL), then ("postgresql", URL) of a scratch database when an admin URL
    is given: each migrated, and the PostgreSQL one dropped once the caller is done with it."""
    urls = [("sqlite", f"sqlite:///{sqlite_file}", None)]
    if postgres_admin:
        name = f"nurture_bench_{uuid.uuid4().hex[:8]}"
        urls.append(("postgresql", postgres_admin.rsplit("/", 1)[0] + f"/{name}", name))
    admin = create_engine(postgres_admin, isolation_level="AUTOCOMMIT") if postgres_admin else None
    for backend, url, database in urls:
        if admin is not None and database:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{database}"'))
        try:
            upgrade(url)
            yield backend, url
        finally:
            get_engine(url).dispose()
            if admin is not None and database:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
