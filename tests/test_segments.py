"""Segments (campaigns/segments.yaml, contract section 8): the file checked like a
campaign (FILE:LINE: path: message, did-you-mean), and every condition evaluated in SQL on
SQLite and on PostgreSQL; `where` is compared with what nurture.rules decides in Python."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from nurture import crud, rules
from nurture.audiences import AudienceError, condition, find
from nurture.campaign import CampaignError, validate_paths
from nurture.db import session_scope
from nurture.leads import lead_filters, list_page
from nurture.models import Event, Lead, utcnow
from nurture.segments import load_segments
from tests.conftest import make_settings
from tests.test_store import db, db_url  # noqa: F401 - the SQLite/PostgreSQL store fixtures

PROFILE = ("company", "job_title", "company_size", "country", "source")
# (email, profile, attributes, journey columns)
LEADS: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("ann@fr.example", {"company": "Globex", "job_title": "VP Sales", "company_size": 120, "country": "FR",
                        "source": "web_form"},
     {"plan": "pro", "seats": "50", "tags": ["webinar", "Beta"], "trial": True},
     {"stage": "mql", "grade": "A", "temperature": "hot", "status": "subscribed", "score": 55,
      "campaign": "b2b-trial"}),
    ("bob@fr.example", {"company": "initech", "job_title": "Engineer", "company_size": 12, "country": "FR",
                        "source": "import"},
     {"plan": "free", "seats": 5, "trial": "no"},
     {"stage": "lead", "grade": "C", "temperature": "warm", "status": "subscribed", "score": 30}),
    ("cleo@de.example", {"company": "Umbrella Corp", "job_title": "CTO", "company_size": 5000, "country": "DE",
                         "source": "web_form"},
     {"plan": "Pro", "tags": ["webinar"]},
     {"stage": "lead", "grade": "B", "temperature": "cold", "status": "unsubscribed", "score": 10}),
    ("dan@us.example", {"company": "", "country": "US"}, {"seats": "many"},
     {"stage": "sql", "grade": "D", "temperature": "hot", "status": "bounced", "score": 80,
      "campaign": "recycled-nurture"}),
    ("eve@fr.example", {"job_title": "sales director", "country": "FR"}, {},
     {"stage": "visitor", "grade": "F", "temperature": "cold", "status": "subscribed", "score": 0}),
]
NOW = utcnow()
CAMPAIGNS = Path(__file__).resolve().parent.parent / "campaigns"


def _key(email: str) -> str:
    return email.split("@")[0]


def _enrolled(seq: int, campaign: str, number: int = 1) -> dict[str, Any]:
    return {"seq": seq, "at": NOW - timedelta(days=40), "kind": "note", "reason": f"enrolled in {campaign}",
            "delta": None, "score": 0, "detail": {"campaign": campaign, "journey": "enrolled", "enrollment": number}}


def _left(seq: int, campaign: str, why: str, number: int = 1) -> dict[str, Any]:
    return {"seq": seq, "at": NOW - timedelta(days=35), "kind": "note", "reason": f"left campaign {campaign}: {why}",
            "delta": None, "score": 0, "detail": {"campaign": campaign, "journey": "left", "enrollment": number,
                                                  "exit": why}}


@pytest.fixture
def store(db):  # noqa: F811 - the imported fixture
    """The five leads, their events (ann clicked 3 days ago, bob 20 days ago, cleo opened
    yesterday) and journeys (bob completed b2b-trial, cleo left it unsubscribed)."""
    with session_scope(db) as session:
        for email, profile, attributes, columns in LEADS:
            session.add(Lead(key=_key(email), email=email, attributes=attributes, **profile, **columns))
        session.flush()
        events = [("ann", "email_click", 3, {"url": "https://acme.example/pricing", "campaign": "b2b-trial"}),
                  ("ann", "page_view", 1, {"url": "https://acme.example/docs"}),
                  ("bob", "email_click", 20, {"url": "https://acme.example/blog"}),
                  ("cleo", "email_open", 1, {}),
                  ("cleo", "form_submit", 2, {"form": "Demo-Request"})]
        for number, (key, type_, days, data) in enumerate(events):
            crud.add_event(session=session, event=Event(id=f"e{number}", lead_key=key, type=type_,
                                                        at=NOW - timedelta(days=days), data=data))
        crud.add_history(session=session, key="bob", entries=[_enrolled(1, "b2b-trial"), _left(2, "b2b-trial", "completed")])
        crud.add_history(session=session, key="cleo", entries=[_enrolled(1, "b2b-trial"),
                                                               _left(2, "b2b-trial", "unsubscribed")])
    return db


def _segments(tmp_path: Path, segments: dict[str, Any]) -> Path:
    (tmp_path / "segments.yaml").write_text(yaml.safe_dump({"segments": segments}, sort_keys=False))
    return tmp_path


def matching(url: str, tmp_path: Path, spec: dict[str, Any]) -> set[str]:
    """The leads of a one-segment file, by key: the count and the listed page must agree."""
    segment = load_segments(_segments(tmp_path, {"s": spec})).find("s")
    with session_scope(url) as session:
        where = condition(session, segment)
        count = crud.count_leads(session=session, where=where)
        listed = {lead["email"].split("@")[0] for lead in list_page(session, lead_filters(limit=500), where=where)["leads"]}
    assert count == len(listed), (spec, count, listed)
    return listed


@pytest.mark.parametrize(("spec", "expected"), [
    ({"stage": "lead"}, {"bob", "cleo"}),
    ({"stage": ["mql", "sql"]}, {"ann", "dan"}),
    ({"grade": ["a", "B"]}, {"ann", "cleo"}),
    ({"temperature": "hot"}, {"ann", "dan"}),
    ({"status": ["bounced", "unsubscribed"]}, {"cleo", "dan"}),
    ({"score": {"gte": 30}}, {"ann", "bob", "dan"}),
    ({"score": {"gt": 10, "lt": 60}}, {"ann", "bob"}),
    ({"campaign": {"in": "b2b-trial"}}, {"ann"}),
    ({"campaign": {"in": ["b2b-trial", "recycled-nurture"]}}, {"ann", "dan"}),
    ({"campaign": {"completed": "b2b-trial"}}, {"bob"}),
    ({"did": {"event": "email_click"}}, {"ann", "bob"}),
    ({"did": {"event": "email_click", "within": "14d"}}, {"ann"}),
    ({"did": {"event": "email_click", "where": {"url": {"contains": "/blog"}}}}, {"bob"}),
    ({"did": {"event": "form_submit", "where": {"form": "demo-request"}, "within": "1w"}}, {"cleo"}),
    ({"did": [{"event": "email_click"}, {"event": "page_view", "within": "2d"}]}, {"ann"}),
    ({"not_did": {"event": "email_click"}}, {"cleo", "dan", "eve"}),
    ({"not_did": {"event": "email_click", "within": "14d"}}, {"bob", "cleo", "dan", "eve"}),
    ({"not_did": {"event": "email_open", "within": "30d"}, "status": "subscribed"}, {"ann", "bob", "eve"}),
    ({"where": {"country": "fr"}, "score": {"gte": 30}, "stage": ["lead", "mql"]}, {"ann", "bob"}),
    ({}, {"ann", "bob", "cleo", "dan", "eve"}),
])
def test_each_condition_kind_selects_the_right_leads(store, tmp_path, spec, expected):
    assert matching(store, tmp_path, spec) == expected


WHERES = [
    {"country": "FR"}, {"country": ["de", "us"]}, {"company": {"contains": "CORP"}},
    {"company": {"startswith": "glo"}}, {"job_title": {"endswith": "SALES"}},
    {"job_title": {"matches": r"\bsales\b"}}, {"job_title": {"matches": "^(VP|CTO)"}},
    {"company_size": {"gte": 100}}, {"company_size": {"lt": 100}}, {"company_size": "120"},
    {"company": {"exists": True}}, {"company": {"exists": False}}, {"company": None},
    {"attributes.plan": "PRO"}, {"attributes.plan": {"in": ["free", "enterprise"]}},
    {"attributes.seats": 50}, {"attributes.seats": {"gte": 5}}, {"attributes.seats": {"gt": "m"}},
    {"attributes.tags": "beta"}, {"attributes.tags": {"contains": "web"}}, {"attributes.tags": {"exists": True}},
    {"attributes.trial": True}, {"attributes.trial": "yes"}, {"attributes.trial": False},
    {"attributes.missing": {"exists": False}}, {"source": ["web_form"], "country": "FR"},
    {"company_size": {"gte": 10, "lte": 200}},
]


@pytest.mark.parametrize("where", WHERES, ids=[yaml.safe_dump(w, default_flow_style=True).strip() for w in WHERES])
def test_a_where_in_sql_selects_what_the_python_rules_select(store, tmp_path, where):
    expected = {_key(email) for email, profile, attributes, _ in LEADS
                if rules.match_where(where, {"email": email, **{name: None for name in PROFILE}, **profile,
                                             "attributes": attributes})}
    assert matching(store, tmp_path, {"where": where}) == expected


def test_the_where_cases_tell_leads_apart():
    """Most cases select some leads and leave others out (a case matching all or none proves little)."""
    chosen = [{_key(email) for email, profile, attributes, _ in LEADS
               if rules.match_where(where, {"email": email, **profile, "attributes": attributes})} for where in WHERES]
    assert sum(0 < len(keys) < len(LEADS) for keys in chosen) >= len(WHERES) - 3


def test_a_forgotten_lead_is_in_no_segment(store, tmp_path):
    with session_scope(store) as session:
        lead = crud.get_lead(session=session, email="eve@fr.example")
        lead.email = None
        session.add(lead)
    assert matching(store, tmp_path, {}) == {"ann", "bob", "cleo", "dan"}


def test_segment_show_count_and_lead_list_segment_as_a_user_runs_them(store, tmp_path):
    """Subprocesses on the store (Temporal at a closed port: neither needs it)."""
    import json
    import os
    import subprocess
    import sys

    campaigns = _segments(tmp_path, {"clicked": {"did": {"event": "email_click"}}, "fr": {"where": {"country": "FR"}}})
    env = {**os.environ, "NURTURE_HOME": str(tmp_path), "NURTURE_DATABASE_URL": store,
           "NURTURE_CAMPAIGNS_DIR": str(campaigns), "NURTURE_TEMPORAL_ADDRESS": "127.0.0.1:9"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nurture.cli", *args], capture_output=True, text=True, env=env,
                              timeout=60)

    shown = cli("segment", "show", "clicked", "--count", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"name": "clicked", "definition": {"did": [{"event": "email_click"}]}, "count": 2}
    assert cli("segment", "show", "fr", "--count").stdout.splitlines() == ["fr: {where: {country: FR}}", "3 leads"]
    listed = json.loads(cli("lead", "list", "--segment", "fr", "--stage", "lead", "--json").stdout)
    assert [lead["email"] for lead in listed["leads"]] == ["bob@fr.example"]
    names = [row["name"] for row in json.loads(cli("segment", "list", "--json").stdout)]
    assert names == ["clicked", "fr"]
    for args in (("segment", "show", "frr"), ("lead", "list", "--segment", "frr")):
        refused = cli(*args)
        assert refused.returncode == 1 and refused.stderr == "error: unknown segment 'frr' (did you mean 'fr'?)\n"
    (campaigns / "segments.yaml").write_text("segments:\n  fr: {where: {contry: FR}}\n")
    for args in (("segment", "list"), ("segment", "show", "fr", "--count"), ("lead", "list", "--segment", "fr")):
        broken = cli(*args)
        assert broken.returncode == 1 and broken.stderr.startswith(
            f"error: {campaigns}/segments.yaml:2: segments.fr.where.contry: unknown lead field 'contry'"), broken.stderr
        assert len(broken.stderr.splitlines()) == 1


# ---------------------------------------------------------------- the file


def test_problems_name_file_line_path_and_the_closest_word(tmp_path):
    path = tmp_path / "segments.yaml"
    path.write_text(
        "segments:\n"
        "  a: {where: {contry: FR}}\n"
        "  b:\n"
        "    stage: [leed]\n"
        "    grade: Z\n"
        "    temprature: hot\n"
        "  c: {score: {gtx: 3}, campaign: {}}\n"
        "  d: {not_did: {event: email_open, where: {ur: x}, within: 3 parsecs}}\n"
        "  e: {did: {within: 2d}}\n")
    lines = [str(problem) for problem in validate_paths([path], None)]
    assert f"{path}:2: segments.a.where.contry: unknown lead field 'contry' (did you mean 'country'?)" in "\n".join(lines)
    assert f"{path}:4: segments.b.stage: unknown stage 'leed' (did you mean 'lead'?)" in lines
    assert f"{path}:5: segments.b.grade: unknown grade 'Z' (expected one of: A, B, C, D, F)" in lines
    assert f"{path}:6: segments.b.temprature: unknown key 'temprature' (did you mean 'temperature'?)" in lines
    assert f"{path}:7: segments.c.score: unknown score operator 'gtx' (did you mean 'gt'?)" in lines
    assert any(line.startswith(f"{path}:7: segments.c.campaign") and "in: NAME" in line for line in lines), lines
    assert f"{path}:8: segments.d.not_did.where.ur: unknown event field 'ur' (did you mean 'url'?)" in lines
    assert any(line.startswith(f"{path}:8: segments.d.not_did.within: invalid duration '3 parsecs'") for line in lines)
    assert any(line.startswith(f"{path}:9: segments.e.did") and "event" in line for line in lines), lines
    with pytest.raises(CampaignError):
        load_segments(tmp_path)


def test_an_unknown_segment_is_one_line_with_the_closest_name(tmp_path):
    settings = make_settings(tmp_path, campaigns_dir=_segments(tmp_path, {"hot-fr": {"stage": "mql"}}))
    with pytest.raises(AudienceError) as raised:
        find(settings, "hot-f")
    assert str(raised.value) == "unknown segment 'hot-f' (did you mean 'hot-fr'?)"
    (tmp_path / "segments.yaml").unlink()
    with pytest.raises(AudienceError) as raised:
        find(settings, "hot-fr")
    assert str(raised.value) == f"unknown segment 'hot-fr' (no segments: {tmp_path}/segments.yaml does not exist)"


def test_the_sample_segments_are_valid_and_do_not_count_as_campaigns():
    assert validate_paths([CAMPAIGNS], None) == []
    assert sorted(load_segments(CAMPAIGNS).by_name) == ["clicked-recently", "hot-fr", "never-opened"]


def test_a_campaign_named_by_a_segment_but_in_no_file_is_a_warning(tmp_path):
    shutil.copy(CAMPAIGNS / "b2b-trial.yaml", tmp_path / "b2b-trial.yaml")
    _segments(tmp_path, {"in-trial": {"campaign": {"in": "b2b-trail"}}, "through": {"campaign": {"completed": "b2b-trial"}}})
    problems = validate_paths([tmp_path], None)
    assert [p.severity for p in problems] == ["warning"]
    assert str(problems[0]).endswith("segments.yaml:4: segments.in-trial.campaign.in: warning: unknown campaign 'b2b-trail' "
                                     "(did you mean 'b2b-trial'?): it matches no lead")
