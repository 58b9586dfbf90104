"""Signing and comparisons: unsubscribe links, webhook signatures, API keys, email identity.

Pure functions on the standard library (hmac, hashlib, secrets, base64); addresses
are canonicalised by `nurture.addresses`.

Link tokens are `base64url(lead_key) + "." + base64url(tag)` where `tag` is
HMAC-SHA256(secret, f"{purpose}|{lead_key}") truncated to 128 bits. The lead key is
readable in the token (it is an opaque id, not a secret); the tag binds it to the key
and the purpose, so a token can neither be forged nor edited to reach another lead.
Both parts must be canonical unpadded base64url: any other spelling of the same bytes
is refused, so a changed character always invalidates the token.

The preferences link carries the same unsubscribe-purpose token as the unsubscribe
link, plus `?view=preferences`: both pages act on the same lead with the same powers
(opt out, choose topics, opt back in), so `/u/{token}` verifies with
`purpose="unsubscribe"` whichever view is asked for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from nurture.addresses import InvalidAddress, canonical_email

TAG_BYTES = 16  # 128 bits of HMAC-SHA256
MAX_TOKEN_CHARS = 2048  # longer input is refused before any decoding work


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict, canonical unpadded base64url; None for anything else."""
    if not text or "=" in text:
        return None
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
    # Refuse non-canonical spellings (stray low bits in the last character).
    return raw if _b64encode(raw) == text else None


def _tag(secret: str, lead_key: str, purpose: str) -> bytes:
    message = f"{purpose}|{lead_key}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()[:TAG_BYTES]


def _check_purpose(purpose: str) -> None:
    # The purpose is ours, never user input; a "|" in it would make
    # ("a|b", "c") and ("a", "b|c") sign the same message.
    if not purpose or "|" in purpose:
        raise ValueError(f"invalid token purpose {purpose!r}")


def sign_token(secret: str, lead_key: str, purpose: str = "unsubscribe") -> str:
    """A URL-safe, unguessable token bound to `lead_key` and `purpose`."""
    if not secret:
        raise ValueError("the signing secret is empty (set NURTURE_SECRET)")
    if not lead_key:
        raise ValueError("cannot sign an empty lead key")
    _check_purpose(purpose)
    return f"{_b64encode(lead_key.encode())}.{_b64encode(_tag(secret, lead_key, purpose))}"


def verify_token(secret: str, token: str, purpose: str = "unsubscribe") -> str | None:
    """The lead key `token` was signed for, or None. Never raises, whatever `token` is."""
    if not secret or not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        return None
    if not purpose or "|" in purpose:
        return None
    key_part, dot, tag_part = token.partition(".")
    if not dot:
        return None
    key_raw, given_tag = _b64decode(key_part), _b64decode(tag_part)
    if not key_raw or given_tag is None:
        return None
    try:
        lead_key = key_raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    expected = _tag(secret, lead_key, purpose)
    return lead_key if hmac.compare_digest(expected, given_tag) else None


def unsubscribe_url(public_url: str, secret: str, lead_key: str) -> str:
    """The one-click unsubscribe link (also the RFC 8058 List-Unsubscribe target)."""
    return f"{public_url.rstrip('/')}/u/{sign_token(secret, lead_key, 'unsubscribe')}"


def preferences_url(public_url: str, secret: str, lead_key: str) -> str:
    """The preferences page: the unsubscribe token with `?view=preferences`."""
    return f"{unsubscribe_url(public_url, secret, lead_key)}?view=preferences"


def handoff_url(public_url: str, secret: str, handoff_id: int, owner: str) -> str:
    """The sales rep's link to one handoff (`/h/{token}`), bound to it and to its owner:
    the web app voids it once the handoff is reassigned or closed."""
    return f"{public_url.rstrip('/')}/h/{sign_token(secret, f'{handoff_id}|{owner}', 'handoff')}"


def verify_handoff_token(secret: str, token: str) -> tuple[int, str] | None:
    """(handoff id, owner) a `/h/` token was signed for, or None. Never raises."""
    payload = verify_token(secret, token, "handoff")
    handoff_id, bar, owner = (payload or "").partition("|")
    if not bar or not handoff_id.isdigit() or len(handoff_id) > 18 or not owner:
        return None
    return int(handoff_id), owner


def webhook_signature(secret: str, body: bytes) -> str:
    """Value of the `X-Nurture-Signature` header on outgoing webhooks: `sha256=<hex>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def api_key_ok(presented: str | None, allowed: Sequence[str]) -> bool:
    """Whether `presented` is one of `allowed`, comparing against every key in constant time.

    Empty keys never match (a stray comma in NURTURE_API_KEYS must not open the API).
    """
    if not presented:
        return False
    given = presented.encode()
    ok = False
    for key in allowed:
        # No early exit: the time taken does not say which key matched.
        ok |= bool(key) & hmac.compare_digest(given, key.encode())
    return ok


def email_hash(email: str) -> str:
    """SHA-256 hex of the canonical address: the suppression entry of a forgotten lead,
    so it matches whatever spelling of the address comes back."""
    return hashlib.sha256(canonical_email(email).encode()).hexdigest()


def stored_email_hash(email: str) -> str:
    """`email_hash` of an address read from the store. A row that migration 0003 could
    not fold (not a plain address, e.g. `a,b@example.com`) keeps its old spelling; its
    hash is then that of the spelling, trimmed and lower-cased, as it was before 0003,
    so suppressing or forgetting it still works (and nothing is ever sent to it)."""
    try:
        return email_hash(email)
    except InvalidAddress:
        return hashlib.sha256(email.strip().lower().encode()).hexdigest()
