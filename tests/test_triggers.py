"""Event-triggered entry and re-entry rules (issue 14.1-2, contract 8), on the real server
with time skipping: `enroll.auto_on` takes events with a `where` on the event's fields,
and `reenroll: never | after_exit | always | {every: 30d}` decides who comes back."""

from __future__ import annotations

import shutil
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from tests.conftest import ROOT, Stack, _stack, make_settings
from tests.test_webhooks import sent_steps

CAMPAIGN = "webinar-follow-up"
WEBINAR = """name: webinar-follow-up
description: Registered for the spring webinar
sender: {{from: "Acme <hello@acme.example>"}}
enroll:
  stages: [lead, mql]
  where: {{country: {{in: [FR, DE]}}}}
  auto_on: [{{event: webinar_registered, where: {{event: spring-webinar}}}}]
  reenroll: {reenroll}
steps:
  - {{id: thanks, send: welcome}}
  - {{id: pause, wait: 2d}}
  - {{id: follow, send: checkin}}
"""
SPRING = {"type": "webinar_registered", "event": "spring-webinar"}


@asynccontextmanager
async def webinar_stack(temporal_env: Any, tmp_path: Any, reenroll: str):  # type: ignore[no-untyped-def]
    campaigns = tmp_path / "campaigns"
    shutil.copytree(ROOT / "campaigns", campaigns)
    (campaigns / "webinar-follow-up.yaml").write_text(WEBINAR.format(reenroll=reenroll), encoding="utf-8")
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        yield stack


async def register(stack: Stack, email: str, **fields: Any) -> dict[str, Any]:
    await stack.nurture.ingest_events([{"email": email, **SPRING, **fields}])
    return stack.show(email)


def enrollments(lead: dict[str, Any]) -> int:
    return sum(1 for h in lead["history"] if h["reason"].startswith(f"enrolled in {CAMPAIGN} "))


async def waiting_in_it(stack: Stack, email: str, country: str) -> None:
    """Registered, welcomed, and in the campaign's 2-day pause."""
    await stack.add(email, country=country)
    await register(stack, email)
    await stack.until(email, lambda lead: lead["step"] == "pause")


async def completed(stack: Stack, email: str) -> dict[str, Any]:
    return await stack.until(email, lambda lead: lead["campaign"] is None, step=timedelta(hours=12),
                             limit=timedelta(days=10))


async def test_the_event_enrolls_at_once_when_its_where_and_the_campaigns_rules_hold(temporal_env, tmp_path):
    async with webinar_stack(temporal_env, tmp_path, "never") as stack:
        await stack.add("fr@globex.example", country="FR")
        await stack.add("us@globex.example", country="US")
        autumn = await register(stack, "fr@globex.example", event="autumn-webinar")
        assert autumn["campaign"] is None  # the trigger's where: the spring webinar only
        lead = await register(stack, "fr@globex.example")
        assert lead["campaign"] == CAMPAIGN  # at once: the ingest answers with the enrollment done
        assert any(h["reason"] == f"enrolled in {CAMPAIGN} (auto_on event webinar_registered, version "
                   f"{h['reason'].rsplit(' ', 1)[-1]}" for h in lead["history"]), lead["history"]
        assert (await register(stack, "us@globex.example"))["campaign"] is None  # enroll.where: FR or DE
        lead = await stack.until("fr@globex.example", lambda lead: "thanks" in sent_steps(lead), limit=timedelta(days=4))
        assert lead["score"] == 10  # both events scored as ever (webinar_registered: 5 each)


async def test_reenroll_never_takes_a_lead_once(temporal_env, tmp_path):
    async with webinar_stack(temporal_env, tmp_path, "never") as stack:
        await stack.add("ann@globex.example", country="FR")
        await register(stack, "ann@globex.example")
        await completed(stack, "ann@globex.example")
        lead = await register(stack, "ann@globex.example", id="second-registration")
        assert lead["campaign"] is None and enrollments(lead) == 1


async def test_reenroll_after_exit_takes_it_again_once_it_has_left(temporal_env, tmp_path):
    async with webinar_stack(temporal_env, tmp_path, "after_exit") as stack:
        await waiting_in_it(stack, "bob@globex.example", "DE")
        during = await register(stack, "bob@globex.example", id="again-while-in-it")
        assert during["step"] == "pause" and enrollments(during) == 1  # in it: not restarted
        await completed(stack, "bob@globex.example")
        lead = await register(stack, "bob@globex.example", id="after-it-ended")
        assert lead["campaign"] == CAMPAIGN and enrollments(lead) == 2
        lead = await completed(stack, "bob@globex.example")
        assert sent_steps(lead) == ["thanks", "follow", "thanks", "follow"]  # a new journey, emails again


async def test_reenroll_always_starts_the_journey_over_even_while_in_it(temporal_env, tmp_path):
    async with webinar_stack(temporal_env, tmp_path, "always") as stack:
        await waiting_in_it(stack, "cat@globex.example", "FR")
        lead = await register(stack, "cat@globex.example", id="again-while-in-it")
        assert enrollments(lead) == 2
        assert any(h["reason"] == f"left campaign {CAMPAIGN}: re-entered on webinar_registered" for h in lead["history"])
        lead = await completed(stack, "cat@globex.example")
        assert sent_steps(lead) == ["thanks", "thanks", "follow"]


async def test_reenroll_every_30_days(temporal_env, tmp_path):
    async with webinar_stack(temporal_env, tmp_path, "{every: 30d}") as stack:
        email = "dan@globex.example"
        await stack.add(email, country="FR")
        await register(stack, email)
        await completed(stack, email)
        early = await register(stack, email, id="a-week-later")
        assert early["campaign"] is None and enrollments(early) == 1
        await stack.forward(email, timedelta(days=30))
        lead = await register(stack, email, id="a-month-later")
        assert lead["campaign"] == CAMPAIGN and enrollments(lead) == 2
