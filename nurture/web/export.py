"""CSV export of the lead list, safe to open in a spreadsheet.

A cell that starts with `=`, `+`, `-` or `@` (or a tab or carriage return, which some
spreadsheets skip first) is a formula to Excel, LibreOffice and Google Sheets: a name
typed as `=HYPERLINK(...)` in a web form would run in the marketer's spreadsheet.
Such text cells get a leading single quote (OWASP's advice), which spreadsheets show
as text; numbers stay numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([neutralise(cell) for cell in row] for row in rows)
    return out.getvalue()
