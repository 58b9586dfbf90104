"""The HTTP API (contract section 6): thin routes over `nurture.service`.

Bad input always gets a 4xx JSON error naming the field, never a 500.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from nurture import journey, leadfields, pages, security, stats, web, webhooks
from nurture.campaign import CampaignError, UnknownCampaignError
from nurture.config import Settings
from nurture.leads import FilterError, lead_filters, list_page
from nurture.service import Conflict, InvalidField, LeadIn, NotFound, Nurture, UserError
from nurture.temporal import TemporalUnavailable

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # 1 MiB for the /v1 API
MAX_WEBHOOK_BODY = 16 << 20  # SendGrid batches run to thousands of events
LIST_PARAMS = ("stage", "grade", "temperature", "status", "campaign", "q", "limit", "cursor")


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


# ---------------------------------------------------------------- bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """No NUL in any text, at any depth (keys too): refused, never stored."""
        if _has_nul(value):
            raise ValueError("contains a NUL character")
        return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _shared(check: Any, *args: Any) -> Any:
    """A check of nurture.leadfields as a pydantic validator (the field is pydantic's)."""
    try:
        return check(*args)
    except leadfields.FieldError as error:
        raise ValueError(error.message) from None


class LeadBody(_Body):
    email: str = Field(max_length=254)
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    company: str | None = Field(default=None, max_length=200)
    job_title: str | None = Field(default=None, max_length=200)
    company_size: int | None = Field(default=None, ge=0, le=10_000_000)
    country: str | None = None  # checked by nurture.leadfields
    timezone: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=16)
    source: str | None = Field(default=None, max_length=100)
    anonymous_id: str | None = Field(default=None, max_length=200)
    attributes: dict[str, str | int | float | bool | None] = {}
    consent: bool | None = None
    consent_at: datetime | None = None
    campaign: str | None = Field(default=None, max_length=100)

    @field_validator("email", "timezone", "locale", "country", "company_size")
    @classmethod
    def _field(cls, value: Any, info: ValidationInfo) -> Any:
        return _shared(leadfields.check_field, info.field_name, value)

    @field_validator("consent_at")
    @classmethod
    def _consent_at(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _shared(leadfields.check_time, "consent_at", value)


class EventBody(_Body):
    email: str | None = Field(default=None, max_length=254)
    anonymous_id: str | None = Field(default=None, max_length=200)
    type: str = Field(pattern=journey.EVENT_TYPE.pattern)
    id: str | None = Field(default=None, max_length=200)
    url: str | None = Field(default=None, max_length=2000)
    asset: str | None = Field(default=None, max_length=500)
    form: str | None = Field(default=None, max_length=200)
    event: str | None = Field(default=None, max_length=200)
    campaign: str | None = Field(default=None, max_length=100)
    step: str | None = Field(default=None, max_length=100)
    at: datetime | None = None
    # An open reported by a privacy proxy (Apple Mail Privacy Protection and the like):
    # stored with the lead's events, never scored.
    machine_open: bool = False
    bant: dict[Literal["budget", "authority", "need", "timing"], bool | None] | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else _shared(leadfields.check_email, value)

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # Checked before any conversion: 0001-01-01T00:00+01:00 cannot even become UTC.
        return None if value is None else _shared(leadfields.check_time, "at", value)


class BantBody(_Body):
    budget: bool | None = None
    authority: bool | None = None
    need: bool | None = None
    timing: bool | None = None


class ReasonBody(_Body):
    reason: str = Field(min_length=1, max_length=1000)


# ---------------------------------------------------------------- dependencies


def parse_since(text: str | None) -> datetime | None:
    """`?since=` as an aware time (UTC when it names no zone)."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as error:
        raise ApiError(422, f"expected an ISO 8601 time like 2026-12-01T00:00:00Z, got '{text[:50]}'", "since") from error
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def get_nurture(request: Request) -> Nurture:
    return request.app.state.nurture


def require_key(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Bearer API key, compared in constant time; no keys configured: writes refused."""
    keys = request.app.state.settings.api_key_list
    if not keys:
        raise ApiError(401, "the API refuses this request: NURTURE_API_KEYS is not set on the server")
    presented = authorization[7:] if authorization and authorization.lower().startswith("bearer ") else None
    if not security.api_key_ok(presented, keys):
        raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", "authorization")


# Module level, so FastAPI can resolve them (this module uses postponed annotations).
NurtureDep = Annotated[Nurture, Depends(get_nurture)]
Auth = Depends(require_key)


# ---------------------------------------------------------------- app


def create_app(settings: Settings, client: Any | None = None) -> FastAPI:
    app = FastAPI(title="nurture", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.nurture = Nurture(settings, client)
    app.state.settings = settings
    _install_errors(app)
    web.install(app)  # the sign-in guard; installed first so the body limit runs before it
    _install_body_limit(app)
    _install_host_check(app, settings.allowed_host_names)  # added last: runs first

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: 200 while the process serves. A broken configuration file makes it
        {"ok": false, "degraded": [one line per file]}, still 200: journeys go on, on
        the file's last valid version, and taking the API away would only stop more."""
        degraded = [broken.line() for broken in app.state.nurture.config.broken()]
        return {"ok": False, "degraded": degraded} if degraded else {"ok": True}

    metrics_registry = None

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus text format (nurture.metrics), read from the store at each scrape."""
        nonlocal metrics_registry
        from nurture import metrics as ops  # prometheus-client: only when scraped

        if metrics_registry is None:
            metrics_registry = ops.registry_for(settings)
        try:
            body = ops.exposition(metrics_registry)
        except DBAPIError as error:
            return PlainTextResponse(f"store unavailable: {type(error.orig).__name__}\n", status_code=503)
        return Response(body, media_type=ops.CONTENT_TYPE)

    @app.post("/v1/leads", dependencies=[Auth])
    async def upsert_lead(body: LeadBody, nurture: NurtureDep) -> JSONResponse:
        """Create or update a lead by email; optional `campaign` enrolls it."""
        exists = _exists(nurture, body.email)
        consent_at = body.consent_at or (datetime.now().astimezone() if body.consent else None)
        data = LeadIn(**body.model_dump(exclude={"consent", "consent_at", "campaign"}), consent_at=consent_at)
        result = await nurture.add_lead(data, campaign=body.campaign)
        lead = nurture.show(body.email)
        if result.message:
            lead["enroll_error"] = result.message
        return JSONResponse(lead, status_code=200 if exists else 201)

    @app.get("/v1/leads", dependencies=[Auth])
    def list_leads(request: Request, nurture: NurtureDep) -> dict[str, Any]:
        """Leads matching the filters, oldest first: `{"leads": [...], "next_cursor": ...}`."""
        params = request.query_params
        unknown = sorted(set(params) - set(LIST_PARAMS))
        if unknown:
            raise ApiError(400, f"unknown query parameter '{unknown[0]}' (known: {', '.join(LIST_PARAMS)})", unknown[0])
        try:
            filters = lead_filters(**{name: params.get(name) for name in LIST_PARAMS})
        except FilterError as error:
            raise ApiError(400, str(error), error.field) from error
        with nurture.session() as session:
            return list_page(session, filters)

    # `:path`: an address may hold a `/` (`a/b@example.com` is valid).
    @app.get("/v1/leads/{email:path}", dependencies=[Auth])
    def get_lead(email: str, nurture: NurtureDep) -> dict[str, Any]:
        """Same JSON as `nurture lead show --json`."""
        return nurture.show(email)

    @app.post("/v1/events", dependencies=[Auth])
    async def post_events(body: EventBody | list[EventBody], nurture: NurtureDep) -> dict[str, Any]:
        """One event or a list, by `email` or `anonymous_id`."""
        events = body if isinstance(body, list) else [body]
        for index, event in enumerate(events):
            if not event.email and not event.anonymous_id:
                raise ApiError(422, "give email or anonymous_id", f"{index}.email" if isinstance(body, list) else "email")
        try:
            return await nurture.ingest_events([e.model_dump() for e in events])
        except Conflict as conflict:
            raise ApiError(409, str(conflict), f"{conflict.index}.id" if isinstance(body, list) else "id") from None

    @app.post("/v1/leads/{email:path}/bant", dependencies=[Auth])
    async def post_bant(email: str, body: BantBody, nurture: NurtureDep) -> dict[str, Any]:
        """Set BANT facts; SQL follows at once if the rules hold."""
        facts = body.model_dump(exclude_unset=True)
        return (await nurture.set_bant(email, facts)).lead

    @app.post("/v1/handoffs/{handoff_id}/accept", dependencies=[Auth])
    async def accept(handoff_id: int, nurture: NurtureDep) -> dict[str, Any]:
        """Sales accepts the lead: opportunity."""
        return (await nurture.handoff_action(handoff_id, "accept")).lead

    @app.post("/v1/handoffs/{handoff_id}/won", dependencies=[Auth])
    async def won(handoff_id: int, nurture: NurtureDep) -> dict[str, Any]:
        """The deal is won: customer."""
        return (await nurture.handoff_action(handoff_id, "won")).lead

    @app.post("/v1/handoffs/{handoff_id}/reject", dependencies=[Auth])
    async def reject(handoff_id: int, body: ReasonBody, nurture: NurtureDep) -> dict[str, Any]:
        """Sales rejects the lead: recycled into nurture."""
        return (await nurture.handoff_action(handoff_id, "reject", body.reason)).lead

    @app.post("/v1/handoffs/{handoff_id}/lost", dependencies=[Auth])
    async def lost(handoff_id: int, body: ReasonBody, nurture: NurtureDep) -> dict[str, Any]:
        """The deal is lost: recycled into nurture."""
        return (await nurture.handoff_action(handoff_id, "lost", body.reason)).lead

    @app.get("/v1/campaigns", dependencies=[Auth])
    def list_campaigns(request: Request, since: str | None = None) -> dict[str, Any]:
        """The campaigns with their status, version and totals."""
        settings = request.app.state.settings
        try:
            return {"campaigns": stats.overview_of(settings, parse_since(since))}
        except CampaignError as error:
            raise ApiError(409, f"{str(error).splitlines()[0]} (run `nurture campaign validate`)", "campaigns") from error

    @app.get("/v1/campaigns/{name}/stats", dependencies=[Auth])
    def campaign_stats(name: str, request: Request, since: str | None = None) -> dict[str, Any]:
        """The numbers of the campaign pages (contract section 7)."""
        try:
            return stats.stats_of(request.app.state.settings, name, parse_since(since))[1]
        except UnknownCampaignError as error:
            raise ApiError(404, str(error), "name") from error
        except CampaignError as error:
            raise ApiError(409, str(error).splitlines()[0], "name") from error

    app.include_router(webhooks.router)  # POST /webhooks/sendgrid
    app.include_router(pages.router)  # /u/{token} unsubscribe and preferences
    return app


def _exists(nurture: Nurture, email: str) -> bool:
    try:
        nurture.show(email)
        return True
    except NotFound:
        return False


def _install_errors(app: FastAPI) -> None:
    def body(status: int, message: str, field: str | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "field": field}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api(_: Request, error: ApiError) -> JSONResponse:
        return body(error.status, error.message, error.field)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        # A union body (one event or a list) reports an error per member: the deepest
        # location is the one about what the client actually sent.
        errors = list(error.errors())
        first = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {}
        # Drop the location's framing ("body") and the names pydantic gives the members
        # of a union body ("EventBody", "list[EventBody]"): the field is what the user wrote.
        location = [str(part) for part in first.get("loc", ())
                    if part not in ("body", "query", "path", "header") and not str(part)[:1].isupper()
                    and not str(part).startswith("list[")]
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            return body(400, "malformed JSON body", None)
        return body(422, message, ".".join(location) or None)

    @app.exception_handler(InvalidField)
    async def _invalid_field(_: Request, error: InvalidField) -> JSONResponse:
        return body(422, str(error), error.field)

    @app.exception_handler(NotFound)
    async def _missing(_: Request, error: NotFound) -> JSONResponse:
        return body(404, str(error))

    @app.exception_handler(UserError)
    async def _refused(_: Request, error: UserError) -> JSONResponse:
        return body(409 if "already" in str(error) or " is " in str(error) else 400, str(error))

    @app.exception_handler(TemporalUnavailable)
    async def _down(_: Request, error: TemporalUnavailable) -> JSONResponse:
        return body(503, str(error))

    @app.exception_handler(DBAPIError)
    async def _store_down(_: Request, error: DBAPIError) -> JSONResponse:
        # The store is unreachable or locked past its busy timeout: nothing was written
        # (the session rolled back), and the client may simply try again.
        logger.warning("store unavailable: %s", str(error.orig).splitlines()[0] if error.orig else error)
        return body(503, "the store is unavailable, try again shortly")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        if web.is_page(request.url.path):  # a person's browser: a page, not JSON
            return web.render.message(request, error.status_code, "Not found" if error.status_code == 404
                                      else "Cannot do that", str(error.detail))
        return body(error.status_code, str(error.detail))


def _install_body_limit(app: FastAPI) -> None:
    """413 before reading a body past the limit (declared or streamed)."""

    @app.middleware("http")
    async def limit(request: Request, call_next: Any) -> Any:
        if request.url.path == webhooks.PATH and request.method == "POST":
            refused = webhooks.refuse_early(request)  # unsigned or malformed: the body stays unread
            if refused is not None:
                return refused
        limit_ = MAX_WEBHOOK_BODY if request.url.path.startswith("/webhooks/") else MAX_BODY
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit_):
            return JSONResponse({"error": f"body larger than {limit_} bytes", "field": None}, status_code=413)
        if request.method in ("POST", "PUT", "PATCH"):
            received = bytearray()
            async for chunk in request.stream():
                received += chunk
                if len(received) > limit_:
                    return JSONResponse({"error": f"body larger than {limit_} bytes", "field": None}, status_code=413)
            request._body = bytes(received)  # starlette reads the cached body downstream
        return await call_next(request)


def _install_host_check(app: FastAPI, allowed: frozenset[str]) -> None:
    """400 for a Host header naming none of our hosts (NURTURE_ALLOWED_HOSTS): through DNS
    rebinding, a page of another site whose name resolves to 127.0.0.1 would otherwise
    read the web app and the API from the user's own browser."""

    @app.middleware("http")
    async def host(request: Request, call_next: Any) -> Any:
        if "*" not in allowed and host_name(request.headers.get("host", "")) not in allowed:
            return JSONResponse({"error": "this server does not answer for that Host (see NURTURE_ALLOWED_HOSTS)",
                                 "field": "host"}, status_code=400)
        return await call_next(request)


def host_name(header: str) -> str:
    """The host of a Host header, lower-case, without its port: `[::1]:8000` -> `::1`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header
