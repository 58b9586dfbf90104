"""`nurture up` as a user runs it: the embedded dev server, a worker and the API in one
command, and journeys that survive stopping and starting it again. Free ports through
NURTURE_TEMPORAL_PORT / NURTURE_TEMPORAL_UI_PORT / NURTURE_HTTP_PORT, so the tests run
beside any other Temporal; a taken port is refused (exit 3, one line).

Plain real time here (no time skipping): the journey only has to start, stop and go on.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from nurture.timeskip import free_port
from tests.conftest import ROOT

PORT_SETTINGS = ("NURTURE_TEMPORAL_PORT", "NURTURE_TEMPORAL_UI_PORT", "NURTURE_HTTP_PORT")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    values = {**os.environ, "NURTURE_HOME": str(tmp_path / "home"), **{name: str(free_port()) for name in PORT_SETTINGS},
              "NURTURE_CAMPAIGNS_DIR": str(ROOT / "campaigns"), "NURTURE_TEMPLATES_DIR": str(ROOT / "templates" / "email"),
              "NURTURE_API_KEYS": "up-test-key", "NURTURE_UPDATE_TIMEOUT": "30"}
    for name in ("SENDGRID_API_KEY", "NURTURE_TEMPORAL_ADDRESS", "NURTURE_DATABASE_URL", "NURTURE_TASK_QUEUE",
                 "NURTURE_WORKFLOW_PREFIX"):
        values.pop(name, None)
    return values


class Up:
    """`nurture up` (or `nurture api`) in its own process group, stopped with Ctrl-C (SIGINT)
    like a user would."""

    def __init__(self, env: dict[str, str], log: Path, command: str = "up") -> None:
        self.env, self.log, self.command = env, log, command

    def __enter__(self) -> Up:
        self.output = open(self.log, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "nurture.cli", self.command], env=self.env, cwd=str(ROOT),
                                        stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True)
        port = self.env["NURTURE_HTTP_PORT"]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"nurture up did not serve /healthz in 90 s:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.output.close()


def nurture(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nurture.cli", *args], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=90)


def test_up_serves_everything_and_a_journey_survives_a_restart(env, tmp_path):
    email = "uma@globex.example"
    with Up(env, tmp_path / "up-1.log") as up:
        added = nurture(env, "lead", "add", "--email", email, "--first-name", "Uma", "--source", "web_form", "--json")
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["campaign"] == "b2b-trial"
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{env['NURTURE_HTTP_PORT']}/v1/leads/{email}",
                headers={"Authorization": "Bearer up-test-key"}), timeout=10) as answer:
            assert json.loads(answer.read())["email"] == email
    printed = (tmp_path / "up-1.log").read_text()
    assert up.process.returncode == 0, printed
    # API keys are set, the webhook key is not: only the webhook is said to be off.
    assert "NURTURE_API_KEYS" not in printed
    assert "set NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY to turn them on" in printed, printed
    for line in ("nurture is up", f"HTTP API     http://127.0.0.1:{env['NURTURE_HTTP_PORT']}",
                 f"Temporal UI  http://127.0.0.1:{env['NURTURE_TEMPORAL_UI_PORT']}",
                 f"Temporal     127.0.0.1:{env['NURTURE_TEMPORAL_PORT']}", "stopped"):
        assert line in printed, printed
    assert (Path(env["NURTURE_HOME"]) / "temporal.db").is_file()

    # Started again on the same NURTURE_HOME: the same journey answers and goes on.
    with Up(env, tmp_path / "up-2.log"):
        event = nurture(env, "event", email, "email_click", "--campaign", "b2b-trial", "--step", "welcome")
        assert event.returncode == 0, event.stderr
        shown = nurture(env, "lead", "show", email, "--json")
        assert shown.returncode == 0, shown.stderr
        lead = json.loads(shown.stdout)
    assert lead["campaign"] == "b2b-trial" and lead["score"] > 0
    reasons = [entry["reason"] for entry in lead["history"]]
    assert sum(reason.startswith("enrolled in b2b-trial") for reason in reasons) == 1  # the same journey
    assert any("email_click" in reason for reason in reasons), reasons


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize(("command", "setting"), [*(("up", name) for name in PORT_SETTINGS), ("api", "NURTURE_HTTP_PORT")])
def test_up_refuses_a_port_in_use_in_one_line(env, command, setting):
    port = env[setting]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(port)))
        taken.listen()
        result = nurture(env, command)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "nurture is up" not in result.stdout and "Ctrl-C stops" not in result.stdout
    line = one_error_line(result)
    assert f"port {port} " in line and f"set {setting} to a free port" in line, line


async def test_a_server_answering_on_the_port_that_is_not_ours_is_refused(tmp_path):
    """The race the check before start cannot see: the port was free, then another
    Temporal took it, and the one we started is not the one answering."""
    from nurture.config import Settings
    from nurture.ports import PortInUse
    from nurture.temporal import DevServer, start_dev_server, wait_for_server

    other = start_dev_server(tmp_path / "other", port=free_port(), ui_port=free_port(), persist=False)
    ours = DevServer(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]), other.port, free_port())
    try:
        with pytest.raises(PortInUse, match=f"port {other.port} .*NURTURE_TEMPORAL_PORT"):
            await wait_for_server(Settings(home=tmp_path), ours)
    finally:
        ours.stop()
        other.stop()


async def test_a_dev_server_that_exits_is_reported_with_its_own_reason(tmp_path):
    from nurture.config import Settings
    from nurture.temporal import TemporalUnavailable, start_dev_server, wait_for_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = start_dev_server(tmp_path, port=taken.getsockname()[1], ui_port=free_port(), persist=False)
        try:
            with pytest.raises(TemporalUnavailable, match="dev server exited: .*address already in use"):
                await wait_for_server(Settings(home=tmp_path), server)
        finally:
            server.stop()


def test_api_says_at_start_what_is_off(env, tmp_path):
    for name in ("NURTURE_API_KEYS", "NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY"):
        env.pop(name, None)
    with Up(env, tmp_path / "api.log", command="api"):
        pass
    printed = (tmp_path / "api.log").read_text()
    off = [line.strip() for line in printed.splitlines() if line.strip().startswith("off:")]
    assert len(off) == 2, printed
    assert "set NURTURE_API_KEYS to turn it on" in off[0] and "/v1" in off[0]
    assert "set NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY to turn them on" in off[1] and "/webhooks/sendgrid" in off[1]


SEND_AT_ONCE = """name: welcome-now
sender: {from: "Acme <hello@acme.example>"}
enroll: {stages: [lead], auto_on: [created]}
steps:
  - {id: welcome, send: welcome}
"""


def test_up_keeps_its_home_to_its_owner(env, tmp_path):
    home = Path(env["NURTURE_HOME"])
    (home / "outbox").mkdir(parents=True)
    (home / "temporal.log").write_text("")
    for path, mode in ((home, 0o755), (home / "outbox", 0o755), (home / "temporal.log", 0o644)):
        path.chmod(mode)  # as an older version left them
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "welcome-now.yaml").write_text(SEND_AT_ONCE)
    env["NURTURE_CAMPAIGNS_DIR"] = str(campaigns)
    env.pop("NURTURE_SECRET", None)  # generated into the home
    with Up(env, tmp_path / "up.log"):
        added = nurture(env, "lead", "add", "--email", "pia@globex.example")
        assert added.returncode == 0, added.stderr
        deadline = time.monotonic() + 60
        while not list((home / "outbox").glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.2)
    modes = {str(path.relative_to(home)): path.stat().st_mode & 0o777 for path in home.rglob("*")}
    assert {"nurture.db", "temporal.db", "secret", "outbox"} <= set(modes), modes
    assert any(name.endswith(".eml") for name in modes), modes
    assert home.stat().st_mode & 0o777 == 0o700
    assert {name: mode for name, mode in modes.items() if mode != (0o700 if (home / name).is_dir() else 0o600)} == {}
