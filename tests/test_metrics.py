"""Operations metrics (issue 16.6): `GET /metrics` of the API from the store, and each
worker's Temporal SDK metrics (with nurture's email send latency) on its own port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta

from nurture import crud
from nurture.models import Event, utcnow
from nurture.timeskip import free_port
from tests.conftest import ROOT, edited_campaigns
from tests.test_webhooks import serve


def sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in:\n{text}"
    return float(match.group(1))


async def test_metrics_count_what_the_store_holds(stack):
    for email in ("ann@globex.example", "bob@globex.example"):
        await stack.add(email, source="web_form")
        await stack.until(email, lambda lead: lead["step"] != "welcome")
    with stack.session() as session:
        crud.add_event(session=session, event=Event(
            id="late-1", lead_key="k-waiting", email="x@globex.example", type="page_view", at=utcnow(),
            received_at=utcnow() - timedelta(seconds=90)))
    async with serve(stack) as http:
        response = await http.get("/metrics")  # public, as the contract says: no key, no session
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    with stack.session() as session:
        statuses = crud.email_status_counts(session=session)
        received, delivered, _ = crud.event_counts(session=session)
    assert statuses and all(sample(text, "nurture_emails", f'{{status="{s}"}}') == n for s, n in statuses.items())
    assert sample(text, "nurture_emails", '{status="sent"}') == 2
    assert sample(text, "nurture_events_received_total") == received >= 1
    assert sample(text, "nurture_events_delivered_total") == delivered
    assert 89 <= sample(text, "nurture_dispatcher_lag_seconds") < 300  # the event stored 90 s ago waits
    assert sample(text, "nurture_leads", '{stage="lead"}') == 2
    assert sample(text, "nurture_handoffs_open") == 0


def campaigns_sending_any_time(tmp_path):
    """The sample campaigns with b2b-trial's send window opened to every hour of every day."""
    window = '  days: [mon, tue, wed, thu, fri]\n  hours: "09:00-17:30"\n'
    return edited_campaigns(tmp_path, "b2b-trial.yaml",
                            {window: '  days: [mon, tue, wed, thu, fri, sat, sun]\n  hours: "00:00-24:00"\n'})


def scrape(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return ""


def test_a_worker_serves_its_sdk_metrics_and_the_send_latency(tmp_path):
    from nurture.temporal import start_dev_server

    server = start_dev_server(tmp_path / "temporal", port=free_port(), ui_port=free_port(), persist=False)
    port = free_port()
    env = {**os.environ, "NURTURE_HOME": str(tmp_path), "NURTURE_TEMPORAL_ADDRESS": server.address,
           "NURTURE_CAMPAIGNS_DIR": str(campaigns_sending_any_time(tmp_path)),
           "NURTURE_TEMPLATES_DIR": str(ROOT / "templates" / "email"), "NURTURE_SECRET": "metrics-test-secret",
           "NURTURE_SDK_METRICS_BIND": f"127.0.0.1:{port}"}
    env.pop("SENDGRID_API_KEY", None)
    worker = subprocess.Popen([sys.executable, "-m", "nurture.cli", "worker"], env=env, cwd=str(ROOT),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        added = subprocess.run([sys.executable, "-m", "nurture.cli", "lead", "add", "--email", "cy@globex.example",
                                "--source", "web_form"], env=env, cwd=str(ROOT), capture_output=True, text=True,
                               timeout=120)
        assert added.returncode == 0, added.stderr
        deadline, text = time.monotonic() + 60, ""
        while time.monotonic() < deadline and 'nurture_email_send_count{' not in text:
            time.sleep(0.5)
            text = scrape(port)
    finally:
        worker.kill()
        server.stop()
    assert sample(text, "nurture_email_send_count", _labels(text, "nurture_email_send_count")) == 1, text[-3000:]
    assert 'outcome="accepted"' in text and 'provider="outbox"' in text
    assert re.search(r"^temporal_workflow_task_execution_latency_count\{", text, re.M), text[:3000]
    assert re.search(r"^temporal_activity_execution_latency_count\{", text, re.M)


def _labels(text: str, name: str) -> str:
    match = re.search(rf"^{name}(\{{[^}}]*\}}) ", text, re.M)
    assert match, f"{name} not in:\n{text[-3000:]}"
    return match.group(1)
