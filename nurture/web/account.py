"""The signed-in user's own page (`/account`): who they are and the time zone their pages
show times in (contract section 7: times in the viewer's zone, the zone named)."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from zoneinfo import available_timezones

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from nurture import crud, users
from nurture.db import session_scope
from nurture.web.auth import current_user, read_form
from nurture.web.render import page

router = APIRouter()


@lru_cache(maxsize=1)
def zone_names() -> tuple[str, ...]:
    """Every IANA zone this machine knows, UTC first."""
    return ("UTC", *sorted(name for name in available_timezones() if name != "UTC" and "/" in name))


def _account_page(request: Request, status: int = 200, errors: dict[str, str] | None = None,
                  done: bool = False) -> Response:
    user = current_user(request)
    return page(request, "account.html", status, title="Your account", zones=zone_names(),
                chosen=user.timezone or "UTC", errors=errors or {}, done=done)


@router.get("/account")
def account(request: Request) -> Response:
    return _account_page(request, done=request.query_params.get("done") == "saved")


@router.post("/account")
async def account_save(request: Request) -> Response:
    """Save the time zone; an unknown one is shown next to the field, nothing saved."""
    fields = await read_form(request)
    try:
        zone = users.check_zone(fields.get("timezone"))
    except users.UserProblem as error:
        return _account_page(request, 400, errors={"timezone": str(error).split(": ", 1)[1]})
    user = current_user(request)
    await asyncio.to_thread(_save_zone, request.app.state.settings.db_url, user.id, zone)
    return RedirectResponse("/account?done=saved", status_code=303)


def _save_zone(db_url: str, user_id: int, zone: str | None) -> None:
    with session_scope(db_url) as session:
        crud.set_user_timezone(session=session, user_id=user_id, timezone=None if zone == "UTC" else zone)
