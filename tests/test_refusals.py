"""A user's mistake is refused before anything is written, in one line (issue 18.2):
an unknown campaign, or one whose file is invalid now, for `lead add --campaign`,
`nurture enroll` and `POST /v1/leads`; the worker logs no traceback for it."""

from __future__ import annotations

import logging

import pytest

from nurture.service import NotFound
from tests.test_broken_files import break_file, stack  # noqa: F401 - the fixture: campaigns of its own
from tests.test_cli import cli, one_error_line  # noqa: F401 - the fixture, over that stack
from tests.test_webhooks import serve

AUTH = {"Authorization": "Bearer test-key"}


def tracebacks(caplog) -> list[str]:
    """What the worker (Temporal's activity and workflow loggers, ours) logged with a traceback;
    not asyncio's leftovers of earlier tests."""
    return [record.getMessage() for record in caplog.records
            if record.exc_info and record.name.startswith(("temporalio", "nurture"))]


async def test_lead_add_with_an_unknown_campaign_is_refused_and_stores_nothing(stack, cli, caplog):
    caplog.set_level(logging.DEBUG)
    result = await cli("lead", "add", "--email", "ann@globex.example", "--campaign", "nope")
    assert result.returncode == 1
    assert one_error_line(result) == "error: campaign: unknown campaign 'nope' (known: b2b-trial, partners, recycled-nurture)"
    with pytest.raises(NotFound):
        stack.show("ann@globex.example")
    assert not tracebacks(caplog)


async def test_enroll_in_an_unknown_or_broken_campaign_is_one_line_and_no_traceback(stack, cli, caplog):
    caplog.set_level(logging.DEBUG)
    email = "bob@initech.example"
    await stack.add(email)  # source unset: no campaign takes it by itself
    unknown = await cli("enroll", email, "nope")
    assert unknown.returncode == 1 and "unknown campaign 'nope'" in one_error_line(unknown)
    break_file(stack.settings.campaigns_dir / "b2b-trial.yaml")
    broken = await cli("enroll", email, "b2b-trial")
    assert broken.returncode == 1
    line = one_error_line(broken)
    assert "campaign 'b2b-trial' cannot be enrolled in while its file is invalid" in line
    assert "b2b-trial.yaml:" in line and "unknown_key" in line
    assert stack.show(email)["campaign"] is None
    assert not tracebacks(caplog)


async def test_the_api_refuses_an_unknown_or_broken_campaign_naming_the_field(stack, caplog):
    caplog.set_level(logging.DEBUG)
    async with serve(stack) as http:
        refused = await http.post("/v1/leads", headers=AUTH, json={"email": "kim@hooli.example", "campaign": "nope"})
        assert refused.status_code == 422, refused.text
        assert refused.json() == {"error": "campaign: unknown campaign 'nope' (known: b2b-trial, partners, recycled-nurture)",
                                  "field": "campaign"}
        break_file(stack.settings.campaigns_dir / "b2b-trial.yaml")
        broken = await http.post("/v1/leads", headers=AUTH,
                                 json={"email": "kim@hooli.example", "campaign": "b2b-trial"})
        assert broken.status_code == 422 and broken.json()["field"] == "campaign"
        assert "file is invalid" in broken.json()["error"]
        missing = await http.get("/v1/leads/kim@hooli.example", headers=AUTH)
        assert missing.status_code == 404  # nothing was written
    assert not tracebacks(caplog)
