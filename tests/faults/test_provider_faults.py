"""A flaky provider: a fifth of the calls to the fake SendGrid answer 429 or 500 (not
accepted: retried with backoff) or answer slowly (accepted). While slow answers come
within the sender's timeout they are plain successes; once they come after it, the
sender cannot know whether the email left: the row says `unknown` and it is never
sent again. Every email goes out once; there are zero duplicates."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from typing import Any

from nurture.db import upgrade
from nurture.service import Nurture
from tests.conftest import make_settings
from tests.faults._support import (
    NETWORK_ERRORS,
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

LEADS = 100
FAULT_RATE = 0.2
TIMEOUT = 1.0  # the sender's NURTURE_SENDGRID_TIMEOUT
FAST_SLOW = 0.4  # slow, but within the timeout: a success
SLOW_SLOW = 1.6  # slower than the timeout: the outcome is unknown to the sender


def send_id_of(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    for personalization in body.get("personalizations") or []:
        args = {**(body.get("custom_args") or {}), **(personalization.get("custom_args") or {})}
        if "send_id" in args:
            return str(args["send_id"])
    return None


async def test_429_500_and_slow_answers_never_send_an_email_twice(temporal_env, tmp_path, fake_sendgrid):
    settings = make_settings(tmp_path, campaigns_dir=campaigns_dir(tmp_path), sendgrid_api_key=fake_sendgrid.api_key,
                             sendgrid_api_host=fake_sendgrid.url, sendgrid_timeout=TIMEOUT)
    upgrade(settings.db_url)
    emails = lead_emails(LEADS, "flaky.example")
    worker = WorkerProcess(settings, temporal_env.server.address, tmp_path / "worker.log", sendgrid_timeout=TIMEOUT)
    worker.start()
    started = time.monotonic()
    try:
        all_handles = handles(temporal_env.client, settings, emails)
        # The welcome emails: slow answers still come within the timeout.
        fake_sendgrid.fail_rate(FAULT_RATE, statuses=(429, 500), slow_seconds=FAST_SLOW, seed=11)
        await asyncio.wait_for(add_leads(Nurture(settings, temporal_env.client), emails), timeout=90)
        # Retries of 429/500 wait on backoff timers: move the clocks past them.
        stalled = await forward_all(temporal_env, all_handles, timedelta(hours=1), timeout=90)
        # The second and third emails: slow answers now come after the sender gave up.
        fake_sendgrid.fail_rate(FAULT_RATE, statuses=(429, 500), slow_seconds=SLOW_SLOW, seed=12)
        stalled += await forward_all(temporal_env, all_handles, timedelta(days=3), timeout=60)
        await until(lambda: leads_in_campaign(settings) == 0, 30)
    finally:
        worker.kill()
        fake_sendgrid.fail_rate(0)

    requests = list(fake_sendgrid.requests)
    faults = Counter(a.status for a in requests if a.status in (429, 500))
    slow = {send_id_of(a.body): a.reason for a in requests if (a.reason or "").startswith("accepted, answered after")}
    timed_out = {sid for sid, reason in slow.items() if reason == f"accepted, answered after {SLOW_SLOW}s"}
    result = outcome(settings, emails, fake_sendgrid.count_by_send_id())
    report = (f"\n  {len(requests)} provider calls: {faults[429]} x 429, {faults[500]} x 500, {len(slow)} slow "
              f"({len(timed_out)} past the {TIMEOUT:g}s timeout); {time.monotonic() - started:.0f}s")
    extra = [f"{len(set(stalled))} leads' clocks could not be moved (fast-forward not done in time): "
             f"{sorted(set(stalled))[:3]}"] if stalled else []
    # What a flaky provider may raise in a send; anything else in the worker log is a bug.
    provider_errors = NETWORK_ERRORS | {"TooManyRequestsError", "InternalServerError", "_Refused", "ApplicationError"}
    extra += [f"the worker logged {count} x {name}; e.g. {example}"
              for name, (count, example) in worker.exceptions().items() if name not in provider_errors]
    received = fake_sendgrid.count_by_send_id()
    # Every call that outlived the timeout is unknown (it reached the provider, once)...
    extra += [f"{sid}: the provider took it, the sender timed out, yet the row is {result.statuses.get(sid)!r}"
              for sid in sorted(timed_out - set(result.unknown))]
    # ...and any other unknown is a call that never reached the provider (a network error
    # before the request was through): lost, visible, never doubled.
    never_slow = set(result.unknown) - timed_out
    extra += [f"{sid}: unknown, never answered slowly, yet received {received[sid]} times"
              for sid in sorted(never_slow) if received.get(sid, 0) != 0]
    assert_clean(result, context=report, extra=extra)
    assert faults[429] and faults[500] and len(slow) > len(timed_out) > 0, "the faults did not all happen" + report
    # Zero duplicates: an unknown outcome is never resent.
    assert not result.duplicates and max(received.values()) == 1, result.summary() + report
    report += f"; {len(timed_out)} unknown after a timeout, {len(never_slow)} unknown before reaching the provider"
    print(f"\nprovider faults: {result.summary()}{report}")
