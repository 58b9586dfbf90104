"""A segment as one SQL condition on the lead table (SQLAlchemy Core), for SQLite and
PostgreSQL: the database finds the leads, none is loaded into Python to be tested.

It reads values as nurture.rules does (tests/test_segments.py compares both on random
leads): a blank or absent field fails every test but `exists: false`; equality is
case-insensitive and numeric when both sides are numbers ("50" == 50); a list-valued
attribute matches when any item does. The value readers are SQL functions named
`nurture_*`: on SQLite the Python functions of nurture.values (registered by
nurture.db), on PostgreSQL their equivalents created by migration 0009.
Behaviour (`did` / `not_did`) is an EXISTS on the event table's (lead_key, type, at)
index; `campaign: {completed: ...}` one on the history's lead_key index.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, case, cast, exists, false, func, literal, literal_column, not_, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from nurture.campaign import Campaign
from nurture.journey import NO_MARKETING_STAGES
from nurture.models import BulkEnrollment, CampaignEnrollment, Event, Lead
from nurture.segments import ATTRIBUTES, LEAD_FIELDS, Behaviour, Segment, names
from nurture.values import as_bool, as_number

LEADS = Lead.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]
ENROLLMENTS = CampaignEnrollment.__table__  # type: ignore[attr-defined]
BULK = BulkEnrollment.__table__  # type: ignore[attr-defined]
ORDERINGS = {"gte": "__ge__", "lte": "__le__", "gt": "__gt__", "lt": "__lt__", "eq": "__eq__"}
Condition = ColumnElement[bool]


def segment_condition(segment: Segment, *, dialect: str, now: datetime) -> Condition:
    """Leads (with an address: forgotten leads are in no audience) matching every key of the segment."""
    sql = _Dialect(dialect)
    parts: list[Condition] = [LEADS.c.email.is_not(None)]
    if segment.where:
        parts.append(lead_where(segment.where, dialect=dialect))
    for column, given, spelled in ((LEADS.c.stage, segment.stage, str.lower), (LEADS.c.grade, segment.grade, str.upper),
                                   (LEADS.c.status, segment.status, str.lower),
                                   (LEADS.c.temperature, segment.temperature, str.lower)):
        if given is not None:  # the columns `lead list --stage/--grade/...` filter on
            parts.append(column.in_(sorted({spelled(name) for name in names(given)})))
    for operator, number in (segment.score or {}).items():
        parts.append(getattr(LEADS.c.score, ORDERINGS[operator])(number))
    if segment.campaign is not None:
        if segment.campaign.in_:
            parts.append(LEADS.c.campaign.in_(segment.campaign.in_))
        if segment.campaign.completed:
            parts.append(completed_campaign(segment.campaign.completed))
    parts += [_did(sql, behaviour, now) for behaviour in segment.did or ()]
    parts += [not_(_did(sql, behaviour, now)) for behaviour in segment.not_did or ()]
    return and_(*parts)


def lead_where(where: dict[str, Any], *, dialect: str) -> Condition:
    """A `where` on the lead's fields (a campaign's enroll.where), as rules.match_where on its profile."""
    sql = _Dialect(dialect)
    return where_condition(where, lambda field: _lead_value(sql, field))


def enroll_skip(campaign: Campaign, *, dialect: str, run_id: int | None) -> Any:
    """Why a lead of the segment would not enter `campaign` (as the workflow's own
    refusals, in their order), NULL when it would: what `--dry-run` counts and what a
    bulk run leaves out before asking any workflow."""
    stages = [stage for stage in campaign.enroll.stages if stage not in NO_MARKETING_STAGES]
    whens: list[tuple[Any, str]] = []
    if run_id is not None:
        done = exists(select(literal(1)).select_from(BULK).where(
            BULK.c.run_id == run_id, BULK.c.lead_key == LEADS.c.key, BULK.c.status == "enrolled"))
        whens.append((done, "enrolled by an earlier run of this command"))
    whens += [(LEADS.c.campaign.is_not(None), "already in a campaign"),
              (LEADS.c.status != "subscribed", LEADS.c.status),
              (LEADS.c.stage.not_in(stages), f"not in the campaign's stages ({', '.join(stages) or 'none'})")]
    if campaign.enroll.where:
        whens.append((not_(lead_where(campaign.enroll.where, dialect=dialect)), "not matching the campaign's enroll.where"))
    if campaign.enroll.reenroll == "never":
        whens.append((left_campaign(campaign.name), "already went through the campaign (reenroll: never)"))
    return case(*whens, else_=literal(None, String))


def completed_campaign(campaigns: list[str]) -> Condition:
    """The lead went through one of these campaigns to its last step (an enrollment that
    ended `completed`: the stats' cohort table, on its lead_key primary key)."""
    return exists(select(literal(1)).select_from(ENROLLMENTS).where(
        ENROLLMENTS.c.lead_key == LEADS.c.key, ENROLLMENTS.c.campaign.in_(campaigns),
        ENROLLMENTS.c.exit_reason == "completed"))


def left_campaign(campaign: str) -> Condition:
    """The lead has been in this campaign and left it (for whatever reason)."""
    return exists(select(literal(1)).select_from(ENROLLMENTS).where(
        ENROLLMENTS.c.lead_key == LEADS.c.key, ENROLLMENTS.c.campaign == campaign, ENROLLMENTS.c.ended_at.is_not(None)))


def _did(sql: _Dialect, behaviour: Behaviour, now: datetime) -> Condition:
    query = select(literal(1)).select_from(EVENTS).where(EVENTS.c.lead_key == LEADS.c.key,
                                                         EVENTS.c.type == behaviour.event)
    if behaviour.within is not None:
        query = query.where(EVENTS.c.at >= now - behaviour.within)
    if behaviour.where:
        query = query.where(where_condition(behaviour.where, lambda field: sql.json(EVENTS.c.data, [field])))
    return exists(query)


# ---------------------------------------------------------------- where


@dataclass(frozen=True)
class _Value:
    """A field as SQL: its kind (string, number, boolean, null, array, object; NULL when
    absent), its text as Python's str() writes it, and whether it counts as given."""

    sql: _Dialect
    kind: Any  # a Python str when known in advance (lead columns), else an SQL expression
    text: Any
    present: Condition
    items: Callable[[Callable[[_Value], Condition]], Condition] | None = None  # any item of an array holds

    def is_kind(self, name: str) -> Any:
        if isinstance(self.kind, str):
            return true() if self.kind == name else false()
        return self.kind == name


def where_condition(where: dict[str, Any], value_of: Callable[[str], _Value]) -> Condition:
    return and_(true(), *(_field(value_of(field), spec) for field, spec in where.items()))


def _field(value: _Value, spec: Any) -> Condition:
    if isinstance(spec, dict):
        tests = list(spec.items())
    else:
        tests = [("in", spec)] if isinstance(spec, list) else [("eq", spec)]
    return and_(true(), *(_operator(value, op, expected) for op, expected in tests))


def _operator(value: _Value, op: str, expected: Any) -> Condition:
    if op == "exists":
        return value.present if as_bool(expected) else not_(value.present)
    if_missing = true() if expected is None and op == "eq" else false()
    holds = _scalar(value, op, expected)
    if value.items is not None:
        holds = case((value.is_kind("array"), value.items(lambda item: _scalar(item, op, expected))), else_=holds)
    return or_(and_(not_(value.present), if_missing), and_(value.present, holds))


def _scalar(value: _Value, op: str, expected: Any) -> Condition:
    if op == "eq":
        return _equals(value, expected)
    if op == "in":
        return or_(false(), *(_equals(value, item) for item in _as_list(expected)))
    if op in ("contains", "startswith", "endswith"):
        folded = func.nurture_fold(value.text)
        return or_(false(), *(getattr(folded, op)(value.sql.fold(str(item)), autoescape=True)
                              for item in _as_list(expected) if item is not None))
    if op == "matches":
        return or_(false(), *(func.nurture_search(value.sql.pattern(str(p)), value.text) == 1 for p in _as_list(expected)))
    return _ordering(value, op, expected)


def _equals(value: _Value, expected: Any) -> Condition:
    """As rules._equals: booleans by their words, numbers by value, the rest as case-folded text."""
    if expected is None:
        return false()
    if isinstance(expected, bool):
        return func.nurture_bool(value.text) == int(expected)
    wanted = as_bool(expected)  # what a boolean attribute equals
    boolean = false() if wanted is None else value.text == ("True" if wanted else "False")
    number, text = as_number(expected), value.sql.fold(str(expected))
    if number is None:
        other = func.nurture_fold(value.text) == text
    else:
        read = func.nurture_number(value.text)
        other = or_(read == number, and_(read.is_(None), func.nurture_fold(value.text) == text))
    if isinstance(value.kind, str):
        return boolean if value.kind == "boolean" else other
    return case((value.is_kind("boolean"), boolean), else_=other)


def _ordering(value: _Value, op: str, expected: Any) -> Condition:
    """Two numbers compare as numbers, two texts as text (ISO dates); a mix never holds."""
    number = as_number(expected)
    read = func.nurture_number(value.text)
    if number is not None:
        return and_(read.is_not(None), getattr(read, ORDERINGS[op])(number))
    if isinstance(expected, str):
        return and_(value.is_kind("string"), read.is_(None), getattr(value.sql.binary(value.text), ORDERINGS[op])(expected))
    return false()


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


_PROFILE_FIELDS = (*LEAD_FIELDS, "anonymous_id")  # what rules see of a lead (LeadProfile.record)


def _lead_value(sql: _Dialect, field: str) -> _Value:
    if field.startswith(ATTRIBUTES):
        return sql.json(LEADS.c.attributes, field[len(ATTRIBUTES):].split("."))
    if field not in _PROFILE_FIELDS:  # a campaign's where may name anything: unknown is absent
        return _Value(sql, "null", literal(None, String), false())
    column = LEADS.c[field]
    if field == "company_size":  # a number: str() of it, as rules reads it
        return _Value(sql, "number", cast(column, String), column.is_not(None))
    return _Value(sql, "string", column, func.nurture_present(column) == 1)


# ---------------------------------------------------------------- dialects

_WORD_BOUNDARY = re.compile(r"(?<!\\)((?:\\\\)*)\\b")


class _Dialect:
    """What differs between SQLite and PostgreSQL: JSON access, case folding of literals
    (SQLite folds as Python does, PostgreSQL with lower()), text order, regex spelling."""

    def __init__(self, name: str) -> None:
        self.postgres = name == "postgresql"

    def fold(self, text: str) -> str:
        return text.lower() if self.postgres else text.casefold()

    def binary(self, text: Any) -> Any:
        """Code point order, as Python compares strings (PostgreSQL's default collation is not)."""
        return text.collate("C") if self.postgres else text

    def pattern(self, pattern: str) -> str:
        """Python's \\b (word boundary) is \\y in PostgreSQL, where \\b is a backspace."""
        return _WORD_BOUNDARY.sub(r"\1\\y", pattern) if self.postgres else pattern

    def json(self, document: Any, path: list[str]) -> _Value:
        return self._postgres_json(document, path) if self.postgres else self._sqlite_json(document, path)

    def _sqlite_json(self, document: Any, path: list[str]) -> _Value:
        where = "$" + "".join(f'."{part}"' for part in path)
        raw = func.json_type(document, where)
        kind = case((raw == "text", "string"), (raw.in_(["integer", "real"]), "number"),
                    (raw.in_(["true", "false"]), "boolean"), else_=raw)
        text = case((raw == "true", "True"), (raw == "false", "False"),
                    else_=cast(func.json_extract(document, where), String))
        present = case((raw == "text", func.nurture_present(text) == 1), (raw == "array", func.json_array_length(document, where) > 0),
                       (raw == "object", func.json_extract(document, where) != "{}"), else_=raw.in_(["integer", "real", "true", "false"]))

        def items(test: Callable[[_Value], Condition]) -> Condition:
            each = func.json_each(document, where).table_valued("value", "type").alias("item")
            item_kind = case((each.c.type == "text", "string"), (each.c.type.in_(["integer", "real"]), "number"),
                             (each.c.type.in_(["true", "false"]), "boolean"), else_=each.c.type)
            item_text = case((each.c.type == "true", "True"), (each.c.type == "false", "False"),
                             (each.c.type == "null", "None"), else_=cast(each.c.value, String))
            return exists(select(literal(1)).select_from(each).where(test(_Value(self, item_kind, item_text, true()))))

        return _Value(self, kind, text, func.coalesce(present, false()), items)

    def _postgres_json(self, document: Any, path: list[str]) -> _Value:
        node = func.json_extract_path(document, *path)
        kind = func.json_typeof(node)
        raw_text = func.json_extract_path_text(document, *path)
        text = case((kind == "boolean", case((raw_text == "true", "True"), else_="False")), else_=raw_text)
        present = case((kind == "string", func.nurture_present(raw_text) == 1), (kind == "array", func.json_array_length(node) > 0),
                       (kind == "object", raw_text != "{}"), else_=kind.in_(["number", "boolean"]))

        def items(test: Callable[[_Value], Condition]) -> Condition:
            each = func.json_array_elements(node).table_valued("value").alias("item")
            item_kind = func.json_typeof(each.c.value)
            item_raw = each.c.value.op("#>>")(literal_column("'{}'"))
            item_text = case((item_kind == "boolean", case((item_raw == "true", "True"), else_="False")),
                             (item_kind == "null", "None"), else_=item_raw)
            return exists(select(literal(1)).select_from(each).where(test(_Value(self, item_kind, item_text, true()))))

        return _Value(self, kind, text, func.coalesce(present, false()), items)
