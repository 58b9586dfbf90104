"""canonical addresses: fold every stored address to the one form of nurture.addresses

Before this revision an address was only trimmed and lower-cased, so `<a@d>`,
`a(x)@d`, `"a"@d`, an IDN domain and its punycode, NFC and NFD were separate leads of
one mailbox. This revision:
- rewrites each lead's address to its canonical form (the spellings the mail library
  "repaired" into a plain address are folded the same way: display name, angle
  brackets, comments and needless quotes dropped);
- merges the leads of one mailbox into one: the lead already spelled canonically,
  else the oldest, survives (keeping its key, hence its workflow); the strictest
  subscription status wins (complained > bounced > unsubscribed > subscribed); the
  others' events, emails, history and handoffs are re-pointed to it (their history
  and handoff numbers moved below the survivor's, so no number is taken twice);
  missing profile fields and attributes are filled from the others;
- copies each suppression entry to the canonical address's hash;
- routes to the lead the unsubscribes, bounces and spam reports that arrived
  unmatched because they spelled the address another way (applied by the dispatcher).

An address that cannot be folded (e.g. `a,b@example.com`: which mailbox?) is left as
it is and logged; nothing is sent to it any more (the send activity refuses it).
Forgotten leads are kept as hashes of the old spelling and cannot be folded.
Downgrade is a no-op: the merge cannot be undone.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 08:00:00
"""
import hashlib
import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

from nurture.addresses import fold_stored as fold

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
STRICTNESS = ("subscribed", "unsubscribed", "bounced", "complained")
# Unmatched events that stop email, with the status they set; a drop is left out:
# whether it stops email depends on its reason.
STOPPING = {"email_unsubscribe": "unsubscribed", "email_bounce": "bounced", "email_spamreport": "complained"}
PROFILE = ("first_name", "last_name", "company", "job_title", "company_size", "country", "timezone",
           "locale", "source", "anonymous_id", "consent_at")


def _hash(address: str) -> str:
    return hashlib.sha256(address.encode()).hexdigest()


def _strictest(statuses: list[str]) -> str:
    return max(statuses, key=lambda s: STRICTNESS.index(s) if s in STRICTNESS else 0)


def upgrade() -> None:
    bind = op.get_bind()
    meta = sa.MetaData()
    tables = {name: sa.Table(name, meta, autoload_with=bind)
              for name in ("lead", "event", "email", "history", "handoff", "suppression")}
    lead = tables["lead"]
    groups: dict[str, list[Any]] = {}
    for row in bind.execute(sa.select(lead).where(lead.c.email.is_not(None)).order_by(lead.c.id)).mappings():
        address = fold(row["email"])
        if address is None:
            log.warning("lead %s: address %r is not a plain address; left as it is, never mailed", row["id"],
                        row["email"])
            continue
        groups.setdefault(address, []).append(row)
    for address, members in groups.items():
        if len(members) > 1 or members[0]["email"] != address:
            _merge(bind, tables, address, members)
    _route_unmatched(bind, tables)


def _merge(bind: Any, tables: dict[str, sa.Table], address: str, members: list[Any]) -> None:
    lead = tables["lead"]
    survivor = next((m for m in members if m["email"] == address), members[0])
    others = [m for m in members if m is not survivor]
    values: dict[str, Any] = {"email": address, "status": _strictest([m["status"] for m in members])}
    for name in PROFILE:
        if survivor[name] is None:
            values[name] = next((m[name] for m in others if m[name] is not None), None)
    attributes: dict[str, Any] = {}
    for member in [*others, survivor]:  # the survivor's own values win
        attributes.update(member["attributes"] or {})
    values["attributes"] = attributes
    for other in reversed(others):  # newest first, each below the last: the oldest ends first
        _repoint(bind, tables, other["key"], survivor["key"])
        bind.execute(lead.delete().where(lead.c.id == other["id"]))  # frees the address first
    bind.execute(lead.update().where(lead.c.id == survivor["id"]).values(**values))
    keys = [m["key"] for m in members]
    for table in (tables["event"], tables["handoff"]):
        bind.execute(table.update().where(table.c.lead_key.in_(keys), table.c.email.is_not(None))
                     .values(email=address))
    _copy_suppressions(bind, tables["suppression"], [m["email"] for m in members], address,
                       values["status"] == "complained")
    log.info("lead %s: %d spelling(s) folded into %s", survivor["id"], len(members), _hash(address)[:12])


def _repoint(bind: Any, tables: dict[str, sa.Table], old: str, new: str) -> None:
    """Everything of lead `old` now belongs to lead `new`."""
    for name in ("event", "email"):
        table = tables[name]
        bind.execute(table.update().where(table.c.lead_key == old).values(lead_key=new))
    _renumber(bind, tables["history"], "seq", old, new)
    _renumber(bind, tables["handoff"], "number", old, new)


def _renumber(bind: Any, table: sa.Table, column: str, old: str, new: str) -> None:
    """Move `old`'s rows to `new`, numbered below `new`'s lowest (and below 1, so
    the numbers its workflow gives next can never collide), in their order."""
    number = table.c[column]
    rows = bind.execute(sa.select(table.c.id).where(table.c.lead_key == old).order_by(number)).scalars().all()
    lowest = bind.execute(sa.select(sa.func.min(number)).where(table.c.lead_key == new)).scalar()
    start = min(0, lowest or 0) - len(rows)
    for offset, row_id in enumerate(rows):
        bind.execute(table.update().where(table.c.id == row_id).values({"lead_key": new, column: start + offset}))


def _copy_suppressions(bind: Any, suppression: sa.Table, spellings: list[str], address: str,
                       complained: bool) -> None:
    """The canonical hash suppressed whenever a hash of one of its old spellings was."""
    target = _hash(address)
    if bind.execute(sa.select(suppression.c.email_hash).where(suppression.c.email_hash == target)).first():
        return
    reason = bind.execute(sa.select(suppression.c.reason).where(
        suppression.c.email_hash.in_([_hash(s) for s in spellings]))).scalar()
    reason = reason or ("complained" if complained else None)
    if reason:
        bind.execute(suppression.insert().values(email_hash=target, reason=reason,
                                                 created_at=sa.func.current_timestamp()))


def _route_unmatched(bind: Any, tables: dict[str, sa.Table]) -> None:
    """Stops that arrived unmatched (another spelling) now reach their lead, at once
    in its status, and through the dispatcher in its workflow."""
    event, lead = tables["event"], tables["lead"]
    rows = bind.execute(sa.select(event.c.id, event.c.email, event.c.type).where(
        event.c.lead_key.is_(None), event.c.email.is_not(None), event.c.type.in_(list(STOPPING)))).all()
    for event_id, raw, type_ in rows:
        address = fold(raw)
        found = address and bind.execute(sa.select(lead.c.key, lead.c.status).where(lead.c.email == address)).first()
        if not found:
            continue
        key, status = found
        bind.execute(event.update().where(event.c.id == event_id)
                     .values(lead_key=key, email=address, dispatched_at=None))
        bind.execute(lead.update().where(lead.c.key == key)
                     .values(status=_strictest([status, STOPPING[type_]])))
        if type_ == "email_spamreport":
            _copy_suppressions(bind, tables["suppression"], [], address, True)


def downgrade() -> None:
    pass  # folded and merged rows cannot be told apart again
