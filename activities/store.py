"""Store activities: load campaign/funnel files and write the workflow's projection.

They run as local activities: short, idempotent and on the lead's hot path, so they
need no extra server round trip. Like every activity here they are plain functions
run in the worker's thread pool, so a database wait never stalls the event loop that
drives workflows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from nurture import crud, rules
from nurture.campaign import Campaign, CampaignError, Funnel, find_campaign
from nurture.wording import control_refusal
from nurture.config import Settings
from nurture.db import session_scope
from nurture.journey import HistoryEntry, LeadEvent, LeadProfile, Projection
from nurture.lastvalid import ConfigFiles, NoValidFunnel, campaign_refusal


@dataclass
class LoadFunnelInput:
    pass


@dataclass
class LoadStartInput:
    trigger: str = "created"  # the campaigns that may enroll on it come back too
    key: str | None = None  # the lead: campaigns whose `enroll.segment` it is not in are left out


@dataclass
class StartConfig:
    """What a new lead's first task needs, in one read: the funnel and the campaigns
    that enroll automatically on the trigger."""

    funnel: Funnel
    campaigns: list[Campaign] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)  # broken campaign files with no valid version


@dataclass
class LoadCampaignInput:
    name: str
    key: str | None = None  # the lead entering: refused when not in the campaign's `enroll.segment`


@dataclass
class PickCampaignInput:
    trigger: str  # created | recycled | event
    profile: dict[str, Any]
    stage: str
    finished: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # trigger event: the new events, in order
    key: str | None = None  # the lead, for campaigns restricted to a segment
    entered: dict[str, datetime] = field(default_factory=dict)  # campaign -> last enrollment start
    now: datetime | None = None  # the workflow's time, for `reenroll: {every: ...}`


@dataclass
class PickCampaignResult:
    campaign: Campaign | None = None
    unusable: list[str] = field(default_factory=list)  # broken campaign files with no valid version
    event: dict[str, Any] | None = None  # trigger event: the event that took the lead in


@dataclass
class LoadLeadInput:
    key: str
    anonymous_since_days: int = 30


@dataclass
class LoadLeadResult:
    profile: LeadProfile | None
    created_at: datetime | None = None
    # Events recorded for the lead's anonymous_id before it was known (visitor -> lead).
    anonymous_events: list[LeadEvent] = field(default_factory=list)


@dataclass
class SyncLeadInput:
    key: str
    version: int
    fields: Projection
    history: list[HistoryEntry]


@dataclass
class LoadScoringEventsInput:
    key: str
    types: list[str]  # event types the funnel scores: others cannot change a score


@dataclass
class ScoringEvents:
    # The lead's stored events of those types and those of its earlier visitor id.
    events: list[LeadEvent] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)  # ids already handed to the workflow
    resets: list[datetime] = field(default_factory=list)  # when it was recycled (score to 0)


def event_from_row(row: Any) -> LeadEvent:
    data = dict(row.data or {})
    known = {name: data.get(name) for name in ("url", "asset", "form", "event", "campaign", "step", "send_id", "bant")}
    reason = data.get("reason") if row.type == "email_dropped" else None
    return LeadEvent(id=row.id, type=row.type, at=row.at, machine_open=bool(data.get("machine_open")),
                     reason=reason, **known)


class StoreActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = ConfigFiles(settings)

    @activity.defn
    def load_funnel(self, _: LoadFunnelInput) -> Funnel:
        """The funnel in force (a broken file's last valid version); the workflow keeps the
        copy it holds, or waits, when there is none (FunnelInvalid)."""
        try:
            return self.config.funnel()
        except NoValidFunnel as error:
            raise ApplicationError(str(error), type="FunnelInvalid", non_retryable=True,
                                   category=ApplicationErrorCategory.BENIGN) from error

    @activity.defn
    def load_campaign(self, inp: LoadCampaignInput) -> Campaign:
        """An explicit enrollment takes the file as it is now: a broken one is refused, and
        so is a campaign a marketer paused or stopped."""
        try:
            campaign = find_campaign(self.settings.campaigns_dir, inp.name)
        except CampaignError as error:
            raise ApplicationError(campaign_refusal(inp.name, error), type="CampaignError", non_retryable=True,
                                   category=ApplicationErrorCategory.BENIGN) from error
        with session_scope(self.settings.db_url) as session:
            control = crud.campaign_control(session=session, campaign=inp.name)
        if control is not None and control.state != "active":
            raise ApplicationError(control_refusal(inp.name, control.state), type="CampaignHalted",
                                   non_retryable=True, category=ApplicationErrorCategory.BENIGN)
        outside = self._outside_segment(campaign, inp.key) if inp.key else None
        if outside:
            raise ApplicationError(outside, type="NotInSegment", non_retryable=True,
                                   category=ApplicationErrorCategory.BENIGN)
        return campaign

    @activity.defn
    def load_start(self, inp: LoadStartInput) -> StartConfig:
        campaigns = [c for c in self._taking_leads() if c.enroll.triggers_on(inp.trigger)]
        return StartConfig(self.load_funnel(LoadFunnelInput()),
                           [c for c in campaigns if not (c.enroll.segment and self._outside_segment(c, inp.key))],
                           unusable=self.config.unusable_campaign_files())

    @activity.defn
    def pick_campaign(self, inp: PickCampaignInput) -> PickCampaignResult:
        """The campaign a lead enters automatically: highest priority, then name (for
        events: for the first event that takes it into one)."""
        unusable = self.config.unusable_campaign_files()
        campaigns = [c for c in self._taking_leads() if not (c.enroll.segment and self._outside_segment(c, inp.key))]
        for event in inp.events if inp.trigger == "event" else [None]:
            picked = rules.pick_campaign(campaigns, inp.trigger, inp.profile, inp.stage, inp.finished, event=event,
                                         entered=inp.entered, now=inp.now)
            if picked is not None:
                return PickCampaignResult(picked, unusable=unusable, event=event)
        return PickCampaignResult(None, unusable=unusable)

    def _outside_segment(self, campaign: Campaign, key: str | None) -> str | None:
        """Why the lead may not enter a campaign restricted to a segment (one query on the
        store), or None; a segment that cannot be read admits nobody."""
        name = campaign.enroll.segment
        if not name:
            return None
        from nurture import audiences  # the segments' SQL: only for campaigns that name one

        try:
            segment = audiences.find(self.settings, name)
        except audiences.AudienceError as error:
            return f"enroll.segment {name}: {error}"
        with session_scope(self.settings.db_url) as session:
            inside = key is not None and crud.lead_matches(session=session, key=key,
                                                           where=audiences.condition(session, segment))
        return None if inside else f"lead is not in segment '{name}' (enroll.segment of {campaign.name})"

    def _taking_leads(self) -> list[Campaign]:
        """The campaigns automatic enrollment may pick: not paused or stopped by a marketer."""
        with session_scope(self.settings.db_url) as session:
            halted = {name for name, row in crud.campaign_controls(session=session).items() if row.state != "active"}
        return [campaign for campaign in self.config.campaigns() if campaign.name not in halted]

    @activity.defn
    def load_lead(self, inp: LoadLeadInput) -> LoadLeadResult:
        with session_scope(self.settings.db_url) as session:
            lead = crud.get_lead_by_key(session=session, key=inp.key)
            if lead is None or lead.email is None:
                return LoadLeadResult(profile=None)
            profile = LeadProfile(**crud.profile_of(lead))
            events: list[LeadEvent] = []
            if lead.anonymous_id:
                since = activity.info().current_attempt_scheduled_time - timedelta(days=inp.anonymous_since_days)
                rows = crud.anonymous_events(session=session, anonymous_id=lead.anonymous_id, since=since)
                events = [event_from_row(row) for row in rows]
            return LoadLeadResult(profile=profile, created_at=lead.created_at, anonymous_events=events)

    @activity.defn
    def load_scoring_events(self, inp: LoadScoringEventsInput) -> ScoringEvents:
        """What `nurture rescore` replays: the stored events and the recycle points."""
        with session_scope(self.settings.db_url) as session:
            lead = crud.get_lead_by_key(session=session, key=inp.key)
            if lead is None:
                return ScoringEvents()
            rows = crud.scoring_events(session=session, key=inp.key, anonymous_id=lead.anonymous_id, types=inp.types)
            return ScoringEvents(
                events=[event_from_row(row) for row in rows],
                delivered=[row.id for row in rows if row.dispatched_at is not None],
                resets=crud.stage_changes(session=session, key=inp.key, to="recycled"),
            )

    @activity.defn
    def sync_lead(self, inp: SyncLeadInput) -> None:
        """Project the workflow's state into the store (idempotent, newest version wins)."""
        with session_scope(self.settings.db_url) as session:
            crud.apply_projection(session=session, key=inp.key, version=inp.version, fields=asdict(inp.fields))
            crud.add_history(session=session, key=inp.key, entries=[asdict(entry) for entry in inp.history])
