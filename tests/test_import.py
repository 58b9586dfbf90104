"""`nurture import`: CSV files of leads, streamed, validated row by row, idempotent."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest
from rich.console import Console
from sqlmodel import select

from nurture import crud
from nurture.importer import (
    Row,
    RowProblem,
    import_file,
    iter_rows,
    map_header,
    parse_row,
    sniff_delimiter,
)
from nurture.models import Lead
from nurture.security import email_hash
from nurture.service import Nurture, UserError
from nurture.temporal import TemporalUnavailable
from tests.conftest import make_settings

NOT_UTF8 = "not UTF-8 text (in Excel: Save As > CSV UTF-8)"

# What Excel writes for "CSV UTF-8" in a French locale: a BOM, semicolons, CRLF.
HEADER = "E-mail;First Name;Last Name;Company;Job Title;Company Size;Country;Timezone;Source;Badge Color;Notes;Consent"
TRADE_SHOW = [
    "ann@acme.example;Ann;Lee;Acme;VP Sales;120;fr;Europe/Paris;;blue;met at booth 12;yes",  # 2
    "not-an-email;Bob;;;;;;;;;;",                                                           # 3
    "carl@globex.example;Carl;;Globex;;abc;;;;;;",                                          # 4
    "dana@initech.example;Dana;;Initech;;;;Mars/Olympus;;;;",                               # 5
    'Eve@Umbrella.example;Eve;;Umbrella;;;;;trade_show;green;"asked for a demo;',            # 6
    'call back in May";no',                                                                 # 7 (same record)
    "",                                                                                     # 8 blank
    "LATIN1",                                                                               # 9 Latin-1 bytes
    "ANN@acme.example;Ann;;;;;;;;;;",                                                       # 10 duplicate of 2
    "gus@acme.example;Gus;;Acme;;;France;;;;;",                                             # 11
    "hal@acme.example;Hal;;;;;;;;;;",                                                       # 12
    "zed@acme.example;Zed;;;;;;;;;;",                                                       # 13 suppressed
]


def write_csv(path: Path, header: str, lines: list[str], *, bom: bool = True, newline: str = "\r\n") -> Path:
    body = b""
    for line in [header, *lines]:
        raw = ("fay@hooli.example;Fa\xefa;;Hooli;;;;;;;;".encode("latin-1") if line == "LATIN1"
               else line.encode("utf-8"))
        body += raw + newline.encode()
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body)
    return path


def snapshot(stack, emails: list[str]) -> dict[str, tuple]:
    """Everything an import could change about these leads, from the store."""
    state = {}
    with stack.session() as session:
        for email in emails:
            lead = crud.get_lead(session=session, email=email)
            state[email] = (lead.model_dump(), len(crud.list_history(session=session, key=lead.key)))
    return state


def lead_count(stack) -> int:
    with stack.session() as session:
        return len(session.exec(select(Lead)).all())


async def test_import_reports_bad_rows_keeps_good_ones_and_is_idempotent(stack, tmp_path):
    with stack.session() as session:  # what `nurture lead forget` (or a spam complaint) leaves behind
        crud.suppress(session=session, email_hash=email_hash("zed@acme.example"), reason="forgotten")
    path = write_csv(tmp_path / "trade show.csv", HEADER, TRADE_SHOW)
    f = str(path)

    report = await import_file(stack.nurture, path)

    assert report.problems == [
        f"{f}:3: email: invalid email address 'not-an-email': an email address must have an @-sign",
        f"{f}:4: company_size: 'abc' is not a whole number",
        f"{f}:5: timezone: 'Mars/Olympus' is not an IANA time zone like Europe/Paris",
        f"{f}:9: first_name: {NOT_UTF8}",
        f"{f}:10: email: ann@acme.example is a duplicate of line 2; this row is skipped",
        f"{f}:11: country: 'France' is not a two-letter country code like FR",
        (f"{f}:13: email: zed@acme.example is on the suppression list (forgotten or complained); "
         "it is never mailed again"),
    ]
    assert (report.rows, report.created, report.updated, report.unchanged, report.rejected) == (10, 3, 0, 0, 7)

    with stack.session() as session:
        ann = crud.get_lead(session=session, email="ann@acme.example")
        eve = crud.get_lead(session=session, email="eve@umbrella.example")
        hal = crud.get_lead(session=session, email="hal@acme.example")
        for bad in ("carl@globex.example", "dana@initech.example", "fay@hooli.example", "gus@acme.example"):
            assert crud.get_lead(session=session, email=bad) is None
    assert (ann.first_name, ann.last_name, ann.company, ann.job_title) == ("Ann", "Lee", "Acme", "VP Sales")
    assert (ann.company_size, ann.country, ann.timezone, ann.source) == (120, "FR", "Europe/Paris", "import")
    assert ann.attributes == {"Badge Color": "blue", "Notes": "met at booth 12"}  # consent is no attribute
    assert ann.consent_at is not None
    assert eve.source == "trade_show" and eve.consent_at is None
    assert eve.attributes == {"Badge Color": "green", "Notes": "asked for a demo;\r\ncall back in May"}
    assert hal.source == "import" and hal.attributes == {}
    shown = stack.show("ann@acme.example")
    assert shown["stage"] == "lead" and shown["campaign"] is None  # source import: no auto-enrollment

    emails = ["ann@acme.example", "eve@umbrella.example", "hal@acme.example"]
    before = snapshot(stack, emails)
    runs = {email: (await stack.handle(email).describe()).raw_description.workflow_execution_info.history_length
            for email in emails}

    again = await import_file(stack.nurture, path)

    assert (again.rows, again.created, again.updated, again.unchanged, again.rejected) == (10, 0, 0, 3, 7)
    assert again.problems == report.problems
    assert snapshot(stack, emails) == before  # same fields, same updated_at, no new history entries
    for email in emails:  # Temporal was not even called
        described = await stack.handle(email).describe()
        assert described.raw_description.workflow_execution_info.history_length == runs[email]
    assert lead_count(stack) == 3

    # A changed row is an update of that lead only; the default source never overwrites a known one.
    changed = write_csv(tmp_path / "changed.csv", "email,company,Badge Color",
                        ["ann@acme.example,Acme Corp,blue", "eve@umbrella.example,Umbrella,red",
                         "hal@acme.example,,"], bom=False, newline="\n")
    third = await import_file(stack.nurture, changed)
    assert (third.rows, third.created, third.updated, third.unchanged, third.problems) == (3, 0, 2, 1, [])
    with stack.session() as session:
        ann = crud.get_lead(session=session, email="ann@acme.example")
        eve = crud.get_lead(session=session, email="eve@umbrella.example")
    assert ann.company == "Acme Corp" and ann.first_name == "Ann" and ann.source == "import"
    assert eve.source == "trade_show" and eve.attributes["Badge Color"] == "red"
    assert eve.attributes["Notes"].startswith("asked for a demo")


async def test_campaign_enrolls_new_leads_that_match_and_reports_the_others(stack, tmp_path):
    await stack.add("old@acme.example", first_name="Old", source="import")
    path = tmp_path / "webinar.tsv"
    path.write_text("Email Address\tFirst Name\tLead Source\tJob Title\n"
                    "wes@acme.example\tWes\tweb_form\tDirector of IT\n"
                    "ida@acme.example\tIda\t\t\n"
                    "old@acme.example\tOlder\tweb_form\t\n", encoding="utf-8")
    console = Console(file=io.StringIO(), force_terminal=False, width=100)

    report = await import_file(stack.nurture, path, campaign="b2b-trial", console=console)

    assert report.problems == [
        f"{path}:3: campaign: lead saved, but not enrolled in b2b-trial: lead does not match enroll.where",
    ]
    assert (report.rows, report.created, report.updated, report.unchanged, report.rejected) == (3, 2, 1, 0, 0)
    wes, ida, old = (stack.show(e) for e in ("wes@acme.example", "ida@acme.example", "old@acme.example"))
    assert wes["campaign"] == "b2b-trial"
    assert ida["campaign"] is None
    assert old["campaign"] is None and old["first_name"] == "Older"  # known leads are never (re-)enrolled
    with stack.session() as session:
        assert crud.get_lead(session=session, email="ida@acme.example").source == "import"
        assert crud.get_lead(session=session, email="wes@acme.example").job_title == "Director of IT"
    assert "rows/s" in console.file.getvalue()

    again = await import_file(stack.nurture, path, campaign="b2b-trial")
    assert (again.created, again.updated, again.unchanged, again.problems) == (0, 0, 3, [])


@pytest.mark.parametrize("campaign", ["b2b-trial", None], ids=["named", "auto_on-created"])
async def test_a_lead_stored_but_never_started_is_finished_by_a_rerun(stack, tmp_path, campaign):
    """An earlier run that stopped between the store and Temporal leaves a row with no
    workflow; the same file again must not count it unchanged, and the lead enters its
    campaign as a new lead would (named, or by `auto_on: created`)."""
    from nurture import journey

    with stack.session() as session:
        crud.upsert_lead(session=session, key=journey.lead_key("ann@acme.example"), email="ann@acme.example",
                         profile={"first_name": "Ann", "source": "web_form", "attributes": {}})
    path = write_csv(tmp_path / "a.csv", "email,first_name,source", ["ann@acme.example,Ann,web_form"])

    report = await import_file(stack.nurture, path, campaign=campaign)

    assert (report.created, report.updated, report.unchanged, report.problems) == (1, 0, 0, [])
    assert stack.show("ann@acme.example")["campaign"] == "b2b-trial"
    again = await import_file(stack.nurture, path, campaign=campaign)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 1)


async def test_a_header_without_email_imports_nothing(stack, tmp_path):
    path = write_csv(tmp_path / "contacts.csv", "Name;Company", ["Ann;Acme", "Bob;Globex"])
    with pytest.raises(UserError) as error:
        await import_file(stack.nurture, path)
    assert str(error.value) == f"{path}:1: header: no email column (found: 'Name', 'Company')"
    assert lead_count(stack) == 0


async def test_a_header_naming_a_column_twice_imports_nothing(stack, tmp_path):
    path = write_csv(tmp_path / "twice.csv", "Email,E-mail,Name", ["ann@acme.example,ann@acme.example,Ann"])
    with pytest.raises(UserError, match=r"twice\.csv:1: header: columns 'Email' and 'E-mail' both name email"):
        await import_file(stack.nurture, path)
    assert lead_count(stack) == 0


async def test_an_unknown_campaign_is_refused_before_anything_is_imported(stack, tmp_path):
    path = write_csv(tmp_path / "a.csv", "email", ["ann@acme.example"])
    with pytest.raises(UserError, match="--campaign: unknown campaign 'b2b-trail'"):
        await import_file(stack.nurture, path, campaign="b2b-trail")
    assert lead_count(stack) == 0


async def test_temporal_unreachable_is_raised_before_reading(tmp_path):
    settings = make_settings(tmp_path, temporal_address="127.0.0.1:1")
    path = write_csv(tmp_path / "a.csv", "email", ["ann@acme.example"])
    with pytest.raises(TemporalUnavailable):
        await import_file(Nurture(settings), path)


# ---------------------------------------------------------------- the reader alone


def test_header_spellings_map_to_lead_fields():
    columns = map_header(["E-mail", "First Name", "LAST_NAME", "Company Size", "Job Title", "Time Zone",
                          "Country Code", "Lead Source", "Opt-in", "Favourite Colour", ""], "f.csv")
    assert columns == {"E-mail": "email", "First Name": "first_name", "LAST_NAME": "last_name",
                       "Company Size": "company_size", "Job Title": "job_title", "Time Zone": "timezone",
                       "Country Code": "country", "Lead Source": "source", "Opt-in": "consent",
                       "Favourite Colour": None}
    with pytest.raises(UserError, match="columns 'Notes' and 'notes' both name the same attribute"):
        map_header(["email", "Notes", "notes"], "f.csv")


def test_delimiter_is_sniffed_from_the_header_only():
    assert sniff_delimiter("email;first_name;company\r\n") == ";"
    assert sniff_delimiter("email\tfirst_name\n") == "\t"
    assert sniff_delimiter('email,"Company; Inc",x\n') == ","
    assert sniff_delimiter("email\n") == ","


def test_row_validation_messages():
    columns = {"email": "email", "size": "company_size", "cc": "country", "tz": "timezone", "consent": "consent"}
    ok = parse_row({"email": " Ann@Acme.Example ", "size": "0", "cc": "de", "tz": "UTC", "consent": "Y"}, columns)
    assert (ok.email, ok.fields, ok.consent, ok.problems) == (
        "ann@acme.example", {"company_size": 0, "country": "DE", "timezone": "UTC"}, True, [])
    bad = parse_row({"size": "-3", "cc": "DEU", "consent": "maybe"}, columns)
    assert bad.problems == [("email", "missing (every row needs an email address)"),
                            ("company_size", "'-3' is below 0"),
                            ("country", "'DEU' is not a two-letter country code like FR"),
                            ("consent", "'maybe' is not yes or no")]


def test_reader_line_numbers_quoted_newlines_and_odd_rows(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_bytes(b"sep=,\r\n"                                 # 1: Excel's separator hint
                     b"email,notes\r\n"                            # 2: header
                     b'a@x.example,"one\r\ntwo\r\nthree"\r\n'      # 3-5
                     b"\r\n"                                       # 6
                     b",\r\n"                                      # 7: only separators
                     b"b@x.example,caf\xe9\r\n"                    # 8: Latin-1
                     b"c@x.example,ok,surplus\r\n"                 # 9: one cell too many
                     b"d@x.example,fine,\r\n")                     # 10: an empty extra cell is fine
    assert list(iter_rows(path)) == [
        Row(3, {"email": "a@x.example", "notes": "one\r\ntwo\r\nthree"}),
        RowProblem(8, "notes", NOT_UTF8),
        RowProblem(9, "row", "3 cells, but the header names 2 columns (a separator inside an unquoted value?)"),
        Row(10, {"email": "d@x.example", "notes": "fine"}),
    ]


def test_an_unterminated_quote_is_reported_with_its_line_not_swallowing_the_file(tmp_path):
    """Issue 17.8: an opening quote never closed read the rest of the file as one cell."""
    path = tmp_path / "open-quote.csv"
    path.write_text('email,first_name,notes\n'                  # 1
                    'a@x.example,Ann,"two\nlines"\n'            # 2-3: a quoted cell may span lines
                    'b@x.example,"Bo"b,x\n'                     # 4: text after a closing quote
                    'c@x.example,Cy,"never closed\n'            # 5
                    'd@x.example,Di,y\n'                        # 6
                    'e@x.example,Ed,z\n', encoding="utf-8")     # 7
    items = list(iter_rows(path))
    assert items[0] == Row(2, {"email": "a@x.example", "first_name": "Ann", "notes": "two\nlines"})
    assert items[1].line == 4 and "text after the closing quote" in items[1].message
    assert items[2] == RowProblem(5, "row", 'a quote opened on line 5 is never closed: lines 5-7 cannot be read '
                                            '(close the quote, or double a quote inside a quoted cell: "")')
    assert len(items) == 3


def test_old_mac_line_endings(tmp_path):
    path = tmp_path / "mac.csv"
    path.write_bytes(b"email,company\ra@x.example,Acme\rb@x.example,\"Globex\rEMEA\"\rc@x.example,Initech\r")
    assert [(item.line, item.cells["email"]) for item in iter_rows(path)] == [
        (2, "a@x.example"), (3, "b@x.example"), (5, "c@x.example")]


def test_unreadable_files_are_user_errors(tmp_path):
    (tmp_path / "utf16.csv").write_bytes("email\nann@acme.example\n".encode("utf-16"))
    (tmp_path / "empty.csv").write_bytes(b"\xef\xbb\xbf\r\n")
    (tmp_path / "latin.csv").write_bytes("email;société\n".encode("latin-1"))
    for name, message in [("utf16.csv", "1: header: the file is UTF-16 text"),
                          ("empty.csv", "1: header: the file is empty"),
                          ("latin.csv", f"1: header: {NOT_UTF8}"),
                          ("missing.csv", " no such file")]:
        with pytest.raises(UserError) as error:
            list(iter_rows(tmp_path / name))
        assert str(error.value).startswith(f"{tmp_path / name}:{message}"), str(error.value)


def test_the_reader_streams_in_flat_memory(tmp_path):
    path = tmp_path / "big.csv"
    rows = 200_000
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email;first_name;company;company_size;notes\r\n")
        for i in range(rows):
            out.write(f'lead{i}@example.com;Name{i};Company {i % 977};{i % 5000};"a note\r\nover two lines"\r\n')
    assert path.stat().st_size > 10_000_000

    tracemalloc.start()
    try:
        count = last = 0
        for item in iter_rows(path):
            assert isinstance(item, Row)
            count, last = count + 1, item.line
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, last) == (rows, 2 * rows)  # records of two lines each, after the header
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert parse_row(item.cells, {"email": "email", "company_size": "company_size"}).fields["company_size"] == 4999
