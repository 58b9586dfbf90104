"""The content checks of `campaign validate` (contract section 10): each rule with a
template that breaks it and one that passes, at the template's FILE:LINE."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.campaign import validate_paths

ADDRESS = "Acme Inc., 1 Main Street, Springfield"
HTML = '<p>Hi</p>\n<a href="{{ unsubscribe_url }}">Unsubscribe</a>\n<p>{{ sender.address }}</p>\n'
TEXT = "Subject: Hello\n\nHi\nUnsubscribe: {{ unsubscribe_url }}\n{{ sender.address }}\n"
CAMPAIGN = "name: trial\nsender: {from: hello@acme.example%s}\nsteps:\n  - {id: one, send: note}\n"


def validate(tmp_path: Path, html: str | None = HTML, text: str | None = TEXT, *, address: bool = True,
             funnel: str | None = None) -> list[str]:
    """`campaign validate` lines for a campaign sending `note`, template paths relative."""
    templates = tmp_path / "templates"
    templates.mkdir(exist_ok=True)
    for suffix, source in ((".html", html), (".txt", text)):
        if source is not None:
            (templates / f"note{suffix}").write_text(source, encoding="utf-8")
    (templates / "_footer.txt").write_text("{{ unsubscribe_url }}\n{{ sender.address }}\n", encoding="utf-8")
    campaign = tmp_path / "trial.yaml"
    campaign.write_text(CAMPAIGN % (f", address: '{ADDRESS}'" if address else ""), encoding="utf-8")
    if funnel is not None:
        (tmp_path / "funnel.yaml").write_text(funnel, encoding="utf-8")
    problems = validate_paths([campaign], templates)
    return [p.shown().replace(f"{templates}/", "").replace(f"{tmp_path}/", "") for p in problems]


def test_a_compliant_email_is_clean(tmp_path: Path) -> None:
    assert validate(tmp_path) == []


@pytest.mark.parametrize(("html", "text", "expected"), [
    (HTML.replace('<a href="{{ unsubscribe_url }}">Unsubscribe</a>', ""), TEXT,
     "note.html:1: steps.0.send: no visible unsubscribe link"),
    (HTML.replace("<a ", '<div style="display: none"><a ').replace("</a>", "</a></div>"), TEXT,
     "note.html:1: steps.0.send: no visible unsubscribe link"),
    (HTML, TEXT.replace("Unsubscribe: {{ unsubscribe_url }}\n", ""),
     "note.txt:1: steps.0.send: no unsubscribe link in the text part"),
    (HTML.replace("{{ sender.address }}", ""), TEXT,
     "note.html:1: steps.0.send: the sender's postal address is missing"),
    (HTML, TEXT.replace("{{ sender.address }}", ""),
     "note.txt:1: steps.0.send: the sender's postal address is missing"),
    (HTML, None, "trial.yaml:4: steps.0.send: email 'note' has no plain-text part"),
    (HTML + '{% include "_nope.html" %}\n', TEXT, "note.html:4: steps.0.send: partial '_nope.html' not found"),
    (HTML, TEXT + '{% if lead.company == "x" %}{% include "_gone.txt" %}{% endif %}\n',
     "note.txt:6: steps.0.send: partial '_gone.txt' not found"),
    ('{% extends "_nolayout.html" %}\n', TEXT, "note.html:1: steps.0.send: partial '_nolayout.html' not found"),
])
def test_each_required_part_is_an_error(tmp_path: Path, html: str, text: str | None, expected: str) -> None:
    lines = validate(tmp_path, html, text)

    assert [line for line in lines if line.startswith(expected)] != [], lines
    assert not any(line.startswith("warning:") for line in lines), lines


def test_partials_are_followed_for_the_required_parts(tmp_path: Path) -> None:
    text = "Subject: Hello\n\nHi\n{% include \"_footer.txt\" %}\n"
    assert validate(tmp_path, HTML, text) == []


def test_the_postal_address_comes_from_the_funnel_or_is_an_error(tmp_path: Path) -> None:
    assert validate(tmp_path, address=False, funnel=f"sender: {{address: '{ADDRESS}'}}\n") == []
    (tmp_path / "funnel.yaml").unlink()
    lines = validate(tmp_path, address=False)
    assert lines[0].startswith("trial.yaml:2: sender: no postal address for this campaign's marketing email")


@pytest.mark.parametrize(("bad", "good", "expected"), [
    (HTML + '<img src="https://acme.example/logo.png">\n', HTML + '<img src="https://acme.example/logo.png" alt="Acme">\n',
     "warning: note.html:4: steps.0.send: an image without alt text"),
    (HTML + '<a href="http://acme.example/pricing">Pricing</a>\n', HTML + '<a href="https://acme.example/pricing">Pricing</a>\n',
     "warning: note.html:4: steps.0.send: an http: link (http://acme.example/pricing)"),
    (HTML + '<a href="https://evil.example/login">https://acme.example/login</a>\n',
     HTML + '<a href="https://www.acme.example/login?utm_source=x">https://acme.example/login</a>\n',
     "warning: note.html:4: steps.0.send: the link text https://acme.example/login points elsewhere"),
    (HTML + "<p>" + "x" * (103 * 1024) + "</p>\n", HTML + "<p>" + "x" * (100 * 1024) + "</p>\n",
     "warning: note.html:1: steps.0.send: the HTML is 103 KB once rendered"),
])
def test_each_warning_and_its_passing_template(tmp_path: Path, bad: str, good: str, expected: str) -> None:
    lines = validate(tmp_path, bad)
    assert [line for line in lines if line.startswith(expected)] != [], lines
    assert all(line.startswith("warning:") for line in lines), lines
    assert validate(tmp_path, good) == []


def test_namespace_and_doctype_urls_are_not_links(tmp_path: Path) -> None:
    head = ('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
            '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n<html xmlns="http://www.w3.org/1999/xhtml">\n')
    assert validate(tmp_path, head + HTML + "</html>\n") == []


def test_http_links_in_the_text_part_and_long_subjects_are_warnings(tmp_path: Path) -> None:
    long = "A subject that goes on and on about our product until inboxes cut it off somewhere past here"
    text = TEXT.replace("Hello", long).replace("Hi\n", "See http://acme.example/\n")

    assert validate(tmp_path, HTML, text) == [
        "warning: note.txt:3: steps.0.send: an http: link (http://acme.example/): use https",
        f"warning: note.txt:1: steps.0.send: the subject is {len(long)} characters once rendered: "
        "inboxes cut it past about 90",
    ]
    assert validate(tmp_path, HTML, TEXT.replace("Hello", long[:90])) == []


def test_the_sales_handoff_email_needs_no_unsubscribe_link(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "sales_handoff.html").write_text("<p>{{ lead.email }} is yours</p>\n", encoding="utf-8")
    (templates / "sales_handoff.txt").write_text("Subject: New SQL\n\n{{ lead.email }} is yours\n", encoding="utf-8")
    funnel = tmp_path / "funnel.yaml"
    funnel.write_text("handoff: {owners: [alice@acme.example]}\n", encoding="utf-8")

    assert validate_paths([funnel], templates) == []


def test_the_sample_campaigns_and_templates_validate_clean() -> None:
    root = Path(__file__).resolve().parent.parent
    assert validate_paths([root / "campaigns"], root / "templates" / "email") == []
