"""`python -m bench [--quick] [--cli] [--web] [--segments]`: nurture's figures as one JSON document on stdout.

`--cli` measures only the command line's read commands (no Temporal needed: they answer
from the store, and the phase points them at a closed port to prove they never call it).

Everything runs on this machine: an in-memory Temporal dev server, workers and the
HTTP API as separate processes (as in production), a local fake SendGrid on loopback.
Progress goes to stderr. Each figure comes with the parameters it was measured at.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baseline import run_baseline  # noqa: E402
from nurture.config import Settings  # noqa: E402
from nurture.temporal import start_dev_server, wait_for_server  # noqa: E402
from nurture.timeskip import free_port  # noqa: E402

FULL = {"n": 2000, "waiting": 10_000, "import_rows": 100_000, "batches": 50, "batch_size": 1000}
QUICK = {"n": 300, "waiting": 1000, "import_rows": 1000, "batches": 20, "batch_size": 1000}
FUNNEL = """scoring:
  events: {email_open: 20, email_click: 30}
  fit: []
qualify:
  mql: {score: 50, min_grade: D}
  sql: {bant: all}
  disqualify: []
handoff: {owners: [sales@bench.example]}
"""
CAMPAIGN = """name: bench
sender: {from: "Bench <bench@acme.example>"}
enroll: {stages: [lead], auto_on: [created]}
steps:
  - {id: welcome, send: welcome}
  - {id: hold, wait: 30d}
"""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


class Rig:
    """Server, fake SendGrid, worker and API processes sharing one temp home."""

    def __init__(self, home: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        from tests.fake_sendgrid import FakeSendGrid

        self.home = home
        self.server = start_dev_server(home / "temporal", port=free_port(), ui_port=free_port(), persist=False)
        self.fake = FakeSendGrid(api_key="SG.bench").start()
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        campaigns = home / "campaigns"
        campaigns.mkdir()
        (campaigns / "funnel.yaml").write_text(FUNNEL)
        (campaigns / "bench.yaml").write_text(CAMPAIGN)
        self.port = free_port()
        self.env = {
            **os.environ, "NURTURE_HOME": str(home), "NURTURE_DATABASE_URL": f"sqlite:///{home / 'nurture.db'}",
            "NURTURE_TEMPORAL_ADDRESS": self.server.address, "NURTURE_CAMPAIGNS_DIR": str(campaigns),
            "NURTURE_TEMPLATES_DIR": str(ROOT / "templates" / "email"), "NURTURE_SECRET": "bench-secret",
            "SENDGRID_API_KEY": self.fake.api_key, "NURTURE_SENDGRID_API_HOST": self.fake.url,
            "NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY": base64.b64encode(public).decode(),
            "NURTURE_HTTP_PORT": str(self.port), "NURTURE_API_KEYS": "bench-key", "NURTURE_UPDATE_TIMEOUT": "120",
        }
        self.settings = Settings(home=home, database_url=self.env["NURTURE_DATABASE_URL"], campaigns_dir=campaigns,
                                 templates_dir=ROOT / "templates" / "email", secret="bench-secret",
                                 sendgrid_api_key=self.fake.api_key, sendgrid_api_host=self.fake.url,
                                 update_timeout=120)
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, *args: str, log: str | None = None) -> subprocess.Popen[bytes]:
        out = open(self.home / f"{log or args[-1]}.log", "ab")
        process = subprocess.Popen([sys.executable, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                   cwd=str(ROOT))
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.fake.stop()
        self.server.stop()


async def baseline_phase(rig: Rig, count: int) -> float:
    queue = "bench-baseline"
    worker = rig.spawn("-m", "bench.baseline", "--worker", rig.server.address, queue)
    client = await wait_for_server(rig.settings, rig.server)
    await asyncio.sleep(2)
    rate = await run_baseline(client, queue, count)
    worker.kill()
    return rate


def write_csv(path: Path, start: int, count: int) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name", "company", "source"])
        for index in range(start, start + count):
            writer.writerow([f"lead{index}@bench.example", f"Lead{index}", "Globex", "bench"])


def sign(rig: Rig, body: bytes, timestamp: str) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return base64.b64encode(rig.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()


async def post_batch(http: Any, rig: Rig, events: list[dict[str, Any]]) -> float:
    body = json.dumps(events).encode()
    timestamp = str(int(time.time()))
    started = time.perf_counter()
    response = await http.post(f"http://127.0.0.1:{rig.port}/webhooks/sendgrid", content=body, headers={
        "Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        "X-Twilio-Email-Event-Webhook-Signature": sign(rig, body, timestamp)})
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


def engagement(messages: list[dict[str, Any]], kinds: tuple[str, ...], tag: str) -> list[dict[str, Any]]:
    events = []
    for message in messages:
        args = message["custom_args"]
        to = message["personalizations"][0]["to"][0]["email"]
        for kind in kinds:
            events.append({"email": to, "event": kind, "timestamp": int(time.time()), "url": "https://acme.example/x",
                           "sg_event_id": f"{tag}-{kind}-{args['send_id']}", "sg_message_id": "m", **args})
    return events


def scores(rig: Rig) -> dict[str, tuple[int, str]]:
    import sqlite3

    with sqlite3.connect(rig.home / "nurture.db", timeout=30) as db:
        return {email: (score, stage) for email, score, stage in db.execute("select email, score, stage from lead")}


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def engine_phase(rig: Rig, count: int, workers: int) -> dict[str, float]:
    """Import -> send -> signed webhook open+click -> MQL, end to end, plus ingest latency."""
    import httpx

    from nurture.importer import import_file
    from nurture.service import Nurture

    worker = rig.spawn("worker.py")
    others = [rig.spawn("worker.py", log=f"worker-{index}") for index in range(1, workers)]
    api = rig.spawn("-m", "nurture.cli", "api")
    client = await wait_for_server(rig.settings, rig.server)
    nurture = Nurture(rig.settings, client)
    await asyncio.sleep(3)
    path = rig.home / "leads.csv"
    write_csv(path, 0, count)
    # Where the machine's CPU goes, per lead: the server, the workers, the API, and this
    # process (the importing client, the fake SendGrid, the webhook poster).
    parts = {"server": [rig.server.process.pid], "workers": [worker.pid] + [p.pid for p in others],
             "api": [api.pid], "bench": [os.getpid()]}
    cpu_before = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in parts.items()}
    started = time.perf_counter()
    report = await import_file(nurture, path)
    imported = time.perf_counter()
    await wait_for(lambda: len(rig.fake.messages) >= count, 1800, "all first emails sent")
    sent = time.perf_counter()
    events = engagement(list(rig.fake.messages), ("open", "click"), "e")
    acked: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=60) as http:
        first_post = time.perf_counter()
        for offset in range(0, len(events), 1000):
            batch = events[offset:offset + 1000]
            await post_batch(http, rig, batch)
            now = time.perf_counter()
            for event in batch:
                acked.setdefault(event["email"], now)
    visible: dict[str, float] = {}

    def all_mql() -> bool:
        now = time.perf_counter()
        for email, (score, stage) in scores(rig).items():
            if email not in visible and score >= 50:
                visible[email] = now
        return len(visible) >= count

    await wait_for(all_mql, 1800, "every lead at MQL")
    done = time.perf_counter()
    latencies = [(visible[email] - acked[email]) * 1000 for email in visible if email in acked]
    cpu_ms = {name: round((sum(cpu_seconds(pid) for pid in pids) - cpu_before[name]) * 1000 / count, 1)
              for name, pids in parts.items()}
    log(f"engine: import {imported - started:.1f}s, sends {sent - imported:.1f}s, "
        f"webhook->MQL {done - first_post:.1f}s; worker RSS {rss_mb(worker.pid):.0f} MB")
    return {
        "engine_leads_per_s": count / (done - started),
        "import_rows_per_s": report.rows / (imported - started),
        "events_delivered_per_s": len(events) / (done - first_post),
        "event_to_score_p50_ms": percentile(latencies, 0.5),
        "event_to_score_p99_ms": percentile(latencies, 0.99),
        "engine_cpu_ms_per_lead": cpu_ms,
        "worker_pid": worker.pid,
    }


async def webhook_phase(rig: Rig, batches: int, size: int) -> dict[str, float]:
    """Latency of POST /webhooks/sendgrid for `size`-event batches (stored durably before 2xx)."""
    import httpx

    messages = list(rig.fake.messages)
    timings = []
    async with httpx.AsyncClient(timeout=60) as http:
        for round_ in range(batches):
            # `processed` is stored durably like every event but applies to no journey,
            # so this measures the webhook's own path, not the workers behind it.
            events = engagement((messages * (size // max(len(messages), 1) + 1))[:size], ("processed",), f"w{round_}")
            for index, event in enumerate(events):
                event["sg_event_id"] = f"w{round_}-{index}"
            timings.append(await post_batch(http, rig, events))
    return {"webhook_batch_p50_ms": statistics.median(timings), "webhook_batch_p99_ms": percentile(timings, 0.99)}


async def footprint_phase(rig: Rig, waiting: int, already: int, worker_pid: int, budget: float) -> dict[str, float]:
    """Worker and server RSS with `waiting` leads parked on a 30-day timer."""
    from nurture.importer import import_file
    from nurture.service import Nurture

    client = await wait_for_server(rig.settings, rig.server)
    nurture = Nurture(rig.settings, client)
    reached, started = already, time.perf_counter()
    # RSS as the count grows: once each worker's journey cache is full it should stay flat.
    curve = {reached: round(rss_mb(worker_pid))}
    while reached < waiting and time.perf_counter() - started < budget:
        chunk = min(1000, waiting - reached)
        path = rig.home / f"more-{reached}.csv"
        write_csv(path, reached, chunk)
        await import_file(nurture, path)
        reached += chunk
        curve[reached] = round(rss_mb(worker_pid))
    return {"worker_rss_mb_10k": rss_mb(worker_pid), "server_rss_mb_10k": rss_mb(rig.server.process.pid),
            "footprint_leads": reached, "worker_rss_mb_by_leads": curve}


def render_phase(seconds: float = 3.0) -> float:
    from nurture.emails import render_email, sample_context

    names = ["welcome", "case_study", "case_study_reminder", "demo_invite", "last_chance"]
    context, count, started = sample_context(), 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        render_email(ROOT / "templates" / "email", names[count % len(names)], context)
        count += 1
    return count / (time.perf_counter() - started)


def import_phase(rig: Rig, rows: int) -> dict[str, float]:
    """`nurture import` of a `rows`-row file whose leads are all known already: the reader,
    validation and comparison path at scale (a new lead costs a workflow start: that
    rate is `import_rows_per_s`, measured in the engine phase)."""
    import sqlite3
    import uuid

    now = "2026-01-01 00:00:00"
    with sqlite3.connect(rig.home / "nurture.db", timeout=60) as db:
        db.executemany(
            "insert or ignore into lead (key, email, first_name, company, source, attributes, created_at, updated_at,"
            " stage, status, score, fit, grade, temperature, bant, state_version)"
            " values (?, ?, ?, 'Globex', 'bench', '{}', ?, ?, 'lead', 'subscribed', 0, 0, 'D', 'cold', '{}', 1)",
            ((uuid.uuid4().hex, f"known{i}@bench.example", f"Known{i}", now, now) for i in range(rows)))
    # A tenth of the file first, in the same state of the store: memory flat in the file's
    # size means the two peaks match.
    tenth = _run_import(rig, rows // 10)
    rate, peak = _run_import(rig, rows)
    return {"import_known_rows_per_s": rate, "import_peak_rss_mb": peak, "import_peak_rss_mb_tenth": tenth[1]}


def _run_import(rig: Rig, rows: int) -> tuple[float, float]:
    """Rows per second and peak RSS (MB) of `nurture import` of the first `rows` known leads."""
    path = rig.home / f"known-{rows}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name", "company", "source"])
        for index in range(rows):
            writer.writerow([f"known{index}@bench.example", f"Known{index}", "Globex", "bench"])
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "nurture.cli", "import", str(path)], env=rig.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"nurture import exited {os.waitstatus_to_exitcode(status)}")
    return rows / elapsed, usage.ru_maxrss / 1024


CLI_READS = {  # command -> argv after `nurture`
    "lead show": ["lead", "show", "lead7@bench.example"],
    "lead show --json": ["lead", "show", "lead7@bench.example", "--json"],
    "lead list": ["lead", "list"],
    "campaign list": ["campaign", "list"],
    "handoff list": ["handoff", "list"],
    "outbox": ["outbox"],
}


def cli_phase(runs: int, leads: int) -> dict[str, Any]:
    """Median and p95 wall time (ms) of each read command, each run as a subprocess the
    way a user runs it, against a store with `leads` leads, their history, emails and
    handoffs. A command this version does not have (exit 2) is left out."""
    home = Path(tempfile.mkdtemp(prefix="nurture-bench-cli-"))
    try:
        env = {**os.environ, "NURTURE_HOME": str(home), "NURTURE_DATABASE_URL": f"sqlite:///{home / 'nurture.db'}",
               "NURTURE_CAMPAIGNS_DIR": str(ROOT / "campaigns"), "NURTURE_TEMPLATES_DIR": str(ROOT / "templates" / "email"),
               "NURTURE_TEMPORAL_ADDRESS": "127.0.0.1:9", "NURTURE_SECRET": "bench-secret"}
        seed_store(env["NURTURE_DATABASE_URL"], leads)
        figures: dict[str, Any] = {"cli_params": {"runs": runs, "leads": leads}}
        for name, argv in CLI_READS.items():
            timings = []
            for _ in range(runs):
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "nurture.cli", *argv], env=env, cwd=str(ROOT),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                timings.append((time.perf_counter() - started) * 1000)
                if done.returncode != 0:
                    break
            if done.returncode == 2:
                log(f"cli: `nurture {name}` does not exist here, skipped")
                continue
            if done.returncode != 0:
                raise RuntimeError(f"nurture {name} exited {done.returncode}: {done.stderr.strip()}")
            figures[f"cli_{name.replace(' --', '_').replace(' ', '_')}_ms"] = {
                "p50": round(statistics.median(timings)), "p95": round(percentile(timings, 0.95))}
            log(f"cli: nurture {name}: median {statistics.median(timings):.0f} ms")
        return figures
    finally:
        shutil.rmtree(home, ignore_errors=True)


def seed_store(url: str, leads: int) -> None:
    """Leads with a few history lines each, one outbox email per lead, a handoff per tenth."""
    from nurture import journey
    from nurture.db import session_scope, upgrade
    from nurture.models import Email, Handoff, History, Lead

    upgrade(url)
    with session_scope(url) as session:
        for index in range(leads):
            email = f"lead{index}@bench.example"
            key = journey.lead_key(email)
            session.add(Lead(key=key, email=email, first_name=f"Lead{index}", company="Globex", source="bench",
                             score=index % 60, campaign="b2b-trial", step="welcome"))
            session.add_all(History(lead_key=key, seq=seq, kind="score", delta=5, reason="email_click", score=5 * seq)
                            for seq in range(1, 6))
            session.add(Email(send_id=f"send-{index}", lead_key=key, to=email, campaign="b2b-trial", step="welcome",
                              template="welcome", subject="Welcome", status="sent"))
            if index % 10 == 0:
                session.add(Handoff(lead_key=key, email=email, owner="alice@acme.example", score=60, grade="B"))


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (N=300, 1,000 rows, 1,000 waiting leads)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes against the one dev server (footprint is the first one's)")
    parser.add_argument("--footprint-budget", type=float, default=180.0,
                        help="seconds allowed for parking leads in the footprint phase")
    parser.add_argument("--cli", action="store_true",
                        help="only the CLI phase: median and p95 of each read command (no Temporal)")
    parser.add_argument("--cli-runs", type=int, default=10, help="runs of each read command in the CLI phase")
    parser.add_argument("--cli-leads", type=int, default=200,
                        help="leads in the CLI phase's store (one outbox email each, a handoff per tenth)")
    parser.add_argument("--web", action="store_true",
                        help="only the web phase: p95 server time of /, a campaign page and the stats JSON "
                             "with 10,000 leads and 50,000 emails, on SQLite and PostgreSQL (--postgres)")
    parser.add_argument("--segments", action="store_true",
                        help="only the segments phase: segment count and lead list --segment with 100,000 leads and "
                             "1,000,000 events on SQLite and PostgreSQL (--postgres), then enroll --segment of "
                             "--bulk leads with a live journey's event-to-score latency before and during it")
    parser.add_argument("--segment-leads", type=int, default=100_000,
                        help="leads (10 events each) in the segments phase's stores")
    parser.add_argument("--bulk", type=int, default=5000, help="leads bulk-enrolled in the segments phase")
    parser.add_argument("--bulk-rate", type=float, default=50.0, help="the bulk run's --rate (its default: 50)")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL server for the web phase (a scratch database is made there); '' skips it")
    options = parser.parse_args()
    if options.cli:
        sys.stdout.write(json.dumps(cli_phase(options.cli_runs, options.cli_leads), indent=2) + "\n")
        return
    if options.segments:
        from bench.segments import bulk_phase, query_phase

        home = Path(tempfile.mkdtemp(prefix="nurture-bench-segments-"))
        try:
            figures = {"machine": f"{os.cpu_count()} cores, {sys.platform}, Python {sys.version.split()[0]}",
                       **query_phase(home, options.postgres or None, options.segment_leads),
                       **await bulk_phase(home, options.bulk, options.bulk_rate)}
        finally:
            shutil.rmtree(home, ignore_errors=True)
        sys.stdout.write(json.dumps(figures, indent=2) + "\n")
        sys.stdout.flush()
        os._exit(0)  # the Temporal client can abort at interpreter exit (sdk-python issue 300)
    if options.web:
        from bench.web import web_phase

        home = Path(tempfile.mkdtemp(prefix="nurture-bench-web-"))
        try:
            figures = await web_phase(home, options.postgres or None)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        sys.stdout.write(json.dumps(figures, indent=2) + "\n")
        return
    sizes = QUICK if options.quick else FULL
    home = Path(tempfile.mkdtemp(prefix="nurture-bench-"))
    from nurture.db import upgrade

    rig = Rig(home)
    upgrade(rig.settings.db_url)
    figures: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, {sys.platform}, Python {sys.version.split()[0]}",
                               "params": {**sizes, "workers": options.workers}, "quick": options.quick}
    started = time.perf_counter()
    try:
        log(f"baseline: {sizes['n']} bare workflows")
        figures["baseline_leads_per_s"] = await baseline_phase(rig, sizes["n"])
        log(f"engine: {sizes['n']} leads import -> email -> webhook open+click -> MQL")
        engine = await engine_phase(rig, sizes["n"], options.workers)
        worker_pid = int(engine.pop("worker_pid"))
        figures.update(engine)
        figures["engine_vs_baseline"] = figures["engine_leads_per_s"] / figures["baseline_leads_per_s"]
        log(f"webhook: {sizes['batches']} batches of {sizes['batch_size']} events")
        figures.update(await webhook_phase(rig, sizes["batches"], sizes["batch_size"]))
        log(f"footprint: up to {sizes['waiting']} leads waiting on a timer")
        figures.update(await footprint_phase(rig, sizes["waiting"], sizes["n"], worker_pid, options.footprint_budget))
        log("render")
        figures["render_per_s"] = render_phase()
        log(f"import: {sizes['import_rows']} known rows")
        figures.update(import_phase(rig, sizes["import_rows"]))
    finally:
        rig.stop()
        shutil.rmtree(home, ignore_errors=True)
    figures["seconds"] = time.perf_counter() - started
    sys.stdout.write(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()},
                                indent=2) + "\n")
    sys.stdout.flush()
    os._exit(0)  # the Temporal client can abort at interpreter exit (sdk-python issue 300)


if __name__ == "__main__":
    asyncio.run(main())
