"""Leads as documents, and `lead list`'s filters and pages (read side only).

Shared by `nurture lead show/list` and `GET /v1/leads[/{email}]`. It imports no
Temporal and no campaign models, so read commands stay quick.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from nurture import crud
from nurture.models import Lead, as_utc
from nurture.vocabulary import BANT_KEYS, GRADES, STAGES, STATUSES, TEMPERATURES

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_TEXT = 200
CURSOR_PREFIX = "after:"


class FilterError(ValueError):
    """A filter value that cannot be used; `field` names it (stage, limit, cursor, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class LeadFilters:
    stage: str | None = None
    grade: str | None = None
    temperature: str | None = None
    status: str | None = None
    campaign: str | None = None
    q: str | None = None
    limit: int = DEFAULT_LIMIT
    after_id: int = 0


def lead_filters(*, stage: str | None = None, grade: str | None = None, temperature: str | None = None,
                 status: str | None = None, campaign: str | None = None, q: str | None = None,
                 limit: int | str | None = None, cursor: str | None = None) -> LeadFilters:
    """Check the filters as typed (CLI options, query parameters); FilterError names the
    first bad one. Empty values mean "no filter"."""
    return LeadFilters(
        stage=_one_of("stage", stage, STAGES),
        grade=_one_of("grade", grade.upper() if grade else grade, GRADES),
        temperature=_one_of("temperature", temperature, TEMPERATURES),
        status=_one_of("status", status, STATUSES),
        campaign=_text("campaign", campaign),
        q=_text("q", q),
        limit=_limit(limit),
        after_id=_cursor_id(cursor),
    )


def list_page(session: Any, filters: LeadFilters, *, where: Any = None) -> dict[str, Any]:
    """One page: `{"leads": [...], "next_cursor": ...}`, next_cursor null on the last page.
    `where`: an SQL condition on the lead table more (a segment: nurture.audiences.condition)."""
    rows = crud.list_leads(session=session, after_id=filters.after_id, limit=filters.limit + 1,
                           stage=filters.stage, grade=filters.grade, temperature=filters.temperature,
                           status=filters.status, campaign=filters.campaign, q=filters.q, where=where)
    page = list(rows[:filters.limit])
    more = len(rows) > filters.limit
    return {"leads": [lead_document(lead) for lead in page],
            "next_cursor": encode_cursor(page[-1].id or 0) if more and page else None}


def lead_document(lead: Lead) -> dict[str, Any]:
    """Everything stored about the lead except its history: its profile as given (with
    the attributes) and where its journey stands."""
    return {
        "email": lead.email,
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "company": lead.company,
        "job_title": lead.job_title,
        "company_size": lead.company_size,
        "country": lead.country,
        "timezone": lead.timezone,
        "locale": lead.locale,
        "source": lead.source,
        "attributes": dict(lead.attributes or {}),
        "stage": lead.stage,
        "status": lead.status,
        "score": lead.score,
        "fit": lead.fit,
        "grade": lead.grade,
        "temperature": lead.temperature,
        "owner": lead.owner,
        "bant": {key: (lead.bant or {}).get(key) for key in BANT_KEYS},
        "campaign": lead.campaign,
        "step": lead.step,
        "waiting_for": lead.waiting_for,
        "next_action_at": iso(lead.next_action_at),
        "created_at": iso(lead.created_at),
    }


def iso(value: Any) -> str | None:
    """A stored time as ISO 8601 UTC with a Z, as every document of nurture writes it."""
    value = as_utc(value)
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def encode_cursor(last_id: int) -> str:
    """Opaque to clients: where the next page starts."""
    return base64.urlsafe_b64encode(f"{CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def _cursor_id(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    number = text.removeprefix(CURSOR_PREFIX)
    if not text.startswith(CURSOR_PREFIX) or not number.isascii() or not number.isdigit() or len(number) > 18:
        raise FilterError("cursor", "not a cursor from an earlier page (use next_cursor as given)")
    return int(number)


def _one_of(field: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if not value:
        return None
    if value not in allowed:
        raise FilterError(field, f"'{value}' is not one of {', '.join(allowed)}")
    return value


def _text(field: str, value: str | None) -> str | None:
    if not value or not value.strip():
        return None
    if len(value) > MAX_TEXT:
        raise FilterError(field, f"longer than {MAX_TEXT} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):  # PostgreSQL refuses a NUL in a query
        raise FilterError(field, "holds control characters")
    return value.strip()


def _limit(value: int | str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise FilterError("limit", f"'{value}' is not a whole number from 1 to {MAX_LIMIT}")
    return int(text)
