"""One long-lived workflow per lead: its journey through campaigns, scoring and handoff.

The workflow id derives from the lead's address, so a lead can never have two. It
interprets the campaign it is enrolled in (a short loop, one `_run_<kind>` per step
kind), takes engagement as signals and updates, and keeps all its state in one
`LeadState` that survives continue-as-new. Decisions live here; every side effect is
an activity; the rules themselves are plain functions in `nurture.journey`/`rules`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.email import EmailActivities, SendEmailInput, SendEmailResult
    from activities.handoff import (
        HandoffActivities,
        HandoffUpdateInput,
        OpenHandoffInput,
        WebhookInput,
    )
    from activities.store import (
        LoadCampaignInput,
        LoadFunnelInput,
        LoadLeadInput,
        LoadScoringEventsInput,
        LoadStartInput,
        PickCampaignInput,
        PickCampaignResult,
        StartConfig,
        StoreActivities,
        SyncLeadInput,
    )
    from nurture import journey, rules, when
    from nurture.campaign import Campaign, Funnel, MqlNotify, format_duration
    from nurture.journey import Enrollment, LeadEvent, LeadProfile, LeadState
    from nurture.messages import (
        BantInput,
        ControlInput,
        EnrollRequest,
        EventsInput,
        ForgetInput,
        HandoffOutcome,
        LeadInput,
        LeadResult,
        ProfileUpdate,
        RemoveInput,
        RescoreInput,
        ResubscribeInput,
    )

LOCAL = timedelta(seconds=30)
EVENT_TRIGGERS = "event-triggered-enrollment"  # patch: events may enroll (auto_on events)
GOAL_REACHED = "goal reached"  # the exit reason the campaign stats count as a conversion
PAUSED = "campaign paused"  # what `lead show` says a lead in a paused campaign waits for
WEBHOOK_DEADLINE = timedelta(days=3)
# Sending: 429/5xx and network errors retry with backoff for up to a day; a refusal
# (4xx) or a template error is non-retryable and surfaces at once.
SEND_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), backoff_coefficient=2.0,
                         maximum_interval=timedelta(minutes=10))
# The send heartbeats while the provider call runs: a crashed worker's send is retried
# (and found `sending`, so not resent) within the heartbeat timeout, not minutes later.
SEND_TIMEOUTS = {"start_to_close_timeout": timedelta(minutes=2), "heartbeat_timeout": timedelta(seconds=10),
                 "schedule_to_close_timeout": timedelta(days=1)}
# The CRM may be down for a while; keep trying for three days, then record the failure.
WEBHOOK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=10), maximum_interval=timedelta(hours=1))
MAX_STEPS_WITHOUT_WAIT = 200
FUNNEL_TTL = timedelta(minutes=1)  # validation forbids wait-less loops; this guards old versions
# A broken configuration file never ends a journey: the workflow runs on the last valid
# version and waits for a valid one where it has none (commands older runs never emitted).
FILES_NEVER_END_JOURNEYS = "files-never-end-journeys"
# A lead waiting for a campaign file to become valid tries again, backing off to hourly.
ENROLL_RETRY_FIRST, ENROLL_RETRY_MAX = timedelta(minutes=1), timedelta(hours=1)


# How an error names each outcome ("cannot mark it won", not "cannot won it").
OUTCOME_VERBS = {"accept": "accept it", "reject": "reject it", "won": "mark it won", "lost": "mark it lost"}
OUTCOMES = {
    # outcome: (allowed from handoff statuses, new handoff status, new stage)
    "accept": (("open",), "accepted", "opportunity"),
    "reject": (("open", "accepted"), "rejected", "recycled"),
    "won": (("open", "accepted"), "won", "customer"),
    "lost": (("open", "accepted"), "lost", "recycled"),
}


@workflow.defn
class LeadWorkflow:
    @workflow.init
    def __init__(self, inp: LeadInput) -> None:
        profile = inp.profile or LeadProfile(email="")
        self.s: LeadState = inp.state or LeadState(key=inp.key, profile=profile, created_at=workflow.now())
        self.max_history = inp.max_history
        self.sales_sender = inp.sales_sender
        self.funnel: Funnel | None = inp.funnel
        self.funnel_at: datetime | None = None  # (a carried-over funnel is re-read at first use)
        # (when read, campaigns that enroll on `created`), from the first task's read
        self.start_campaigns: tuple[datetime, StartConfig] | None = None
        self.lock = asyncio.Lock()
        self.ready = inp.state is not None
        self.forgotten = False
        self.synced_version = self.s.version if inp.state else -1
        self.flushes_wanted = 0
        self.background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ main loop

    @workflow.run
    async def run(self, inp: LeadInput) -> None:
        self._spawn(self._sync_loop())
        if not self.ready:
            await self._first_start(inp)
        self._spawn(self._decay_loop())
        if self.s.handoff_status == "open":
            self._spawn(self._sla_watch(self.s.handoff_id))
        for pending in list(self.s.pending_webhooks):
            self._spawn(self._post_webhook(pending))
        if self.s.pending_enroll:
            self._spawn(self._retry_auto_enroll())
        while not self.forgotten and not self._continue_now():
            await workflow.wait_condition(
                lambda: self.s.enrollment is not None or self.forgotten or self._continue_now())
            if self.s.enrollment is not None and not self.forgotten:
                await self._run_campaign(self.s.enrollment)
        await workflow.wait_condition(workflow.all_handlers_finished)
        async with self.lock:  # no handler or timer task is mid-change past this point
            if self.forgotten:
                return
            await self._sync()
            workflow.continue_as_new(LeadInput(key=self.s.key, state=self.s, max_history=self.max_history,
                                               sales_sender=self.sales_sender, funnel=self.funnel))

    async def _first_start(self, inp: LeadInput) -> None:
        """Take the profile (and a visitor's earlier events) from the store."""
        async with self.lock:
            events: list[Any] = []
            # The store is read only when it knows something the start did not carry.
            if inp.profile is None or inp.profile.anonymous_id:
                loaded = await workflow.execute_local_activity_method(
                    StoreActivities.load_lead, LoadLeadInput(self.s.key), start_to_close_timeout=LOCAL)
                if inp.profile is None and loaded.profile is not None:
                    self.s.profile = loaded.profile
                events = loaded.anonymous_events
            # Started by the service, a lead gets its profile update next, usually `created`:
            # one read brings the funnel and the campaigns that may enroll it.
            if inp.profile is not None and inp.one_read_start:
                funnel = await self._load_start()
            else:
                funnel = await self._load_funnel()
            journey.recompute_fit(self.s, funnel, workflow.now())
            for event in events:
                journey.apply_event(self.s, funnel, event, workflow.now(), status_rules=_status_rules(event))
            await self._settle(funnel)
            self.ready = True

    def _continue_now(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() >= self.max_history

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ------------------------------------------------------------ the campaign interpreter

    async def _run_campaign(self, enrollment: Enrollment) -> None:
        steps = enrollment.campaign.steps
        moves = 0
        while self.s.enrollment is enrollment and not self._continue_now():
            reason = self._exit_reason(enrollment)
            if reason is None and enrollment.step_index >= len(steps):
                reason = "completed"
            if reason is not None:
                await self._end_campaign(reason)
                return
            if enrollment.campaign.name in self.s.paused_campaigns:
                await self._wait_while_paused(enrollment)
                continue
            step = steps[enrollment.step_index]
            if enrollment.step_started_at is None:
                enrollment.step_started_at = workflow.now()
                self._note_step_reached(enrollment, step)
            next_index = await getattr(self, f"_run_{step.kind}")(enrollment, step)
            if next_index is None:  # interrupted: re-check why at the top
                continue
            moves = moves + 1 if step.kind not in ("wait", "wait_for") else 0
            if moves > MAX_STEPS_WITHOUT_WAIT:
                await self._end_campaign(f"stopped: {moves} steps without a wait (loop in '{step.id}')")
                return
            async with self.lock:
                enrollment.step_index = next_index
                enrollment.step_started_at = None
                enrollment.deadline = None
                enrollment.waiting_for = None
                journey.touch(self.s)

    async def _wait_while_paused(self, enrollment: Enrollment) -> None:
        """Hold the lead where it is until the campaign is resumed (or it leaves). A wait
        that ran out meanwhile goes on at once; a send still keeps its window and cap."""
        async with self.lock:
            waiting_for, enrollment.waiting_for = enrollment.waiting_for, PAUSED
            journey.touch(self.s)
        await workflow.wait_condition(lambda: enrollment.campaign.name not in self.s.paused_campaigns
                                      or self.s.enrollment is not enrollment or self.forgotten or self._continue_now()
                                      or self._exit_reason(enrollment) is not None)
        async with self.lock:
            if enrollment.waiting_for == PAUSED:
                enrollment.waiting_for = waiting_for
                journey.touch(self.s)

    def _note_step_reached(self, enrollment: Enrollment, step: Any) -> None:
        """One history line per step a lead enters: the campaign stats count `reached`
        from it. Patched: journeys recorded before wrote no such line (nor its sync)."""
        if workflow.patched("note-step-reached"):
            journey.note(self.s, workflow.now(), "note", f"{step.id}: reached",
                         detail={"campaign": enrollment.campaign.name, "step": step.id, "journey": "step",
                                 "enrollment": enrollment.number})

    def _index_of(self, enrollment: Enrollment, step_id: str | None, default: int) -> int:
        """A jump target's index; a missing target ends the campaign (never a crash)."""
        if step_id is None:
            return default
        index = enrollment.campaign.step_index(step_id)
        return len(enrollment.campaign.steps) if index is None else index

    async def _run_send(self, enrollment: Enrollment, step: Any) -> int | None:
        if not await self._wait_for_send_slot(enrollment):
            return None
        campaign = enrollment.campaign
        email = journey.step_email(campaign, step, self.s.key)
        variant = email["variant"]
        result = await self._send(SendEmailInput(
            send_id=journey.send_id(self.s.key, campaign.name, enrollment.number, step.id),
            lead_key=self.s.key, to=self.s.profile.email, profile=self.s.profile.record(), owner=self.s.owner,
            **email,
        ))
        if result.status == "held":  # paused or stopped before this lead heard of it
            async with self.lock:
                self._apply_control(ControlInput(campaign.name, result.control or "paused", result.control_seq))
            return None
        async with self.lock:
            if result.status == "sent":
                self.s.marketing_sent_at.append(workflow.now())
                del self.s.marketing_sent_at[:-journey.SENDS_KEPT]
            self._note_email(step.send, result, {"campaign": campaign.name, "step": step.id, "variant": variant})
        return enrollment.step_index + 1

    async def _wait_for_send_slot(self, enrollment: Enrollment) -> bool:
        """Hold the email until the send window and frequency cap allow it; re-checked
        each time it wakes, so a lead's time zone change or another send counts."""
        campaign = enrollment.campaign
        while True:
            now = workflow.now()
            slot = rules.next_send_slot(now, campaign.send_window, self.s.profile.timezone)
            capped = rules.frequency_release(now, self.s.marketing_sent_at, campaign.frequency_cap)
            release = max(slot, capped or slot)
            if release <= now:
                return True
            why = "frequency cap" if capped and capped >= slot else "send window"
            if enrollment.waiting_for != why:
                async with self.lock:
                    enrollment.deadline, enrollment.waiting_for = release, why
                    detail = {"until": journey.iso(release), "step": enrollment.step_id}
                    until = when.labelled(release, self.s.profile.timezone)  # the lead's zone, named
                    if why == "frequency cap" and campaign.frequency_cap:
                        cap = campaign.frequency_cap
                        reason = f"{enrollment.step_id}: held by the frequency cap ({cap.max} per {format_duration(cap.per)}) until {until}"
                    else:
                        reason = f"{enrollment.step_id}: held for the send window until {until}"
                    journey.note(self.s, now, "email", reason, detail=detail)
            if not await self._sleep_until(enrollment, release):
                return False

    async def _run_wait(self, enrollment: Enrollment, step: Any) -> int | None:
        if enrollment.deadline is None:
            async with self.lock:
                enrollment.deadline = enrollment.step_started_at + step.wait
                enrollment.waiting_for = f"wait {format_duration(step.wait)}"
                journey.touch(self.s)
        if not await self._sleep_until(enrollment, enrollment.deadline):
            return None
        return enrollment.step_index + 1

    async def _run_wait_for(self, enrollment: Enrollment, step: Any) -> int | None:
        awaited = step.wait_for
        if enrollment.deadline is None:
            async with self.lock:
                enrollment.deadline = enrollment.step_started_at + step.timeout
                enrollment.waiting_for = f"{awaited.event}" + (f" on {awaited.step}" if awaited.step else "")
                journey.touch(self.s)
        since = enrollment.step_started_at

        def seen() -> bool:
            return journey.event_seen_since(enrollment, awaited.event, awaited.step, since)

        remaining = enrollment.deadline - workflow.now()
        try:
            await workflow.wait_condition(lambda: seen() or self._interrupted(enrollment),
                                          timeout=max(remaining, timedelta(0)) or None)
        except asyncio.TimeoutError:
            pass
        if seen():
            await self._note_branch(f"{step.id}: {enrollment.waiting_for} seen")
            return enrollment.step_index + 1
        if self._interrupted(enrollment):
            return None
        await self._note_branch(f"{step.id}: no {enrollment.waiting_for} within {format_duration(step.timeout)}"
                                + (f", going to {step.on_timeout}" if step.on_timeout else ""))
        return self._index_of(enrollment, step.on_timeout, enrollment.step_index + 1)

    async def _run_goto(self, enrollment: Enrollment, step: Any) -> int | None:
        return self._index_of(enrollment, step.goto, enrollment.step_index + 1)

    async def _run_if(self, enrollment: Enrollment, step: Any) -> int | None:
        holds = rules.condition_holds(step.if_, journey.lead_view(self.s, self._funnel()))
        target = step.then if holds else step.else_
        await self._note_branch(f"{step.id}: condition {'holds' if holds else 'does not hold'}"
                                + (f", going to {target}" if target else ""))
        return self._index_of(enrollment, target, enrollment.step_index + 1)

    async def _sleep_until(self, enrollment: Enrollment, deadline: datetime) -> bool:
        """True when the deadline is reached; False if the journey was interrupted first."""
        remaining = deadline - workflow.now()
        if remaining <= timedelta(0):
            return True
        try:
            await workflow.wait_condition(lambda: self._interrupted(enrollment), timeout=remaining)
        except asyncio.TimeoutError:
            return True
        return False

    def _interrupted(self, enrollment: Enrollment) -> bool:
        return (self.s.enrollment is not enrollment or self.forgotten or enrollment.campaign.name in self.s.paused_campaigns
                or self._exit_reason(enrollment) is not None or self._continue_now())

    def _exit_reason(self, enrollment: Enrollment) -> str | None:
        blocked = journey.marketing_allowed(self.s)
        if blocked:
            return blocked
        campaign = enrollment.campaign
        if campaign.goal and rules.any_condition(campaign.goal, journey.lead_view(self.s, self._funnel())):
            return GOAL_REACHED
        if campaign.exit_when and rules.any_condition(campaign.exit_when, journey.lead_view(self.s, self._funnel())):
            return "exit_when condition met"
        return None

    async def _end_campaign(self, reason: str) -> None:
        async with self.lock:
            enrollment = self.s.enrollment
            if enrollment is None:
                return
            self._leave(enrollment, reason)

    def _leave(self, enrollment: Enrollment, reason: str) -> None:
        name = enrollment.campaign.name
        if name not in self.s.finished_campaigns:
            self.s.finished_campaigns.append(name)
        self.s.enrollment = None
        journey.note(self.s, workflow.now(), "note", f"left campaign {name}: {reason}",
                     detail={"campaign": name, "step": enrollment.step_id, "journey": "left",
                             "enrollment": enrollment.number, "exit": reason})

    async def _note_branch(self, reason: str) -> None:
        async with self.lock:
            journey.note(self.s, workflow.now(), "note", reason)

    # ------------------------------------------------------------ handlers

    @workflow.query
    def show(self) -> dict[str, Any]:
        return journey.show(self.s, self._funnel())

    @workflow.update
    async def upsert_profile(self, req: ProfileUpdate) -> LeadResult:
        await workflow.wait_condition(lambda: self.ready)
        async with self.lock:
            funnel = await self._load_funnel()
            journey.apply_profile(self.s, funnel, req.profile, workflow.now())
            await self._settle(funnel)
            message = None
            if req.campaign:
                message = await self._enroll_by_name(req.campaign, switch=False)
            elif req.created:
                await self._auto_enroll("created")
            await self._sync()
            return LeadResult(journey.show(self.s, funnel), message)

    @upsert_profile.validator
    def _validate_profile(self, req: ProfileUpdate) -> None:
        self._refuse_if_forgotten()
        if self.s.profile.email and req.profile.email != self.s.profile.email:
            raise ValueError("the email of a lead cannot change")

    @workflow.update
    async def enroll(self, req: EnrollRequest) -> LeadResult:
        await workflow.wait_condition(lambda: self.ready)
        async with self.lock:
            message = await self._enroll_by_name(req.campaign, switch=req.switch)
            if message:
                raise ApplicationError(message, type="EnrollRefused", non_retryable=True)
            await self._sync()
            return LeadResult(journey.show(self.s, self._funnel()))

    @enroll.validator
    def _validate_enroll(self, req: EnrollRequest) -> None:
        self._refuse_if_forgotten()
        current = self.s.enrollment
        if current is not None and not req.switch:
            raise ValueError(f"already in campaign '{current.campaign.name}' (use --switch to move it)")

    @workflow.signal
    async def events(self, inp: EventsInput) -> None:
        """Engagement from the webhook dispatcher: applied in arrival order, duplicates dropped."""
        await self._apply_events(inp)

    @workflow.update
    async def record_events(self, inp: EventsInput) -> LeadResult:
        """Same as the signal, but the caller waits until the store shows the result."""
        await self._apply_events(inp)
        await self._sync()
        return LeadResult(journey.show(self.s, self._funnel()))

    @record_events.validator
    def _validate_events(self, inp: EventsInput) -> None:
        self._refuse_if_forgotten()
        if not inp.events:
            raise ValueError("no events given")

    async def _apply_events(self, inp: EventsInput) -> None:
        await workflow.wait_condition(lambda: self.ready)
        if self.forgotten:
            return
        async with self.lock:
            funnel = await self._load_funnel()
            new = [event for event in inp.events
                   if journey.apply_event(self.s, funnel, event, workflow.now(), status_rules=_status_rules(event))]
            await self._settle(funnel)
            if new and workflow.patched(EVENT_TRIGGERS):
                await self._enroll_on_events(new)

    async def _enroll_on_events(self, events: list[LeadEvent]) -> None:
        """`auto_on` event triggers: a lead in no campaign enters the first one an event
        takes it into; a lead in a `reenroll: always` campaign that such an event triggers
        starts that journey over. Caller holds the lock."""
        if self.forgotten or journey.marketing_allowed(self.s):
            return
        current = self.s.enrollment
        if current is not None:
            campaign = current.campaign
            if campaign.enroll.reenroll == "always" and any(
                    rules.triggered(campaign, "event", event.record()) for event in events):
                await self._reenter(current, next(e for e in events if rules.triggered(campaign, "event", e.record())))
            return
        picked = await self._pick_campaign("event", [event.record() for event in events])
        if picked.campaign is not None:
            trigger = picked.event.get("type") if picked.event else "event"
            self._enroll(picked.campaign, switch=False, trigger=f"auto_on event {trigger}")

    async def _reenter(self, current: Enrollment, event: LeadEvent) -> None:
        """Start the current journey over (reenroll: always), from the campaign file as it
        is now; a campaign paused, stopped or broken since keeps the journey as it is."""
        try:
            fresh = await workflow.execute_local_activity_method(
                StoreActivities.load_campaign, LoadCampaignInput(current.campaign.name, key=self.s.key),
                start_to_close_timeout=LOCAL)
        except ActivityError as error:
            journey.note(self.s, workflow.now(), "note", f"{event.type} did not restart {current.campaign.name}: "
                                                         f"{_cause(error)}")
            return
        refusal = journey.enroll_refusal(self.s, self._funnel(), fresh, switch=True, now=workflow.now())
        if refusal:  # e.g. its stage is no longer one the campaign takes: the journey goes on
            journey.note(self.s, workflow.now(), "note", f"{event.type} did not restart {fresh.name}: {refusal}")
            return
        self._leave(current, f"re-entered on {event.type}")
        self._enroll(fresh, switch=False, trigger=f"auto_on event {event.type}, reenroll always")
    @workflow.update
    async def set_bant(self, inp: BantInput) -> LeadResult:
        await workflow.wait_condition(lambda: self.ready)
        async with self.lock:
            funnel = await self._load_funnel()
            journey.apply_bant(self.s, inp.bant, workflow.now(), reason=inp.reason)
            await self._settle(funnel)
            await self._sync()
            return LeadResult(journey.show(self.s, funnel))

    @set_bant.validator
    def _validate_bant(self, inp: BantInput) -> None:
        self._refuse_if_forgotten()
        unknown = set(inp.bant) - set(journey.BANT_KEYS)
        if unknown:
            raise ValueError(f"unknown BANT fact(s): {', '.join(sorted(unknown))}")

    @workflow.update
    async def rescore(self, inp: RescoreInput) -> LeadResult:
        """Recompute the score from the stored events under the funnel in force now.

        The events are read here, by a local activity under the lock, rather than sent by
        the caller: no event can be applied between the read and the new score (its
        points would be lost), and only events this workflow has already applied are
        replayed (one stored but not yet delivered is scored when it arrives, not twice).
        Fit is recomputed too; then qualification runs as after any change (a lower
        score never demotes). The message says what changed, None if nothing did.
        """
        await workflow.wait_condition(lambda: self.ready)
        async with self.lock:
            self.funnel_at = None  # the operator asks for the funnel file as it is now
            funnel = await self._load_funnel()
            stored = await workflow.execute_local_activity_method(
                StoreActivities.load_scoring_events,
                LoadScoringEventsInput(self.s.key, types=sorted(funnel.scoring.events)),
                start_to_close_timeout=LOCAL)
            now = workflow.now()
            events = journey.applied_events(self.s, stored.events, stored.delivered)
            entry = journey.apply_rescore(self.s, funnel, events, now, resets=stored.resets)
            journey.recompute_fit(self.s, funnel, now)
            await self._settle(funnel)
            await self._sync()
            return LeadResult(journey.show(self.s, funnel), entry.reason if entry else None)

    @rescore.validator
    def _validate_rescore(self, inp: RescoreInput) -> None:
        self._refuse_if_forgotten()

    @workflow.update
    async def handoff_outcome(self, inp: HandoffOutcome) -> LeadResult:
        async with self.lock:
            _, new_status, new_stage = OUTCOMES[inp.outcome]
            now = workflow.now()
            self.s.handoff_status = new_status
            owner = self.s.owner
            journey.note(self.s, now, "handoff", f"handoff {inp.handoff_id} {new_status} by {owner or 'sales'}"
                         + (f": {inp.reason}" if inp.reason else ""),
                         detail={"handoff_id": inp.handoff_id, "outcome": inp.outcome, "reason": inp.reason})
            await workflow.execute_activity_method(
                HandoffActivities.update_handoff,
                HandoffUpdateInput(inp.handoff_id, status=new_status, reason=inp.reason),
                start_to_close_timeout=timedelta(seconds=30))
            if new_stage == "recycled":
                journey.recycle(self.s, now, f"sales: {inp.reason or new_status}")
                self.s.owner = None
                await self._auto_enroll("recycled")
            else:
                journey.set_stage(self.s, new_stage, now, f"handoff {new_status}")
            await self._sync()
            return LeadResult(journey.show(self.s, self._funnel()))

    @handoff_outcome.validator
    def _validate_outcome(self, inp: HandoffOutcome) -> None:
        self._refuse_if_forgotten()
        if inp.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome '{inp.outcome}' (accept, reject, won, lost)")
        if inp.handoff_id != self.s.handoff_id:
            raise ValueError(f"handoff {inp.handoff_id} is not this lead's current handoff")
        allowed, _, _ = OUTCOMES[inp.outcome]
        if self.s.handoff_status not in allowed:
            raise ValueError(f"handoff {inp.handoff_id} is {self.s.handoff_status}; cannot {OUTCOME_VERBS[inp.outcome]}")
        if inp.outcome in ("reject", "lost") and not (inp.reason or "").strip():
            raise ValueError(f"{inp.outcome} needs a reason")

    @workflow.update
    async def forget(self, inp: ForgetInput) -> LeadResult:
        """Stop everything for good; the caller then erases the stored personal data."""
        async with self.lock:
            if self.s.enrollment is not None:
                self._leave(self.s.enrollment, inp.reason)
            self.s.status = "unsubscribed"
            journey.note(self.s, workflow.now(), "note", f"forgotten: {inp.reason}")
            await self._sync()
            self.forgotten = True
            return LeadResult({"key": self.s.key, "status": "forgotten"})

    @workflow.signal
    async def campaign_control(self, inp: ControlInput) -> None:
        """A marketer paused, resumed or stopped a campaign (nurture.control)."""
        await workflow.wait_condition(lambda: self.ready)
        async with self.lock:
            self._apply_control(inp)

    def _apply_control(self, inp: ControlInput) -> None:
        """Keep the newest state per campaign; the current enrollment pauses, goes on, or
        leaves with `campaign stopped`. Caller holds the lock."""
        if inp.seq <= self.s.control_seq.get(inp.campaign, 0):
            return  # an older change, heard late
        self.s.control_seq[inp.campaign] = inp.seq
        paused = self.s.paused_campaigns
        if inp.state == "paused" and inp.campaign not in paused:
            paused.append(inp.campaign)
        elif inp.state != "paused" and inp.campaign in paused:
            paused.remove(inp.campaign)
        journey.touch(self.s)
        enrollment = self.s.enrollment
        if enrollment is None or enrollment.campaign.name != inp.campaign:
            return
        if inp.state == "stopped":
            self._leave(enrollment, "campaign stopped")
        else:
            word = "paused" if inp.state == "paused" else "resumed"
            journey.note(self.s, workflow.now(), "note", f"campaign {inp.campaign} {word}",
                         detail={"campaign": inp.campaign, "step": enrollment.step_id})

    @workflow.update
    async def remove(self, inp: RemoveInput) -> LeadResult:
        """A marketer takes the lead out of its campaign: it leaves with reason `removed`
        (a finished campaign, so auto-enrollment does not bring it straight back)."""
        await workflow.wait_condition(lambda: self.ready)
        async with self.lock:
            enrollment = self.s.enrollment
            if enrollment is None:  # it left between the validator and now
                raise ApplicationError("not in a campaign", type="RemoveRefused", non_retryable=True)
            self._leave(enrollment, "removed")
            if inp.by:
                journey.note(self.s, workflow.now(), "note", f"removed from {enrollment.campaign.name} by {inp.by}")
            await self._sync()
            return LeadResult(journey.show(self.s, self._funnel()))

    @remove.validator
    def _validate_remove(self, inp: RemoveInput) -> None:
        self._refuse_if_forgotten()
        if self.ready and self.s.enrollment is None:
            raise ValueError("not in a campaign")

    @workflow.update
    async def resubscribe(self, inp: ResubscribeInput) -> LeadResult:
        """An explicit opt-in again: undoes an unsubscribe only (never a bounce or complaint)."""
        await workflow.wait_condition(lambda: self.ready)
        async with self.lock:
            if self.s.status == "unsubscribed":
                self.s.status = "subscribed"
                consent = when.labelled(inp.consent_at, self.s.profile.timezone)
                journey.note(self.s, workflow.now(), "note", f"resubscribed (consent at {consent})")
                await self._sync()
            return LeadResult(journey.show(self.s, self._funnel()))

    @resubscribe.validator
    def _validate_resubscribe(self, inp: ResubscribeInput) -> None:
        self._refuse_if_forgotten()

    def _refuse_if_forgotten(self) -> None:
        if self.forgotten:
            raise ValueError("this lead has been forgotten")

    # ------------------------------------------------------------ enrollment

    async def _enroll_by_name(self, name: str, *, switch: bool) -> str | None:
        """Enroll in the named campaign; returns why not, or None. Caller holds the lock."""
        try:
            campaign = await workflow.execute_local_activity_method(
                StoreActivities.load_campaign, LoadCampaignInput(name, key=self.s.key), start_to_close_timeout=LOCAL)
        except ActivityError as error:
            return _cause(error)
        return self._enroll(campaign, switch=switch, trigger="request")

    async def _auto_enroll(self, trigger: str) -> None:
        start, self.start_campaigns = self.start_campaigns, None
        if trigger == "created" and start is not None and workflow.now() - start[0] < FUNNEL_TTL:
            config = start[1]
            picked = PickCampaignResult(rules.pick_campaign(config.campaigns, trigger, self.s.profile.record(),
                                                            self.s.stage, list(self.s.finished_campaigns),
                                                            entered=self.s.entered_at, now=workflow.now()),
                                        unusable=config.unusable)
        else:
            picked = await self._pick_campaign(trigger)
        if picked.campaign is not None:
            self._enroll(picked.campaign, switch=False, trigger=f"auto_on {trigger}")
        elif picked.unusable and workflow.patched(FILES_NEVER_END_JOURNEYS):
            # A campaign file that cannot be read might have taken this lead: keep the
            # enrollment pending (in the state, so it survives continue-as-new) until it can.
            retrying = self.s.pending_enroll is not None
            self.s.pending_enroll = trigger
            journey.note(self.s, workflow.now(), "note",
                         f"automatic enrollment ({trigger}) waits: {', '.join(picked.unusable)} invalid",
                         detail={"files": picked.unusable})
            if not retrying:
                self._spawn(self._retry_auto_enroll())

    async def _pick_campaign(self, trigger: str, events: list[dict[str, Any]] | None = None) -> PickCampaignResult:
        return await workflow.execute_local_activity_method(
            StoreActivities.pick_campaign,
            PickCampaignInput(trigger, self.s.profile.record(), self.s.stage, list(self.s.finished_campaigns),
                              events=events or [], key=self.s.key, entered=dict(self.s.entered_at),
                              now=workflow.now()),
            start_to_close_timeout=LOCAL)

    async def _retry_auto_enroll(self) -> None:
        """Try a pending automatic enrollment again, backing off, until a campaign takes the
        lead, the campaign files are all readable, or the lead is enrolled another way."""
        delay = ENROLL_RETRY_FIRST
        while True:
            try:
                await workflow.wait_condition(lambda: self.s.enrollment is not None or self.forgotten, timeout=delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, ENROLL_RETRY_MAX)
            async with self.lock:
                trigger = self.s.pending_enroll
                if trigger is None or self.forgotten:
                    return
                picked = PickCampaignResult() if self.s.enrollment else await self._pick_campaign(trigger)
                if picked.campaign is not None:
                    self._enroll(picked.campaign, switch=False, trigger=f"auto_on {trigger}, once the files were valid")
                elif picked.unusable:
                    continue
                self.s.pending_enroll = None
                journey.touch(self.s)
                if self.s.enrollment is None:
                    journey.note(self.s, workflow.now(), "note",
                                 f"automatic enrollment ({trigger}): the files are valid, no campaign takes this lead")
                return

    def _enroll(self, campaign: Campaign, *, switch: bool, trigger: str) -> str | None:
        refusal = journey.enroll_refusal(self.s, self._funnel(), campaign, switch=switch, now=workflow.now())
        if refusal:
            return refusal
        self.s.entered_at[campaign.name] = workflow.now()
        if self.s.enrollment is not None:
            self._leave(self.s.enrollment, f"switched to {campaign.name}")
        self.s.enrollments += 1
        self.s.enrollment = Enrollment(campaign=campaign, number=self.s.enrollments, started_at=workflow.now())
        journey.note(self.s, workflow.now(), "note", f"enrolled in {campaign.name} ({trigger}, version {campaign.version})",
                     detail={"campaign": campaign.name, "version": campaign.version, "journey": "enrolled",
                             "enrollment": self.s.enrollments})
        return None

    # ------------------------------------------------------------ qualification and handoff

    async def _settle(self, funnel: Funnel) -> None:
        """After any change of score, fit or BANT: qualify at once. Caller holds the lock
        and syncs when its whole change is done (one store write per change)."""
        moved = journey.qualify(self.s, funnel, workflow.now())
        if moved == "sql":
            await self._open_handoff(funnel)
        elif moved == "mql" and funnel.qualify.mql.notify is not None:
            await self._alert_mql(funnel.qualify.mql.notify)

    async def _alert_mql(self, notify: MqlNotify) -> None:
        """Tell marketing (the addresses of `qualify.mql.notify.to`, or the lead's owner) of
        a new MQL, before it becomes an SQL; internal mail, not marketing."""
        self.s.mql_alerts += 1
        recipients = list(notify.to) or [self.s.owner]
        if not any(recipients):
            journey.note(self.s, workflow.now(), "note", "MQL alert not sent: the lead has no owner yet "
                                                         "(qualify.mql.notify.to: owner)")
            return
        snapshot = self._snapshot()
        context = {key: snapshot[key] for key in ("score", "grade", "temperature", "reasons", "events")}
        for to in filter(None, recipients):
            result = await self._send(SendEmailInput(
                send_id=journey.send_id(self.s.key, "mql-alert", self.s.mql_alerts, to), lead_key=self.s.key, to=to,
                template=notify.template, profile=self.s.profile.record(), sender=self.sales_sender,
                marketing=False, owner=self.s.owner, extra={"mql": context},
            ))
            self._note_email(notify.template, result, {"to": to, "kind": "mql alert"})

    async def _open_handoff(self, funnel: Funnel, *, reassign_from: str | None = None) -> None:
        rules_ = funnel.handoff
        if reassign_from is None:
            self.s.handoffs += 1
        snapshot = self._snapshot()
        opened = await workflow.execute_activity_method(
            HandoffActivities.open_handoff,
            OpenHandoffInput(lead_key=self.s.key, number=self.s.handoffs, email=self.s.profile.email,
                             profile=self.s.profile.record(), rules=rules_, score=self.s.score,
                             grade=self.s.grade, snapshot=snapshot, exclude_owner=reassign_from),
            start_to_close_timeout=timedelta(seconds=30))
        previous = self.s.owner
        self.s.handoff_id, self.s.owner, self.s.handoff_status = opened.id, opened.owner, "open"
        what = f"reassigned from {previous} to {opened.owner} (SLA missed)" if reassign_from else f"to {opened.owner or 'nobody (no owners configured)'}"
        journey.note(self.s, workflow.now(), "handoff", f"handoff {opened.id} {what}",
                     detail={"handoff_id": opened.id, "owner": opened.owner, "reasons": snapshot["reasons"]})
        await self._notify_owner(funnel, opened.id, opened.owner, "new" if not reassign_from else "reassigned")
        if rules_.notify.webhook and reassign_from is None:
            pending = {"url": rules_.notify.webhook, "handoff_id": opened.id, "since": journey.iso(workflow.now()),
                       "payload": {**snapshot, "handoff_id": opened.id, "owner": opened.owner}}
            self.s.pending_webhooks.append(pending)
            self._spawn(self._post_webhook(pending))
        if reassign_from is None:
            self._spawn(self._sla_watch(opened.id))

    def _snapshot(self) -> dict[str, Any]:
        """What sales sees: the lead, its numbers, why it qualified and what it did."""
        funnel = self._funnel()
        stages = [e.reason for e in self.s.history if e.kind == "stage"]
        scored = [e for e in self.s.history if e.kind == "score" and e.delta][-15:]
        return {
            "lead": self.s.profile.record(), "score": self.s.score, "grade": self.s.grade,
            "temperature": journey.temperature(self.s, funnel), "bant": dict(self.s.bant),
            "reasons": stages[-2:] or ["qualified"],
            "events": [{"type": e.reason, "at": journey.iso(e.at), "points": e.delta} for e in scored],
        }

    async def _notify_owner(self, funnel: Funnel, handoff_id: int, owner: str | None, kind: str) -> None:
        template = funnel.handoff.notify.template
        if not owner or not template:
            return
        snapshot = self._snapshot()
        result = await self._send(SendEmailInput(
            send_id=journey.send_id(self.s.key, f"handoff-{handoff_id}", self.s.handoffs, f"{kind}-{owner}"),
            lead_key=self.s.key, to=owner, template=template, profile=self.s.profile.record(),
            sender=self.sales_sender, marketing=False, owner=owner,
            extra={"handoff": {**snapshot, "id": handoff_id, "kind": kind}},
        ))
        self._note_email(template, result, {"to": owner, "handoff_id": handoff_id, "kind": kind})

    async def _sla_watch(self, handoff_id: int | None) -> None:
        """No accept/reject within the SLA: remind once; after a second SLA, reassign."""
        funnel = self._funnel()
        sla = funnel.handoff.sla
        if sla is None or handoff_id is None:
            return
        for action in ("remind", "reassign"):
            try:
                await workflow.wait_condition(
                    lambda: self.s.handoff_id != handoff_id or self.s.handoff_status != "open", timeout=sla)
                return
            except asyncio.TimeoutError:
                pass
            async with self.lock:
                if self.s.handoff_id != handoff_id or self.s.handoff_status != "open":
                    return
                funnel = await self._load_funnel()
                if action == "remind":
                    journey.note(self.s, workflow.now(), "handoff",
                                 f"handoff {handoff_id}: no answer within {format_duration(sla)}, reminded {self.s.owner}")
                    await self._notify_owner(funnel, handoff_id, self.s.owner, "reminder")
                else:
                    previous = self.s.owner
                    await self._open_handoff(funnel, reassign_from=previous)
                    # both hear of it: the new owner got the handoff email, the old one this
                    await self._notify_owner(funnel, handoff_id, previous, "taken-away")

    async def _post_webhook(self, pending: dict[str, Any]) -> None:
        """POST the handoff to the CRM webhook, retrying for up to three days. A run that
        continues-as-new meanwhile hands the pending post to the next run, which posts
        again: receivers get at-least-once delivery, keyed by `handoff_id`."""
        handoff_id = pending["handoff_id"]
        since = datetime.fromisoformat(pending["since"].replace("Z", "+00:00"))
        # The three days count from the first attempt, across continue-as-new.
        left = max(WEBHOOK_DEADLINE - (workflow.now() - since), timedelta(minutes=1))
        try:
            status = await workflow.execute_activity_method(
                HandoffActivities.post_webhook, WebhookInput(pending["url"], handoff_id, pending["payload"]),
                start_to_close_timeout=timedelta(seconds=30), schedule_to_close_timeout=left,
                retry_policy=WEBHOOK_RETRY)
        except ActivityError as error:
            status = f"failed for good: {_cause(error)}"
        async with self.lock:
            self.s.pending_webhooks = [p for p in self.s.pending_webhooks if p["handoff_id"] != handoff_id]
            journey.note(self.s, workflow.now(), "handoff", f"handoff {handoff_id} webhook {status}")

    # ------------------------------------------------------------ decay

    async def _decay_loop(self) -> None:
        """A durable timer to the next decay; each scored event moves it (no cron)."""
        while not self.forgotten:
            due = journey.next_decay_at(self.s, self._funnel()) if self.funnel else None
            marker = (self.s.last_scored_at, self.s.decay_applied, self.s.score)
            condition = lambda: (self.s.last_scored_at, self.s.decay_applied, self.s.score) != marker or self.forgotten  # noqa: E731
            if due is None:
                await workflow.wait_condition(condition)
                continue
            try:
                await workflow.wait_condition(condition, timeout=max(due - workflow.now(), timedelta(seconds=1)))
                continue
            except asyncio.TimeoutError:
                pass
            async with self.lock:
                funnel = await self._load_funnel()
                journey.apply_decay(self.s, funnel, workflow.now())

    # ------------------------------------------------------------ shared pieces

    async def _send(self, inp: SendEmailInput) -> SendEmailResult:
        try:
            return await workflow.execute_activity_method(
                EmailActivities.send_email, inp, retry_policy=SEND_RETRY, **SEND_TIMEOUTS)
        except ActivityError as error:
            return SendEmailResult(status="failed", error=_cause(error))

    def _note_email(self, template: str, result: SendEmailResult, detail: dict[str, Any]) -> None:
        text = {"sent": f"sent {template}: \"{result.subject}\"",
                "unknown": f"{template}: outcome unknown after a crash, not resent",
                "suppressed": f"{template} not sent: {result.error}",
                "failed": f"{template} failed: {result.error}"}[result.status]
        journey.note(self.s, workflow.now(), "email", text,
                     detail={**detail, "template": template, "status": result.status, "subject": result.subject})

    async def _load_funnel(self) -> Funnel:
        """The funnel in force: re-read when the copy in hand is older than FUNNEL_TTL of
        the lead's time, so a burst of events costs one read and a change to
        funnel.yaml applies to events from a minute after it."""
        now = workflow.now()
        if self.funnel is None or self.funnel_at is None or now - self.funnel_at >= FUNNEL_TTL:
            self.funnel = await self._read_funnel()
            self.funnel_at = now
        return self.funnel

    async def _read_funnel(self) -> Funnel:
        """The funnel file, or its last valid version. When it is broken and the worker has
        none, the copy in hand goes on; a lead that has none waits until the file is valid."""
        while True:
            try:
                return await workflow.execute_local_activity_method(
                    StoreActivities.load_funnel, LoadFunnelInput(), start_to_close_timeout=LOCAL)
            except (ActivityError, ApplicationError):  # a local activity's failure may come bare
                if not workflow.patched(FILES_NEVER_END_JOURNEYS):
                    raise
                if self.funnel is not None:
                    return self.funnel
                await workflow.sleep(FUNNEL_TTL)

    async def _load_start(self) -> Funnel:
        try:
            config = await workflow.execute_local_activity_method(
                StoreActivities.load_start, LoadStartInput("created", key=self.s.key), start_to_close_timeout=LOCAL)
        except (ActivityError, ApplicationError):
            if not workflow.patched(FILES_NEVER_END_JOURNEYS):
                raise
            return await self._load_funnel()  # no valid funnel: wait for one, then pick as usual
        self.funnel, self.funnel_at = config.funnel, workflow.now()
        self.start_campaigns = (workflow.now(), config)
        return config.funnel

    def _funnel(self) -> Funnel:
        if self.funnel is None:
            from nurture.campaign import default_funnel
            return default_funnel()
        return self.funnel

    async def _sync(self) -> None:
        """Wait until the store shows the state as it is now: update handlers call this
        before answering, so the CLI and API read their own writes."""
        target = self.s.version
        self.flushes_wanted += 1
        try:
            await workflow.wait_condition(lambda: self.synced_version >= target)
        finally:
            self.flushes_wanted -= 1

    async def _sync_loop(self) -> None:
        """Project state and new history into the store whenever it changed (idempotent;
        newest version wins). Condition checks run once every coroutine of an activation
        is blocked, so the changes of one activation (an email noted, the step advanced,
        the next wait set) cost one write, and the write runs in the same workflow task.
        A change still in progress (under the lock, or a handler not yet through) is not
        written until it is done, unless a handler asks for the write."""
        while True:
            await workflow.wait_condition(lambda: self.ready and self.s.version != self.synced_version and (
                self.flushes_wanted > 0 or (not self.lock.locked() and workflow.all_handlers_finished())))
            batch = list(self.s.unsynced)
            version = self.s.version
            await workflow.execute_local_activity_method(
                StoreActivities.sync_lead,
                SyncLeadInput(self.s.key, version, journey.projection(self.s, self._funnel()), batch),
                start_to_close_timeout=LOCAL)
            last = batch[-1].seq if batch else 0
            self.s.unsynced = [entry for entry in self.s.unsynced if entry.seq > last]
            self.synced_version = max(self.synced_version, version)
            self.s.opted_in = self.s.opted_in and self.s.version != version  # shown: no longer pending


def _cause(error: BaseException) -> str:
    """The activity's own failure message (not its Python cause chain), for history."""
    cause = error.__cause__ or error
    return getattr(cause, "message", None) or str(cause)


def _status_rules(event: journey.LeadEvent) -> bool:
    """Whether a drop's reason decides if it suppresses and a group resubscribe opts the
    lead in again (patched: journeys recorded before suppressed on every drop and only
    noted a resubscribe, and must replay so). Asked only of the events concerned, so no
    other journey gets the marker."""
    concerned = (event.type == "email_dropped" and event.reason is not None) or event.type == journey.RESUBSCRIBE_EVENT
    return concerned and workflow.patched("status-from-drop-reason-and-resubscribe")
