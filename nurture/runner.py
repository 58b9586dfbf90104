"""Long-running processes: `nurture up`, `nurture worker`, `nurture api`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import Any

from rich.console import Console

from nurture import ports
from nurture.config import Settings
from nurture.db import upgrade
from nurture.temporal import CORE_LOGGER, DevServer, TemporalUnavailable, connect, start_dev_server, wait_for_server


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


def _bind_http(settings: Settings) -> socket.socket:
    """The API's socket, bound before anything is announced: a taken port is one line and
    exit 3, not "up" followed by uvicorn's traceback."""
    return ports.bind(settings.http_port, "HTTP API", "NURTURE_HTTP_PORT")


async def _serve_api(settings: Settings, stop: asyncio.Event, client: Any | None, sock: socket.socket) -> None:
    import uvicorn

    from nurture.api import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings, client), host=ports.HOST,
                                           port=settings.http_port, log_level="warning", lifespan="on"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # ours handle Ctrl-C
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await _until(stop, task)
    server.should_exit = True
    await task


async def _report_broken_files(settings: Settings, console: Console, stop: asyncio.Event) -> None:
    """One line when a configuration file breaks and one when it is fixed: the journeys run
    on its last valid version meanwhile, and this terminal is where the operator looks."""
    from rich.markup import escape

    from nurture.lastvalid import ConfigFiles

    config = ConfigFiles(settings)
    shown: dict[str, str] = {}
    while not stop.is_set():
        now = {broken.file: broken.line() for broken in config.broken()}
        for file, line in now.items():
            if shown.get(file) != line:
                console.print(f"[bold red]config error[/bold red] {escape(line)}"
                              f" (check with `nurture campaign validate {escape(file)}`)", soft_wrap=True)
        for file in shown.keys() - now.keys():
            console.print(f"[green]config fixed[/green] {escape(file)} is valid again and in force", soft_wrap=True)
        shown = now
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 2)


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


def _long_running(settings: Settings) -> None:
    """What `up`, `worker` and `api` do before serving: a private home, the schema at
    head, and what one-shot commands keep quiet shown again (the SDK core's warnings: a
    worker losing its server says so; asyncio's reports of failed background tasks)."""
    logging.getLogger(CORE_LOGGER).setLevel(logging.WARNING)
    asyncio.get_running_loop().set_exception_handler(None)
    _home(settings)
    _migrate(settings)


def _home(settings: Settings) -> None:
    """NURTURE_HOME holds the store, the signing secret and every email sent: only its
    owner may enter. A home an older version made 0755 is closed too: the folder and
    what lies directly in it (the outbox folder's files are then behind two 0700s)."""
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in (settings.home, *settings.home.iterdir()):
        with contextlib.suppress(OSError):  # not ours to close: run as it is
            path.chmod(0o700 if path.is_dir() else 0o600)


async def _embedded_temporal(settings: Settings) -> tuple[DevServer, Any]:
    """The dev server we start, on ports checked free first; never another one."""
    ports.ensure_free(settings.temporal_port, "Temporal gRPC", "NURTURE_TEMPORAL_PORT")
    ports.ensure_free(settings.temporal_ui_port, "Temporal UI", "NURTURE_TEMPORAL_UI_PORT")
    server = start_dev_server(settings.home, port=settings.temporal_port, ui_port=settings.temporal_ui_port)
    try:
        return server, await wait_for_server(settings, server, serve_metrics=True)
    except BaseException:
        server.stop()
        raise


def off_lines(settings: Settings) -> list[str]:
    """What is off for want of a setting, one line each, said at start rather than at the
    first refused request."""
    lines = []
    if not settings.api_key_list:
        lines.append("off: the /v1 API refuses every request; set NURTURE_API_KEYS to turn it on")
    if not settings.sendgrid_webhook_public_key:
        lines.append("off: SendGrid events (POST /webhooks/sendgrid) are refused; "
                     "set NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY to turn them on")
    return lines


def _print_off(settings: Settings, console: Console) -> None:
    for line in off_lines(settings):
        console.print(f"  {line}", markup=False, soft_wrap=True)


async def run_up(settings: Settings, console: Console) -> None:
    _long_running(settings)
    stop = _stop_event()
    server: DevServer | None = None
    sock = _bind_http(settings)
    try:
        if settings.temporal_address:
            client = await connect(settings, serve_metrics=True)
            ui = "(the cluster's own UI)"
        else:
            server, client = await _embedded_temporal(settings)
            ui = server.ui_url
    except BaseException:
        sock.close()
        raise
    console.print("[bold green]nurture is up[/bold green]")
    console.print(f"  HTTP API     http://{ports.HOST}:{settings.http_port}  (web app at /, health at /healthz)", soft_wrap=True)
    console.print(f"  Temporal UI  {ui}", soft_wrap=True)
    console.print(f"  Temporal     {settings.temporal_target}"
                  f"  namespace {settings.temporal_namespace}, task queue {settings.task_queue}", soft_wrap=True)
    console.print(f"  database     {settings.db_url.split('@')[-1]}", soft_wrap=True)
    if settings.sdk_metrics_bind:
        console.print(f"  SDK metrics  http://{settings.sdk_metrics_bind}/metrics  (store metrics at /metrics)",
                      soft_wrap=True)
    console.print(f"  email        {'SendGrid ' + settings.sendgrid_api_host if settings.sendgrid_api_key else 'local outbox ' + str(settings.outbox_dir)}", soft_wrap=True)
    _print_off(settings, console)
    console.print("Ctrl-C stops all.")
    try:
        await asyncio.gather(_serve_worker(client, settings, stop), _serve_api(settings, stop, client, sock),
                             _report_broken_files(settings, console, stop))
    finally:
        if server is not None:
            server.stop()
        console.print("stopped")


async def run_worker(settings: Settings, console: Console) -> None:
    _long_running(settings)
    stop = _stop_event()
    client = await connect(settings, serve_metrics=True)
    console.print(f"worker on {settings.temporal_target}, task queue {settings.task_queue}; Ctrl-C stops")
    if settings.sdk_metrics_bind:
        console.print(f"  SDK metrics  http://{settings.sdk_metrics_bind}/metrics", soft_wrap=True)
    await asyncio.gather(_serve_worker(client, settings, stop), _report_broken_files(settings, console, stop))


async def run_api(settings: Settings, console: Console) -> None:
    _long_running(settings)
    stop = _stop_event()
    sock = _bind_http(settings)
    console.print(f"HTTP API on http://{ports.HOST}:{settings.http_port}; Ctrl-C stops")
    _print_off(settings, console)
    await _serve_api(settings, stop, None, sock)
