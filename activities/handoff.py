"""Sales handoff activities: create the handoff with its owner, notify the CRM, record outcomes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from nurture import crud, security
from nurture.campaign import AssignBy, Handoff as HandoffRules
from nurture.config import Settings
from nurture.db import session_scope
from nurture.models import Handoff


@dataclass
class OpenHandoffInput:
    lead_key: str
    number: int  # the lead's n-th handoff: a retried activity finds the one it made
    email: str
    profile: dict[str, Any]
    rules: HandoffRules
    score: int
    grade: str
    snapshot: dict[str, Any]
    exclude_owner: str | None = None  # reassignment after a missed SLA


@dataclass
class OpenHandoffResult:
    id: int
    owner: str | None


@dataclass
class HandoffUpdateInput:
    id: int
    status: str | None = None
    owner: str | None = None
    reason: str | None = None
    webhook_status: str | None = None


@dataclass
class WebhookInput:
    url: str
    handoff_id: int
    payload: dict[str, Any]


def choose_owner(rules: HandoffRules, profile: dict[str, Any], take_turn: Callable[[], int],
                 exclude: str | None) -> str | None:
    """Owner by field map (with `*` fallback), else round robin on a shared counter.

    The round robin always cycles over the whole list, so each turn number names the
    same owner whatever happened before: a reassignment takes the next turn, and when
    that turn is the owner it leaves, the one after. (Cycling over the list minus that
    owner changed the modulus and gave some owners two turns in a row and others none.)"""
    if isinstance(rules.assign, AssignBy):
        value = profile.get(rules.assign.by) or (profile.get("attributes") or {}).get(rules.assign.by)
        # Field values come from forms and CSVs: "fr", "FR" and " Fr " are one country.
        by_value = {str(key).strip().casefold(): owner for key, owner in rules.assign.map.items()}
        mapped = by_value.get(str(value).strip().casefold()) if value is not None else None
        mapped = mapped or rules.assign.map.get("*")
        if mapped and mapped != exclude:
            return mapped
    owners = list(rules.owners)
    if not owners:
        return None
    owner = owners[take_turn() % len(owners)]
    if owner == exclude and any(other != exclude for other in owners):
        while owner == exclude:
            owner = owners[take_turn() % len(owners)]
    return owner


class HandoffActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn
    def open_handoff(self, inp: OpenHandoffInput) -> OpenHandoffResult:
        with session_scope(self.settings.db_url) as session:
            existing = crud.find_handoff(session=session, key=inp.lead_key, number=inp.number)
            # A retry finds the work done: the handoff exists and (on a reassignment) has
            # already left the excluded owner. Taking another counter turn would skew it.
            if existing is not None and existing.id is not None and (
                    inp.exclude_owner is None or existing.owner != inp.exclude_owner):
                return OpenHandoffResult(existing.id, existing.owner)
            # The counter lives in the database so assignment stays fair across workers
            # and restarts; a retried activity reuses the handoff it already made above.
            owner = choose_owner(inp.rules, inp.profile,
                                 lambda: crud.next_counter(session=session, name="handoff_round_robin"),
                                 inp.exclude_owner)
            if existing is not None and existing.id is not None:
                crud.update_handoff(session=session, handoff_id=existing.id, owner=owner)
                return OpenHandoffResult(existing.id, owner)
            handoff = crud.create_handoff(session=session, handoff=Handoff(
                lead_key=inp.lead_key, number=inp.number, email=inp.email, owner=owner,
                score=inp.score, grade=inp.grade, snapshot=inp.snapshot,
                webhook_status="pending" if inp.rules.notify.webhook else None,
            ))
            assert handoff.id is not None
            return OpenHandoffResult(handoff.id, owner)

    @activity.defn
    def update_handoff(self, inp: HandoffUpdateInput) -> None:
        fields = {k: v for k, v in (("status", inp.status), ("owner", inp.owner), ("reason", inp.reason),
                                    ("webhook_status", inp.webhook_status)) if v is not None}
        with session_scope(self.settings.db_url) as session:
            crud.update_handoff(session=session, handoff_id=inp.id, **fields)

    @activity.defn
    def post_webhook(self, inp: WebhookInput) -> str:
        """POST the handoff to the CRM, signed; retried with backoff by the caller's policy."""
        body = json.dumps(inp.payload, sort_keys=True, default=str).encode()
        request = urllib.request.Request(inp.url, data=body, method="POST", headers={
            "Content-Type": "application/json",
            "X-Nurture-Signature": security.webhook_signature(self.settings.signing_secret(), body),
            "User-Agent": "nurture-handoff/1",
        })
        attempt = activity.info().attempt
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = f"delivered (HTTP {response.status}, attempt {attempt})"
        except urllib.error.HTTPError as error:
            status = f"failed (HTTP {error.code}, attempt {attempt})"
            self._record(inp.handoff_id, status)
            if 400 <= error.code < 500 and error.code != 429:
                raise ApplicationError(f"webhook refused: HTTP {error.code}", non_retryable=True) from error
            raise
        except (urllib.error.URLError, TimeoutError) as error:
            self._record(inp.handoff_id, f"failed ({error}, attempt {attempt})")
            raise
        self._record(inp.handoff_id, status)
        return status

    def _record(self, handoff_id: int, status: str) -> None:
        with session_scope(self.settings.db_url) as session:
            crud.update_handoff(session=session, handoff_id=handoff_id, webhook_status=status[:200])
