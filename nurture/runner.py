"""Long-running processes: `nurture up`, `nurture worker`, `nurture api`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from rich.console import Console

from nurture.config import Settings
from nurture.db import upgrade
from nurture.temporal import DevServer, TemporalUnavailable, connect, start_dev_server, wait_for_server


def _stop_event() -> asyncio.Event:
    """Set on Ctrl-C or SIGTERM, so every part shuts down in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve_worker(client: Any, settings: Settings, stop: asyncio.Event) -> None:
    from nurture.dispatcher import run_dispatcher
    from nurture.starter import run_starter
    from worker import build_worker

    worker = build_worker(client, settings)
    task = asyncio.create_task(worker.run())
    # Stored webhook events and stored leads not yet started -> the leads' workflows;
    # stopped by the same stop event.
    helpers = [asyncio.create_task(run_dispatcher(settings, client, stop)),
               asyncio.create_task(run_starter(settings, client, stop))]
    try:
        await _until(stop, task)
        if not task.done():
            await worker.shutdown()
    finally:
        stop.set()
        await asyncio.gather(*helpers)


async def _serve_api(settings: Settings, stop: asyncio.Event, client: Any | None) -> None:
    import uvicorn

    from nurture.api import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings, client), host="127.0.0.1",
                                           port=settings.http_port, log_level="warning", lifespan="on"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # ours handle Ctrl-C
    task = asyncio.create_task(server.serve())
    await _until(stop, task)
    server.should_exit = True
    await task


async def _until(stop: asyncio.Event, task: asyncio.Task[Any]) -> None:
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        stop.set()
        task.result()  # surface a crash


def _migrate(settings: Settings) -> None:
    try:
        upgrade(settings.db_url)
    except Exception as error:
        raise TemporalUnavailable(f"database {settings.db_url.split('@')[-1]}: {str(error).splitlines()[0]}") from error


async def run_up(settings: Settings, console: Console) -> None:
    _migrate(settings)
    stop = _stop_event()
    server: DevServer | None = None
    if settings.temporal_address:
        client = await connect(settings)
        ui = "(the cluster's own UI)"
    else:
        server = start_dev_server(settings.home)
        client = await wait_for_server(settings, server)
        ui = server.ui_url
    console.print("[bold green]nurture is up[/bold green]")
    console.print(f"  HTTP API     http://127.0.0.1:{settings.http_port}  (dashboard at /, health at /healthz)")
    console.print(f"  Temporal UI  {ui}")
    console.print(f"  Temporal     {settings.temporal_target if settings.temporal_address else server.address}"
                  f"  namespace {settings.temporal_namespace}, task queue {settings.task_queue}")
    console.print(f"  database     {settings.db_url.split('@')[-1]}")
    console.print(f"  email        {'SendGrid ' + settings.sendgrid_api_host if settings.sendgrid_api_key else 'local outbox ' + str(settings.outbox_dir)}")
    console.print("Ctrl-C stops all.")
    try:
        await asyncio.gather(_serve_worker(client, settings, stop), _serve_api(settings, stop, client))
    finally:
        if server is not None:
            server.stop()
        console.print("stopped")


async def run_worker(settings: Settings, console: Console) -> None:
    _migrate(settings)
    stop = _stop_event()
    client = await connect(settings)
    console.print(f"worker on {settings.temporal_target}, task queue {settings.task_queue}; Ctrl-C stops")
    await _serve_worker(client, settings, stop)


async def run_api(settings: Settings, console: Console) -> None:
    _migrate(settings)
    stop = _stop_event()
    console.print(f"HTTP API on http://127.0.0.1:{settings.http_port}; Ctrl-C stops")
    await _serve_api(settings, stop, None)
