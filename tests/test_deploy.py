"""The deployment examples (docs/deploy.md, deploy/) are checked against the code: every
setting of the example env file is one nurture/config.py reads and the file covers every
setting a deployment needs; the systemd units run commands the CLI has, with that file."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import typer

from nurture.cli import app
from nurture.config import Settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
# Settings a deployment leaves alone: the embedded dev server's ports (`nurture up` only)
# and the test suite's switches.
NOT_FOR_DEPLOYMENTS = {"temporal_port", "temporal_ui_port", "workflow_sandbox", "workflow_cache"}


def env_names() -> dict[str, str]:
    """Each NAME=value of the example (comments and commented-out names too)."""
    found = {}
    for line in (DEPLOY / "nurture.env.example").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def variable_of(name: str, field) -> str:  # type: ignore[no-untyped-def]
    return field.validation_alias if isinstance(field.validation_alias, str) else f"NURTURE_{name.upper()}"


def test_the_env_example_names_exactly_the_settings_a_deployment_sets(monkeypatch):
    variables = {variable_of(name, field): name for name, field in Settings.model_fields.items()}
    names = env_names()
    assert set(names) <= set(variables), f"not settings: {sorted(set(names) - set(variables))}"
    wanted = {v for v, name in variables.items() if name not in NOT_FOR_DEPLOYMENTS}
    assert wanted <= set(names), f"missing from deploy/nurture.env.example: {sorted(wanted - set(names))}"
    for variable, value in names.items():
        monkeypatch.setenv(variable, value)
    settings = Settings()  # every example value is one the settings accept
    assert settings.db_url.startswith("postgresql+psycopg://") and settings.public_url.startswith("https://")
    assert settings.temporal_address and settings.sdk_metrics_bind == "127.0.0.1:9464"


def test_the_systemd_units_run_real_commands_with_the_env_file():
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert {unit.name for unit in units} == {"nurture-worker@.service", "nurture-api.service", "nurture-migrate.service"}
    for unit in units:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text(encoding="utf-8"))
        service = parser["Service"]
        assert service["EnvironmentFile"] == "/etc/nurture/nurture.env", unit.name
        argv = service["ExecStart"].split()
        assert Path(argv[0]).name == "nurture" and argv[1] in commands, (unit.name, argv)
    docs = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for path in ["deploy/nurture.env.example", "deploy/Caddyfile", *(f"deploy/systemd/{u.name}" for u in units)]:
        assert path in docs or Path(path).name in docs, f"docs/deploy.md does not mention {path}"
        assert (ROOT / path).exists(), path


def test_the_proxy_passes_to_the_api_port_of_the_example():
    caddy = (DEPLOY / "Caddyfile").read_text(encoding="utf-8")
    names = env_names()
    assert f"reverse_proxy 127.0.0.1:{names['NURTURE_HTTP_PORT']}" in caddy
    host = names["NURTURE_PUBLIC_URL"].removeprefix("https://")
    assert caddy.splitlines()[2].startswith(f"{host} {{") and host in names["NURTURE_ALLOWED_HOSTS"]
