"""The pure domain rules (nurture.rules): plain, fast, table-driven."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from nurture.campaign import Condition, FrequencyCap, Qualify, Scoring, SendWindow, default_funnel
from nurture.rules import (
    GRADES,
    STAGES,
    LeadView,
    Scored,
    ab_variant,
    any_condition,
    apply_decay,
    bant_count,
    condition_holds,
    decay_steps,
    fit_points,
    frequency_release,
    grade_at_least,
    grade_for,
    lead_zone,
    match_where,
    meets_mql,
    meets_sql,
    next_decay_at,
    next_send_slot,
    parse_hours,
    rule_text,
    score_event,
    stage_rank,
    temperature,
)

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ---------------------------------------------------------------- where

LEAD = {
    "email": "Jane.Doe@Globex.example",
    "country": "FR",
    "company_size": "120",  # CSV imports give strings
    "employees": 40,
    "job_title": "VP of Marketing",
    "source": "web_form",
    "phone": None,
    "company": "",
    "attributes": {"plan": "Pro", "seats": "12", "vip": "yes", "tags": ["beta", "Early"], "trial": {"days": 14}},
}


@pytest.mark.parametrize(
    "where, expected",
    [
        (None, True),
        ({}, True),
        # equality: exact, case-insensitive for strings, numbers coerced
        ({"country": "FR"}, True),
        ({"country": "fr"}, True),
        ({"country": "F"}, False),
        ({"company_size": 120}, True),
        ({"employees": "40"}, True),
        ({"country": {"eq": "Fr"}}, True),
        ({"attributes.vip": True}, True),
        ({"attributes.vip": False}, False),
        # in (a list is `in`)
        ({"country": ["DE", "FR"]}, True),
        ({"country": ["DE", "ES"]}, False),
        ({"country": {"in": ["de", "fr"]}}, True),
        ({"employees": {"in": [10, 40]}}, True),
        # contains / startswith / endswith: case-insensitive, string or list
        ({"job_title": {"contains": "marketing"}}, True),
        ({"job_title": {"contains": ["sales", "MARKET"]}}, True),
        ({"job_title": {"contains": "sales"}}, False),
        ({"email": {"startswith": "jane."}}, True),
        ({"email": {"startswith": ["bob", "john"]}}, False),
        ({"email": {"endswith": "GLOBEX.example"}}, True),
        ({"email": {"endswith": ["gmail.com", "yahoo.com"]}}, False),
        # matches: re.search, case-sensitive unless the pattern says (?i)
        ({"job_title": {"matches": r"\bVP\b"}}, True),
        ({"job_title": {"matches": r"\bvp\b"}}, False),
        ({"job_title": {"matches": r"(?i)\b(vp|director|head|chief|c[ te]o)\b"}}, True),
        ({"job_title": {"matches": "^Marketing"}}, False),
        # bad regex: no match, no error
        ({"job_title": {"matches": "(unclosed"}}, False),
        ({"job_title": {"matches": "*"}}, False),
        # comparisons, numeric strings coerced
        ({"company_size": {"gte": 50}}, True),
        ({"company_size": {"gte": 120}}, True),
        ({"company_size": {"gt": 120}}, False),
        ({"company_size": {"lt": "200"}}, True),
        ({"company_size": {"lte": 119.5}}, False),
        ({"employees": {"gte": 10, "lt": 50}}, True),
        ({"employees": {"gte": 10, "lt": 40}}, False),
        ({"job_title": {"gte": 50}}, False),  # not a number: never compares
        # exists
        ({"country": {"exists": True}}, True),
        ({"country": {"exists": False}}, False),
        ({"fax": {"exists": False}}, True),
        ({"fax": {"exists": True}}, False),
        ({"phone": {"exists": False}}, True),  # None is absent
        ({"company": {"exists": False}}, True),  # blank is absent
        # missing fields fail every operator but exists: false
        ({"fax": "x"}, False),
        ({"fax": ["x", "y"]}, False),
        ({"fax": {"contains": ""}}, False),
        ({"fax": {"matches": ".*"}}, False),
        ({"fax": {"gte": 0}}, False),
        ({"fax": {"lt": 0}}, False),
        ({"phone": {"startswith": ""}}, False),
        ({"fax": {"exists": False, "eq": "x"}}, False),
        # attributes.KEY and deeper dotted paths
        ({"attributes.plan": "pro"}, True),
        ({"attributes.plan": ["free", "team"]}, False),
        ({"attributes.seats": {"gte": 10}}, True),
        ({"attributes.trial.days": {"lte": 14}}, True),
        ({"attributes.missing": {"exists": False}}, True),
        ({"attributes.plan.deeper": {"exists": True}}, False),
        # multi-valued attribute: any value matches
        ({"attributes.tags": "early"}, True),
        ({"attributes.tags": {"startswith": "be"}}, True),
        ({"attributes.tags": "late"}, False),
        # every field must hold; unknown operator never matches
        ({"country": "FR", "source": "web_form"}, True),
        ({"country": "FR", "source": "import"}, False),
        ({"country": {"near": "FR"}}, False),
    ],
)
def test_match_where(where, expected):
    assert match_where(where, LEAD) is expected


def test_match_where_on_event_fields():
    event = {"type": "page_view", "url": "https://acme.example/Pricing?x=1", "campaign": "b2b-trial"}
    assert match_where({"url": {"contains": "/pricing"}}, event)
    assert match_where({"url": {"matches": r"/Pricing\b"}, "campaign": "b2b-trial"}, event)
    assert not match_where({"asset": {"exists": True}}, event)


# ---------------------------------------------------------------- rule text

SCORING = Scoring.model_validate(
    {
        "events": {
            "email_open": 1,
            "page_view": [
                {"where": {"url": {"contains": "/pricing"}}, "points": 15, "max_per_day": 15},
                {"where": {"url": {"contains": "/docs"}}, "points": 4},
                {"points": 2, "max_per_day": 5},
            ],
            "content_download": [{"where": {"asset": ["ebook", "whitepaper"]}, "points": 10}],
            "email_unsubscribe": -10,
            "email_spamreport": [{"points": -20, "max_per_day": 5}],
        },
        "fit": [
            {"where": {"job_title": {"matches": "(?i)\\b(vp|director|head|chief|c[ te]o)\\b"}}, "points": 20},
            {"where": {"company_size": {"gte": 50}}, "points": 15},
            {"where": {"email": {"endswith": ["gmail.com", "yahoo.com", "hotmail.com"]}}, "points": -20},
        ],
        "grades": {"A": 35, "B": 20, "C": 5, "D": 0},
    }
)


@pytest.mark.parametrize(
    "kind, index, text",
    [
        ("page_view", 0, "page_view#1 {url: {contains: /pricing}} +15 max 15/day"),
        ("page_view", 1, "page_view#2 {url: {contains: /docs}} +4"),
        ("page_view", 2, "page_view#3 +2 max 5/day"),
        ("content_download", 0, "content_download#1 {asset: [ebook, whitepaper]} +10"),
        ("email_unsubscribe", 0, "email_unsubscribe#1 -10"),
    ],
)
def test_rule_text_event_rules(kind, index, text):
    assert rule_text(SCORING.events[kind][index], kind=kind, index=index) == text


def test_rule_text_fit_rules_and_quoting():
    texts = [rule_text(rule, kind="fit", index=i) for i, rule in enumerate(SCORING.fit)]
    assert texts == [
        "fit#1 {job_title: {matches: '(?i)\\b(vp|director|head|chief|c[ te]o)\\b'}} +20",
        "fit#2 {company_size: {gte: 50}} +15",
        "fit#3 {email: {endswith: [gmail.com, yahoo.com, hotmail.com]}} -20",
    ]
    assert rule_text(SCORING.fit[1]) == "{company_size: {gte: 50}} +15"
    # strings that would read as another type or break the flow syntax are quoted
    quirky = Scoring.model_validate({"fit": [{"where": {"a": "50", "b": "yes", "c": "x: y", "d": "it's"}, "points": 1}]})
    assert rule_text(quirky.fit[0]) == "{a: '50', b: 'yes', c: 'x: y', d: 'it''s'} +1"


# ---------------------------------------------------------------- event scoring


def view(url: str, at: str = "2026-05-04T10:00:00Z") -> dict:
    return {"type": "page_view", "url": url, "at": at}


def test_first_matching_rule_wins():
    scored = score_event(SCORING, view("https://acme.example/pricing"), {})
    assert scored == Scored(
        points=15,
        rule_index=0,
        rule_text="page_view#1 {url: {contains: /pricing}} +15 max 15/day",
        capped=False,
        counter_key="page_view#0@2026-05-04",
    )
    # /docs/pricing also contains /pricing: the first rule wins over the second
    assert score_event(SCORING, view("/docs/pricing"), {}).rule_index == 0
    assert score_event(SCORING, view("/docs/api"), {}).rule_index == 1
    assert score_event(SCORING, view("/blog"), {}).rule_index == 2


@pytest.mark.parametrize(
    "event",
    [
        {"type": "webinar_attended", "at": "2026-05-04T10:00:00Z"},  # no rule for the type
        {"type": "content_download", "asset": "price-list", "at": "2026-05-04T10:00:00Z"},  # no rule matches
        {"type": "content_download", "at": "2026-05-04T10:00:00Z"},  # field missing
    ],
)
def test_no_rule_scores_nothing(event):
    assert score_event(SCORING, event, {}) is None


def test_shorthand_rule_and_datetime_at():
    scored = score_event(SCORING, {"type": "email_open", "at": datetime(2026, 5, 4, 23, 30, tzinfo=ZoneInfo("America/New_York"))}, {})
    # 23:30 in New York is the next day in UTC
    assert (scored.points, scored.capped, scored.counter_key) == (1, False, "email_open#0@2026-05-05")
    assert scored.rule_text == "email_open#1 +1"


def grant(events: list[dict], day_counts: dict[str, int]) -> list[tuple[int, bool]]:
    """Score events in order, keeping the per-day counters like the workflow does."""
    out = []
    for event in events:
        scored = score_event(SCORING, event, day_counts)
        day_counts[scored.counter_key] = day_counts.get(scored.counter_key, 0) + scored.points
        out.append((scored.points, scored.capped))
    return out


def test_max_per_day_caps_points_per_utc_day():
    counts: dict[str, int] = {}
    day1 = [view("/pricing", "2026-05-04T08:00:00Z"), view("/pricing", "2026-05-04T23:59:59+00:00")]
    day2 = [view("/pricing", "2026-05-05T00:00:00Z"), view("/pricing", "2026-05-05T01:00:00+02:00")]  # still May 4 UTC
    assert grant(day1, counts) == [(15, False), (0, True)]
    assert grant(day2, counts) == [(15, False), (0, True)]
    assert counts == {"page_view#0@2026-05-04": 15, "page_view#0@2026-05-05": 15}


def test_max_per_day_partial_grant_and_per_rule_counters():
    counts: dict[str, int] = {}
    blog = [view(f"/blog/{n}") for n in range(4)]  # rule 3: +2, max 5/day
    assert grant(blog, counts) == [(2, False), (2, False), (1, True), (0, True)]
    # the pricing rule has its own counter
    assert grant([view("/pricing")], counts) == [(15, False)]
    # a counter left over from earlier (e.g. a replayed state) is honoured
    assert score_event(SCORING, view("/pricing"), {"page_view#0@2026-05-04": 10}).points == 5


def test_negative_points_are_never_capped():
    counts = {"email_spamreport#0@2026-05-04": 100}
    scored = score_event(SCORING, {"type": "email_spamreport", "at": "2026-05-04T10:00:00Z"}, counts)
    assert (scored.points, scored.capped) == (-20, False)
    unsub = score_event(SCORING, {"type": "email_unsubscribe", "at": "2026-05-04T10:00:00Z"}, {})
    assert unsub.points == -10


def test_event_without_timestamp_is_a_caller_error():
    with pytest.raises(ValueError, match="at"):
        score_event(SCORING, {"type": "email_open"}, {})


# ---------------------------------------------------------------- fit and grade


@pytest.mark.parametrize(
    "profile, total, indexes, grade",
    [
        ({"job_title": "Director of IT", "company_size": 500, "email": "a@corp.example"}, 35, [0, 1], "A"),
        ({"job_title": "CTO", "email": "a@corp.example"}, 20, [0], "B"),
        ({"company_size": "80", "email": "a@corp.example"}, 15, [1], "C"),
        ({"job_title": "Engineer", "email": "a@corp.example"}, 0, [], "D"),
        ({"job_title": "VP Sales", "company_size": 10, "email": "a@gmail.com"}, 0, [0, 2], "D"),
        ({"job_title": "Student", "email": "kid@Hotmail.com"}, -20, [2], "F"),
    ],
)
def test_fit_points_add_up_and_grade(profile, total, indexes, grade):
    fit, matched = fit_points(SCORING, profile)
    assert fit == total
    assert [index for index, _, _ in matched] == indexes
    assert all(text.startswith(f"fit#{index + 1} ") for index, text, _ in matched)
    assert grade_for(SCORING.grades, fit) == grade


@pytest.mark.parametrize(
    "fit, grade",
    [(100, "A"), (35, "A"), (34, "B"), (20, "B"), (19, "C"), (5, "C"), (4, "D"), (0, "D"), (-1, "F"), (-50, "F")],
)
def test_grade_bands(fit, grade):
    assert grade_for({"A": 35, "B": 20, "C": 5, "D": 0}, fit) == grade


def test_grade_bands_partial_and_order():
    assert grade_for({"A": 50}, 49) == "F"
    assert grade_for({"A": 50, "C": 10}, 20) == "C"
    assert GRADES == ("A", "B", "C", "D", "F")
    assert grade_at_least("A", "C") and grade_at_least("C", "C")
    assert not grade_at_least("D", "C") and not grade_at_least("F", "D")
    assert grade_at_least("F", "F") and grade_at_least("b", "B")
    assert not grade_at_least("?", "F")  # unknown grade never qualifies


# ---------------------------------------------------------------- temperature and qualification


@pytest.mark.parametrize(
    "score, mql, expected",
    [
        (0, 50, "cold"),
        (24, 50, "cold"),
        (25, 50, "warm"),
        (49, 50, "warm"),
        (50, 50, "hot"),
        (500, 50, "hot"),
        (25, 51, "cold"),  # half of 51 is 25.5
        (26, 51, "warm"),
        (0, 0, "hot"),
    ],
)
def test_temperature_boundaries(score, mql, expected):
    assert temperature(score, mql) == expected


QUALIFY = Qualify.model_validate({"mql": {"score": 50, "min_grade": "C"}, "sql": {"bant": "all"}})


@pytest.mark.parametrize(
    "score, grade, expected",
    [(50, "C", True), (80, "A", True), (49, "A", False), (90, "D", False), (90, "F", False)],
)
def test_mql_needs_score_and_grade(score, grade, expected):
    assert meets_mql(QUALIFY, score, grade) is expected


@pytest.mark.parametrize(
    "bant, count, all_four, at_least_two",
    [
        ({}, 0, False, False),
        ({"budget": True, "authority": None, "need": False, "timing": None}, 1, False, False),
        ({"budget": True, "authority": True, "need": None, "timing": False}, 2, False, True),
        ({"budget": True, "authority": True, "need": True, "timing": None}, 3, False, True),
        ({"budget": True, "authority": True, "need": True, "timing": True}, 4, True, True),
        ({"budget": "yes", "authority": 1, "need": True, "timing": True}, 2, False, True),  # only real True counts
    ],
)
def test_sql_all_vs_n(bant, count, all_four, at_least_two):
    assert bant_count(bant) == count
    assert meets_sql(QUALIFY, bant) is all_four
    assert meets_sql(Qualify.model_validate({"sql": {"bant": 2}}), bant) is at_least_two


def test_stage_rank():
    assert STAGES == ("visitor", "lead", "mql", "sql", "opportunity", "customer")
    assert [stage_rank(s) for s in STAGES] == [0, 1, 2, 3, 4, 5]
    assert stage_rank("recycled") == stage_rank("lead") < stage_rank("mql")
    assert stage_rank("disqualified") > stage_rank("customer")
    assert stage_rank("nonsense") < stage_rank("visitor")


# ---------------------------------------------------------------- conditions

VIEW = LeadView(
    score=57,
    grade="B",
    stage="mql",
    temperature="hot",
    profile={"email": "a@globex.example", "country": "FR", "plan": None, "attributes": {"plan": "Enterprise", "seats": "40"}},
    events=frozenset({("email_open", "welcome"), ("email_click", "case-study"), ("page_view", None)}),
)


@pytest.mark.parametrize(
    "cond, expected",
    [
        ({}, True),
        ({"temperature": "hot"}, True),
        ({"temperature": ["cold", "warm"]}, False),
        ({"stage": ["sql", "opportunity", "customer"]}, False),
        ({"stage": "MQL"}, True),
        ({"grade": "F"}, False),
        ({"grade": ["A", "B"]}, True),
        ({"score": {"gte": 50}}, True),
        ({"score": {"gte": 50, "lt": 57}}, False),
        ({"score": {"eq": 57}}, True),
        ({"score": {"gt": 57}}, False),
        ({"score": {"lte": 57}}, True),
        ({"event": "email_click"}, True),
        ({"event": "email_click", "step": "case-study"}, True),
        ({"event": "email_click", "step": "welcome"}, False),
        ({"event": "page_view"}, True),
        ({"event": "meeting_booked"}, False),
        ({"step": "welcome"}, True),
        ({"attribute": {"attributes.plan": "enterprise"}}, True),
        ({"attribute": {"plan": "enterprise"}}, True),  # falls back to the attributes
        ({"attribute": {"attributes.seats": {"gte": 50}}}, False),
        ({"attribute": {"country": "FR", "email": {"endswith": "globex.example"}}}, True),
        ({"temperature": "hot", "grade": "B", "event": "email_open"}, True),
        ({"temperature": "hot", "grade": "A"}, False),  # every given key must hold
    ],
)
def test_condition_holds(cond, expected):
    assert condition_holds(Condition.model_validate(cond), VIEW) is expected


def test_any_condition():
    disqualify = [Condition(grade="F"), Condition(attribute={"country": "KP"})]
    assert not any_condition(disqualify, VIEW)
    assert any_condition(disqualify + [Condition(stage="mql")], VIEW)
    assert not any_condition([], VIEW)


# ---------------------------------------------------------------- decay

LAST = utc(2026, 1, 10, 12, 0)
MONTH = timedelta(days=30)


@pytest.mark.parametrize(
    "now, steps",
    [
        (LAST - timedelta(days=3), 0),  # clock before the last score: nothing
        (LAST, 0),
        (LAST + MONTH - timedelta(seconds=1), 0),
        (LAST + MONTH, 1),
        (utc(2026, 4, 9, 12, 0), 2),  # 89 days
        (utc(2026, 4, 10, 12, 0), 3),  # 90 days
        (utc(2027, 1, 10, 12, 0), 12),  # 365 days
    ],
)
def test_decay_steps_full_periods(now, steps):
    assert decay_steps(LAST, now, MONTH) == steps


def test_next_decay_and_floor():
    assert next_decay_at(LAST, 0, MONTH) == LAST + MONTH
    assert next_decay_at(LAST, 3, MONTH) == utc(2026, 5, 10, 12, 0)
    assert decay_steps(LAST, next_decay_at(LAST, 3, MONTH), MONTH) == 4
    assert decay_steps(LAST.astimezone(ZoneInfo("Europe/Paris")), LAST + MONTH, MONTH) == 1
    assert apply_decay(57, 10) == 47
    assert apply_decay(7, 10) == 0
    assert apply_decay(0, 10) == 0


def test_default_funnel_decay_over_months():
    decay = default_funnel().scoring.decay
    score = 57
    for _ in range(decay_steps(LAST, utc(2026, 5, 1), decay.every)):  # 110 days: 3 periods
        score = apply_decay(score, decay.points)
    assert score == 27


# ---------------------------------------------------------------- send window

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
OFFICE = ["mon", "tue", "wed", "thu", "fri"]


def window(hours: str = "09:00-17:30", days: list[str] = ALL_DAYS, tz: str = "lead", default: str = "Europe/Paris") -> SendWindow:
    return SendWindow(timezone=tz, default_timezone=default, days=days, hours=hours)


@pytest.mark.parametrize(
    "zone, now, expected",
    [
        # Europe/Paris, spring forward 2026-03-29 02:00 -> 03:00 (CET +1 -> CEST +2)
        ("Europe/Paris", utc(2026, 3, 28, 16, 45), utc(2026, 3, 29, 7, 0)),  # 17:45 CET: next day 09:00 CEST
        ("Europe/Paris", utc(2026, 3, 29, 5, 0), utc(2026, 3, 29, 7, 0)),  # 07:00 CEST
        ("Europe/Paris", utc(2026, 3, 29, 7, 0), utc(2026, 3, 29, 7, 0)),  # opening instant: inside
        ("Europe/Paris", utc(2026, 3, 29, 15, 29), utc(2026, 3, 29, 15, 29)),  # 17:29 CEST: inside
        ("Europe/Paris", utc(2026, 3, 29, 15, 30), utc(2026, 3, 30, 7, 0)),  # 17:30 CEST: closed
        # Europe/Paris, fall back 2026-10-25 03:00 -> 02:00 (CEST +2 -> CET +1)
        ("Europe/Paris", utc(2026, 10, 24, 15, 45), utc(2026, 10, 25, 8, 0)),  # 17:45 CEST: next day 09:00 CET
        ("Europe/Paris", utc(2026, 10, 25, 7, 30), utc(2026, 10, 25, 8, 0)),  # 08:30 CET
        ("Europe/Paris", utc(2026, 10, 25, 16, 29), utc(2026, 10, 25, 16, 29)),  # 17:29 CET
        ("Europe/Paris", utc(2026, 10, 25, 16, 30), utc(2026, 10, 26, 8, 0)),
        # America/New_York, spring forward 2026-03-08 02:00 -> 03:00 (EST -5 -> EDT -4)
        ("America/New_York", utc(2026, 3, 7, 22, 45), utc(2026, 3, 8, 13, 0)),  # 17:45 EST: 09:00 EDT
        ("America/New_York", utc(2026, 3, 8, 12, 59), utc(2026, 3, 8, 13, 0)),
        ("America/New_York", utc(2026, 3, 8, 21, 29), utc(2026, 3, 8, 21, 29)),  # 17:29 EDT
        ("America/New_York", utc(2026, 3, 8, 21, 30), utc(2026, 3, 9, 13, 0)),
        # America/New_York, fall back 2026-11-01 02:00 -> 01:00 (EDT -4 -> EST -5)
        ("America/New_York", utc(2026, 10, 31, 21, 45), utc(2026, 11, 1, 14, 0)),  # 17:45 EDT: 09:00 EST
        ("America/New_York", utc(2026, 11, 1, 13, 30), utc(2026, 11, 1, 14, 0)),  # 08:30 EST
        ("America/New_York", utc(2026, 11, 1, 22, 29), utc(2026, 11, 1, 22, 29)),  # 17:29 EST
        ("America/New_York", utc(2026, 11, 1, 22, 30), utc(2026, 11, 2, 14, 0)),
    ],
)
def test_send_window_across_dst(zone, now, expected):
    assert next_send_slot(now, window(), zone) == expected


@pytest.mark.parametrize(
    "zone, hours, now, expected",
    [
        # a window opening inside the spring-forward gap opens when the gap ends
        ("Europe/Paris", "02:30-05:00", utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 1, 0)),  # 03:00 CEST
        ("America/New_York", "02:30-05:00", utc(2026, 3, 8, 5, 0), utc(2026, 3, 8, 7, 0)),  # 03:00 EDT
        # an ambiguous opening time takes its first occurrence (fold=0, still summer time)
        ("Europe/Paris", "02:30-05:00", utc(2026, 10, 24, 22, 30), utc(2026, 10, 25, 0, 30)),  # 02:30 CEST
        ("America/New_York", "01:30-05:00", utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 5, 30)),  # 01:30 EDT
        # a window lying wholly in the gap is empty that day
        ("Europe/Paris", "02:10-02:50", utc(2026, 3, 28, 23, 0), utc(2026, 3, 30, 0, 10)),  # next day 02:10 CEST
    ],
)
def test_send_window_gap_and_ambiguous_times(zone, hours, now, expected):
    assert next_send_slot(now, window(hours), zone) == expected


@pytest.mark.parametrize(
    "now, expected",
    [
        (utc(2026, 5, 6, 10, 0), utc(2026, 5, 6, 10, 0)),  # Wed 12:00 CEST: inside
        (utc(2026, 5, 6, 5, 0), utc(2026, 5, 6, 7, 0)),  # Wed 07:00: later that morning
        (utc(2026, 5, 6, 18, 0), utc(2026, 5, 7, 7, 0)),  # Wed 20:00: Thursday
        (utc(2026, 5, 8, 16, 0), utc(2026, 5, 11, 7, 0)),  # Fri 18:00: Monday
        (utc(2026, 5, 9, 10, 0), utc(2026, 5, 11, 7, 0)),  # Saturday: Monday
        (utc(2026, 5, 10, 22, 30), utc(2026, 5, 11, 7, 0)),  # Mon 00:30 local (Sun in UTC)
        (utc(2026, 3, 27, 17, 0), utc(2026, 3, 30, 7, 0)),  # Fri 18:00 CET, DST weekend: Mon 09:00 CEST
    ],
)
def test_send_window_weekdays(now, expected):
    assert next_send_slot(now, window(days=OFFICE), "Europe/Paris") == expected


def test_send_window_hours_forms():
    late = window("20:00-24:00", tz="UTC")
    assert next_send_slot(utc(2026, 5, 6, 23, 59, 59), late, None) == utc(2026, 5, 6, 23, 59, 59)
    assert next_send_slot(utc(2026, 5, 6, 12, 0), late, None) == utc(2026, 5, 6, 20, 0)
    overnight = window("22:00-06:00", days=["mon"], tz="UTC")  # the ends of each allowed day
    assert next_send_slot(utc(2026, 5, 4, 3, 0), overnight, None) == utc(2026, 5, 4, 3, 0)  # Mon 03:00
    assert next_send_slot(utc(2026, 5, 4, 7, 0), overnight, None) == utc(2026, 5, 4, 22, 0)
    assert next_send_slot(utc(2026, 5, 5, 3, 0), overnight, None) == utc(2026, 5, 11, 0, 0)  # Tue: next Mon
    whole = SendWindow()
    assert next_send_slot(utc(2026, 5, 6, 3, 0), whole, None) == utc(2026, 5, 6, 3, 0)
    assert next_send_slot(utc(2026, 5, 6, 3, 0), None, "Europe/Paris") == utc(2026, 5, 6, 3, 0)


def test_send_window_takes_any_aware_now_and_returns_utc():
    paris_now = datetime(2026, 5, 6, 20, 0, tzinfo=ZoneInfo("Europe/Paris"))
    slot = next_send_slot(paris_now, window(), "Europe/Paris")
    assert slot == utc(2026, 5, 7, 7, 0) and slot.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "win, lead_tz, zone",
    [
        (window(), "America/New_York", "America/New_York"),
        (window(), None, "Europe/Paris"),
        (window(), "", "Europe/Paris"),
        (window(), "Mars/Olympus_Mons", "Europe/Paris"),
        (window(), "not a zone", "Europe/Paris"),
        (window(), "../../etc/passwd", "Europe/Paris"),
        (window(), "Europe", "Europe/Paris"),
        (window(default="Nowhere/Atlantis"), "Bad/Zone", "UTC"),
        (window(default=""), None, "UTC"),
        (window(tz="Asia/Tokyo"), "America/New_York", "Asia/Tokyo"),  # a named zone ignores the lead's
        (window(tz="Bad/Zone"), "America/New_York", "Europe/Paris"),
    ],
)
def test_lead_zone_fallbacks(win, lead_tz, zone):
    assert lead_zone(win, lead_tz) == ZoneInfo(zone)


def test_unknown_lead_timezone_sends_in_default_zone():
    # 17:45 UTC on a Wednesday: closed in Paris (19:45), open in New York (13:45)
    now = utc(2026, 5, 6, 17, 45)
    assert next_send_slot(now, window(), "America/New_York") == now
    assert next_send_slot(now, window(), "Atlantis/Capital") == utc(2026, 5, 7, 7, 0)
    # both bad: UTC, where 17:45 is past 17:30 too
    assert next_send_slot(now, window(default="Bad/Zone"), "Bad/Zone") == utc(2026, 5, 7, 9, 0)


@pytest.mark.parametrize(
    "hours, parsed",
    [("09:00-17:30", (540, 1050)), ("00:00-24:00", (0, 1440)), ("9:05 - 18:00", (545, 1080)), ("22:00-06:00", (1320, 360))],
)
def test_parse_hours(hours, parsed):
    assert parse_hours(hours) == parsed


@pytest.mark.parametrize("hours", ["", "9-17", "09:00-25:00", "09:60-10:00", "24:00-24:00", "10:00-10:00", "nine to five"])
def test_parse_hours_rejects(hours):
    with pytest.raises(ValueError):
        parse_hours(hours)


# ---------------------------------------------------------------- frequency cap

NOW = utc(2026, 5, 6, 12, 0)
CAP = FrequencyCap(max=3, per="7d")


@pytest.mark.parametrize(
    "sent, release",
    [
        ([], None),
        ([NOW - timedelta(days=1), NOW - timedelta(days=2)], None),
        ([NOW - timedelta(days=6), NOW - timedelta(days=3), NOW - timedelta(days=1)], NOW + timedelta(days=1)),
        ([NOW - timedelta(days=1), NOW - timedelta(days=6), NOW - timedelta(days=3)], NOW + timedelta(days=1)),  # any order
        ([NOW - timedelta(days=7), NOW - timedelta(days=3), NOW - timedelta(days=1)], None),  # 7 days ago has left
        ([NOW - timedelta(days=30), NOW - timedelta(days=3), NOW - timedelta(days=1)], None),
        ([NOW, NOW - timedelta(hours=1), NOW - timedelta(hours=2)], NOW + timedelta(days=7) - timedelta(hours=2)),
        # over the cap (it was lowered): wait until enough sends leave the window
        (
            [NOW - timedelta(days=d) for d in (6, 5, 4, 1)],
            NOW - timedelta(days=5) + timedelta(days=7),
        ),
    ],
)
def test_frequency_release(sent, release):
    assert frequency_release(NOW, sent, CAP) == release


def test_frequency_release_edges():
    assert frequency_release(NOW, [NOW] * 10, None) is None
    one_a_day = FrequencyCap(max=1, per="1d")
    last = NOW - timedelta(hours=20)
    assert frequency_release(NOW, [last], one_a_day) == last + timedelta(days=1)
    assert frequency_release(last + timedelta(days=1), [last], one_a_day) is None  # released exactly then
    naive = datetime(2026, 5, 6, 11, 0)  # naive: taken as UTC
    assert frequency_release(NOW, [naive], one_a_day) == utc(2026, 5, 7, 11, 0)


# ---------------------------------------------------------------- A/B


def test_ab_variant_is_deterministic_sha256():
    expected = int(hashlib.sha256(b"b2b-trial|case-study|lead-42").hexdigest(), 16) % 2
    assert ab_variant("b2b-trial", "case-study", "lead-42", 2) == expected
    assert all(ab_variant("b2b-trial", "case-study", "lead-42", 2) == expected for _ in range(5))
    assert ab_variant("b2b-trial", "case-study", "lead-42", 1) == 0
    assert ab_variant("b2b-trial", "case-study", "lead-42", 0) == 0


@pytest.mark.parametrize("variants", [2, 3, 4])
def test_ab_variant_rough_balance(variants):
    counts = Counter(ab_variant("b2b-trial", "case-study", f"lead{n}@example.com", variants) for n in range(1000))
    assert set(counts) == set(range(variants))
    share = 1000 / variants
    assert all(abs(count - share) < 0.2 * share for count in counts.values()), counts


def test_ab_variant_differs_per_step():
    keys = [f"lead{n}" for n in range(200)]
    first = [ab_variant("c", "s1", k, 2) for k in keys]
    second = [ab_variant("c", "s2", k, 2) for k in keys]
    assert first != second
