"""Sending through the real `sendgrid` library to a local fake SendGrid that checks
every body against SendGrid's published v3 schema; outbox mode; at-most-once."""

from __future__ import annotations

import email
from datetime import timedelta
from urllib.parse import urlparse

from nurture import crud, journey, security

DAY = timedelta(days=1)


def emails_of(stack, address):
    with stack.session() as session:
        return list(crud.emails_of(session=session, key=journey.lead_key(address)))


async def test_the_v3_payload_routes_events_back_and_offers_one_click_unsubscribe(sendgrid_stack):
    stack, fake = sendgrid_stack, sendgrid_stack.extras["sendgrid"]
    address = "ann@globex.example"
    await stack.add(address, first_name="Ann", source="web_form", locale="fr-FR")
    await stack.until(address, lambda lead: lead["step"] != "welcome")

    (message,) = fake.sent_to(address)
    (row,) = emails_of(stack, address)
    assert row.status == "sent" and row.provider == "sendgrid" and row.provider_message_id
    assert message["custom_args"] == {"lead": journey.lead_key(address), "send_id": row.send_id,
                                      "campaign": "b2b-trial", "step": "welcome"}
    assert message["categories"] == ["b2b-trial"]
    assert message["from"] == {"email": "hello@acme.example", "name": "Acme"}
    assert message["reply_to"] == {"email": "sales@acme.example"}
    headers = message["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = headers["List-Unsubscribe"].strip("<>")
    token = urlparse(link).path.rsplit("/", 1)[-1]
    assert security.verify_token(stack.settings.signing_secret(), token) == journey.lead_key(address)
    assert message["subject"].startswith("Ann, bienvenue")  # the lead's locale picks the French pair
    assert link in next(c["value"] for c in message["content"] if c["type"] == "text/plain")


async def test_busy_provider_is_retried_and_the_email_goes_out_once(sendgrid_stack):
    stack, fake = sendgrid_stack, sendgrid_stack.extras["sendgrid"]
    fake.fail_next(429)
    fake.fail_next(503)
    address = "bob@initech.example"
    await stack.add(address, source="web_form")
    await stack.until(address, lambda lead: lead["step"] != "welcome", step=timedelta(hours=4))

    statuses = [attempt.status for attempt in fake.requests]
    assert statuses[:3] == [429, 503, 202]
    assert len(fake.sent_to(address)) == 1
    (row,) = emails_of(stack, address)
    assert row.status == "sent" and row.attempts == 3


async def test_a_refused_email_is_not_retried_and_the_history_says_why(sendgrid_stack):
    stack, fake = sendgrid_stack, sendgrid_stack.extras["sendgrid"]
    fake.fail_next(400)
    address = "cara@hooli.example"
    await stack.add(address, source="web_form")
    await stack.until(address, lambda lead: lead["step"] != "welcome")

    assert [attempt.status for attempt in fake.requests] == [400]
    row = emails_of(stack, address)[0]
    assert row.status == "failed" and "HTTP 400" in row.error
    history = stack.show(address)["history"]
    assert any(h["kind"] == "email" and "welcome failed" in h["reason"] and "HTTP 400" in h["reason"]
               for h in history)
    # the journey goes on: the next step still happens
    await stack.until(address, lambda lead: lead["step"] == "wait-click")


async def test_provider_accepted_but_the_attempt_failed_is_never_sent_twice(sendgrid_stack):
    """The fake takes the email, then never answers: the activity times out (2 s here)
    and is retried. The retry finds the send started and unanswered: outcome unknown,
    not resent (README: at most once)."""
    stack, fake = sendgrid_stack, sendgrid_stack.extras["sendgrid"]
    fake.accept_then_hang(4)
    address = "dan@umbrella.example"
    await stack.add(address, source="web_form")
    await stack.until(address, lambda lead: lead["step"] != "welcome", step=timedelta(hours=4))

    assert len(fake.sent_to(address)) == 1
    assert fake.count_by_send_id().most_common(1)[0][1] == 1
    (row,) = emails_of(stack, address)
    assert row.status == "unknown" and row.attempts == 1
    history = stack.show(address)["history"]
    assert any("outcome unknown" in h["reason"] for h in history if h["kind"] == "email")
    # and the journey carries on to the next email
    await stack.until(address, lambda lead: lead["step"] == "wait-click")
    assert [m["custom_args"]["step"] for m in fake.sent_to(address)] == ["welcome", "case-study"]


async def test_outbox_mode_writes_real_eml_files_and_rows(stack):
    address = "eve@stark.example"
    await stack.add(address, first_name="Eve", source="web_form")
    await stack.until(address, lambda lead: lead["step"] != "welcome")
    (row,) = emails_of(stack, address)
    assert row.provider == "outbox" and row.status == "sent"
    path = stack.settings.outbox_dir / f"{row.send_id}.eml"
    parsed = email.message_from_bytes(path.read_bytes())
    assert parsed["To"] == address and parsed["Subject"] == row.subject
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["X-Nurture-Send_Id"] == row.send_id
    bodies = {part.get_content_type() for part in parsed.walk()}
    assert {"text/plain", "text/html"} <= bodies
