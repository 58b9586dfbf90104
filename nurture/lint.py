"""Content checks of an email, for `nurture campaign validate` (contract section 10).

What mailbox providers and the law ask of marketing email, checked on each variant of
an email (`NAME`, `NAME.fr`, ...), at the FILE and LINE of the template concerned:

errors (the campaign does not validate)
  - a partial named by `{% include %}`, `{% extends %}` or `{% import %}` that does not
    exist (at the line of that tag, followed through every partial);
  - marketing email: no visible unsubscribe link in its HTML, or no unsubscribe link in
    its text; the sender's postal address (`sender.address`) missing from either part.
warnings
  - HTML over 102 KB once rendered (Gmail clips it there);
  - `<img>` without `alt`; `http:` links (not https); a link whose text is a URL to
    another host than its `href`; a subject over 90 characters.

Rendered checks use the sample lead (`emails.sample_context`) with the campaign's real
sender; tag checks read the template files themselves, so they can name the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from jinja2 import nodes

from nurture.emails import SUBJECT_MAX, TemplateError, render_email, sample_context, subject_too_long, variant_stems

HTML_CLIP_BYTES = 102 * 1024
_HTTP_LINK = re.compile(r"\bhttp://[^\s\"'<>]+", re.IGNORECASE)
_URL_TEXT = re.compile(r"^(https?://|www\.)\S+$", re.IGNORECASE)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass(frozen=True)
class Finding:
    file: str  # relative to the templates folder, as marketers name it
    line: int
    message: str
    severity: str = "error"  # or "warning"
    partial: bool = False  # a missing partial (the render reports it too, when it gets there)


def lint_email(templates_dir: Path, name: str, sender: Mapping[str, Any], *, marketing: bool) -> list[Finding]:
    """Findings for the email `name` sent with `sender` (its `address` may be None)."""
    findings: list[Finding] = []
    for stem in variant_stems(templates_dir, name):
        files = [f"{stem}.html", f"{stem}.txt"]
        if not all((templates_dir / f).is_file() for f in files):
            continue  # reported by emails.check_template
        sources = list(_sources(templates_dir, files, findings))
        findings += _tag_findings(sources)
        findings += _rendered_findings(templates_dir, stem, sender, marketing)
    unique: list[Finding] = []
    for finding in findings:
        if finding not in unique:
            unique.append(finding)
    return unique


# ---------------------------------------------------------------- partials


def _env() -> jinja2.Environment:
    return jinja2.Environment()  # parsing only: nothing is rendered with it


def _referenced(source: str) -> Iterator[tuple[list[str], int, bool]]:
    """The partials a template names literally: (candidates, line, may be missing)."""
    tree = _env().parse(source)
    for node in tree.find_all((nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)):
        target = node.template
        if not isinstance(target, nodes.Const):
            continue  # a name computed at render time: the render check covers it
        names = list(target.value) if isinstance(target.value, (list, tuple)) else [target.value]
        yield [str(n) for n in names], node.lineno, bool(getattr(node, "ignore_missing", False))


def _sources(templates_dir: Path, files: list[str], findings: list[Finding]) -> Iterator[tuple[str, str]]:
    """(file, source) of `files` and of every partial they reach; a missing partial is a
    finding at the line that names it."""
    seen: set[str] = set()
    todo = list(files)
    while todo:
        file = todo.pop(0)
        if file in seen:
            continue
        seen.add(file)
        try:
            source = (templates_dir / file).read_text(encoding="utf-8")
            references = list(_referenced(source))
        except (OSError, UnicodeDecodeError, jinja2.TemplateSyntaxError):
            continue  # reported by emails.check_template
        yield file, source
        for candidates, line, optional in references:
            found = [c for c in candidates if (templates_dir / c).is_file()]
            if found:
                todo.append(found[0])
            elif not optional:
                findings.append(Finding(file, line, f"partial {' or '.join(map(repr, candidates))} not found "
                                                    f"in {templates_dir}", partial=True))


# ---------------------------------------------------------------- tags, as written


class _Tags(HTMLParser):
    """Images without alt, and links with their text, at their lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.no_alt: list[int] = []
        self.links: list[tuple[int, str, str]] = []  # (line, href, text)
        self.http: list[tuple[int, str]] = []  # (line, URL) of href/src attributes on http:
        self._open: tuple[int, str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("href", "src"):
            if (values.get(name) or "").lower().startswith("http:"):
                self.http.append((self.getpos()[0], values[name] or ""))
        if tag == "img" and "alt" not in values:
            self.no_alt.append(self.getpos()[0])
        elif tag == "a":
            self._open = (self.getpos()[0], values.get("href") or "", [])

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[2].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            line, href, text = self._open
            self.links.append((line, href, "".join(text).strip()))
            self._open = None


def _host(url: str) -> str:
    host = urlsplit(url if "://" in url else f"https://{url}").hostname or ""
    return host.lower().removeprefix("www.")


def _http_finding(file: str, line: int, link: str) -> Finding:
    return Finding(file, line, f"an http: link ({link}): use https", "warning")


def _tag_findings(sources: list[tuple[str, str]]) -> list[Finding]:
    findings = []
    for file, source in sources:
        if not file.endswith((".html", ".htm")):  # a text part: every URL written in it
            for number, text in enumerate(source.splitlines(), start=1):
                findings += [_http_finding(file, number, link) for link in _HTTP_LINK.findall(text)]
            continue
        tags = _Tags()
        tags.feed(source)
        tags.close()
        findings += [_http_finding(file, line, link) for line, link in tags.http]  # not xmlns or DOCTYPE URLs
        for line in tags.no_alt:
            findings.append(Finding(file, line, "an image without alt text: say what it shows (alt=\"\" if "
                                                "it is decoration)", "warning"))
        for line, href, text in tags.links:
            if "{" in href or "{" in text or not _URL_TEXT.match(text) or _host(text) == _host(href):
                continue
            findings.append(Finding(file, line, f"the link text {text} points elsewhere: its href goes to "
                                                f"{_host(href) or href!r} (this looks like phishing to filters)",
                                    "warning"))
    return findings


# ---------------------------------------------------------------- the rendered email


class _Visible(HTMLParser):
    """The visible text of an HTML email, and the hrefs of its visible links that have text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.links: set[str] = set()
        self._stack: list[tuple[str, bool]] = []
        self._link: tuple[str, list[str]] | None = None

    def _hidden(self) -> bool:
        return bool(self._stack) and self._stack[-1][1]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        hidden = self._hidden() or "hidden" in values or bool(_HIDDEN_STYLE.search(values.get("style") or ""))
        if tag == "a" and not hidden:
            self._link = (values.get("href") or "", [])
        if tag not in _VOID:
            self._stack.append((tag, hidden))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._link is not None:
            href, text = self._link
            if "".join(text).strip():
                self.links.add(href)
            self._link = None
        for index in range(len(self._stack) - 1, -1, -1):
            if self._stack[index][0] == tag:
                del self._stack[index:]
                break

    def handle_data(self, data: str) -> None:
        if self._hidden():
            return
        self.text.append(data)
        if self._link is not None:
            self._link[1].append(data)


def _words(text: str) -> str:
    return " ".join(text.split())


def _rendered_findings(templates_dir: Path, stem: str, sender: Mapping[str, Any], marketing: bool) -> list[Finding]:
    context = sample_context()
    context["sender"] = dict(sender)
    language = stem.rpartition(".")[2] if "." in stem else ""
    name = stem.partition(".")[0]
    try:
        email = render_email(templates_dir, name, context, locale=language)
    except TemplateError:
        return []  # reported by emails.check_template
    html_file, txt_file = f"{stem}.html", f"{stem}.txt"
    findings = []
    size = len(email.html.encode("utf-8"))
    if size > HTML_CLIP_BYTES:
        findings.append(Finding(html_file, 1, f"the HTML is {size // 1024} KB once rendered: Gmail clips email "
                                              f"over 102 KB, hiding the rest (and the unsubscribe link)", "warning"))
    if len(email.subject) > SUBJECT_MAX:
        findings.append(Finding(txt_file, 1, subject_too_long(email.subject), "warning"))
    if marketing:
        findings += _required_findings(email.html, email.text, context, html_file, txt_file)
    return findings


def _required_findings(html: str, text: str, context: Mapping[str, Any], html_file: str,
                       txt_file: str) -> list[Finding]:
    """What every marketing email must carry, in both parts: an unsubscribe link and the
    sender's postal address."""
    visible = _Visible()
    visible.feed(html)
    visible.close()
    url = context["unsubscribe_url"]
    findings = []
    if url not in visible.links:
        findings.append(Finding(html_file, 1, "no visible unsubscribe link: add "
                                              "<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>"))
    if not re.search(re.escape(url) + r"(?![^\s<>()\[\]\"'])", text):
        findings.append(Finding(txt_file, 1, "no unsubscribe link in the text part: add {{ unsubscribe_url }}"))
    address = context["sender"].get("address")
    if address:  # unset: one problem on the campaign's sender, not one per template
        for file, shown in ((html_file, "".join(visible.text)), (txt_file, text)):
            if _words(address) not in _words(shown):
                findings.append(Finding(file, 1, "the sender's postal address is missing: add "
                                                 "{{ sender.address }} (CAN-SPAM)"))
    return findings
