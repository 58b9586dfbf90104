"""Lead pages: the list with search and filters (and its CSV), one lead's page, and the
marketer's actions on it (enroll, forget with a confirmation step).

Sales reps do not browse leads: `/leads` sends them to their inbox, and a lead's page
opens for a rep only when one of the lead's handoffs is (or was) theirs. There is no
"remove from campaign" action: nurture.service has no operation for it (a lead leaves
a campaign by finishing it, by `exit_when`, or by `enroll --switch` into another).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from nurture import addresses, crud, csvsafe, when
from nurture.campaign import load_campaigns, load_funnel
from nurture.config import Settings
from nurture.db import session_scope
from nurture.journey import iso
from nurture.models import Lead, as_utc
from nurture.service import NotFound, Nurture, UserError, lead_json
from nurture.temporal import TemporalUnavailable
from nurture.users import SignedIn
from nurture.web.auth import current_user, read_form, refuse
from nurture.web.chart import score_chart
from nurture.web.render import message, page

router = APIRouter()
PAGE_SIZE = 50
FILTERS = {
    "stage": ("visitor", "lead", "mql", "sql", "opportunity", "customer", "recycled", "disqualified"),
    "grade": ("A", "B", "C", "D", "F"),
    "temperature": ("cold", "warm", "hot"),
    "status": ("subscribed", "unsubscribed", "bounced", "complained"),
}
DONE = {"enrolled": "Enrolled.", "removed": "Removed from the campaign."}  # what the page says after an action redirected to it
CSV_COLUMNS = ("email", "first_name", "last_name", "company", "job_title", "country", "stage", "status",
               "score", "grade", "temperature", "owner", "campaign", "step", "created_at")


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _campaign_names(settings: Settings) -> list[str]:
    try:
        return sorted(c.name for c in load_campaigns(settings.campaigns_dir)) if settings.campaigns_dir.exists() else []
    except Exception:  # noqa: BLE001 - a broken campaign file must not break the lead pages
        return []


def _query(request: Request) -> tuple[dict[str, str], dict[str, str]]:
    """The filters asked for (unknown values dropped, each named in the errors)."""
    params = request.query_params
    chosen: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name, allowed in FILTERS.items():
        value = params.get(name, "")
        if value and value not in allowed:
            errors[name] = f"unknown {name} '{value}'"
        elif value:
            chosen[name] = value
    for name in ("q", "campaign"):
        value = params.get(name, "").strip()[:200]
        if value:
            chosen[name] = value
    return chosen, errors


def _after(request: Request) -> int:
    value = request.query_params.get("after", "0")
    return int(value) if value.isdigit() and len(value) < 19 else 0


def lead_row(lead: Lead) -> dict[str, Any]:
    return {"email": lead.email, "first_name": lead.first_name, "last_name": lead.last_name,
            "company": lead.company, "job_title": lead.job_title, "country": lead.country,
            "stage": lead.stage, "status": lead.status, "score": lead.score, "grade": lead.grade,
            "temperature": lead.temperature, "owner": lead.owner, "campaign": lead.campaign, "step": lead.step,
            "created_at": iso(as_utc(lead.created_at))}


@router.get("/leads")
async def leads_page(request: Request) -> Response:
    """Search (email, name, company), filters, pages of PAGE_SIZE in id order."""
    user = current_user(request)
    if user.role == "sales":
        return RedirectResponse("/handoffs", status_code=303)
    settings = _settings(request)
    chosen, errors = _query(request)
    after = _after(request)
    found = await asyncio.to_thread(_list, settings, chosen, after, PAGE_SIZE + 1)
    more = len(found) > PAGE_SIZE
    rows = [lead_row(lead) for lead in found[:PAGE_SIZE]]
    next_url = f"/leads?{urlencode({**chosen, 'after': found[PAGE_SIZE - 1].id})}" if more else None
    return page(request, "leads.html", 400 if errors else 200, title="Leads", rows=rows, chosen=chosen,
                filters=FILTERS, campaigns=_campaign_names(settings), errors=errors, next_url=next_url,
                first_url=f"/leads?{urlencode(chosen)}" if after else None,
                csv_url=f"/leads.csv?{urlencode(chosen)}")


def _list(settings: Settings, chosen: dict[str, str], after: int, limit: int) -> list[Lead]:
    with session_scope(settings.db_url) as session:
        return list(crud.list_leads(session=session, after_id=after, limit=limit, **chosen))


@router.get("/leads.csv")
async def leads_csv(request: Request) -> Response:
    """Every lead of the same query as `/leads`, as CSV (formula cells neutralised)."""
    user = current_user(request)
    if user.role == "sales":
        return refuse(request, "Sales reps see the leads handed to them in their inbox.")
    chosen, errors = _query(request)
    if errors:
        return message(request, 400, "Unknown filter", "; ".join(errors.values()))
    settings = _settings(request)
    rows = await asyncio.to_thread(_all_rows, settings, chosen)
    out = io.StringIO(newline="")
    csvsafe.write_csv(out, CSV_COLUMNS, rows)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="leads.csv"', "Cache-Control": "no-store"})


def _all_rows(settings: Settings, chosen: dict[str, str]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    after = 0
    while True:  # the same keyset pages as the list, 1,000 at a time
        chunk = _list(settings, chosen, after, 1000)
        rows.extend([lead_row(lead)[name] for name in CSV_COLUMNS] for lead in chunk)
        if len(chunk) < 1000:
            return rows
        after = chunk[-1].id or after


# ---------------------------------------------------------------- one lead


def _find(settings: Settings, email: str, user: SignedIn) -> dict[str, Any] | None | str:
    """Everything the lead's page shows; None if unknown, "refused" if this rep may not see it."""
    try:
        address = addresses.canonical_email(email)
    except ValueError:
        return None
    with session_scope(settings.db_url) as session:
        lead = crud.get_lead(session=session, email=address)
        if lead is None:
            return None
        handoffs = crud.handoffs_of(session=session, key=lead.key)
        if user.role == "sales" and not any(h.owner == user.email for h in handoffs):
            return "refused"
        shown = lead_json(session, lead)
        emails = crud.emails_of(session=session, key=lead.key)
    zone = lead.timezone or user.timezone  # the lead's own, else the viewer's (then UTC)
    return {
        "lead": shown, "row": lead, "zone": when.zone(zone)[1], "attributes": sorted((lead.attributes or {}).items()),
        "history": shown["history"],
        "emails": [{"at": when.clock(as_utc(e.sent_at or e.claimed_at), zone), "to": e.to, "subject": e.subject,
                    "campaign": e.campaign, "step": e.step, "status": e.status, "marketing": e.marketing}
                   for e in emails],
        "handoffs": handoffs,
        "until_local": when.labelled(shown["next_action_at"], zone) if shown["next_action_at"] else "",
        "until_utc": when.labelled(shown["next_action_at"]) if shown["next_action_at"] else "",
        "chart": score_chart([(h["at"], h["score"]) for h in shown["history"] if h["score"] is not None],
                             _mql_score(settings)),
    }


def _mql_score(settings: Settings) -> int | None:
    try:
        return load_funnel(settings.funnel_file if settings.funnel_file.exists() else None).qualify.mql.score
    except Exception:  # noqa: BLE001 - the chart is drawn without the line rather than not at all
        return None


async def _lead_page(request: Request, email: str, status: int = 200, **extra: Any) -> Response:
    settings = _settings(request)
    user = current_user(request)
    found = await asyncio.to_thread(_find, settings, email, user)
    if found is None:
        return _no_lead(request, email)
    if found == "refused":
        return refuse(request, "This lead was not handed to you.")
    assert isinstance(found, dict)
    done = DONE.get(request.query_params.get("done", ""))
    return page(request, "lead.html", status, title=found["lead"]["email"], campaigns=_campaign_names(settings),
                can_act=user.can_act_on_leads, request_done=done, **found, **extra)


@router.get("/leads/{email}")
async def lead_page(email: str, request: Request) -> Response:
    """Profile, numbers, score chart, where it is and why, history, emails, handoffs."""
    return await _lead_page(request, email)


def _not_marketer(request: Request, what: str) -> Response | None:
    """The refusal page when the signed-in user may not `what` (sales reps)."""
    return None if current_user(request).can_act_on_leads else refuse(request, f"Only marketers and admins {what}.")


def _no_lead(request: Request, email: str) -> Response:
    return message(request, 404, "No such lead", f"There is no lead with the address {email}.")


@router.post("/leads/{email}/enroll")
async def lead_enroll(email: str, request: Request) -> Response:
    """Enroll in a campaign, as `nurture enroll EMAIL CAMPAIGN [--switch]` does."""
    if refused := _not_marketer(request, "enroll leads"):
        return refused
    fields = await read_form(request)
    campaign = fields.get("campaign", "").strip()
    if not campaign:
        return await _lead_page(request, email, 400, errors={"campaign": "Choose a campaign."})
    nurture: Nurture = request.app.state.nurture
    return await _act(request, email, "enroll", "enrolled", "campaign",
                      nurture.enroll(email, campaign, switch=fields.get("switch") == "yes"))


@router.post("/leads/{email}/remove")
async def lead_remove(email: str, request: Request) -> Response:
    """Take the lead out of its campaign, as `nurture remove EMAIL` does."""
    if refused := _not_marketer(request, "remove leads from campaigns"):
        return refused
    nurture: Nurture = request.app.state.nurture
    return await _act(request, email, "remove", "removed", "remove",
                      nurture.remove(email, by=current_user(request).email))


async def _act(request: Request, email: str, verb: str, done: str, field: str, action: Awaitable[Any]) -> Response:
    """Run a lead page action: back to the page saying `done`, or the page with the
    refusal next to `field`, or a page saying nothing changed (no worker answered)."""
    try:
        await action
    except NotFound:
        return _no_lead(request, email)
    except UserError as error:
        return await _lead_page(request, email, 409, errors={field: str(error)})
    except TemporalUnavailable as error:
        return message(request, 503, f"Could not {verb} now", f"Nothing was changed: {error}")
    return RedirectResponse(f"/leads/{quote(email, safe='@')}?done={done}", status_code=303)


@router.get("/leads/{email}/forget")
async def lead_forget_confirm(email: str, request: Request) -> Response:
    """The confirmation step before erasing a lead (a GET changes nothing)."""
    if refused := _not_marketer(request, "forget leads"):
        return refused
    found = await asyncio.to_thread(_find, _settings(request), email, current_user(request))
    if not isinstance(found, dict):
        return _no_lead(request, email)
    return page(request, "forget.html", title="Forget this lead?", lead=found["lead"])


@router.post("/leads/{email}/forget")
async def lead_forget(email: str, request: Request) -> Response:
    """Erase personal data as `nurture lead forget` does, once confirmed."""
    if refused := _not_marketer(request, "forget leads"):
        return refused
    fields = await read_form(request)
    if fields.get("confirm") != "forget":
        return RedirectResponse(f"/leads/{quote(email, safe='@')}/forget", status_code=303)
    nurture: Nurture = request.app.state.nurture
    try:
        await nurture.forget(email)
    except NotFound:
        return _no_lead(request, email)
    except UserError as error:
        return message(request, 409, "Forgotten, with a warning", str(error))
    except TemporalUnavailable as error:
        return message(request, 503, "Could not forget now", f"Nothing was changed: {error}")
    return message(request, 200, "Lead forgotten",
                   "Personal data erased and journeys stopped; the address is kept only as a hash so it is "
                   "never mailed again.")
