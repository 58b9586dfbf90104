"""Campaign goals (issue 14.6, contract 8): `goal: [{stage: [...]}, {event: ...}]`; a lead
that meets one leaves with `goal reached`, which the campaign's stats count as its
conversion."""

from __future__ import annotations

from datetime import timedelta

from nurture import stats
from nurture.campaign import find_campaign, validate_paths
from tests.conftest import ROOT, _stack, edited_campaigns, make_settings
from tests.test_webhooks import sent_steps

GOALS = "goal: [{event: meeting_booked}, {stage: [opportunity]}]\n"


def campaigns_with_goal(tmp_path, goal: str = GOALS):
    anchor = "exit_when: [{stage: [sql, opportunity, customer]}]\n"
    return edited_campaigns(tmp_path, "b2b-trial.yaml", {anchor: anchor + goal})


async def test_a_lead_that_meets_a_goal_leaves_and_counts_as_a_conversion(temporal_env, tmp_path):
    campaigns = campaigns_with_goal(tmp_path)
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        booked, idle = "kim@globex.example", "lou@globex.example"
        for email in (booked, idle):
            await stack.add(email, first_name="Kim", source="web_form")
            await stack.until(email, lambda lead: lead["step"] == "step-2")
        await stack.nurture.ingest_events([{"email": booked, "type": "meeting_booked"}])
        lead = await stack.until(booked, lambda lead: lead["campaign"] is None, limit=timedelta(days=1))
        assert any(h["reason"] == "left campaign b2b-trial: goal reached" for h in lead["history"])
        for _ in range(6):
            await stack.forward(booked, timedelta(hours=12))
        assert sent_steps(stack.show(booked)) == ["welcome"]  # no email after the goal
        assert stack.show(idle)["campaign"] == "b2b-trial"

        with stack.session() as session:
            document = stats.campaign_stats(session, find_campaign(campaigns, "b2b-trial"), None)
        assert document["conversions"]["goal"] == 1 and document["conversion_rates"]["goal"] == 0.5
        assert document["exited"] == {"goal reached": 1}


def test_goals_are_validated_with_file_and_line(tmp_path):
    campaigns = campaigns_with_goal(tmp_path, "goal: [{stage: [opportunty]}, {}]\n")
    problems = [str(p) for p in validate_paths([campaigns / "b2b-trial.yaml"], ROOT / "templates" / "email")
                if p.severity == "error"]
    assert any(":33: goal.0.stage" in p and "opportunity" in p for p in problems), problems  # did you mean
    assert any(":33: goal.1" in p for p in problems), problems  # an empty condition
