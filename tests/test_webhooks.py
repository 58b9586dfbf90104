"""SendGrid's Signed Event Webhook on a real uvicorn (loopback) and the real dev server.

Each request is signed exactly as SendGrid signs it: ECDSA P-256 with SHA-256 over
`timestamp + raw body`, the signature base64 DER, the public key base64 DER
SubjectPublicKeyInfo (what SendGrid's settings page shows).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlmodel import select
from temporalio.client import Client
from nurture.converter import data_converter
from temporalio.service import RetryConfig

from nurture import crud, journey, security
from nurture.api import MAX_WEBHOOK_BODY, create_app
from nurture.dispatcher import DispatchError, _claim, dispatch_once, run_dispatcher
from nurture.models import Email, Event
from tests.conftest import Stack, _stack, make_settings

DAY = timedelta(days=1)
SIG = "X-Twilio-Email-Event-Webhook-Signature"
TS = "X-Twilio-Email-Event-Webhook-Timestamp"
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def public_key(private: ec.EllipticCurvePrivateKey) -> str:
    return base64.b64encode(private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()


def signed(body: bytes, *, key: ec.EllipticCurvePrivateKey = KEY, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIG: base64.b64encode(signature).decode(), TS: timestamp, "Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def serve(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The real app on a real uvicorn on 127.0.0.1 (a free port), and a client for it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(stack.settings, stack.client), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off", timeout_graceful_shutdown=5))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # pytest owns Ctrl-C
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def hook(temporal_env, tmp_path) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    settings = make_settings(tmp_path, sendgrid_webhook_public_key=public_key(KEY))
    async with _stack(temporal_env, settings) as stack, serve(stack) as http:
        yield stack, http


def sg(kind: str, email: str, send: Email | None = None, **extra: Any) -> dict[str, Any]:
    """One SendGrid event, with the custom args our send set flattened in, as SendGrid does."""
    event: dict[str, Any] = {"email": email, "event": kind, "timestamp": int(time.time()),
                             "sg_event_id": uuid.uuid4().hex, "sg_message_id": f"m{uuid.uuid4().hex[:12]}.filter0001"}
    if send is not None:
        event.update(lead=send.lead_key, send_id=send.send_id, campaign=send.campaign, step=send.step,
                     sg_message_id=f"{send.send_id[:12]}.filter0001")
    event.update(extra)
    return event


async def post(http: httpx.AsyncClient, events: Any, **sign: Any) -> httpx.Response:
    body = json.dumps(events).encode()
    return await http.post("/webhooks/sendgrid", content=body, headers=signed(body, **sign))


async def until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def lead_with_welcome(stack: Stack, email: str) -> Email:
    """A lead in b2b-trial whose welcome email has gone out (outbox mode)."""
    await stack.add(email, first_name="Ann", source="web_form", timezone="Europe/Paris")
    await stack.forward(email, DAY)
    with stack.session() as session:
        (welcome,) = crud.emails_of(session=session, key=journey.lead_key(email))
    assert welcome.status == "sent" and welcome.step == "welcome"
    return welcome


def events(stack: Stack) -> list[Event]:
    with stack.session() as session:
        return list(session.exec(select(Event).order_by(Event.received_at)).all())


def email_status(stack: Stack, send_id: str) -> str:
    with stack.session() as session:
        return session.get(Email, send_id).status


def sent_steps(lead: dict) -> list[str]:
    return [h["detail"]["step"] for h in lead["history"]
            if h["kind"] == "email" and h["reason"].startswith("sent ") and "step" in h.get("detail", {})]


# ---------------------------------------------------------------- accepted and applied


async def test_signed_batch_is_stored_then_applied_by_the_dispatcher(hook):
    stack, http = hook
    email = "ann@globex.example"
    welcome = await lead_with_welcome(stack, email)
    batch = [
        sg("delivered", email, welcome),
        sg("open", email, welcome, sg_machine_open=True),  # Apple privacy proxy: not a person
        sg("open", email, welcome, sg_machine_open=False),
        sg("click", email, welcome, url="https://acme.example/case-study"),
        sg("open", "stranger@elsewhere.example"),  # no lead: kept, unmatched
    ]
    response = await post(http, batch)
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 5, "duplicates": 0, "unmatched": 1}

    # Stored before the answer, not yet applied; the email row already shows the click.
    stored = {e.id: e for e in events(stack)}
    assert set(stored) == {"sg:" + e["sg_event_id"] for e in batch}
    unmatched = stored["sg:" + batch[4]["sg_event_id"]]
    assert unmatched.lead_key is None
    mine = [e for e in stored.values() if e.lead_key]
    assert all(e.dispatched_at is None for e in mine)
    assert {e.type for e in mine} == {"email_delivered", "email_open", "email_click"}
    assert stored["sg:" + batch[3]["sg_event_id"]].data["url"] == "https://acme.example/case-study"
    assert stored["sg:" + batch[1]["sg_event_id"]].data["machine_open"] is True
    assert stored["sg:" + batch[3]["sg_event_id"]].data["step"] == "welcome"
    assert email_status(stack, welcome.send_id) == "clicked"
    assert stack.show(email)["score"] == 0

    assert await dispatch_once(stack.settings, stack.client) == 4
    lead = await until(lambda: (lead := stack.show(email))["score"] == 6 and lead)  # open 1 + click 5
    reasons = [h["reason"] for h in lead["history"]]
    assert "email_open (machine open, not scored)" in reasons
    assert [h["delta"] for h in lead["history"] if h["kind"] == "score"] == [1, 5]
    assert all(e.dispatched_at is not None for e in events(stack) if e.lead_key)
    assert await dispatch_once(stack.settings, stack.client) == 0

    # A late `delivered` never downgrades the row.
    assert (await post(http, [sg("delivered", email, welcome)])).json()["stored"] == 1
    assert email_status(stack, welcome.send_id) == "clicked"


async def test_two_dispatchers_share_rows_and_a_dead_ones_lease_runs_out(hook):
    """SQLite has no row locks to skip: the lease taken in one UPDATE keeps two
    dispatchers (one per worker) from delivering the same events."""
    stack, http = hook
    leads = [f"lease{i}@globex.example" for i in range(4)]
    for address in leads:
        await stack.add(address, source="web_form")
    batch = [sg(kind, address, lead=journey.lead_key(address)) for address in leads for kind in ("open", "click")]
    assert (await post(http, batch)).json()["stored"] == 8

    first, second = await asyncio.gather(dispatch_once(stack.settings, stack.client, batch=100),
                                         dispatch_once(stack.settings, stack.client, batch=100))
    assert first + second == 8
    await until(lambda: all(stack.show(a)["score"] == 6 for a in leads))  # open 1 + click 5, once

    # A dispatcher that claims and dies: nobody else takes its rows until the lease ends.
    late = [sg("click", leads[0], lead=journey.lead_key(leads[0]))]
    assert (await post(http, late)).json()["stored"] == 1
    assert [row.id for row in _claim(stack.settings.db_url, 100, timedelta(seconds=1))] == ["sg:" + late[0]["sg_event_id"]]
    assert await dispatch_once(stack.settings, stack.client) == 0
    await asyncio.sleep(1.2)
    assert await dispatch_once(stack.settings, stack.client) == 1
    await until(lambda: stack.show(leads[0])["score"] == 11)


async def test_the_same_batch_twice_counts_once(hook):
    stack, http = hook
    email = "bo@globex.example"
    welcome = await lead_with_welcome(stack, email)
    batch = [sg("open", email, welcome), sg("click", email, welcome, url="https://acme.example/x")]
    assert (await post(http, batch)).json() == {"stored": 2, "duplicates": 0, "unmatched": 0}
    await dispatch_once(stack.settings, stack.client)
    await until(lambda: stack.show(email)["score"] == 6)

    # SendGrid retries (e.g. our 2xx was lost): same sg_event_ids, counted once.
    assert (await post(http, batch)).json() == {"stored": 0, "duplicates": 2, "unmatched": 0}
    # Even a duplicate delivery to the workflow is dropped there (at-least-once is safe).
    with stack.session() as session:
        for row in session.exec(select(Event)).all():
            row.dispatched_at = None
            session.add(row)
    assert await dispatch_once(stack.settings, stack.client) == 2
    await asyncio.sleep(0.5)
    assert stack.show(email)["score"] == 6
    assert (await stack.query(email))["score"] == 6
    assert len(events(stack)) == 2


async def test_a_batch_accepted_while_the_worker_is_down_is_applied_later(hook, unused_tcp_port):
    stack, http = hook
    email = "cy@globex.example"
    welcome = await lead_with_welcome(stack, email)
    await stack.worker.__aexit__(None, None, None)  # no worker at all

    batch = [sg("open", email, welcome), sg("click", email, welcome, url="https://acme.example/y")]
    response = await post(http, batch)  # answered without Temporal in the request path
    assert response.json()["stored"] == 2
    assert all(e.dispatched_at is None for e in events(stack))

    # Temporal unreachable: the dispatcher says so and keeps the events.
    dead = await Client.connect(f"127.0.0.1:{unused_tcp_port}", lazy=True, data_converter=data_converter,
                                retry_config=RetryConfig(max_retries=0, max_elapsed_time_millis=500))
    with pytest.raises(DispatchError, match="1 of 1 lead"):
        await dispatch_once(stack.settings, dead)
    stop = asyncio.Event()
    looping = asyncio.create_task(run_dispatcher(stack.settings, dead, stop, idle=0.05))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(looping, 5)  # it backed off and kept going, then stopped cleanly
    assert all(e.dispatched_at is None for e in events(stack))
    assert stack.show(email)["score"] == 0

    worker = stack.start_worker()
    await worker.__aenter__()
    stop = asyncio.Event()
    looping = asyncio.create_task(run_dispatcher(stack.settings, stack.client, stop, idle=0.05))
    try:
        await until(lambda: stack.show(email)["score"] == 6)
    finally:
        stop.set()
        await looping
    assert all(e.dispatched_at is not None for e in events(stack))


# ---------------------------------------------------------------- suppression


@pytest.mark.parametrize("kind, extra, status, email_row", [
    ("bounce", {"type": "bounce", "reason": "550 5.1.1 user unknown", "status": "5.1.1"}, "bounced", "bounced"),
    ("dropped", {"reason": "Bounced Address"}, "bounced", "dropped"),
    ("dropped", {"reason": "Invalid"}, "bounced", "dropped"),
    ("dropped", {"reason": "Unsubscribed Address"}, "unsubscribed", "dropped"),
    ("dropped", {"reason": "Spam Reporting Address"}, "complained", "dropped"),
    ("spamreport", {}, "complained", "spamreport"),
    ("unsubscribe", {}, "unsubscribed", "clicked"),
])
async def test_bounce_drop_spamreport_unsubscribe_end_the_journey(hook, kind, extra, status, email_row):
    stack, http = hook
    email = f"{kind}@initech.example"
    welcome = await lead_with_welcome(stack, email)
    if kind == "unsubscribe":
        await post(http, [sg("click", email, welcome, url="https://acme.example/z")])
    assert (await post(http, [sg(kind, email, welcome, **extra)])).json()["stored"] == 1

    # At once, before any workflow hears of it: the send activity re-checks this row.
    lead = stack.show(email)
    assert lead["status"] == status
    assert email_status(stack, welcome.send_id) == email_row
    with stack.session() as session:
        suppressed = crud.is_suppressed(session=session, email_hash=security.email_hash(email))
    assert suppressed == ("complained" if status == "complained" else None)

    await dispatch_once(stack.settings, stack.client)
    await until(lambda: stack.show(email)["campaign"] is None)
    await stack.forward(email, 30 * DAY)
    lead = stack.show(email)
    assert lead["status"] == status and lead["campaign"] is None
    assert sent_steps(lead) == ["welcome"]
    assert any(f"status {status}, no more marketing email" in h["reason"] for h in lead["history"])
    with stack.session() as session:
        assert len(crud.emails_of(session=session, key=journey.lead_key(email))) == 1


@pytest.mark.parametrize("reason", ["Recipient List over Package Quota", "Spam Content", "Invalid SMTPAPI header"])
async def test_a_drop_that_is_not_the_address_fault_is_recorded_and_does_not_suppress(hook, reason):
    stack, http = hook
    email = "quota@initech.example"
    welcome = await lead_with_welcome(stack, email)
    await post(http, [sg("dropped", email, welcome, reason=reason)])

    assert stack.show(email)["status"] == "subscribed"
    with stack.session() as session:
        row = session.get(Email, welcome.send_id)
        assert (row.status, row.error) == ("dropped", f"dropped: {reason}")
        assert crud.is_suppressed(session=session, email_hash=security.email_hash(email)) is None
    await dispatch_once(stack.settings, stack.client)
    await until(lambda: any("not about the address" in h["reason"] for h in stack.show(email)["history"]))
    lead = stack.show(email)
    assert lead["status"] == "subscribed" and lead["campaign"] == "b2b-trial"
    assert any(h["reason"] == f"email_dropped ({reason}): not about the address, status stays subscribed"
               for h in lead["history"])
    lead = await stack.until(email, lambda lead: "case-study" in sent_steps(lead))  # the journey goes on
    assert lead["status"] == "subscribed"


@pytest.mark.parametrize("first, status", [("group_unsubscribe", "subscribed"), ("spamreport", "complained"),
                                           ("bounce", "bounced")])
async def test_a_group_resubscribe_undoes_an_unsubscribe_never_a_bounce_or_complaint(hook, first, status):
    stack, http = hook
    email = f"back-{first}@initech.example"
    welcome = await lead_with_welcome(stack, email)
    extra = {"type": "bounce", "reason": "550 5.1.1 user unknown", "status": "5.1.1"} if first == "bounce" else {}
    await post(http, [sg(first, email, welcome, **extra)])
    await dispatch_once(stack.settings, stack.client)
    await until(lambda: stack.show(email)["status"] != "subscribed")
    await post(http, [sg("group_resubscribe", email, welcome, asm_group_id=1)])
    await dispatch_once(stack.settings, stack.client)
    await until(lambda: any("email_group_resubscribe" in h["reason"] and h["kind"] == "note"
                            for h in stack.show(email)["history"]))
    assert stack.show(email)["status"] == status
    assert (await stack.query(email))["status"] == status


async def test_soft_bounces_count_once_per_send_and_bounce_on_the_third(hook):
    stack, http = hook
    email = "dee@hooli.example"
    welcome = await lead_with_welcome(stack, email)

    def other_send(n: int) -> Email:
        return Email(send_id=f"other-send-{n}", lead_key=welcome.lead_key, campaign="b2b-trial", step=f"s{n}",
                     template="x")

    # SendGrid retries a deferred message for days: one send, however many deferrals.
    deferred = [sg("deferred", email, welcome, response="451 try later", attempt=str(i)) for i in range(4)]
    assert (await post(http, deferred)).json()["stored"] == 4
    await post(http, [sg("bounce", email, other_send(2), type="blocked", reason="421 blocked")])
    assert stack.show(email)["status"] == "subscribed"  # two sends soft-failed so far
    assert not [e for e in events(stack) if e.type == "email_bounce"]
    assert {e.type for e in events(stack)} == {"email_soft_bounce"}
    assert all(e.dispatched_at is not None for e in events(stack))  # stored, never applied

    await post(http, [sg("bounce", email, other_send(3), type="blocked", reason="421 blocked")])
    assert stack.show(email)["status"] == "bounced"
    (bounce,) = [e for e in events(stack) if e.type == "email_bounce"]
    assert bounce.lead_key == welcome.lead_key and bounce.dispatched_at is None
    await post(http, [sg("deferred", email, other_send(4))])  # a fourth does not bounce again
    assert len([e for e in events(stack) if e.type == "email_bounce"]) == 1

    await dispatch_once(stack.settings, stack.client)
    await until(lambda: stack.show(email)["campaign"] is None)
    assert any("email_bounce: status bounced" in h["reason"] for h in stack.show(email)["history"])


async def test_a_delivery_resets_the_soft_bounce_count(hook):
    stack, http = hook
    email = "eli@hooli.example"
    await stack.add(email, source="web_form")
    key = journey.lead_key(email)

    def event(kind: str, n: int, **extra: Any) -> dict[str, Any]:
        return sg(kind, email, lead=key, send_id=f"send-{n}", **extra)

    await post(http, [event("deferred", 1), event("deferred", 2)])
    await post(http, [event("delivered", 2)])  # greylisting: deferred, then delivered
    await post(http, [event("bounce", 3, type="blocked"), event("deferred", 4)])
    assert stack.show(email)["status"] == "subscribed"
    await post(http, [event("deferred", 5)])
    assert stack.show(email)["status"] == "bounced"


async def test_events_of_a_sales_owner_mail_do_not_touch_the_lead(hook):
    """Handoff notifications carry the lead's key too; their events are the owner's."""
    stack, http = hook
    email = "fay@stark.example"
    await stack.add(email, source="web_form")
    key = journey.lead_key(email)
    response = await post(http, [sg("spamreport", "alice@acme.example", lead=key, send_id="handoff-mail"),
                                 sg("click", "alice@acme.example", lead=key, send_id="handoff-mail")])
    assert response.json() == {"stored": 2, "duplicates": 0, "unmatched": 2}
    assert stack.show(email)["status"] == "subscribed"
    assert all(e.lead_key is None for e in events(stack))


# ---------------------------------------------------------------- refused


async def test_forged_unsigned_and_stale_requests_are_refused(hook):
    stack, http = hook
    email = "gus@wayne.example"
    await stack.add(email, source="web_form")
    batch = [sg("spamreport", email, lead=journey.lead_key(email))]
    body = json.dumps(batch).encode()
    url = "/webhooks/sendgrid"

    refusals = {
        "forged": await http.post(url, content=body, headers=signed(body, key=OTHER_KEY)),
        "unsigned": await http.post(url, content=body, headers={"Content-Type": "application/json"}),
        "stale": await http.post(url, content=body, headers=signed(body, at=time.time() - 11 * 60)),
        "future": await http.post(url, content=body, headers=signed(body, at=time.time() + 11 * 60)),
        "altered": await http.post(url, content=body.replace(b"spamreport", b"spamreporx"), headers=signed(body)),
        "garbage": await http.post(url, content=body, headers={**signed(body), SIG: "not base64 at all!"}),
        "bad time": await http.post(url, content=body, headers={**signed(body), TS: "yesterday"}),
    }
    for name, response in refusals.items():
        assert response.status_code == 403, (name, response.text)
        assert response.json()["error"].startswith("webhook refused"), name
    assert events(stack) == []
    assert stack.show(email)["status"] == "subscribed"

    assert (await post(http, batch, at=time.time() - 9 * 60)).status_code == 200  # inside the 10 minutes


async def test_webhook_refused_without_a_public_key(stack):
    async with serve(stack) as http:
        body = b"[]"
        response = await http.post("/webhooks/sendgrid", content=body, headers=signed(body))
    assert response.status_code == 403
    assert response.json()["error"] == "webhook refused: NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY is not set"


async def test_malformed_batches_get_a_4xx_naming_where(hook):
    stack, http = hook
    cases = [
        (b'[{"event": "open", ', 400, "malformed JSON"),
        (b'{"event": "open"}', 400, "events: not a JSON array"),
        (b'[{"event": "open", "email": "a@b.example"}, 3]', 400, "events.1: not an object"),
        (b'[{"event": "open"}, {"email": "a@b.example"}]', 400, "events.1.event: missing or not a string"),
        (b'\xff\xfe[]', 403, "webhook refused: bad signature"),  # not UTF-8: cannot be SendGrid's
    ]
    for body, status, message in cases:
        response = await http.post("/webhooks/sendgrid", content=body, headers=signed(body))
        assert (response.status_code, response.json()["error"]) == (status, message), body

    huge = b"[" + b" " * MAX_WEBHOOK_BODY + b"]"
    response = await http.post("/webhooks/sendgrid", content=huge, headers=signed(huge))
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: cut off while streaming
        for _ in range(MAX_WEBHOOK_BODY // 65536 + 2):
            yield b" " * 65536

    response = await http.post("/webhooks/sendgrid", content=chunks(), headers=signed(b""))
    assert response.status_code == 413
    assert events(stack) == []
    assert (await post(http, [])).json() == {"stored": 0, "duplicates": 0, "unmatched": 0}


# ---------------------------------------------------------------- PostgreSQL


async def test_postgresql_batch_and_two_dispatchers_never_take_the_same_rows(temporal_env, tmp_path, postgres_url):
    settings = make_settings(tmp_path, database_url=postgres_url, sendgrid_webhook_public_key=public_key(KEY))
    async with _stack(temporal_env, settings) as stack, serve(stack) as http:
        leads = [f"pg{i}@globex.example" for i in range(6)]
        for address in leads:
            await stack.add(address, source="web_form")
        batch = [sg(kind, address, lead=journey.lead_key(address), send_id=f"send-{address}")
                 for address in leads for kind in ("delivered", "open", "open")]
        batch += [sg("bounce", leads[0], send_id=f"soft-{n}", type="blocked") for n in range(3)]
        batch += [sg("spamreport", leads[1], lead=journey.lead_key(leads[1]))]
        response = await post(http, batch)
        assert response.json() == {"stored": 22, "duplicates": 0, "unmatched": 0}
        assert (await post(http, batch)).json()["duplicates"] == 22
        assert stack.show(leads[0])["status"] == "bounced" and stack.show(leads[1])["status"] == "complained"

        # FOR UPDATE SKIP LOCKED: two dispatchers at once share the rows, never both take one.
        first, second = await asyncio.gather(dispatch_once(stack.settings, stack.client, batch=100),
                                             dispatch_once(stack.settings, stack.client, batch=100))
        assert first + second == 6 * 3 + 2  # soft failures are stored only; their bounce is applied
        await until(lambda: all(stack.show(a)["score"] == 2 for a in leads[2:]))
        await until(lambda: stack.show(leads[0])["campaign"] is None and stack.show(leads[1])["campaign"] is None)
