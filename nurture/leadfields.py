"""What a lead's fields may hold: one validator for every door (CLI, HTTP API, CSV).

Each check takes a value as it arrived and returns it cleaned (codes trimmed, `country`
upper-cased, the address in its canonical form) or raises FieldError naming the field and why.
`nurture.service` runs `clean_profile` on every lead it stores, whichever door it
came through; the CSV importer and the API also call the single-field checks so that
their errors can name the line or the JSON field.

Attributes are bounded, because they travel whole in every update to the lead's
workflow (gRPC refuses messages over 4 MB) and are kept in one JSON column:
at most MAX_ATTRIBUTES keys of MAX_ATTRIBUTE_KEY characters, string values of at
most MAX_ATTRIBUTE_VALUE characters, and MAX_ATTRIBUTES_BYTES of JSON in all once
merged with what the lead already has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nurture.addresses import InvalidAddress, canonical_email

TEXT_LIMITS = {  # the store's column sizes (nurture/models.py)
    "first_name": 200, "last_name": 200, "company": 200, "job_title": 200,
    "timezone": 64, "locale": 16, "source": 100, "anonymous_id": 200,
}
MAX_COMPANY_SIZE = 10_000_000  # more people than any employer has
LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_VALUE = 1000
MAX_ATTRIBUTES_BYTES = 32 * 1024
# Earliest and latest years a time may name: both ends convert to UTC without
# overflow whatever the offset (0001-01-01T00:00+01:00 cannot).
FIRST_YEAR, LAST_YEAR = 1971, 2999


class FieldError(ValueError):
    """`field: message`; `field` is the lead field (or `attributes.KEY`) at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def check_text(field: str, value: str, limit: int | None = None) -> str:
    """Any text that reaches the store: no NUL (PostgreSQL cannot keep one, and no
    person types it), and within its column's size."""
    if "\x00" in value:
        raise FieldError(field, "contains a NUL character")
    if limit is not None and len(value) > limit:
        raise FieldError(field, f"longer than {limit} characters")
    return value


def check_email(value: str) -> str:
    try:
        return canonical_email(value)
    except InvalidAddress as error:
        raise FieldError("email", str(error)) from None


def check_timezone(value: str) -> str:
    value = check_text("timezone", value, TEXT_LIMITS["timezone"]).strip()
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise FieldError("timezone", f"'{value}' is not an IANA time zone like Europe/Paris") from None
    return value


def check_locale(value: str) -> str:
    value = check_text("locale", value, TEXT_LIMITS["locale"]).strip()
    if not LOCALE.match(value):
        raise FieldError("locale", f"'{value}' is not a locale like fr or fr-FR")
    return value


def check_country(value: str) -> str:
    value = value.strip()
    if len(value) != 2 or not value.isascii() or not value.isalpha():
        raise FieldError("country", f"'{value}' is not a two-letter country code like FR")
    return value.upper()


def check_company_size(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError("company_size", f"'{value}' is not a whole number")
    if value < 0:
        raise FieldError("company_size", f"'{value}' is below 0")
    if value > MAX_COMPANY_SIZE:
        raise FieldError("company_size", f"'{value}' is more than {MAX_COMPANY_SIZE:,}")
    return value


def check_time(field: str, value: datetime) -> datetime:
    """An aware time between FIRST_YEAR and LAST_YEAR (checked before any conversion)."""
    if value.tzinfo is None:
        raise FieldError(field, "needs a time zone (e.g. 2026-11-23T09:30:00Z)")
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise FieldError(field, f"must be between {FIRST_YEAR} and {LAST_YEAR}")
    return value


CHECKS: dict[str, Any] = {
    "email": check_email, "timezone": check_timezone, "locale": check_locale,
    "country": check_country, "company_size": check_company_size,
}


def check_field(field: str, value: Any) -> Any:
    """One profile field, cleaned; None stays None (not given)."""
    if value is None:
        return None
    check = CHECKS.get(field)
    if check is not None:
        return check(value)
    if not isinstance(value, str):
        raise FieldError(field, "must be text")
    return check_text(field, value, TEXT_LIMITS.get(field))


def check_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A lead's attributes (given, or merged with the stored ones) within the bounds."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise FieldError("attributes", f"{len(attributes)} attributes, more than {MAX_ATTRIBUTES}")
    for key, value in attributes.items():
        if not isinstance(key, str) or not key.strip():
            raise FieldError("attributes", "an attribute name is empty")
        check_text("attributes", key)
        if len(key) > MAX_ATTRIBUTE_KEY:
            raise FieldError("attributes", f"attribute name '{key[:20]}...' longer than {MAX_ATTRIBUTE_KEY} characters")
        if isinstance(value, str):
            check_text(f"attributes.{key}", value, MAX_ATTRIBUTE_VALUE)
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise FieldError(f"attributes.{key}", "must be text, a number, true/false or null")
    size = len(json.dumps(dict(attributes), ensure_ascii=False).encode())
    if size > MAX_ATTRIBUTES_BYTES:
        raise FieldError("attributes", f"{size:,} bytes of attributes in all, more than {MAX_ATTRIBUTES_BYTES:,}")
    return dict(attributes)


def clean_profile(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every given field of a lead checked and cleaned (attributes included)."""
    cleaned = {}
    for name, value in values.items():
        if name == "attributes":
            cleaned[name] = check_attributes(value or {})
        elif name == "consent_at":
            cleaned[name] = None if value is None else check_time(name, value)
        else:
            cleaned[name] = check_field(name, value)
    return cleaned
