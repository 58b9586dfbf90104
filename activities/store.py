"""Store activities: load campaign/funnel files and write the workflow's projection.

They run as local activities: short, idempotent and on the lead's hot path, so they
need no extra server round trip. Like every activity here they are plain functions
run in the worker's thread pool, so a database wait never stalls the event loop that
drives workflows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from nurture import crud, rules
from nurture.campaign import Campaign, CampaignError, Funnel, find_campaign, load_campaigns, load_funnel
from nurture.config import Settings
from nurture.db import session_scope
from nurture.journey import HistoryEntry, LeadEvent, LeadProfile, Projection


@dataclass
class LoadFunnelInput:
    pass


@dataclass
class LoadStartInput:
    trigger: str = "created"  # the campaigns that may enroll on it come back too


@dataclass
class StartConfig:
    """What a new lead's first task needs, in one read: the funnel and the campaigns
    that enroll automatically on the trigger."""

    funnel: Funnel
    campaigns: list[Campaign] = field(default_factory=list)


@dataclass
class LoadCampaignInput:
    name: str


@dataclass
class PickCampaignInput:
    trigger: str  # created | recycled
    profile: dict[str, Any]
    stage: str
    finished: list[str] = field(default_factory=list)


@dataclass
class PickCampaignResult:
    campaign: Campaign | None = None


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


class _FileCache:
    """Parsed YAML kept while its files are unchanged (a stat per file, not a parse).

    For a folder the stamp covers every YAML file in it, so editing a campaign in
    place (which leaves the folder's own mtime alone) is seen at once.
    """

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[tuple[Any, ...], Any]] = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[Any, ...]:
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        stamp = []
        for file in files:
            try:
                stat = file.stat()
                stamp.append((file.name, stat.st_mtime_ns, stat.st_size))
            except FileNotFoundError:
                stamp.append((file.name, 0, 0))
        return tuple(stamp)

    def get(self, path: Path, load: Any) -> Any:
        stamp = self._stamp(path)
        cached = self._entries.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
        value = load()
        self._entries[path] = (stamp, value)
        return value


class StoreActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache = _FileCache()

    @activity.defn
    def load_funnel(self, _: LoadFunnelInput) -> Funnel:
        path = self.settings.funnel_file
        try:
            return self._cache.get(path, lambda: load_funnel(path if path.exists() else None))
        except CampaignError as error:
            # A broken funnel file must not change anyone's score: stop and say why.
            raise ApplicationError(f"funnel: {error}", type="CampaignError", non_retryable=True) from error

    @activity.defn
    def load_campaign(self, inp: LoadCampaignInput) -> Campaign:
        try:
            return find_campaign(self.settings.campaigns_dir, inp.name)
        except CampaignError as error:
            raise ApplicationError(str(error).splitlines()[0], type="CampaignError", non_retryable=True) from error

    @activity.defn
    def load_start(self, inp: LoadStartInput) -> StartConfig:
        return StartConfig(self.load_funnel(LoadFunnelInput()),
                           [c for c in self._campaigns() if inp.trigger in c.enroll.auto_on])

    @activity.defn
    def pick_campaign(self, inp: PickCampaignInput) -> PickCampaignResult:
        """The campaign a lead enters automatically: highest priority, then name."""
        return PickCampaignResult(rules.pick_campaign(self._campaigns(), inp.trigger, inp.profile, inp.stage,
                                                      inp.finished))

    def _campaigns(self) -> list[Campaign]:
        directory = self.settings.campaigns_dir
        try:
            return self._cache.get(directory, lambda: load_campaigns(directory)) if directory.exists() else []
        except CampaignError as error:
            activity.logger.warning("automatic enrollment skipped, campaigns invalid: %s", error)
            return []

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
