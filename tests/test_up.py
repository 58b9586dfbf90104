"""`nurture up` as a user runs it: the embedded dev server, a worker and the API in one
command, on the default ports, and journeys that survive stopping and starting it again.

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

from nurture.config import EMBEDDED_TEMPORAL_ADDRESS
from nurture.timeskip import free_port
from tests.conftest import ROOT

TEMPORAL_PORTS = (int(EMBEDDED_TEMPORAL_ADDRESS.rsplit(":", 1)[1]), 8233)


def _in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    busy = [port for port in TEMPORAL_PORTS if _in_use(port)]
    if busy:
        pytest.skip(f"`nurture up` uses ports {TEMPORAL_PORTS}; {busy} already taken on this machine")
    values = {**os.environ, "NURTURE_HOME": str(tmp_path / "home"), "NURTURE_HTTP_PORT": str(free_port()),
              "NURTURE_CAMPAIGNS_DIR": str(ROOT / "campaigns"), "NURTURE_TEMPLATES_DIR": str(ROOT / "templates" / "email"),
              "NURTURE_API_KEYS": "up-test-key", "NURTURE_UPDATE_TIMEOUT": "30"}
    for name in ("SENDGRID_API_KEY", "NURTURE_TEMPORAL_ADDRESS", "NURTURE_DATABASE_URL", "NURTURE_TASK_QUEUE",
                 "NURTURE_WORKFLOW_PREFIX"):
        values.pop(name, None)
    return values


class Up:
    """`nurture up` in its own process group, stopped with Ctrl-C (SIGINT) like a user would."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log

    def __enter__(self) -> Up:
        self.output = open(self.log, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "nurture.cli", "up"], env=self.env, cwd=str(ROOT),
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
    for line in ("nurture is up", "HTTP API     http://127.0.0.1:", "Temporal UI  http://127.0.0.1:8233",
                 f"Temporal     {EMBEDDED_TEMPORAL_ADDRESS}", "stopped"):
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
