"""The inputs and results of the lead workflow, its signals and updates.

They live outside workflows/ so that the workflow sandbox passes them through instead
of re-creating the classes for every workflow run (which would also defeat the data
converter's per-type cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nurture.campaign import Funnel
from nurture.journey import LeadEvent, LeadProfile, LeadState


@dataclass
class LeadInput:
    key: str
    profile: LeadProfile | None = None
    state: LeadState | None = None  # carried over by continue-as-new
    max_history: int = 10_000  # history events before continuing as new
    sales_sender: str = "nurture <nurture@localhost>"  # From: of emails to sales owners
    # The first task reads funnel and auto-enroll campaigns in one local activity. Set by
    # every client since 2026-12; histories started before have two reads and replay so.
    # (An input field rather than workflow.patched: a patch also upserts a search attribute
    # into every new lead's history.)
    one_read_start: bool = False
    # The funnel the previous run held, carried over by continue-as-new: re-read at first
    # use, it is what the lead goes on with while funnel.yaml is broken.
    funnel: Funnel | None = None


@dataclass
class ProfileUpdate:
    profile: LeadProfile
    created: bool = False
    campaign: str | None = None  # enroll explicitly (`--campaign`)


@dataclass
class EnrollRequest:
    campaign: str
    switch: bool = False


@dataclass
class EventsInput:
    events: list[LeadEvent]


@dataclass
class BantInput:
    bant: dict[str, bool | None]
    reason: str = "sales input"


@dataclass
class HandoffOutcome:
    handoff_id: int
    outcome: str  # accept | reject | won | lost
    reason: str | None = None


@dataclass
class RescoreInput:
    """`nurture rescore`: recompute the score from the lead's stored events under the
    funnel in force now. The workflow reads the events itself, under its lock (see
    LeadWorkflow.rescore), so nothing needs to travel with the request."""


@dataclass
class ForgetInput:
    reason: str = "erasure request"


@dataclass
class ControlInput:
    """A campaign paused, resumed (active) or stopped; `seq` orders the changes."""

    campaign: str
    state: str  # active | paused | stopped
    seq: int


@dataclass
class RemoveInput:
    """`nurture remove EMAIL` or the lead page: leave the current campaign now."""

    by: str | None = None  # who asked (a web user's address), for the history line


@dataclass
class ResubscribeInput:
    consent_at: datetime  # when the lead opted in again (preferences page)


@dataclass
class LeadResult:
    lead: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
