"""nurture.emails: rendering the email pairs of templates/email (contract section 2)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from nurture.emails import Rendered, TemplateError, check_template, render_email, sample_context

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates" / "email"
CAMPAIGNS = REPO / "campaigns"


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def sample_names() -> list[str]:
    return sorted({p.name.split(".")[0] for p in TEMPLATES.glob("*.txt") if not p.name.startswith("_")})


def lead_context(**lead_fields: object) -> dict:
    context = sample_context()
    context["lead"].update(lead_fields)
    return context


# ---------------------------------------------------------------- locales


def test_english_lead_gets_the_english_pair() -> None:
    rendered = render_email(TEMPLATES, "welcome", lead_context(locale="en-US"))

    assert isinstance(rendered, Rendered)
    assert rendered.template == "welcome"
    assert rendered.locale_used is None
    assert rendered.subject.startswith("Jane, welcome to Acme")
    assert rendered.text.startswith("Hi Jane,")
    assert "Hi Jane," in rendered.html
    assert 'lang="en"' in rendered.html


def test_french_locale_gets_the_french_pair() -> None:
    rendered = render_email(TEMPLATES, "welcome", sample_context(), locale="fr-CA")

    assert rendered.locale_used == "fr"
    assert rendered.subject.startswith("Jane, bienvenue chez Acme")
    assert rendered.text.startswith("Bonjour Jane,")
    assert 'lang="fr"' in rendered.html


def test_locale_defaults_to_the_leads_own() -> None:
    rendered = render_email(TEMPLATES, "case_study", lead_context(locale="FR_fr"))

    assert rendered.locale_used == "fr"
    assert "Globex" in rendered.subject and "Comment" in rendered.subject


def test_locale_without_a_variant_falls_back_to_the_default_pair() -> None:
    rendered = render_email(TEMPLATES, "welcome", sample_context(), locale="de-DE")

    assert rendered.locale_used is None
    assert rendered.text.startswith("Hi Jane,")


def test_half_a_locale_pair_is_not_used(tmp_path: Path) -> None:
    write(tmp_path, {"note.html": "<p>Hi</p>", "note.txt": "Subject: Hi\n\nHi", "note.fr.html": "<p>Bonjour</p>"})

    rendered = render_email(tmp_path, "note", sample_context(), locale="fr")

    assert rendered.locale_used is None
    assert rendered.html == "<p>Hi</p>"
    assert check_template(tmp_path, "note") == [("note.fr.txt", 0, "missing: note.fr.html and note.fr.txt go together")]


# ---------------------------------------------------------------- subject and body


def test_subject_is_the_first_line_of_the_txt_and_one_blank_line_is_dropped(tmp_path: Path) -> None:
    write(tmp_path, {
        "note.html": "<p>Hi {{ lead.first_name }}</p>",
        "note.txt": "Subject: News for {{ lead.company }}\n\n\nHi {{ lead.first_name }},\nbye\n",
    })

    rendered = render_email(tmp_path, "note", sample_context())

    assert rendered.subject == "News for Globex"
    assert rendered.text == "\nHi Jane,\nbye"  # one blank line dropped, the second kept


def test_body_may_start_right_after_the_subject_line(tmp_path: Path) -> None:
    write(tmp_path, {"note.html": "x", "note.txt": "Subject: S\nBody {{ step }}"})

    assert render_email(tmp_path, "note", sample_context()).text == "Body case-study"


def test_subject_override_is_a_template_and_replaces_the_txt_subject() -> None:
    rendered = render_email(
        TEMPLATES, "case_study", sample_context(), subject_override="{{ lead.first_name }}, a story for you"
    )

    assert rendered.subject == "Jane, a story for you"
    assert "Globex" in rendered.text


def test_subject_never_spans_lines_whatever_the_data() -> None:
    rendered = render_email(TEMPLATES, "welcome", lead_context(first_name="Jane\r\nBcc: evil@example.com"))

    assert "\n" not in rendered.subject and "\r" not in rendered.subject
    assert rendered.subject.startswith("Jane Bcc: evil@example.com, welcome")


def test_missing_subject_line_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"note.html": "x", "note.txt": "Hello\n\nBody"})

    with pytest.raises(TemplateError, match=r"^note\.txt line 1: the first line must be 'Subject: \.\.\.'$"):
        render_email(tmp_path, "note", sample_context())


def test_none_values_print_as_empty_when_sending(tmp_path: Path) -> None:
    write(tmp_path, {"note.html": "[{{ lead.company }}]", "note.txt": "Subject: S\n\n[{{ lead.company }}]"})

    rendered = render_email(tmp_path, "note", lead_context(company=None))

    assert (rendered.html, rendered.text) == ("[]", "[]")


def test_edited_template_is_picked_up_without_restart(tmp_path: Path) -> None:
    write(tmp_path, {"note.html": "v1", "note.txt": "Subject: S\n\nv1"})
    assert render_email(tmp_path, "note", sample_context()).html == "v1"

    write(tmp_path, {"note.html": "v2"})
    later = os.stat(tmp_path / "note.html").st_mtime + 5
    os.utime(tmp_path / "note.html", (later, later))

    assert render_email(tmp_path, "note", sample_context()).html == "v2"


# ---------------------------------------------------------------- safety


def test_html_is_autoescaped_and_text_is_not() -> None:
    script = "<script>alert(1)</script>"

    rendered = render_email(TEMPLATES, "welcome", lead_context(first_name=script))

    assert script not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert f"Hi {script}," in rendered.text
    assert rendered.subject.startswith(script)


@pytest.mark.parametrize(
    "expression",
    [
        "lead.__class__",
        "lead.__class__.__mro__",
        "lead.items.__self__",
        "cycler.__init__.__globals__",
        "campaign.__class__.__subclasses__()",
    ],
)
def test_sandbox_blocks_internal_attributes(tmp_path: Path, expression: str) -> None:
    write(tmp_path, {"note.html": "<p>\n{{ " + expression + " }}\n</p>", "note.txt": "Subject: S\n\nok"})

    with pytest.raises(TemplateError, match=r"^note\.html line 2: .*unsafe"):
        render_email(tmp_path, "note", sample_context())


def test_templates_cannot_change_the_data_they_are_given(tmp_path: Path) -> None:
    write(tmp_path, {"note.html": "{{ lead.update({'email': 'x@evil.example'}) }}", "note.txt": "Subject: S\n\nok"})
    context = sample_context()

    with pytest.raises(TemplateError, match=r"^note\.html line 1: .*unsafe"):
        render_email(tmp_path, "note", context)
    assert context["lead"]["email"] == "jane.doe@globex.example"


def test_sandbox_applies_to_subject_overrides() -> None:
    with pytest.raises(TemplateError, match=r"^subject override line 1: .*unsafe"):
        render_email(TEMPLATES, "welcome", sample_context(), subject_override="{{ lead.__class__ }}")


def test_undefined_variable_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {
        "case_study.html": "<html>\n<body>\n<p>Hello,</p>\n<p>{{ lead.frist_name }}</p>\n</body>\n</html>",
        "case_study.txt": "Subject: S\n\nok",
    })

    with pytest.raises(TemplateError) as caught:
        render_email(tmp_path, "case_study", sample_context())

    assert str(caught.value) == "case_study.html line 4: 'dict object' has no attribute 'frist_name'"
    assert (caught.value.file, caught.value.line) == ("case_study.html", 4)


def test_line_numbers_in_the_txt_are_those_of_the_file(tmp_path: Path) -> None:
    write(tmp_path, {"note.html": "x", "note.txt": "Subject: S\n\nline 3\nline 4\n{{ nope }}\n"})

    with pytest.raises(TemplateError, match=r"^note\.txt line 5: 'nope' is undefined$"):
        render_email(tmp_path, "note", sample_context())


def test_error_inside_a_partial_names_the_partial(tmp_path: Path) -> None:
    write(tmp_path, {
        "_layout.html": "<body>\n{% block body %}{% endblock %}\n<a href=\"{{ unsubscribe_link }}\">x</a>\n</body>",
        "note.html": "{% extends \"_layout.html\" %}{% block body %}hi{% endblock %}",
        "note.txt": "Subject: S\n\nok",
    })

    with pytest.raises(TemplateError, match=r"^_layout\.html line 3: 'unsubscribe_link' is undefined$"):
        render_email(tmp_path, "note", sample_context())


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {"note.html": "a\nb\n{% if lead.first_name %}\nc", "note.txt": "Subject: S\n\nok"})

    with pytest.raises(TemplateError, match=r"^note\.html line 4: "):
        render_email(tmp_path, "note", sample_context())


def test_missing_template_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"^nothing\.txt: template 'nothing\.txt' not found"):
        render_email(tmp_path, "nothing", sample_context())


@pytest.mark.parametrize("name", ["../secret", "a/b", "welcome.fr", "", ".hidden"])
def test_template_names_cannot_leave_the_folder(name: str) -> None:
    with pytest.raises(TemplateError, match="invalid template name"):
        render_email(TEMPLATES, name, sample_context())


# ---------------------------------------------------------------- check_template


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_template_checks_clean(name: str) -> None:
    assert check_template(TEMPLATES, name) == []


def test_samples_have_english_and_french_pairs() -> None:
    for name in sample_names():
        for suffix in (".html", ".txt", ".fr.html", ".fr.txt"):
            assert (TEMPLATES / f"{name}{suffix}").is_file(), f"{name}{suffix}"


def test_every_email_the_sample_campaigns_send_exists_and_checks_clean() -> None:
    funnel = yaml.safe_load((CAMPAIGNS / "funnel.yaml").read_text())
    names = {funnel["handoff"]["notify"]["template"], "mql_alert"}  # the MQL alert: the funnel's comment shows it
    for path in CAMPAIGNS.glob("*.yaml"):
        if path.name in ("funnel.yaml", "segments.yaml"):  # the funnel model and the audiences: no steps
            continue
        for step in yaml.safe_load(path.read_text())["steps"]:
            if "send" in step:
                names.add(step["send"])
                for subject in step.get("subject") or []:
                    for locale in ("en", "fr"):
                        rendered = render_email(
                            TEMPLATES, step["send"], sample_context(), locale=locale, subject_override=subject
                        )
                        assert rendered.subject

    assert {"welcome", "case_study", "demo_invite", "case_study_reminder", "last_chance", "sales_handoff"} <= names
    assert {name: check_template(TEMPLATES, name) for name in sorted(names)} == {name: [] for name in sorted(names)}


def test_marketing_emails_carry_unsubscribe_and_preferences_links_and_internal_mail_does_not() -> None:
    context = sample_context()
    for name in sample_names():
        for locale in ("en", "fr"):
            rendered = render_email(TEMPLATES, name, context, locale=locale)
            has_links = [
                context["unsubscribe_url"] in part and context["preferences_url"] in part
                for part in (rendered.html, rendered.text)
            ]
            assert has_links == ([False, False] if name in ("sales_handoff", "mql_alert") else [True, True]), (name, locale)


def test_sales_handoff_shows_the_handoff_facts() -> None:
    context = sample_context()
    context["handoff"]["bant"]["timing"] = None

    rendered = render_email(TEMPLATES, "sales_handoff", context)

    assert rendered.subject == "New SQL: Jane Doe (Globex), score 57"
    assert "- timing: unknown" in rendered.text and "- budget: yes" in rendered.text
    assert "visited /pricing 3 times this week" in rendered.html
    assert "webinar attended" in rendered.text


@pytest.mark.parametrize("kind, subject, says, asks_for_answer", [
    ("new", "New SQL", "just became sales-qualified and is assigned to you", True),
    ("reminder", "Reminder: waiting for your answer", "is still waiting for your answer", True),
    ("reassigned", "Reassigned to you", "has been reassigned to you", True),
    ("taken-away", "Reassigned away from you", "reassigned to another rep", False),
])
def test_each_sales_email_says_what_happened(kind: str, subject: str, says: str, asks_for_answer: bool) -> None:
    context = sample_context()
    context["handoff"]["kind"] = kind

    rendered = render_email(TEMPLATES, "sales_handoff", context)

    assert rendered.subject == f"{subject}: Jane Doe (Globex), score 57"
    assert says in rendered.text and says in rendered.html
    assert ("Please accept or reject" in rendered.text) is asks_for_answer
    assert ("Please accept or reject" in rendered.html) is asks_for_answer


def test_check_reports_missing_files_and_subject(tmp_path: Path) -> None:
    write(tmp_path, {"a.html": "x", "b.html": "x", "b.txt": "no subject here\n\nbody"})

    assert check_template(tmp_path, "a") == [("a.txt", 0, "missing: a.html and a.txt go together")]
    assert check_template(tmp_path, "b") == [("b.txt", 1, "the first line must be 'Subject: ...'")]


def test_check_reports_syntax_errors_with_their_line(tmp_path: Path) -> None:
    write(tmp_path, {"note.html": "<p>\n{{ lead.first_name }\n</p>", "note.txt": "Subject: S\n\nok"})

    [(file, line, message)] = check_template(tmp_path, "note")

    assert (file, line) == ("note.html", 2)
    assert message


def test_check_reports_undefined_variables_in_each_file(tmp_path: Path) -> None:
    write(tmp_path, {
        "note.html": "<p>{{ lead.first_name or 'there' }}</p>\n<p>{{ lead.frist_name }}</p>",
        "note.txt": "Subject: Hi {{ lead.nmae }}\n\n{{ lead.first_name or 'there' }}\n{{ offer }}",
    })

    assert check_template(tmp_path, "note") == [
        ("note.txt", 1, "'dict object' has no attribute 'nmae'"),
        ("note.html", 2, "'dict object' has no attribute 'frist_name'"),
        ("note.txt", 4, "'offer' is undefined"),
    ]


def test_check_reports_a_field_printed_without_a_default(tmp_path: Path) -> None:
    write(tmp_path, {
        "note.html": "<p>Hi {{ lead.first_name or 'there' }}</p>\n<p>{{ lead.company }}</p>",
        "note.txt": "Subject: S\n\n{{ lead.attributes.plan }}",
    })

    problems = check_template(tmp_path, "note")

    assert [(f, line) for f, line, _ in problems] == [("note.html", 2), ("note.txt", 3)]
    assert "prints None" in problems[0][2]
    assert problems[1][2] == "'dict object' has no attribute 'plan'"


def test_check_covers_the_french_variant(tmp_path: Path) -> None:
    write(tmp_path, {
        "note.html": "ok", "note.txt": "Subject: S\n\nok",
        "note.fr.html": "ok", "note.fr.txt": "Subject: S\n\n{{ lead.prenom }}",
    })

    assert check_template(tmp_path, "note") == [("note.fr.txt", 3, "'dict object' has no attribute 'prenom'")]


def test_sample_context_is_a_fresh_copy() -> None:
    first = sample_context()
    first["lead"]["first_name"] = "Changed"

    context = sample_context()

    assert context["lead"]["first_name"] == "Jane"
    assert set(context) >= {"lead", "campaign", "step", "owner", "unsubscribe_url", "preferences_url", "handoff"}
    assert set(context["handoff"]) == {"id", "kind", "score", "grade", "bant", "reasons", "events"}


# ---------------------------------------------------------------- bounded work: no line can stall the process

BOMB = "{{ (9**10000000) % 7 }}"  # folded at compile time by plain Jinja2: minutes holding the GIL
RUNTIME_BOMB = "{% set n = 10000000 %}{{ (9 ** n) % 7 }}"  # the same, out of reach of any constant folding


def test_validate_refuses_a_huge_power_promptly_at_its_file_and_line(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    templates = write(tmp_path, {"welcome.html": "<p>Hi</p>\n<p>" + BOMB + "</p>\n", "welcome.txt": "Subject: Hi\n\nHi\n",
                                 "note.html": '<a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ sender.address }}\n',
                                 "note.txt": "Subject: Hi\n\n{{ unsubscribe_url }} {{ sender.address }}\n"})
    campaign = tmp_path / "trial.yaml"
    campaign.write_text("name: trial\nsender: {from: hello@acme.example, address: 1 Main St}\nsteps:\n  - {id: welcome, send: welcome}\n"
                        f"  - {{id: again, send: note, subject: \"{BOMB}\"}}\n", encoding="utf-8")
    env = {**os.environ, "NURTURE_HOME": str(tmp_path / "home"), "NURTURE_TEMPLATES_DIR": str(templates)}
    started = time.monotonic()

    result = subprocess.run([sys.executable, "-m", "nurture.cli", "campaign", "validate", str(campaign)],
                            capture_output=True, text=True, env=env, timeout=60, check=False)

    assert time.monotonic() - started < 20
    too_big = "9 ** 10000000 would have about 9542426 digits (numbers in a template have at most 1233)"
    assert result.returncode == 1 and sorted(result.stderr.splitlines()) == [
        f"{campaign}:4: steps.0.send: template welcome.html line 2: {too_big}",
        f"{campaign}:5: steps.1.subject: subject template: {too_big}",
    ], result.stderr


@pytest.mark.parametrize(("source", "message"), [
    (BOMB, "9 ** 10000000 would have about 9542426 digits"),
    ("{% if false %}" + BOMB + "{% endif %}", "9 ** 10000000 would have about 9542426 digits"),  # even unreached
    (RUNTIME_BOMB, "9 ** 10000000 would have about 9542426 digits"),
    ("{% set n = 2 ** 4000 %}{{ n * n }}", "is too large a number for a template"),
    ("{{ 'x' * 10**9 }}", "repeating 1 character 1000000000 times would make 1000000000 characters (at most 1000000"),
    ("{% set n = 10**9 %}{{ [0] * n }}", "repeating 1 item 1000000000 times"),
    ("{{ 'x'|center(10**9) }}", "|center would make about 1000000000 characters"),
    ("{{ 'x'.ljust(10**9) }}", "ljust would make about 1000000000 characters"),
    ("{{ ('a' * 1000)|replace('a', 'b' * 10000) }}", "|replace would make about 10000000 characters"),
    ("{{ [1]|batch(10**9, 0)|list }}", "|batch would make about 1000000000 items"),
    ("{{ [1]|slice(10**9)|list }}", "|slice would make about 1000000000 items"),
    ("{{ (range(1000)|list)|tojson(indent=10**6) }}", "|tojson would make about"),
    ("{{ '%999999999d' % 1 }}", "a width in this % format is too large"),
    ("{{ '{:>999999999}'.format(1) }}", "a width in this format is too large"),
    ("{{ range(10**9)|list }}", "Range too big"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "loops turned more than 100000 times in one email"),
    ("{% set ns = namespace(s='xx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "namespace value 's' would hold 1048576 characters"),
    ("{% macro d(s, n) %}{{ d(s ~ s, n - 1) if n else s|length }}{% endmacro %}{{ d('x', 40) }}",
     "an argument would hold 1048576 characters"),
    ("{% macro m(n) %}{{ m(n - 1) if n else '' }}{{ m(n - 1) if n else '' }}{% endmacro %}{{ m(40) }}",
     "more than 100000 calls in one email"),
    ("{{ lipsum(100000) }}", "'lipsum' is undefined"),
    ("{{ 'abc'.translate({97: 'x' * 100000}) }}", "access to attribute 'translate' of 'str' object is unsafe"),
])
def test_work_a_template_asks_for_is_bounded(source: str, message: str) -> None:
    import time

    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        render_email(TEMPLATES, "welcome", sample_context(), subject_override=source)

    assert time.monotonic() - started < 2
    assert caught.value.file == "subject override" and caught.value.line == 1
    assert message in caught.value.detail


def test_ordinary_arithmetic_loops_and_formats_still_work() -> None:
    source = ("{{ 2 ** 100 }} {{ 7 * 6 }} {{ 'ab' * 3 }} {{ '%5.2f' % 3.14159 }} {{ '{:,}'.format(1234567) }} "
              "{{ '%d'|format(12345678) }} {% for x in [1, 2, 3] %}{{ loop.index }}{{ loop.last }}{% endfor %} "
              "{% set ns = namespace(n=0) %}{% for i in range(5) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }} "
              "{{ lead.first_name|center(9)|trim }}")

    rendered = render_email(TEMPLATES, "welcome", sample_context(), subject_override=source)

    assert rendered.subject == ("1267650600228229401496703205376 42 ababab 3.14 1,234,567 12345678 "
                                "1False2False3True 10 Jane")


def test_a_render_has_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from nurture import template_sandbox

    monkeypatch.setattr(template_sandbox, "RENDER_SECONDS", 0.2)
    slow = "{% for i in range(90000) %}{{ (range(2000)|list|sort|first) }}{% endfor %}"  # within every count
    started = time.monotonic()

    with pytest.raises(TemplateError, match="the template took longer than 0.2 s to render"):
        render_email(TEMPLATES, "welcome", sample_context(), subject_override=slow)

    assert time.monotonic() - started < 2


async def test_a_subject_that_asks_too_much_fails_that_send_cleanly(temporal_env, tmp_path: Path) -> None:
    import time

    from tests.conftest import _stack, make_settings

    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "bomb.yaml").write_text(
        "name: bomb\nsender: {from: hello@acme.example}\nsteps:\n"
        f"  - {{id: welcome, send: welcome, subject: \"{RUNTIME_BOMB}\"}}\n"
        "  - {id: checkin, send: checkin}\n", encoding="utf-8")
    async with _stack(temporal_env, make_settings(tmp_path / "home", campaigns_dir=campaigns)) as stack:
        started = time.monotonic()
        await stack.add("bob@initech.example", campaign="bomb", first_name="Bob")
        lead = await stack.until("bob@initech.example", lambda lead: lead["campaign"] is None, step=timedelta(hours=1))

    assert time.monotonic() - started < 30
    emails = [(h["detail"]["step"], h["detail"]["status"], h["reason"]) for h in lead["history"] if h["kind"] == "email"]
    assert emails[0] == ("welcome", "failed", "welcome failed: subject override line 1: 9 ** 10000000 would have about "
                                              "9542426 digits (numbers in a template have at most 1233)")
    assert emails[1][:2] == ("checkin", "sent")  # the worker went on serving
