"""The one canonical form of an email address, used at every door.

Leads, suppressions and forget hashes are keyed on it, so a mailbox that arrives
spelled another way (`Jane@Globex.example`, an IDN domain or its punycode, a
decomposed accent) is the same lead and stays suppressed. Anything that is not a
plain `local@domain` address is refused rather than repaired: `<a@d>`, `a(x)@d`,
`"a"@d`, a display name, `a,b@d`, CR/LF or NUL. A mail library would "repair"
those into another address at send time, which is how a suppressed mailbox got
mail again.

The canonical form:
- validated by `email-validator` (syntax only, no DNS: `check_deliverability=False`),
  which refuses quoted local parts, comments, angle brackets, display names and
  domain literals, and (`strict`) checks the lengths of RFC 5321, 64 for the local part;
- the domain in its IDNA (ASCII, punycode) form, lower-case: what DNS and every
  provider's API take, and one spelling for `bücher.example` and
  `xn--bcher-kva.example`;
- the local part in Unicode NFC, then lower-cased (and NFC again, as lower-casing can
  decompose). RFC 5321 lets a server treat the local part as case-sensitive, but no
  mainstream provider does, while people and CRMs type `Jane.Doe@` and `jane.doe@`
  for the same person.

Surrounding spaces and tabs are trimmed (a pasted cell); any other whitespace or
control character is refused.
"""

from __future__ import annotations

import functools
import unicodedata
from email.utils import parseaddr

from email_validator import EmailNotValidError, validate_email

MAX_EMAIL_CHARS = 254  # RFC 5321 path limit minus the angle brackets


class InvalidAddress(ValueError):
    """Not a plain email address; the message names the address and why."""


def canonical_email(raw: object) -> str:
    """The canonical form of `raw` (see the module docstring), or InvalidAddress."""
    if not isinstance(raw, str):
        raise InvalidAddress(f"invalid email address {raw!r}")
    return _canonical(raw)


@functools.lru_cache(maxsize=16384)
def _canonical(raw: str) -> str:
    # Cached: a webhook batch or an import names the same addresses again and again,
    # and the validator costs tens of microseconds an address.
    text = raw.strip(" \t")
    if len(text) > MAX_EMAIL_CHARS * 4:  # bound the validator's work on junk
        raise InvalidAddress(f"invalid email address {_shown(raw)}: longer than {MAX_EMAIL_CHARS} characters")
    try:
        checked = validate_email(text, check_deliverability=False, strict=True, allow_quoted_local=False,
                                 allow_display_name=False, allow_domain_literal=False, allow_empty_local=False)
    except EmailNotValidError as error:
        raise InvalidAddress(f"invalid email address {_shown(raw)}: {_reason(error)}") from None
    local = unicodedata.normalize("NFC", unicodedata.normalize("NFC", checked.local_part).lower())
    address = f"{local}@{checked.ascii_domain.lower()}"
    if len(address) > MAX_EMAIL_CHARS:
        raise InvalidAddress(f"invalid email address {_shown(raw)}: longer than {MAX_EMAIL_CHARS} characters")
    return address


def _shown(raw: str) -> str:
    """The address as typed, quoted and with control characters escaped, kept short."""
    return repr(raw if len(raw) <= 80 else raw[:77] + "...")


def _reason(error: EmailNotValidError) -> str:
    text = str(error).rstrip(".")
    return text[:1].lower() + text[1:]


def fold_stored(raw: str) -> str | None:
    """The canonical form of an address stored, or held by a journey, from before this
    module: as `canonical_email`, but a spelling that a mail library would have reduced
    to one plain address (display name, angle brackets, comments, needless quotes) is
    reduced the same way. None if it is not one mailbox (`a,b@example.com`). Never for
    input: doors refuse those spellings."""
    try:
        return canonical_email(raw)
    except InvalidAddress:
        pass
    local, at, domain = parseaddr(raw)[1].rpartition("@")
    if len(local) > 2 and local[0] == local[-1] == '"':
        local = local[1:-1]  # "jane"@d: the quotes change nothing
    try:
        return canonical_email(f"{local}@{domain}") if at else None
    except InvalidAddress:
        return None
