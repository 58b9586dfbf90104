"""`POST /webhooks/sendgrid`: SendGrid's Signed Event Webhook (contract sections 1, 6).

The request path only verifies, parses and stores: the whole batch goes into the
`event` table in one transaction before the 2xx, each SendGrid event once (its id is
`sg:` + `sg_event_id`, so a SendGrid retry is a duplicate). Temporal is not called
here: `nurture.dispatcher` delivers the stored events to the leads' workflows, so a
batch accepted while Temporal or every worker is down is applied when they are back.

What cannot wait for the dispatcher happens in the same transaction:
- suppression: a hard bounce, drop, spam report or unsubscribe sets the lead row's
  status at once (the send activity re-checks it before every email), and a spam
  report adds the address to the suppression list;
- the email row's delivery status (delivered, opened, clicked, bounced, ...), never
  downgraded (a late `delivered` does not hide a click).

Soft failures (`deferred`, and `bounce` with `type: blocked`) are stored but not
applied: each send counts once per address, and the third send to soft-fail for the
same address (with no delivery in between) emits one `email_bounce`. Repeated
deferrals of one message (SendGrid retries it for up to 72 hours) count once, and a
`delivered` resets the count, so a greylisting server never unsubscribes anyone.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import bindparam, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from nurture import crud, journey, security
from nurture.addresses import InvalidAddress, canonical_email
from nurture.config import Settings
from nurture.db import session_scope
from nurture.models import Counter, Email, Event, Lead, sqlite_time, utcnow

log = logging.getLogger("nurture.webhooks")
router = APIRouter()

PATH = "/webhooks/sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_SKEW = 600  # seconds either way: older signed requests are replays
# What the two headers look like when SendGrid sends them: a Unix time in seconds, and a
# base64 DER ECDSA P-256 signature (about 96 characters). Anything else is refused
# before the body is read, and a 5000-digit "time" never reaches float arithmetic.
TIMESTAMP_FORM = re.compile(r"[0-9]{1,12}")
SIGNATURE_FORM = re.compile(r"[A-Za-z0-9+/]{16,256}={0,2}")
SOFT_BOUNCES = 3  # sends that soft-failed for one address before it counts as bounced
CHUNK = 500  # ids per IN (...) query

# SendGrid event -> ours; absent types are stored only (never sent to a workflow).
APPLIED = {
    "open": "email_open",
    "click": "email_click",
    "delivered": "email_delivered",
    "dropped": "email_dropped",
    "spamreport": "email_spamreport",
    "unsubscribe": "email_unsubscribe",
    "group_unsubscribe": "email_unsubscribe",
    "group_resubscribe": journey.RESUBSCRIBE_EVENT,  # undoes an unsubscribe in the lead's workflow
}
STORED_ONLY = {"processed": "email_processed"}
# The email row's first-time column each event type sets (the campaign stats read them;
# an open is counted only when no privacy proxy made it).
ENGAGEMENT = {"email_delivered": "delivered_at", "email_click": "clicked_at", "email_bounce": "bounced_at",
              "email_unsubscribe": "unsubscribed_at"}
# Email row status from an event, most informative last: only ever raised.
EMAIL_RANK = {"claimed": 0, "sending": 0, "unknown": 0, "failed": 0, "sent": 1, "delivered": 2,
              "opened": 3, "clicked": 4, "bounced": 5, "dropped": 5, "spamreport": 6}


class Refused(Exception):
    def __init__(self, status: int, message: str, field_: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field_


def _error(status: int, message: str, field_: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field_}, status_code=status)


@router.post(PATH)
async def sendgrid_events(request: Request) -> JSONResponse:
    """SendGrid Signed Event Webhook: a JSON array of events, stored before the 200."""
    settings: Settings = request.app.state.settings
    try:
        check_entrance(settings, request.headers)
        body = await request.body()
        _verify(settings, body, request.headers[SIGNATURE_HEADER], request.headers[TIMESTAMP_HEADER])
        events = _parse(body)
        counts = await asyncio.to_thread(store_batch, settings, events)
    except Refused as refused:
        return _error(refused.status, refused.message, refused.field)
    return JSONResponse(counts)


# ---------------------------------------------------------------- verification


_KEYS: dict[str, Any] = {}


def _public_key(text: str) -> Any:
    from sendgrid.helpers.eventwebhook import EventWebhook  # type: ignore[import-untyped]

    if text not in _KEYS:
        _KEYS.clear()
        _KEYS[text] = EventWebhook().convert_public_key_to_ecdsa(text.strip())
    return _KEYS[text]


def refuse_early(request: Request) -> JSONResponse | None:
    """The refusal a request gets before its body is read (nurture.api's body limit calls
    this first), or None: a forged 16 MiB batch without a well-formed signature costs
    nothing but its headers."""
    try:
        check_entrance(request.app.state.settings, request.headers)
    except Refused as refused:
        return _error(refused.status, refused.message, refused.field)
    return None


def check_entrance(settings: Settings, headers: Mapping[str, str]) -> None:
    """Everything that can be checked without the body: a key configured and valid, both
    signature headers present and well-formed, the timestamp within MAX_SKEW."""
    if not settings.sendgrid_webhook_public_key:
        raise Refused(403, "webhook refused: NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY is not set")
    try:
        _public_key(settings.sendgrid_webhook_public_key)
    except (ValueError, TypeError) as error:
        log.error("NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY is not a valid public key: %s", error)
        raise Refused(403, "webhook refused: NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY is not a valid key") from error
    signature, timestamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise Refused(403, f"webhook refused: missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
    if not TIMESTAMP_FORM.fullmatch(timestamp):
        raise Refused(403, f"webhook refused: {TIMESTAMP_HEADER} is not a Unix time")
    if not SIGNATURE_FORM.fullmatch(signature):
        raise Refused(403, f"webhook refused: {SIGNATURE_HEADER} is not a base64 signature")
    if abs(time.time() - int(timestamp)) > MAX_SKEW:
        raise Refused(403, f"webhook refused: timestamp more than {MAX_SKEW // 60} minutes from now")


def _verify(settings: Settings, body: bytes, signature: str, timestamp: str) -> None:
    """SendGrid's own helper, over the raw body (headers already checked by
    check_entrance): any doubt is a 403 and nothing stored."""
    from sendgrid.helpers.eventwebhook import EventWebhook  # type: ignore[import-untyped]

    key = _public_key(settings.sendgrid_webhook_public_key or "")
    try:
        # The helper signs `timestamp + payload` as text; for UTF-8 (all JSON SendGrid
        # sends) decoding and its re-encoding give back exactly the bytes received.
        valid = EventWebhook().verify_signature(body.decode("utf-8"), signature, timestamp, key)
    except (UnicodeDecodeError, binascii.Error, ValueError, TypeError):
        valid = False
    if not valid:
        raise Refused(403, "webhook refused: bad signature")


def _parse(body: bytes) -> list[dict[str, Any]]:
    try:
        events = json.loads(body)
    except (ValueError, RecursionError):
        raise Refused(400, "malformed JSON", "events") from None
    if not isinstance(events, list):
        raise Refused(400, "events: not a JSON array", "events")
    if b"\\u0000" in body:  # JSON can only carry a NUL escaped
        events = _without_nul(events)
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise Refused(400, f"events.{index}: not an object", f"events.{index}")
        if not isinstance(event.get("event"), str) or not event["event"]:
            raise Refused(400, f"events.{index}.event: missing or not a string", f"events.{index}.event")
    return events


# ---------------------------------------------------------------- storing


@dataclass
class _LeadRef:
    """The three columns of a lead row the webhook needs: loading whole rows (profile
    and attribute JSON) was half the time of a 1,000-event batch."""

    key: str
    email: str | None
    status: str


@dataclass
class _Soft:
    """One step of an address's soft-failure count, in time order: a soft failure of a
    send (`marker` names the address and send) or, with no marker, a delivery (reset)."""

    marker: str | None
    row: dict[str, Any] | None = None
    lead: _LeadRef | None = None


@dataclass
class _Batch:
    """What one transaction knows while it stores a batch."""

    by_key: dict[str, _LeadRef] = field(default_factory=dict)
    by_email: dict[str, _LeadRef] = field(default_factory=dict)
    email_status: dict[str, str] = field(default_factory=dict)  # send_id -> status
    changed_emails: set[str] = field(default_factory=set)
    drop_reasons: dict[str, str] = field(default_factory=dict)  # send_id -> why SendGrid dropped it
    engaged: dict[tuple[str, str], datetime] = field(default_factory=dict)  # (send_id, column) -> first time
    rows: list[dict[str, Any]] = field(default_factory=list)  # new event rows
    soft: dict[str, list[_Soft]] = field(default_factory=dict)  # address -> its soft steps
    stored: int = 0
    duplicates: int = 0
    unmatched: int = 0


def store_batch(settings: Settings, events: list[dict[str, Any]]) -> dict[str, int]:
    """Store every event of the batch, once, in one transaction; returns the counts."""
    for attempt in range(3):
        try:
            with session_scope(settings.db_url) as session:
                return _store(session, events)
        except IntegrityError:
            # A concurrent request (SendGrid retrying early) stored some of the same
            # ids between our read and our commit: start again, they are duplicates now.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _store(session: Session, events: list[dict[str, Any]]) -> dict[str, int]:
    batch = _Batch()
    ids = [_event_id(raw) for raw in events]
    # Each event's custom args and normalised address, worked out once.
    args = [_custom_args(raw) for raw in events]
    addresses = [_address(raw.get("email")) for raw in events]
    known = _existing_ids(session, ids)
    _load_leads(session, args, addresses, batch)
    _load_emails(session, args, batch)
    # Oldest first, so a send's `deferred` comes before its `delivered`.
    order = sorted(range(len(events)), key=lambda i: _timestamp(events[i]) or 0.0)
    seen: set[str] = set()
    for index in order:
        raw, event_id = events[index], ids[index]
        if event_id in known or event_id in seen:
            batch.duplicates += 1  # applied when first received
            continue
        seen.add(event_id)
        batch.stored += 1
        _store_one(session, batch, raw, event_id, args[index], addresses[index])
    for step in _soft_bounces(session, batch.soft):
        assert step.row is not None
        data = {**step.row["data"], "soft_bounces": SOFT_BOUNCES, "sendgrid": "soft bounces"}
        batch.rows.append(_row(f"sg:softbounce:{step.row['id'][3:]}"[:200], "email_bounce", step.lead,
                               step.row["email"], step.row["at"], data, applied=True))
        crud.suppress_now(session=session, lead=step.lead, address=step.row["email"], type_="email_bounce")
    _insert_events(session, batch.rows)
    changed = [{"b_send_id": s, "b_status": batch.email_status[s], "b_at": utcnow()} for s in sorted(batch.changed_emails)]
    if changed:
        table = Email.__table__  # type: ignore[attr-defined]
        session.execute(table.update().where(table.c.send_id == bindparam("b_send_id"))
                        .values(status=bindparam("b_status"), updated_at=bindparam("b_at")), changed)
    _record_drop_reasons(session, batch.drop_reasons)
    crud.note_engagement(session=session, firsts=batch.engaged)
    return {"stored": batch.stored, "duplicates": batch.duplicates, "unmatched": batch.unmatched}


def _insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """One executemany of the batch's rows. On SQLite straight through the driver with
    each value bound as its column type binds it (UTCDateTime text, JSON): SQLAlchemy's
    per-row parameter processing was a third of a 1,000-event batch."""
    table = Event.__table__  # type: ignore[attr-defined]
    if not rows:
        return
    if session.get_bind().dialect.name != "sqlite":
        session.execute(table.insert(), rows)
        return
    names = [column.name for column in table.columns]
    binders = [_SQLITE_BIND.get(name, _as_is) for name in names]
    sql = f"INSERT INTO event ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    session.connection().exec_driver_sql(
        sql, [tuple(bind(row.get(name)) for name, bind in zip(names, binders)) for row in rows])


def _as_is(value: Any) -> Any:
    return value


_SQLITE_BIND = {"at": sqlite_time, "received_at": sqlite_time, "dispatched_at": sqlite_time,
                "claimed_until": sqlite_time, "data": json.dumps}


def _store_one(session: Session, batch: _Batch, raw: dict[str, Any], event_id: str, args: dict[str, str],
               address: str | None) -> None:
    kind = raw["event"]
    lead = _route(batch, args.get("lead"), address)
    if lead is None:
        batch.unmatched += 1
    data: dict[str, Any] = {k: args[k] for k in ("campaign", "step", "send_id") if args.get(k)}
    data["sendgrid"] = kind
    if isinstance(raw.get("sg_message_id"), str):
        data["sg_message_id"] = raw["sg_message_id"][:200]
    at = _at(raw)
    send_id = args.get("send_id")
    bounce_type = str(raw.get("type") or "bounce").lower() if kind == "bounce" else None

    if kind == "deferred" or bounce_type == "blocked":  # soft: stored, counted, not applied
        data.update(kind="deferred" if kind == "deferred" else "blocked",
                    reason=_text(raw.get("reason") or raw.get("response")))
        row = _row(event_id, "email_soft_bounce", lead, address, at, data, applied=False)
        batch.rows.append(row)
        if address:
            send_key = send_id or _message_key(raw) or event_id
            marker = "softsend:" + hashlib.sha256(f"{_digest(address)}|{send_key}".encode()).hexdigest()[:40]
            batch.soft.setdefault(address, []).append(_Soft(marker, row, lead))
        return

    if bounce_type is not None:
        type_ = "email_bounce"
        data.update(reason=_text(raw.get("reason")), status=_text(raw.get("status"), 20))
    elif kind in APPLIED:
        type_ = APPLIED[kind]
    else:
        type_ = STORED_ONLY.get(kind) or _custom_type(kind)
    if kind == "click" and isinstance(raw.get("url"), str):
        data["url"] = raw["url"][:2000]
    machine = kind == "open" and _truthy(raw.get("sg_machine_open"))
    if machine:
        data["machine_open"] = True  # privacy proxies open every email: stored, not scored
    if kind == "dropped":
        data["reason"] = _text(raw.get("reason"))
    applied = type_ in APPLIED.values() or type_ == "email_bounce"
    batch.rows.append(_row(event_id, type_, lead, address, at, data, applied=applied))

    if type_ in journey.SUPPRESSING_EVENTS:
        crud.suppress_now(session=session, lead=lead, address=address, type_=type_, reason=data.get("reason"))
    if kind == "dropped" and send_id and send_id in batch.email_status:
        batch.drop_reasons[send_id] = data["reason"] or "no reason given"
    if kind == "delivered" and address:
        batch.soft.setdefault(address, []).append(_Soft(None))  # resets the address's soft count
    engaged = "opened_at" if kind == "open" and not machine else ENGAGEMENT.get(type_)
    if send_id and engaged and send_id in batch.email_status:
        first = batch.engaged.get((send_id, engaged))
        batch.engaged[(send_id, engaged)] = at if first is None else min(first, at)
    status = {"delivered": "delivered", "open": "delivered" if machine else "opened", "click": "clicked",
              "bounce": "bounced", "dropped": "dropped", "spamreport": "spamreport", "processed": "sent"}.get(kind)
    if send_id and status:
        _raise_email_status(batch, send_id, status)


def _row(event_id: str, type_: str, lead: _LeadRef | None, address: str | None, at: datetime,
         data: dict[str, Any], *, applied: bool) -> dict[str, Any]:
    forgotten = lead is not None and lead.email is None
    # Stored-only events, and events of a forgotten lead (whose workflow is gone for
    # good), are born dispatched: the dispatcher never sends them to a workflow.
    done = not applied or forgotten or lead is None
    now = utcnow()
    return {"id": event_id, "lead_key": lead.key if lead else None, "email": None if forgotten else address,
            "anonymous_id": None, "type": type_, "at": at, "data": {} if forgotten else data,
            "received_at": now, "dispatched_at": now if done else None}


def _record_drop_reasons(session: Session, reasons: dict[str, str]) -> None:
    """The email row says why it was dropped (`lead show`, `outbox`): a quota or content
    drop is the operator's to fix, and the lead stays subscribed."""
    if reasons:
        table = Email.__table__  # type: ignore[attr-defined]
        session.execute(table.update().where(table.c.send_id == bindparam("b_send_id"))
                        .values(error=bindparam("b_error")),
                        [{"b_send_id": s, "b_error": f"dropped: {r}"[:1000]} for s, r in reasons.items()])


def _raise_email_status(batch: _Batch, send_id: str, status: str) -> None:
    current = batch.email_status.get(send_id)
    if current is None:
        return  # not one of our sends (or sent before this database)
    if EMAIL_RANK.get(status, 0) > EMAIL_RANK.get(current, 0):
        batch.email_status[send_id] = status
        batch.changed_emails.add(send_id)


# ---------------------------------------------------------------- soft failures


def _soft_bounces(session: Session, steps: dict[str, list[_Soft]]) -> list[_Soft]:
    """The soft failures that make their address bounce: the third send in a row.

    Counts live in `counter` rows: `softsend:<address|send>` marks a send already
    counted (its insert succeeds once, ever), `soft:<address>` counts the sends that
    soft-failed since the last delivery. Increments are atomic in SQL, so concurrent
    batches for one address count right; a few statements per address, not per event.
    """
    markers = sorted({step.marker for address_steps in steps.values() for step in address_steps if step.marker})
    fresh = _insert_counters(session, markers)  # sends soft-failing for the first time
    names = {address: "soft:" + _digest(address) for address in steps}
    current = _counter_values(session, list(names.values()))
    crossings: list[_Soft] = []
    for address, address_steps in steps.items():
        segments: list[list[_Soft]] = [[]]  # fresh soft failures between deliveries
        for step in address_steps:
            if step.marker is None:
                segments.append([])
            elif step.marker in fresh:
                fresh.discard(step.marker)  # a send's later deferrals in this batch: not again
                segments[-1].append(step)
        name, first, reset = names[address], segments[0], len(segments) > 1
        if not first and not (reset and (current.get(name, 0) or any(segments[1:]))):
            continue  # nothing to count, nothing to reset: no statement at all
        _insert_counters(session, [name])
        if first:
            value = session.execute(update(Counter).where(col(Counter.name) == name)
                                    .values(value=Counter.value + len(first)).returning(col(Counter.value))).scalar_one()
            before = value - len(first)
            if before < SOFT_BOUNCES <= value:
                crossings.append(first[SOFT_BOUNCES - before - 1])
        crossings += [segment[SOFT_BOUNCES - 1] for segment in segments[1:] if len(segment) >= SOFT_BOUNCES]
        if reset:  # a delivery proves the address works: count again from there
            session.execute(update(Counter).where(col(Counter.name) == name).values(value=len(segments[-1])))
    return crossings


def _insert_counters(session: Session, names: list[str]) -> set[str]:
    """Create counter rows at 0 unless they exist; returns the names created now."""
    created: set[str] = set()
    dialect = session.get_bind().dialect.name
    for start in range(0, len(names), CHUNK):
        chunk = names[start:start + CHUNK]
        if dialect in ("sqlite", "postgresql"):
            insert_ = sqlite_insert if dialect == "sqlite" else pg_insert
            statement = (insert_(Counter).values([{"name": name, "value": 0} for name in chunk])
                         .on_conflict_do_nothing(index_elements=["name"]).returning(col(Counter.name)))
            created.update(session.execute(statement).scalars())
            continue
        for name in chunk:  # any other database: one savepoint per row
            try:
                with session.begin_nested():
                    session.add(Counter(name=name, value=0))
                created.add(name)
            except IntegrityError:
                pass
    return created


def _counter_values(session: Session, names: list[str]) -> dict[str, int]:
    values: dict[str, int] = {}
    for chunk in _chunks(set(names)):
        values.update(session.exec(select(Counter.name, Counter.value).where(col(Counter.name).in_(chunk))).all())
    return values


def _digest(address: str) -> str:
    return security.email_hash(address)[:40]


# ---------------------------------------------------------------- routing


def _route(batch: _Batch, key: str | None, address: str | None) -> _LeadRef | None:
    """The lead the send named, if the event is about its address; else the address's lead.

    A send to a sales owner (handoff notification) names the lead in its custom args
    too: its events must not score, or suppress, the lead.
    """
    lead = batch.by_key.get(key) if key else None
    if lead is not None and (address is None or lead.email is None or _address(lead.email) == address):
        return lead
    return batch.by_email.get(address) if address else None


def _load_leads(session: Session, args: list[dict[str, str]], addresses: list[str | None], batch: _Batch) -> None:
    columns = (col(Lead.key), col(Lead.email), col(Lead.status))
    for chunk in _chunks({key for a in args if (key := a.get("lead"))}):
        for key, email, status in session.execute(select(*columns).where(col(Lead.key).in_(chunk))):
            batch.by_key[key] = _LeadRef(key, email, status)
    # By address only where the key did not already name that address's lead (events of
    # our own sends carry the key, so usually none).
    others = {address for a, address in zip(args, addresses)
              if address and _address(getattr(batch.by_key.get(a.get("lead", "")), "email", None)) != address}
    for chunk in _chunks(others):
        for key, email, status in session.execute(select(*columns).where(col(Lead.email).in_(chunk))):
            lead = batch.by_key.setdefault(key, _LeadRef(key, email, status))  # one object per lead
            batch.by_email[_address(email) or email] = lead


def _load_emails(session: Session, args: list[dict[str, str]], batch: _Batch) -> None:
    send_ids = {send_id for a in args if (send_id := a.get("send_id"))}
    for chunk in _chunks(send_ids):
        rows = session.exec(select(Email.send_id, Email.status).where(col(Email.send_id).in_(chunk))).all()
        batch.email_status.update({send_id: status for send_id, status in rows})


def _existing_ids(session: Session, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(set(ids)):
        found.update(session.exec(select(Event.id).where(col(Event.id).in_(chunk))).all())
    return found


# ---------------------------------------------------------------- small helpers


def _without_nul(value: Any) -> Any:
    """The parsed batch with NUL taken out of every string (keys too): signed by SendGrid,
    so not refused (it would retry for days), but never stored (PostgreSQL cannot)."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _chunks(values: set[str]) -> list[list[str]]:
    items = sorted(values)
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def _custom_args(raw: dict[str, Any]) -> dict[str, str]:
    """The custom args our send set; SendGrid flattens them into the event object."""
    nested = raw.get("custom_args") if isinstance(raw.get("custom_args"), dict) else {}
    out: dict[str, str] = {}
    for name, limit in (("lead", 64), ("send_id", 64), ("campaign", 100), ("step", 100)):
        value = raw.get(name, nested.get(name))  # type: ignore[union-attr]
        if isinstance(value, str) and value:
            out[name] = value[:limit]
    return out


def _event_id(raw: dict[str, Any]) -> str:
    sg_id = raw.get("sg_event_id")
    if isinstance(sg_id, str) and sg_id:
        return "sg:" + sg_id if len(sg_id) <= 190 else "sg:h:" + hashlib.sha256(sg_id.encode()).hexdigest()[:40]
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sg:h:" + hashlib.sha256(canonical.encode()).hexdigest()[:40]


def _message_key(raw: dict[str, Any]) -> str | None:
    """The message an event is about: SendGrid's id before the first dot."""
    value = raw.get("sg_message_id")
    return value.split(".", 1)[0] if isinstance(value, str) and value else None


def _address(value: Any) -> str | None:
    """The canonical address (nurture.addresses), the one leads are keyed on; None for
    anything else (the event is then routed by its custom args alone)."""
    if not isinstance(value, str):
        return None
    try:
        return canonical_email(value)
    except InvalidAddress:
        return None


def _timestamp(raw: dict[str, Any]) -> float | None:
    value = raw.get("timestamp")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if 0 < number < 32503680000 else None  # before year 3000


def _at(raw: dict[str, Any]) -> datetime:
    stamp = _timestamp(raw)
    return datetime.fromtimestamp(stamp, UTC) if stamp is not None else utcnow()


def _truthy(value: Any) -> bool:
    return value is True or value == 1 or (isinstance(value, str) and value.lower() in ("true", "1"))


def _text(value: Any, limit: int = 500) -> str | None:
    return None if value is None else str(value)[:limit]


def _custom_type(kind: str) -> str:
    """A SendGrid event type we do not know yet: kept as `sendgrid_<type>`, stored only."""
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in kind.lower())[:50]
    name = f"sendgrid_{cleaned}"
    return name if journey.is_event_type(name) else "sendgrid_other"
