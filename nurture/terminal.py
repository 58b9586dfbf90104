"""Terminal output that data cannot take over.

Lead fields come from CSV files, the API and webhooks: an ESC sequence in a company name
would, printed raw, retitle the window, move the cursor or hide lines of output. Every
CLI console strips control characters from the text it renders; Rich's own styling is
added after that step, so colours and tables still work.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment

# C0 (but tab and newline), DEL and C1: what a terminal may act on instead of printing.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# DEL and C1 survive json.dumps(ensure_ascii=False); C0 is already escaped by it.
_JSON_RAW = re.compile(r"[\x7f-\x9f]")


def strip_controls(text: str) -> str:
    """The text without control characters (tab and newline kept)."""
    return _CONTROLS.sub("", text)


def json_safe(document: str) -> str:
    """A JSON document with DEL and C1 characters written as \\u escapes: same value,
    nothing a terminal acts on."""
    return _JSON_RAW.sub(lambda match: f"\\u{ord(match.group()):04x}", document)


class SafeConsole(Console):
    """A Rich console whose rendered text never carries control characters."""

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control or not _CONTROLS.search(segment.text):
                yield segment
            else:
                yield Segment(strip_controls(segment.text), segment.style)
