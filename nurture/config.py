"""Settings from the environment (contract section 3), read once per process."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NURTURE_", extra="ignore")

    home: Path = Path(".nurture")
    database_url: str | None = None
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_api_key: str | None = None
    temporal_tls: bool = False
    # host:port where this process's Temporal SDK metrics (workflow task failures,
    # latencies, nurture_email_send) are served in Prometheus format; None: not served.
    sdk_metrics_bind: str | None = None
    task_queue: str = "nurture"
    # Lead workflow ids are PREFIX + a hash of the address; a distinct prefix lets two
    # installations (or test runs) share one Temporal namespace.
    workflow_prefix: str = "lead-"
    campaigns_dir: Path = Path("campaigns")
    templates_dir: Path = Path("templates/email")
    sendgrid_api_key: str | None = Field(default=None, validation_alias="SENDGRID_API_KEY")
    sendgrid_api_host: str = "https://api.sendgrid.com"
    # How long one mail/send call may take; past it the outcome is unknown (see README).
    sendgrid_timeout: float = 30.0
    sendgrid_webhook_public_key: str | None = None
    api_keys: str | None = None
    secret: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    # Workflow history events before a lead's workflow continues as new (Temporal
    # suggests it near 10k events or 10 MB; lower only to test it).
    max_history: int = 10_000
    # How long the CLI/API wait for a lead's workflow to answer before saying no worker runs.
    update_timeout: float = 30.0
    # From: of the emails nurture sends to sales owners (handoffs, reminders).
    sales_sender: str = "nurture <nurture@localhost>"
    # Run lead workflows in Temporal's sandbox (re-imports the workflow module for each
    # new lead and guards against non-deterministic calls). Off by default: measured
    # +19% leads/s and a quarter less memory without it; the test suite runs the
    # workflows sandboxed, so a non-deterministic call fails CI. See README "Performance".
    workflow_sandbox: bool = False
    # Journeys a worker keeps in memory; an evicted one replays its history when its
    # lead next engages. 0 picks by runner (sandboxed journeys cost more memory each).
    workflow_cache: int = 0
    http_port: int = 8000
    # Ports of the embedded dev server of `nurture up`; taken ones are an error (nurture.ports).
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    # Host header values the HTTP server answers besides loopback and the host of
    # NURTURE_PUBLIC_URL (comma-separated, any port; `*`: any). Anything else gets 400, so
    # a page of another site cannot read the web app through DNS rebinding (loopback
    # names are safe: a rebinding page's requests carry its own name).
    allowed_hosts: str | None = None
    # Who `nurture email test-send` may mail (comma-separated), so proofs never reach strangers.
    test_recipients: str | None = None

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'nurture.db'}"

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def allowed_host_names(self) -> frozenset[str]:
        """Lower-case host names (no port, IPv6 without brackets) the Host header may name."""
        from urllib.parse import urlsplit

        listed = [name.strip() for name in (self.allowed_hosts or "").split(",")]
        public = urlsplit(self.public_url).hostname
        return frozenset(name.lower().strip("[]") for name in (*LOOPBACK_HOSTS, *listed, public or "") if name)

    def workflow_id(self, key: str) -> str:
        from nurture.journey import workflow_id

        return workflow_id(key, self.workflow_prefix)

    @property
    def outbox_dir(self) -> Path:
        return self.home / "outbox"

    @property
    def funnel_file(self) -> Path:
        return self.campaigns_dir / "funnel.yaml"

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in (self.api_keys or "").split(",") if key.strip()]

    @property
    def test_recipient_list(self) -> list[str]:
        return [address.strip().lower() for address in (self.test_recipients or "").split(",") if address.strip()]

    def signing_secret(self) -> str:
        """NURTURE_SECRET, else one generated once and kept under NURTURE_HOME."""
        if self.secret:
            return self.secret
        path = self.home / "secret"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two processes starting together must agree on one secret.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(32))
            except FileExistsError:
                pass
        return path.read_text().strip()


@lru_cache
def settings() -> Settings:
    return Settings()
