"""Simulated time on a real Temporal dev server, for tests, `nurture demo` and
`nurture campaign test`.

The server's per-workflow time skipping is experimental upstream, so its use stays in
this one module: the rest of nurture only sees `SimulatedTime.client`,
`fast_forward(handle, duration)`, `now(handle)` and `stop()`.
"""

from __future__ import annotations

import socket
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import TimeSkipper, TimeSkippingConfig

from nurture.config import Settings
from nurture.temporal import DevServer, start_dev_server, wait_for_server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SimulatedTime:
    """An in-memory dev server on free ports where each workflow's clock moves only
    when `fast_forward` says so (timers do not fire on their own)."""

    def __init__(self, server: DevServer, client: Client) -> None:
        self.server = server
        # Workflows started through this client get time skipping turned off at
        # start, so nothing moves until a fast-forward.
        self._skipper = TimeSkipper(client, config=TimeSkippingConfig(enabled=False))
        self.client = self._skipper.client

    @classmethod
    async def start(cls, home: Path | None = None) -> SimulatedTime:
        home = home or Path(tempfile.mkdtemp(prefix="nurture-time-"))
        server = start_dev_server(
            home, port=free_port(), ui_port=free_port(), persist=False,
            extra=["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"],
        )
        try:
            client = await wait_for_server(Settings(home=home), server)
        except BaseException:
            server.stop()
            raise
        return cls(server, client)

    async def fast_forward(self, handle: WorkflowHandle[Any, Any], duration: timedelta) -> None:
        """Move this workflow's clock by `duration`, firing its timers on the way."""
        await self._skipper.fast_forward(handle, duration)

    async def now(self, handle: WorkflowHandle[Any, Any]) -> datetime:
        return await self._skipper.get_current_time(handle)

    async def stop(self) -> None:
        self.server.stop()
