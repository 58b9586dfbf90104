"""Words the store, the journey and the command line share, in a module that imports
nothing heavy: the CLI's read commands load it without the journey (whose rules pull in
the campaign models, Jinja2 and YAML, ~75 ms of CPU at every start)."""

from __future__ import annotations

from datetime import datetime, timezone

BANT_KEYS = ("budget", "authority", "need", "timing")
STAGES = ("visitor", "lead", "mql", "sql", "opportunity", "customer", "disqualified", "recycled")
STATUSES = ("subscribed", "unsubscribed", "bounced", "complained")
GRADES = ("A", "B", "C", "D", "F")
TEMPERATURES = ("cold", "warm", "hot")
# Events that end all marketing email to the address at once, and the status they set.
SUPPRESSING_EVENTS = {
    "email_unsubscribe": "unsubscribed",
    "email_bounce": "bounced",
    "email_dropped": "bounced",
    "email_spamreport": "complained",
}
# SendGrid's documented drop reasons that are about the address, and the status each gives.
# The others are about the message or the account ("Invalid SMTPAPI header", "Spam
# Content", "Recipient List over Package Quota", ...): the address is not at fault.
ADDRESS_DROP_REASONS = {
    "bounced address": "bounced",
    "invalid": "bounced",
    "unsubscribed address": "unsubscribed",
    "spam reporting address": "complained",
}


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def suppressing_status(event_type: str, reason: str | None) -> str | None:
    """The status an event gives a subscribed lead, None if it leaves it subscribed.

    A drop suppresses only for a reason about the address; a drop that gives no reason
    (recorded by hand through the CLI or the API) counts as one, as it always has."""
    if event_type == "email_dropped" and reason is not None:
        return ADDRESS_DROP_REASONS.get(reason.strip().lower())
    return SUPPRESSING_EVENTS.get(event_type)
