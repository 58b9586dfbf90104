"""How `where` rules read a value: numbers, booleans, blanks and regex searches.

Plain functions without I/O: nurture.rules uses them inside workflows, and SQLite
runs the very same ones as SQL functions (nurture.db registers them), so a segment
evaluated in the database reads values exactly as a rule does in Python.
"""

from __future__ import annotations

import re
from typing import Any

NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def as_number(value: Any) -> float | None:
    """int/float as is, numeric strings ("120") converted; bools and the rest: None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and NUMBER_RE.fullmatch(value.strip()):
        return float(value)
    return None


def as_bool(value: Any) -> bool | None:
    """Booleans, and the strings CLI/CSV attributes use for them ("true", "no")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in TRUE_WORDS else False if text in FALSE_WORDS else None


def search(pattern: Any, text: Any) -> bool:
    """`re.search`; a bad pattern is a non-match, never an error (it runs in a workflow)."""
    try:
        return re.search(str(pattern), str(text)) is not None
    except (re.error, TypeError, ValueError, RecursionError):
        return False


# ---------------------------------------------------------------- as SQLite functions
# SQLite passes text (or NULL) in and takes None, numbers or text back.


def _sql_present(text: Any) -> int:
    return int(text is not None and bool(str(text).strip()))


def _sql_bool(text: Any) -> int | None:
    value = None if text is None else as_bool(text)
    return None if value is None else int(value)


def _sql_search(pattern: Any, text: Any) -> int:
    return int(text is not None and search(pattern, text))


SQLITE_FUNCTIONS = {
    "nurture_number": (1, lambda text: None if text is None else as_number(str(text))),
    "nurture_fold": (1, lambda text: None if text is None else str(text).casefold()),
    "nurture_present": (1, _sql_present),
    "nurture_bool": (1, _sql_bool),
    "nurture_search": (2, _sql_search),
}
