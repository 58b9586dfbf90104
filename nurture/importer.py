"""`nurture import FILE.csv`: leads met in person arrive as spreadsheets.

The file is streamed: decoded as UTF-8 with `surrogateescape` (so a Latin-1 byte
becomes a marker in its line and costs that row only, never the file), split into
physical lines (LF, CRLF or old Mac CR) and fed to the `csv` module, which asks for
one more line whenever a quoted field runs on. Nothing holds more than one batch
of rows, and the "seen this email already" set lives in a temporary SQLite file, so
memory stays flat whatever the size of the file.

Every problem is one line `FILE:LINE: column: message`, LINE being the physical line
where the record starts (the header is line 1). Bad rows are reported and skipped;
good rows are kept. A row that matches the stored lead changes nothing and never
reaches Temporal, so re-running the same file is a no-op, except for leads an earlier
run stored but could not hand to their workflow (killed, Temporal gone): their start
mark makes the re-run start them (the starter in every worker does it too).
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import hashlib
import io
import re
import sqlite3
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from nurture import crud, leadfields
from nurture.models import Lead, utcnow
from nurture.service import InvalidField, LeadIn, Nurture, StoredLead, UserError

IN_FLIGHT = 32  # start_lead calls running at once

# Header spellings, compared without case, accents, spaces or punctuation.
ALIASES: dict[str, tuple[str, ...]] = {
    "email": ("email", "emailaddress", "emailaddr", "mail", "mailaddress", "workemail", "businessemail"),
    "first_name": ("firstname", "first", "givenname", "forename"),
    "last_name": ("lastname", "last", "surname", "familyname"),
    "company": ("company", "companyname", "organization", "organisation", "account", "accountname"),
    "job_title": ("jobtitle", "title", "position", "role"),
    "company_size": ("companysize", "employees", "numberofemployees", "employeecount", "headcount"),
    "country": ("country", "countrycode"),
    "timezone": ("timezone", "tz"),
    "locale": ("locale",),
    "source": ("source", "leadsource"),
    "anonymous_id": ("anonymousid", "anonid", "visitorid"),
    "consent": ("consent", "optin", "marketingconsent", "emailoptin"),
}
FIELD_OF = {alias: name for name, aliases in ALIASES.items() for alias in aliases}
YES = {"yes", "y", "true", "1"}
NO = {"no", "n", "false", "0"}
DELIMITERS = (",", ";", "\t")
NOT_UTF8 = "not UTF-8 text (in Excel: Save As > CSV UTF-8)"
ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte that was not UTF-8, under surrogateescape


@dataclass
class ImportReport:
    rows: int = 0  # data records read (blank lines not counted)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    problems: list[str] = field(default_factory=list)  # "FILE:LINE: column: message", in file order
    seconds: float = 0.0
    rejected: int = 0  # rows not imported (rows == created + updated + unchanged + rejected)


# ---------------------------------------------------------------- the streaming reader


@dataclass(frozen=True)
class Row:
    """One record: its first physical line and its non-empty cells by header name."""

    line: int
    cells: dict[str, str]


@dataclass(frozen=True)
class RowProblem:
    line: int
    column: str
    message: str


def header_key(name: str) -> str:
    """'E-mail', 'Email Address ', 'Prénom' -> 'email', 'emailaddress', 'prenom'."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", plain.lower())


def map_header(names: list[str], file: str, line: int = 1) -> dict[str, str | None]:
    """Header name -> lead field ('email', ..., 'consent'), or None for an attribute.

    Raises UserError for a header without an email column or naming a column twice.
    """
    columns: dict[str, str | None] = {}
    taken: dict[str, str] = {}  # what a column stands for -> the header that named it first
    for name in names:
        if not name:
            continue  # an unnamed column (often Excel's trailing separator): ignored
        target = FIELD_OF.get(header_key(name))
        meaning = target or f"attribute {name.casefold()}"
        if meaning in taken:
            what = target or "the same attribute"
            raise UserError(f"{file}:{line}: header: columns '{taken[meaning]}' and '{name}' both name {what}")
        taken[meaning] = name
        columns[name] = target
    if "email" not in columns.values():
        found = ", ".join(repr(n) for n in names if n) or "no column names"
        raise UserError(f"{file}:{line}: header: no email column (found: {found})")
    return columns


def sniff_delimiter(line: str) -> str:
    """The separator of a header line: the most frequent of , ; and tab outside quotes."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])  # ties: the first, comma
    return best if counts[best] else ","


class LeadCsv:
    """Streams a CSV of leads: `with LeadCsv(path) as csv_: for item in csv_: ...`.

    Entering reads the header (raising UserError if it is unusable); iterating yields a
    Row per record, or a RowProblem for a record that cannot be read as such.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = str(path)
        self.size = 0
        self.physical = 0  # physical lines consumed so far
        self.header: list[str] = []
        self.columns: dict[str, str | None] = {}
        self._binary: IO[bytes] | None = None
        self._text: IO[str] | None = None
        self._bad_lines: list[int] = []  # lines that were not UTF-8, not yet claimed by a record
        self._reader: Any = None
        self._last_end = 0

    def __enter__(self) -> Self:
        try:
            self._binary = open(self.path, "rb")  # closed by close()
            self.size = self.path.stat().st_size
        except FileNotFoundError as error:
            raise UserError(f"{self.file}: no such file") from error
        except IsADirectoryError as error:
            raise UserError(f"{self.file}: is a folder, not a CSV file") from error
        except OSError as error:
            raise UserError(f"{self.file}: cannot read it: {error.strerror or error}") from error
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._text is not None:
            self._text.close()  # closes the binary file too
        elif self._binary is not None:
            self._binary.close()
        self._text = self._binary = None

    @property
    def bytes_read(self) -> int:
        """How far into the file reading has got (to a buffer's size): for progress."""
        try:
            return self._binary.tell() if self._binary is not None else self.size
        except (OSError, ValueError):
            return self.size

    def _lines(self) -> Iterator[str]:
        """Physical lines, line endings kept; a line with bytes that are not UTF-8 is noted."""
        assert self._text is not None
        for line in self._text:
            self.physical += 1
            if not line.isascii() and ESCAPED_BYTE.search(line):
                self._bad_lines.append(self.physical)
            yield line

    def _read_header(self) -> None:
        assert self._binary is not None
        start = self._binary.read(4)
        self._binary.seek(0)
        if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise UserError(f"{self.file}:1: header: the file is UTF-16 text; save it as CSV UTF-8")
        # utf-8-sig drops Excel's BOM; newline="" splits on LF, CRLF and CR but keeps them,
        # as the csv module wants.
        self._text = io.TextIOWrapper(self._binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        lines = self._lines()
        empty = UserError(f"{self.file}:1: header: the file is empty (expected a header row naming email, ...)")
        first = next((line for line in lines if line.strip()), None)
        if first is None:
            raise empty
        delimiter = sniff_delimiter(first)
        hint = first.strip()
        if hint.lower().startswith("sep=") and len(hint) == 5 and hint[4] not in "\"\r\n":  # Excel's "sep=;"
            delimiter = hint[4]
            first = next((line for line in lines if line.strip()), None)
            if first is None:
                raise empty
        header_line = self.physical
        if self._bad_lines:
            raise UserError(f"{self.file}:{self._bad_lines[0]}: header: {NOT_UTF8}")

        def feed() -> Iterator[str]:
            yield first
            yield from lines

        # strict: an opening quote never closed is an error at the end of the file (not
        # the rest of the file read as one cell), and text after a closing quote is too.
        self._reader = csv.reader(feed(), delimiter=delimiter, strict=True)
        try:
            names = next(self._reader)
        except csv.Error as error:
            raise UserError(f"{self.file}:{header_line}: header: {error}") from error
        self.header = [name.strip() for name in names]
        self._last_end = self.physical
        self.columns = map_header(self.header, self.file, header_line)

    def __iter__(self) -> Iterator[Row | RowProblem]:
        width = len(self.header)
        while True:
            try:
                cells = next(self._reader)
            except StopIteration:
                return
            except csv.Error as error:
                start, self._last_end = self._last_end + 1, self.physical
                self._claim_bad_lines(self._last_end)
                yield RowProblem(start, "row", _csv_problem(error, start, self._last_end))
                continue
            start, self._last_end = self._last_end + 1, self.physical
            not_utf8 = self._claim_bad_lines(self._last_end)
            # Spaces trimmed, tabs kept: a leading tab is how a cell is protected from
            # being read as a formula by a spreadsheet, and it is data as typed.
            values = [cell.strip(" ") for cell in cells]
            if not any(value.strip() for value in values):
                continue  # a blank line, or only separators
            if not_utf8:
                bad = next((i for i, v in enumerate(values) if ESCAPED_BYTE.search(v)), None)
                yield RowProblem(start, self._column_name(bad), NOT_UTF8)
                continue
            if len(values) > width and any(values[width:]):
                yield RowProblem(start, "row", f"{len(values)} cells, but the header names {width} columns "
                                               f"(a separator inside an unquoted value?)")
                continue
            row = {self.header[i]: value for i, value in enumerate(values[:width])
                   if value.strip() and self.header[i]}
            yield Row(start, row)

    def _claim_bad_lines(self, end: int) -> bool:
        if not self._bad_lines or self._bad_lines[0] > end:
            return False
        self._bad_lines = [line for line in self._bad_lines if line > end]
        return True

    def _column_name(self, index: int | None) -> str:
        if index is None or index >= len(self.header) or not self.header[index]:
            return "row"
        name = self.header[index]
        return self.columns.get(name) or name


def _csv_problem(error: csv.Error, start: int, end: int) -> str:
    """The csv module's complaint, said for a person who edits the file."""
    if "unexpected end of data" in str(error):
        return (f"a quote opened on line {start} is never closed: lines {start}-{end} cannot be read "
                "(close the quote, or double a quote inside a quoted cell: \"\")")
    if "expected after" in str(error):
        return ("text after the closing quote of a cell (quote the whole cell, and double a quote inside it: "
                "\"\")")
    return f"cannot be read as CSV: {error}"


def iter_rows(path: str | Path) -> Iterator[Row | RowProblem]:
    """Each record of the CSV at `path`, streamed (see LeadCsv)."""
    with LeadCsv(path) as reader:
        yield from reader


# ---------------------------------------------------------------- one row -> a lead


@dataclass
class Parsed:
    email: str = ""
    fields: dict[str, Any] = field(default_factory=dict)  # profile columns given in the row
    attributes: dict[str, str] = field(default_factory=dict)
    consent: bool = False
    problems: list[tuple[str, str]] = field(default_factory=list)  # (column, message)


def parse_row(cells: dict[str, str], columns: dict[str, str | None]) -> Parsed:
    """Validate one row's cells (empty cells are already left out: not given)."""
    parsed = Parsed()
    for name, value in cells.items():
        target = columns.get(name)
        if target is None:
            parsed.attributes[name] = value
        elif target == "email":
            try:
                parsed.email = leadfields.check_email(value)
            except leadfields.FieldError as error:
                parsed.problems.append(("email", error.message))
        elif target == "consent":
            if value.lower() in YES:
                parsed.consent = True
            elif value.lower() not in NO:
                parsed.problems.append(("consent", f"'{value}' is not yes or no"))
        else:
            message = _check_field(target, value, parsed)
            if message:
                parsed.problems.append((target, message))
    if parsed.attributes:
        _check_attributes(parsed)
    if not parsed.email and not any(column == "email" for column, _ in parsed.problems):
        parsed.problems.insert(0, ("email", "missing (every row needs an email address)"))
    return parsed


def _check_field(name: str, value: str, parsed: Parsed) -> str | None:
    """Store `value` into parsed.fields[name] (checked by nurture.leadfields, as at every
    door), or return why it is refused."""
    try:
        parsed.fields[name] = leadfields.check_field(name, _company_size(value) if name == "company_size" else value)
    except leadfields.FieldError as error:
        return error.message
    return None


def _company_size(value: str) -> int | str:
    """A cell's whole number (a sign allowed, so "-5" is "below 0"); else the text, refused."""
    digits = value[1:] if value[:1] in "+-" else value
    return int(value) if digits.isascii() and digits.isdigit() else value


def _check_attributes(parsed: Parsed) -> None:
    """The row's attribute cells within the bounds; the column named as the header does."""
    try:
        leadfields.check_attributes(parsed.attributes)
    except leadfields.FieldError as error:
        column = error.field.removeprefix("attributes.") if error.field.startswith("attributes.") else "row"
        parsed.problems.append((column, error.message))


def differs(lead: Lead, parsed: Parsed) -> bool:
    """Whether importing `parsed` would change the stored lead."""
    if any(getattr(lead, name) != value for name, value in parsed.fields.items()):
        return True
    stored = lead.attributes or {}
    if any(stored.get(key) != value for key, value in parsed.attributes.items()):
        return True
    return parsed.consent and lead.consent_at is None


# ---------------------------------------------------------------- duplicates within the file


class _Seen:
    """Email -> first line, in a temporary SQLite file: flat memory for millions of rows."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("")  # "" = a private temporary database on disk
        self.db.execute("CREATE TABLE seen (digest BLOB PRIMARY KEY, line INTEGER) WITHOUT ROWID")

    def first_line(self, email: str, line: int) -> int | None:
        """None the first time `email` is met (remembering `line`), else the line it was first on."""
        digest = hashlib.blake2b(email.encode(), digest_size=16).digest()
        if self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (digest, line)).rowcount:
            return None
        found = self.db.execute("SELECT line FROM seen WHERE digest = ?", (digest,)).fetchone()
        return int(found[0])

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------- the import


class _Import:
    def __init__(self, nurture: Nurture, file: str, campaign: str | None, source: str,
                 consent_at: datetime) -> None:
        self.nurture, self.file, self.campaign, self.source = nurture, file, campaign, source
        self.consent_at = consent_at
        self.report = ImportReport()
        self.problems: list[tuple[int, int, str]] = []  # (line, order, text): sorted at the end
        self.slots = asyncio.Semaphore(IN_FLIGHT)
        self.tasks: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None

    def problem(self, line: int, column: str, message: str) -> None:
        self.problems.append((line, len(self.problems), f"{self.file}:{line}: {column}: {message}"))

    def reject(self, line: int, problems: list[tuple[str, str]]) -> None:
        self.report.rejected += 1
        for column, message in problems:
            self.problem(line, column, message)

    async def flush(self, pending: list[tuple[int, Parsed]]) -> None:
        """Store a batch (in one transaction, off the event loop), then hand what
        changed to the leads' workflows, a bounded number at once."""
        rows = list(pending)
        pending.clear()
        stored, unchanged, refused = await asyncio.to_thread(self._store, rows)
        self.report.unchanged += unchanged
        for line, column, message in refused:
            self.reject(line, [(column, message)])
        for line, lead in stored:
            await self.slots.acquire()
            self.raise_failure()
            task = asyncio.create_task(self.add(line, lead))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        await asyncio.sleep(0)  # let the calls (and anything else on this loop) run
        self.raise_failure()

    def _store(self, rows: list[tuple[int, Parsed]]) -> tuple[list[tuple[int, StoredLead]], int,
                                                             list[tuple[int, str, str]]]:
        """Compare each row with the store and write the new or changed ones: one
        transaction per batch, so the import takes the database's write lock once per
        batch rather than once per row (SQLite's lock waits were most of its time)."""
        stored: list[tuple[int, StoredLead]] = []
        refused: list[tuple[int, str, str]] = []
        unchanged = 0
        with self.nurture.session() as session:
            known = crud.leads_by_email(session=session, emails=[parsed.email for _, parsed in rows])
            # Stored by an earlier run that stopped before the lead's workflow took it
            # (see LeadStart): handed over again here, whatever the row says, and still
            # new if it was new then (so `--campaign` applies to it).
            marks = crud.start_marks(session=session, keys=[lead.key for lead in known.values()])
            for line, parsed in rows:
                lead = known.get(parsed.email)
                new = lead is None or lead.state_version == 0 or marks.get(lead.key, False)
                if lead is not None and not new and lead.key not in marks and not differs(lead, parsed):
                    unchanged += 1
                    continue
                fields = dict(parsed.fields)
                if new:
                    fields.setdefault("source", self.source)  # the default never overwrites a known source
                data = LeadIn(email=parsed.email, attributes=parsed.attributes or None,
                              consent_at=self.consent_at if parsed.consent else None, **fields)
                try:
                    stored.append((line, self.nurture.store_lead(session, data,
                                                                 campaign=self.campaign if new else None)))
                except InvalidField as error:  # e.g. attributes too large once merged: nothing written
                    refused.append((line, error.field, str(error).removeprefix(f"{error.field}: ")))
                except UserError as error:  # suppressed: nothing written for this row
                    refused.append((line, "email", str(error)))
        return stored, unchanged, refused

    async def add(self, line: int, lead: StoredLead) -> None:
        # `created` also covers a row stored by a run that stopped before its workflow took it
        try:
            result = await self.nurture.start_lead(lead)
        except UserError as error:
            self.reject(line, [("row", str(error))])
            return
        except Exception as error:  # noqa: BLE001 - TemporalUnavailable: stop the import
            if self.failure is None:
                self.failure = error
            return
        finally:
            self.slots.release()
        if lead.created:
            self.report.created += 1
        else:
            self.report.updated += 1
        if result.message:
            self.problem(line, "campaign", f"lead saved, but not enrolled in {self.campaign}: {result.message}")

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def drain(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.raise_failure()

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


async def import_file(nurture: Nurture, path: str | Path, *, campaign: str | None = None,
                      console: Any = None, source: str = "import", batch: int = 200) -> ImportReport:
    """Import the leads of a CSV file; bad rows become `report.problems`, good rows are kept.

    New leads are created with `source` (unless the row names one) and enrolled in
    `campaign`; known leads are updated only where the row says something new, and are
    never re-enrolled. Raises UserError for an unusable file or header (nothing imported),
    TemporalUnavailable if Temporal cannot be reached (checked before reading the file).
    """
    started = time.monotonic()
    file = str(path)
    if not Path(path).exists():
        raise UserError(f"{file}: no such file")
    await nurture.client()  # fail fast (exit 3) before reading anything
    if campaign:
        _check_campaign(nurture, campaign)
    batch = max(1, batch)
    job = _Import(nurture, file, campaign, source, utcnow())
    seen = _Seen()
    try:
        with LeadCsv(path) as reader, _Progress(console, reader) as progress:
            pending: list[tuple[int, Parsed]] = []
            for item in reader:
                job.report.rows += 1
                if isinstance(item, RowProblem):
                    job.reject(item.line, [(item.column, item.message)])
                    continue
                parsed = parse_row(item.cells, reader.columns)
                if parsed.problems:
                    job.reject(item.line, parsed.problems)
                    continue
                first = seen.first_line(parsed.email, item.line)
                if first is not None:
                    duplicate = f"{parsed.email} is a duplicate of line {first}; this row is skipped"
                    job.reject(item.line, [("email", duplicate)])
                    continue
                pending.append((item.line, parsed))
                if len(pending) >= batch:
                    await job.flush(pending)
                if job.report.rows % batch == 0:
                    progress.advance(job.report.rows)
            await job.flush(pending)
            await job.drain()
            progress.advance(job.report.rows)
    except BaseException:
        await job.cancel()
        raise
    finally:
        seen.close()
    report = job.report
    report.problems = [text for _, _, text in sorted(job.problems)]
    report.seconds = time.monotonic() - started
    return report


def _check_campaign(nurture: Nurture, name: str) -> None:
    """Refuse an unknown or broken campaign once, up front, rather than on every new lead."""
    problem = nurture.campaign_problem(name)
    if problem:
        raise UserError(f"--campaign: {problem}")


# ---------------------------------------------------------------- progress


class _Progress:
    """A Rich progress bar over the bytes read, with rows per second; silent without a console."""

    def __init__(self, console: Any, reader: LeadCsv) -> None:
        self.console, self.reader = console, reader
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> Self:
        if self.console is None:
            return self
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), DownloadColumn(),
            TimeRemainingColumn(), RowsColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(f"importing {Path(self.reader.file).name}",
                                           total=max(self.reader.size, 1), rows=0)
        return self

    def advance(self, rows: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=self.reader.bytes_read, rows=rows)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


class RowsColumn(ProgressColumn):
    """Rows read so far and rows per second."""

    def render(self, task: Task) -> Text:
        rows = task.fields.get("rows", 0)
        elapsed = task.elapsed or 0.0
        rate = rows / elapsed if elapsed > 0 else 0.0
        return Text(f"{rows:,} rows, {rate:,.0f} rows/s", style="progress.data.speed")


__all__ = ["ImportReport", "LeadCsv", "Row", "RowProblem", "import_file", "iter_rows", "map_header",
           "parse_row", "sniff_delimiter"]
