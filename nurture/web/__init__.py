"""The web app for marketers and sales reps (contract section 7): sign-in, campaigns,
leads, handoffs, server-rendered from the templates in `templates/`, styled by `static/`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from nurture.web import account, auth, campaigns, handoffs, leads, render
from nurture.web.render import STATIC

__all__ = ["install", "is_page", "render"]  # render: api.py draws its error pages with it


def install(app: FastAPI) -> None:
    """The sign-in guard in front of every route, the static files and the pages."""
    auth.install(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(account.router)
    app.include_router(campaigns.router)
    app.include_router(leads.router)
    app.include_router(handoffs.router)


def is_page(path: str) -> bool:
    """A path a browser shows (errors there are pages), not the JSON API or a webhook."""
    return not path.startswith(("/v1/", "/webhooks/", "/healthz", "/metrics", "/docs", "/openapi"))
