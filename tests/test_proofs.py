"""`nurture email preview` and `nurture email test-send` (contract section 10): a preview
is what SendGrid receives; a proof reaches SendGrid marked [TEST] and touches no lead."""

from __future__ import annotations

import json
import re
import time
from html import unescape

from nurture import crud, journey
from nurture.proofs import TEST_SENDS_PER_MINUTE, preview, sample_lead, send_test, stored_lead
from tests.test_cli import cli, one_error_line  # noqa: F401 - the `cli` fixture

TESTER = "qa@acme.example"


def content(message: dict, kind: str) -> str:
    return next(part["value"] for part in message["content"] if part["type"] == kind)


async def test_a_preview_is_byte_for_byte_what_sendgrid_receives(sendgrid_stack):
    stack, fake = sendgrid_stack, sendgrid_stack.extras["sendgrid"]
    address = "ann@globex.example"
    await stack.add(address, first_name="Ann", company="Globex", source="web_form", locale="fr-FR")
    await stack.until(address, lambda lead: lead["step"] == "wait-click")

    sent = fake.sent_to(address)
    assert [m["custom_args"]["step"] for m in sent] == ["welcome", "case-study"]
    lead = stored_lead(stack.settings, address)
    for message in sent:
        step = message["custom_args"]["step"]
        template = {"welcome": "welcome", "case-study": "case_study"}[step]
        shown = preview(stack.settings, template, lead, campaign="b2b-trial", step=step).email
        assert shown.subject == message["subject"]
        assert shown.text == content(message, "text/plain")
        assert shown.html == content(message, "text/html")
        assert shown.locale_used == "fr"
    assert "Acme Inc. · 100 Market Street" in content(sent[0], "text/plain")  # funnel.yaml's sender.address


async def test_a_test_send_reaches_sendgrid_marked_test_and_changes_no_lead(sendgrid_stack):
    stack, fake = sendgrid_stack, sendgrid_stack.extras["sendgrid"]
    address = "bea@initech.example"
    await stack.add(address, first_name="Bea", source="web_form")
    await stack.until(address, lambda lead: lead["step"] != "welcome")
    before = stack.show(address)
    with stack.session() as session:
        rows_before = len(crud.list_outbox(session=session))
    settings = stack.settings.model_copy(update={"test_recipients": f"someone@else.example, {TESTER}"})

    sent = send_test(settings, "case_study", TESTER, stored_lead(settings, address), campaign="b2b-trial")

    (proof,) = fake.sent_to(TESTER)
    real = preview(settings, "case_study", stored_lead(settings, address), campaign="b2b-trial").email
    assert proof["subject"] == sent.subject == f"[TEST] {real.subject}"
    assert proof["custom_args"] == {"send_id": proof["custom_args"]["send_id"], "kind": "test"}  # no lead, no campaign
    assert "categories" not in proof and "List-Unsubscribe" not in (proof.get("headers") or {})
    assert journey.lead_key(address) not in content(proof, "text/plain")  # its links unsubscribe nobody
    assert stack.show(address) == before
    with stack.session() as session:
        assert len(crud.list_outbox(session=session)) == rows_before
        assert all(row.to != TESTER for row in crud.list_outbox(session=session))


async def test_preview_cli_prints_the_text_writes_the_html_and_json(cli, stack, tmp_path):
    html = tmp_path / "welcome.html"
    shown = await cli("email", "preview", "welcome", "--html", str(html))
    assert shown.returncode == 0, shown.stderr
    assert "Subject: Jane, welcome to Acme" in shown.stdout and "Unsubscribe: http" in shown.stdout
    assert "Acme Inc. · 100 Market Street" in html.read_text(encoding="utf-8")
    lead = tmp_path / "lead.json"
    lead.write_text(json.dumps({"email": "luc@globex.example", "first_name": "Luc", "locale": "fr-FR"}))
    data = json.loads((await cli("email", "preview", "case_study", "--lead", str(lead), "--json")).stdout)
    assert data["locale"] == "fr" and data["campaign"] == "b2b-trial" and data["step"] == "case-study"
    assert data["to"] == "luc@globex.example" and data["text"].startswith("Bonjour Luc")


async def test_email_commands_refuse_bad_input_in_one_line(cli, stack):
    allowed = {"NURTURE_TEST_RECIPIENTS": TESTER}
    cases = [
        (("email", "preview", "no_such_email"), "unknown email template 'no_such_email'"),
        (("email", "preview", "welcome", "--email", "nobody@globex.example"), "unknown lead nobody@globex.example"),
        (("email", "preview", "welcome", "--campaign", "b2b-trial", "--step", "case-study"),
         "step case-study of campaign b2b-trial sends 'case_study', not 'welcome'"),
        (("email", "test-send", "welcome", "--to", "stranger@gmail.example"),
         "stranger@gmail.example may not receive test sends"),
        (("email", "test-send", "no_such_email", "--to", TESTER), "unknown email template 'no_such_email'"),
        (("email", "test-send", "welcome", "--to", TESTER, "--email", "nobody@globex.example"),
         "unknown lead nobody@globex.example"),
        (("email", "preview", "welcome", "--campaign", "no-such-campaign"), "unknown campaign 'no-such-campaign'"),
        (("email", "preview", "case_study_reminder"), "'case_study_reminder' is sent by b2b-trial step reminder, "
                                                      "recycled-nurture step last-word: say which with --campaign"),
    ]
    for args, message in cases:
        result = await cli(*args, extra_env=allowed)
        assert result.returncode == 1, (args, result.stdout)
        assert message in one_error_line(result), args
    assert not stack.settings.outbox_dir.exists() or not list(stack.settings.outbox_dir.iterdir())


async def test_test_sends_are_rate_limited_across_processes(cli, stack):
    settings = stack.settings.model_copy(update={"test_recipients": TESTER})
    left = 60 - time.time() % 60
    if left < 20:  # the limit counts per clock minute: start this test within one
        time.sleep(left + 0.5)
    for _ in range(TEST_SENDS_PER_MINUTE):
        assert send_test(settings, "welcome", TESTER, sample_lead()).file.exists()

    refused = await cli("email", "test-send", "welcome", "--to", TESTER, extra_env={"NURTURE_TEST_RECIPIENTS": TESTER})

    assert refused.returncode == 1
    assert f"limited to {TEST_SENDS_PER_MINUTE} a minute" in one_error_line(refused)
    assert len(list(settings.outbox_dir.glob("test-*.eml"))) == TEST_SENDS_PER_MINUTE


async def test_a_test_send_in_outbox_mode_is_listed_by_outbox_as_a_test(cli, stack):
    sent = await cli("email", "test-send", "welcome", "--to", TESTER, extra_env={"NURTURE_TEST_RECIPIENTS": TESTER})
    assert sent.returncode == 0, sent.stderr
    assert f"test send to {TESTER}: \"[TEST] Jane, welcome to Acme" in sent.stdout

    (row,) = json.loads((await cli("outbox", "--json")).stdout)

    assert row["test"] is True and row["to"] == TESTER and row["subject"].startswith("[TEST] Jane, welcome")
    assert row["campaign"] is None and row["step"] is None and row["sent_at"].endswith("Z")
    with stack.session() as session:
        assert crud.list_outbox(session=session) == []  # no email row


async def test_a_web_app_user_may_receive_test_sends_without_being_listed(cli, stack):
    """Contract 10: a test send goes to users of the web app or to NURTURE_TEST_RECIPIENTS."""
    from tests.test_web import add_user

    add_user(stack, "mia@acme.example", "marketer")
    sent = await cli("email", "test-send", "welcome", "--to", "Mia@Acme.example")
    assert sent.returncode == 0, sent.stderr
    assert "test send to Mia@Acme.example" in sent.stdout
    stranger = await cli("email", "test-send", "welcome", "--to", "max@acme.example")
    assert stranger.returncode == 1 and "it is no web app user" in one_error_line(stranger)


async def test_the_campaign_page_previews_a_step_for_a_chosen_lead(stack):
    """Issue 19.1: the web app shows the same preview as `nurture email preview`."""
    from tests.test_web import MARKETER, REP, add_user, sign_in
    from tests.test_webhooks import serve

    await stack.add("luc@globex.example", first_name="Luc", locale="fr-FR")
    add_user(stack, MARKETER, "marketer")
    add_user(stack, REP, "sales")
    expected = preview(stack.settings, "case_study", stored_lead(stack.settings, "luc@globex.example"),
                       campaign="b2b-trial", step="case-study").as_json()
    async with serve(stack) as http:
        assert (await http.get("/campaigns/b2b-trial/preview")).status_code == 303  # signed-in users only
        await sign_in(http, MARKETER)
        assert 'href="/campaigns/b2b-trial/preview"' in (await http.get("/campaigns/b2b-trial")).text
        page = await http.get("/campaigns/b2b-trial/preview", params={"step": "case-study", "email": "luc@globex.example"})
        assert page.status_code == 200, page.text
        html = page.text
        subject = re.search(r'<dd data-field="subject">(.*?)</dd>', html).group(1)
        text = re.search(r'<pre data-field="text"[^>]*>(.*?)</pre>', html, re.S).group(1)
        assert unescape(subject) == expected["subject"]
        assert expected["text"].startswith("Bonjour Luc") and unescape(text) == expected["text"]
        assert 'sandbox srcdoc="' in html and "<script" not in html
        sample = await http.get("/campaigns/b2b-trial/preview")  # the first send step, the sample lead
        assert sample.status_code == 200 and '<option value="welcome" selected>' in sample.text
        unknown = await http.get("/campaigns/b2b-trial/preview", params={"step": "case-study", "email": "no@globex.example"})
        assert unknown.status_code == 400 and 'id="email-error">unknown lead no@globex.example' in unknown.text
        bad_step = await http.get("/campaigns/b2b-trial/preview", params={"step": "wait-click"})
        assert bad_step.status_code == 400 and "is no send step of b2b-trial" in bad_step.text
        await http.post("/logout", data={"csrf_token": re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)})
        await sign_in(http, REP)
        assert (await http.get("/campaigns/b2b-trial/preview")).status_code == 403
