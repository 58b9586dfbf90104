"""`lead forget` leaves nothing that names the lead under NURTURE_HOME: not in the
database file (its free pages and write-ahead log included), not in the outbox."""

from __future__ import annotations

from pathlib import Path

from nurture import crud, journey, security
from nurture.proofs import send_test, stored_lead

ADDRESS = "zephyrine.quillfeather@globex.example"
NEEDLES = [ADDRESS.encode(), b"zephyrine", b"quillfeather"]


def files_naming_the_lead(home: Path) -> dict[str, list[bytes]]:
    """Every file under `home` whose bytes hold the address or a name (any case)."""
    found: dict[str, list[bytes]] = {}
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes().lower()
            hits = [needle for needle in NEEDLES if needle in data]
            if hits:
                found[path.relative_to(home).as_posix()] = hits
    return found


async def test_forget_leaves_no_trace_of_the_address_or_name_in_any_file(stack):
    await stack.add(ADDRESS, first_name="Zephyrine", last_name="Quillfeather", source="web_form")
    lead = await stack.until(ADDRESS, lambda lead: lead["step"] == "wait-click")
    assert any("Zephyrine" in h["reason"] for h in lead["history"])  # sent welcome: "Zephyrine, welcome..."
    await stack.nurture.record_event(ADDRESS, "page_view", url="https://acme.example/pricing")
    tester = stack.settings.model_copy(update={"test_recipients": "qa@acme.example"})
    proof = send_test(tester, "welcome", "qa@acme.example", stored_lead(tester, ADDRESS))  # no email row
    assert "Zephyrine" in proof.file.read_text(encoding="utf-8")
    before = files_naming_the_lead(stack.settings.home)
    assert any(path.startswith("outbox/") for path in before) and any(path.startswith("nurture.db") for path in before)

    await stack.nurture.forget(ADDRESS)

    assert files_naming_the_lead(stack.settings.home) == {}
    with stack.session() as session:
        emails = crud.emails_of(session=session, key=journey.lead_key(ADDRESS))
        assert len(emails) == 2 and all(row.subject == "" and row.to is None for row in emails)
        assert crud.is_suppressed(session=session, email_hash=security.email_hash(ADDRESS)) == "forgotten"
