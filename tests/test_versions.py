"""Editing a campaign while leads are in it: a lead finishes on the version it was
enrolled in (its workflow holds that version); new enrollments take the new one."""

from __future__ import annotations

import hashlib
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from nurture.preview import advance_until
from tests.conftest import ROOT, Stack, _stack, make_settings


def templates_sent(lead: dict[str, Any]) -> list[str]:
    return [h["detail"]["template"] for h in lead["history"]
            if h["kind"] == "email" and h.get("detail", {}).get("status") == "sent"]


def enrolled_version(lead: dict[str, Any]) -> str:
    (version,) = [h["detail"]["version"] for h in lead["history"] if h["reason"].startswith("enrolled in b2b-trial ")]
    return version


async def advance(stack: Stack, email: str, done: Any) -> None:
    limit = await stack.env.now(stack.handle(email)) + timedelta(days=60)
    assert await advance_until(stack.nurture, stack.env, email, done, limit), stack.show(email)


# Explicitly (`--campaign`, find_campaign) and automatically (`auto_on`, pick_campaign):
# both must read the file as it is now, even when edited in place.
@pytest.mark.parametrize("campaign", [pytest.param("b2b-trial", id="explicit"), pytest.param(None, id="auto_on")])
async def test_a_lead_keeps_its_campaign_version_and_new_leads_take_the_edited_one(
        temporal_env, tmp_path: Path, campaign: str | None) -> None:
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    for path in (ROOT / "campaigns").glob("*.yaml"):
        shutil.copy(path, campaigns)
    file = campaigns / "b2b-trial.yaml"
    old_text = file.read_bytes()
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        old, new = "ann@before.example", "bob@after.example"
        await stack.add(old, campaign, first_name="Ann", source="web_form", timezone="Europe/Paris")
        await advance(stack, old, lambda lead: lead["step"] == "step-2")  # welcome sent, now in `wait: 2d`
        assert templates_sent(stack.show(old)) == ["welcome"]

        # The marketer edits the live campaign: the case study step sends another email.
        new_text = old_text.replace(b"send: case_study,", b"send: checkin,")
        assert new_text != old_text
        file.write_bytes(new_text)
        await stack.add(new, campaign, first_name="Bob", source="web_form", timezone="Europe/Paris")

        for email in (old, new):
            await advance(stack, email, lambda lead: lead["campaign"] is None)
        before, after = stack.show(old), stack.show(new)

    assert templates_sent(before) == ["welcome", "case_study", "case_study_reminder", "last_chance"]
    assert templates_sent(after) == ["welcome", "checkin", "case_study_reminder", "last_chance"]
    assert enrolled_version(before) == hashlib.sha256(old_text).hexdigest()[:12]
    assert enrolled_version(after) == hashlib.sha256(new_text).hexdigest()[:12]
    for lead in (before, after):
        assert any(h["reason"] == "left campaign b2b-trial: completed" for h in lead["history"])
