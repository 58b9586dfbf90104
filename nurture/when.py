"""How times are shown to people: one convention, the zone always named.

Stored and JSON times are UTC ISO 8601. Shown times are to the minute: a lead's own
times (its history, its waits, its reasons) in the lead's time zone when it has a valid
one, else UTC; everything else (handoffs, the outbox, pages) in UTC. A table names the
zone in its column header (`at (Europe/Paris)`); text names it after each time
(`2027-03-29 09:00 Europe/Paris`). Pure and deterministic: workflow code uses it too.
"""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo

UTC = "UTC"


def zone(name: str | None) -> tuple[tzinfo, str]:
    """The zone to show a lead's times in and its name: the lead's own, else UTC
    (also for a name that is no IANA zone: a shown time is never wrong, only in UTC)."""
    try:
        found = ZoneInfo(name.strip()) if isinstance(name, str) and name.strip() else None
    except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        found = None
    return (found, found.key) if found is not None else (timezone.utc, UTC)


def clock(value: datetime | str | None, zone_name: str | None = None) -> str:
    """`2027-03-29 09:00` in the zone (for a table whose header names it); '' for None."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return f"{value.astimezone(zone(zone_name)[0]):%Y-%m-%d %H:%M}"


def labelled(value: datetime | str | None, zone_name: str | None = None) -> str:
    """`2027-03-29 09:00 Europe/Paris`: a time in running text, its zone named."""
    shown = clock(value, zone_name)
    return f"{shown} {zone(zone_name)[1]}" if shown else ""


def header(name: str, zone_name: str | None = None) -> str:
    """A table column's header naming its zone: `at (Europe/Paris)`."""
    return f"{name} ({zone(zone_name)[1]})"
