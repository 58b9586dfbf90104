"""`python -m bench --segments`: segments and bulk enrollment (issue 14.3 and 14.4).

1. On SQLite and PostgreSQL, 100,000 leads and 1,000,000 events inserted directly: the
   wall time of `nurture segment show NAME --count --json` and `nurture lead list
   --segment NAME --json` as a user runs them (a subprocess, start-up included), and of
   the count query alone, for each segment of SEGMENTS.
2. With a Temporal dev server and one worker process: `nurture enroll --segment`
   of `--bulk` leads at `--bulk-rate` (its default pace: 50 a second), the rate reached, and the event-to-score
   latency of leads already in a journey, before and during the bulk run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from bench.web import scratch_stores
from nurture.db import get_engine, session_scope, upgrade
from nurture.models import Event, Lead, utcnow

ROOT = Path(__file__).resolve().parent.parent
LEADS, EVENTS_PER_LEAD, RUNS = 100_000, 10, 3
SEGMENTS = """segments:
  hot-fr: {where: {country: FR}, score: {gte: 30}, stage: [lead, mql]}
  clicked-recently: {did: {event: email_click, within: 14d}}
  never-opened: {not_did: {event: email_open, within: 30d}, status: subscribed}
  pricing-pro: {where: {attributes.plan: pro}, did: {event: page_view, where: {url: {contains: /pricing}}, within: 7d},
                not_did: {event: form_submit}, grade: [A, B]}
"""
TYPES = ["email_open", "email_click", "page_view", "form_submit"]
URLS = ["https://acme.example/pricing", "https://acme.example/docs", "https://acme.example/blog/spring"]


def _fill(url: str, leads: int) -> None:
    rng = random.Random(14)
    now = utcnow()
    engine = get_engine(url)
    countries, stages, grades = ["FR", "DE", "US", "GB", "ES"], ["lead", "lead", "mql", "sql", "visitor"], "ABCDF"
    with engine.begin() as connection:
        for start in range(0, leads, 10_000):
            rows, events = [], []
            for n in range(start, min(start + 10_000, leads)):
                key = f"k{n:06d}"
                rows.append({"key": key, "email": f"lead{n}@bench.example", "country": rng.choice(countries),
                              "score": rng.randint(0, 99), "stage": rng.choice(stages), "grade": rng.choice(grades),
                              "status": "subscribed" if rng.random() < 0.9 else "unsubscribed",
                              "attributes": {"plan": rng.choice(["free", "pro", "team"])}, "bant": {},
                              "created_at": now, "updated_at": now})
                for e in range(EVENTS_PER_LEAD):
                    kind = rng.choice(TYPES)
                    events.append({"id": f"{key}-{e}", "lead_key": key, "type": kind,
                                   "at": now - timedelta(minutes=rng.randint(0, 60 * 24 * 90)),
                                   "data": {"url": rng.choice(URLS)} if kind == "page_view" else {},
                                   "received_at": now, "dispatched_at": now})
            connection.execute(insert(Lead.__table__), rows)  # type: ignore[attr-defined]
            connection.execute(insert(Event.__table__), events)  # type: ignore[attr-defined]
        connection.execute(text("ANALYZE"))


def _cli(env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nurture.cli", *args], env=env, cwd=str(ROOT),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nurture {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return time.perf_counter() - started, done.stdout


def _queries(url: str, home: Path) -> dict[str, Any]:
    from nurture import audiences, crud
    from nurture.segments import load_segments

    campaigns = home / "campaigns"
    env = {**os.environ, "NURTURE_HOME": str(home), "NURTURE_DATABASE_URL": url, "NURTURE_CAMPAIGNS_DIR": str(campaigns),
           "NURTURE_TEMPORAL_ADDRESS": "127.0.0.1:9", "NURTURE_SECRET": "bench-secret"}
    figures: dict[str, Any] = {}
    for name, segment in load_segments(campaigns).by_name.items():
        query = []
        for _ in range(RUNS):
            started = time.perf_counter()
            with session_scope(url) as session:
                count = crud.count_leads(session=session, where=audiences.condition(session, segment))
            query.append(time.perf_counter() - started)
        shown = [_cli(env, "segment", "show", name, "--count", "--json") for _ in range(RUNS)]
        listed = [_cli(env, "lead", "list", "--segment", name, "--limit", "50", "--json") for _ in range(RUNS)]
        assert json.loads(shown[0][1])["count"] == count
        figures[name] = {"leads": count, "count_query_s": round(statistics.median(query), 3),
                         "segment_show_count_cli_s": round(statistics.median(t for t, _ in shown), 3),
                         "lead_list_segment_cli_s": round(statistics.median(t for t, _ in listed), 3)}
        print(f"segments: {url.split('@')[-1].split('/')[-1]} {name}: {figures[name]}", file=sys.stderr)
    return figures


def query_phase(home: Path, postgres_admin: str | None, leads: int = LEADS) -> dict[str, Any]:
    campaigns = home / "campaigns"
    campaigns.mkdir(parents=True, exist_ok=True)
    (campaigns / "segments.yaml").write_text(SEGMENTS)
    results: dict[str, Any] = {"leads": leads, "events": leads * EVENTS_PER_LEAD, "runs_each": RUNS}
    for backend, url in scratch_stores(home / "segments.db", postgres_admin):
        started = time.perf_counter()
        _fill(url, leads)
        print(f"segments: {backend} filled in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results[backend] = _queries(url, home)
    return results


# ---------------------------------------------------------------- bulk enrollment

BULK_CAMPAIGN = """name: spring
sender: {from: "Bench <bench@acme.example>"}
enroll: {stages: [lead]}
steps:
  - {id: hold, wait: 30d}
"""
LIVE_CAMPAIGN = """name: live
sender: {from: "Bench <bench@acme.example>"}
enroll: {stages: [lead], auto_on: [created], where: {source: live}}
steps:
  - {id: hold, wait: 30d}
"""
FUNNEL = """scoring:
  events: {email_open: 1, page_view: 1}
  fit: []
qualify:
  mql: {score: 100000, min_grade: D}
  sql: {bant: all}
  disqualify: []
handoff: {owners: [sales@bench.example]}
"""


async def _latencies(nurture: Any, live: list[str], until: Any, gap: float = 0.2) -> list[float]:
    """Event-to-score time of live leads (the update returns once the store shows the score)."""
    seen: list[float] = []
    n = 0
    while not until():
        email = live[n % len(live)]
        started = time.perf_counter()
        await nurture.record_event(email, "page_view", url="https://acme.example/pricing", event_id=f"probe-{n}")
        seen.append(time.perf_counter() - started)
        n += 1
        await asyncio.sleep(gap)
    return seen


def _p(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 1) if ordered else 0.0


async def bulk_phase(home: Path, count: int, rate: float) -> dict[str, Any]:
    from nurture.config import Settings
    from nurture.service import LeadIn, Nurture
    from nurture.temporal import start_dev_server, wait_for_server
    from nurture.timeskip import free_port

    campaigns = home / "bulk-campaigns"
    campaigns.mkdir(parents=True)
    (campaigns / "funnel.yaml").write_text(FUNNEL)
    (campaigns / "spring.yaml").write_text(BULK_CAMPAIGN)
    (campaigns / "live.yaml").write_text(LIVE_CAMPAIGN)
    (campaigns / "segments.yaml").write_text("segments:\n  bulk: {where: {source: bulk}}\n")
    url = f"sqlite:///{home / 'bulk.db'}"
    server = start_dev_server(home / "temporal", port=free_port(), ui_port=free_port(), persist=False)
    env = {**os.environ, "NURTURE_HOME": str(home), "NURTURE_DATABASE_URL": url, "NURTURE_CAMPAIGNS_DIR": str(campaigns),
           "NURTURE_TEMPLATES_DIR": str(ROOT / "templates" / "email"), "NURTURE_TEMPORAL_ADDRESS": server.address,
           "NURTURE_SECRET": "bench-secret", "NURTURE_UPDATE_TIMEOUT": "120"}
    settings = Settings(home=home, database_url=url, campaigns_dir=campaigns, templates_dir=ROOT / "templates" / "email",
                        secret="bench-secret", temporal_address=server.address, update_timeout=120)
    worker = subprocess.Popen([sys.executable, "worker.py"], env=env, cwd=str(ROOT),
                              stdout=open(home / "worker.log", "ab"), stderr=subprocess.STDOUT)
    try:
        upgrade(url)
        client = await wait_for_server(settings, server)
        nurture = Nurture(settings, client)
        live = [f"live{n}@bench.example" for n in range(20)]
        for email in live:
            await nurture.add_lead(LeadIn(email=email, source="live"))
        now = utcnow()
        with session_scope(url) as session:
            session.execute(insert(Lead.__table__), [  # type: ignore[attr-defined]
                {"key": f"b{n:06d}", "email": f"bulk{n}@bench.example", "source": "bulk", "attributes": {}, "bant": {},
                 "created_at": now, "updated_at": now} for n in range(count)])
        before = await _latencies(nurture, live, _after(5.0))
        bulk = subprocess.Popen([sys.executable, "-m", "nurture.cli", "enroll", "--segment", "bulk", "spring",
                                 "--rate", str(rate)], env=env, cwd=str(ROOT),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        started = time.perf_counter()
        during = await _latencies(nurture, live, lambda: bulk.poll() is not None)
        seconds = time.perf_counter() - started
        out = bulk.stdout.read().strip() if bulk.stdout else ""
        if bulk.returncode != 0:
            raise RuntimeError(f"bulk enroll exited {bulk.returncode}: {out}")
        return {"bulk_leads": count, "bulk_rate_option": rate, "bulk_seconds": round(seconds, 1),
                "bulk_enrolled_per_s": round(count / seconds, 1), "bulk_output": out,
                "live_event_to_score_ms_before": {"p50": _p(before, 0.5), "p95": _p(before, 0.95), "n": len(before)},
                "live_event_to_score_ms_during": {"p50": _p(during, 0.5), "p95": _p(during, 0.95), "n": len(during)}}
    finally:
        worker.kill()
        worker.wait()
        server.stop()


def _after(seconds: float) -> Any:
    end = time.perf_counter() + seconds
    return lambda: time.perf_counter() >= end
