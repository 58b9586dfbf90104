"""One mailbox, one lead, whatever spelling comes in, at every door: HTTP API, CSV
import, SendGrid webhook, forget (nurture.addresses)."""

from __future__ import annotations

import csv
import unicodedata

import pytest
from sqlmodel import select

from nurture import crud, journey, security
from nurture.importer import import_file
from nurture.journey import LeadProfile
from nurture.models import Lead
from nurture.service import InvalidField, StoredLead
from tests.test_api import AUTH
from tests.test_webhooks import DAY, hook, lead_with_welcome, post, sg  # noqa: F401  (hook is a fixture)

NOT_PLAIN = ["<jane@globex.example>", "jane(x)@globex.example", "jane@globex.example>", '"jane"@globex.example',
             "Jane <jane@globex.example>", "jane,bob@globex.example", "jane@globex.example\r\nBcc: x@y.example"]
IDN, PUNYCODE = "Léa@Bücher.example", "le\u0301a@xn--bcher-kva.EXAMPLE"  # NFC, and NFD + punycode
CANONICAL = "léa@xn--bcher-kva.example"


def leads(stack) -> list[str | None]:
    with stack.session() as session:
        return [lead.email for lead in session.exec(select(Lead)).all()]


@pytest.mark.parametrize("spelling", NOT_PLAIN)
async def test_the_api_refuses_what_is_not_a_plain_address(hook, spelling):
    stack, http = hook
    response = await http.post("/v1/leads", headers=AUTH, json={"email": spelling})

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "email" and "invalid email address" in response.json()["error"]
    assert leads(stack) == []


async def test_an_idn_domain_its_punycode_nfc_and_nfd_are_one_lead(hook):
    stack, http = hook
    first = await http.post("/v1/leads", headers=AUTH, json={"email": IDN, "first_name": "Léa"})
    again = await http.post("/v1/leads", headers=AUTH, json={"email": PUNYCODE, "company": "Bücher"})

    assert (first.status_code, again.status_code) == (201, 200), again.text
    assert first.json()["email"] == again.json()["email"] == CANONICAL
    shown = await http.get(f"/v1/leads/{unicodedata.normalize('NFD', IDN)}", headers=AUTH)
    assert shown.status_code == 200 and shown.json()["company"] == "Bücher"
    assert leads(stack) == [CANONICAL]


async def test_a_forgotten_mailbox_stays_suppressed_under_another_spelling(hook, tmp_path):
    stack, http = hook
    await stack.add(IDN)
    await stack.nurture.forget(PUNYCODE)

    refused = await http.post("/v1/leads", headers=AUTH, json={"email": unicodedata.normalize("NFD", IDN).upper()})
    path = tmp_path / "leads.csv"
    path.write_text(f"email\n{PUNYCODE}\n{IDN.lower()}\n", encoding="utf-8")
    report = await import_file(stack.nurture, path)

    assert refused.status_code == 409 and "suppression list" in refused.json()["error"]
    assert (report.created, report.rejected) == (0, 2)
    assert "suppression list" in report.problems[0]
    assert "duplicate of line 2" in report.problems[1]
    assert leads(stack) == [None]  # only the forgotten lead's husk


async def test_csv_import_refuses_what_is_not_a_plain_address_and_folds_the_rest(stack, tmp_path):
    path = tmp_path / "leads.csv"
    cells = [spelling for spelling in NOT_PLAIN if "\r" not in spelling]
    with path.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file).writerows([["email"], *([cell] for cell in [*cells, IDN, PUNYCODE])])

    report = await import_file(stack.nurture, path)

    assert (report.created, report.rejected) == (1, len(cells) + 1)
    for line, problem in enumerate(report.problems[:len(cells)], start=2):
        assert problem.startswith(f"{path}:{line}: email: invalid email address ")
    assert report.problems[-1] == f"{path}:{len(cells) + 3}: email: {CANONICAL} is a duplicate of line {len(cells) + 2}; this row is skipped"
    assert leads(stack) == [CANONICAL]


async def test_sendgrid_events_spelling_the_address_another_way_reach_the_lead(hook):
    """A bounce reported for the punycode spelling of a lead stored from its IDN form is
    the lead's bounce (with our custom args, and without them): no next email."""
    stack, http = hook
    welcome = await lead_with_welcome(stack, CANONICAL)
    other = "kim@bücher.example"
    await stack.add(other)

    with_args = await post(http, [sg("bounce", PUNYCODE, welcome, type="bounce", reason="550 5.1.1 unknown")])
    without = await post(http, [sg("spamreport", "KIM@xn--bcher-kva.example")])

    assert with_args.json() == {"stored": 1, "duplicates": 0, "unmatched": 0}
    assert without.json() == {"stored": 1, "duplicates": 0, "unmatched": 0}
    assert stack.show(IDN)["status"] == "bounced" and stack.show(other)["status"] == "complained"
    with stack.session() as session:
        assert len(crud.emails_of(session=session, key=journey.lead_key(CANONICAL))) == 1


async def test_the_send_activity_checks_and_mails_the_canonical_address(stack):
    """Journeys started before 0003 still hold their lead's old spelling: the send
    re-checks the suppression list under the canonical form, and mails that form."""
    keys = {}
    # Suppressed before the journeys start: in office hours the welcome leaves at once.
    with stack.session() as session:
        crud.suppress(session=session, email_hash=security.email_hash("ann@acme.example"), reason="forgotten")
    for legacy in ("<ann@acme.example>", "<bob@acme.example>"):
        keys[legacy] = key = journey.lead_key(legacy)
        with stack.session() as session:
            session.add(Lead(key=key, email=legacy, state_version=1))
        await stack.nurture.start_lead(StoredLead(key, LeadProfile(email=legacy, source="web_form"), created=True,
                                                  campaign="b2b-trial"))

    def emails(legacy: str) -> list:
        with stack.session() as session:
            return list(crud.emails_of(session=session, key=keys[legacy]))

    for _ in range(14):  # the welcome waits for the send window (weekday office hours)
        if emails("<bob@acme.example>"):
            break
        for key in keys.values():
            await stack.env.fast_forward(stack.client.get_workflow_handle(stack.settings.workflow_id(key)), DAY / 2)
    assert [e.to for e in emails("<bob@acme.example>")] == ["bob@acme.example"]
    assert emails("<ann@acme.example>") == []


async def test_a_row_0003_could_not_fold_can_still_be_shown_and_forgotten(stack):
    with stack.session() as session:  # as 0003 left it, its journey running
        session.add(Lead(key="k-comma", email="a,b@example.com", state_version=1))
    await stack.nurture.start_lead(StoredLead("k-comma", LeadProfile(email="a,b@example.com"), created=True))

    assert stack.show("a,b@example.com")["email"] == "a,b@example.com"
    await stack.nurture.forget("A,B@example.com")

    with stack.session() as session:
        assert crud.get_lead_by_key(session=session, key="k-comma").email is None
        assert crud.is_suppressed(session=session, email_hash=security.stored_email_hash("a,b@example.com"))
    with pytest.raises(InvalidField):
        stack.show("c,d@example.com")  # not stored that way: refused as at every door
