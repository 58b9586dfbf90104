"""The README's "Running it" session, run as written (issue 18.6): its commands are read
from README.md, `nurture up` runs (worker, dispatcher, starter and API, against the
test's Temporal server), and each command is checked for what the README says it does:
Jane reaches mql then sql, handoff 1 exists and is accepted, and what waits for the send
window is said by `lead show` and `outbox`, whatever the hour.

Twice: with the sample campaigns as shipped (the send window open or closed, as the
clock says), and with the window moved to hours that are closed now (the night case).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from nurture import rules
from nurture.campaign import find_campaign
from nurture.timeskip import free_port
from tests.conftest import ROOT
from tests.faults._support import until
from tests.test_up import Up

JANE = "jane@globex.example"


def readme_blocks() -> list[list[list[str]]]:
    """The indented command blocks of the README's "Running it" section, each command
    split as a shell would (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Running it\n", 1)[1].split("\n## ", 1)[0]
    blocks, current = [], []
    for line in section.splitlines():
        if line.startswith("    "):
            current.append(line[4:])
        elif current and not line.strip():
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return [[shlex.split(command, comments=True) for command in "\n".join(block).replace("\\\n", " ").splitlines()]
            for block in blocks if block[0].lstrip().startswith(("nurture", ".venv/bin/nurture"))]


def closed_now_campaigns(tmp_path: Path) -> Path:
    """The sample campaigns with b2b-trial's send window on every day, but only in a
    half hour three hours from now (Paris time): closed whenever the test runs."""
    folder = tmp_path / "campaigns"
    shutil.copytree(ROOT / "campaigns", folder)
    hour = (datetime.now(ZoneInfo("Europe/Paris")).hour + 3) % 24
    path = folder / "b2b-trial.yaml"
    text = path.read_text(encoding="utf-8")
    text = text.replace("days: [mon, tue, wed, thu, fri]", "days: [mon, tue, wed, thu, fri, sat, sun]")
    text = re.sub(r'hours: "09:00-17:30"', f'hours: "{hour:02d}:00-{hour:02d}:30"', text)
    assert f'"{hour:02d}:00-{hour:02d}:30"' in text
    path.write_text(text, encoding="utf-8")
    return folder


def window_open_now(campaigns: Path) -> bool:
    campaign = find_campaign(campaigns, "b2b-trial")
    now = datetime.now(timezone.utc)
    return rules.next_send_slot(now, campaign.send_window, "Europe/Paris") <= now


@pytest.fixture(params=["as-shipped", "window-closed"])
def session_env(request, temporal_env, tmp_path) -> dict[str, str]:
    campaigns = ROOT / "campaigns" if request.param == "as-shipped" else closed_now_campaigns(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_") and k != "SENDGRID_API_KEY"}
    env.update({
        "NURTURE_HOME": str(tmp_path / "home"), "NURTURE_HTTP_PORT": str(free_port()),
        "NURTURE_TEMPORAL_ADDRESS": temporal_env.server.address,
        "NURTURE_TASK_QUEUE": f"readme-{uuid.uuid4().hex[:8]}", "NURTURE_WORKFLOW_PREFIX": f"readme-{uuid.uuid4().hex[:8]}-",
        "NURTURE_CAMPAIGNS_DIR": str(campaigns), "NURTURE_TEMPLATES_DIR": str(ROOT / "templates" / "email"),
        "NURTURE_API_KEYS": "readme-key", "NURTURE_UPDATE_TIMEOUT": "30",
        "COLUMNS": "200",  # a wide terminal: table cells are checked whole
    })
    return env


def run(env: dict[str, str], command: list[str]) -> subprocess.CompletedProcess[str]:
    assert command[0] == "nurture", command
    result = subprocess.run([sys.executable, "-m", "nurture.cli", *command[1:]], env=env, cwd=str(ROOT),
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"{shlex.join(command)}: exit {result.returncode}\n{result.stderr}"
    return result


def welcome_sent(env: dict[str, str]) -> bool:
    result = subprocess.run([sys.executable, "-m", "nurture.cli", "outbox", "--json"], env=env, cwd=str(ROOT),
                            capture_output=True, text=True, timeout=60)
    return '"step": "welcome"' in result.stdout and '"status": "sent"' in result.stdout


async def test_the_readme_session_does_what_it_shows(session_env, tmp_path):
    (up,), session = readme_blocks()
    assert up in (["nurture", "up"], [".venv/bin/nurture", "up"]), up
    open_now = window_open_now(Path(session_env["NURTURE_CAMPAIGNS_DIR"]))
    scores = iter([("15", "lead"), ("30", "lead"), ("60", "mql")])  # pricing page, buyer's guide, quote request
    seen: list[str] = []
    with Up(session_env, tmp_path / "up.log"):
        for command in session:
            out = run(session_env, command).stdout
            what = " ".join(command[1:3] if command[1] in ("lead", "handoff") else command[1:2])
            seen.append(what)
            if what == "lead add":
                assert "stage lead" in out and "grade A" in out and "campaign b2b-trial" in out, out
            elif what == "lead show":
                assert "stage lead" in out and "grade A" in out and "campaign b2b-trial, step" in out, out
                assert "job title VP Operations  company size 250  country FR  timezone Europe/Paris" in out, out
                if not open_now:
                    assert re.search(r"campaign b2b-trial, step welcome: its email waits for the send window until "
                                     r"\d{4}-\d\d-\d\d \d\d:\d\d Europe/Paris", out), out
            elif what == "outbox" and "handoff accept" not in seen:
                if open_now:
                    assert await until(lambda: welcome_sent(session_env), 30), "the welcome email was not sent"
                else:
                    assert "nothing sent yet; 1 email(s) waiting to leave:" in out, out
                    assert re.search(rf"{re.escape(JANE)}: b2b-trial, step welcome, waits for the send window until "
                                     r"\d{4}-\d\d-\d\d \d\d:\d\d Europe/Paris", out), out
            elif what == "event":
                score, stage = next(scores)
                assert f"{JANE}: {command[3]} recorded; score {score}, stage {stage}" in out, out
            elif what == "bant":
                assert re.search(r"stage sql, owner \w+@acme\.example", out), out
            elif what == "handoff list":
                assert re.search(rf"\b1\b.*{re.escape(JANE)}.*@acme\.example.*\bopen\b", out), out
            elif what == "handoff accept":
                assert f"handoff 1 accept: {JANE} is now opportunity" in out, out
            elif what == "outbox":
                assert re.search(r"\w+@acme\.example.*New SQL: Jane", out), out  # the handoff email to the owner
                assert "waiting to leave" not in out, out  # she left the campaign at sql: nothing waits
                assert ("welcome" in out.lower()) == open_now, out  # sent only if the window was open
            elif what == "lead list":
                assert JANE in out and "opportunity" in out and "1 lead(s)" in out, out
    assert seen == ["lead add", "lead show", "outbox", "event", "event", "event", "bant", "handoff list",
                    "handoff accept", "outbox", "lead list"], seen
