"""CSV cells that a spreadsheet will not run (CSV or "formula" injection).

A cell that starts with `=`, `+`, `-` or `@` (or a tab or carriage return, which
some spreadsheets skip before looking) is read by Excel, LibreOffice and Google
Sheets as a formula: `=HYPERLINK(...)` or `=cmd|...` typed into a form lands in a
marketer's spreadsheet and runs there. nurture stores what was typed, as typed (the
importer keeps a protective leading tab too); every CSV nurture writes goes through
`write_csv`, which neutralises such a cell the way OWASP recommends: a single quote
before it, which spreadsheets show as text and do not keep in the value. Numbers
(int, float) are written as numbers: only text can hold a formula.

The web app's `/leads.csv` (contract section 7) writes through it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO, Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """The cell as a spreadsheet should show it: text that would start a formula
    gets a leading single quote; anything else is returned unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(file: IO[str], header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a header and rows to `file` (opened with newline=""), every cell neutralised."""
    writer = csv.writer(file)
    writer.writerow([neutralise(name) for name in header])
    writer.writerows([neutralise("" if cell is None else cell) for cell in row] for row in rows)
