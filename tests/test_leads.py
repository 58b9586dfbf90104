"""What is stored, shown (issue 18.5): `nurture lead show` and `GET /v1/leads/{email}`
carry every profile field and the attributes; `nurture lead list` and `GET /v1/leads`
filter and page through the leads, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from nurture import crud, journey
from nurture.leads import encode_cursor
from tests.conftest import _stack, make_settings
from tests.test_webhooks import serve

AUTH = {"Authorization": "Bearer test-key"}
PROFILE = {"first_name": "Ann", "last_name": "Lee", "company": "Acme 100%_Corp", "job_title": "VP Sales",
           "company_size": 120, "country": "FR", "timezone": "Europe/Paris", "locale": "fr-FR",
           "source": "trade_show", "attributes": {"badge": "blue", "notes": "met at booth 12"}}
# (email, profile fields, projected state): seven leads, in the order they are stored.
LEADS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("ann@acme.example", PROFILE, {"stage": "mql", "grade": "A", "temperature": "hot", "campaign": "b2b-trial"}),
    ("bob@globex.example", {"first_name": "Bob", "company": "Globex"}, {"stage": "lead", "grade": "C"}),
    ("cy@acme.example", {"first_name": "Cy", "company": "Acme"}, {"stage": "mql", "grade": "B", "temperature": "warm"}),
    ("dee@initech.example", {"last_name": "Annan"}, {"stage": "lead", "status": "unsubscribed"}),
    ("eli@acme.example", {}, {"stage": "mql", "grade": "A", "temperature": "hot", "campaign": "b2b-trial"}),
    ("fay@hooli.example", {"company": "Hooli"}, {"stage": "sql", "grade": "A", "temperature": "hot"}),
    ("gus@acme.example", {"company": "Acme"}, {"stage": "mql", "grade": "A", "temperature": "hot", "campaign": "b2b-trial"}),
]


def seed(url: str) -> None:
    """The leads as the import or a form stores them, and the workflow's projection."""
    with crud_session(url) as session:
        for version, (email, profile, state) in enumerate(LEADS, start=1):
            key = journey.lead_key(email)
            crud.upsert_lead(session=session, key=key, email=email, profile={"attributes": {}, **profile})
            crud.apply_projection(session=session, key=key, version=version, fields=state)


def crud_session(url: str) -> Any:
    from nurture.db import session_scope

    return session_scope(url)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request, temporal_env, tmp_path):
    """A stack (worker, service) over a seeded store of either kind."""
    overrides = {} if request.param == "sqlite" else {"database_url": request.getfixturevalue("postgres_url")}
    async with _stack(temporal_env, make_settings(tmp_path, **overrides)) as stack:
        seed(stack.settings.db_url)
        yield stack


def emails(page: dict[str, Any]) -> list[str]:
    return [lead["email"] for lead in page["leads"]]


# ---------------------------------------------------------------- HTTP


async def test_get_leads_filters_searches_and_pages_over_http(store):
    async with serve(store) as http:
        async def get(**params: Any) -> dict[str, Any]:
            answer = await http.get("/v1/leads", headers=AUTH, params=params)
            assert answer.status_code == 200, answer.text
            return answer.json()

        assert emails(await get()) == [email for email, _, _ in LEADS]
        assert emails(await get(stage="mql", grade="A", temperature="hot", campaign="b2b-trial")) == [
            "ann@acme.example", "eli@acme.example", "gus@acme.example"]
        assert emails(await get(status="unsubscribed")) == ["dee@initech.example"]
        assert emails(await get(grade="a", stage="sql")) == ["fay@hooli.example"]  # a grade in either case
        # q: address, first and last name, company; case-insensitive; % and _ are plain characters
        assert emails(await get(q="ANN")) == ["ann@acme.example", "dee@initech.example"]
        assert emails(await get(q="acme")) == ["ann@acme.example", "cy@acme.example", "eli@acme.example",
                                               "gus@acme.example"]
        assert emails(await get(q="100%_c")) == ["ann@acme.example"]
        assert emails(await get(q="1%0")) == []  # as a LIKE pattern it would match "100"

        # Pages of two: every lead once, in order, then no cursor; a lead stored meanwhile comes last.
        seen, cursor, pages = [], None, 0
        while True:
            page = await get(limit=2, **({"cursor": cursor} if cursor else {}))
            seen += emails(page)
            pages += 1
            cursor = page["next_cursor"]
            if pages == 2:
                with crud_session(store.settings.db_url) as session:
                    crud.upsert_lead(session=session, key=journey.lead_key("zoe@acme.example"),
                                     email="zoe@acme.example", profile={"attributes": {}})
            if cursor is None:
                break
        assert seen == [email for email, _, _ in LEADS] + ["zoe@acme.example"] and pages == 4
        last = await get(limit=8)
        assert len(last["leads"]) == 8 and last["next_cursor"] is None

        (ann,) = (await get(q="ann@")).get("leads")
        shown = (await http.get("/v1/leads/ann@acme.example", headers=AUTH)).json()
        for name, value in PROFILE.items():
            assert ann[name] == value and shown[name] == value, name
        assert {k: v for k, v in shown.items() if k != "history"} == ann  # one document, with history added


@pytest.mark.parametrize(("params", "field"), [
    ({"stage": "hot"}, "stage"), ({"grade": "E"}, "grade"), ({"temperature": "tepid"}, "temperature"),
    ({"status": "gone"}, "status"), ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"),
    ({"limit": "ten"}, "limit"), ({"cursor": "not-a-cursor"}, "cursor"), ({"cursor": encode_cursor(1) + "!"}, "cursor"),
    ({"q": "x" * 201}, "q"), ({"q": "a\x00b"}, "q"), ({"campaign": "b\x1b[31m"}, "campaign"),
    ({"segment": "hot-fr"}, "segment"), ({"colour": "red"}, "colour"),
])
async def test_bad_list_parameters_get_a_400_naming_the_field(store, params, field):
    async with serve(store) as http:
        answer = await http.get("/v1/leads", headers=AUTH, params=params)
        assert answer.status_code == 400, answer.text
        assert answer.json()["field"] == field and answer.json()["error"]
        assert (await http.get("/v1/leads")).status_code == 401


# ---------------------------------------------------------------- the command line


def cli_env(stack) -> dict[str, str]:
    env = {**os.environ, "NURTURE_HOME": str(stack.settings.home), "NURTURE_DATABASE_URL": stack.settings.db_url,
           "NURTURE_TEMPORAL_ADDRESS": "127.0.0.1:1", "NURTURE_CAMPAIGNS_DIR": str(stack.settings.campaigns_dir)}
    env.pop("SENDGRID_API_KEY", None)
    return env


async def nurture(stack, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "nurture.cli", *args],
                                   capture_output=True, text=True, env=cli_env(stack), timeout=60)


async def test_lead_list_and_show_from_the_command_line_without_temporal(store):
    """Reads need only the store: Temporal here is an address nothing listens on."""
    listed = await nurture(store, "lead", "list", "--stage", "mql", "--campaign", "b2b-trial", "--limit", "2", "--json")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert emails(page) == ["ann@acme.example", "eli@acme.example"] and page["next_cursor"]
    rest = await nurture(store, "lead", "list", "--stage", "mql", "--campaign", "b2b-trial", "--json",
                         "--cursor", page["next_cursor"])
    assert json.loads(rest.stdout) == {"leads": json.loads(rest.stdout)["leads"], "next_cursor": None}
    assert emails(json.loads(rest.stdout)) == ["gus@acme.example"]

    table = await nurture(store, "lead", "list", "--q", "acme", "--grade", "A", "--limit", "1")
    assert table.returncode == 0, table.stderr
    assert "ann@acme.example" in table.stdout and "eli@" not in table.stdout
    assert "1 lead(s); more with --cursor " in table.stdout

    shown = await nurture(store, "lead", "show", "ann@acme.example")
    assert shown.returncode == 0, shown.stderr
    for text in ("job title VP Sales", "company size 120", "country FR", "timezone Europe/Paris",
                 "locale fr-FR", "source trade_show", "attributes badge=blue  notes=met at booth 12"):
        assert text in shown.stdout, shown.stdout
    document = json.loads((await nurture(store, "lead", "show", "ann@acme.example", "--json")).stdout)
    assert {name: document[name] for name in PROFILE} == PROFILE


@pytest.mark.parametrize(("args", "says"), [
    (("--stage", "hot"), "--stage: 'hot' is not one of visitor, lead, mql"),
    (("--status", "gone"), "--status: 'gone' is not one of subscribed"),
    (("--limit", "0"), "--limit: '0' is not a whole number from 1 to 500"),
    (("--cursor", "abc"), "--cursor: not a cursor from an earlier page"),
])
async def test_bad_list_options_get_one_line_naming_the_option(store, args, says):
    result = await nurture(store, "lead", "list", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and says in result.stderr, result.stderr


def test_lead_list_loads_no_temporal_code(tmp_path):
    """A read command stays quick: listing leads needs the store, never the Temporal SDK."""
    probe = ("import sys\nfrom nurture.cli import app\n"
             "app(args=['lead', 'list', '--json'], standalone_mode=False)\n"
             "print('temporalio loaded' if 'temporalio' in sys.modules else 'no temporalio', file=sys.stderr)\n")
    env = {**os.environ, "NURTURE_HOME": str(tmp_path), "NURTURE_DATABASE_URL": f"sqlite:///{tmp_path / 'n.db'}"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"leads": [], "next_cursor": None}
    assert result.stderr.strip().endswith("no temporalio"), result.stderr
