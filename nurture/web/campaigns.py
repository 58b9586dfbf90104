"""The campaigns overview (`/`) and a campaign's page (`/campaigns/{name}`).

Both render the stats document of `nurture.stats` as it is, so every number on them
is the JSON's (`GET /v1/campaigns/{name}/stats`). `?range=7|30|90|all` (days) counts
enrollments begun, steps reached and emails sent in that window.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from nurture import stats
from nurture.campaign import CampaignError, UnknownCampaignError, find_campaign
from nurture.config import Settings
from nurture.stats_store import CONVERSION_STAGES
from nurture.web import journey_svg
from nurture.service import NotFound, Nurture, UserError
from nurture.temporal import TemporalUnavailable
from nurture.web.auth import current_user, read_form, refuse
from nurture.web.render import message, page

router = APIRouter()
RANGES = (("7", "7 days"), ("30", "30 days"), ("90", "90 days"), ("all", "all time"))
STEP_COLUMNS = (("reached", "reached"), ("waiting", "waiting now"), ("sent", "sent"), ("delivered", "delivered"),
                ("unique_opens", "unique opens"), ("unique_clicks", "unique clicks"), ("bounced", "bounces"),
                ("unsubscribed", "unsubscribes"))
RATE_OF = {"delivered": "delivered", "unique_opens": "open", "unique_clicks": "click", "bounced": "bounce",
           "unsubscribed": "unsubscribe"}


def since_of(range_: str | None) -> tuple[str, datetime | None]:
    """The range chosen (an unknown one means all time) and when it starts."""
    if range_ not in {value for value, _ in RANGES} or range_ in (None, "all"):
        return "all", None
    return range_, datetime.now(timezone.utc) - timedelta(days=int(range_))


def _context(range_: str, since: datetime | None) -> dict[str, object]:
    return {"ranges": RANGES, "range": range_, "since": f"{since:%Y-%m-%d %H:%M} UTC" if since else None,
            "percent": journey_svg.percent, "stages": CONVERSION_STAGES}


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, range: str | None = None) -> Response:  # noqa: A002 - the query's name
    """Every campaign with its status, version, enrollments, exits and conversions (sales
    reps, who see only handoffs and the leads handed to them, go to their inbox)."""
    if current_user(request).role == "sales":
        return RedirectResponse("/handoffs", status_code=303)
    settings: Settings = request.app.state.settings
    chosen, since = since_of(range)
    try:
        campaigns = await asyncio.to_thread(stats.overview_of, settings, since)
        error = None
    except CampaignError as problem:
        campaigns, error = [], f"{str(problem).splitlines()[0]} (run `nurture campaign validate`)"
    funnel = await asyncio.to_thread(stats.funnel_of, settings)
    return page(request, "campaigns.html", title="Campaigns", campaigns=campaigns, error=error, funnel=funnel,
                **_context(chosen, since))


@router.get("/campaigns/{name}", response_class=HTMLResponse)
async def campaign_page(name: str, request: Request, range: str | None = None) -> Response:  # noqa: A002
    """The journey as a graph with each step's numbers, the A/B tables, sends and clicks per day."""
    return await _campaign_page(request, name, range)


async def _campaign_page(request: Request, name: str, range_: str | None = None, status: int = 200,
                         errors: dict[str, str] | None = None) -> Response:
    if current_user(request).role == "sales":
        return refuse(request, "Sales reps see the leads handed to them in their inbox.")
    settings: Settings = request.app.state.settings
    chosen, since = since_of(range_)
    try:
        campaign, document = await asyncio.to_thread(stats.stats_of, settings, name, since)
    except UnknownCampaignError:
        return message(request, 404, "No such campaign", f"There is no campaign named '{name}'.")
    except CampaignError as problem:
        return message(request, 409, "Campaign file invalid", str(problem).splitlines()[0])
    return page(request, "campaign.html", status, title=campaign.name, stats=document,
                description=campaign.description, graph=journey_svg.journey_graph(campaign, document),
                daily=journey_svg.daily_chart(document["per_day"]), columns=STEP_COLUMNS, rate_of=RATE_OF,
                can_control=current_user(request).can_act_on_leads, notice=NOTICES.get(request.query_params.get("done", "")),
                errors=errors or {}, **_context(chosen, since))


@router.get("/campaigns/{name}/preview", response_class=HTMLResponse)
async def campaign_preview(name: str, request: Request, step: str | None = None, email: str | None = None) -> Response:
    """A send step's email exactly as the send activity would send it to a chosen lead
    (`nurture email preview`; the sample lead when no address is given)."""
    if not current_user(request).can_act_on_leads:
        return refuse(request, "Only marketers and admins preview campaign emails.")
    settings: Settings = request.app.state.settings
    try:
        campaign = await asyncio.to_thread(find_campaign, settings.campaigns_dir, name)
    except UnknownCampaignError:
        return message(request, 404, "No such campaign", f"There is no campaign named '{name}'.")
    except CampaignError as problem:
        return message(request, 409, "Campaign file invalid", str(problem).splitlines()[0])
    sends = [s for s in campaign.steps if s.kind == "send"]
    chosen = next((s for s in sends if s.id == step), sends[0] if sends and not step else None)
    errors: dict[str, str] = {}
    shown = None
    if chosen is None:
        errors["step"] = f"'{step}' is no send step of {name}" if step else f"{name} sends no email"
    else:
        try:
            shown = await asyncio.to_thread(_preview, settings, chosen.send, name, chosen.id, (email or "").strip())
        except NotFound as missing:
            errors["email"] = str(missing)
        except UserError as problem:
            errors["email" if email and "email" in str(problem) else "step"] = str(problem).removeprefix("--email: ")
    return page(request, "preview.html", 400 if errors else 200, title=f"Preview · {name}", campaign=name,
                sends=[s.id for s in sends], step=chosen.id if chosen else step, email=email or "",
                shown=shown.as_json() if shown else None, errors=errors)


def _preview(settings: Settings, template: str, campaign: str, step: str, email: str) -> Any:
    from nurture.proofs import preview, sample_lead, stored_lead  # the send activity's own composing

    return preview(settings, template, stored_lead(settings, email) if email else sample_lead(),
                   campaign=campaign, step=step)


NOTICES = {"pause": "Paused: nothing is sent; its leads wait where they are.",
           "resume": "Resumed: each lead goes on where it was.",
           "stop": "Stopped: every lead left the campaign."}


@router.post("/campaigns/{name}/{action}")
async def campaign_control(name: str, action: str, request: Request) -> Response:
    """Pause, resume or stop, as `nurture campaign pause|resume|stop NAME` (marketers, admins)."""
    if action not in NOTICES:
        return message(request, 404, "Not found", "There is no such page.")
    if not current_user(request).can_act_on_leads:
        return refuse(request, "Only marketers and admins pause, resume or stop campaigns.")
    if action == "stop" and (await read_form(request)).get("confirm") != "stop":
        return await _campaign_page(request, name, status=400,
                                    errors={"stop": "Tick the box to confirm: every lead leaves the campaign."})
    nurture: Nurture = request.app.state.nurture
    try:
        await nurture.control_campaign(name, action, by=current_user(request).email)
    except UserError as error:
        return message(request, 409, "Not changed", str(error))
    except TemporalUnavailable as error:
        return message(request, 503, "Not every lead was told", str(error))
    return RedirectResponse(f"/campaigns/{quote(name, safe='')}?done={action}", status_code=303)
