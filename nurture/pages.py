"""Server-rendered pages for leads: unsubscribe (RFC 8058) and preferences.

`/u/{token}`: the token (nurture.security) names the lead and cannot be forged or
edited; a bad one gets a 404 page and changes nothing. A GET never changes anything
(mail scanners follow links); unsubscribing is a POST, either the RFC 8058 one-click
from the mailbox provider (`List-Unsubscribe=One-Click`, no cookie, no script) or
the page's own button. It sets the lead row's status at once, so the send activity
(which re-checks it before every email) sends nothing more, stores an
`email_unsubscribe` event and hands it to the lead's workflow with an update, which
ends the journey. If Temporal cannot take it now, the stored event is left
undispatched and `nurture.dispatcher` delivers it later: the unsubscribe holds either
way. The preferences view (`?view=preferences`) shows the status and lets a lead who
unsubscribed opt in again explicitly; that never undoes a bounce, a spam complaint
or an erasure.

Every page is Jinja2 with autoescaping. The web app itself (sign-in, campaigns at `/`,
leads, handoffs) is in `nurture.web`; these public pages stand alone.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from email.utils import parseaddr
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import DictLoader, Environment, select_autoescape
from sqlalchemy import update
from sqlmodel import col, select

from nurture import crud, security
from nurture.campaign import find_campaign, load_campaigns
from nurture.config import Settings
from nurture.db import session_scope
from nurture.journey import LeadEvent
from nurture.models import Email, Event, Lead, utcnow
from nurture.service import Nurture
from nurture.web.auth import form_fields
from nurture.wording import plural
from workflows.lead import EventsInput, LeadWorkflow, ResubscribeInput

log = logging.getLogger("nurture.pages")
router = APIRouter()
# How long a page waits for the lead's workflow; past it the stored event is left to
# the dispatcher (unsubscribe) or the lead is asked to try again (resubscribe).
UPDATE_TIMEOUT = 5.0
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{% block title %}{{ title }}{% endblock %}</title>
<style>
 body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;background:#f5f7fa;margin:0}
 main{max-width:{% block width %}34rem{% endblock %};margin:3rem auto;background:#fff;padding:2rem 2.25rem;
      border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
 h1{font-size:1.35rem;margin:0 0 1rem} h2{font-size:1.05rem;margin:1.75rem 0 .5rem}
 p{line-height:1.5} .muted{color:#7b8794;font-size:.9rem}
 button{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:6px;background:#1f2933;color:#fff;cursor:pointer}
 button.secondary{background:#e4e7eb;color:#1f2933}
 table{border-collapse:collapse;width:100%;font-size:.9rem} th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e4e7eb}
 th{color:#52606d;font-weight:600} td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
 a{color:#2f6fdf}
</style></head>
<body><main>{% block body %}{% endblock %}</main></body></html>
"""

TEMPLATES = {
    "base.html": _BASE,
    "confirm.html": """{% extends "base.html" %}{% block body %}
<h1>Unsubscribe from all marketing email from {{ brand }}?</h1>
<p>{{ email }} will receive no more marketing email from {{ brand }}.</p>
<form method="post" action="{{ token }}">
  <input type="hidden" name="action" value="unsubscribe">
  <button type="submit">Unsubscribe</button>
</form>
<p class="muted"><a href="{{ token }}?view=preferences">Email preferences</a></p>
{% endblock %}""",
    "done.html": """{% extends "base.html" %}{% block body %}
<h1>You are unsubscribed</h1>
<p>{{ email or "This address" }} will receive no more marketing email from {{ brand }}.</p>
<p class="muted">Changed your mind? <a href="{{ token }}?view=preferences">Email preferences</a></p>
{% endblock %}""",
    "preferences.html": """{% extends "base.html" %}{% block body %}
<h1>Email preferences</h1>
{% if notice %}<p><strong>{{ notice }}</strong></p>{% endif %}
{% if email %}<p class="muted">{{ email }}</p>{% endif %}
{% if status == "subscribed" %}
  <p>You receive marketing email from {{ brand }}.</p>
  <form method="post" action="{{ token }}"><input type="hidden" name="action" value="unsubscribe">
  <button type="submit">Unsubscribe from all marketing email</button></form>
{% elif status == "unsubscribed" %}
  <p>You are unsubscribed from all marketing email from {{ brand }}.</p>
  <form method="post" action="{{ token }}"><input type="hidden" name="action" value="resubscribe">
  <p class="muted">Resubscribing means you agree to receive marketing email from {{ brand }} again.</p>
  <button type="submit" class="secondary">Resubscribe</button></form>
{% elif status == "bounced" %}
  <p>Email to this address could not be delivered, so {{ brand }} no longer sends marketing email to it.</p>
{% elif status == "complained" %}
  <p>This address reported our email as spam, so {{ brand }} never sends marketing email to it again.</p>
{% elif status == "suppressed" %}
  <p>This address is on {{ brand }}'s do-not-email list; no marketing email is sent to it.</p>
{% else %}
  <p>This address was erased at its owner's request; nothing is sent to it.</p>
{% endif %}
{% endblock %}""",
    "message.html": """{% extends "base.html" %}{% block body %}
<h1>{{ title }}</h1><p>{{ message }}</p>
{% endblock %}""",
}

_env = Environment(loader=DictLoader(TEMPLATES), autoescape=select_autoescape(default=True, default_for_string=True))
_env.filters["plural"] = plural


def _page(template: str, code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("title", "Email preferences")
    return HTMLResponse(_env.get_template(template).render(**context), status_code=code, headers=HEADERS)


def _invalid() -> HTMLResponse:
    return _page("message.html", 404, title="This link is not valid",
                 message="This link is not valid. If you copied it from an email, check that the whole link was copied.")


# ---------------------------------------------------------------- unsubscribe and preferences


@router.get("/u/{token}", response_class=HTMLResponse)
async def unsubscribe_page(token: str, request: Request, view: str | None = None) -> HTMLResponse:
    """The confirmation page (a GET never unsubscribes), or `?view=preferences`."""
    settings: Settings = request.app.state.settings
    found = await asyncio.to_thread(_lead_for_token, settings, token)
    if found is None:
        return _invalid()
    lead, brand = found
    if view == "preferences" or lead.status != "subscribed" or lead.email is None:
        return _preferences(token, lead, brand)
    return _page("confirm.html", title="Unsubscribe", token=token, email=lead.email, brand=brand)


@router.post("/u/{token}", response_class=HTMLResponse)
async def unsubscribe_post(token: str, request: Request) -> HTMLResponse:
    """RFC 8058 one-click (`List-Unsubscribe=One-Click`), or the page's buttons."""
    settings: Settings = request.app.state.settings
    nurture: Nurture = request.app.state.nurture
    found = await asyncio.to_thread(_lead_for_token, settings, token)
    if found is None:
        return _invalid()
    lead, brand = found
    # Any body but a form (e.g. the multipart one-click) means unsubscribe.
    action = form_fields(request.headers.get("content-type", ""), await request.body()).get("action", "unsubscribe")
    if action == "resubscribe":
        return await _resubscribe(nurture, token, lead, brand)
    if action != "unsubscribe":
        return _page("message.html", 400, title="Unknown action", message="Nothing was changed.")
    event = await asyncio.to_thread(_store_unsubscribe, settings, lead.key)
    if event is not None:
        await _deliver(nurture, lead.key, event)
    return _page("done.html", title="You are unsubscribed", token=token, email=lead.email, brand=brand)


def _lead_for_token(settings: Settings, token: str) -> tuple[Lead, str] | None:
    key = security.verify_token(settings.signing_secret(), token)
    if key is None:
        return None
    with session_scope(settings.db_url) as session:
        lead = crud.get_lead_by_key(session=session, key=key)
        if lead is None:
            return None
        session.expunge(lead)  # changed below for display only, never written back
        suppressed = lead.email is not None and crud.is_suppressed(
            session=session, email_hash=security.stored_email_hash(lead.email))
        campaign = lead.campaign or session.exec(
            select(Email.campaign).where(Email.lead_key == key, col(Email.campaign).is_not(None))
            .order_by(col(Email.claimed_at).desc()).limit(1)).first()
    if suppressed and lead.status in ("subscribed", "unsubscribed"):
        lead.status = "suppressed"  # the suppression list wins over the row (never resubscribed)
    return lead, _brand(settings, campaign)


def _brand(settings: Settings, campaign: str | None) -> str:
    """Who the lead hears from: the sender name of its campaign (else of any campaign)."""
    try:
        found = find_campaign(settings.campaigns_dir, campaign) if campaign else None
        if found is None:
            every = load_campaigns(settings.campaigns_dir) if settings.campaigns_dir.exists() else []
            found = every[0] if every else None
    except Exception:  # noqa: BLE001 - a broken campaign file must not break unsubscribing
        found = None
    if found is None:
        return "us"
    name, address = parseaddr(found.sender.from_)
    return name or address.rpartition("@")[2] or "us"


def _store_unsubscribe(settings: Settings, key: str) -> LeadEvent | None:
    """Status unsubscribed now, and the event for the workflow; None if already done."""
    with session_scope(settings.db_url) as session:
        lead = crud.get_lead_by_key(session=session, key=key)
        if lead is None or lead.email is None:
            return None
        changed = session.execute(
            update(Lead).where(col(Lead.key) == key, col(Lead.status) == "subscribed")
            .values(status="unsubscribed", updated_at=utcnow()))
        if not changed.rowcount:  # type: ignore[attr-defined]
            return None  # already unsubscribed (or bounced, complained): unsubscribing twice is fine
        number = crud.next_counter(session=session, name=f"unsub:{key}")
        event = LeadEvent(id=f"unsub:{key}:{number}", type="email_unsubscribe", at=utcnow())
        crud.add_event(session=session, event=Event(id=event.id, lead_key=key, email=lead.email,
                                                    type=event.type, at=event.at, data={"via": "unsubscribe link"}))
        crud.note_link_unsubscribe(session=session, key=key, at=event.at)
        return event


async def _deliver(nurture: Nurture, key: str, event: LeadEvent) -> bool:
    """Hand the event to the workflow now; if Temporal cannot take it, the dispatcher will."""
    try:
        await asyncio.wait_for(nurture._update(key, LeadWorkflow.record_events, EventsInput([event])),
                               UPDATE_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - Temporal down, no worker, forgotten lead...
        log.warning("unsubscribe of lead %s stored; the workflow gets it later: %s", key,
                    str(error).splitlines()[0] if str(error) else type(error).__name__)
        return False
    await asyncio.to_thread(_mark_dispatched, nurture.settings, [event.id])
    return True


def _mark_dispatched(settings: Settings, ids: list[str]) -> None:
    with session_scope(settings.db_url) as session:
        crud.mark_dispatched(session=session, ids=ids)


def _preferences(token: str, lead: Lead, brand: str, notice: str | None = None, code: int = 200) -> HTMLResponse:
    shown = "forgotten" if lead.email is None else lead.status
    return _page("preferences.html", code, token=token, email=lead.email, status=shown, brand=brand, notice=notice)


async def _resubscribe(nurture: Nurture, token: str, lead: Lead, brand: str) -> HTMLResponse:
    """An explicit opt-in: only from `unsubscribed`; consent time recorded."""
    if lead.status == "subscribed":
        return _preferences(token, lead, brand, "You are subscribed.")
    if lead.email is None or lead.status != "unsubscribed":
        return _preferences(token, lead, brand, "This address cannot be resubscribed.", 409)
    settings = nurture.settings
    consent_at = utcnow()
    try:
        # Anything still waiting for the workflow (an unsubscribe stored while Temporal
        # was down) goes first, so it cannot land after the opt-in and undo it.
        pending = await asyncio.to_thread(_pending_events, settings, lead.key)
        if pending:
            await asyncio.wait_for(nurture._update(lead.key, LeadWorkflow.record_events, EventsInput(pending)),
                                   UPDATE_TIMEOUT)
            await asyncio.to_thread(_mark_dispatched, settings, [e.id for e in pending])
        result = await asyncio.wait_for(
            nurture._update(lead.key, LeadWorkflow.resubscribe, ResubscribeInput(consent_at=consent_at)),
            UPDATE_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - nothing changed; the lead may try again
        log.warning("resubscribe of lead %s failed: %s", lead.key, str(error).splitlines()[0] if str(error) else type(error).__name__)
        return _preferences(token, lead, brand, "We could not update your preferences right now; "
                                                "nothing was changed. Please try again in a minute.", 503)
    now_status = result.lead.get("status", lead.status)
    if now_status == "subscribed":
        await asyncio.to_thread(_record_consent, settings, lead.key, consent_at)
        lead.status = "subscribed"
        return _preferences(token, lead, brand, "You are subscribed again.")
    lead.status = now_status
    return _preferences(token, lead, brand, "This address cannot be resubscribed.", 409)


def _pending_events(settings: Settings, key: str) -> list[LeadEvent]:
    from activities.store import event_from_row

    with session_scope(settings.db_url) as session:
        rows = session.exec(select(Event).where(Event.lead_key == key, col(Event.dispatched_at).is_(None))
                            .order_by(col(Event.received_at))).all()
        return [event_from_row(row) for row in rows]


def _record_consent(settings: Settings, key: str, consent_at: datetime) -> None:
    with session_scope(settings.db_url) as session:
        session.execute(update(Lead).where(col(Lead.key) == key)
                        .values(consent_at=consent_at, status="subscribed", updated_at=utcnow()))
