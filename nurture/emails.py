"""Email rendering (contract section 2): a pure function, no sending here.

`templates/email/NAME.html` and `NAME.txt` are a Jinja2 pair. The first line of the
`.txt` is `Subject: ...` (itself a template); the rest, minus one leading blank line,
is the text body. `NAME.fr.html` / `NAME.fr.txt` serve leads whose locale starts with
`fr` (generally: the first two letters of the locale), else `NAME.html` / `NAME.txt`.
Files whose name starts with `_` are partials for `{% extends %}` / `{% include %}`.

Templates run in Jinja2's immutable sandbox (no internals, and a template cannot change
the lead it is given), bounded so that no template line can stall the process
(nurture.template_sandbox), with StrictUndefined: reading an undefined variable is an error.
HTML is autoescaped, text and subjects are not. Values are passed as they are (a lead's
missing first name stays None, so `{{ lead.first_name or "there" }}` works); a None
printed as such renders as an empty string when sending, and `check_template` reports
it with its line so the marketer adds a default.

Every failure is a `TemplateError` whose message names the file and the line:
`case_study.html line 4: 'dict object' has no attribute 'frist_name'`.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import os
import re
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import jinja2

from nurture.template_sandbox import BoundedSandbox

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SUBJECT_RE = re.compile(r"^\s*subject\s*:(.*)$", re.IGNORECASE)
_OVERRIDE_LABEL = "subject override"
_MAX_CACHED_OVERRIDES = 1024


class TemplateError(Exception):
    """A template that cannot be loaded or rendered; `str()` is one line: `FILE line N: what`."""

    def __init__(self, file: str, line: int, detail: str) -> None:
        self.file = file
        self.line = line
        self.detail = detail
        where = f"{file} line {line}" if line else file
        super().__init__(f"{where}: {detail}")


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
    template: str  # the email's NAME
    locale_used: str | None  # "fr" when NAME.fr.* was used, None for NAME.*


# ---------------------------------------------------------------- environments

# Set only while check_template renders: printing None is then an error, with its line.
_CHECKING: contextvars.ContextVar[bool] = contextvars.ContextVar("nurture_emails_checking", default=False)


class _NoneOutput(Exception):
    pass


def _finalize(value: Any) -> Any:
    if value is None:
        if _CHECKING.get():
            raise _NoneOutput(
                'prints None when the value is empty: give it a default, e.g. {{ lead.first_name or "there" }}'
            )
        return ""
    return value


def _split_txt(source: str, file: str) -> tuple[str, int, str]:
    """`NAME.txt` source -> (subject source, lines before the body, body source)."""
    source = source.removeprefix("\ufeff")
    first, newline, rest = source.partition("\n")
    match = _SUBJECT_RE.match(first.rstrip("\r"))
    if match is None:
        raise TemplateError(file, 1, "the first line must be 'Subject: ...'")
    skipped = 1
    head, newline, tail = rest.partition("\n")
    if newline and not head.strip():  # one leading blank line separates subject and body
        rest, skipped = tail, 2
    elif not newline and not head.strip():
        rest = ""
    return match.group(1), skipped, rest


class _Loader(jinja2.FileSystemLoader):
    """FileSystemLoader plus two views of each `.txt`: `NAME.txt#subject` and `NAME.txt#body`.

    The body view starts with a Jinja comment spanning the skipped lines, so line
    numbers in errors are those of the file.
    """

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        base, sep, part = template.partition("#")
        source, filename, uptodate = super().get_source(environment, base)
        if not sep:
            return source, filename, uptodate
        subject, skipped, body = _split_txt(source, base)
        if part == "subject":
            return subject, filename, uptodate
        # `+#}` keeps trim_blocks from eating a newline the body starts with.
        return "{#" + "\n" * skipped + "+#}" + body, filename, uptodate


@dataclass
class _Bundle:
    root: str
    env: BoundedSandbox
    overrides: dict[str, jinja2.Template] = field(default_factory=dict)


_BUNDLES: dict[str, _Bundle] = {}
_BUNDLES_LOCK = threading.Lock()


def _bundle(templates_dir: Path) -> _Bundle:
    root = str(Path(templates_dir).resolve())
    bundle = _BUNDLES.get(root)
    if bundle is None:
        with _BUNDLES_LOCK:
            bundle = _BUNDLES.get(root)
            if bundle is None:
                env = BoundedSandbox(
                    loader=_Loader(root),
                    undefined=jinja2.StrictUndefined,
                    # On for NAME.html (and partials .html); off for .txt, subjects and overrides.
                    autoescape=jinja2.select_autoescape(["html", "htm"], default_for_string=False, default=False),
                    trim_blocks=True,
                    lstrip_blocks=True,
                    finalize=_finalize,
                    auto_reload=True,  # an edited template is picked up without a restart
                    cache_size=1000,
                )
                bundle = _BUNDLES[root] = _Bundle(root, env)
    return bundle


# ---------------------------------------------------------------- errors


def _display(bundle: _Bundle, filename: str) -> str:
    """A template's path as marketers name it: relative to the templates folder."""
    path = Path(filename)
    return path.relative_to(bundle.root).as_posix() if path.is_relative_to(bundle.root) else path.name


def _where(bundle: _Bundle, exc: BaseException, file: str) -> tuple[str, int]:
    """The deepest template frame of `exc` (a partial if the error is there), else (file, 0)."""
    prefix = bundle.root + os.sep
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith(prefix):
            return _display(bundle, frame.filename), frame.lineno or 0
        if file == _OVERRIDE_LABEL and frame.filename == "<template>":
            return file, frame.lineno or 0
    return file, 0


def _as_template_error(bundle: _Bundle, exc: Exception, file: str) -> TemplateError:
    if isinstance(exc, TemplateError):
        return exc
    if isinstance(exc, jinja2.TemplateSyntaxError):
        name = _display(bundle, exc.filename) if exc.filename else file
        return TemplateError(name, exc.lineno, exc.message or "syntax error")
    where, line = _where(bundle, exc, file)
    if isinstance(exc, jinja2.TemplateNotFound):
        return TemplateError(where, line, f"template {exc.name!r} not found in {bundle.root}")
    return TemplateError(where, line, str(exc) or type(exc).__name__)


def _render(bundle: _Bundle, template: str, context: Mapping[str, Any], file: str) -> str:
    try:
        return bundle.env.get_template(template).render(context)
    except Exception as exc:  # any failure inside a template is the template's problem
        raise _as_template_error(bundle, exc, file) from exc


def _render_override(bundle: _Bundle, source: str, context: Mapping[str, Any]) -> str:
    try:
        compiled = bundle.overrides.get(source)
        if compiled is None:
            if len(bundle.overrides) >= _MAX_CACHED_OVERRIDES:
                bundle.overrides.clear()
            compiled = bundle.overrides[source] = bundle.env.from_string(source)
        return compiled.render(context)
    except Exception as exc:
        if isinstance(exc, jinja2.TemplateSyntaxError):
            raise TemplateError(_OVERRIDE_LABEL, exc.lineno, exc.message or "syntax error") from exc
        raise _as_template_error(bundle, exc, _OVERRIDE_LABEL) from exc


def _one_line(subject: str, file: str) -> str:
    """Subjects are one header line: newlines from data never reach the headers."""
    subject = " ".join(subject.split())
    if not subject:
        raise TemplateError(file, 1, "the subject is empty")
    return subject


# ---------------------------------------------------------------- public API


def _language(locale: str | None) -> str | None:
    if isinstance(locale, str) and len(locale) >= 2 and locale[:2].isascii() and locale[:2].isalpha():
        return locale[:2].lower()
    return None


def _lead_locale(context: Mapping[str, Any]) -> str | None:
    lead = context.get("lead")
    value = lead.get("locale") if isinstance(lead, Mapping) else getattr(lead, "locale", None)
    return value if isinstance(value, str) else None


def _stem(bundle: _Bundle, name: str, language: str | None) -> tuple[str, str | None]:
    """`NAME.fr` if both files of that variant exist, else `NAME`."""
    if language:
        stem = f"{name}.{language}"
        if os.path.isfile(os.path.join(bundle.root, f"{stem}.html")) and os.path.isfile(
            os.path.join(bundle.root, f"{stem}.txt")
        ):
            return stem, language
    return name, None


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TemplateError(str(name), 0, "invalid template name: use letters, digits, '_' and '-'")


def render_email(
    templates_dir: Path,
    name: str,
    context: Mapping[str, Any],
    *,
    locale: str | None = None,
    subject_override: str | None = None,
) -> Rendered:
    """Render the email `name` for one lead.

    `locale` picks the variant (`fr-CA` -> `NAME.fr.*`); when None, the lead's own
    `locale` in `context` is used. `subject_override` (an A/B subject from the campaign)
    is a template rendered with the same context and replaces the `.txt` subject.
    Raises TemplateError.
    """
    _check_name(name)
    bundle = _bundle(templates_dir)
    context = dict(context)
    stem, language = _stem(bundle, name, _language(locale if locale is not None else _lead_locale(context)))
    txt = f"{stem}.txt"
    if subject_override is not None:
        subject = _one_line(_render_override(bundle, subject_override, context), _OVERRIDE_LABEL)
    else:
        subject = _one_line(_render(bundle, f"{txt}#subject", context, txt), txt)
    html = _render(bundle, f"{stem}.html", context, f"{stem}.html")
    text = _render(bundle, f"{txt}#body", context, txt)
    return Rendered(subject=subject, html=html, text=text, template=name, locale_used=language)


def _check_variant(bundle: _Bundle, stem: str, contexts: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    html, txt = f"{stem}.html", f"{stem}.txt"
    missing = [f for f in (html, txt) if not os.path.isfile(os.path.join(bundle.root, f))]
    if missing:
        return [(f, 0, f"missing: {html} and {txt} go together") for f in missing]
    problems: list[tuple[str, int, str]] = []
    token = _CHECKING.set(True)
    try:
        for context in contexts:
            parts = ((f"{txt}#subject", txt, "subject"), (html, html, "HTML"), (f"{txt}#body", txt, "text"))
            for template, file, what in parts:
                try:
                    output = _render(bundle, template, context, file)
                    if what == "subject":
                        _one_line(output, file)
                    elif not output.strip():
                        problems.append((file, 0, f"the {what} body is empty"))
                except TemplateError as exc:
                    problems.append((exc.file, exc.line, exc.detail))
    finally:
        _CHECKING.reset(token)
    return problems


def variant_stems(templates_dir: Path, name: str) -> list[str]:
    """`NAME` and each locale variant present (`NAME.fr`, ...), as file names without extension."""
    root = Path(_bundle(templates_dir).root)
    variants = root.glob(f"{name}.??.*")
    languages = sorted({p.name[len(name) + 1 : len(name) + 3] for p in variants if p.suffix in (".html", ".txt")})
    return [name, *(f"{name}.{lang}" for lang in languages if _language(lang) == lang)]


def check_template(templates_dir: Path, name: str, *, owner_always_set: bool = False,
                   sender: Mapping[str, Any] | None = None) -> list[tuple[str, int, str]]:
    """Problems of the email `name` as (file, line, message); [] if it is fine.

    Checks every variant present (`NAME`, `NAME.fr`, ...): both files exist, the
    `Subject:` line, syntax, and a render with `sample_context()` and with a sparse
    lead (empty optional fields, no owner, no attributes) that must neither read an
    undefined variable nor print None. `owner_always_set`: the email only ever goes to
    (or about) an assigned owner, like the sales handoff, so the sparse lead has one.
    `sender`: the `sender` the email is sent with (its postal address), else the sample's.
    """
    try:
        _check_name(name)
    except TemplateError as exc:
        return [(exc.file, exc.line, exc.detail)]
    bundle = _bundle(templates_dir)
    contexts = [sample_context(), _sparse_context(owner_always_set)]
    for context in contexts if sender is not None else ():
        context["sender"] = dict(sender)
    problems: list[tuple[str, int, str]] = []
    for stem in variant_stems(templates_dir, name):
        for problem in _check_variant(bundle, stem, contexts):
            if problem not in problems:
                problems.append(problem)
    return problems


SUBJECT_MAX = 90  # characters of a subject most inboxes show before cutting it


def subject_too_long(subject: str) -> str:
    return f"the subject is {len(subject)} characters once rendered: inboxes cut it past about {SUBJECT_MAX}"


def sender_context(from_: str, reply_to: str | None, address: str | None) -> dict[str, Any]:
    """`sender` as templates see it: `sender.address` (the postal address), `sender.name`
    and `sender.email` (of From:), `sender.reply_to`."""
    name, email = parseaddr(from_)
    return {"name": name, "email": email, "reply_to": reply_to, "address": address}


@dataclass(frozen=True)
class SubjectProblem:
    """A problem of a campaign's subject template; `line` counts within the subject."""

    line: int
    message: str
    severity: str = "error"  # "warning": it prints None for a lead that left the field empty


def subject_syntax_error(source: str) -> tuple[int, str] | None:
    """(line, message) of a subject template that does not parse (a huge constant such as
    `9**10000000` included), else None. Needs no templates folder: the campaign loader
    checks this much on every load."""
    try:
        _syntax_env().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return exc.lineno, exc.message or "syntax error"
    return None


@functools.cache
def _syntax_env() -> BoundedSandbox:
    return BoundedSandbox()


def check_subject(templates_dir: Path, source: str) -> list[SubjectProblem]:
    """Problems of a campaign's subject (an A/B variant), rendered as at send time for
    the sample lead and the sparse lead of `check_template`. An undefined variable or an
    empty subject is an error; printing None is a warning (the send would still go out),
    and so is a subject longer than SUBJECT_MAX for the sample lead."""
    bundle = _bundle(templates_dir)
    problems: list[SubjectProblem] = []
    token = _CHECKING.set(True)
    try:
        for context in (sample_context(), _sparse_context(False)):
            try:
                subject = _one_line(_render_override(bundle, source, context), _OVERRIDE_LABEL)
                if len(subject) > SUBJECT_MAX and context["lead"]["first_name"]:  # the sample lead's
                    problems.append(SubjectProblem(1, subject_too_long(subject), "warning"))
            except TemplateError as exc:
                severity = "warning" if isinstance(exc.__cause__, _NoneOutput) else "error"
                problem = SubjectProblem(exc.line, exc.detail, severity)
                if problem not in problems:
                    problems.append(problem)
    finally:
        _CHECKING.reset(token)
    return problems


_SAMPLE: dict[str, Any] = {
    "lead": {
        "email": "jane.doe@globex.example",
        "first_name": "Jane",
        "last_name": "Doe",
        "company": "Globex",
        "job_title": "VP Marketing",
        "company_size": 250,
        "country": "US",
        "timezone": "America/New_York",
        "locale": "en-US",
        "source": "web_form",
        "anonymous_id": None,
        "stage": "mql",
        "status": "subscribed",
        "score": 57,
        "grade": "B",
        "temperature": "hot",
        "owner": "alice@acme.example",
        "bant": {"budget": None, "authority": True, "need": True, "timing": None},
        "attributes": {"plan": "trial", "industry": "Manufacturing", "trial_days": 14},
        "created_at": "2025-06-02T09:14:00+00:00",
    },
    "campaign": "b2b-trial",
    "step": "case-study",
    "owner": "alice@acme.example",
    "sender": {"name": "Acme", "email": "hello@acme.example", "reply_to": "sales@acme.example",
               "address": "Acme Inc. · 100 Market Street · Springfield, CA 94000 · USA"},
    "unsubscribe_url": "http://127.0.0.1:8000/u/amFuZS5kb2VAZ2xvYmV4LmV4YW1wbGU.c2FtcGxlLXRva2VuLXNpZ25hdHVyZQ",
    "preferences_url": "http://127.0.0.1:8000/u/amFuZS5kb2VAZ2xvYmV4LmV4YW1wbGU.c2FtcGxlLXRva2VuLXNpZ25hdHVyZQ?view=preferences",
    "handoff_url": "http://127.0.0.1:8000/h/MTJ8YWxpY2VAYWNtZS5leGFtcGxl.c2FtcGxlLXRva2VuLXNpZ25hdHVyZQ",
    "handoff": {
        "id": 12,
        "kind": "new",
        "score": 57,
        "grade": "B",
        "bant": {"budget": True, "authority": True, "need": True, "timing": True},
        "reasons": [
            "score 57 reached the MQL threshold of 50 (grade B)",
            "BANT complete: budget, authority, need and timing confirmed",
            "visited /pricing 3 times this week",
        ],
        "events": [
            {"type": "content_download", "at": "2025-06-03T10:02:00+00:00"},
            {"type": "email_click", "at": "2025-06-05T14:21:00+00:00"},
            {"type": "page_view", "at": "2025-06-05T14:22:00+00:00"},
            {"type": "webinar_attended", "at": "2025-06-10T16:00:00+00:00"},
        ],
    },
    "mql": {
        "score": 57,
        "grade": "B",
        "temperature": "hot",
        "reasons": ["lead -> mql: score 57 >= 50 and grade B >= C"],
        "events": [
            {"type": "content_download", "at": "2025-06-03T10:02:00+00:00", "points": 15},
            {"type": "page_view", "at": "2025-06-05T14:22:00+00:00", "points": 15},
        ],
    },
}


def sample_context() -> dict[str, Any]:
    """A realistic context, for validation and previews (a fresh copy each call).

    `lead`: the lead's fields, `lead.attributes` and `lead.bant`; `campaign`: the
    campaign's name; `step`: the step id; `owner`: the assigned rep's email or None;
    `unsubscribe_url`, `preferences_url`; `sender`: `name`, `email`, `reply_to` and
    `address` (the postal address marketing email shows); `handoff_url` (for `sales_handoff`:
    the rep's signed link to the handoff's page) and `handoff`: `id`, `kind`
    (new, reminder, reassigned or taken-away), `score`, `grade`, `bant`, `reasons`
    (strings) and `events` ({type, at}); `mql` (for the MQL alert of
    `qualify.mql.notify`): `score`, `grade`, `temperature`, `reasons`, `events` ({type, at,
    points}).
    """
    return copy.deepcopy(_SAMPLE)


def _sparse_context(owner_always_set: bool) -> dict[str, Any]:
    """A lead that gave nothing but its address, with no owner yet (unless it always has one)."""
    context = sample_context()
    lead = context["lead"]
    optional = ("first_name", "last_name", "company", "job_title", "company_size", "country", "timezone", "locale")
    for key in (*optional, "source", "grade", "owner"):
        lead[key] = None
    lead.update(stage="lead", score=0, temperature="cold", attributes={})
    lead["bant"] = dict.fromkeys(lead["bant"])
    if owner_always_set:
        lead["owner"] = context["owner"]
    else:
        context["owner"] = None
    return context
