"""A lead's journey state and the pure rules that change it.

The lead's workflow owns one `LeadState` and calls these functions; they read no clock
(`now` is passed in), do no I/O and are deterministic, so they run inside the workflow
and are tested without a server. Everything they change is noted in the history with
its reason, which is what makes a score explainable.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from nurture import rules
from nurture.campaign import Campaign, Funnel
from nurture.vocabulary import (  # noqa: F401  (journey.iso etc. stay valid)
    ADDRESS_DROP_REASONS,
    BANT_KEYS,
    SUPPRESSING_EVENTS,
    iso,
    suppressing_status,
)

PROFILE_FIELDS = (
    "first_name", "last_name", "company", "job_title", "company_size",
    "country", "timezone", "locale", "source", "anonymous_id",
)
RESUBSCRIBE_EVENT = "email_group_resubscribe"
# Stages at which marketing email stops: sales owns the lead, or it is not our target.
NO_MARKETING_STAGES = ("sql", "opportunity", "customer", "disqualified")
EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # contract: lower-case; others are custom events
HISTORY_KEPT = 200  # in the workflow, for the query; the store keeps every entry
SEEN_EVENTS_KEPT = 2000  # duplicate detection window (ids); older duplicates are rare
SENDS_KEPT = 50


@dataclass
class LeadProfile:
    email: str
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    job_title: str | None = None
    company_size: int | None = None
    country: str | None = None
    timezone: str | None = None
    locale: str | None = None
    source: str | None = None
    anonymous_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The flat mapping `where` rules and templates look at."""
        return asdict(self)


@dataclass
class LeadEvent:
    id: str
    type: str
    at: datetime
    url: str | None = None
    asset: str | None = None
    form: str | None = None
    event: str | None = None
    campaign: str | None = None
    step: str | None = None
    send_id: str | None = None
    machine_open: bool = False  # privacy proxies open every email: stored, never scored
    reason: str | None = None  # why SendGrid dropped the email (email_dropped only)
    bant: dict[str, bool | None] | None = None  # a form may carry qualification facts

    def record(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class HistoryEntry:
    seq: int
    at: datetime
    kind: str  # score fit stage email event handoff note
    reason: str
    delta: int | None = None
    score: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        entry = {"at": iso(self.at), "kind": self.kind, "reason": self.reason, "delta": self.delta, "score": self.score}
        if self.detail:
            entry["detail"] = self.detail
        return entry


@dataclass
class Enrollment:
    campaign: Campaign
    number: int  # the lead's n-th enrollment, so a re-entry sends its emails afresh
    started_at: datetime
    step_index: int = 0
    step_started_at: datetime | None = None
    # When the current wait ends; kept in state so a continue-as-new resumes it exactly.
    deadline: datetime | None = None
    waiting_for: str | None = None
    # (event type, step id, time) seen during this enrollment, for `wait_for` and `if: event`.
    events: list[tuple[str, str | None, datetime]] = field(default_factory=list)

    @property
    def step_id(self) -> str | None:
        steps = self.campaign.steps
        return steps[self.step_index].id if self.step_index < len(steps) else None


@dataclass
class LeadState:
    key: str
    profile: LeadProfile
    created_at: datetime
    stage: str = "lead"
    status: str = "subscribed"
    score: int = 0
    fit: int = 0
    grade: str = "D"
    bant: dict[str, bool | None] = field(default_factory=lambda: dict.fromkeys(BANT_KEYS))
    owner: str | None = None
    handoff_id: int | None = None
    handoff_status: str | None = None
    handoffs: int = 0
    enrollment: Enrollment | None = None
    enrollments: int = 0
    # The trigger of an automatic enrollment that waits for a broken campaign file.
    pending_enroll: str | None = None
    finished_campaigns: list[str] = field(default_factory=list)
    seen_event_ids: list[str] = field(default_factory=list)
    day_counts: dict[str, int] = field(default_factory=dict)
    last_scored_at: datetime | None = None
    decay_applied: int = 0
    marketing_sent_at: list[datetime] = field(default_factory=list)
    # Handoff webhooks not yet answered: {url, handoff_id, payload}. Kept in state so
    # that a continue-as-new during their retries carries them over to the next run.
    pending_webhooks: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    version: int = 0
    history: list[HistoryEntry] = field(default_factory=list)
    unsynced: list[HistoryEntry] = field(default_factory=list)
    # An opt-in the store has not shown yet: only such a write may turn a stopped lead
    # row back to subscribed (see crud.apply_projection).
    opted_in: bool = False
    # Campaign control (pause / resume / stop) as this lead last heard it: the newest
    # change seen per campaign, and the campaigns paused now.
    control_seq: dict[str, int] = field(default_factory=dict)
    paused_campaigns: list[str] = field(default_factory=list)
    mql_alerts: int = 0  # MQL alerts sent (qualify.mql.notify): names each one's emails
    entered_at: dict[str, datetime] = field(default_factory=dict)  # campaign -> its last enrollment's start


def is_event_type(name: str) -> bool:
    return bool(EVENT_TYPE.match(name))


def lead_key(email: str) -> str:
    """Stable key of a lead from its normalised address; names its workflow."""
    return hashlib.sha256(email.encode()).hexdigest()[:32]


def workflow_id(key: str, prefix: str = "lead-") -> str:
    """The lead's workflow id: one per lead, so a lead can never have two journeys."""
    return f"{prefix}{key}"


def proof_prefix(key: str) -> str:
    """How the outbox files of test sends rendered for the lead `key` start: they have no
    email row, so `forget` finds them by this name."""
    return f"test-{key}-"


def send_id(key: str, campaign: str, enrollment: int, step: str) -> str:
    """One id per (lead, enrollment, step): the unit of at-most-once sending."""
    return hashlib.sha256(f"{key}|{campaign}|{enrollment}|{step}".encode()).hexdigest()[:32]


def step_email(campaign: Campaign, step: Any, key: str) -> dict[str, Any]:
    """What a send step's email is for the lead `key`, beyond the lead itself: the
    template, the sender, and the subject variant chosen for that lead (the
    SendEmailInput fields the lead's workflow and `nurture email preview` both use)."""
    variant = rules.ab_variant(campaign.name, step.id, key, len(step.subject)) if step.subject else None
    return {"template": step.send, "sender": campaign.sender.from_, "reply_to": campaign.sender.reply_to,
            "sender_address": campaign.sender.address, "campaign": campaign.name, "step": step.id,
            "subject": step.subject[variant] if variant is not None else None, "variant": variant}


# ---------------------------------------------------------------- history


def note(state: LeadState, now: datetime, kind: str, reason: str, *, delta: int | None = None,
         detail: dict[str, Any] | None = None) -> HistoryEntry:
    state.seq += 1
    state.version += 1
    entry = HistoryEntry(state.seq, now, kind, reason, delta, state.score, detail or {})
    state.history.append(entry)
    del state.history[:-HISTORY_KEPT]
    state.unsynced.append(entry)
    return entry


def touch(state: LeadState) -> None:
    """A change with no history line (e.g. the current step): still needs a sync."""
    state.version += 1


# ---------------------------------------------------------------- profile and fit


def apply_profile(state: LeadState, funnel: Funnel, profile: LeadProfile, now: datetime) -> None:
    """New profile data: keep known fields not given again, recompute fit and grade."""
    merged = asdict(state.profile)
    for name, value in asdict(profile).items():
        if name == "attributes":
            merged["attributes"] = {**merged["attributes"], **value}
        elif value is not None:
            merged[name] = value
    state.profile = LeadProfile(**merged)
    touch(state)
    recompute_fit(state, funnel, now)


def recompute_fit(state: LeadState, funnel: Funnel, now: datetime) -> None:
    fit, matched = rules.fit_points(funnel.scoring, state.profile.record())
    grade = rules.grade_for(funnel.scoring.grades, fit)
    if (fit, grade) == (state.fit, state.grade) and state.seq > 0:
        return
    delta = fit - state.fit
    state.fit, state.grade = fit, grade
    reasons = [text for _, text, _ in matched] or ["no fit rule matched"]
    note(state, now, "fit", f"fit {fit} -> grade {grade}: " + "; ".join(reasons), delta=delta,
         detail={"fit": fit, "grade": grade, "rules": [text for _, text, _ in matched]})


# ---------------------------------------------------------------- events


def apply_event(state: LeadState, funnel: Funnel, event: LeadEvent, now: datetime, *,
                status_rules: bool = False) -> bool:
    """Record and score one event; False if it was already applied (duplicates count once).

    `status_rules`: a drop suppresses only when its reason is about the address, and a
    SendGrid group resubscribe undoes an unsubscribe (journeys whose history predates
    these rules keep the old ones: every drop suppresses, a resubscribe is only noted)."""
    if event.id in state.seen_event_ids:
        return False
    state.seen_event_ids.append(event.id)
    del state.seen_event_ids[:-SEEN_EVENTS_KEPT]
    if state.enrollment is not None:
        # Arrival time, not event.at: a wait is met by what arrives while it waits,
        # even when a webhook reports the event late.
        state.enrollment.events.append((event.type, event.step, now))
    _score_event(state, funnel, event, now)
    if status_rules and event.type == RESUBSCRIBE_EVENT:
        _resubscribe(state, now, event)
    status = suppressing_status(event.type, event.reason if status_rules else None)
    if status is not None and state.status == "subscribed":
        state.status = status
        note(state, now, "note", f"{event.type}: status {state.status}, no more marketing email",
             detail={"event_id": event.id})
    elif status is None and event.type == "email_dropped":
        note(state, now, "note", f"email_dropped ({event.reason}): not about the address, status stays "
             f"{state.status}", detail={"event_id": event.id, "reason": event.reason})
    if event.bant:
        apply_bant(state, event.bant, now, reason=f"{event.type} {event.form or ''}".strip())
    return True


def _resubscribe(state: LeadState, now: datetime, event: LeadEvent) -> None:
    """The lead opted in again at SendGrid: an unsubscribe is undone, a bounce or a
    complaint never is (the address itself failed, or its owner called us spam)."""
    if state.status == "unsubscribed":
        state.status, state.opted_in = "subscribed", True
        note(state, now, "note", f"{event.type}: opted in again, status subscribed", detail={"event_id": event.id})
    elif state.status != "subscribed":
        note(state, now, "note", f"{event.type}: status stays {state.status}, a bounce or complaint is never undone",
             detail={"event_id": event.id})


def _score_event(state: LeadState, funnel: Funnel, event: LeadEvent, now: datetime) -> None:
    detail = {"event_id": event.id, **{k: v for k, v in event.record().items() if k in ("url", "asset", "form", "event", "campaign", "step")}}
    if event.machine_open:
        note(state, now, "event", f"{event.type} (machine open, not scored)", detail=detail)
        return
    scored = rules.score_event(funnel.scoring, {**event.record(), "at": event.at}, state.day_counts)
    if scored is None:
        note(state, now, "event", f"{event.type} (no scoring rule)", detail=detail)
        return
    if scored.points > 0:
        state.day_counts[scored.counter_key] = state.day_counts.get(scored.counter_key, 0) + scored.points
        _prune_day_counts(state, event.at)
    if scored.capped and scored.points == 0:
        note(state, now, "event", f"{event.type}: {scored.rule_text}: daily maximum reached, 0 points",
             detail={**detail, "rule": scored.rule_text})
        return
    state.score = max(0, state.score + scored.points)
    state.last_scored_at = now
    state.decay_applied = 0
    reason = event.type if not scored.capped else f"{event.type} (capped by max_per_day)"
    note(state, now, "score", reason, delta=scored.points, detail={**detail, "rule": scored.rule_text})


def _prune_day_counts(state: LeadState, at: datetime) -> None:
    """Per-day counters older than two days can no longer matter."""
    keep = {(at.date().toordinal() - d) for d in range(-1, 3)}
    for key in list(state.day_counts):
        day = key.rsplit("@", 1)[-1]
        try:
            if datetime.fromisoformat(day).date().toordinal() not in keep:
                del state.day_counts[key]
        except ValueError:
            del state.day_counts[key]


def apply_bant(state: LeadState, bant: dict[str, bool | None], now: datetime, *, reason: str = "bant") -> bool:
    changed = {k: v for k, v in bant.items() if k in BANT_KEYS and state.bant.get(k) != v}
    if not changed:
        return False
    state.bant.update(changed)
    facts = ", ".join(f"{k}={'yes' if v else 'no' if v is False else 'unknown'}" for k, v in changed.items())
    note(state, now, "note", f"BANT from {reason}: {facts}", detail={"bant": dict(state.bant)})
    return True


def apply_decay(state: LeadState, funnel: Funnel, now: datetime) -> bool:
    """Remove the points of every full decay period since the last scored event."""
    decay = funnel.scoring.decay
    if decay is None or state.last_scored_at is None or state.score == 0:
        return False
    due = rules.decay_steps(state.last_scored_at, now, decay.every) - state.decay_applied
    if due <= 0:
        return False
    before = state.score
    for _ in range(due):
        state.score = rules.apply_decay(state.score, decay.points)
    state.decay_applied += due
    note(state, now, "score", f"decay: {due} x {decay.every.days}d inactive", delta=state.score - before,
         detail={"periods": due})
    return True


def next_decay_at(state: LeadState, funnel: Funnel) -> datetime | None:
    decay = funnel.scoring.decay
    if decay is None or state.last_scored_at is None or state.score == 0:
        return None
    return rules.next_decay_at(state.last_scored_at, state.decay_applied, decay.every)


# ---------------------------------------------------------------- rescore


@dataclass
class Rescored:
    """The engagement score a lead's stored events give under one funnel model."""

    score: int
    last_scored_at: datetime | None
    decay_applied: int
    day_counts: dict[str, int]
    events: int  # events replayed
    scored: int  # of which gave (or took) points


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def rescore_events(funnel: Funnel, events: list[LeadEvent], now: datetime, *,
                   resets: list[datetime] | None = None) -> Rescored:
    """Recompute the engagement score from the lead's events under `funnel`.

    The events go through the very `_score_event` that scores them live, on a scratch
    state, so there is one implementation of scoring (first matching rule, max_per_day
    per rule and UTC day, negative points floored at 0, machine opens and events
    without a rule not scored). Decay is applied between events and from the last
    scored one to `now`. `resets` are the times the lead was recycled: the score (and
    the daily caps and decay clock) restarts from 0 there, as `recycle` does.

    One simplification: the replay orders and dates events by their own time (`at`),
    where the live workflow used their arrival, so an event a webhook reported late
    counts from when it happened. Events after `now` count as of `now`.
    """
    now = _utc(now)
    scratch = LeadState(key="rescore", profile=LeadProfile(email=""), created_at=now)
    pending = sorted(_utc(at) for at in resets or [] if _utc(at) <= now)
    ordered = sorted(events, key=lambda e: (_utc(e.at), e.id))
    scored = 0

    def reset_until(moment: datetime) -> None:
        while pending and pending[0] <= moment:
            scratch.score, scratch.last_scored_at, scratch.decay_applied = 0, None, 0
            scratch.day_counts.clear()
            pending.pop(0)

    for event in ordered:
        at = min(_utc(event.at), now)
        reset_until(at)
        apply_decay(scratch, funnel, at)
        seq = scratch.seq
        _score_event(scratch, funnel, event, at)
        scored += scratch.seq > seq and scratch.history[-1].kind == "score"
    reset_until(now)
    apply_decay(scratch, funnel, now)
    return Rescored(score=scratch.score, last_scored_at=scratch.last_scored_at, decay_applied=scratch.decay_applied,
                    day_counts=dict(scratch.day_counts), events=len(ordered), scored=scored)


def applied_events(state: LeadState, stored: list[LeadEvent], delivered: list[str]) -> list[LeadEvent]:
    """The stored events this lead's workflow has applied: the ids it remembers, and
    (past that window, for leads with thousands of events) those marked delivered.
    A stored event not yet delivered is left out: it is scored when it arrives."""
    seen = set(state.seen_event_ids)
    window_full = len(state.seen_event_ids) >= SEEN_EVENTS_KEPT
    done = set(delivered) if window_full else set()
    return [event for event in stored if event.id in seen or event.id in done]


def apply_rescore(state: LeadState, funnel: Funnel, events: list[LeadEvent], now: datetime, *,
                  resets: list[datetime] | None = None) -> HistoryEntry | None:
    """Set the score to what `events` give under `funnel`; one history entry with the
    difference, or None (and nothing changed) when the score is the same."""
    result = rescore_events(funnel, events, now, resets=resets)
    if result.score == state.score:
        return None
    before = state.score
    state.score = result.score
    state.last_scored_at = result.last_scored_at
    state.decay_applied = result.decay_applied
    state.day_counts = dict(result.day_counts)
    version = f"funnel version {funnel.version}" if funnel.version else "the built-in funnel"
    return note(state, now, "score", f"rescore under {version}: {before} -> {state.score}",
                delta=state.score - before,
                detail={"rescore": True, "funnel_version": funnel.version or None, "before": before,
                        "events": result.events, "scored_events": result.scored})


# ---------------------------------------------------------------- qualification


def set_stage(state: LeadState, stage: str, now: datetime, reason: str) -> None:
    before = state.stage
    state.stage = stage
    note(state, now, "stage", f"{before} -> {stage}: {reason}", detail={"from": before, "to": stage})


def qualify(state: LeadState, funnel: Funnel, now: datetime) -> str | None:
    """Apply disqualify, MQL and SQL rules; returns the new stage if it moved."""
    if state.stage in ("disqualified", "sql", "opportunity", "customer"):
        return None
    view = lead_view(state, funnel)
    if rules.any_condition(funnel.qualify.disqualify, view):
        set_stage(state, "disqualified", now, f"disqualify rule matched (grade {state.grade})")
        return "disqualified"
    moved = None
    mql = funnel.qualify.mql
    if state.stage in ("visitor", "lead", "recycled") and rules.meets_mql(funnel.qualify, state.score, state.grade):
        set_stage(state, "mql", now, f"score {state.score} >= {mql.score} and grade {state.grade} >= {mql.min_grade}")
        moved = "mql"
    if state.stage == "mql" and rules.meets_sql(funnel.qualify, state.bant):
        known = [k for k in BANT_KEYS if state.bant.get(k)]
        set_stage(state, "sql", now, f"BANT met ({', '.join(known)})")
        moved = "sql"
    return moved


def recycle(state: LeadState, now: datetime, reason: str) -> None:
    """Sales sent the lead back: score to zero, back into nurture (contract 5b)."""
    before = state.score
    set_stage(state, "recycled", now, reason)
    state.score = 0
    state.last_scored_at = None
    state.decay_applied = 0
    state.day_counts.clear()
    note(state, now, "score", "recycled: score reset", delta=-before)


# ---------------------------------------------------------------- what the lead may receive


def marketing_allowed(state: LeadState) -> str | None:
    """None if marketing email may go out, else why not."""
    if state.status != "subscribed":
        return f"status {state.status}"
    if state.stage in NO_MARKETING_STAGES:
        return f"stage {state.stage}"
    return None


def temperature(state: LeadState, funnel: Funnel) -> str:
    return rules.temperature(state.score, funnel.qualify.mql.score)


def lead_view(state: LeadState, funnel: Funnel) -> rules.LeadView:
    events = frozenset((t, s) for t, s, _ in state.enrollment.events) if state.enrollment else frozenset()
    return rules.LeadView(
        score=state.score, grade=state.grade, stage=state.stage,
        temperature=temperature(state, funnel), profile=state.profile.record(), events=events,
    )


def event_seen_since(enrollment: Enrollment, event_type: str, step: str | None, since: datetime) -> bool:
    """For `wait_for`: an event about the awaited step counts whenever it came in this
    enrollment (a click can beat the wait step); any other counts from the wait's start."""
    for seen_type, seen_step, at in enrollment.events:
        if seen_type != event_type:
            continue
        if step is not None:
            if seen_step == step:
                return True
        elif at >= since:
            return True
    return False


def enroll_refusal(state: LeadState, funnel: Funnel, campaign: Campaign, *, switch: bool,
                   now: datetime | None = None) -> str | None:
    """Why this lead may not enter this campaign now, or None."""
    if state.enrollment is not None and not switch:
        return f"already in campaign '{state.enrollment.campaign.name}' (use --switch to move it)"
    blocked = marketing_allowed(state)
    if blocked:
        return f"lead cannot receive marketing email ({blocked})"
    if state.stage not in campaign.enroll.stages:
        return f"stage '{state.stage}' is not in enroll.stages {campaign.enroll.stages}"
    if not rules.match_where(campaign.enroll.where, state.profile.record()):
        return "lead does not match enroll.where"
    return rules.reentry_refusal(campaign, state.finished_campaigns, state.entered_at, now)


# ---------------------------------------------------------------- outputs


def show(state: LeadState, funnel: Funnel) -> dict[str, Any]:
    """`nurture lead show --json` (contract section 4)."""
    enrollment = state.enrollment
    return {
        "email": state.profile.email,
        "key": state.key,
        "stage": state.stage,
        "status": state.status,
        "score": state.score,
        "fit": state.fit,
        "grade": state.grade,
        "temperature": temperature(state, funnel),
        "owner": state.owner,
        "bant": dict(state.bant),
        "campaign": enrollment.campaign.name if enrollment else None,
        "step": enrollment.step_id if enrollment else None,
        "waiting_for": enrollment.waiting_for if enrollment else None,
        "next_action_at": iso(enrollment.deadline) if enrollment else None,
        "history": [entry.public() for entry in state.history],
    }


@dataclass
class Projection:
    """The lead row fields the workflow owns (what the store shows)."""

    stage: str
    status: str
    score: int
    fit: int
    grade: str
    temperature: str
    owner: str | None
    bant: dict[str, bool | None]
    campaign: str | None
    step: str | None
    waiting_for: str | None
    next_action_at: datetime | None
    opted_in: bool = False  # status subscribed comes from an opt-in: it may replace `unsubscribed`


def projection(state: LeadState, funnel: Funnel) -> Projection:
    enrollment = state.enrollment
    return Projection(
        stage=state.stage, status=state.status, score=state.score, fit=state.fit, grade=state.grade,
        temperature=temperature(state, funnel), owner=state.owner, bant=dict(state.bant),
        campaign=enrollment.campaign.name if enrollment else None,
        step=enrollment.step_id if enrollment else None,
        waiting_for=enrollment.waiting_for if enrollment else None,
        next_action_at=enrollment.deadline if enrollment else None, opted_in=state.opted_in,
    )
