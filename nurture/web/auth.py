"""Sign-in, sessions and CSRF for the web app (contract section 7).

Deny by default: one middleware stands in front of every route. A path that is not in
`PUBLIC` (nor `/v1`, which has its Bearer keys) needs a valid session, else a GET is
sent to `/login?next=...` (303) and anything else is refused; so a page added later
cannot be reached anonymously by forgetting a decorator.

The session cookie is a token of `nurture.security` (HMAC-SHA256 with NURTURE_SECRET)
over `user id|email|expiry|nonce`: it cannot be forged or edited, ends after
SESSION_HOURS, and dies at once when the user is removed (each request reads the
user). HttpOnly, SameSite=Lax, Secure when NURTURE_PUBLIC_URL is https.

CSRF: every POST to a signed-in page must carry `csrf_token` (a form field, or the
X-CSRF-Token header), an HMAC of the session's nonce; without it: 403 and nothing
runs. Forms shown before anyone is signed in (`/login`, the `/h/` handoff link) use a
signed double submit instead: a random nonce in an HttpOnly cookie and its HMAC in the
form (`form_token` / `form_token_ok`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from nurture import addresses, crud, security, users
from nurture.config import Settings
from nurture.db import session_scope
from nurture.users import SignedIn
from nurture.web.render import message, page

SESSION_COOKIE = "nurture_session"
FORM_COOKIE = "nurture_form"  # the nonce of the double-submit forms (login, /h/)
SESSION_HOURS = 12
PUBLIC_EXACT = frozenset({"/healthz", "/metrics", "/login", "/webhooks/sendgrid"})
PUBLIC_PREFIXES = ("/u/", "/h/", "/static/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

router = APIRouter()


def is_public(path: str) -> bool:
    """Reachable without signing in (contract section 6); `/v1` has its own keys."""
    return path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES) or path == "/v1" or path.startswith("/v1/")


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of an urlencoded form (first value of each); {} for any other body."""
    if content_type and not content_type.lower().startswith("application/x-www-form-urlencoded"):
        return {}
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {name: values[0] for name, values in fields.items() if values}


async def read_form(request: Request) -> dict[str, str]:
    return form_fields(request.headers.get("content-type", ""), await request.body())


# ---------------------------------------------------------------- sessions


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _secure(settings: Settings) -> bool:
    return settings.public_url.lower().startswith("https://")


def session_token(secret: str, user: SignedIn, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_HOURS * 3600)
    return security.sign_token(secret, f"{user.id}|{user.email}|{expires}|{secrets.token_urlsafe(16)}", "session")


def _session_of(settings: Settings, token: str | None) -> tuple[SignedIn, str] | None:
    """(user, nonce) of a valid, unexpired session cookie whose user still exists."""
    payload = security.verify_token(settings.signing_secret(), token or "", "session")
    parts = payload.split("|") if payload else []
    if len(parts) != 4 or not parts[0].isdigit() or not parts[2].isdigit() or int(parts[2]) < time.time():
        return None
    with session_scope(settings.db_url) as session:
        user = crud.get_user_by_id(session=session, user_id=int(parts[0]))
        if user is None or user.email != parts[1]:
            return None  # removed (a later user may even have its id)
        return users.signed_in(user), parts[3]


def csrf_token(secret: str, nonce: str) -> str:
    return security.sign_token(secret, nonce, "csrf")


def current_user(request: Request) -> SignedIn:
    """The signed-in user (the middleware let the request through only with one)."""
    user = getattr(request.state, "user", None)
    assert isinstance(user, SignedIn), "a signed-in page was reached without a session"
    return user


# ---------------------------------------------------------------- double-submit forms


def form_token(request: Request, purpose: str) -> str:
    """The CSRF token of a form shown without a session (its nonce cookie is set on the
    response by `keep_form_nonce` when the browser has none yet)."""
    nonce = request.cookies.get(FORM_COOKIE) or ""
    if not 16 <= len(nonce) <= 64:
        nonce = getattr(request.state, "new_form_nonce", None) or secrets.token_urlsafe(24)
        request.state.new_form_nonce = nonce
    return security.sign_token(_settings(request).signing_secret(), nonce, purpose)


def keep_form_nonce(request: Request, response: Response) -> Response:
    nonce = getattr(request.state, "new_form_nonce", None)
    if nonce:
        response.set_cookie(FORM_COOKIE, nonce, httponly=True, samesite="lax",
                            secure=_secure(_settings(request)), path="/")
    return response


def form_token_ok(request: Request, token: str | None, purpose: str) -> bool:
    nonce = request.cookies.get(FORM_COOKIE)
    signed = security.verify_token(_settings(request).signing_secret(), token or "", purpose)
    return bool(nonce) and signed is not None and secrets.compare_digest(signed, nonce or "")


# ---------------------------------------------------------------- the guard


def install(app: FastAPI) -> None:
    """The deny-by-default guard in front of every route, and the sign-in routes."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        settings = _settings(request)
        found = await asyncio.to_thread(_session_of, settings, request.cookies.get(SESSION_COOKIE))
        request.state.user, request.state.csrf_token = None, ""
        if found is not None:
            request.state.user = found[0]
            request.state.csrf_token = csrf_token(settings.signing_secret(), found[1])
        path = request.url.path
        if is_public(path):
            return await call_next(request)
        if found is None:
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        if request.method not in SAFE_METHODS:
            given = request.headers.get("x-csrf-token") or (await read_form(request)).get("csrf_token", "")
            if not secrets.compare_digest(given.encode(), request.state.csrf_token.encode()):
                return message(request, 403, "Refused: the form was out of date",
                               "The form had no valid security token, so nothing was changed. "
                               "Go back, reload the page and try again.")
        return await call_next(request)

    app.include_router(router)


# ---------------------------------------------------------------- routes


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never `//evil.example` or `/\\evil.example`."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\n" in target:
        return "/"
    return target


def _login_page(request: Request, status: int = 200, *, email: str = "", next_: str = "/",
                errors: dict[str, str] | None = None) -> Response:
    token = form_token(request, "login")
    response = page(request, "login.html", status, title="Sign in", email=email, next=_safe_next(next_),
                    errors=errors or {}, form_csrf=token)
    return keep_form_nonce(request, response)


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    """The sign-in form (a signed-in user goes straight on)."""
    if request.state.user is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, next_=next or "/")


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the password; ten failures per account or address in 10 minutes: 429."""
    fields = await read_form(request)
    email, password, next_ = fields.get("email", "").strip(), fields.get("password", ""), fields.get("next", "/")
    if not form_token_ok(request, fields.get("csrf_token"), "login"):
        return message(request, 403, "Refused: the form was out of date",
                       "The sign-in form had no valid security token; nothing was checked. Reload it and try again.")
    if not email:
        return _login_page(request, 400, next_=next_, errors={"email": "Enter your email address."})
    settings = _settings(request)
    address = request.client.host if request.client else "unknown"
    try:
        account = addresses.canonical_email(email)
    except ValueError:
        account = email.lower()[:254]
    outcome = await asyncio.to_thread(_check, settings, account, address, email, password)
    if outcome == "throttled":
        return message(request, 429, "Too many failed sign-ins",
                       "Too many failed sign-ins for this account or from this address. "
                       f"Try again in {users.THROTTLE_FOR.seconds // 60} minutes.")
    if not isinstance(outcome, SignedIn):
        return _login_page(request, 401, email=email, next_=next_,
                           errors={"password": "Wrong email address or password."})
    response = RedirectResponse(_safe_next(next_), status_code=303)
    response.set_cookie(SESSION_COOKIE, session_token(settings.signing_secret(), outcome),
                        max_age=SESSION_HOURS * 3600, httponly=True, samesite="lax", secure=_secure(settings), path="/")
    return response


def _check(settings: Settings, account: str, address: str, email: str, password: str) -> SignedIn | str:
    with session_scope(settings.db_url) as session:
        if users.throttled(session, account, address):
            return "throttled"
        user = users.authenticate(session, email, password)
        if user is None:
            users.record_failure(session, account, address)
            return "failed"
        return users.signed_in(user)


@router.post("/logout")
def logout(request: Request) -> Response:
    """End the session (the guard checked its CSRF token)."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=_secure(_settings(request)))
    return response


def refuse(request: Request, text: str = "Your role cannot open this page.") -> Response:
    return message(request, 403, "Not allowed", text)
