"""Words shown to people: counted nouns agree with their number ("1 email", "2 emails")."""

from __future__ import annotations


def plural(count: int, singular: str, many: str | None = None) -> str:
    """`1 lead`, `0 leads`, `2 anonymous visitors`; `many` for irregular nouns."""
    return f"{count} {singular if count == 1 else many or singular + 's'}"


def control_refusal(name: str, state: str) -> str:
    """Why an enrollment in a paused or stopped campaign is refused (one line)."""
    return f"campaign '{name}' is {state}: it takes no leads (nurture campaign resume {name})"
