"""The operations behind the CLI and the HTTP API, in one place.

Each writes what arrives from outside to the store (profiles, events), then hands it
to the lead's workflow with an update, waiting until the workflow has decided and
projected the result, so the next read of the store shows it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from nurture import crud, leadfields, security
from nurture.config import Settings
from nurture.db import reclaim_erased, session_scope
from nurture.leads import lead_document
from nurture.models import Event, Lead, as_utc, utcnow
from nurture.temporal import TemporalUnavailable, connect
from nurture.vocabulary import SUPPRESSING_EVENTS, iso
from nurture.wording import control_refusal

if TYPE_CHECKING:
    from temporalio.client import Client

    from nurture.control import ControlReport
    from nurture.journey import LeadEvent, LeadProfile
    from nurture.lastvalid import BrokenFile, ConfigFiles
    from workflows.lead import LeadResult

# temporalio, the workflow module and the journey are imported in the methods that
# write: together they cost ~0.6 s of CPU, which the CLI's read commands (`lead show`,
# answered from the store) must not pay.

EVENT_FIELDS = ("url", "asset", "form", "event", "campaign", "step")
UPDATES_PER_LEAD = 4  # at once from one process: below Temporal's 10, room for the others
MAX_ID = 2**31 - 1  # integer ids (handoffs) are 32-bit on PostgreSQL


class UserError(Exception):
    """Bad input or a refused action: CLI exit 1, HTTP 4xx."""


class NotFound(UserError):
    """Unknown lead or handoff: CLI exit 1, HTTP 404."""


class Conflict(UserError):
    """Refused because of what is already stored: CLI exit 1, HTTP 409.

    `index` is the position of the offending item in a batch (events)."""

    def __init__(self, message: str, index: int = 0) -> None:
        super().__init__(message)
        self.index = index


class InvalidField(UserError):
    """A value refused by `nurture.leadfields`: CLI exit 1, HTTP 422 naming the field."""

    def __init__(self, error: leadfields.FieldError) -> None:
        super().__init__(str(error))
        self.field = error.field


@dataclass
class LeadIn:
    """A lead as it arrives from the CLI, the API or a CSV row (already validated)."""

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
    attributes: dict[str, Any] | None = None
    consent_at: datetime | None = None


@dataclass
class StoredLead:
    """A lead row as written, ready to hand to its workflow; `token` is its start mark's."""

    key: str
    profile: LeadProfile
    created: bool
    campaign: str | None = None
    token: str = ""


@dataclass
class RescoreReport:
    """What `nurture rescore --all` did."""

    leads: int = 0
    changed: list[tuple[str, str]] = field(default_factory=list)  # (email, "rescore under ...: 57 -> 42")
    failed: list[tuple[str, str]] = field(default_factory=list)  # (email, why)

    @property
    def unchanged(self) -> int:
        return self.leads - len(self.changed) - len(self.failed)


class Nurture:
    def __init__(self, settings: Settings, client: Client | None = None) -> None:
        self.settings = settings
        self._client = client
        # lead key -> its queue of updates; dropped by itself once no update holds it
        self._slots: weakref.WeakValueDictionary[str, asyncio.Semaphore] = weakref.WeakValueDictionary()
        self._config: ConfigFiles | None = None

    @property
    def config(self) -> ConfigFiles:
        """The files in force, re-read only when they change (loaded on first use: the
        campaign models are not for the read commands)."""
        if self._config is None:
            from nurture.lastvalid import ConfigFiles

            self._config = ConfigFiles(self.settings)
        return self._config

    async def client(self) -> Client:
        if self._client is None:
            self._client = await connect(self.settings)
        return self._client

    def session(self) -> Any:
        return session_scope(self.settings.db_url)

    # ------------------------------------------------------------ leads

    async def add_lead(self, data: LeadIn, *, campaign: str | None = None) -> LeadResult:
        """Create or update a lead by email; enroll it by name or by `auto_on: created`."""
        data = _checked(data)  # a bad value is the user's error, whatever else is down
        if campaign is not None:
            self.check_campaign(campaign)
        await self.client()  # fail fast (exit 3) before writing anything
        with self.session() as session:
            stored = self.store_lead(session, data, campaign=campaign)
        return await self.start_lead(stored)

    def store_lead(self, session: Session, data: LeadIn, *, campaign: str | None = None) -> StoredLead:
        """Write the lead's row (created, or the fields given filled in) in the caller's
        transaction, with its start mark (see LeadStart): until `start_lead` has handed
        it to its workflow, a crash leaves the mark for the starter. UserError, with
        nothing written, if a value is refused (nurture.leadfields) or the address may
        not be used."""
        from nurture.journey import LeadProfile, lead_key

        data = _checked(data)
        email = data.email
        if crud.is_suppressed(session=session, email_hash=security.email_hash(email)):
            raise UserError(f"{email} is on the suppression list (forgotten or complained); it is never mailed again")
        profile = {name: getattr(data, name) for name in crud.PROFILE_COLUMNS}
        profile["attributes"] = data.attributes or {}
        try:
            lead, created = crud.upsert_lead(session=session, key=lead_key(email), email=email,
                                             profile=profile, consent_at=data.consent_at)
        except leadfields.FieldError as error:  # the attributes once merged: nothing was written
            raise InvalidField(error) from None
        # state_version 0: stored before, but its workflow never got through a first
        # task (a run stopped between the store and Temporal): it is still new to it.
        mark = crud.mark_start(session=session, key=lead.key, created=created or lead.state_version == 0,
                               campaign=campaign, lease=self.start_lease)
        return StoredLead(lead.key, LeadProfile(**crud.profile_of(lead)), mark.created, mark.campaign, mark.token)

    @property
    def start_lease(self) -> timedelta:
        """How long a start mark stays with the process that wrote it: past the longest
        update it may wait for, so the starter never hands over a lead still in hand."""
        return timedelta(seconds=self.settings.update_timeout + 15)

    async def start_lead(self, stored: StoredLead) -> LeadResult:
        """Hand a stored lead to its workflow (started if new), waiting for the result,
        then clear its start mark. A refusal (UserError) is an answer too: cleared."""
        from workflows.lead import LeadWorkflow, ProfileUpdate

        update = ProfileUpdate(profile=stored.profile, created=stored.created, campaign=stored.campaign)
        try:
            result = await self._update(stored.key, LeadWorkflow.upsert_profile, update, profile=stored.profile)
        except UserError:
            self._clear_start(stored)
            raise
        # (TemporalUnavailable, or this process dies: the mark stays for the starter.)
        self._clear_start(stored)
        return result

    def _clear_start(self, stored: StoredLead) -> None:
        if stored.token:
            with self.session() as session:
                crud.clear_start(session=session, key=stored.key, token=stored.token)

    async def enroll(self, email: str, campaign: str, *, switch: bool = False) -> LeadResult:
        from workflows.lead import EnrollRequest, LeadWorkflow

        lead = self._lead(email)
        self.check_campaign(campaign)
        return await self._update(lead.key, LeadWorkflow.enroll, EnrollRequest(campaign=campaign, switch=switch))

    async def remove(self, email: str, *, by: str | None = None) -> LeadResult:
        """Take the lead out of its current campaign (exit reason `removed`); the result's
        message names the campaign it left."""
        from workflows.lead import LeadWorkflow, RemoveInput

        lead = self._lead(email)
        if lead.campaign is None:
            raise UserError(f"{lead.email} is not in a campaign")
        result = await self._update(lead.key, LeadWorkflow.remove, RemoveInput(by=by))
        result.message = f"left {lead.campaign}"
        return result

    def check_campaign(self, name: str) -> None:
        """Refuse, before anything is written, an enrollment in a campaign that does not
        exist or whose file is invalid now: the worker would only refuse it later."""
        problem = self.campaign_problem(name)
        if problem:
            raise InvalidField(leadfields.FieldError("campaign", problem))

    def campaign_problem(self, name: str) -> str | None:
        """Why an enrollment in `name` is refused now (unknown, or its file invalid), or None."""
        directory = self.settings.campaigns_dir
        if not directory.exists():
            return None  # the workers may see campaigns this machine does not: let them decide
        from nurture.campaign import CampaignError, find_campaign
        from nurture.lastvalid import campaign_refusal

        try:
            find_campaign(directory, name)
        except CampaignError as error:
            return campaign_refusal(name, error)
        with self.session() as session:
            control = crud.campaign_control(session=session, campaign=name)
        return control_refusal(name, control.state) if control is not None and control.state != "active" else None

    async def control_campaign(self, name: str, action: str, *, by: str | None = None) -> ControlReport:
        """`nurture campaign pause|resume|stop NAME` (see nurture.control)."""
        from nurture import control

        return await control.change(self, name, action, by=by)
    async def enroll_key(self, key: str, campaign: str) -> LeadResult:
        """`enroll` by the lead's key (bulk enrollment reads keys from the store and has
        checked the campaign once for the whole run)."""
        from workflows.lead import EnrollRequest, LeadWorkflow

        return await self._update(key, LeadWorkflow.enroll, EnrollRequest(campaign=campaign))

    async def record_event(self, email: str, type_: str, *, at: datetime | None = None,
                           event_id: str | None = None, **fields: Any) -> LeadResult:
        from workflows.lead import EventsInput, LeadWorkflow

        lead = self._lead(email)
        event, _ = self.store_event(lead=lead, type_=type_, at=at, event_id=event_id, fields=fields)
        result = await self._update(lead.key, LeadWorkflow.record_events, EventsInput([event]))
        with self.session() as session:
            crud.mark_dispatched(session=session, ids=[event.id])
        return result

    async def ingest_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Website/API events: stored first, then applied per lead in one update each.

        Events of an unknown visitor (`anonymous_id`) are kept; they count once a lead
        is created with that id. Events for an unknown email are kept unmatched.
        """
        from workflows.lead import EventsInput, LeadWorkflow

        per_lead: dict[str, list[LeadEvent]] = {}
        anonymous = duplicates = 0
        unknown: list[str] = []
        resolved = [(raw, self._lead_for(raw)) for raw in events]
        self._refuse_reused_ids(resolved)  # before anything is stored
        for raw, lead in resolved:
            fields = {k: raw.get(k) for k in (*EVENT_FIELDS, "bant")}
            fields["machine_open"] = True if raw.get("machine_open") else None  # stored, never scored
            if lead is None:
                stored = self._store_unmatched(raw, fields)
                anonymous += stored and bool(raw.get("anonymous_id"))
                duplicates += not stored
                if raw.get("email") and stored:
                    unknown.append(raw["email"])
                continue
            event, fresh = self.store_event(lead=lead, type_=raw["type"], at=raw.get("at"),
                                            event_id=raw.get("id"), fields=fields)
            duplicates += not fresh
            per_lead.setdefault(lead.key, []).append(event)
        for key, lead_events in per_lead.items():
            await self._update(key, LeadWorkflow.record_events, EventsInput(lead_events))
            with self.session() as session:
                crud.mark_dispatched(session=session, ids=[e.id for e in lead_events])
        applied = sum(len(v) for v in per_lead.values())
        return {"accepted": len(events), "applied": applied, "anonymous": anonymous,
                "duplicates": duplicates, "unknown_emails": unknown}

    def _refuse_reused_ids(self, resolved: list[tuple[dict[str, Any], Lead | None]]) -> None:
        """An event id belongs to the lead (or visitor) that first sent it: the same id
        again for it is a duplicate, for anyone else a Conflict. Were it applied to the
        other lead, it could not be stored for it, and a rescore would take it away."""
        ids = [raw["id"] for raw, _ in resolved if raw.get("id")]
        if not ids:
            return
        with self.session() as session:
            owners = crud.event_owners(session=session, ids=ids)
        for index, (raw, lead) in enumerate(resolved):
            event_id = raw.get("id")
            if not event_id:
                continue
            mine = (lead.key, None, None) if lead else (None, raw.get("email"), raw.get("anonymous_id"))
            owner = owners.setdefault(event_id, mine)  # later items of this batch see the first
            if not _same_owner(owner, raw, lead):
                raise Conflict(f"event id '{event_id}' is already used by another lead; "
                               "event ids are unique per lead", index)

    def _lead_for(self, raw: dict[str, Any]) -> Lead | None:
        with self.session() as session:
            if raw.get("email"):
                return crud.get_lead(session=session, email=raw["email"])
            return crud.lead_by_anonymous_id(session=session, anonymous_id=raw["anonymous_id"])

    def _store_unmatched(self, raw: dict[str, Any], fields: dict[str, Any]) -> bool:
        at = as_utc(raw.get("at")) or utcnow()
        data = {k: v for k, v in fields.items() if v is not None}
        ident = raw.get("email") or f"anon:{raw.get('anonymous_id')}"
        event_id = raw.get("id") or _event_id(ident, raw["type"], at, data)
        with self.session() as session:
            return crud.add_event(session=session, event=Event(
                id=event_id, lead_key=None, email=raw.get("email"), anonymous_id=raw.get("anonymous_id"),
                type=raw["type"], at=at, data=data))

    def store_event(self, *, lead: Lead, type_: str, at: datetime | None, event_id: str | None,
                    fields: dict[str, Any]) -> tuple[LeadEvent, bool]:
        """Keep the event before the workflow sees it; the id makes a retry count once."""
        from nurture.journey import LeadEvent

        at = as_utc(at) or utcnow()
        data = {k: v for k, v in fields.items() if v is not None}
        event_id = event_id or _event_id(lead.key, type_, at, data)
        with self.session() as session:
            fresh = crud.add_event(session=session, event=Event(id=event_id, lead_key=lead.key, email=lead.email,
                                                                type=type_, at=at, data=data))
            owner = None if fresh else crud.event_owners(session=session, ids=[event_id]).get(event_id)
            if owner is not None and owner[0] not in (None, lead.key):  # a concurrent request took the id
                raise Conflict(f"event id '{event_id}' is already used by another lead; event ids are unique per lead")
            if fresh and type_ in SUPPRESSING_EVENTS:
                stored = crud.get_lead_by_key(session=session, key=lead.key)
                crud.suppress_now(session=session, lead=stored, address=lead.email, type_=type_)
        known = {name: data.get(name) for name in EVENT_FIELDS}
        event = LeadEvent(id=event_id, type=type_, at=at, bant=data.get("bant"),
                          machine_open=bool(data.get("machine_open")), send_id=data.get("send_id"), **known)
        return event, fresh

    async def set_bant(self, email: str, bant: dict[str, bool | None]) -> LeadResult:
        from workflows.lead import BantInput, LeadWorkflow

        if not bant:
            raise UserError("bant: give at least one of --budget, --authority, --need, --timing")
        lead = self._lead(email)
        return await self._update(lead.key, LeadWorkflow.set_bant, BantInput(bant=bant))

    async def forget(self, email: str) -> None:
        """Stop the journey, erase personal data, keep only a hash so it is never mailed again."""
        from temporalio.api.common.v1 import WorkflowExecution
        from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
        from temporalio.service import RPCError

        from workflows.lead import ForgetInput, LeadWorkflow

        lead = self._lead(email)
        address = lead.email or email
        await self._update(lead.key, LeadWorkflow.forget, ForgetInput())
        sends: list[str] = []
        with self.session() as session:
            stored = crud.get_lead_by_key(session=session, key=lead.key)
            if stored is not None:
                sends = crud.forget_lead(session=session, lead=stored, email_hash=security.stored_email_hash(address))
        for send_id in sends:  # the outbox copies name the lead too
            for suffix in (".eml", ".tmp"):
                (self.settings.outbox_dir / f"{send_id}{suffix}").unlink(missing_ok=True)
        # Test sends rendered for this lead (`nurture email test-send`) have no row: found by name.
        from nurture.journey import proof_prefix

        for proof in self.settings.outbox_dir.glob(f"{proof_prefix(lead.key)}*"):
            proof.unlink(missing_ok=True)
        # The workflow's own history still holds the address: remove the run as well.
        try:
            client = await self.client()
            await client.workflow_service.delete_workflow_execution(DeleteWorkflowExecutionRequest(
                namespace=client.namespace,
                workflow_execution=WorkflowExecution(workflow_id=self.settings.workflow_id(lead.key))))
        except RPCError:
            pass  # already gone; the suppression row is what guarantees no more email
        if not reclaim_erased(self.settings.db_url):
            raise UserError(f"{address}: personal data erased and journey stopped, but a reader kept the database's "
                            "write-ahead log busy: its old pages may hold the erased data until the next "
                            "`nurture lead forget` empties it")

    # ------------------------------------------------------------ rescore

    async def rescore(self, email: str) -> LeadResult:
        """Recompute one lead's score from its stored events under the funnel in force;
        `message` is the history line written, None when the score did not change."""
        from workflows.lead import LeadWorkflow, RescoreInput

        lead = self._lead(email)
        self._refuse_a_broken_funnel("rescore")
        return await self._update(lead.key, LeadWorkflow.rescore, RescoreInput())

    async def rescore_all(self, *, progress: Callable[[int, int], None] | None = None,
                          concurrency: int = 16) -> RescoreReport:
        """`rescore` for every lead, a few at a time; `progress(done, total)` after each.
        A lead that refuses (forgotten meanwhile) is reported and the others go on; no
        worker or no Temporal stops the whole run (TemporalUnavailable)."""
        self._refuse_a_broken_funnel("rescore")
        with self.session() as session:
            emails = crud.lead_emails(session=session)
        report = RescoreReport(leads=len(emails))
        semaphore = asyncio.Semaphore(max(1, concurrency))
        done = 0

        async def one(email: str) -> None:
            nonlocal done
            async with semaphore:
                try:
                    result = await self.rescore(email)
                except UserError as error:
                    report.failed.append((email, str(error)))
                else:
                    if result.message:
                        report.changed.append((email, result.message))
                done += 1
                if progress is not None:
                    progress(done, len(emails))

        tasks = [asyncio.ensure_future(one(email)) for email in emails]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        return report

    # ------------------------------------------------------------ handoffs

    async def handoff_action(self, handoff_id: int, outcome: str, reason: str | None = None) -> LeadResult:
        from workflows.lead import HandoffOutcome, LeadWorkflow

        with self.session() as session:
            # Past the id column's range no handoff can exist (and the database would refuse the query).
            handoff = crud.get_handoff(session=session, handoff_id=handoff_id) if 0 < handoff_id <= MAX_ID else None
            if handoff is None:
                raise NotFound(f"handoff {handoff_id}: no such handoff")
        return await self._update(handoff.lead_key, LeadWorkflow.handoff_outcome,
                                  HandoffOutcome(handoff_id=handoff_id, outcome=outcome, reason=reason))

    # ------------------------------------------------------------ reads (the store)

    def _lead(self, email: str) -> Lead:
        try:
            address = _normalised(email)
        except InvalidField:
            # A row migration 0003 could not fold keeps its old spelling: it can still
            # be shown and forgotten by that spelling (never created or mailed).
            legacy = self._legacy_lead(email)
            if legacy is None:
                raise
            return legacy
        with self.session() as session:
            lead = crud.get_lead(session=session, email=address)
        if lead is None:
            raise NotFound(f"{address}: no such lead")
        return lead

    def _legacy_lead(self, email: str) -> Lead | None:
        if not isinstance(email, str) or "\x00" in email:
            return None
        with self.session() as session:
            return crud.get_lead(session=session, email=email.strip().lower())

    def show(self, email: str) -> dict[str, Any]:
        lead = self._lead(email)
        with self.session() as session:
            return lead_json(session, lead)

    # ------------------------------------------------------------ the workflow

    async def _update(self, key: str, update: Any, arg: Any, *, profile: LeadProfile | None = None) -> LeadResult:
        """Run an update on the lead's workflow, starting it if it does not run yet.

        Temporal admits a few in-flight updates per workflow (10 by default) and turns
        the others away. A burst for one lead (concurrent form posts) must be answered,
        not refused after its data was stored: from this process at most
        UPDATES_PER_LEAD run at once and the others queue; one turned away all the same
        (other processes) is tried again, all within the update timeout."""
        from temporalio.service import RPCError, RPCStatusCode

        client = await self.client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.update_timeout
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = asyncio.Semaphore(UPDATES_PER_LEAD)
        async with slot:
            delay = 0.05
            while True:
                try:
                    return await self._update_once(client, key, update, arg, profile, deadline - loop.time())
                except RPCError as error:
                    if error.status != RPCStatusCode.RESOURCE_EXHAUSTED or loop.time() + delay > deadline:
                        raise TemporalUnavailable(f"Temporal refused the request: {error.message}") from error
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _update_once(self, client: Client, key: str, update: Any, arg: Any, profile: LeadProfile | None,
                           timeout: float) -> LeadResult:
        from temporalio.client import (
            WithStartWorkflowOperation,
            WorkflowUpdateFailedError,
            WorkflowUpdateRPCTimeoutOrCancelledError,
        )
        from temporalio.common import WorkflowIDConflictPolicy

        from workflows.lead import LeadInput, LeadResult, LeadWorkflow

        start = WithStartWorkflowOperation(
            LeadWorkflow.run,
            LeadInput(key=key, profile=profile, sales_sender=self.settings.sales_sender,
                      max_history=self.settings.max_history, one_read_start=True),
            id=self.settings.workflow_id(key),
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            task_queue=self.settings.task_queue,
        )
        try:
            return await asyncio.wait_for(client.execute_update_with_start_workflow(
                update, arg, start_workflow_operation=start, result_type=LeadResult), timeout=max(timeout, 0.001))
        except (asyncio.TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as error:
            raise TemporalUnavailable(self._unanswered()) from error
        except WorkflowUpdateFailedError as error:
            raise UserError(_failure_message(error)) from error


    def _broken_funnel(self) -> BrokenFile | None:
        return next((broken for broken in self.config.broken() if broken.is_funnel), None)

    def _refuse_a_broken_funnel(self, what: str) -> None:
        """A rescore asks for funnel.yaml as it is now: while it is broken, the last valid
        version runs, and rescoring under it is not what the operator asked for."""
        funnel = self._broken_funnel()
        if funnel is not None:
            raise UserError(f"{what} refused while funnel.yaml is invalid: {funnel.error}")

    def _unanswered(self) -> str:
        """Why an update found no answer in time: usually no worker; but a funnel.yaml
        broken with no valid version holds a lead that has no funnel yet, and says so."""
        funnel = self._broken_funnel()
        if funnel is not None and not funnel.fallback:
            return (f"no answer within {self.settings.update_timeout:g}s: {funnel.line()}; what was sent is kept "
                    "and applied once the file is valid")
        return (f"no worker answered within {self.settings.update_timeout:g}s on task queue "
                f"'{self.settings.task_queue}': is `nurture up` or `nurture worker` running? "
                "(stored events are delivered once one runs)")


def _normalised(email: str) -> str:
    """The canonical address (nurture.addresses), or InvalidField."""
    try:
        return leadfields.check_email(email)
    except leadfields.FieldError as error:
        raise InvalidField(error) from None


def _checked(data: LeadIn) -> LeadIn:
    """The lead with every field checked and cleaned by the one shared validator."""
    try:
        return LeadIn(**leadfields.clean_profile(dataclasses.asdict(data)))
    except leadfields.FieldError as error:
        raise InvalidField(error) from None


def _same_owner(owner: tuple[str | None, str | None, str | None], raw: dict[str, Any], lead: Lead | None) -> bool:
    """Whether a stored event's (lead key, email, anonymous id) is this event's sender:
    its lead, or the address or visitor it had before it became that lead."""
    key, email, anonymous_id = owner
    if key is not None:
        return lead is not None and lead.key == key
    if email is not None:
        return email == (lead.email if lead else raw.get("email"))
    return anonymous_id in (raw.get("anonymous_id"), lead.anonymous_id if lead else None)


def _failure_message(error: BaseException) -> str:
    """The handler's or validator's own message, e.g. "already in campaign ..."."""
    cause = error.__cause__ or error
    return getattr(cause, "message", None) or str(cause)


def _event_id(key: str, type_: str, at: datetime, data: dict[str, Any]) -> str:
    """A stable id for an event that came without one: the same event twice counts once."""
    body = f"{key}|{type_}|{at.isoformat()}|{sorted(data.items())}"
    return "ev-" + hashlib.sha256(body.encode()).hexdigest()[:32]


def lead_json(session: Session, lead: Lead) -> dict[str, Any]:
    """`nurture lead show --json` from the store (contract section 4): the lead's
    document (everything stored about it) and its history."""
    history = crud.list_history(session=session, key=lead.key)
    return {
        **lead_document(lead),
        "history": [
            {"at": iso(as_utc(h.at)), "kind": h.kind, "delta": h.delta, "reason": h.reason,
             "score": h.score, **({"detail": h.detail} if h.detail else {})}
            for h in history
        ],
    }
