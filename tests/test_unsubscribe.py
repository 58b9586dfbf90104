"""Unsubscribe (RFC 8058 one-click), preferences and the funnel counts of `/`, over real HTTP.

The link comes from the email itself: the `List-Unsubscribe` header of the message
the outbox wrote, exactly what a mailbox provider would POST to.
"""

from __future__ import annotations

import asyncio
import email as email_lib
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from email import policy
from urllib.parse import urlsplit


from nurture import crud, journey, pages, security
from nurture.dispatcher import dispatch_once
from nurture.models import Event
from tests.test_web import MARKETER, add_user, sign_in
from tests.test_webhooks import lead_with_welcome, sent_steps, serve, until

DAY = timedelta(days=1)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def list_unsubscribe(stack, send_id: str) -> tuple[str, str]:
    """The path of the List-Unsubscribe URL of a sent email, and its List-Unsubscribe-Post."""
    raw = (stack.settings.outbox_dir / f"{send_id}.eml").read_bytes()
    message = email_lib.message_from_bytes(raw, policy=policy.default)
    url = str(message["List-Unsubscribe"]).strip("<>")
    assert url.startswith(stack.settings.public_url + "/u/")
    return urlsplit(url).path, str(message["List-Unsubscribe-Post"])


def unsubscribe_events(stack, email: str) -> list[Event]:
    with stack.session() as session:
        return [e for e in crud.events_of(session=session, key=journey.lead_key(email)) if e.type == "email_unsubscribe"]


def lead_row(stack, email: str):
    with stack.session() as session:
        return crud.get_lead(session=session, email=email)


def cli_lead_show(stack, email: str) -> dict:
    """`nurture lead show EMAIL --json`, the real command, on this test's store."""
    env = {**os.environ, "NURTURE_HOME": str(stack.settings.home), "NURTURE_DATABASE_URL": stack.settings.db_url,
           "NURTURE_CAMPAIGNS_DIR": str(stack.settings.campaigns_dir)}
    done = subprocess.run([sys.executable, "-c", "from nurture.cli import main; main()", "lead", "show", email, "--json"],
                          check=False, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_rfc8058_one_click_unsubscribes_at_once_and_ends_the_journey(stack):
    email = "ann@globex.example"
    welcome = await lead_with_welcome(stack, email)
    path, one_click = list_unsubscribe(stack, welcome.send_id)
    assert one_click == "List-Unsubscribe=One-Click"

    async with serve(stack) as http:
        page = await http.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Unsubscribe from all marketing email from Acme?" in page.text
        assert '<form method="post"' in page.text and "?view=preferences" in page.text
        assert lead_row(stack, email).status == "subscribed"  # a GET (or a link scanner) changes nothing

        # What Gmail sends: a bare POST, no cookie, no script.
        response = await http.post(path, content=one_click, headers=FORM)
        assert response.status_code == 200
        assert "You are unsubscribed" in response.text
        assert lead_row(stack, email).status == "unsubscribed"
        (event,) = unsubscribe_events(stack, email)
        assert event.dispatched_at is not None  # the workflow took it with the request
        lead = stack.show(email)
        assert lead["status"] == "unsubscribed" and lead["campaign"] is None
        assert [h["delta"] for h in lead["history"] if h["reason"] == "email_unsubscribe"] == [-10]

        again = await http.post(path, content=one_click, headers=FORM)  # idempotent
        assert again.status_code == 200 and "You are unsubscribed" in again.text
        assert len(unsubscribe_events(stack, email)) == 1
        page = await http.get(path)  # now it says so, with the way back
        assert "You are unsubscribed from all marketing email from Acme" in page.text and "Resubscribe" in page.text

    await stack.forward(email, 30 * DAY)
    lead = stack.show(email)
    assert sent_steps(lead) == ["welcome"]
    assert lead["score"] == 0 and lead["status"] == "unsubscribed"
    shown = cli_lead_show(stack, email)
    assert shown["status"] == "unsubscribed" and shown["campaign"] is None
    assert any("email_unsubscribe: status unsubscribed" in h["reason"] for h in shown["history"])


async def test_forged_or_altered_tokens_are_refused_and_change_nothing(stack):
    email = "bo@globex.example"
    await stack.add(email, source="web_form")
    key = journey.lead_key(email)
    secret = stack.settings.signing_secret()
    good = security.sign_token(secret, key)
    key_part, tag_part = good.split(".")
    flip = {"A": "B"}.get(tag_part[0], "A")
    other = journey.lead_key("someone@else.example")
    bad = [
        flip + tag_part[1:],  # no dot
        f"{key_part}.{flip}{tag_part[1:]}",  # altered tag
        f"{security.sign_token(secret, other).split('.')[0]}.{tag_part}",  # another lead's key, this tag
        security.sign_token("not-our-secret", key),  # forged with another secret
        security.sign_token(secret, key, "preferences"),  # signed for another purpose
        good + "A",
        "x" * 3000,
    ]
    async with serve(stack) as http:
        for token in bad:
            for response in (await http.get(f"/u/{token}"), await http.get(f"/u/{token}?view=preferences"),
                             await http.post(f"/u/{token}", content="List-Unsubscribe=One-Click", headers=FORM),
                             await http.post(f"/u/{token}", content="action=resubscribe", headers=FORM)):
                assert response.status_code == 404, token
                assert "This link is not valid" in response.text
        assert (await http.get(f"/u/{good}")).status_code == 200
    assert lead_row(stack, email).status == "subscribed"
    assert unsubscribe_events(stack, email) == []
    assert stack.show(email)["campaign"] == "b2b-trial"


async def test_resubscribe_from_the_preferences_page_records_consent(stack):
    email = "cy@globex.example"
    await stack.add(email, source="web_form")
    token = security.sign_token(stack.settings.signing_secret(), journey.lead_key(email))
    async with serve(stack) as http:
        prefs = await http.get(f"/u/{token}?view=preferences")
        assert "You receive marketing email from Acme" in prefs.text
        done = await http.post(f"/u/{token}", content="action=unsubscribe", headers=FORM)  # the page's button
        assert "You are unsubscribed" in done.text and lead_row(stack, email).status == "unsubscribed"

        response = await http.post(f"/u/{token}", content="action=resubscribe", headers=FORM)
        assert response.status_code == 200 and "You are subscribed again" in response.text
        row = lead_row(stack, email)
        assert row.status == "subscribed" and row.consent_at is not None
        lead = stack.show(email)
        assert lead["status"] == "subscribed"
        assert any(h["reason"].startswith("resubscribed (consent at ") for h in lead["history"])
        assert "You are subscribed" in (await http.post(f"/u/{token}", content="action=resubscribe",
                                                         headers=FORM)).text

        # A second unsubscribe is a new event (multipart one-click is allowed by RFC 8058 too).
        response = await http.post(f"/u/{token}", files={"List-Unsubscribe": (None, "One-Click")})
        assert response.status_code == 200 and lead_row(stack, email).status == "unsubscribed"
        assert sorted(e.id.rsplit(":", 1)[1] for e in unsubscribe_events(stack, email)) == ["0", "1"]
        assert stack.show(email)["status"] == "unsubscribed"


async def test_resubscribe_never_undoes_a_complaint_a_suppression_or_an_erasure(stack):
    complained, suppressed, forgotten = "dee@hooli.example", "eli@hooli.example", "fay@hooli.example"
    for address in (complained, suppressed, forgotten):
        await stack.add(address, source="web_form")
    await stack.nurture.record_event(complained, "email_spamreport")
    token = {a: security.sign_token(stack.settings.signing_secret(), journey.lead_key(a))
             for a in (complained, suppressed, forgotten)}
    async with serve(stack) as http:
        await http.post(f"/u/{token[suppressed]}", content="List-Unsubscribe=One-Click", headers=FORM)
        with stack.session() as session:  # e.g. a spam report that came in unmatched
            crud.suppress(session=session, email_hash=security.email_hash(suppressed), reason="complained")
        await stack.nurture.forget(forgotten)

        for address, shown in ((complained, "reported our email as spam"), (suppressed, "do-not-email list"),
                               (forgotten, "erased at its owner")):
            page = await http.get(f"/u/{token[address]}?view=preferences")
            assert page.status_code == 200 and shown in page.text and "Resubscribe" not in page.text
            response = await http.post(f"/u/{token[address]}", content="action=resubscribe", headers=FORM)
            assert response.status_code == 409 and "cannot be resubscribed" in response.text, address
    assert lead_row(stack, complained).status == "complained"
    assert lead_row(stack, suppressed).status == "unsubscribed"
    assert stack.show(complained)["status"] == "complained"


async def test_an_unsubscribe_temporal_cannot_take_now_is_delivered_later(stack, monkeypatch):
    monkeypatch.setattr(pages, "UPDATE_TIMEOUT", 0.5)
    email = "gus@wayne.example"
    welcome = await lead_with_welcome(stack, email)
    path, one_click = list_unsubscribe(stack, welcome.send_id)
    await stack.worker.__aexit__(None, None, None)
    async with serve(stack) as http:
        response = await http.post(path, content=one_click, headers=FORM)
    assert response.status_code == 200 and "You are unsubscribed" in response.text
    assert lead_row(stack, email).status == "unsubscribed"  # no send can go out from now on
    (event,) = unsubscribe_events(stack, email)
    assert event.dispatched_at is None and event.lead_key == journey.lead_key(email)

    worker = stack.start_worker()
    await worker.__aenter__()
    assert await dispatch_once(stack.settings, stack.client) == 1
    await until(lambda: stack.show(email)["campaign"] is None)
    await asyncio.sleep(0.3)  # the timed-out update may land too: it is the same event id
    lead = stack.show(email)
    assert [h["delta"] for h in lead["history"] if h["reason"] == "email_unsubscribe"] == [-10]
    await stack.forward(email, 30 * DAY)
    assert sent_steps(stack.show(email)) == ["welcome"]


def stage_counts(html: str) -> dict[str, int]:
    """The "Leads per stage" table of the campaigns overview as {stage: count}."""
    table = html.split("Leads per stage", 1)[1].split("</table>", 1)[0]
    heads = re.findall(r"<th[^>]*>([^<]+)</th>", table)
    cells = re.findall(r"<td[^>]*>(\d+)</td>", table)
    return dict(zip(heads, map(int, cells), strict=True))


async def test_anonymous_visitors_count_at_stage_visitor_until_they_become_leads(stack):
    await stack.nurture.ingest_events([
        {"anonymous_id": "visitor-1", "type": "page_view", "url": "https://acme.example/pricing"},
        {"anonymous_id": "visitor-1", "type": "page_view", "url": "https://acme.example/docs"},
        {"anonymous_id": "visitor-2", "type": "content_download", "asset": "guide.pdf"},
        {"anonymous_id": "visitor-3", "type": "page_view", "url": "https://acme.example/"},
    ])
    await stack.add("vic@wayne.example", anonymous_id="visitor-2", source="web_form")
    add_user(stack, MARKETER, "marketer")
    async with serve(stack) as http:
        await sign_in(http, MARKETER)
        html = (await http.get("/")).text
    counts = stage_counts(html)
    assert counts["visitor"] == 2 and counts["lead"] == 1  # visitor-2 is a lead now
    assert "1 lead, 2 anonymous visitors" in html
    await stack.nurture.forget("vic@wayne.example")  # its visitor past is erased with it
    with stack.session() as session:
        assert crud.count_visitors(session=session) == 2
