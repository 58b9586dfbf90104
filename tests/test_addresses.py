"""nurture.addresses: one canonical spelling per mailbox; anything else refused."""

from __future__ import annotations

import unicodedata

import pytest

from nurture.addresses import InvalidAddress, canonical_email, fold_stored
from nurture.security import email_hash


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("jane@globex.example", "jane@globex.example"),
        ("  Jane.Doe@Globex.Example \t", "jane.doe@globex.example"),
        ("JANE+news@SUB.globex.co.uk", "jane+news@sub.globex.co.uk"),
        ("o'brien@acme.example", "o'brien@acme.example"),
        ("léa@exemple.fr", "léa@exemple.fr"),
        ("a/b@acme.example", "a/b@acme.example"),
        # an IDN domain and its punycode are one domain: the ASCII (IDNA) form
        ("jane@bücher.example", "jane@xn--bcher-kva.example"),
        ("jane@BÜCHER.example", "jane@xn--bcher-kva.example"),
        ("jane@xn--bcher-kva.example", "jane@xn--bcher-kva.example"),
        # NFD (e + combining acute) and NFC (é) are one local part: NFC
        (unicodedata.normalize("NFD", "Léa@exemple.fr"), "léa@exemple.fr"),
    ],
)
def test_canonical_email_accepts(raw: str, expected: str) -> None:
    assert canonical_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "", "   ", "jane", "jane@", "@globex.example", "jane@globex", "jane@@globex.example",
        "jane@globex@example.com", "jane doe@globex.example", "jane@glo bex.example",
        "jane@globex.example\r\nBcc: x@y", "jane@globex.example\n", "ja\rne@globex.example",
        "jane@.globex.example", "jane@globex.example.", "jane@globex..example",
        "Jane <jane@globex.example>", "<jane@globex.example>", "jane(x)@globex.example",
        "jane@globex.example>", '"jane"@globex.example', '"ja ne"@globex.example', "a,b@example.com",
        "jane@[192.0.2.1]", "a" * 65 + "@x.io", "jane\x00@globex.example", "jane@globex.exa\x00mple",
        None, 42,
    ],
)
def test_canonical_email_refuses_what_is_not_a_plain_address(raw: object) -> None:
    with pytest.raises(InvalidAddress) as caught:
        canonical_email(raw)
    assert str(caught.value).startswith("invalid email address ")
    assert "\n" not in str(caught.value) and "\x00" not in str(caught.value)


def test_canonical_email_limit_is_254_characters() -> None:
    domain = ".".join(["d" * 63] * 3) + "." + "d" * 54 + ".io"
    address = f"jane@{domain}"
    assert len(address) == 254

    assert canonical_email(address) == address
    with pytest.raises(InvalidAddress):
        canonical_email("jane1@" + domain)


def test_every_spelling_of_one_mailbox_has_one_suppression_hash() -> None:
    spellings = ["Léa@Bücher.example", unicodedata.normalize("NFD", "léa@bücher.example"),
                 "LÉA@xn--bcher-kva.example", " léa@XN--BCHER-KVA.EXAMPLE "]

    assert len({email_hash(spelling) for spelling in spellings}) == 1


@pytest.mark.parametrize(("stored", "folded"), [
    ("jane@globex.example", "jane@globex.example"),
    ("<Jane@Globex.example>", "jane@globex.example"),
    ("Jane Doe <jane@globex.example>", "jane@globex.example"),
    ("jane(work)@globex.example", "jane@globex.example"),
    ("jane@globex.example>", "jane@globex.example"),
    ('"jane"@globex.example', "jane@globex.example"),
    ("a,b@example.com", None),
    ('"ja ne"@globex.example', None),
    ("not an address", None),
])
def test_fold_stored_reduces_old_spellings_as_a_mail_library_did(stored, folded):
    assert fold_stored(stored) == folded
