"""The campaign and funnel formats (contract section 5) as typed, validated models,
and their loading from YAML with messages a marketer can act on.

YAML becomes these models outside any workflow; the lead's workflow receives a
`Campaign` at enrollment and keeps it, so a lead finishes on the version it entered.

The models check what a value alone can tell (types, names, operators, durations)
and stay pure: the Temporal data converter re-validates them inside the workflow
sandbox. The loader adds what needs the whole file or the outside world (the step
graph, time zones, templates) and reports every problem as `FILE:LINE: path: message`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
import types
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Annotated, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from nurture.emails import check_subject, check_template, sender_context, subject_syntax_error
from nurture.yamlload import BoundedSafeLoader, StatCache

# ---------------------------------------------------------------- vocabulary (contract section 1)

STAGES = ("visitor", "lead", "mql", "sql", "opportunity", "customer", "disqualified", "recycled")
Stage = Literal["visitor", "lead", "mql", "sql", "opportunity", "customer", "disqualified", "recycled"]
TEMPERATURES = ("cold", "warm", "hot")
GRADES = ("A", "B", "C", "D", "F")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVENT_TYPES = (
    "email_delivered",
    "email_open",
    "email_click",
    "email_bounce",
    "email_dropped",
    "email_spamreport",
    "email_unsubscribe",
    "page_view",
    "content_download",
    "form_submit",
    "quote_request",
    "contact_request",
    "webinar_registered",
    "webinar_attended",
    "event_attended",
    "meeting_booked",
    "reply",
)
# `where` filters stay as plain mappings: field -> scalar (equality), list (in) or
# {operator: value}. nurture.rules evaluates them; validation checks the operators.
WHERE_OPERATORS = ("eq", "in", "contains", "startswith", "endswith", "matches", "gte", "lte", "gt", "lt", "exists")
SCORE_OPERATORS = ("gte", "lte", "gt", "lt", "eq")

_EVENT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_ADDRESS_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_HOURS_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_CAMPAIGN_NAME = r"^[a-z0-9][a-z0-9_-]*$"
_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")  # what nurture.rules reads as booleans


# ---------------------------------------------------------------- message helpers


def _shown(value: Any) -> str:
    """A value as the marketer wrote it, for messages: 'abc', 5, true, nothing, a list."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return str(value)


def _closest(word: Any, choices: Iterable[str]) -> str | None:
    """The choice a typo most likely meant (case-insensitive), or None."""
    by_lower = {choice.lower(): choice for choice in choices}
    match = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def _unknown(what: str, value: Any, choices: Sequence[str]) -> str:
    """`unknown stage 'mqll' (did you mean 'mql'?)`, or the list of choices when nothing is close."""
    hint = _closest(value, choices)
    tail = f"did you mean '{hint}'?" if hint else f"expected one of: {', '.join(choices)}"
    return f"unknown {what} {_shown(value)} ({tail})"


# ---------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_HELP = "use e.g. 30s, 15m, 4h, 2d, 1w, 1d12h"


def parse_duration(text: str | int | timedelta) -> timedelta:
    """`30s`, `15m`, `4h`, `2d`, `1w`, combinable (`1d12h`); a bare number is seconds."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {_shown(text)}: {_DURATION_HELP}")
    if isinstance(text, int):
        return _bounded(text, text)
    compact = str(text).strip().lower().replace(" ", "")
    # pydantic serialises timedelta as ISO 8601 ("P2D", "PT4H"); accept it back.
    if compact.startswith("p"):
        return _iso_duration(text, compact)
    if not compact or _DURATION_RE.sub("", compact) != "":
        raise ValueError(f"invalid duration {_shown(text)}: {_DURATION_HELP}")
    return _bounded(text, sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_RE.findall(compact)))


# Ten years: a longer wait is a typo (`1000w`), and timedelta itself overflows near 2.7M years.
_MAX_DURATION_SECONDS = 3650 * 86400


def _bounded(text: Any, seconds: int) -> timedelta:
    if seconds <= 0:
        raise ValueError(f"invalid duration {_shown(text)}: must be longer than zero")
    if seconds > _MAX_DURATION_SECONDS:
        raise ValueError(f"invalid duration {_shown(text)}: must be at most 10 years (3650d)")
    return timedelta(seconds=seconds)


def _iso_duration(text: Any, compact: str) -> timedelta:
    try:
        value = TypeAdapter(timedelta).validate_python(compact.upper())
    except ValidationError:
        raise ValueError(f"invalid duration {_shown(text)}: {_DURATION_HELP}") from None
    return _bounded(text, int(value.total_seconds()))


def format_duration(value: timedelta) -> str:
    """For messages and timelines: `1d12h`, `7d` (days at most: a week is not written
    back as `1w`, so `7d` in a campaign reads `7d` wherever it is shown)."""
    seconds = int(value.total_seconds())
    parts = []
    for unit in "dhms":
        size = _UNIT_SECONDS[unit]
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def _duration_field(value: Any) -> timedelta:
    if value is None or isinstance(value, (list, dict, float)):
        raise ValueError(f"expected a duration like 2d, got {_shown(value)} ({_DURATION_HELP})")
    return parse_duration(value)


# A duration field accepts the contract's compact form and pydantic's ISO 8601 form
# (what the Temporal data converter and `funnel show` write), and documents itself as
# a string of either form.
_DURATION_PATTERN = "^(\\d+[smhdw])+$|^P(\\d+D)?(T(\\d+H)?(\\d+M)?(\\d+(\\.\\d+)?S)?)?$"
Duration = Annotated[
    timedelta,
    BeforeValidator(_duration_field),
    WithJsonSchema({"type": "string", "pattern": _DURATION_PATTERN, "examples": ["2d", "1d12h"]}),
]


# ---------------------------------------------------------------- value checks shared by the models


def _event_name(value: str) -> str:
    """Event types are lower-case (contract section 1): `Email_Click` would never match."""
    if _EVENT_NAME_RE.match(value):
        return value
    fixed = re.sub(r"[\s-]+", "_", value.strip().lower())
    hint = f" (did you mean '{fixed}'?)" if _EVENT_NAME_RE.match(fixed) else ""
    raise ValueError(f"event names are lower-case words joined by _, like email_click: got {_shown(value)}{hint}")


# Line breaks and control characters: in a header (a sender, a subject) they would start
# a new header; in an id or a name they would forge lines of logs, history and tables.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line_text(value: str) -> str:
    found = _CONTROL_RE.search(value)
    if found:
        raise ValueError(f"must be one line of text without control characters: found {ascii(found[0])} "
                         f"at character {found.start() + 1}")
    return value


def _email(value: str) -> str:
    """An address, optionally with a display name: `Acme <hello@acme.example>`."""
    if not _ADDRESS_RE.match(parseaddr(value)[1]):
        raise ValueError(f"expected an email address like hello@acme.example, got {_shown(value)}")
    return value


def _names_check(allowed: tuple[str, ...], what: str) -> Any:
    """A check for a condition key that takes one name or a list of names from `allowed`
    (any case: nurture.rules compares them case-insensitively)."""
    folded = [name.casefold() for name in allowed]

    def check(value: Any) -> Any:
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"expected a {what} or a list of them, got {_shown(value)}")
        for name in names:
            if name.casefold() not in folded:
                raise ValueError(_unknown(what, name, allowed))
        return value

    return check


def _names_schema(allowed: tuple[str, ...]) -> dict[str, Any]:
    return {"anyOf": [{"enum": list(allowed)}, {"type": "array", "items": {"enum": list(allowed)}}]}


def _where_test(value: Any) -> Any:
    """One field's test in a `where`: a value (equality), a list (in) or {operator: value}."""
    if isinstance(value, dict):
        if not value:
            raise ValueError("empty test: give a value, a list, or an operator like {gte: 50}")
        for operator, argument in value.items():
            _check_operator(operator, argument)
    return value


def _check_operator(operator: Any, argument: Any) -> None:
    if operator not in WHERE_OPERATORS:
        raise ValueError(_unknown("operator", operator, WHERE_OPERATORS))
    if operator == "matches":
        _check_regex(argument)
    elif operator == "exists" and not (isinstance(argument, bool) or str(argument).lower() in _BOOL_WORDS):
        raise ValueError(f"exists takes true or false, got {_shown(argument)}")
    elif operator == "in" and not isinstance(argument, list):
        raise ValueError(f"in takes a list, got {_shown(argument)}")
    elif operator in ("contains", "startswith", "endswith") and not _text_or_texts(argument):
        raise ValueError(f"{operator} takes text or a list of texts, got {_shown(argument)}")
    elif operator in ("gte", "lte", "gt", "lt") and (isinstance(argument, (bool, list, dict)) or argument is None):
        raise ValueError(f"{operator} takes a number (or a date), got {_shown(argument)}")


def _text_or_texts(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in items)


def _check_regex(pattern: Any) -> None:
    if not isinstance(pattern, str):
        raise ValueError(f"matches takes a regular expression (text), got {_shown(pattern)}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {_shown(pattern)}: {exc}") from None


WhereTest = Annotated[Any, AfterValidator(_where_test)]
Where = dict[str, WhereTest]
OneLine = Annotated[str, AfterValidator(_one_line_text)]
EmailAddress = Annotated[str, AfterValidator(_one_line_text), AfterValidator(_email)]
EventName = Annotated[str, AfterValidator(_event_name)]
TemperatureNames = Annotated[
    Union[str, list[str]],
    BeforeValidator(_names_check(TEMPERATURES, "temperature")),
    WithJsonSchema(_names_schema(TEMPERATURES)),
]
StageNames = Annotated[
    Union[str, list[str]], BeforeValidator(_names_check(STAGES, "stage")), WithJsonSchema(_names_schema(STAGES))
]
GradeNames = Annotated[
    Union[str, list[str]], BeforeValidator(_names_check(GRADES, "grade")), WithJsonSchema(_names_schema(GRADES))
]


class _Strict(BaseModel):
    # coerce_numbers_to_str: `id: 1` or `name: 2024` in YAML are names, not errors.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, coerce_numbers_to_str=True)


class Condition(_Strict):
    """An `if:`, `exit_when` or `disqualify` condition: every given key must hold."""

    temperature: TemperatureNames | None = None
    stage: StageNames | None = None
    score: dict[str, float] | None = None
    grade: GradeNames | None = None
    event: EventName | None = None
    step: str | None = None
    attribute: Where | None = None

    @field_validator("score", mode="before")
    @classmethod
    def _score_operators(cls, value: Any) -> Any:
        for operator in value if isinstance(value, dict) else ():
            if operator not in SCORE_OPERATORS:
                raise ValueError(_unknown("score operator", operator, SCORE_OPERATORS))
        return value


# ---------------------------------------------------------------- campaign


def _postal_address(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("the sender's postal address is empty: write it as mail can reach you, "
                         "e.g. 'Acme Inc., 100 Market Street, Springfield, CA 94000, USA'")
    return value.strip() if value is not None else None


PostalAddress = Annotated[Union[str, None], AfterValidator(_postal_address)]


class Sender(_Strict):
    from_: EmailAddress = Field(alias="from")
    reply_to: EmailAddress | None = None
    # The postal address marketing email must show (CAN-SPAM); None: funnel.yaml's.
    address: PostalAddress = None


class FunnelSender(_Strict):
    """`sender:` in funnel.yaml: what all campaigns share unless their own `sender` says otherwise."""

    address: PostalAddress = None


class EventTrigger(_Strict):
    """`auto_on: [{event: webinar_registered, where: {event: spring-webinar}}]`: the lead
    enters when such an event arrives (API, webhook, import); `where` is on the event's
    fields (url, asset, form, event, campaign, step)."""

    event: EventName
    where: Where | None = None


class ReenrollEvery(_Strict):
    """`reenroll: {every: 30d}`: again once it has left, and that long after it last entered."""

    every: Duration


def _trigger_kind(value: Any) -> str:
    return "event" if isinstance(value, (dict, EventTrigger)) else "name"


# A trigger's name, or an event trigger: tagged, so a typo gets one error of its own kind.
Trigger = Annotated[
    Union[Annotated[Literal["created", "recycled"], Tag("name")], Annotated[EventTrigger, Tag("event")]],
    Discriminator(_trigger_kind),
]


Reenroll = Annotated[
    Union[Annotated[Literal["never", "after_exit", "always"], Tag("name")], Annotated[ReenrollEvery, Tag("event")]],
    Discriminator(lambda value: "event" if isinstance(value, (dict, ReenrollEvery)) else "name"),
]


class Enroll(_Strict):
    stages: list[Stage] = ["lead"]
    where: Where | None = None
    auto_on: list[Trigger] = []
    priority: int = 0
    # never: once per lead; after_exit: again once it has left; always: on every trigger,
    # even while in it (the journey in it starts over); {every: 30d}: see ReenrollEvery.
    reenroll: Reenroll = "never"
    # Only leads in this segment of campaigns/segments.yaml enter (checked in the store at
    # each entry: automatic, explicit, event-triggered, bulk).
    segment: OneLine | None = None

    def triggers_on(self, trigger: str) -> bool:
        """It takes leads on `trigger` (`created`, `recycled`)."""
        return trigger in self.auto_on

    def event_triggers(self) -> list[EventTrigger]:
        return [trigger for trigger in self.auto_on if isinstance(trigger, EventTrigger)]


class SendWindow(_Strict):
    timezone: str = "lead"  # `lead` or an IANA name: the loader checks the time zone database
    default_timezone: str = "UTC"
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = list(DAYS)
    hours: str = "00:00-24:00"

    @field_validator("days")
    @classmethod
    def _some_day(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"no day allowed: list at least one of {', '.join(DAYS)}")
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        match = _HOURS_RE.match(value)
        if not match:
            raise ValueError(f"expected hours like '09:00-17:30', got {_shown(value)}")
        start, end = _minute(match[1], match[2]), _minute(match[3], match[4])
        if start is None or start == 24 * 60:
            raise ValueError(f"invalid start time in {_shown(value)}: use HH:MM from 00:00 to 23:59")
        if end is None:
            raise ValueError(f"invalid end time in {_shown(value)}: use HH:MM from 00:01 to 24:00")
        if start == end:
            raise ValueError(f"no hour allowed: {_shown(value)} starts where it ends")
        return value  # start after end is an overnight window: the loader warns, nurture.rules supports it


def _minute(hours: str, minutes: str) -> int | None:
    """Minutes after midnight of `HH:MM`, up to 24:00; None when not a time of day."""
    total = int(hours) * 60 + int(minutes)
    return total if int(minutes) < 60 and total <= 24 * 60 else None


class FrequencyCap(_Strict):
    max: int = Field(ge=1)
    per: Duration


# One subject, or several for an A/B split (each lead gets one, deterministically).
Subjects = Annotated[
    list[OneLine],
    Field(min_length=1),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}),
]


class SendStep(_Strict):
    id: OneLine
    send: str
    subject: Subjects | None = None

    @field_validator("subject", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("send")
    @classmethod
    def _template_name(cls, value: str) -> str:
        if value.endswith((".html", ".txt")):
            raise ValueError(f"give the template name without its extension: '{value.rsplit('.', 1)[0]}'")
        if not value.strip() or "/" in value or "\\" in value:
            raise ValueError(f"expected the name of a template in the templates folder, like welcome, got {_shown(value)}")
        return value

    @property
    def kind(self) -> str:
        return "send"


class WaitStep(_Strict):
    id: OneLine
    wait: Duration

    @property
    def kind(self) -> str:
        return "wait"


class WaitFor(_Strict):
    event: EventName
    step: str | None = None
    where: Where | None = None


class WaitForStep(_Strict):
    id: OneLine
    wait_for: WaitFor
    timeout: Duration
    on_timeout: str | None = None  # None: carry on with the next step

    @property
    def kind(self) -> str:
        return "wait_for"


class GotoStep(_Strict):
    id: OneLine
    goto: str

    @property
    def kind(self) -> str:
        return "goto"


class IfStep(_Strict):
    id: OneLine
    if_: Condition = Field(alias="if")
    then: str
    else_: str | None = Field(default=None, alias="else")  # None: the next step

    @property
    def kind(self) -> str:
        return "if"


Step = Union[SendStep, WaitStep, WaitForStep, GotoStep, IfStep]
STEP_KINDS: dict[str, type[BaseModel]] = {
    "send": SendStep,
    "wait": WaitStep,
    "wait_for": WaitForStep,
    "goto": GotoStep,
    "if": IfStep,
}
_STEP_KIND_HELP = f"a step needs one of {', '.join(STEP_KINDS)}"


def _step_class(raw: Any) -> type[BaseModel] | None:
    if isinstance(raw, BaseModel):
        return type(raw)
    if isinstance(raw, dict):
        for key, cls in STEP_KINDS.items():
            if key in raw or (key == "if" and "if_" in raw):
                return cls
    return None


def _step_tag(raw: Any) -> str | None:
    step_cls = _step_class(raw)
    return step_cls.__name__ if step_cls else None


def default_step_id(index: int) -> str:
    """The id of a step written without one: its 1-based position, as a person counts."""
    return f"step-{index + 1}"


# Each step is validated as the class of its kind key only, so an error in a send step
# reads as one message about that step instead of one per possible kind.
_TaggedStep = Annotated[
    Union[
        Annotated[SendStep, Tag("SendStep")],
        Annotated[WaitStep, Tag("WaitStep")],
        Annotated[WaitForStep, Tag("WaitForStep")],
        Annotated[GotoStep, Tag("GotoStep")],
        Annotated[IfStep, Tag("IfStep")],
    ],
    Discriminator(_step_tag, custom_error_type="step_kind", custom_error_message=_STEP_KIND_HELP),
]


class Campaign(_Strict):
    name: OneLine = Field(pattern=_CAMPAIGN_NAME)
    description: str = ""
    sender: Sender
    enroll: Enroll = Enroll()
    send_window: SendWindow | None = None
    frequency_cap: FrequencyCap | None = None
    exit_when: list[Condition] = []
    # Conversions this campaign is for: a lead that meets one leaves with `goal reached`.
    goal: list[Condition] = []
    steps: list[_TaggedStep] = Field(min_length=1)
    # Filled by the loader: a hash of the file's text, so running leads keep theirs.
    version: str = ""
    source_file: str = ""

    @model_validator(mode="before")
    @classmethod
    def _default_step_ids(cls, data: Any) -> Any:
        """Give every step an id, so history and `lead show` can always name it."""
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            return data
        steps = [
            {"id": default_step_id(index), **raw} if isinstance(raw, dict) else raw
            for index, raw in enumerate(data["steps"])
        ]
        return {**data, "steps": steps}

    def step_index(self, step_id: str) -> int | None:
        for index, step in enumerate(self.steps):
            if step.id == step_id:
                return index
        return None


# ---------------------------------------------------------------- funnel


class EventRule(_Strict):
    where: Where | None = None
    points: int
    max_per_day: int | None = Field(default=None, ge=0)


class FitRule(_Strict):
    where: Where
    points: int


class Decay(_Strict):
    every: Duration
    points: int = Field(ge=1)


def _points_shorthand(value: Any) -> Any:
    """`email_open: 1` is shorthand for one rule worth 1 point."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [{"points": value}]
    if isinstance(value, (list, tuple)):
        return value
    raise ValueError(f"expected points (a whole number) or a list of rules like - {{points: 2}}, got {_shown(value)}")


EventRules = Annotated[
    list[EventRule], BeforeValidator(_points_shorthand, json_schema_input_type=Union[int, list[EventRule]])
]


class Scoring(_Strict):
    events: dict[EventName, EventRules] = {}
    fit: list[FitRule] = []
    grades: dict[Literal["A", "B", "C", "D"], int] = {"A": 35, "B": 20, "C": 5, "D": 0}
    decay: Decay | None = None

    @field_validator("grades")
    @classmethod
    def _descending_bands(cls, value: dict[str, int]) -> dict[str, int]:
        missing = [grade for grade in "ABCD" if grade not in value]
        if missing:
            raise ValueError(f"missing grade {', '.join(missing)}: give the lowest fit points of each of A, B, C, D")
        for upper, lower in zip("ABC", "BCD"):
            if value[upper] < value[lower]:
                raise ValueError(
                    f"grades must go down from A to D: {lower} ({value[lower]}) is above {upper} ({value[upper]})"
                )
        return value


class MqlNotify(_Strict):
    """`qualify.mql.notify`: who hears of a new MQL before it becomes an SQL."""

    template: str = "mql_alert"
    to: list[EmailAddress] = []  # `owner` (written so, or left out): the lead's owner

    @field_validator("to", mode="before")
    @classmethod
    def _owner_or_addresses(cls, value: Any) -> Any:
        # [] is how `owner` is stored (and travels to the workflow): it must load again.
        if value == "owner":
            return []
        return [value] if isinstance(value, str) else value


class MqlRule(_Strict):
    score: int = Field(default=50, ge=1)
    min_grade: Literal["A", "B", "C", "D", "F"] = "C"
    notify: MqlNotify | None = None


class SqlRule(_Strict):
    bant: Literal["all"] | Annotated[int, Field(ge=1, le=4)] = "all"

    @field_validator("bant", mode="before")
    @classmethod
    def _all_or_count(cls, value: Any) -> Any:
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4):
            return value
        raise ValueError(f"expected 'all' or how many BANT facts must be true, 1 to 4; got {_shown(value)}")


class Qualify(_Strict):
    mql: MqlRule = MqlRule()
    sql: SqlRule = SqlRule()
    disqualify: list[Condition] = []


class AssignBy(_Strict):
    by: str = Field(min_length=1)
    map: dict[str, EmailAddress] = Field(min_length=1)


def _assign_tag(value: Any) -> str:
    return "AssignBy" if isinstance(value, (dict, AssignBy)) else "round_robin"


Assign = Annotated[
    Union[Annotated[Literal["round_robin"], Tag("round_robin")], Annotated[AssignBy, Tag("AssignBy")]],
    Discriminator(_assign_tag),
]


class Notify(_Strict):
    template: str | None = "sales_handoff"
    webhook: str | None = None

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"expected an http:// or https:// URL, got {_shown(value)}")
        return value


class Handoff(_Strict):
    owners: list[EmailAddress] = []
    assign: Assign = "round_robin"
    notify: Notify = Notify()
    sla: Duration | None = None


class Funnel(_Strict):
    scoring: Scoring = Scoring()
    qualify: Qualify = Qualify()
    handoff: Handoff = Handoff()
    sender: FunnelSender = FunnelSender()
    version: str = ""
    source_file: str = ""


def default_funnel() -> Funnel:
    """The built-in funnel used when `campaigns/funnel.yaml` is absent."""
    return Funnel.model_validate(
        {
            "scoring": {
                "events": {
                    "email_open": 1,
                    "email_click": 5,
                    "page_view": [
                        {"where": {"url": {"contains": "/pricing"}}, "points": 15, "max_per_day": 15},
                        {"points": 2, "max_per_day": 10},
                    ],
                    "content_download": 10,
                    "form_submit": 10,
                    "webinar_registered": 5,
                    "webinar_attended": 20,
                    "event_attended": 15,
                    "meeting_booked": 30,
                    "contact_request": 30,
                    "quote_request": 30,
                    "reply": 10,
                    "email_unsubscribe": -10,
                },
                "fit": [
                    {"where": {"job_title": {"matches": "(?i)\\b(vp|director|head|chief|c[ te]o)\\b"}}, "points": 20},
                    {"where": {"company_size": {"gte": 50}}, "points": 15},
                    {"where": {"email": {"endswith": ["gmail.com", "yahoo.com", "hotmail.com"]}}, "points": -20},
                ],
                "decay": {"every": "30d", "points": 10},
            },
            "qualify": {"mql": {"score": 50, "min_grade": "C"}, "sql": {"bant": "all"}, "disqualify": [{"grade": "F"}]},
            "handoff": {"owners": [], "assign": "round_robin", "sla": "2d"},
        }
    )


# ================================================================ loading and validation
#
# Everything below runs outside workflows (CLI, API, worker start-up).

FUNNEL_FILES = ("funnel.yaml", "funnel.yml")
SEGMENT_FILES = ("segments.yaml", "segments.yml")  # audiences, not campaigns: nurture.segments
_LOADER_FIELDS = ("version", "source_file")
_FILE = "(file)"  # the path shown for problems of the file as a whole

YamlPath = tuple[Union[str, int], ...]  # a location in the YAML: ("steps", 3, "wait_for", "event")


@dataclass(frozen=True)
class Problem:
    """One mistake in a file, at the line of the key or list item it is about."""

    file: str
    line: int
    path: str
    message: str  # a warning's message starts with "warning: "
    severity: str = "error"  # or "warning"

    def shown(self) -> str:
        """The line `campaign validate` prints: a warning's starts with `warning:`."""
        if self.severity != "warning":
            return str(self)
        return "warning: " + str(replace(self, message=self.message.removeprefix("warning: ")))

    def __str__(self) -> str:
        # The path is one word (a key written with spaces shows them as \x20), so tools can
        # split FILE:LINE: path: message; an empty path is the file itself.
        path = _one_line(self.path).replace(" ", "\\x20") or _FILE
        return f"{_one_line(self.file)}:{self.line}: {path}: {_one_line(self.message)}"


def _one_line(text: str) -> str:
    """A key or value may hold a newline or a control character: shown escaped, so that
    each problem stays exactly one line for the marketer and for tools reading them."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


class CampaignError(Exception):
    """Every problem found in the files asked for; str() gives one line per problem."""

    def __init__(self, problems: Sequence[Problem], message: str | None = None) -> None:
        self.problems = list(problems)
        self._message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        return self._message if self._message is not None else "\n".join(map(str, self.problems))


class UnknownCampaignError(CampaignError, KeyError):
    """No campaign has this `name:`; also a KeyError, as for any lookup by name."""

    def __str__(self) -> str:
        return CampaignError.__str__(self)


@dataclass
class _Source:
    """A parsed YAML file: plain data plus the line of every key and list item."""

    file: str
    data: Any
    lines: dict[YamlPath, int]
    version: str

    def line(self, path: YamlPath) -> int:
        """The line of `path`, else of its nearest parent the file has (a missing key: its mapping)."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1

    def problem(self, path: YamlPath, message: str, severity: str = "error") -> Problem:
        shown = ".".join(map(str, path)) or _FILE
        text = f"warning: {message}" if severity == "warning" else message
        return Problem(self.file, self.line(path), shown, text, severity)

    def get(self, *path: str | int) -> Any:
        """The raw value at `path`, or None when the file has nothing there."""
        value = self.data
        for key in path:
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and isinstance(key, int) and key < len(value):
                value = value[key]
            else:
                return None
        return value


# ---------------------------------------------------------------- YAML with lines


@functools.cache
def _yaml_loader() -> type:
    """PyYAML's SafeLoader with YAML 1.2 booleans: only true/false, so that a country
    code `NO` or a word like `on`/`yes` stays text instead of turning into a boolean."""
    class Loader(BoundedSafeLoader):  # aliases past a small budget are refused (nurture.yamlload)
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return Loader


class _TreeBuilder:
    """Turns a composed YAML node tree into plain data, noting the line of every key and
    list item, and reporting what PyYAML would silently accept (a key given twice)."""

    def __init__(self, loader: Any, file: str) -> None:
        self.loader = loader
        self.file = file
        self.lines: dict[YamlPath, int] = {}
        self.problems: list[Problem] = []
        self._building: set[int] = set()  # nodes on the current path: catches `&a [*a]`

    def build(self, node: Any, path: YamlPath = ()) -> Any:
        if id(node) in self._building:
            self._problem(node, path, "an alias refers to itself")
            return None
        self._building.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self._item(item, path + (index,)) for index, item in enumerate(node.value)]
            return self.loader.construct_object(node, deep=True)
        finally:
            self._building.discard(id(node))

    def _item(self, node: Any, path: YamlPath) -> Any:
        self.lines[path] = node.start_mark.line + 1
        return self.build(node, path)

    def _mapping(self, node: Any, path: YamlPath) -> dict[str, Any]:
        own_keys = {id(key) for key, _ in node.value}
        self.loader.flatten_mapping(node)  # applies `<<: *defaults` merges
        result: dict[str, Any] = {}
        first_key: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node, path, "keys must be plain names")
                continue
            key = key_node.value  # as written: `NO` or `1` stay the text the marketer typed
            if key in first_key and id(first_key[key]) in own_keys:
                first_line = first_key[key].start_mark.line + 1
                self._problem(key_node, path + (key,), f"key '{key}' is given twice (first at line {first_line})")
                continue
            first_key[key] = key_node  # a merged key may be overridden; a written one may not
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, path + (key,))
        return result

    def _problem(self, node: Any, path: YamlPath, message: str) -> None:
        shown = ".".join(map(str, path)) or _FILE
        self.problems.append(Problem(self.file, node.start_mark.line + 1, shown, message))


def _read_yaml(path: Path) -> tuple[_Source | None, list[Problem]]:
    """The file as data with lines, or None and the reason it cannot be read."""
    file = str(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        return None, [Problem(file, 1, _FILE, f"cannot read the file: {exc.strerror or exc}")]
    loader = None
    try:
        loader = _yaml_loader()(content)  # the reader itself rejects control characters
        builder = _TreeBuilder(loader, file)
        node = loader.get_single_node()
        data = builder.build(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        return None, [Problem(file, line, _FILE, f"invalid YAML: {_yaml_reason(exc)}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 1, _FILE, f"invalid YAML: {exc}")]
    finally:
        if loader is not None:
            loader.dispose()
    version = hashlib.sha256(content).hexdigest()[:12]
    return _Source(file, data, builder.lines, version), builder.problems


def _yaml_reason(exc: Any) -> str:
    """PyYAML's problem, then where the construct it was reading started."""
    reason = str(exc.problem or exc.context or "")
    if exc.context and exc.problem and exc.context_mark:
        reason += f" ({exc.context} started at line {exc.context_mark.line + 1})"
    if "'\\t'" in reason:
        reason += "; indent with spaces, not tabs"
    return reason


# ---------------------------------------------------------------- pydantic errors as problems

M = TypeVar("M", bound=BaseModel)

_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "text",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}
_PATTERN_HELP = {_CAMPAIGN_NAME: "use lower-case letters, digits, '-' and '_', like b2b-trial"}
_WHAT = {"stages": "stage", "days": "day", "min_grade": "grade", "auto_on": "trigger", "grades": "grade"}


def _validate(model: type[M], source: _Source) -> tuple[M | None, list[Problem]]:
    try:
        return model.model_validate(source.data), []
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            path = _yaml_path(error, source.data)
            problem = source.problem(path, _message(error, model, path))
            if problem not in problems:
                problems.append(problem)
        return None, problems


def _yaml_path(error: Any, data: Any) -> YamlPath:
    """pydantic's error location minus the labels it adds for union members ("SendStep"),
    so it names keys and list items of the YAML."""
    path: list[str | int] = []
    loc = error["loc"]
    for index, segment in enumerate(loc):
        if isinstance(data, dict) and segment in data:
            data = data[segment]
        elif isinstance(data, list) and isinstance(segment, int) and segment < len(data):
            data = data[segment]
        elif not (error["type"] == "missing" and index == len(loc) - 1):
            continue  # a union label or a dict key marker ("[key]"): not in the file
        path.append(segment)
    return tuple(path)


def _message(error: Any, model: type[BaseModel], path: YamlPath) -> str:
    kind, value, context = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_key_message(model, error["loc"])
    if kind == "missing":
        return "required, but missing"
    if kind == "step_kind":
        return _step_kind_message(value)
    if kind in ("value_error", "assertion_error"):
        return str(context.get("error", error["msg"]))
    if kind == "literal_error":
        what = next((_WHAT[str(p)] for p in reversed(path) if str(p) in _WHAT), "value")
        return _unknown(what, value, re.findall(r"'((?:[^'\\]|\\.)*)'", str(context.get("expected", ""))))
    if kind == "string_pattern_mismatch":
        help_text = _PATTERN_HELP.get(context.get("pattern"), f"must match {context.get('pattern')}")
        return f"{help_text}; got {_shown(value)}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {context.get(key)}, got {_shown(value)}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_shown(value)}"
    return str(error["msg"])


def _unknown_key_message(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    key = loc[-1]
    owner = _model_at(model, loc[:-1])
    if owner is None:
        return f"unknown key {_shown(key)}"
    kind = next((k for k, cls in STEP_KINDS.items() if cls is owner), None)
    if kind is not None and key in STEP_KINDS:
        return f"a step has one kind, but this one has both '{kind}' and '{key}': split it into two steps"
    keys = [field.alias or name for name, field in owner.model_fields.items() if name not in _LOADER_FIELDS]
    return _unknown("key", key, keys)


def _step_kind_message(value: Any) -> str:
    if not isinstance(value, dict):
        return f"expected a step like {{id: welcome, send: welcome}}, got {_shown(value)}"
    typo = next((key for key in value if key != "id" and _closest(key, STEP_KINDS)), None)
    if typo is not None:
        return f"{_STEP_KIND_HELP} (did you mean '{_closest(typo, STEP_KINDS)}' instead of '{typo}'?)"
    return _STEP_KIND_HELP


def _model_at(root: Any, loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model whose keys are at `loc` (pydantic's location, union labels included)."""
    current: Any = root
    for segment in loc:
        current = _child_type(current, segment)
        if current is None:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _child_type(annotation: Any, segment: Any) -> Any:
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = next((f for n, f in annotation.model_fields.items() if segment in (n, f.alias)), None)
        return field.annotation if field else None
    if origin is list and isinstance(segment, int):
        return get_args(annotation)[0]
    if origin is dict:
        return get_args(annotation)[1]
    if origin in _UNIONS:
        return _union_member(annotation, segment)
    return None


_UNIONS = (Union, types.UnionType)  # `Union[A, B]` and `A | B`


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional, which add no location segment of their own."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        members = [m for m in get_args(annotation) if m is not type(None)] if get_origin(annotation) in _UNIONS else []
        if len(members) == 1:
            annotation = members[0]
            continue
        return annotation


def _union_member(union: Any, label: Any) -> Any:
    """The member of a union that pydantic labels `label` in error locations."""
    for member in get_args(union):
        tags = [m.tag for m in getattr(member, "__metadata__", ()) if isinstance(m, Tag)]
        if label in tags or getattr(_unwrap(member), "__name__", None) == label:
            return member
    return None


# ---------------------------------------------------------------- checks that need the whole campaign


@dataclass(frozen=True)
class _Node:
    """A step as the graph checks see it, read from the raw data so they run even when
    other steps have errors."""

    index: int
    id: str
    kind: str | None
    raw: dict[str, Any]


_JUMP_KEYS = {"goto": ("goto",), "if": ("then", "else"), "wait_for": ("on_timeout",)}
_WAITING_KINDS = ("wait", "wait_for")


def _as_name(value: Any) -> str | None:
    """A name as the models read it (numbers become text), or None."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value)


def _nodes(steps: list[Any]) -> list[_Node]:
    nodes = []
    for index, raw in enumerate(steps):
        raw = raw if isinstance(raw, dict) else {}
        step_id = _as_name(raw.get("id")) if "id" in raw else default_step_id(index)
        kind = next((key for key in STEP_KINDS if key in raw), None)
        nodes.append(_Node(index, step_id or "", kind, raw))
    return nodes


def _edges(node: _Node, nodes: list[_Node], index_of: dict[str, int]) -> list[tuple[int, str | None]]:
    """Where a step can go next: (step index, the key of the jump or None for the next step).
    A jump to a missing step ends the journey, as the interpreter does."""
    edges: list[tuple[int, str | None]] = []
    always_jumps = node.kind == "goto" or (node.kind == "if" and node.raw.get("else") is not None)
    if not always_jumps and node.index + 1 < len(nodes):
        edges.append((node.index + 1, None))
    for key in _JUMP_KEYS.get(node.kind or "", ()):
        target = _as_name(node.raw.get(key))
        if target is not None and target in index_of:
            edges.append((index_of[target], key))
    return edges


def _step_problems(source: _Source, steps: list[Any]) -> list[Problem]:
    nodes = _nodes(steps)
    index_of: dict[str, int] = {}
    for node in nodes:
        index_of.setdefault(node.id, node.index)
    edges = {node.index: _edges(node, nodes, index_of) for node in nodes}
    return [
        *_duplicate_id_problems(source, nodes, index_of),
        *_target_problems(source, nodes, index_of),
        *_loop_problems(source, nodes, edges),
        *_unreachable_warnings(source, nodes, edges),
    ]


def _duplicate_id_problems(source: _Source, nodes: list[_Node], index_of: dict[str, int]) -> list[Problem]:
    problems = []
    for node in nodes:
        first = index_of[node.id]
        if first != node.index and node.id:
            path: YamlPath = ("steps", node.index, "id") if "id" in node.raw else ("steps", node.index)
            line = source.line(("steps", first))
            problems.append(source.problem(path, f"duplicate step id '{node.id}' (also the step at line {line})"))
    return problems


def _target_problems(source: _Source, nodes: list[_Node], index_of: dict[str, int]) -> list[Problem]:
    """Jumps must land on a step; `wait_for.step` and `if.step` must name a send step."""
    problems = []
    ids = list(index_of)
    for node in nodes:
        for key in _JUMP_KEYS.get(node.kind or "", ()):
            target = _as_name(node.raw.get(key))
            if target is not None and target not in index_of:
                problems.append(source.problem(("steps", node.index, key), _unknown("step id", target, ids)))
        for parent in ("wait_for", "if"):
            condition = node.raw.get(parent) if node.kind == parent else None
            target = _as_name(condition.get("step")) if isinstance(condition, dict) else None
            if target is None:
                continue
            path = ("steps", node.index, parent, "step")
            if target not in index_of:
                problems.append(source.problem(path, _unknown("step id", target, ids)))
            elif (kind := nodes[index_of[target]].kind) not in ("send", None):  # no kind: already an error
                message = f"step '{target}' is a {kind} step: only a send step's email can be opened or clicked"
                problems.append(source.problem(path, message))
    return problems


def _loop_problems(
    source: _Source, nodes: list[_Node], edges: dict[int, list[tuple[int, str | None]]]
) -> list[Problem]:
    """A cycle of steps none of which waits would make a lead's workflow spin forever."""
    spinning = {node.index for node in nodes if node.kind not in _WAITING_KINDS}
    state: dict[int, str] = {}
    stack: list[int] = []
    problems: list[Problem] = []

    def visit(index: int) -> None:
        state[index] = "open"
        stack.append(index)
        for target, key in edges[index]:
            if target not in spinning:
                continue
            if state.get(target) == "open":
                problems.append(_loop_problem(source, nodes, stack[stack.index(target) :], index, key))
            elif target not in state:
                visit(target)
        stack.pop()
        state[index] = "done"

    for index in sorted(spinning):
        if index not in state:
            visit(index)
    return problems


def _loop_problem(source: _Source, nodes: list[_Node], cycle: list[int], last: int, key: str | None) -> Problem:
    names = " -> ".join(nodes[i].id for i in [*cycle, cycle[0]])
    path: YamlPath = ("steps", last, key) if key else ("steps", last)
    return source.problem(path, f"steps loop forever without a wait: {names} (add a wait or wait_for inside the loop)")


def _unreachable_warnings(
    source: _Source, nodes: list[_Node], edges: dict[int, list[tuple[int, str | None]]]
) -> list[Problem]:
    reached = {0} if nodes else set()
    todo = list(reached)
    while todo:
        for target, _ in edges[todo.pop()]:
            if target not in reached:
                reached.add(target)
                todo.append(target)
    message = "step '{}' is never reached: the step before it always jumps away and nothing jumps to it"
    return [
        source.problem(("steps", node.index), message.format(node.id), "warning")
        for node in nodes
        if node.index not in reached
    ]


def _zone_problem(source: _Source, path: YamlPath, name: Any, allow_lead: bool) -> list[Problem]:
    if not isinstance(name, str) or (allow_lead and name == "lead"):
        return []
    try:
        zoneinfo.ZoneInfo(name)
        return []
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    hint = _closest(name, zoneinfo.available_timezones())
    tail = f"did you mean '{hint}'?" if hint else "use an IANA name like Europe/Paris"
    lead = "'lead' or " if allow_lead else ""
    return [source.problem(path, f"unknown time zone {_shown(name)} ({tail}); expected {lead}an IANA time zone")]


def _send_window_problems(source: _Source) -> list[Problem]:
    return [
        *_zone_problem(source, ("send_window", "timezone"), source.get("send_window", "timezone"), True),
        *_zone_problem(source, ("send_window", "default_timezone"), source.get("send_window", "default_timezone"), False),
        *_overnight_warnings(source),
    ]


def _overnight_warnings(source: _Source) -> list[Problem]:
    """`17:30-09:00` is a valid overnight window, but more often two times swapped."""
    hours = source.get("send_window", "hours")
    match = _HOURS_RE.match(hours) if isinstance(hours, str) else None
    start, end = (_minute(match[1], match[2]), _minute(match[3], match[4])) if match else (None, None)
    if start is None or end is None or start <= end:
        return []
    message = (
        f"'{hours.strip()}' runs overnight: emails go out from {match[1]}:{match[2]} to midnight and from midnight"
        f" to {match[3]}:{match[4]} (write the earlier time first for a daytime window)"
    )
    return [source.problem(("send_window", "hours"), message, "warning")]


def _empty_condition_problems(source: _Source, paths: Iterable[YamlPath]) -> list[Problem]:
    """An empty condition always holds: almost surely its keys went missing."""
    message = "empty condition, which always holds: give at least one of temperature, stage, score, grade, event, step, attribute"
    return [source.problem(path, message) for path in paths if source.get(*path) == {}]


def _event_warnings(source: _Source, paths: Iterable[tuple[YamlPath, Any]]) -> list[Problem]:
    """A lower-case name is a valid custom event, but one letter off a built-in is a typo."""
    problems = []
    for path, name in paths:
        if isinstance(name, str) and _EVENT_NAME_RE.match(name) and name not in EVENT_TYPES:
            hint = _closest(name, EVENT_TYPES)
            if hint:
                message = f"'{name}' is not a built-in event (did you mean '{hint}'?); only custom events of that name will match"
                problems.append(source.problem(path, message, "warning"))
    return problems


def _bare_duration_warnings(source: _Source, paths: Iterable[YamlPath]) -> list[Problem]:
    """`wait: 2` is 2 seconds: almost never what a marketer meant."""
    problems = []
    for path in paths:
        value = source.get(*path)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:  # else an error
            message = f"{value} means {value} seconds; write '{value}s' if you mean it, or e.g. '{value}d' for days"
            problems.append(source.problem(path, message, "warning"))
    return problems


def _subject_items(steps: list[Any]) -> list[tuple[YamlPath, str]]:
    """Each subject variant of the send steps, with its place in the YAML."""
    items: list[tuple[YamlPath, str]] = []
    for index, step in enumerate(steps):
        subjects = step.get("subject") if isinstance(step, dict) and "send" in step else None
        if isinstance(subjects, str):
            items.append((("steps", index, "subject"), subjects))
        elif isinstance(subjects, list):
            items += [(("steps", index, "subject", i), s) for i, s in enumerate(subjects) if isinstance(s, str)]
    return items


def _subject_problems(source: _Source, steps: list[Any]) -> list[Problem]:
    """A/B subjects are templates too: a syntax error must not wait for the first send."""
    problems = []
    for path, subject in _subject_items(steps):
        error = subject_syntax_error(subject)
        if error is not None:
            problems.append(source.problem(path, f"subject template: {error[1]}"))
    return problems


def _subject_render_problems(source: _Source, steps: list[Any], templates_dir: Path) -> list[Problem]:
    """Each variant rendered as at send time for the sample leads, at the variant's line
    (syntax errors are _subject_problems')."""
    problems = []
    for path, subject in _subject_items(steps):
        if subject_syntax_error(subject) is None:
            for found in check_subject(templates_dir, subject):
                problems.append(source.problem(path, f"subject template: {found.message}", found.severity))
    return problems


def _campaign_problems(source: _Source) -> list[Problem]:
    steps = source.get("steps")
    steps = steps if isinstance(steps, list) else []
    events = [(("steps", i, "wait_for", "event"), source.get("steps", i, "wait_for", "event")) for i in range(len(steps))]
    events += [(("steps", i, "if", "event"), source.get("steps", i, "if", "event")) for i in range(len(steps))]
    triggers = source.get("enroll", "auto_on")
    events += [(("enroll", "auto_on", i, "event"), source.get("enroll", "auto_on", i, "event"))
               for i in range(len(triggers) if isinstance(triggers, list) else 0)]
    durations = [("frequency_cap", "per")] + [("steps", i, key) for i in range(len(steps)) for key in ("wait", "timeout")]
    exit_when = source.get("exit_when")
    conditions = [("steps", i, "if") for i in range(len(steps))]
    conditions += [("exit_when", i) for i in range(len(exit_when) if isinstance(exit_when, list) else 0)]
    goal = source.get("goal")
    conditions += [("goal", i) for i in range(len(goal) if isinstance(goal, list) else 0)]
    return [
        *_loader_field_problems(source),
        *_step_problems(source, steps),
        *_empty_condition_problems(source, conditions),
        *_send_window_problems(source),
        *_event_warnings(source, events),
        *_bare_duration_warnings(source, durations),
        *_subject_problems(source, steps),
    ]


def _loader_field_problems(source: _Source) -> list[Problem]:
    return [
        source.problem((key,), f"unknown key '{key}' (nurture fills it in from the file)")
        for key in _LOADER_FIELDS
        if key in source.data
    ]


# ---------------------------------------------------------------- checks that need the whole funnel


def _funnel_problems(source: _Source) -> list[Problem]:
    events = source.get("scoring", "events")
    events = events if isinstance(events, dict) else {}
    disqualify = source.get("qualify", "disqualify")
    conditions = [("qualify", "disqualify", i) for i in range(len(disqualify) if isinstance(disqualify, list) else 0)]
    return [
        *_loader_field_problems(source),
        *_empty_condition_problems(source, conditions),
        *_event_warnings(source, ((("scoring", "events", name), name) for name in events)),
        *_shadowed_rule_warnings(source, events),
        *_bare_duration_warnings(source, [("scoring", "decay", "every"), ("handoff", "sla")]),
    ]


def _shadowed_rule_warnings(source: _Source, events: dict[str, Any]) -> list[Problem]:
    """The first matching rule wins: rules after one without `where` never score."""
    problems = []
    for name, rules in events.items():
        if not isinstance(rules, list):
            continue
        catch_all = next((i for i, rule in enumerate(rules) if isinstance(rule, dict) and "where" not in rule), None)
        if catch_all is None:
            continue
        line = source.line(("scoring", "events", name, catch_all))
        for index in range(catch_all + 1, len(rules)):
            message = f"this rule never scores: the rule at line {line} has no `where` and matches every {name} first"
            problems.append(source.problem(("scoring", "events", name, index), message, "warning"))
    return problems


# ---------------------------------------------------------------- templates


def _template_problems(source: _Source, path: YamlPath, name: Any, templates_dir: Path,
                       sender: dict[str, Any], *, marketing: bool = True) -> list[Problem]:
    """Problems of the email `name` (both files, syntax, a render for a sample lead, and
    the content checks of nurture.lint), as problems of the YAML line that names it;
    content problems are at their template's FILE:LINE. `sender`: as templates see it."""
    from nurture.lint import lint_email

    if not isinstance(name, str):
        return []
    missing = [f"{name}{ext}" for ext in (".html", ".txt") if not (templates_dir / f"{name}{ext}").is_file()]
    if missing == [f"{name}.txt"]:
        return [source.problem(path, f"email '{name}' has no plain-text part: no {name}.txt in {templates_dir} "
                                     "(its first line is `Subject: ...`, then the text)")]
    if missing:
        return [source.problem(path, f"email '{name}' not found: no {' and no '.join(missing)} in {templates_dir}")]
    # Owner: the handoff email goes to the lead's new owner, so it always has one.
    checked = check_template(templates_dir, name, owner_always_set=not marketing,
                             sender={**sender, "address": sender["address"] or ""})
    findings = lint_email(templates_dir, name, sender, marketing=marketing)
    partials = {(f.file, f.line) for f in findings if f.partial}
    problems = []
    for template_file, line, message in checked:
        if (template_file, line) in partials:
            continue  # a missing partial: said once, below
        where = f"template {template_file} line {line}" if line > 0 else f"template {template_file}"
        problems.append(source.problem(path, f"{where}: {message}"))
    shown = ".".join(map(str, path))
    for found in findings:
        text = f"warning: {found.message}" if found.severity == "warning" else found.message
        problems.append(Problem(str(templates_dir / found.file), found.line, shown, text, found.severity))
    return problems


def _funnel_address(campaign_file: Path, funnel_file: Path | None) -> str | None:
    """`sender.address` of the funnel.yaml beside a campaign file (in the campaigns folder,
    the one its sends read), else of `funnel_file` (the folder's funnel for a campaign
    kept elsewhere, e.g. one being tried with `campaign test`)."""
    beside = [campaign_file.parent / name for name in FUNNEL_FILES]
    for path in [*beside, *([funnel_file] if funnel_file is not None else [])]:
        if path.is_file():
            checked = _check_funnel(path)
            return checked.model.sender.address if checked.model is not None else None
    return None


def _campaign_sender(source: _Source, campaign_file: Path, funnel_file: Path | None) -> dict[str, Any]:
    """`sender` as this campaign's templates see it, from the file as written."""
    own = source.get("sender", "address")
    address = own.strip() if isinstance(own, str) and own.strip() else _funnel_address(campaign_file, funnel_file)
    from_, reply_to = source.get("sender", "from"), source.get("sender", "reply_to")
    return sender_context(from_ if isinstance(from_, str) else "", reply_to if isinstance(reply_to, str) else None,
                          address)


def _campaign_template_problems(source: _Source, campaign_file: Path, templates_dir: Path,
                                funnel_file: Path | None) -> list[Problem]:
    steps = source.get("steps")
    sender = _campaign_sender(source, campaign_file, funnel_file)
    problems = []
    sends = [(index, step) for index, step in enumerate(steps if isinstance(steps, list) else [])
             if isinstance(step, dict) and "send" in step]
    if sends and not sender["address"]:
        problems.append(source.problem(("sender",), "no postal address for this campaign's marketing email "
                                                    "(CAN-SPAM): set `sender: {address: ...}` in funnel.yaml "
                                                    "(all campaigns) or in this campaign's sender"))
    for index, step in sends:
        problems += _template_problems(source, ("steps", index, "send"), step["send"], templates_dir, sender)
    return problems + _subject_render_problems(source, steps if isinstance(steps, list) else [], templates_dir)


def _funnel_template_problems(source: _Source, funnel: Funnel | None, templates_dir: Path) -> list[Problem]:
    name = funnel.handoff.notify.template if funnel else source.get("handoff", "notify", "template")
    address = funnel.sender.address if funnel else None
    # Mail to the sales owner, not marketing: no unsubscribe link, no postal address required.
    sender = sender_context("nurture <nurture@localhost>", None, address)
    problems = _template_problems(source, ("handoff", "notify", "template"), name, templates_dir, sender,
                                  marketing=False)
    alert = funnel.qualify.mql.notify if funnel else None
    if alert is not None:  # internal mail too: to marketing, about the lead
        problems += _template_problems(source, ("qualify", "mql", "notify", "template"), alert.template,
                                       templates_dir, sender, marketing=False)
    return problems


# ---------------------------------------------------------------- one file


@dataclass
class _Checked:
    """The outcome of checking one file: its model when valid, and every problem."""

    file: Path
    source: _Source | None
    model: Any
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def name(self) -> str | None:
        """The campaign's `name:` as written, even when the file has other errors."""
        return _as_name(self.source.get("name")) if self.source else None


# Files already checked, by path and stat: pages and the API look campaigns up per request.
_CAMPAIGNS_CHECKED: StatCache[_Checked] = StatCache()
_FUNNELS_CHECKED: StatCache[_Checked] = StatCache()


def _check_campaign(path: Path) -> _Checked:
    return _CAMPAIGNS_CHECKED.get(path, _check_campaign_file)


def _check_funnel(path: Path) -> _Checked:
    return _FUNNELS_CHECKED.get(path, _check_funnel_file)


def _check_campaign_file(path: Path) -> _Checked:
    source, problems = _read_yaml(path)
    if source is None:
        return _Checked(path, None, None, problems)
    if not isinstance(source.data, dict):
        what = "is empty" if source.data is None else f"holds {_shown(source.data)}"
        problems.append(source.problem((), f"the file {what}: expected a campaign with name, sender and steps"))
        return _Checked(path, source, None, problems)
    problems += _campaign_problems(source)
    campaign, errors = _validate(Campaign, source)
    if campaign is not None:
        campaign = campaign.model_copy(update={"version": source.version, "source_file": str(path)})
    return _Checked(path, source, campaign, _by_line(problems + errors))


def _check_funnel_file(path: Path) -> _Checked:
    source, problems = _read_yaml(path)
    if source is None:
        return _Checked(path, None, None, problems)
    if source.data is None:
        source.data = {}  # an empty funnel.yaml: every default
    if not isinstance(source.data, dict):
        problems.append(source.problem((), f"the file holds {_shown(source.data)}: expected scoring, qualify, handoff"))
        return _Checked(path, source, None, problems)
    problems += _funnel_problems(source)
    funnel, errors = _validate(Funnel, source)
    if funnel is not None:
        funnel = funnel.model_copy(update={"version": source.version, "source_file": str(path)})
    return _Checked(path, source, funnel, _by_line(problems + errors))


def _by_line(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line)


def _raise_errors(problems: Iterable[Problem]) -> None:
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise CampaignError(errors)


def _campaign_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise CampaignError([Problem(str(directory), 1, _FILE, "no such directory")])
    files = [p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
    return sorted(p for p in files if p.name not in FUNNEL_FILES + SEGMENT_FILES)


def _duplicate_name_problems(checked: Iterable[_Checked]) -> list[Problem]:
    """Campaigns are enrolled by `name:`: two files with one name would be a coin toss."""
    first: dict[str, _Checked] = {}
    problems = []
    for item in checked:
        name = item.name
        if name is None or item.source is None:
            continue
        if name in first:
            message = f"campaign name '{name}' is already used by {first[name].file}"
            problems.append(item.source.problem(("name",), message))
        else:
            first[name] = item
    return problems


# ---------------------------------------------------------------- public API


def load_campaign(path: Path) -> Campaign:
    """The campaign in `path`, with `version` (a hash of the file) and `source_file` set.
    Raises CampaignError with every error of the file; warnings do not stop loading."""
    checked = _check_campaign(Path(path))
    _raise_errors(checked.problems)
    campaign: Campaign = checked.model
    return campaign


def load_funnel(path: Path | None) -> Funnel:
    """The funnel in `path`; the built-in defaults when there is no such file."""
    if path is None or not Path(path).exists():
        return default_funnel()
    checked = _check_funnel(Path(path))
    _raise_errors(checked.problems)
    funnel: Funnel = checked.model
    return funnel


def load_campaigns(directory: Path) -> list[Campaign]:
    """Every campaign of `directory` (all YAML files but funnel.yaml and segments.yaml), sorted by name.
    Raises CampaignError with the errors of all files, including names used twice."""
    checked = [_check_campaign(path) for path in _campaign_files(Path(directory))]
    problems = [p for item in checked for p in item.errors] + _duplicate_name_problems(checked)
    _raise_errors(problems)
    return sorted((item.model for item in checked), key=lambda campaign: campaign.name)


def load_campaign_files(directory: Path) -> tuple[list[Campaign], dict[Path, CampaignError]]:
    """The valid campaigns of `directory` and the errors of each file that is not (a name
    used twice counts against the later file): one broken file leaves the others usable."""
    checked = [_check_campaign(path) for path in _campaign_files(Path(directory))]
    problems: dict[str, list[Problem]] = {}
    for problem in [p for item in checked for p in item.errors] + _duplicate_name_problems(checked):
        problems.setdefault(problem.file, []).append(problem)
    errors = {item.file: CampaignError(problems[str(item.file)]) for item in checked if str(item.file) in problems}
    valid = [item.model for item in checked if item.file not in errors]
    return sorted(valid, key=lambda campaign: campaign.name), errors


def find_campaign(directory: Path, name: str) -> Campaign:
    """The campaign whose `name:` is `name`. Other files' errors do not stand in the way;
    this one's do (CampaignError). Unknown name: UnknownCampaignError (a KeyError too)."""
    checked = [_check_campaign(path) for path in _campaign_files(Path(directory))]
    matches = [item for item in checked if item.name == name]
    if not matches:
        known = sorted({item.name for item in checked if item.name is not None})
        raise UnknownCampaignError([], f"unknown campaign '{name}' (known: {', '.join(known) or 'none'})")
    _raise_errors([p for item in matches for p in item.problems] + _duplicate_name_problems(matches))
    campaign: Campaign = matches[0].model
    return campaign


def validate_paths(paths: Sequence[Path], templates_dir: Path | None, funnel_file: Path | None = None) -> list[Problem]:
    """Every problem (errors and warnings) of the given files and directories; funnel.yaml
    is checked as the funnel, segments.yaml as the segments, the rest as campaigns. With
    `templates_dir`, every email named must exist there, render for a sample lead and pass
    nurture.lint. `funnel_file`: the funnel whose `sender.address` a campaign with no
    funnel.yaml beside it uses."""
    # Imported here: nurture.segments builds on this module.
    from nurture.segments import campaign_name_warnings, check_segments

    problems: list[Problem] = []
    campaigns: list[_Checked] = []
    segments: list[_Checked] = []
    for path in _expand(paths, problems):
        if path.name in SEGMENT_FILES:
            segments.append(check_segments(path))
            problems += segments[-1].problems
            continue
        is_funnel = path.name in FUNNEL_FILES
        checked = _check_funnel(path) if is_funnel else _check_campaign(path)
        problems += checked.problems
        if not is_funnel:
            campaigns.append(checked)
        if templates_dir is not None and checked.source is not None and isinstance(checked.source.data, dict):
            if is_funnel:
                problems += _funnel_template_problems(checked.source, checked.model, Path(templates_dir))
            else:
                problems += _campaign_template_problems(checked.source, path, Path(templates_dir), funnel_file)
    names = [item.name for item in campaigns if item.name is not None]
    problems += [problem for item in segments for problem in campaign_name_warnings(item, names)]
    problems += _segment_name_problems(campaigns, segments)
    return _distinct(problems + _duplicate_name_problems(campaigns))


def _segment_name_problems(campaigns: list[_Checked], segments: list[_Checked]) -> list[Problem]:
    """`enroll.segment` must name a segment of the segments.yaml checked with the campaigns
    (or of the campaign's own folder): a typo would let no lead in."""
    from nurture.segments import segments_file

    problems = []
    for item in campaigns:
        name = item.source.get("enroll", "segment") if item.source is not None else None
        if not isinstance(name, str):
            continue
        files = [s for s in segments if Path(s.file).parent == Path(item.file).parent]
        if not files and segments_file(Path(item.file).parent) is not None:
            from nurture.segments import check_segments

            files = [check_segments(segments_file(Path(item.file).parent))]  # type: ignore[arg-type]
        known = sorted(files[0].source.get("segments") or {}) if files and files[0].source is not None else []
        if name not in known:
            where = f"segments in {files[0].file}" if files else "segments (there is no segments.yaml beside it)"
            problems.append(item.source.problem(("enroll", "segment"), _unknown("segment", name, known) if known
                                                else f"unknown segment '{name}': no {where}"))
    return problems


def _distinct(problems: list[Problem]) -> list[Problem]:
    """A template two campaigns send is reported once per place in it."""
    seen: set[tuple[str, int, str]] = set()
    kept = []
    for problem in problems:
        key = (problem.file, problem.line, problem.message)
        if key not in seen:
            seen.add(key)
            kept.append(problem)
    return kept


def _expand(paths: Sequence[Path], problems: list[Problem]) -> list[Path]:
    """Files as given, directories as their YAML files; a path that is neither is a problem."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                problems.append(Problem(str(path), 1, _FILE, "warning: no .yaml files in this directory", "warning"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), 1, _FILE, "no such file or directory"))
    return files


def campaign_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a campaign file, for editors: the fields the loader
    fills in are left out, and a step's `id` is optional (the loader numbers steps)."""
    schema = _editor_schema(
        Campaign, "nurture campaign",
        "One campaign of nurture: campaigns/NAME.yaml (funnel.yaml is the funnel, not a campaign)",
    )
    for step_cls in STEP_KINDS.values():
        definition = schema["$defs"][step_cls.__name__]
        definition["required"] = [key for key in definition["required"] if key != "id"]
    return schema


def funnel_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of campaigns/funnel.yaml, for editors; every key is
    optional (the built-in defaults fill it in)."""
    return _editor_schema(Funnel, "nurture funnel",
                          "The funnel model of nurture: campaigns/funnel.yaml (scoring, qualify, handoff)")


def _editor_schema(model: type[BaseModel], title: str, description: str) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    for name in _LOADER_FIELDS:
        schema["properties"].pop(name, None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": title,
            "description": description}
