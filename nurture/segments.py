"""Segments: named audiences in `campaigns/segments.yaml` (contract section 8).

The same validation as campaigns (nurture.campaign's YAML reader with lines, its
message helpers and its FILE:LINE: dotted.path: message problems). A segment is
evaluated in SQL by nurture.segments_sql, never by loading leads into Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, field_validator, model_validator

from nurture.campaign import (
    _CAMPAIGN_NAME,
    _FILE,
    SCORE_OPERATORS,
    CampaignError,
    Duration,
    EventName,
    GradeNames,
    SEGMENT_FILES,
    Problem,
    StageNames,
    TemperatureNames,
    WhereTest,
    YamlPath,
    _bare_duration_warnings,
    _by_line,
    _Checked,
    _event_warnings,
    _names_check,
    _names_schema,
    _raise_errors,
    _read_yaml,
    _shown,
    _Strict,
    _unknown,
    _validate,
    format_duration,
)
from nurture.yamlload import StatCache

STATUSES = ("subscribed", "unsubscribed", "bounced", "complained")
# What a segment's `where` looks at (the lead's own fields; attributes as attributes.KEY),
# and what a `did` / `not_did` where looks at (the fields an event carries).
LEAD_FIELDS = ("email", "first_name", "last_name", "company", "job_title", "company_size",
               "country", "timezone", "locale", "source")
EVENT_FIELDS = ("url", "asset", "form", "event", "step", "campaign")
ATTRIBUTES = "attributes."


def _field_name(allowed: tuple[str, ...], what: str, attributes: bool) -> Any:
    def check(name: str) -> str:
        if name in allowed:
            return name
        if attributes and name.startswith(ATTRIBUTES) and all(name[len(ATTRIBUTES):].split(".")):
            return name
        tail = "; an attribute is attributes.KEY" if attributes else ""
        raise ValueError(_unknown(what, name, allowed) + tail)

    return check


LeadWhere = dict[Annotated[str, AfterValidator(_field_name(LEAD_FIELDS, "lead field", True))], WhereTest]
EventWhere = dict[Annotated[str, AfterValidator(_field_name(EVENT_FIELDS, "event field", False))], WhereTest]
StatusNames = Annotated[
    Union[str, list[str]], BeforeValidator(_names_check(STATUSES, "status")), WithJsonSchema(_names_schema(STATUSES))
]
CampaignName = Annotated[str, Field(pattern=_CAMPAIGN_NAME)]


def _score_test(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"expected a test like {{gte: 30}}, got {_shown(value)}")
    for operator in value:
        if operator not in SCORE_OPERATORS:
            raise ValueError(_unknown("score operator", operator, SCORE_OPERATORS))
    return value


ScoreTest = Annotated[dict[str, Union[int, float]], BeforeValidator(_score_test)]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, (str, dict)) else value


class Behaviour(_Strict):
    """`did` / `not_did`: an event of this type (whose fields match `where`) within the last `within`."""

    event: EventName
    where: EventWhere | None = None
    within: Duration | None = None


Behaviours = Annotated[list[Behaviour], BeforeValidator(_one_or_many), Field(min_length=1)]
CampaignNames = Annotated[list[CampaignName], BeforeValidator(_one_or_many), Field(min_length=1)]


class CampaignTest(_Strict):
    """`{in: NAME}`: in that campaign now; `{completed: NAME}`: went through its last step."""

    in_: CampaignNames | None = Field(default=None, alias="in")
    completed: CampaignNames | None = None

    @model_validator(mode="after")
    def _some_test(self) -> CampaignTest:
        if self.in_ is None and self.completed is None:
            raise ValueError("give in: NAME (in that campaign now) or completed: NAME (went through it)")
        return self


class Segment(_Strict):
    """Every key given must hold; lists of names are ORed, `did` / `not_did` lists ANDed."""

    where: LeadWhere | None = None
    stage: StageNames | None = None
    grade: GradeNames | None = None
    temperature: TemperatureNames | None = None
    status: StatusNames | None = None
    score: ScoreTest | None = None
    campaign: CampaignTest | None = None
    did: Behaviours | None = None
    not_did: Behaviours | None = None
    name: str = ""  # filled by the loader from the key


class SegmentsFile(_Strict):
    segments: dict[CampaignName, Segment] = {}

    @field_validator("segments", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        return {} if value is None else value


def describe(segment: Segment) -> dict[str, Any]:
    """The segment's conditions as written (durations as 14d), for list/show."""
    data = segment.model_dump(mode="python", by_alias=True, exclude_none=True, exclude={"name"})
    for key in ("did", "not_did"):
        for behaviour in data.get(key, []):
            if "within" in behaviour:
                behaviour["within"] = format_duration(behaviour["within"])
    return data


def names(value: str | list[str] | None) -> list[str]:
    """A one-or-many names condition as a list."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class Segments:
    """The segments in force, by name, and the file they came from (None: no file)."""

    by_name: dict[str, Segment]
    file: Path | None
    directory: Path

    def find(self, name: str) -> Segment:
        segment = self.by_name.get(name)
        if segment is None:
            if not self.by_name:
                where = f"{self.file} defines none" if self.file is not None else f"{self.directory}/segments.yaml does not exist"
                raise UnknownSegmentError(f"unknown segment '{name}' (no segments: {where})")
            raise UnknownSegmentError(_unknown("segment", name, sorted(self.by_name)))
        return segment


class UnknownSegmentError(CampaignError, KeyError):
    def __init__(self, message: str) -> None:
        super().__init__([], message)

    def __str__(self) -> str:
        return CampaignError.__str__(self)


_CHECKED: StatCache[_Checked] = StatCache()


def check_segments(path: Path) -> _Checked:
    """The file's problems and, when it has no error, its SegmentsFile (cached by stat)."""
    return _CHECKED.get(Path(path), _check_file)


def _check_file(path: Path) -> _Checked:
    source, problems = _read_yaml(path)
    if source is None:
        return _Checked(path, None, None, problems)
    if source.data is None:
        source.data = {}
    if not isinstance(source.data, dict):
        problems.append(source.problem((), f"the file holds {_shown(source.data)}: expected segments: NAME: conditions"))
        return _Checked(path, source, None, problems)
    problems += _warnings(source)
    model, errors = _validate(SegmentsFile, source)
    return _Checked(path, source, model, _by_line(problems + errors))


def _behaviour_paths(source: Any) -> Iterable[YamlPath]:
    segments = source.get("segments")
    for name, segment in (segments.items() if isinstance(segments, dict) else ()):
        for key in ("did", "not_did"):
            value = segment.get(key) if isinstance(segment, dict) else None
            if isinstance(value, dict):
                yield ("segments", name, key)
            elif isinstance(value, list):
                yield from (("segments", name, key, index) for index in range(len(value)))


def _warnings(source: Any) -> list[Problem]:
    paths = list(_behaviour_paths(source))
    return [*_event_warnings(source, ((path + ("event",), source.get(*path, "event")) for path in paths)),
            *_bare_duration_warnings(source, (path + ("within",) for path in paths))]


def campaign_name_warnings(checked: _Checked, campaigns: Iterable[str]) -> list[Problem]:
    """`campaign: {in: NAME}` or `{completed: NAME}` naming no campaign of the folder: a
    typo matches no lead, silently. A warning (a campaign may be added later)."""
    known = sorted(set(campaigns))
    if checked.source is None or not known or not isinstance(checked.source.get("segments"), dict):
        return []
    problems = []
    for name, segment in checked.source.get("segments").items():
        test = segment.get("campaign") if isinstance(segment, dict) else None
        for key in ("in", "completed"):
            value = test.get(key) if isinstance(test, dict) else None
            for index, campaign in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(campaign, str) and campaign not in known:
                    path = ("segments", name, "campaign", key) + ((index,) if isinstance(value, list) else ())
                    problems.append(checked.source.problem(path, _unknown("campaign", campaign, known)
                                                           + ": it matches no lead", "warning"))
    return problems


def segments_file(directory: Path) -> Path | None:
    for name in SEGMENT_FILES:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def load_segments(directory: Path) -> Segments:
    """The segments of `campaigns/segments.yaml` (none without the file); CampaignError
    with every error of the file."""
    path = segments_file(directory)
    if path is None:
        return Segments({}, None, Path(directory))
    checked = check_segments(path)
    _raise_errors(checked.problems)
    if checked.model is None:  # unreadable: _raise_errors has said why
        raise CampaignError([Problem(str(path), 1, _FILE, "cannot read the file")])
    return Segments({name: segment.model_copy(update={"name": name})
                     for name, segment in checked.model.segments.items()}, path, Path(directory))


def find_segment(directory: Path, name: str) -> Segment:
    return load_segments(directory).find(name)
