"""Times say their zone: a lead's times in its own zone, named; other times in UTC,
named; durations as written (7d stays 7d)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from rich.console import Console

from nurture import cli, when
from nurture.campaign import format_duration, parse_duration

DAY = timedelta(days=1)


def test_a_time_is_shown_to_the_minute_in_the_named_zone():
    at = "2027-03-29T07:00:12.345678Z"
    assert when.labelled(at, "Europe/Paris") == "2027-03-29 09:00 Europe/Paris"
    assert when.labelled(at, None) == "2027-03-29 07:00 UTC"
    assert when.labelled(at, "Mars/Base") == "2027-03-29 07:00 UTC"  # never a wrong zone, only UTC
    assert when.header("at", "America/New_York") == "at (America/New_York)"


def test_durations_print_as_written_in_days_and_hours():
    for written in ("7d", "14d", "1d12h", "2d", "30s", "4h15m"):
        assert format_duration(parse_duration(written)) == written


def rendered(lead: dict) -> list[str]:
    console = Console(record=True, width=160)
    original = cli.out
    cli.out = console
    try:
        cli.render_lead(lead)
    finally:
        cli.out = original
    return console.export_text().splitlines()


def test_lead_show_prints_the_lead_times_in_its_zone_with_numbers_under_their_headers():
    lead = {"email": "ann@globex.example", "stage": "lead", "status": "subscribed", "score": 105, "grade": "B",
            "temperature": "hot", "owner": None, "bant": {"budget": None}, "campaign": "b2b-trial",
            "step": "case-study", "waiting_for": "send window", "next_action_at": "2027-03-29T07:00:00Z",
            "timezone": "America/New_York",
            "history": [{"at": "2027-03-27T10:00:00.123456Z", "kind": "score", "delta": 5, "reason": "email_click",
                         "score": 5},
                        {"at": "2027-03-27T11:30:00Z", "kind": "score", "delta": 100, "reason": "quote_request",
                         "score": 105}]}
    lines = rendered(lead)
    assert "its email waits for the send window until 2027-03-29 03:00 America/New_York" in "\n".join(lines)
    header = next(line for line in lines if "at (America/New_York)" in line)
    rows = [line for line in lines if "2027-03-27" in line]
    assert [row.split("│")[1].strip() for row in rows] == ["2027-03-27 06:00", "2027-03-27 07:30"]
    for name in ("delta", "score"):  # right-aligned: each header ends where its numbers end
        end = header.index(name) + len(name)
        assert all(row[:end].rstrip()[-1].isdigit() and row[end] == " " for row in rows), (name, rows)


async def test_a_held_email_says_until_when_in_the_lead_zone(stack):
    email = "held@globex.example"
    await stack.add(email, first_name="Hal", source="web_form", timezone="America/New_York")
    await stack.until(email, lambda lead: lead["step"] == "wait-click")
    await stack.nurture.record_event(email, "email_click", step="case-study", campaign="b2b-trial")
    await stack.forward(email, 14 * DAY)  # the click path's 4th email in 7 days waits for the cap
    lead = stack.show(email)
    held = [h for h in lead["history"] if "held" in h["reason"]]
    assert held, [h["reason"] for h in lead["history"]]
    for entry in held:
        shown = re.search(r"until (\d{4}-\d\d-\d\d \d\d:\d\d) America/New_York$", entry["reason"])
        assert shown, entry["reason"]
        until = datetime.fromisoformat(entry["detail"]["until"].replace("Z", "+00:00"))
        assert shown.group(1) == f"{until.astimezone(ZoneInfo('America/New_York')):%Y-%m-%d %H:%M}"
    capped = [h["reason"] for h in held if "frequency cap" in h["reason"]]
    assert all("(3 per 7d)" in reason for reason in capped)
    assert capped, "the sample campaign's fourth email waits for the frequency cap"


def test_utc_stays_utc():
    assert when.clock(datetime(2027, 1, 1, 12, 5, 59, tzinfo=timezone.utc)) == "2027-01-01 12:05"
