"""The MQL alert (issue 14.7, `qualify.mql.notify`): marketing hears of a new MQL before it
becomes an SQL, by internal mail rendered from a template and recorded on the lead."""

from __future__ import annotations

import email as email_lib
from email import policy

from nurture import crud, journey
from tests.conftest import _stack, make_settings
from tests.test_handoff import campaigns_with_funnel

MQL_RULE = "  mql: {score: 50, min_grade: C}\n"
EVENTS = ("quote_request", "webinar_attended")  # 30 + 20 points: an MQL, no BANT yet


async def to_mql(stack, email: str) -> dict:
    await stack.add(email, first_name="Mo", company="Initech", job_title="VP Sales", company_size=200)
    await stack.nurture.ingest_events([{"email": email, "type": kind} for kind in EVENTS])
    lead = stack.show(email)
    assert lead["stage"] == "mql", lead["history"]
    return lead


async def test_a_new_mql_is_mailed_to_the_listed_addresses(temporal_env, tmp_path):
    campaigns = campaigns_with_funnel(tmp_path, {MQL_RULE: (
        "  mql: {score: 50, min_grade: C, notify: {template: mql_alert, to: [mktg@acme.example, ops@acme.example]}}\n")})
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        lead = await to_mql(stack, "mo@initech.example")
        with stack.session() as session:
            alerts = [row for row in crud.emails_of(session=session, key=journey.lead_key("mo@initech.example"))
                      if row.template == "mql_alert"]
        assert sorted(row.to for row in alerts) == ["mktg@acme.example", "ops@acme.example"]
        assert all(row.marketing is False and row.status == "sent" for row in alerts)
        noted = [h for h in lead["history"] if h["kind"] == "email" and h["detail"].get("kind") == "mql alert"]
        assert len(noted) == 2 and noted[0]["reason"].startswith('sent mql_alert: "New MQL: Mo (Initech), score 50"')
        message = email_lib.message_from_bytes((stack.settings.outbox_dir / f"{alerts[0].send_id}.eml").read_bytes(),
                                               policy=policy.default)
        text = message.get_body(("plain",)).get_content()
        assert "Mo from Initech just became marketing-qualified" in text and "quote request (+30)" in text
        assert "unsubscribe" not in text.lower()  # internal mail: no marketing footer

        # more events after the MQL: no second alert (the stage did not move again)
        await stack.nurture.ingest_events([{"email": "mo@initech.example", "type": "meeting_booked"}])
        with stack.session() as session:
            assert len([r for r in crud.emails_of(session=session, key=journey.lead_key("mo@initech.example"))
                        if r.template == "mql_alert"]) == 2


async def test_to_owner_without_an_owner_says_so_and_sends_nothing(temporal_env, tmp_path):
    campaigns = campaigns_with_funnel(tmp_path, {MQL_RULE: "  mql: {score: 50, min_grade: C, notify: {to: owner}}\n"})
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        lead = await to_mql(stack, "ned@initech.example")
        assert any(h["reason"].startswith("MQL alert not sent: the lead has no owner yet") for h in lead["history"])
        with stack.session() as session:
            assert [r.template for r in crud.emails_of(session=session, key=journey.lead_key("ned@initech.example"))
                    if r.template == "mql_alert"] == []


def test_a_missing_alert_template_or_bad_recipient_is_a_file_line_error(tmp_path):
    from nurture.campaign import validate_paths
    from tests.conftest import ROOT

    templates = ROOT / "templates" / "email"
    for number, (notify, says) in enumerate((
            ("{template: no_such_alert}", "qualify.mql.notify.template: email 'no_such_alert' not found"),
            ("{to: [not-an-address]}", "qualify.mql.notify.to"))):
        campaigns = campaigns_with_funnel(tmp_path / str(number),
                                          {MQL_RULE: f"  mql: {{score: 50, min_grade: C, notify: {notify}}}\n"})
        problems = [p for p in validate_paths([campaigns / "funnel.yaml"], templates) if p.severity == "error"]
        assert len(problems) == 1 and says in str(problems[0]), [str(p) for p in problems]
        assert str(problems[0]).startswith(f"{campaigns / 'funnel.yaml'}:"), str(problems[0])
