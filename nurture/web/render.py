"""Rendering the web app's pages: Jinja2 templates shipped in `nurture/web/templates`.

Autoescaped (every value a lead, a form or a rep typed is data, never markup). Every
page gets the signed-in user (`user`, None on public pages) and the CSRF token of its
session (`csrf_token`), which every state-changing form posts back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context

from nurture import when
from nurture.wording import plural

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
# Pages show personal data: never cached, never indexed, never sent on as a referrer.
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex",
           "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}

env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                  trim_blocks=True, lstrip_blocks=True)
env.filters["plural"] = plural


# Times show in the zone a template names (a lead's own, on its page), else in the
# signed-in viewer's (`nurture user add --timezone`, or their account page), else UTC;
# the zone is always named.
@pass_context
def _labelled(context: Context, value: Any, zone_name: str | None = None) -> str:
    return when.labelled(value, zone_name or context.get("viewer_zone"))


@pass_context
def _clock(context: Context, value: Any, zone_name: str | None = None) -> str:
    return when.clock(value, zone_name or context.get("viewer_zone"))


@pass_context
def _zone_header(context: Context, name: str, zone_name: str | None = None) -> str:
    return when.header(name, zone_name or context.get("viewer_zone"))


env.filters["labelled"] = _labelled
env.filters["clock"] = _clock
env.globals["zone_header"] = _zone_header


def page(request: Request, template: str, status: int = 200, /, **context: Any) -> HTMLResponse:
    context.setdefault("user", getattr(request.state, "user", None))
    context.setdefault("viewer_zone", getattr(context["user"], "timezone", None))
    context.setdefault("csrf_token", getattr(request.state, "csrf_token", ""))
    context.setdefault("path", request.url.path)
    context.setdefault("errors", {})
    html = env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def message(request: Request, status: int, title: str, text: str) -> HTMLResponse:
    """A page that only says what happened (not found, refused, link void...)."""
    return page(request, "message.html", status, title=title, message=text)
