"""Sales pages: the handoff inbox, a handoff's page, and the signed link of the handoff
email (`/h/{token}`, no sign-in needed).

Who sees what: a sales rep sees the handoffs assigned to them (and acts on them);
admins see and act on all; marketers see all, read-only (they follow the funnel, sales
decides). Every action calls `Nurture.handoff_action`, the operation behind
`nurture handoff accept|reject|won|lost`, so the web and the CLI cannot differ.

The `/h/` link names one handoff and its owner (nurture.security.handoff_url). It is
void once the handoff is reassigned (the owner differs) or closed (not open). A GET
shows the lead and the choices and changes nothing: mail scanners prefetch links. The
POST from that page, with its CSRF token (double submit), applies the choice.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from nurture import crud, security
from nurture.config import Settings
from nurture.db import session_scope
from nurture.models import Handoff
from nurture.service import Nurture, UserError
from nurture.temporal import TemporalUnavailable
from nurture.users import SignedIn
from nurture.web.auth import current_user, form_token, form_token_ok, keep_form_nonce, read_form, refuse
from nurture.web.render import message, page
from workflows.lead import OUTCOMES

router = APIRouter()
LINK_PURPOSE = "handoff-link"  # the double-submit token of the /h/ page's forms
LABELS = {"accept": "Accept", "reject": "Reject", "won": "Mark won", "lost": "Mark lost"}
DONE = {"accept": "accepted: the lead is now an opportunity", "reject": "rejected: the lead goes back to nurture",
        "won": "won: the lead is now a customer", "lost": "lost: the lead goes back to nurture"}
NEEDS_REASON = ("reject", "lost")


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def choices(status: str) -> list[str]:
    """The outcomes the lead's workflow accepts from this handoff status."""
    return [outcome for outcome, (allowed, _, _) in OUTCOMES.items() if status in allowed]


def _get(settings: Settings, handoff_id: int) -> Handoff | None:
    with session_scope(settings.db_url) as session:
        return crud.get_handoff(session=session, handoff_id=handoff_id)


def _visible(user: SignedIn, handoff: Handoff) -> bool:
    return user.role != "sales" or handoff.owner == user.email


def _may_act(user: SignedIn, handoff: Handoff) -> bool:
    return user.can_act_on_handoffs and _visible(user, handoff)


def _handoff_id(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) < 19 else None


@router.get("/handoffs")
async def inbox(request: Request) -> Response:
    """A rep's handoffs; every handoff for admins and marketers. Newest first."""
    user = current_user(request)
    status = request.query_params.get("status", "")
    rows = await asyncio.to_thread(_inbox, _settings(request), None if user.role != "sales" else user.email)
    shown = [h for h in rows if not status or h.status == status]
    return page(request, "handoffs.html", title="Handoffs", handoffs=shown, status=status,
                statuses=("open", "accepted", "rejected", "won", "lost"))


def _inbox(settings: Settings, owner: str | None) -> list[Handoff]:
    with session_scope(settings.db_url) as session:
        return list(crud.handoffs_of(session=session, owner=owner))


async def _load(request: Request, text_id: str) -> Handoff | Response:
    """The handoff the path names, or the page saying it is unknown or not this rep's."""
    handoff_id = _handoff_id(text_id)
    handoff = await asyncio.to_thread(_get, _settings(request), handoff_id) if handoff_id is not None else None
    if handoff is None:
        return message(request, 404, "No such handoff", f"There is no handoff {text_id}.")
    if not _visible(current_user(request), handoff):
        return refuse(request, "This handoff is assigned to another rep.")
    return handoff


async def _handoff_page(request: Request, text_id: str, status: int = 200, **extra: Any) -> Response:
    user = current_user(request)
    handoff = await _load(request, text_id)
    if not isinstance(handoff, Handoff):
        return handoff
    extra.setdefault("notice", None)
    return page(request, "handoff.html", status, title=f"Handoff {handoff.id}", handoff=handoff,
                snapshot=handoff.snapshot or {}, choices=choices(handoff.status) if _may_act(user, handoff) else [],
                labels=LABELS, needs_reason=NEEDS_REASON, action_url=f"/handoffs/{handoff.id}",
                form_csrf=request.state.csrf_token, **extra)


@router.get("/handoffs/{handoff_id}")
async def handoff_page(handoff_id: str, request: Request) -> Response:
    """The snapshot (why now, events, BANT) and the actions its status allows."""
    return await _handoff_page(request, handoff_id, notice=DONE.get(request.query_params.get("done", "")))


@router.post("/handoffs/{handoff_id}")
async def handoff_act(handoff_id: str, request: Request) -> Response:
    """accept / reject (reason) / won / lost, as `nurture handoff ...` does."""
    handoff = await _load(request, handoff_id)
    if not isinstance(handoff, Handoff):
        return handoff
    if not _may_act(current_user(request), handoff):
        return refuse(request, "Only the assigned rep or an admin can decide on this handoff.")
    fields = await read_form(request)
    problem = await _apply(request.app.state.nurture, handoff, fields)
    if problem is not None:
        return await _handoff_page(request, handoff_id, problem[0], errors=problem[1])
    return RedirectResponse(f"/handoffs/{handoff.id}?done={fields['outcome']}", status_code=303)


async def _apply(nurture: Nurture, handoff: Handoff, fields: dict[str, str]) -> tuple[int, dict[str, str]] | None:
    """Run the chosen outcome; (status, errors by field) when it cannot be done."""
    outcome, reason = fields.get("outcome", ""), fields.get("reason", "").strip()
    if outcome not in OUTCOMES:
        return 400, {"outcome": "Choose accept, reject, won or lost."}
    if outcome in NEEDS_REASON and not reason:
        return 400, {f"reason-{outcome}": "Say why (it is kept in the lead's history)."}
    if len(reason) > 1000:
        return 400, {f"reason-{outcome}": "At most 1,000 characters."}
    assert handoff.id is not None
    try:
        await nurture.handoff_action(handoff.id, outcome, reason if outcome in NEEDS_REASON else None)
    except UserError as error:
        return 409, {"outcome": str(error)}
    except TemporalUnavailable as error:
        return 503, {"outcome": f"Nothing was changed: {error}"}
    return None


# ---------------------------------------------------------------- the email's signed link


def _linked(settings: Settings, token: str) -> Handoff | str:
    """The handoff a live `/h/` token names, or why the link does not work."""
    found = security.verify_handoff_token(settings.signing_secret(), token)
    if found is None:
        return "forged"
    handoff = _get(settings, found[0])
    if handoff is None or handoff.owner != found[1]:
        return "reassigned"
    if handoff.status != "open":
        return "closed"
    return handoff


VOID = {
    "forged": "This link is not valid. If you copied it from an email, check that the whole link was copied.",
    "reassigned": "This handoff is no longer assigned to the person this link was sent to, so the link no "
                  "longer works. Nothing was changed.",
    "closed": "This handoff has already been decided, so the link no longer works. Nothing was changed.",
}


def _void(request: Request, why: str) -> Response:
    return message(request, 404 if why == "forged" else 410, "This link no longer works", VOID[why])


def _link_page(request: Request, token: str, handoff: Handoff, status: int = 200, **extra: Any) -> Response:
    extra.setdefault("errors", {})
    response = page(request, "handoff.html", status, title=f"Handoff {handoff.id}", handoff=handoff,
                    snapshot=handoff.snapshot or {}, choices=choices(handoff.status), labels=LABELS,
                    needs_reason=NEEDS_REASON, action_url=f"/h/{token}", notice=None,
                    form_csrf=form_token(request, LINK_PURPOSE), **extra)
    return keep_form_nonce(request, response)


@router.get("/h/{token}")
async def link_page(token: str, request: Request) -> Response:
    """The lead and the choices; changes nothing (link scanners prefetch)."""
    found = await asyncio.to_thread(_linked, _settings(request), token)
    if isinstance(found, str):
        return _void(request, found)
    return _link_page(request, token, found)


@router.post("/h/{token}")
async def link_act(token: str, request: Request) -> Response:
    """The choice posted from the link's page, with its CSRF token."""
    found = await asyncio.to_thread(_linked, _settings(request), token)
    if isinstance(found, str):
        return _void(request, found)
    fields = await read_form(request)
    if not form_token_ok(request, fields.get("csrf_token"), LINK_PURPOSE):
        return message(request, 403, "Refused: the form was out of date",
                       "The form had no valid security token, so nothing was changed. Open the link again.")
    problem = await _apply(request.app.state.nurture, found, fields)
    if problem is not None:
        return _link_page(request, token, found, problem[0], errors=problem[1])
    return message(request, 200, f"Handoff {found.id} {DONE[fields['outcome']].split(':')[0]}",
                   f"{found.email or 'The lead'}: {DONE[fields['outcome']].split(': ', 1)[1]}.")
