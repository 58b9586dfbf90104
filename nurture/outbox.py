"""The local outbox's `.eml` files: real RFC 5322 mail, as a mail client or parser reads it.

The standard library's default policy folds every header at 78 columns and, when a
header has no space to fold at (a `List-Unsubscribe` URL), turns it into RFC 2047
encoded-words, which RFC 2369 headers may not contain; its encoded-words can also pass
RFC 2047's 75 characters and lose a space at a fold. So the headers that carry our text
are written here instead:

- ASCII text (no `=?`, which a reader would take for an encoded-word) is written as
  it is, folded only before a space (the fold keeps the space), never encoded: a
  header with no space stays on one line, within RFC 5322's 998 characters.
- Other text (a French subject, an accented sender name) becomes Q encoded-words of
  at most 75 characters, each whole UTF-8 characters, spaces inside the words (as `_`),
  so that the white space a reader drops between adjacent words is only the fold's;
  every such line stays within RFC 2047's 76 characters.

Structural headers (Date, Message-ID, MIME parts) keep the standard folding; every line
ends with CRLF.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, formataddr
from typing import Any

_FOLD_AT = 78  # RFC 5322's recommended line length
_EW_LINE = 76  # RFC 2047: a line holding an encoded-word
_EW_MAX = 75  # RFC 2047: one encoded-word
_EW_OPEN, _EW_CLOSE = "=?utf-8?q?", "?="
# RFC 2047 5(3): the characters a Q word may carry as themselves, even inside a phrase.
_Q_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")  # RFC 5322 atext
_TEXT_HEADERS = frozenset({"subject", "list-unsubscribe", "list-unsubscribe-post"})
_ADDRESS_HEADERS = frozenset({"from", "to", "reply-to"})


def _plain(text: str) -> bool:
    """Text a reader takes literally: printable ASCII with nothing that opens an encoded-word."""
    return text.isascii() and text.isprintable() and "=?" not in text


def _q(char: str) -> str:
    if char == " ":
        return "_"
    return char if char in _Q_SAFE else "".join(f"={byte:02X}" for byte in char.encode("utf-8"))


def encoded_words(text: str, first_room: int) -> list[str]:
    """`text` as Q encoded-words: the first at most `first_room` long, the others 75."""
    words: list[str] = []
    room, current = min(first_room, _EW_MAX), ""
    frame = len(_EW_OPEN) + len(_EW_CLOSE)
    for char in text:
        piece = _q(char)
        if current and frame + len(current) + len(piece) > room:
            words.append(_EW_OPEN + current + _EW_CLOSE)
            room, current = _EW_MAX, ""
        current += piece
    words.append(_EW_OPEN + current + _EW_CLOSE)
    return words


def _fold_words(name: str, words: list[str], limit: int) -> str:
    """`Name: w1 w2 ...` with a CRLF before a space wherever a line would pass `limit`."""
    lines, line = [], f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > limit and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def fold_text(name: str, text: str) -> str:
    """One unstructured header, folded as the module says."""
    if _plain(text):
        return _fold_words(name, text.split(" "), _FOLD_AT)
    return _fold_words(name, encoded_words(text, _EW_LINE - len(name) - 2), _EW_LINE)


def _phrase(name: str, first_room: int) -> list[str]:
    """A display name as words: plain words as atoms (quoted when they must be), each run
    of other words as encoded-words. Only the words that need it are encoded, because the
    standard library's parser puts a space between two encoded-words of a name where RFC
    2047 (and other readers) put none: the two agree unless one run passes 75 characters."""
    words: list[str] = []
    run: list[str] = []
    for token in [*name.split(" "), None]:
        if token is not None and not _plain(token):
            run.append(token)
            continue
        if run:
            words += encoded_words(" ".join(run), first_room if not words else _EW_MAX)
            run = []
        if token is not None:
            words.append(token if _ATOM.fullmatch(token) else _quoted(token))
    return words


def _quoted(token: str) -> str:
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def fold_addresses(name: str, addresses: tuple[Address, ...]) -> str:
    """From, To, Reply-To: a display name as `_phrase` says; an address never splits."""
    words: list[str] = []
    first_room = _EW_LINE - len(name) - 2
    for address in addresses:
        if words:
            words[-1] += ","
        if address.display_name and not _plain(address.display_name):
            words += [*_phrase(address.display_name, first_room if not words else _EW_MAX), f"<{address.addr_spec}>"]
        else:
            words += formataddr((address.display_name, address.addr_spec)).split(" ")
    encoded = any(word.startswith(_EW_OPEN) for word in words)
    return _fold_words(name, words, _EW_LINE if encoded else _FOLD_AT)


def _is_text(name: str) -> bool:
    return name.lower() in _TEXT_HEADERS or name.lower().startswith("x-nurture-")


class _OutboxPolicy(EmailPolicy):
    """The default policy with CRLF, and our own folding for the headers that carry text."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        # Kept as written: the standard parse would decode an `=?...?=` in our own text.
        if _is_text(name) and isinstance(value, str) and not {"\r", "\n"} & set(value):
            return name, value
        return super().header_store_parse(name, value)

    def fold(self, name: str, value: Any) -> str:
        if _is_text(name):
            return fold_text(name, str(value))
        addresses = getattr(value, "addresses", None)
        if name.lower() in _ADDRESS_HEADERS and addresses and all(a.addr_spec.isascii() for a in addresses):
            return fold_addresses(name, addresses)
        return super().fold(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        if _is_text(name) or name.lower() in _ADDRESS_HEADERS:
            folded = self.fold(name, value)
            if folded.isascii():
                return folded.encode("ascii")
        return super().fold_binary(name, value)


POLICY = _OutboxPolicy(linesep="\r\n", max_line_length=_FOLD_AT)


def build_message(*, sender: str, to: str, reply_to: str | None, subject: str, date: datetime,
                  message_id: str, headers: dict[str, str], text: str, html: str) -> bytes:
    """The bytes of one outbox file: text and HTML alternatives, every line CRLF."""
    message = EmailMessage(policy=POLICY)
    message["From"] = sender
    message["To"] = to
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = message_id
    for key, value in headers.items():
        message[key] = value
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return bytes(message)


def read_proofs(directory: Path) -> list[dict[str, Any]]:
    """The test sends (`nurture email test-send`) written to the outbox folder, oldest
    first: they have no email row, so `nurture outbox` reads them from their files."""
    from email import message_from_bytes, policy
    from email.utils import parsedate_to_datetime

    proofs = []
    for path in sorted(directory.glob("test-*.eml"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else ():
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        date = message["Date"]
        proofs.append({"to": str(message["To"] or ""), "subject": str(message["Subject"] or ""),
                       "sent_at": parsedate_to_datetime(str(date)) if date else None, "file": str(path)})
    return proofs
