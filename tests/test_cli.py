"""The `nurture` command as a user runs it: a subprocess against the test server.

Every error is one line on stderr with the right exit code (1 user error, 2 usage,
3 service unreachable), never a traceback; `--json` prints one document."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CONTRACT_KEYS = {"email", "stage", "status", "score", "grade", "temperature", "owner", "bant",
                 "campaign", "step", "history"}


@pytest.fixture
def cli(stack):
    env = {
        **os.environ,
        "NURTURE_HOME": str(stack.settings.home),
        "NURTURE_DATABASE_URL": stack.settings.db_url,
        "NURTURE_TEMPORAL_ADDRESS": stack.env.server.address,
        "NURTURE_TASK_QUEUE": stack.settings.task_queue,
        "NURTURE_WORKFLOW_PREFIX": stack.settings.workflow_prefix,
        "NURTURE_CAMPAIGNS_DIR": str(stack.settings.campaigns_dir),
        "NURTURE_TEMPLATES_DIR": str(stack.settings.templates_dir),
        "NURTURE_SECRET": "cli-test-secret",
        "NURTURE_UPDATE_TIMEOUT": "20",
    }
    env.pop("SENDGRID_API_KEY", None)

    async def run(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        # In a thread: the test's worker runs on this event loop and must keep serving.
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "nurture.cli", *args], capture_output=True, text=True,
            env={**env, **(extra_env or {})}, timeout=60)

    return run


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


async def test_lead_add_show_event_bant_through_the_cli(cli):
    added = await cli("lead", "add", "--email", " Ann@Globex.Example ", "--first-name", "Ann", "--job-title", "VP Sales",
                "--company-size", "120", "--source", "web_form", "--attr", "plan=pro", "--json")
    assert added.returncode == 0, added.stderr
    lead = json.loads(added.stdout)
    assert CONTRACT_KEYS <= set(lead)
    assert lead["email"] == "ann@globex.example" and lead["campaign"] == "b2b-trial" and lead["grade"] == "A"
    assert lead["bant"] == {"budget": None, "authority": None, "need": None, "timing": None}

    clicked = await cli("event", "ann@globex.example", "email_click", "--step", "case-study", "--campaign", "b2b-trial")
    assert clicked.returncode == 0, clicked.stderr
    bant = await cli("bant", "ann@globex.example", "--budget", "yes", "--need", "no")
    assert bant.returncode == 0, bant.stderr

    shown = json.loads((await cli("lead", "show", "ann@globex.example", "--json")).stdout)
    assert shown["score"] == 5 and shown["bant"]["budget"] is True and shown["bant"]["need"] is False
    score = [h for h in shown["history"] if h["kind"] == "score"]
    assert score[-1]["delta"] == 5 and score[-1]["reason"] == "email_click" and score[-1]["score"] == 5
    assert [h["at"] for h in shown["history"]] == sorted(h["at"] for h in shown["history"])

    table = await cli("lead", "show", "ann@globex.example")
    assert table.returncode == 0 and "email_click" in table.stdout and "history" in table.stdout
    assert json.loads((await cli("handoff", "list", "--json")).stdout) == []
    outbox = json.loads((await cli("outbox", "--json")).stdout)
    assert all({"to", "subject", "campaign", "step", "sent_at"} <= set(row) for row in outbox)


@pytest.mark.parametrize(("args", "code", "says"), [
    (("lead", "add", "--email", "not-an-address"), 1, "email: invalid email address 'not-an-address'"),
    (("lead", "add", "--email", "<a@b.example>"), 1, "email: invalid email address '<a@b.example>'"),
    (("lead", "add", "--email", "a,b@b.example"), 1, "email: invalid email address 'a,b@b.example'"),
    (("lead", "add", "--email", "a@b.example", "--timezone", "Mars/Base"), 1,
     "timezone: 'Mars/Base' is not an IANA time zone like Europe/Paris"),
    (("lead", "add", "--email", "a@b.example", "--locale", "français"), 1, "locale: 'français' is not a locale"),
    (("lead", "add", "--email", "a@b.example", "--country", "France"), 1,
     "country: 'France' is not a two-letter country code like FR"),
    (("lead", "add", "--email", "a@b.example", "--company-size", "99999999999"), 1,
     "company_size: '99999999999' is more than 10,000,000"),
    (("lead", "add", "--email", "a@b.example", "--attr", "notes=" + "x" * 1001), 1,
     "attributes.notes: longer than 1000 characters"),
    (("event", "nobody@nowhere.example", "email_click", "--at", "0001-01-01T00:00:00+01:00"), 1,
     "--at: must be between 1971 and 2999"),
    (("handoff", "accept", str(2**63)), 1, f"handoff {2**63}: no such handoff"),
    (("lead", "show", "nobody@nowhere.example"), 1, "nobody@nowhere.example: no such lead"),
    (("enroll", "nobody@nowhere.example", "b2b-trial"), 1, "no such lead"),
    (("event", "nobody@nowhere.example", "Email-Click"), 2, "TYPE: 'Email-Click' is not an event type"),
    (("event", "nobody@nowhere.example", "email_click", "--at", "yesterday"), 1, "--at: 'yesterday' is not an ISO 8601"),
    (("bant", "nobody@nowhere.example", "--budget", "maybe"), 2, "--budget: expected yes or no, got 'maybe'"),
    (("lead", "add", "--email", "a@b.example", "--attr", "novalue"), 2, "--attr: expected KEY=VALUE"),
    (("handoff", "accept", "999"), 1, "handoff 999: no such handoff"),
    (("lead", "add"), 2, "Missing option '--email'"),
    (("lead", "add", "--email", "a@b.example", "--company-size", "many"), 2, "Invalid value for '--company-size'"),
])
async def test_bad_input_gets_one_clean_line_and_the_right_exit_code(cli, args, code, says):
    result = await cli(*args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert says in result.stderr
    if code == 1:
        assert one_error_line(result).startswith("error: ")


async def test_unreachable_temporal_exits_3_and_writes_nothing(cli, stack):
    result = await cli("lead", "add", "--email", "late@globex.example", extra_env={"NURTURE_TEMPORAL_ADDRESS": "127.0.0.1:9"})
    assert result.returncode == 3
    assert "cannot reach Temporal at 127.0.0.1:9" in one_error_line(result)
    assert (await cli("lead", "show", "late@globex.example")).returncode == 1  # nothing half-written


async def test_campaign_validate_reports_file_line_path_message(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsender: {from: hello@acme.example}\nsteps:\n  - {id: a, send: welcome}\n"
                   "  - {id: b, goto: nowhere}\n  - {wait: 2 days}\n")
    result = await cli("campaign", "validate", str(bad))
    assert result.returncode == 1
    assert f"{bad}:5: steps.1.goto: " in result.stderr and "nowhere" in result.stderr
    assert f"{bad}:6: steps.2.wait: " in result.stderr
    assert "Traceback" not in result.stderr
    good = await cli("campaign", "validate", str(Path(__file__).parent.parent / "campaigns"))
    assert good.returncode == 0, good.stderr


async def test_funnel_show_and_campaign_list(cli):
    funnel = json.loads((await cli("funnel", "show", "--json")).stdout)
    assert funnel["qualify"]["mql"] == {"score": 50, "min_grade": "C", "notify": None}  # no MQL alert in the sample
    names = [c["name"] for c in json.loads((await cli("campaign", "list", "--json")).stdout)]
    assert names == ["b2b-trial", "recycled-nurture"]


# ---------------------------------------------------------------- start-up cost and schema


def bare_cli(home: Path, *args: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    """The CLI on its own store, with Temporal pointed at a closed port: a command that
    answers from the store must not need it."""
    env = {**os.environ, "NURTURE_HOME": str(home), "NURTURE_DATABASE_URL": f"sqlite:///{home / 'nurture.db'}",
           "NURTURE_TEMPORAL_ADDRESS": "127.0.0.1:9", "NURTURE_CAMPAIGNS_DIR": str(ROOT / "campaigns")}
    return subprocess.run([sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "nurture.cli", *args],
                          capture_output=True, text=True, env=env, timeout=60, cwd=str(ROOT))


@pytest.mark.parametrize("args", [("lead", "show", "ann@globex.example"), ("handoff", "list"), ("outbox", "--json"),
                                  ("campaign", "list"), ("segment", "list"), ("segment", "show", "hot-fr", "--count"),
                                  ("lead", "list", "--segment", "never-opened")])
def test_read_commands_load_neither_temporal_nor_migrations(tmp_path, args):
    from nurture.db import upgrade

    upgrade(f"sqlite:///{tmp_path / 'nurture.db'}")
    result = bare_cli(tmp_path, *args, importtime=True)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
              if line.startswith("import time:")}
    assert "sqlalchemy" in loaded or args[:2] in (("campaign", "list"), ("segment", "list"))  # the log is there
    assert not loaded & {"temporalio", "alembic", "fastapi", "uvicorn", "sendgrid", "workflows"}, loaded


def test_a_store_at_an_older_schema_is_refused_until_db_upgrade(tmp_path):
    from alembic import command

    from nurture.db import alembic_config, current_revision, head_revision

    url = f"sqlite:///{tmp_path / 'nurture.db'}"
    command.upgrade(alembic_config(url), "0001")
    refused = bare_cli(tmp_path, "lead", "show", "ann@globex.example")
    assert refused.returncode == 1
    assert one_error_line(refused).endswith(f"is at schema revision 0001, this nurture needs {head_revision()}: "
                                            "run `nurture db upgrade`")
    assert current_revision(url) == "0001"  # a read command never migrates
    assert bare_cli(tmp_path, "db", "upgrade").returncode == 0
    assert current_revision(url) == head_revision()
    assert "no such lead" in one_error_line(bare_cli(tmp_path, "lead", "show", "ann@globex.example"))


def test_a_store_migrated_by_a_newer_nurture_is_refused(tmp_path):
    from sqlalchemy import text

    from nurture.db import get_engine, upgrade

    url = f"sqlite:///{tmp_path / 'nurture.db'}"
    upgrade(url)
    with get_engine(url).begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    refused = bare_cli(tmp_path, "outbox")
    assert refused.returncode == 1
    assert "is at schema revision 9999, newer than this nurture knows" in one_error_line(refused)


def test_a_brand_new_store_gets_its_tables(tmp_path):
    from nurture.db import current_revision, head_revision

    result = bare_cli(tmp_path, "handoff", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert current_revision(f"sqlite:///{tmp_path / 'nurture.db'}") == head_revision()


def test_the_head_read_from_the_migration_files_is_alembics():
    from alembic.script import ScriptDirectory

    from nurture.db import alembic_config, head_revision

    assert head_revision() == ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_import_when_temporal_goes_away_ends_in_one_line_exit_3(tmp_path):
    """The server dies mid-import: the calls in flight fail after the first one stopped
    the import; neither their tracebacks nor the SDK core's retry warnings are printed."""
    import csv
    import time

    from nurture.temporal import start_dev_server
    from nurture.timeskip import free_port

    server = start_dev_server(tmp_path / "temporal", port=free_port(), ui_port=free_port(), persist=False)
    env = {**os.environ, "NURTURE_HOME": str(tmp_path), "NURTURE_TEMPORAL_ADDRESS": server.address,
           "NURTURE_CAMPAIGNS_DIR": str(ROOT / "campaigns"), "NURTURE_TEMPLATES_DIR": str(ROOT / "templates" / "email"),
           "NURTURE_SECRET": "cli-test-secret", "NURTURE_UPDATE_TIMEOUT": "20"}
    # Migrated first: the worker migrates at start, and an import that read the store
    # mid-migration (a loaded machine) rightly refused it as being at an older revision.
    assert subprocess.run([sys.executable, "-m", "nurture.cli", "db", "upgrade"], env=env, cwd=str(ROOT),
                          capture_output=True, timeout=120).returncode == 0
    worker = subprocess.Popen([sys.executable, "-m", "nurture.cli", "worker"], env=env, cwd=str(ROOT),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with (tmp_path / "leads.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["email", "first_name", "source"])
            writer.writerows([f"gone{index}@globex.example", f"Gone{index}", "web_form"] for index in range(3000))
        importing = subprocess.Popen([sys.executable, "-m", "nurture.cli", "import", str(tmp_path / "leads.csv")],
                                     env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not _stored_leads(tmp_path / "nurture.db") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert importing.poll() is None, importing.communicate()
        server.process.kill()
        stdout, stderr = importing.communicate(timeout=120)
    finally:
        worker.kill()
        server.stop()
    assert importing.returncode == 3, (stdout, stderr)
    assert "Traceback" not in stderr and "WARN" not in stdout + stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith("run the same import again once Temporal answers"), stderr
    assert stdout == ""


def _stored_leads(path: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("select count(*) from lead").fetchone()[0]
    except sqlite3.Error:
        return 0


async def test_terminal_escapes_in_lead_fields_are_never_printed_raw(cli, tmp_path):
    """Issue 17.8: a CSV row can carry ESC sequences (retitle the window, clear the screen,
    hide lines); the CLI prints the text without them, and JSON escapes them."""
    company = "\x1b]0;pwned\x07Acme\x1b[2J\x9b1A Corp"
    path = tmp_path / "leads.csv"
    path.write_text(f"email,first_name,company\nesc@globex.example,Eve\x7f\x08,{company}\n", encoding="utf-8")
    imported = await cli("import", str(path))
    assert imported.returncode == 0, imported.stderr

    for args in (("lead", "show", "esc@globex.example"), ("lead", "list"), ("lead", "show", "esc@globex.example", "--json")):
        shown = await cli(*args)
        assert shown.returncode == 0, shown.stderr
        raw = [char for char in shown.stdout if ord(char) < 32 and char not in "\n\t" or 0x7f <= ord(char) <= 0x9f]
        assert raw == [], (args, raw)
        if "--json" in args:
            assert json.loads(shown.stdout)["company"] == company  # the data is kept as typed
        elif args[1] == "show":
            assert "]0;pwnedAcme[2J1A Corp" in shown.stdout


async def test_remove_takes_a_lead_out_of_its_campaign(cli):
    added = await cli("lead", "add", "--email", "rex@globex.example", "--source", "web_form", "--json")
    assert added.returncode == 0 and json.loads(added.stdout)["campaign"] == "b2b-trial", added.stderr
    removed = await cli("remove", "rex@globex.example")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == "rex@globex.example left b2b-trial: removed; stage lead"
    shown = json.loads((await cli("lead", "show", "rex@globex.example", "--json")).stdout)
    assert shown["campaign"] is None and shown["step"] is None
    assert [h["reason"] for h in shown["history"] if h["reason"].startswith("left campaign")] == [
        "left campaign b2b-trial: removed"]
    again = await cli("remove", "rex@globex.example")
    assert again.returncode == 1 and one_error_line(again) == "error: rex@globex.example is not in a campaign"
    missing = await cli("remove", "nobody@globex.example")
    assert missing.returncode == 1 and "nobody@globex.example" in one_error_line(missing)
