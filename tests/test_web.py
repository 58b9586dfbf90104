"""The web app over real HTTP (uvicorn on loopback): sign-in, sessions, CSRF, the throttle,
the route guard, the lead pages and the sales pages, on real journeys."""

from __future__ import annotations

import csv
import email as email_lib
import io
import json
import os
import re
import subprocess
import sys
from email import policy
from datetime import timedelta, timezone
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx

from nurture import crud, journey, security, users
from nurture.models import Lead
from nurture.web import auth, leads
from tests.conftest import Stack, _stack, make_settings
from tests.test_handoff import handoff_of, to_sql
from tests.test_webhooks import serve

PASSWORD = "correct horse battery"
MARKETER, REP, OTHER_REP, ADMIN = "mia@acme.example", "alice@acme.example", "bob@acme.example", "ada@acme.example"


def add_user(stack: Stack, email: str, role: str, password: str = PASSWORD) -> None:
    with stack.session() as session:
        assert crud.add_user(session=session, email=email, role=role, password_hash=users.hash_password(password))


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


async def sign_in(http: httpx.AsyncClient, email: str, password: str = PASSWORD, next_: str = "/") -> httpx.Response:
    form = await http.get("/login")
    assert form.status_code == 200
    return await http.post("/login", data={"email": email, "password": password, "csrf_token": csrf_of(form.text),
                                           "next": next_})


async def page_csrf(http: httpx.AsyncClient, path: str) -> str:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    return csrf_of(response.text)


def store_lead(stack: Stack, email: str, **fields: Any) -> Lead:
    """A lead row written straight to the store (list pages read only the store)."""
    with stack.session() as session:
        lead, _ = crud.upsert_lead(session=session, key=journey.lead_key(email), email=email, profile={})
        for name, value in fields.items():
            setattr(lead, name, value)
        session.add(lead)
        session.flush()
        return lead


def page_routes(routes: list[Any]) -> list[tuple[str, set[str]]]:
    """(path, methods) of every route of the app, included routers walked into."""
    found: list[tuple[str, set[str]]] = []
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's included router
            found.extend(page_routes(route.original_router.routes))
        elif getattr(route, "methods", None):
            found.append((route.path, set(route.methods)))
    return found


# ---------------------------------------------------------------- the guard


async def test_every_route_but_the_public_ones_refuses_an_anonymous_request(stack):
    public = {"/healthz", "/metrics", "/login", "/webhooks/sendgrid", "/u/{token}", "/h/{token}"}  # contract 6
    from nurture.api import create_app

    async with serve(stack) as http:
        routes = page_routes(create_app(stack.settings, stack.client).routes)
        guarded = [(path, methods) for path, methods in routes if not auth.is_public(path)]
        assert {path for path, _ in routes if auth.is_public(path) and not path.startswith("/v1/")} == public
        assert {"/", "/leads", "/leads.csv", "/leads/{email}", "/handoffs", "/handoffs/{handoff_id}",
                "/logout", "/docs", "/openapi.json"} <= {path for path, _ in guarded}
        for path, methods in guarded:
            concrete = re.sub(r"\{[^}]+\}", "1", path)
            for method in methods - {"HEAD"}:
                response = await http.request(method, concrete, data={"confirm": "forget", "outcome": "accept"})
                assert response.status_code == 303, (method, path, response.status_code)
                assert response.headers["location"].startswith("/login?next=")
        assert (await http.get("/leads?stage=mql")).headers["location"] == "/login?next=%2Fleads%3Fstage%3Dmql"
        assert (await http.get("/no-such-page")).status_code == 303  # unknown paths leak nothing either


async def test_a_page_added_later_is_guarded_without_doing_anything(stack):
    from nurture.api import create_app

    app = create_app(stack.settings, stack.client)

    @app.get("/reports/secret")
    def secret() -> dict[str, str]:
        return {"leads": "everyone's addresses"}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await http.get("/reports/secret")
    assert response.status_code == 303 and "everyone" not in response.text


# ---------------------------------------------------------------- sign-in


async def test_sign_in_sets_a_signed_http_only_lax_session_and_sign_out_ends_it(stack):
    add_user(stack, MARKETER, "marketer")
    async with serve(stack) as http:
        assert (await http.get("/leads")).status_code == 303
        response = await sign_in(http, "Mia@Acme.example", next_="/leads?stage=mql")
        assert response.status_code == 303 and response.headers["location"] == "/leads?stage=mql"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{auth.SESSION_COOKIE}=") and "HttpOnly" in cookie
        assert "samesite=lax" in cookie.lower() and "Secure" not in cookie  # http public URL
        page = await http.get("/leads")
        assert page.status_code == 200 and MARKETER in page.text and "Sign out" in page.text
        # an edited cookie is no session
        token = http.cookies[auth.SESSION_COOKIE]
        forged = {auth.SESSION_COOKIE: token[:-2] + ("AA" if token[-2:] != "AA" else "BB")}
        async with httpx.AsyncClient(base_url=http.base_url, cookies=forged) as intruder:
            assert (await intruder.get("/leads")).status_code == 303
        logout = await http.post("/logout", data={"csrf_token": csrf_of(page.text)})
        assert logout.status_code == 303 and logout.headers["location"] == "/login"
        assert (await http.get("/leads")).status_code == 303


async def test_a_wrong_password_is_shown_at_its_field_and_sets_no_session(stack):
    add_user(stack, MARKETER, "marketer")
    async with serve(stack) as http:
        response = await sign_in(http, MARKETER, "wrong password")
        assert response.status_code == 401 and auth.SESSION_COOKIE not in response.headers.get("set-cookie", "")
        assert re.search(r'id="password-error">Wrong email address or password', response.text)
        unknown = await sign_in(http, "nobody@acme.example")
        assert unknown.status_code == 401  # the same answer: which addresses have accounts is not told
        assert (await sign_in(http, MARKETER, next_="//evil.example/")).headers["location"] == "/"


async def test_a_removed_user_is_signed_out_at_once(stack):
    add_user(stack, MARKETER, "marketer")
    async with serve(stack) as http:
        await sign_in(http, MARKETER)
        assert (await http.get("/leads")).status_code == 200
        with stack.session() as session:
            assert crud.remove_user(session=session, email=MARKETER)
        assert (await http.get("/leads")).status_code == 303


async def test_the_session_cookie_is_secure_when_the_public_url_is_https(temporal_env, tmp_path):
    settings = make_settings(tmp_path, public_url="https://nurture.acme.example")
    async with _stack(temporal_env, settings) as stack, serve(stack) as http:
        add_user(stack, MARKETER, "marketer")
        form = await http.get("/login")
        assert "Secure" in form.headers["set-cookie"]  # the form's nonce too
        nonce = form.headers["set-cookie"].split(";", 1)[0]  # over http here, the client would not send it back
        response = await http.post("/login", headers={"Cookie": nonce},
                                   data={"email": MARKETER, "password": PASSWORD, "csrf_token": csrf_of(form.text)})
        assert response.status_code == 303 and "Secure" in response.headers["set-cookie"]


async def test_ten_failures_for_an_account_or_an_address_refuse_sign_in_for_ten_minutes(stack):
    add_user(stack, REP, "sales")
    add_user(stack, OTHER_REP, "sales")
    async with serve(stack) as http, serve(stack) as second_process:
        for attempt in range(10):
            client = http if attempt % 2 else second_process  # two API processes, one store
            assert (await sign_in(client, REP, "guess %d" % attempt)).status_code == 401
        assert (await sign_in(http, REP)).status_code == 429  # right password, still refused
        assert (await sign_in(http, OTHER_REP)).status_code == 429  # same address (127.0.0.1)
        elsewhere = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=elsewhere, base_url=http.base_url) as other:
            assert (await sign_in(other, REP)).status_code == 429  # same account
            assert (await sign_in(other, OTHER_REP)).status_code == 303


def test_the_throttle_lasts_ten_minutes_from_the_tenth_failure():
    from datetime import datetime, timedelta, timezone

    start = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)
    minute = timedelta(minutes=1)
    nine = [start + i * minute for i in range(9)]
    assert users.locked_until(nine, start + 9 * minute) is None
    ten = [*nine, start + 9 * minute]
    assert users.locked_until(ten, start + 10 * minute) == start + 19 * minute
    assert users.locked_until(ten, start + 19 * minute) is None
    spread = [start + i * 2 * minute for i in range(10)]  # ten failures over 18 minutes
    assert users.locked_until(spread, start + 19 * minute) is None


# ---------------------------------------------------------------- CSRF


async def test_a_post_without_a_valid_csrf_token_gets_403_and_changes_nothing(stack):
    add_user(stack, MARKETER, "marketer")
    await stack.add("ann@globex.example", first_name="Ann")
    async with serve(stack) as http:
        await http.get("/login")  # the form's nonce cookie is there; the token is not posted
        no_token = await http.post("/login", data={"email": MARKETER, "password": PASSWORD})
        assert no_token.status_code == 403 and auth.SESSION_COOKIE not in no_token.headers.get("set-cookie", "")
        assert "Refused" in no_token.text
        await sign_in(http, MARKETER)
        for data in ({"confirm": "forget"}, {"confirm": "forget", "csrf_token": "forged"}):
            response = await http.post("/leads/ann@globex.example/forget", data=data)
            assert response.status_code == 403 and "nothing was changed" in response.text
        other = httpx.AsyncClient(base_url=http.base_url)  # another user's token is no token either
        async with other:
            add_user(stack, ADMIN, "admin")
            await sign_in(other, ADMIN)
            theirs = await page_csrf(other, "/leads")
        assert (await http.post("/leads/ann@globex.example/forget",
                                data={"confirm": "forget", "csrf_token": theirs})).status_code == 403
        assert stack.show("ann@globex.example")["first_name"] == "Ann"


# ---------------------------------------------------------------- leads


async def test_leads_search_filters_pages_and_exports_the_same_query(stack, monkeypatch):
    monkeypatch.setattr(leads, "PAGE_SIZE", 2)
    add_user(stack, MARKETER, "marketer")
    store_lead(stack, "ann@globex.example", first_name="Ann", company="Globex", stage="mql", grade="A")
    store_lead(stack, "bob@globex.example", first_name="=HYPERLINK(\"http://evil\")", company="Globex", stage="mql")
    store_lead(stack, "cid@initech.example", first_name="Cid", company="Initech", stage="mql", campaign="b2b-trial")
    store_lead(stack, "dee@globex.example", first_name="Dee", company="@Globex", stage="lead")
    async with serve(stack) as http:
        await sign_in(http, MARKETER)
        first = await http.get("/leads", params={"stage": "mql"})
        assert first.status_code == 200
        shown = re.findall(r'<a href="/leads/([^"]+)">', first.text)
        assert shown == ["ann%40globex.example", "bob%40globex.example"]
        next_url = re.search(r'<a href="([^"]+)" rel="next">', first.text).group(1).replace("&amp;", "&")
        second = await http.get(next_url)
        assert re.findall(r'<a href="/leads/([^"]+)">', second.text) == ["cid%40initech.example"]
        assert 'rel="next"' not in second.text
        found = await http.get("/leads", params={"q": "GLOBEX"})  # address, name or company, any case
        assert re.findall(r'<a href="/leads/([^"]+)">', found.text) == ["ann%40globex.example", "bob%40globex.example"]
        assert re.findall(r'<a href="/leads/([^"]+)">', (await http.get("/leads", params={"q": "cid"})).text) == [
            "cid%40initech.example"]
        assert "cid@initech.example" in (await http.get("/leads", params={"campaign": "b2b-trial"})).text
        bad = await http.get("/leads", params={"grade": "Z"})
        assert bad.status_code == 400 and re.search(r'id="f-grade-error">unknown grade', bad.text)
        exported = await http.get("/leads.csv", params={"q": "globex"})
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [r["email"] for r in rows] == ["ann@globex.example", "bob@globex.example", "dee@globex.example"]
        assert rows[1]["first_name"] == "'=HYPERLINK(\"http://evil\")" and rows[2]["company"] == "'@Globex"
        assert rows[0]["first_name"] == "Ann"


async def test_a_lead_page_shows_where_it_is_why_and_its_score_over_time(stack):
    add_user(stack, MARKETER, "marketer")
    email = "ann@globex.example"
    await stack.add(email, first_name="<b>Ann</b>", company="Globex", timezone="Europe/Paris", source="web_form",
                    attributes={"plan": "trial"})
    await stack.nurture.ingest_events([{"email": email, "type": "content_download", "asset": "guide.pdf"}])
    lead = await stack.until(email, lambda lead: lead["waiting_for"] is not None, step=timedelta(hours=1))
    async with serve(stack) as http:
        await sign_in(http, MARKETER)
        page = await http.get(f"/leads/{email}")
        assert page.status_code == 200
        html = page.text
        assert "&lt;b&gt;Ann&lt;/b&gt;" in html and "<b>Ann</b>" not in html
        assert "<svg" in html and 'role="img"' in html and "<path" in html
        assert (f"Campaign <strong>{lead['campaign']}</strong>, step <strong>{lead['step']}</strong>, "
                f"waiting for {lead['waiting_for']} until ") in html
        assert "Europe/Paris" in html and " UTC" in html  # until when: the lead's zone and UTC
        assert "plan" in html and "trial" in html and "content_download" in html
        assert "at (Europe/Paris)" in html
        missing = await http.get("/leads/nobody@globex.example")
        assert missing.status_code == 404 and "No such lead" in missing.text
        assert (await http.get("/leads/not-an-address")).status_code == 404


async def test_marketers_enroll_and_forget_from_the_lead_page(stack):
    add_user(stack, MARKETER, "marketer")
    email = "ann@globex.example"
    await stack.add(email, first_name="Ann")
    assert (await stack.add(email, source="web_form"))["campaign"] is None  # matches b2b-trial only now
    async with serve(stack) as http:
        await sign_in(http, MARKETER)
        token = await page_csrf(http, f"/leads/{email}")
        refused = await http.post(f"/leads/{email}/enroll", data={"csrf_token": token, "campaign": "no-such"})
        assert refused.status_code == 409 and 'id="campaign-error"' in refused.text
        empty = await http.post(f"/leads/{email}/enroll", data={"csrf_token": token, "campaign": ""})
        assert empty.status_code == 400 and "Choose a campaign." in empty.text
        done = await http.post(f"/leads/{email}/enroll", data={"csrf_token": token, "campaign": "b2b-trial"})
        assert done.status_code == 303, done.text
        assert stack.show(email)["campaign"] == "b2b-trial"
        assert "Remove from campaign" in (await http.get(f"/leads/{email}")).text
        unsigned = await http.post(f"/leads/{email}/remove", data={})
        assert unsigned.status_code == 403 and stack.show(email)["campaign"] == "b2b-trial"  # no CSRF token
        removed = await http.post(f"/leads/{email}/remove", data={"csrf_token": token})
        assert removed.status_code == 303 and removed.headers["location"].endswith("?done=removed")
        shown = stack.show(email)
        assert shown["campaign"] is None
        assert any(h["reason"] == "left campaign b2b-trial: removed" for h in shown["history"])
        assert any(h["reason"] == f"removed from b2b-trial by {MARKETER}" for h in shown["history"])
        page = await http.get(removed.headers["location"])
        assert "Removed from the campaign." in page.text and "Remove from campaign" not in page.text
        again = await http.post(f"/leads/{email}/remove", data={"csrf_token": token})
        assert again.status_code == 409 and 'id="remove-error"' in again.text and "not in a campaign" in again.text
        confirm = await http.get(f"/leads/{email}/forget")
        assert confirm.status_code == 200 and "cannot be undone" in confirm.text
        assert stack.show(email)["first_name"] == "Ann"  # the GET changed nothing
        unconfirmed = await http.post(f"/leads/{email}/forget", data={"csrf_token": token})
        assert unconfirmed.status_code == 303 and stack.show(email)["first_name"] == "Ann"
        forgotten = await http.post(f"/leads/{email}/forget", data={"csrf_token": token, "confirm": "forget"})
        assert forgotten.status_code == 200 and "Lead forgotten" in forgotten.text
    with stack.session() as session:
        assert crud.get_lead(session=session, email=email) is None


async def test_pages_show_times_in_the_viewers_zone_chosen_on_their_account_page(stack):
    """Contract 7: times in the viewer's zone, the zone named. The handoff was created at a
    known UTC instant; the inbox shows it in Asia/Tokyo (+9), then in America/New_York."""
    email = "tom@wayne.example"
    await to_sql(stack, email, first_name="Tom")
    handoff = handoff_of(stack, email)
    with stack.session() as session:
        assert crud.add_user(session=session, email=ADMIN, role="admin", password_hash=users.hash_password(PASSWORD),
                             timezone="Asia/Tokyo")
    created = handoff.created_at.replace(tzinfo=handoff.created_at.tzinfo or timezone.utc)
    in_zone = {zone: f"{created.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M}" for zone in ("Asia/Tokyo", "America/New_York")}
    async with serve(stack) as http:
        await sign_in(http, ADMIN)
        inbox = (await http.get("/handoffs")).text
        assert "created (Asia/Tokyo)" in inbox and in_zone["Asia/Tokyo"] in inbox
        account = await http.get("/account")
        assert account.status_code == 200 and '<option value="Asia/Tokyo" selected>' in account.text
        token = csrf_of(account.text)
        assert (await http.post("/account", data={"timezone": "America/New_York"})).status_code == 403  # no CSRF
        bad = await http.post("/account", data={"csrf_token": token, "timezone": "Nowhere/Else"})
        assert bad.status_code == 400 and 'id="timezone-error"' in bad.text and "unknown time zone" in bad.text
        saved = await http.post("/account", data={"csrf_token": token, "timezone": "America/New_York"})
        assert saved.status_code == 303 and saved.headers["location"] == "/account?done=saved"
        inbox = (await http.get("/handoffs")).text
        assert "created (America/New_York)" in inbox and in_zone["America/New_York"] in inbox
    with stack.session() as session:
        assert crud.get_user(session=session, email=ADMIN).timezone == "America/New_York"


# ---------------------------------------------------------------- sales


def handoff_email_link(stack: Stack, email: str) -> str:
    """The /h/ link of the (newest) handoff email about this lead, from the outbox file."""
    with stack.session() as session:
        sends = [e for e in crud.emails_of(session=session, key=journey.lead_key(email)) if e.template == "sales_handoff"]
    raw = (stack.settings.outbox_dir / f"{sends[-1].send_id}.eml").read_bytes()
    message = email_lib.message_from_bytes(raw, policy=policy.default)
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "nurture handoff list" not in text and "nurture handoff list" not in html
    (link,) = set(re.findall(r"https?://\S+/h/[\w.-]+", text))
    assert f'href="{link}"' in html
    return urlsplit(link).path


async def test_a_rep_accepts_from_the_email_link_and_a_get_changes_nothing(stack):
    email = "vic@wayne.example"
    await to_sql(stack, email, first_name="Vic")
    handoff = handoff_of(stack, email)
    path = handoff_email_link(stack, email)
    async with serve(stack) as http:
        page = await http.get(path)  # no sign-in: the link is the rep's key to this one handoff
        assert page.status_code == 200 and email in page.text and "Accept" in page.text
        assert handoff_of(stack, email).status == "open" and stack.show(email)["stage"] == "sql"
        token = csrf_of(page.text)
        no_reason = await http.post(path, data={"csrf_token": token, "outcome": "reject", "reason": " "})
        assert no_reason.status_code == 400 and 'id="reason-reject-error"' in no_reason.text
        assert (await http.post(path, data={"outcome": "accept"})).status_code == 403
        assert handoff_of(stack, email).status == "open"
        done = await http.post(path, data={"csrf_token": token, "outcome": "accept"})
        assert done.status_code == 200 and "opportunity" in done.text
        assert stack.show(email)["stage"] == "opportunity" and handoff_of(stack, email).status == "accepted"
        void = await http.get(path)  # closed: the link is void
        assert void.status_code == 410 and "no longer works" in void.text
        again = await http.post(path, data={"csrf_token": token, "outcome": "lost", "reason": "late"})
        assert again.status_code == 410 and stack.show(email)["stage"] == "opportunity"
        forged = security.handoff_url("", "another secret", handoff.id, handoff.owner)
        assert (await http.get(forged)).status_code == 404
        edited = security.handoff_url("", stack.settings.signing_secret(), handoff.id, OTHER_REP)
        assert (await http.get(edited)).status_code == 410  # signed for someone who is not the owner


async def test_the_inbox_shows_a_rep_theirs_and_admins_all_and_marketers_read_only(stack):
    for user, role in ((REP, "sales"), (OTHER_REP, "sales"), (ADMIN, "admin"), (MARKETER, "marketer")):
        add_user(stack, user, role)
    await to_sql(stack, "vic@wayne.example")
    await to_sql(stack, "wes@wayne.example")
    mine, theirs = handoff_of(stack, "vic@wayne.example"), handoff_of(stack, "wes@wayne.example")
    assert (mine.owner, theirs.owner) == (REP, OTHER_REP)  # round robin over the sample owners
    async with serve(stack) as http:
        await sign_in(http, REP)
        inbox = await http.get("/handoffs")
        assert "vic@wayne.example" in inbox.text and "wes@wayne.example" not in inbox.text
        assert (await http.get(f"/handoffs/{theirs.id}")).status_code == 403
        assert (await http.get("/leads/wes@wayne.example")).status_code == 403
        assert (await http.get("/leads/vic@wayne.example")).status_code == 200
        assert (await http.get("/leads")).headers["location"] == "/handoffs"
        assert (await http.get("/")).headers["location"] == "/handoffs"
        page = await http.get(f"/handoffs/{mine.id}")
        assert "Why now" in page.text and "BANT" in page.text and "quote_request".replace("_", " ") in page.text
        token = csrf_of(page.text)
        lost = await http.post(f"/handoffs/{mine.id}", data={"csrf_token": token, "outcome": "lost", "reason": ""})
        assert lost.status_code == 400 and 'id="reason-lost-error"' in lost.text
        assert (await http.post(f"/handoffs/{theirs.id}", data={"csrf_token": token, "outcome": "accept"})).status_code == 403
        accepted = await http.post(f"/handoffs/{mine.id}", data={"csrf_token": token, "outcome": "accept"})
        assert accepted.status_code == 303 and stack.show("vic@wayne.example")["stage"] == "opportunity"
        twice = await http.post(f"/handoffs/{mine.id}", data={"csrf_token": token, "outcome": "accept"})
        assert twice.status_code == 409 and "cannot accept it" in twice.text  # the workflow's own words
        assert (await http.get("/handoffs/999")).status_code == 404
    async with serve(stack) as http:
        await sign_in(http, MARKETER)
        every = await http.get(f"/handoffs/{theirs.id}")
        assert every.status_code == 200 and "Read-only" in every.text and 'name="outcome"' not in every.text
        read_only = await http.post(f"/handoffs/{theirs.id}", data={"csrf_token": csrf_of(every.text), "outcome": "accept"})
        assert read_only.status_code == 403 and handoff_of(stack, "wes@wayne.example").status == "open"
    async with serve(stack) as http:
        await sign_in(http, ADMIN)
        every = await http.get("/handoffs")
        assert "vic@wayne.example" in every.text and "wes@wayne.example" in every.text
        won = await http.post(f"/handoffs/{theirs.id}", data={"csrf_token": csrf_of(every.text), "outcome": "won"})
        assert won.status_code == 303 and stack.show("wes@wayne.example")["stage"] == "customer"


# ---------------------------------------------------------------- CLI


def run_cli(stack: Stack, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NURTURE_HOME": str(stack.settings.home), "NURTURE_DATABASE_URL": stack.settings.db_url}
    return subprocess.run([sys.executable, "-c", "from nurture.cli import main; main()", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_user_add_list_remove(tmp_path):
    stack = Stack(None, make_settings(tmp_path), None)  # type: ignore[arg-type]  # the CLI needs no Temporal
    added = run_cli(stack, "user", "add", "Ann@Acme.example", "--role", "sales", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert run_cli(stack, "user", "add", "ann@acme.example", "--role", "sales", "--password-stdin",
                   stdin=PASSWORD + "\n").stderr.startswith("error: ann@acme.example: a user with this address")
    bad_role = run_cli(stack, "user", "add", "x@acme.example", "--role", "boss", "--password-stdin", stdin=PASSWORD)
    assert bad_role.returncode == 1 and "--role: expected one of marketer, sales, admin" in bad_role.stderr
    short = run_cli(stack, "user", "add", "x@acme.example", "--role", "admin", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    no_tty = run_cli(stack, "user", "add", "x@acme.example", "--role", "admin")
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    bad_zone = run_cli(stack, "user", "add", "x@acme.example", "--role", "admin", "--timezone", "Mars/Olympus",
                       "--password-stdin", stdin=PASSWORD)
    assert bad_zone.returncode == 1 and bad_zone.stderr.strip() == (
        "error: --timezone: unknown time zone 'Mars/Olympus' (an IANA name like Europe/Paris)")
    zoned = run_cli(stack, "user", "add", "zed@acme.example", "--role", "admin", "--timezone", "Asia/Tokyo",
                    "--password-stdin", stdin=PASSWORD)
    assert zoned.returncode == 0, zoned.stderr
    listed = json.loads(run_cli(stack, "user", "list", "--json").stdout)
    assert [(u["email"], u["role"], u["timezone"]) for u in listed] == [
        ("ann@acme.example", "sales", "UTC"), ("zed@acme.example", "admin", "Asia/Tokyo")]
    assert "Asia/Tokyo" in run_cli(stack, "user", "list").stdout
    assert run_cli(stack, "user", "remove", "zed@acme.example").returncode == 0
    with stack.session() as session:
        stored = crud.get_user(session=session, email="ann@acme.example")
        assert stored.password_hash.startswith("$argon2id$") and PASSWORD not in stored.password_hash
        assert users.authenticate(session, "ann@acme.example", PASSWORD) is not None
    assert run_cli(stack, "user", "remove", "ann@acme.example").returncode == 0
    gone = run_cli(stack, "user", "remove", "ann@acme.example")
    assert gone.returncode == 1 and "no such user" in gone.stderr


def test_user_commands_load_neither_fastapi_nor_temporal(tmp_path):
    code = ("import sys\nfrom nurture import cli\n"
            "try:\n    cli.app(['user', 'list', '--json'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('fastapi', 'temporalio'))}))")
    env = {**os.environ, "NURTURE_HOME": str(tmp_path), "NURTURE_DATABASE_URL": f"sqlite:///{tmp_path / 'n.db'}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
