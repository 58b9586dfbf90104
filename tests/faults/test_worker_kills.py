"""kill -9 the worker at random moments while 200 leads go through a three-email
journey under simulated time, restart it, five times over: every email reaches the
provider exactly once (counted by send id at the fake SendGrid), or, when a kill cut
a provider call short, is recorded `unknown` and reached it at most once; no lead is
left stuck in its campaign, and no send failed for any reason but the kills."""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import timedelta

from nurture.db import upgrade
from nurture.service import Nurture
from tests.conftest import make_settings
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

LEADS = 200
KILLS = 5
SEED = int(os.environ.get("NURTURE_FAULT_SEED", "7031"))


async def test_random_worker_kills_lose_no_lead_and_send_no_email_twice(temporal_env, tmp_path, fake_sendgrid):
    rng = random.Random(SEED)
    settings = make_settings(tmp_path, campaigns_dir=campaigns_dir(tmp_path),
                             sendgrid_api_key=fake_sendgrid.api_key, sendgrid_api_host=fake_sendgrid.url)
    upgrade(settings.db_url)
    nurture = Nurture(settings, temporal_env.client)
    emails = lead_emails(LEADS, "kills.example")
    # A quarter of the provider calls answer (202) only after 0.8 s, so kills find calls
    # in flight to cut short. The worker's own timeout (5 s) is longer: no unknown from that.
    fake_sendgrid.fail_rate(0.25, statuses=(), slow_seconds=0.8, seed=SEED)
    worker = WorkerProcess(settings, temporal_env.server.address, tmp_path / "worker.log", sendgrid_timeout=5.0)
    worker.start()
    rounds: list[str] = []
    stalled: list[str] = []
    started = time.monotonic()
    try:
        # Kill 1 lands while the leads are being added and their welcome emails go out
        # (the API's updates wait for the restarted worker).
        adding = asyncio.ensure_future(add_leads(nurture, emails))
        target = rng.randint(20, LEADS - 20)
        await until(lambda: len(fake_sendgrid.messages) >= target or adding.done(), 60, every=0.05)
        rounds.append(f"kill 1 while adding leads, at {len(fake_sendgrid.messages)} emails accepted")
        worker.kill()
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        worker.start()
        await asyncio.wait_for(adding, timeout=120)
        all_handles = handles(temporal_env.client, settings, emails)
        for number in range(2, KILLS + 1):
            # Kills 2-5: each round moves every clock 11 to 16 hours (the second and third
            # emails fall in some rounds, only timers in others) and kills the worker once
            # a random number of the round's emails went out (mid-sending) or, in a round
            # with no email due, once the clocks have moved (between forwards).
            step = timedelta(minutes=rng.randint(11 * 60, 16 * 60))
            moving = asyncio.ensure_future(forward_all(temporal_env, all_handles, step, timeout=120))
            target = len(fake_sendgrid.messages) + rng.randint(1, LEADS - 20)
            await until(lambda target=target, moving=moving: len(fake_sendgrid.messages) >= target or moving.done(),
                        20, every=0.05)
            accepted, when = len(fake_sendgrid.messages), "during" if not moving.done() else "after"
            worker.kill()
            await asyncio.sleep(rng.uniform(0.0, 1.5))  # dead for a moment: tasks pile up
            worker.start()
            stalled += await moving
            rounds.append(f"kill {number}: +{step}, {when} the forward, at {accepted} emails accepted")
        # No more kills: move every clock past the end of the journey and let it settle.
        stalled += await forward_all(temporal_env, all_handles, timedelta(days=2), timeout=120)
        await until(lambda: leads_in_campaign(settings) == 0, 60)
    finally:
        worker.kill()
        fake_sendgrid.fail_rate(0)

    assert worker.kills == KILLS + 1  # five kills at random moments, then the final stop
    result = outcome(settings, emails, fake_sendgrid.count_by_send_id())
    logged = worker.exceptions()
    unexpected = {name: seen for name, seen in logged.items() if name not in NETWORK_ERRORS}
    extra = [f"{len(set(stalled))} leads' clocks could not be moved (fast-forward not done in 120 s): "
             f"{sorted(set(stalled))[:3]}"] if stalled else []
    for name, (count, example) in unexpected.items():
        extra.append(f"the worker logged {count} x {name}, which no kill explains; e.g. {example}")
    report = (f"\n  seed {SEED}, {time.monotonic() - started:.0f}s; exceptions in the worker log: "
              f"{ {name: count for name, (count, _) in logged.items()} }\n  " + "\n  ".join(rounds))
    assert_clean(result, context=report, extra=extra)
    # Every email is accounted for: sent (received once) or unknown (received at most once).
    assert result.sent + len(result.unknown) == len(STEPS) * LEADS, result.summary() + report
    print(f"\nworker kills: {result.summary()}{report}")
