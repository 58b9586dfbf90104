"""Rendering the web app's pages: Jinja2 templates shipped in `nurture/web/templates`.

Autoescaped: every value a lead, a campaign file or a user typed is data, never markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from nurture.wording import plural

TEMPLATES = Path(__file__).parent / "templates"
# Pages show personal data: never cached, never indexed, never sent on as a referrer.
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex",
           "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}

env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                  undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
env.filters["plural"] = plural


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("path", request.url.path)
    html = env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def message(request: Request, status: int, title: str, text: str) -> HTMLResponse:
    """A page that only says what happened (not found, refused...)."""
    return page(request, "message.html", status, title=title, message=text)
