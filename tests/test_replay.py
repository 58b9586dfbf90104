"""Recorded journeys replay with the current workflow code.

tests/histories/*.json are full histories of the lead workflow for representative
journeys of the sample campaigns, recorded by `python scripts/record_histories.py`.
Temporal's Replayer runs today's LeadWorkflow against each: a change to the commands a
running workflow emits (activities, timers, their order) fails here instead of failing
live journeys. README.md, "Changing workflow code", says what to do then.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from nurture.converter import data_converter
from workflows.lead import LeadWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
JOURNEYS = {"click_path", "timeout_path", "mql_sql_accept", "reject_recycled", "handoff_sla", "unsubscribe",
            "drop_resubscribe"}


def history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text(encoding="utf-8"))


def replayer(**options: Any) -> Replayer:
    # the converter of every nurture client (pydantic JSON), so payloads decode as in production
    return Replayer(workflows=[LeadWorkflow], data_converter=data_converter, **options)


def event_types(path: Path) -> Counter[str]:
    events = json.loads(path.read_text(encoding="utf-8"))["events"]
    return Counter(event["eventType"].removeprefix("EVENT_TYPE_") for event in events)


def test_the_recorded_journeys_are_there_and_not_trivial() -> None:
    assert {path.stem for path in HISTORIES} >= JOURNEYS
    for path in HISTORIES:
        types = event_types(path)
        assert types["WORKFLOW_EXECUTION_STARTED"] == 1, path.name
        # sends are activities, the store is written by local activities (markers), waits are timers
        assert types["ACTIVITY_TASK_SCHEDULED"] >= 1 and types["MARKER_RECORDED"] >= 5, (path.name, types)
        # (the unsubscribe journey ends during its first wait: one timer)
        assert types["TIMER_STARTED"] >= 1 + (path.stem != "unsubscribe"), (path.name, types)
        assert types["WORKFLOW_EXECUTION_UPDATE_COMPLETED"] >= 1, (path.name, types)
        assert not types["WORKFLOW_EXECUTION_CONTINUED_AS_NEW"], f"{path.name}: one run per file"


@pytest.mark.parametrize("path", HISTORIES, ids=lambda path: path.stem)
async def test_a_recorded_journey_replays_with_the_current_code(path: Path) -> None:
    await replayer().replay_workflow(history(path))


async def test_all_recorded_journeys_replay_without_failures() -> None:
    async def histories() -> Any:
        for path in HISTORIES:
            yield history(path)

    results = await replayer().replay_workflows(histories(), raise_on_replay_failure=False)
    assert dict(results.replay_failures) == {}


def _with_an_extra_wait(monkeypatch: pytest.MonkeyPatch, *, patch_id: str | None) -> None:
    """LeadWorkflow whose `send` steps first sleep one more second: a new timer command
    where the history has the send's activity, added as is, or behind
    `workflow.patched(patch_id)` as README.md says."""
    original = LeadWorkflow._run_send

    async def run_send(self: LeadWorkflow, enrollment: Any, step: Any) -> int | None:
        if patch_id is None or workflow.patched(patch_id):
            await workflow.sleep(timedelta(seconds=1))
        return await original(self, enrollment, step)

    monkeypatch.setattr(LeadWorkflow, "_run_send", run_send)


# The sandbox re-imports workflows.lead and would not see a monkeypatch: these run unsandboxed.
WAITING = [path for path in HISTORIES if path.stem in ("click_path", "timeout_path", "reject_recycled")]


@pytest.mark.parametrize("path", WAITING, ids=lambda path: path.stem)
async def test_the_replayer_catches_a_new_timer_in_a_running_journey(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await replayer(workflow_runner=UnsandboxedWorkflowRunner()).replay_workflow(history(path))  # unchanged: passes
    _with_an_extra_wait(monkeypatch, patch_id=None)
    with pytest.raises(NondeterminismError):
        await replayer(workflow_runner=UnsandboxedWorkflowRunner()).replay_workflow(history(path))


@pytest.mark.parametrize("path", WAITING, ids=lambda path: path.stem)
async def test_the_same_change_behind_workflow_patched_replays(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_an_extra_wait(monkeypatch, patch_id="extra-wait")
    await replayer(workflow_runner=UnsandboxedWorkflowRunner()).replay_workflow(history(path))
