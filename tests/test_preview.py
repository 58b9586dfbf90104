"""`nurture campaign test`: a campaign's exact path for one lead before launch.

The preview runs the same workflow code on its own embedded server under simulated
time; these tests hold it to a real run of the same campaign and events on the test
stack, check the sample campaign's two paths, and check that bad input is one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from nurture import rules
from nurture.campaign import CampaignError, load_campaign
from nurture.preview import (
    _utc,
    format_offset,
    read_events,
    read_lead,
    render,
    run_preview,
)
from nurture.service import LeadIn, UserError
from tests.conftest import ROOT

SAMPLE = ROOT / "campaigns" / "b2b-trial.yaml"
JANE = {"email": "jane@globex.example", "first_name": "Jane", "job_title": "VP Operations", "company_size": 250,
        "country": "FR", "timezone": "Europe/Paris", "source": "web_form"}
CLICK = "- {at: 2d3h, type: email_click, step: case-study}\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def sent_steps(entries: list[dict[str, Any]]) -> list[str]:
    return [e["detail"]["step"] for e in entries if e["kind"] == "email" and e.get("detail", {}).get("status") == "sent"]


def at_hours(entries: list[dict[str, Any]], origin: str) -> list[float]:
    return [(_utc(e["at"]) - _utc(origin)).total_seconds() / 3600 for e in entries]


# ---------------------------------------------------------------- the same path as a real run


def zone_at_local_hour(hour: int) -> str:
    """A fixed-offset zone where the clock now shows `hour` (Etc/GMT-3 is UTC+3): the
    send window's effect then does not depend on the hour the tests run."""
    offset = (hour - datetime.now(timezone.utc).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return f"Etc/GMT{-offset:+d}" if offset else "UTC"


def click_after_the_case_study(zone: str) -> timedelta:
    """When to click so the case study has gone out (3 hours after it; before the 3d timeout)."""
    window = load_campaign(SAMPLE).send_window
    now = datetime.now(timezone.utc)
    welcome = rules.next_send_slot(now, window, zone)
    return rules.next_send_slot(welcome + timedelta(days=2), window, zone) + timedelta(hours=3) - now


async def test_the_preview_is_the_path_a_real_run_takes(stack, tmp_path: Path) -> None:
    # 10:00 in the lead's zone: the welcome goes out at once on a weekday, far from the window's edges.
    lead = {**JANE, "timezone": zone_at_local_hour(10)}
    click = click_after_the_case_study(lead["timezone"])
    campaign = load_campaign(SAMPLE)
    script = f"- {{at: {int(click.total_seconds() // 60)}m, type: email_click, step: case-study}}\n"
    events = read_events(write(tmp_path / "events.yaml", script), campaign)
    preview = await run_preview(SAMPLE, LeadIn(**lead), events, stack.settings)

    # The same lead, campaign and click at the same offset, on the test stack's own server and worker.
    email = lead["email"]
    await stack.add(email, campaign="b2b-trial", **{k: v for k, v in lead.items() if k != "email"})
    history = stack.show(email)["history"]
    (enrolled,) = [h["at"] for h in history if h["reason"].startswith("enrolled in b2b-trial ")]
    handle = stack.handle(email)
    await stack.forward(email, _utc(enrolled) + events[0].at - await stack.env.now(handle))
    await stack.nurture.record_event(email, "email_click", at=await stack.env.now(handle), step="case-study",
                                     campaign="b2b-trial")
    # Past the campaign's end (the preview stops there), short of the 30-day score decay
    # after the click (a forward of exactly 30 days could land on either side of it).
    await stack.forward(email, timedelta(days=25))
    real = stack.show(email)

    assert real["campaign"] is None and preview.ended
    # Reasons may name a wall-clock time ("held by the frequency cap until ... UTC"): the two
    # runs started seconds apart, so those times are compared as offsets below instead.
    shown = [(e.kind, _timeless(e.reason), e.delta, e.score) for e in preview.entries]
    assert shown == [(h["kind"], _timeless(h["reason"]), h["delta"], h["score"]) for h in real["history"]]
    offsets = [e.offset.total_seconds() / 3600 for e in preview.entries]
    real_offsets = at_hours(real["history"], enrolled)
    assert all(abs(a - b) < 2 / 60 for a, b in zip(offsets, real_offsets)), (offsets, real_offsets)

    # the click path of the sample campaign, as README.md tells it
    entries = [e.as_json() for e in preview.entries]
    assert sent_steps(entries) == ["welcome", "case-study", "demo-invite", "end"]
    reasons = [e.reason for e in preview.entries]
    assert "wait-click: email_click on case-study seen" in reasons
    assert not any("going to reminder" in r for r in reasons) and not any("ignored" in r for r in reasons)
    assert [e for e in entries if e["kind"] == "score"][0]["offset"] == format_offset(events[0].at)
    assert preview.zone.key == lead["timezone"]

    console = Console(record=True, width=160)
    render(preview, console)
    text = console.export_text()
    assert f"time ({lead['timezone']})" in text and format_offset(events[0].at) in text and "email_click" in text
    assert re.search(r"sent case_study: \"(Save 30% like Globex|Jane, a story for you)\"", text)
    assert re.search(r"4 emails sent; final stage lead, score 5 \(grade A, cold\); left b2b-trial at \+\d+d \d\d:\d\d: "
                     r"completed", text), text


async def test_a_click_before_its_email_went_out_is_ignored_and_the_timeline_says_why(stack, tmp_path: Path) -> None:
    # 02:00 in the lead's zone: the welcome waits for 09:00, and the case study two days
    # after it (later still over a weekend), so a click at 2d3h comes before the case study.
    lead = LeadIn(**{**JANE, "timezone": zone_at_local_hour(2)})
    events = read_events(write(tmp_path / "events.yaml", CLICK), load_campaign(SAMPLE))

    preview = await run_preview(SAMPLE, lead, events, stack.settings)

    entries = [e.as_json() for e in preview.entries]
    (ignored,) = [e for e in entries if e.get("detail", {}).get("ignored")]
    assert (ignored["kind"], ignored["offset"], ignored["delta"]) == ("note", "+2d 03:00", None)
    match = re.fullmatch(r"scripted email_click on case-study ignored: that email had not been sent yet, "
                         r"the lead was at step (step-2 \(wait 2d\)|welcome \(send window\)); "
                         r"it went out at (\+\d+d \d\d:\d\d)", ignored["reason"])
    assert match, ignored["reason"]
    # (a send held for the window over a weekend is an email entry too: the sent one counts)
    (case_study,) = [e for e in entries if e["kind"] == "email" and e["detail"].get("step") == "case-study"
                     and e["detail"].get("status") == "sent"]
    assert match[2] == case_study["offset"] and _utc(case_study["at"]) > _utc(ignored["at"])
    # the click never happened for the journey: the timeout path, and no points
    assert sent_steps(entries) == ["welcome", "case-study", "reminder", "end"]
    assert "wait-click: no email_click on case-study within 3d, going to reminder" in [e["reason"] for e in entries]
    assert not [e for e in entries if e["kind"] == "score"] and preview.lead["score"] == 0


def _timeless(reason: str) -> str:
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d (UTC|[A-Za-z_]+/[A-Za-z_/]+)", "<time>", reason)


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NURTURE_HOME": str(home), "NURTURE_CAMPAIGNS_DIR": str(ROOT / "campaigns"),
           "NURTURE_TEMPLATES_DIR": str(ROOT / "templates" / "email"), **extra}
    for name in ("NURTURE_DATABASE_URL", "NURTURE_TEMPORAL_ADDRESS"):
        env.pop(name, None)
    return env


def nurture(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nurture.cli", *args], check=False, capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


async def test_the_cli_prints_the_timeout_path_as_json_and_sends_nothing(tmp_path: Path) -> None:
    import asyncio

    lead = write(tmp_path / "bob.json", json.dumps({"email": "bob@initech.example", "first_name": "Bob",
                                                    "source": "content_download", "timezone": "America/New_York"}))
    # A SendGrid key and an unreachable host: a preview must use neither.
    env = cli_env(tmp_path / "home", SENDGRID_API_KEY="SG.must-not-be-used", NURTURE_SENDGRID_API_HOST="http://127.0.0.1:9")
    result = await asyncio.to_thread(nurture, "campaign", "test", str(SAMPLE), "--lead", str(lead), "--json",
                                     env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert set(entries[0]) >= {"at", "offset", "kind", "reason", "delta", "score"}
    assert all(re.fullmatch(r"[+-]\d+d \d\d:\d\d", e["offset"]) for e in entries)
    assert all(e["at"].endswith(("-05:00", "-04:00")) for e in entries)  # the lead's own zone
    assert sent_steps(entries) == ["welcome", "case-study", "reminder", "end"]
    reasons = [e["reason"] for e in entries]
    assert "wait-click: no email_click on case-study within 3d, going to reminder" in reasons
    assert "branch-hot: condition does not hold" in reasons
    assert reasons[-1] == "left campaign b2b-trial: completed"
    assert not (tmp_path / "home").exists()  # nothing written to NURTURE_HOME


# ---------------------------------------------------------------- input: one clear line per problem


@pytest.mark.parametrize(("text", "message"), [
    ('{"email": "jane@globex.example",\n "first_name": "Jane" "x": 1}', r"lead.json:2: not valid JSON: Expecting ',' delimiter"),
    ('["jane@globex.example"]', r"lead.json: expected a JSON object of lead fields"),
    ('{"email": "jane@globex.example", "jobtitle": "VP"}', r"lead.json: jobtitle: unknown lead field \(did you mean 'job_title'\?\)"),
    ('{"email": "jane@globex.example", "company_size": "lots"}', r"lead.json: company_size: 'lots' is not a whole number"),
    ('{"email": "jane@globex.example", "timezone": "Paris"}', r"lead.json: timezone: 'Paris' is not an IANA time zone"),
    ('{"first_name": "Jane"}', r"lead.json: email: missing"),
    ('{"email": "jane@"}', r"lead.json: email: invalid email address"),
    ('{"email": "jane@globex.example", "first_name": ["Jane"]}', r"lead.json: first_name: expected text, got a list"),
    ('{"email": "jane@globex.example", "attributes": {"plan": {"a": 1}}}', r"lead.json: attributes.plan: expected text"),
])
def test_a_bad_lead_file_is_one_line_naming_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        read_lead(write(tmp_path / "lead.json", text))


def test_a_lead_file_gives_the_lead_fields(tmp_path: Path) -> None:
    lead = read_lead(write(tmp_path / "lead.json", json.dumps({**JANE, "email": " Jane@Globex.Example ", "country": "fr",
                                                               "locale": None, "attributes": {"plan": "pro", "seats": 12}})))
    assert lead == LeadIn(email="jane@globex.example", first_name="Jane", job_title="VP Operations", company_size=250,
                          country="FR", timezone="Europe/Paris", source="web_form", attributes={"plan": "pro", "seats": 12})


def test_scripted_events_are_read_in_offset_order(tmp_path: Path) -> None:
    events = read_events(write(tmp_path / "events.yaml", "- {at: 4d, type: page_view, url: https://acme.example/pricing}\n"
                                                         + CLICK + "- {at: 0, type: email_open, step: welcome}\n"),
                         load_campaign(SAMPLE))
    assert [(e.at, e.type, e.fields) for e in events] == [
        (timedelta(0), "email_open", {"step": "welcome", "campaign": "b2b-trial"}),
        (timedelta(days=2, hours=3), "email_click", {"step": "case-study", "campaign": "b2b-trial"}),
        (timedelta(days=4), "page_view", {"url": "https://acme.example/pricing"}),
    ]


def test_bad_events_are_every_problem_as_file_line_path(tmp_path: Path) -> None:
    path = write(tmp_path / "events.yaml", "- {at: 2d3h, type: email_click, step: case-study}\n"
                                          "- {at: soon, type: email_click}\n"
                                          "- at: 1d\n"
                                          "  type: Email Click\n"
                                          "- {at: 3d, type: email_click, step: case_study, urll: x}\n")
    with pytest.raises(CampaignError) as caught:
        read_events(path, load_campaign(SAMPLE))
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:2: 1.at: invalid duration 'soon': use e.g. 30s, 15m, 4h, 2d, 1w, 1d12h (time after enrollment)",
        f"{path}:4: 2.type: expected an event type like email_click (lower-case letters, digits and _), got 'Email Click'",
        f"{path}:5: 3.urll: unknown key 'urll' (did you mean 'url'?)",
        f"{path}:5: 3.step: campaign b2b-trial has no step 'case_study' (did you mean 'case-study'?)",
    ]


def test_offsets_read_as_days_and_hours_after_enrollment() -> None:
    assert format_offset(timedelta(days=2, hours=9)) == "+2d 09:00"
    assert format_offset(timedelta(days=13, hours=18, minutes=37, seconds=59)) == "+13d 18:37"
    assert format_offset(timedelta(milliseconds=-40)) == "+0d 00:00"
    assert format_offset(timedelta(hours=-3)) == "-0d 03:00"


async def test_the_cli_refuses_bad_input_before_starting_anything(tmp_path: Path) -> None:
    import asyncio

    env = cli_env(tmp_path / "home")
    good = write(tmp_path / "lead.json", json.dumps(JANE))
    broken = write(tmp_path / "broken.yaml", (SAMPLE.read_text().replace("timeout: 3d", "timeout: 3 days")
                                              .replace("send: demo_invite", "send: demo_invitation")))
    runs = await asyncio.gather(
        asyncio.to_thread(nurture, "campaign", "test", str(SAMPLE), "--lead", str(write(tmp_path / "bad.json", '{"email": 1}')),
                          env=env, cwd=tmp_path),
        asyncio.to_thread(nurture, "campaign", "test", str(SAMPLE), "--lead", str(good), "--events",
                          str(write(tmp_path / "ev.yaml", "- {at: 2x, type: email_click}\n")), env=env, cwd=tmp_path),
        asyncio.to_thread(nurture, "campaign", "test", str(broken), "--lead", str(good), env=env, cwd=tmp_path),
        asyncio.to_thread(nurture, "campaign", "test", str(tmp_path / "nope.yaml"), "--lead", str(good), env=env, cwd=tmp_path),
    )
    for result in runs:
        assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr, result
    assert runs[0].stderr.strip() == f"error: {tmp_path / 'bad.json'}: email: invalid email address '1': an email address must have an @-sign"
    assert runs[1].stderr.strip() == (f"{tmp_path / 'ev.yaml'}:1: 0.at: invalid duration '2x': use e.g. 30s, 15m, 4h, "
                                      "2d, 1w, 1d12h (time after enrollment)")
    lines = runs[2].stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{broken}:") for line in lines), lines
    assert "steps.3.timeout" in lines[0] and "demo_invitation" in lines[1]
    assert runs[3].stderr.strip() == f"{tmp_path / 'nope.yaml'}:1: (file): no such file"
    assert not (tmp_path / "home").exists()


async def test_the_cli_exits_1_when_a_step_fails_and_refuses_a_subject_that_cannot_render(tmp_path: Path) -> None:
    import asyncio

    env = cli_env(tmp_path / "home", COLUMNS="200")
    jane = write(tmp_path / "jane.json", json.dumps(JANE))
    sample = SAMPLE.read_text(encoding="utf-8")
    line = next(i for i, text in enumerate(sample.splitlines(), 1) if "id: case-study, send: case_study" in text)
    # Renders for the sample leads of validation (US, and none), fails for Jane (FR) at send time.
    only_in_france = "{% if lead.country == 'FR' %}{{ lead.nope }}{% endif %}Our story"
    subjects = re.search(r"subject: (\[.*\])", sample)[1]
    failing = write(tmp_path / "failing.yaml", sample.replace(subjects, json.dumps(only_in_france)))
    unknown = write(tmp_path / "unknown.yaml", sample.replace(subjects, '["Hello", "ok {{ unknown_var }}"]'))

    failed, refused = await asyncio.gather(
        asyncio.to_thread(nurture, "campaign", "test", str(failing), "--lead", str(jane), env=env, cwd=tmp_path),
        asyncio.to_thread(nurture, "campaign", "test", str(unknown), "--lead", str(jane), env=env, cwd=tmp_path),
    )

    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed
    assert "case_study failed: subject override line 1: 'dict object' has no attribute 'nope'" in failed.stdout
    assert re.search(r"3 emails sent, 1 failed; final stage lead", failed.stdout), failed.stdout
    assert re.fullmatch(r"error: step case-study at \+\d+d \d\d:\d\d: case_study failed: subject override line 1: "
                        r"'dict object' has no attribute 'nope'", failed.stderr.strip()), failed.stderr
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.strip() == f"{unknown}:{line}: steps.2.subject.1: subject template: 'unknown_var' is undefined"


async def test_render_puts_each_sent_emails_text_in_the_timeline(tmp_path: Path) -> None:
    import asyncio

    jane = write(tmp_path / "jane.json", json.dumps(JANE))
    result = await asyncio.to_thread(nurture, "campaign", "test", str(SAMPLE), "--lead", str(jane), "--render", "--json",
                                     env=cli_env(tmp_path / "home"), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    sent = [e for e in json.loads(result.stdout) if e["kind"] == "email" and e["detail"].get("status") == "sent"]
    assert len(sent) >= 3 and all("Unsubscribe: http://127.0.0.1:8000/u/" in e["text"] for e in sent)
    welcome = next(e for e in sent if e["detail"]["step"] == "welcome")
    assert welcome["text"].startswith("Hi Jane,")  # Jane has no locale: the English text
