"""The pure domain rules: matching, scoring, grading, qualification, decay, send windows.

Everything here runs inside the lead's deterministic Temporal workflow, so these are
plain functions with no I/O, no clock reads (`now` is always an argument), no
randomness and only ordered iteration. `zoneinfo` is used for time zones: it only
reads the (immutable) tz database, so results are the same on every replay.

The functions never raise on odd data coming from leads or events (a bad regex, an
unknown time zone, a non-numeric "number"): a raise inside a workflow would leave the
lead stuck, which is worse than a rule that simply does not match. The one exception
is a caller's bug: an event without a valid `at` (score_event raises ValueError).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from nurture.campaign import (
    DAYS, Campaign, Condition, EventRule, FitRule, FrequencyCap, Qualify, Scoring, SendWindow, format_duration,
)
from nurture.values import as_bool, as_number, search

GRADES = ("A", "B", "C", "D", "F")  # best to worst
STAGES = ("visitor", "lead", "mql", "sql", "opportunity", "customer")  # funnel order
SIDE_STAGES = ("disqualified", "recycled")
BANT_KEYS = ("budget", "authority", "need", "timing")

_MISSING = object()


# ---------------------------------------------------------------- where


def match_where(where: Mapping[str, Any] | None, record: Mapping[str, Any]) -> bool:
    """True when every field of `where` holds for `record` (None or {} matches all).

    A field's spec is a scalar (equality), a list (`in`) or {operator: value}, all of
    whose operators must hold. Fields are record keys or dotted paths
    (`attributes.plan`). A missing field (absent, None or blank string) fails every
    operator except `exists: false`, so a rule never fires on data we do not have.
    """
    if not where:
        return True
    return all(_field_holds(_lookup(record, field), spec) for field, spec in where.items())


def pick_campaign(campaigns: Sequence[Campaign], trigger: str, profile: Mapping[str, Any], stage: str,
                  finished: Sequence[str], *, event: Mapping[str, Any] | None = None,
                  entered: Mapping[str, datetime] | None = None, now: datetime | None = None) -> Campaign | None:
    """The campaign a lead enters automatically on `trigger` (`created`, `recycled`, or
    `event` with the event's fields): highest priority, then name; re-entry rules apply."""
    matching = [
        c for c in campaigns
        if triggered(c, trigger, event) and stage in c.enroll.stages and match_where(c.enroll.where, profile)
        and reentry_refusal(c, finished, entered or {}, now) is None
    ]
    return min(matching, key=lambda c: (-c.enroll.priority, c.name), default=None)


def triggered(campaign: Campaign, trigger: str, event: Mapping[str, Any] | None) -> bool:
    """The campaign takes leads on this trigger: by name, or an event trigger of its type
    whose `where` holds for the event's fields."""
    if trigger != "event":
        return campaign.enroll.triggers_on(trigger)
    return event is not None and any(
        t.event == event.get("type") and match_where(t.where, event) for t in campaign.enroll.event_triggers())


def reentry_refusal(campaign: Campaign, finished: Sequence[str], entered: Mapping[str, datetime],
                    now: datetime | None) -> str | None:
    """Why the campaign's `reenroll` rule keeps out a lead that is not in it now, or None."""
    rule = campaign.enroll.reenroll
    if campaign.name not in finished or rule in ("after_exit", "always"):
        return None
    if rule == "never":
        return f"lead was already in '{campaign.name}' and reenroll is 'never'"
    last = entered.get(campaign.name)  # None: entered before this was recorded, long ago
    if last is not None and now is not None and now - last < rule.every:
        every = format_duration(rule.every)
        return (f"lead entered '{campaign.name}' less than {every} ago (reenroll every {every}): "
                f"not before {last + rule.every:%Y-%m-%d %H:%M} UTC")
    return None


def _lookup(record: Mapping[str, Any], field: str) -> Any:
    """The value at `field`: a plain key first, else a dotted path into nested mappings."""
    if field in record:
        value = record[field]
    else:
        value = record
        for part in field.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return _MISSING
            value = value[part]
    # Empty values count as absent: a blank CSV cell is not "known to be empty".
    if value is None or (isinstance(value, str) and not value.strip()):
        return _MISSING
    if isinstance(value, (list, tuple, set, frozenset, Mapping)) and not value:
        return _MISSING
    return value


def _field_holds(actual: Any, spec: Any) -> bool:
    if isinstance(spec, Mapping):
        return all(_operator_holds(actual, op, expected) for op, expected in spec.items())
    if isinstance(spec, (list, tuple)):
        return _operator_holds(actual, "in", spec)
    return _operator_holds(actual, "eq", spec)


def _operator_holds(actual: Any, op: str, expected: Any) -> bool:
    if op == "exists":
        return (actual is not _MISSING) == bool(as_bool(expected))
    if actual is _MISSING:
        return expected is None and op == "eq"  # `{field: null}` means "not set"
    if isinstance(actual, (list, tuple, set, frozenset)):
        # A multi-valued field (tags) matches when any of its values does.
        return any(_operator_holds(item, op, expected) for item in _ordered(actual))
    check = _OPERATORS.get(op)
    return check is not None and check(actual, expected)


def _ordered(values: Any) -> list[Any]:
    """Sets in a replay-stable order (set order depends on string hashing)."""
    return sorted(values, key=repr) if isinstance(values, (set, frozenset)) else list(values)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _equals(actual: Any, expected: Any) -> bool:
    """Equality that survives YAML vs CSV typing: 50 == "50", True == "yes", "FR" == "fr"."""
    if expected is None:
        return False  # a present value never equals null (see _operator_holds)
    if isinstance(expected, bool) or isinstance(actual, bool):
        left, right = as_bool(actual), as_bool(expected)
        return left is not None and left == right
    left, right = as_number(actual), as_number(expected)
    if left is not None and right is not None:
        return left == right
    return str(actual).casefold() == str(expected).casefold()


def _compare(actual: Any, expected: Any) -> int | None:
    """-1/0/1 for two numbers (numeric strings coerced) or two non-numeric strings
    (ISO dates compare right as text); None for a mix, so "large" is never >= 50."""
    left, right = as_number(actual), as_number(expected)
    if left is not None and right is not None:
        return (left > right) - (left < right)
    if left is None and right is None and isinstance(actual, str) and isinstance(expected, str):
        return (actual > expected) - (actual < expected)
    return None


def _text_op(method: str):
    """contains/startswith/endswith: case-insensitive, expected a string or a list of them."""

    def check(actual: Any, expected: Any) -> bool:
        text = str(actual).casefold()
        return any(getattr(text, method)(str(e).casefold()) for e in _as_list(expected) if e is not None)

    return check


def _matches(actual: Any, expected: Any) -> bool:
    """`re.search` with any of the patterns; a bad pattern is a non-match, never an error."""
    return any(search(pattern, actual) for pattern in _as_list(expected))


def _ordering(test):
    def check(actual: Any, expected: Any) -> bool:
        result = _compare(actual, expected)
        return result is not None and test(result)

    return check


_OPERATORS = {
    "eq": _equals,
    "in": lambda actual, expected: any(_equals(actual, e) for e in _as_list(expected)),
    "contains": _text_op("__contains__"),
    "startswith": _text_op("startswith"),
    "endswith": _text_op("endswith"),
    "matches": _matches,
    "gte": _ordering(lambda r: r >= 0),
    "lte": _ordering(lambda r: r <= 0),
    "gt": _ordering(lambda r: r > 0),
    "lt": _ordering(lambda r: r < 0),
}


# ---------------------------------------------------------------- rule text


def rule_text(rule: EventRule | FitRule, *, kind: str | None = None, index: int | None = None) -> str:
    """A compact, stable, human line for score history: which rule gave the points.

    `page_view#1 {url: {contains: /pricing}} +15 max 15/day`, `fit#2 {company_size:
    {gte: 50}} +15`, `email_open#1 +1`. `kind` (the event type or "fit") and `index`
    (the rule's 0-based position, as in Scored.rule_index) are prefixed when given;
    the text numbers rules from 1, as a person counts them in the file. The where
    keeps the file's key order, so the same rule always reads the same.
    """
    parts = []
    if kind is not None:
        parts.append(kind if index is None else f"{kind}#{index + 1}")
    if rule.where:
        parts.append(flow_yaml(rule.where))
    parts.append(f"{rule.points:+d}")
    max_per_day = getattr(rule, "max_per_day", None)
    if max_per_day is not None:
        parts.append(f"max {max_per_day}/day")
    return " ".join(parts)


_PLAIN_RE = re.compile(r"[^\s{}\[\],:#'\"&*!|>%@`?-][^{}\[\],:#'\"]*")
_LOOKS_TYPED = re.compile(r"(?i)true|false|null|yes|no|on|off|~|[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def flow_yaml(value: Any) -> str:
    """YAML flow style, e.g. {url: {contains: /pricing}}, quoting strings only when needed."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{flow_yaml(k)}: {flow_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow_yaml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        if _PLAIN_RE.fullmatch(value) and value == value.strip() and not _LOOKS_TYPED.fullmatch(value):
            return value
        return "'" + value.replace("'", "''") + "'"  # single quotes: backslashes stay readable
    return str(value)


# ---------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Scored:
    points: int  # points actually applied (0 when capped)
    rule_index: int  # 0-based position of the matching rule in scoring.events[type]
    rule_text: str
    capped: bool  # max_per_day reached: some or all points dropped
    counter_key: str  # per-day counter key: f"{type}#{rule_index}@{YYYY-MM-DD}" (UTC day)


def score_event(scoring: Scoring, event: Mapping[str, Any], day_counts: Mapping[str, int]) -> Scored | None:
    """Points for one event: the first rule of its type whose where matches the event.

    None when the type has no rules or none matches. `day_counts[counter_key]` holds the
    points this rule already granted this lead on the event's UTC day; `max_per_day`
    caps those points, granting what is left (a partial grant) and marking the rest
    as dropped. Negative rules (unsubscribe) are never capped: a penalty always counts.
    """
    kind = str(event.get("type", ""))
    for index, rule in enumerate(scoring.events.get(kind, [])):
        if not match_where(rule.where, event):
            continue
        key = f"{kind}#{index}@{event_day(event).isoformat()}"
        points = rule.points
        if rule.max_per_day is not None and points > 0:
            remaining = max(0, rule.max_per_day - day_counts.get(key, 0))
            points = min(points, remaining)
        text = rule_text(rule, kind=kind, index=index)
        return Scored(points=points, rule_index=index, rule_text=text, capped=points < rule.points, counter_key=key)
    return None


def event_day(event: Mapping[str, Any]) -> date:
    """The UTC calendar day of an event's `at` (aware datetime or ISO 8601 string)."""
    at = event.get("at")
    if isinstance(at, str):
        at = datetime.fromisoformat(at.strip())
    if not isinstance(at, datetime):
        raise ValueError(f"event {event.get('type')!r} has no valid 'at' timestamp: {at!r}")
    return _utc(at).date()


def fit_points(scoring: Scoring, profile: Mapping[str, Any]) -> tuple[int, list[tuple[int, str, int]]]:
    """Fit total and the matching rules [(index, text, points)]: every matching fit rule adds up."""
    matched = [
        (index, rule_text(rule, kind="fit", index=index), rule.points)
        for index, rule in enumerate(scoring.fit)
        if match_where(rule.where, profile)
    ]
    return sum(points for _, _, points in matched), matched


def grade_for(grades: Mapping[str, int], fit: int) -> str:
    """The best grade whose band minimum is <= fit; below every band (D's too): "F"."""
    for grade in GRADES[:-1]:
        if grade in grades and fit >= grades[grade]:
            return grade
    return "F"


def _grade_rank(grade: str) -> int:
    """0 for A ... 4 for F; an unknown grade ranks below F so it never qualifies."""
    normal = str(grade).strip().upper()
    return GRADES.index(normal) if normal in GRADES else len(GRADES)


def grade_at_least(grade: str, minimum: str) -> bool:
    """True when `grade` is as good as `minimum` or better (A best)."""
    return _grade_rank(grade) <= _grade_rank(minimum)


def temperature(score: int, mql_score: int) -> str:
    """cold below half the MQL threshold, warm below it, hot at or above (contract §1)."""
    if score >= mql_score:
        return "hot"
    return "warm" if 2 * score >= mql_score else "cold"  # 2*score avoids rounding half of odd thresholds


def meets_mql(qualify: Qualify, score: int, grade: str) -> bool:
    """MQL needs both interest (score) and fit (grade): a hot student is not a lead for sales."""
    return score >= qualify.mql.score and grade_at_least(grade, qualify.mql.min_grade)


def bant_count(bant: Mapping[str, bool | None]) -> int:
    """How many of budget/authority/need/timing are known true (unknown and false don't count)."""
    return sum(1 for key in BANT_KEYS if bant.get(key) is True)


def meets_sql(qualify: Qualify, bant: Mapping[str, bool | None]) -> bool:
    """`bant: all` -> all four true; `bant: N` -> at least N true.

    Only the BANT part: the caller also requires the lead to be at mql already.
    """
    needed = len(BANT_KEYS) if qualify.sql.bant == "all" else int(qualify.sql.bant)
    return bant_count(bant) >= needed


def stage_rank(stage: str) -> int:
    """Position in the funnel, for "a lead only moves forward" (move if the new rank is higher).

    visitor 0, lead 1, mql 2, sql 3, opportunity 4, customer 5. Side stages:
    `recycled` ranks like `lead` (1), so it may become mql again; `disqualified` ranks
    last (6), after customer, so no automatic forward move ever takes a lead out of it
    (only an explicit action does). An unknown stage ranks -1, before visitor.
    """
    if stage == "recycled":
        return STAGES.index("lead")
    if stage == "disqualified":
        return len(STAGES)
    return STAGES.index(stage) if stage in STAGES else -1


# ---------------------------------------------------------------- conditions


@dataclass(frozen=True)
class LeadView:
    """What `if`, `exit_when` and `disqualify` conditions look at."""

    score: int
    grade: str
    stage: str
    temperature: str
    profile: Mapping[str, Any]  # lead fields + "attributes"
    events: frozenset[tuple[str, str | None]]  # (event type, step id or None) seen in this enrollment


def _one_of(value: str, allowed: str | Sequence[str]) -> bool:
    return str(value).casefold() in {str(a).casefold() for a in _as_list(allowed)}


def condition_holds(cond: Condition, view: LeadView) -> bool:
    """True when every key given in the condition holds (an empty condition holds).

    `attribute` is a where over the profile; a field not among the lead's own fields is
    looked up in its attributes too, so `{attribute: {plan: pro}}` and
    `{attribute: {attributes.plan: pro}}` both work.
    """
    checks: list[bool] = []
    if cond.temperature is not None:
        checks.append(_one_of(view.temperature, cond.temperature))
    if cond.stage is not None:
        checks.append(_one_of(view.stage, cond.stage))
    if cond.grade is not None:
        checks.append(_one_of(view.grade, cond.grade))
    if cond.score is not None:
        checks.append(all(_operator_holds(view.score, op, value) for op, value in cond.score.items()))
    if cond.event is not None or cond.step is not None:
        checks.append(_event_seen(view.events, cond.event, cond.step))
    if cond.attribute is not None:
        checks.append(match_where(cond.attribute, _profile_with_attributes(view.profile)))
    return all(checks)


def _profile_with_attributes(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes overlaid by the lead's own fields that are set (a field left
    empty does not hide an attribute of the same name); "attributes" stays for paths."""
    attributes = profile.get("attributes")
    record = dict(attributes) if isinstance(attributes, Mapping) else {}
    record.update((key, value) for key, value in profile.items() if _lookup(profile, key) is not _MISSING)
    return record


def _event_seen(events: frozenset[tuple[str, str | None]], event: str | None, step: str | None) -> bool:
    """An event (optionally at a given step) was seen; a step alone means any event of that step."""
    return any((event is None or kind == event) and (step is None or at_step == step) for kind, at_step in events)


def any_condition(conds: Sequence[Condition], view: LeadView) -> bool:
    """True when at least one condition holds (lists are ORed: exit_when, disqualify)."""
    return any(condition_holds(cond, view) for cond in conds)


# ---------------------------------------------------------------- decay


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken as UTC (what the database stores)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def decay_steps(last_scored_at: datetime, now: datetime, every: timedelta) -> int:
    """How many FULL decay periods have elapsed since the last scored event."""
    if every <= timedelta(0):
        return 0
    elapsed = _utc(now) - _utc(last_scored_at)
    return max(0, elapsed // every)


def next_decay_at(last_scored_at: datetime, applied: int, every: timedelta) -> datetime:
    """When the next decay is due, `applied` periods having been applied since last_scored_at."""
    return _utc(last_scored_at) + (applied + 1) * every


def apply_decay(score: int, points: int) -> int:
    """Score after one decay step: never below 0."""
    return max(0, score - points)


# ---------------------------------------------------------------- send window


def _zone(name: str | None) -> ZoneInfo | None:
    """The IANA zone, or None for anything ZoneInfo rejects (unknown, malformed, empty)."""
    if not name or not isinstance(name, str) or not name.strip():
        return None
    try:
        return ZoneInfo(name.strip())
    except (ValueError, OSError, TypeError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        return None


def lead_zone(window: SendWindow, lead_timezone: str | None) -> ZoneInfo:
    """The zone the window is read in: the lead's (timezone: lead) or the named one,
    falling back to default_timezone when invalid, and to UTC when that is bad too."""
    wanted = lead_timezone if window.timezone.strip().lower() == "lead" else window.timezone
    return _zone(wanted) or _zone(window.default_timezone) or ZoneInfo("UTC")


def parse_hours(hours: str) -> tuple[int, int]:
    """"HH:MM-HH:MM" -> (start, end) minutes after midnight; "24:00" ends the day.

    Raises ValueError; the campaign validator can use it to reject bad windows.
    """
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", hours or "")
    if not match:
        raise ValueError(f"invalid hours {hours!r}: use HH:MM-HH:MM, e.g. 09:00-17:30")
    sh, sm, eh, em = (int(g) for g in match.groups())
    start, end = sh * 60 + sm, eh * 60 + em
    if sm > 59 or em > 59 or start >= 24 * 60 or end > 24 * 60 or start == end:
        raise ValueError(f"invalid hours {hours!r}: times run 00:00-24:00 and must differ")
    return start, end


def _daily_intervals(hours: str) -> list[tuple[int, int]]:
    """Allowed [start, end) minute ranges of one local calendar day.

    An overnight window ("22:00-06:00") is both ends of each allowed day. Unparsable
    hours mean the whole day: the validator rejects them; a workflow must not be stuck.
    """
    try:
        start, end = parse_hours(hours)
    except ValueError:
        return [(0, 24 * 60)]
    return [(start, end)] if start < end else [(0, end), (start, 24 * 60)]


def _local_instant(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time: ambiguous times take the first
    occurrence (fold=0); a time inside a DST gap moves to the first instant after it."""
    if minutes >= 24 * 60:
        day, minutes = day + timedelta(days=1), minutes - 24 * 60
    wall = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=zone)
    later = wall.astimezone(timezone.utc)
    if later.astimezone(zone).replace(tzinfo=None) == wall.replace(tzinfo=None):
        return later  # exists (fold=0 is the first of two if ambiguous)
    # In a gap: fold=1 maps before the transition, fold=0 after it; the transition
    # (the first valid instant) lies between. Find it to the second by bisection.
    earlier = wall.replace(fold=1).astimezone(timezone.utc)
    after_offset = later.astimezone(zone).utcoffset()
    low, high = 0, int((later - earlier).total_seconds())  # earlier+low: before; earlier+high: after
    while high - low > 1:
        mid = (low + high) // 2
        if (earlier + timedelta(seconds=mid)).astimezone(zone).utcoffset() == after_offset:
            high = mid
        else:
            low = mid
    return earlier + timedelta(seconds=high)


def _open_periods(window: SendWindow, zone: ZoneInfo, start_day: date, days: int) -> Iterator[tuple[datetime, datetime]]:
    """The window's [open, close) UTC periods over `days` local days, in time order."""
    allowed = {d.strip().lower()[:3] for d in window.days} or set(DAYS)  # none listed: don't block forever
    intervals = _daily_intervals(window.hours)
    for offset in range(days):
        day = start_day + timedelta(days=offset)
        if DAYS[day.weekday()] not in allowed:
            continue
        for start, end in intervals:
            opens, closes = _local_instant(day, start, zone), _local_instant(day, end, zone)
            if opens < closes:  # a window lying wholly in a DST gap is empty that day
                yield opens, closes


def next_send_slot(now: datetime, window: SendWindow | None, lead_timezone: str | None) -> datetime:
    """The earliest UTC instant >= now inside the send window, in the lead's zone.

    Now itself when inside (or when there is no window). Window edges are local wall
    times on local calendar dates, so 09:00 stays 09:00 across DST changes.
    """
    now = _utc(now)
    if window is None:
        return now
    zone = lead_zone(window, lead_timezone)
    for opens, closes in _open_periods(window, zone, now.astimezone(zone).date(), days=15):
        if closes > now:
            return max(opens, now)
    return now  # unreachable with a sane window; never leave the lead waiting forever


# ---------------------------------------------------------------- frequency cap


def frequency_release(now: datetime, sent_at: Sequence[datetime], cap: FrequencyCap | None) -> datetime | None:
    """None when one more send fits the cap now; else when it will.

    The cap counts sends in (now - per, now]. When full, the next send fits once enough
    of those leave the window: the oldest + per when exactly at the cap (later ones if
    the cap was lowered and the lead is over it).
    """
    if cap is None:
        return None
    now = _utc(now)
    inside = sorted(t for t in map(_utc, sent_at) if now - cap.per < t <= now)
    if len(inside) < cap.max:
        return None
    return inside[len(inside) - cap.max] + cap.per


# ---------------------------------------------------------------- A/B


def ab_variant(campaign: str, step: str, lead_key: str, variants: int) -> int:
    """The variant index for a lead: sha256 of "campaign|step|lead" mod variants.

    Stable across processes, replays and retries (Python's hash() is salted per process).
    """
    if variants <= 1:
        return 0
    digest = hashlib.sha256(f"{campaign}|{step}|{lead_key}".encode()).hexdigest()
    return int(digest, 16) % variants
