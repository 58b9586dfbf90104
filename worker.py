"""Runs one nurture worker: `python worker.py` (same as `nurture worker`).

Start several, here or on other machines, against one Temporal cluster to scale out.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import py_compile
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.email import EmailActivities
from activities.handoff import HandoffActivities
from activities.store import StoreActivities
from nurture.config import Settings
from workflows.lead import LeadWorkflow

# Journeys kept in memory per worker, measured (README "Performance"): RSS stays under
# 400 MB with the cache full.
CACHE = 1500
SANDBOXED_CACHE = 600  # a sandboxed journey holds its own copy of the workflow module


def build_worker(client: Client, settings: Settings, *, task_queue: str | None = None, **options: Any) -> Worker:
    store, email, handoff = StoreActivities(settings), EmailActivities(settings), HandoffActivities(settings)
    if settings.workflow_sandbox:
        _cache_workflow_bytecode()
    else:
        options.setdefault("workflow_runner", UnsandboxedWorkflowRunner())
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=[LeadWorkflow],
        activities=[
            store.load_funnel, store.load_start, store.load_campaign, store.pick_campaign, store.load_lead,
            store.sync_lead, store.load_scoring_events,
            email.send_email,
            handoff.open_handoff, handoff.update_handoff, handoff.post_webhook,
        ],
        # Sending calls the blocking SendGrid client in threads; give it room.
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=32),
        max_concurrent_activities=32,
        # A lead's events come days apart: keeping every idle journey in memory buys
        # nothing, and an evicted one replays its (short) history when it wakes.
        max_cached_workflows=settings.workflow_cache or (SANDBOXED_CACHE if settings.workflow_sandbox else CACHE),
        **options,
    )


def _cache_workflow_bytecode() -> None:
    """The sandbox imports the workflow module afresh for every new lead. Without a .pyc
    (PYTHONDONTWRITEBYTECODE, an editable install) that means compiling its source each
    time: measured at a sixth of the worker's CPU. Write the .pyc once; where the folder
    is read-only this fails quietly and Python compiles as before."""
    import workflows.lead

    try:
        py_compile.compile(workflows.lead.__file__, doraise=True)
    except (OSError, py_compile.PyCompileError):
        pass


def main() -> None:
    from nurture.cli import main as cli_main

    cli_main(["worker"])


if __name__ == "__main__":
    main()
