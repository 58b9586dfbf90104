"""nurture.security: signed links, webhook signatures, API keys, email identity."""

from __future__ import annotations

import base64
import hashlib

import pytest

from nurture.security import (
    api_key_ok,
    email_hash,
    preferences_url,
    sign_token,
    unsubscribe_url,
    verify_token,
    webhook_signature,
)

SECRET = "s3cret-for-tests-only"
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


# ---------------------------------------------------------------- tokens


@pytest.mark.parametrize("lead_key", ["42", "5f0c1a8e-3d2b-4c1e-9a6f-0b7d2e4c", "jane@globex.example", "léa|ü/?#.x"])
def test_token_roundtrip(lead_key: str) -> None:
    token = sign_token(SECRET, lead_key)

    assert verify_token(SECRET, token) == lead_key
    assert set(token) <= set(B64URL + ".")


def test_token_carries_at_least_128_bits_of_signature() -> None:
    tag = sign_token(SECRET, "42").split(".")[1]

    assert len(base64.urlsafe_b64decode(tag + "==")) * 8 >= 128


def test_tokens_differ_by_lead_and_by_secret() -> None:
    assert sign_token(SECRET, "1") != sign_token(SECRET, "2")
    assert sign_token(SECRET, "1") != sign_token("other", "1")
    assert sign_token(SECRET, "1") == sign_token(SECRET, "1")


def test_every_single_character_change_is_refused() -> None:
    token = sign_token(SECRET, "5f0c1a8e-3d2b-4c1e")

    for index, char in enumerate(token):
        for replacement in {B64URL[(B64URL.find(char) + 1) % 64], B64URL[(B64URL.find(char) + 33) % 64], "."} - {char}:
            tampered = token[:index] + replacement + token[index + 1 :]
            assert verify_token(SECRET, tampered) is None, tampered


def test_another_leads_key_cannot_be_put_in_a_token() -> None:
    mine = sign_token(SECRET, "lead-1")
    theirs = sign_token(SECRET, "lead-2")
    my_tag = mine.split(".")[1]

    assert verify_token(SECRET, f"{b64('lead-2')}.{my_tag}") is None
    assert verify_token(SECRET, f"{mine.split('.')[0]}.{theirs.split('.')[1]}") is None
    assert verify_token(SECRET, f"{b64('lead-12')}.{my_tag}") is None


def test_token_is_bound_to_its_purpose_and_secret() -> None:
    token = sign_token(SECRET, "42", purpose="unsubscribe")

    assert verify_token(SECRET, token, purpose="preferences") is None
    assert verify_token("another secret", token) is None
    assert verify_token(SECRET, sign_token(SECRET, "42", purpose="preferences"), purpose="preferences") == "42"


def test_purpose_cannot_be_confused_with_the_lead_key() -> None:
    with pytest.raises(ValueError):
        sign_token(SECRET, "c", purpose="a|b")


def test_signing_refuses_an_empty_secret_or_key() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign_token("", "42")
    with pytest.raises(ValueError):
        sign_token(SECRET, "")


@pytest.mark.parametrize(
    "garbage",
    [
        "", ".", "..", "a", "a.", ".a", "a.b", "a.b.c", "!!!.???", "ü.ü", "NDI.", "NDI.====",
        "NDI=.AAAAAAAAAAAAAAAAAAAAAA", " NDI.AAAAAAAAAAAAAAAAAAAAAA", "NDI.AAAAAAAAAAAAAAAAAAAAAA",
        "x" * 100_000, "\x00.\x00", "/8.AAAAAAAAAAAAAAAAAAAAAA", None, 42, b"NDI.AAAA", ["NDI", "x"],
    ],
)
def test_garbage_tokens_are_refused_without_raising(garbage: object) -> None:
    assert verify_token(SECRET, garbage) is None  # type: ignore[arg-type]


def test_other_spellings_of_the_same_bytes_are_refused() -> None:
    token = sign_token(SECRET, "42")
    key, tag = token.split(".")
    last = B64URL.find(tag[-1])
    # 16 bytes take 22 characters; the last one carries 2 bits and 4 unused ones.
    same_bytes = tag[:-1] + B64URL[(last & 0b110000) | ((last + 1) & 0b001111)]
    assert base64.urlsafe_b64decode(same_bytes + "==") == base64.urlsafe_b64decode(tag + "==")

    assert verify_token(SECRET, f"{key}.{same_bytes}") is None
    assert verify_token(SECRET, token + "=") is None
    assert verify_token(SECRET, f"{key}=.{tag}") is None


def test_verify_refuses_an_empty_secret() -> None:
    assert verify_token("", sign_token(SECRET, "42")) is None


# ---------------------------------------------------------------- links


def test_unsubscribe_and_preferences_urls_verify() -> None:
    unsubscribe = unsubscribe_url("https://mail.acme.example/", SECRET, "42")
    preferences = preferences_url("https://mail.acme.example", SECRET, "42")

    assert unsubscribe.startswith("https://mail.acme.example/u/")
    token = unsubscribe.removeprefix("https://mail.acme.example/u/")
    assert verify_token(SECRET, token) == "42"
    assert preferences == f"https://mail.acme.example/u/{token}?view=preferences"


# ---------------------------------------------------------------- webhooks and keys


def test_webhook_signature_is_hmac_sha256_hex() -> None:
    # RFC 4231, test case 2.
    assert webhook_signature("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    assert webhook_signature(SECRET, b"{}") != webhook_signature(SECRET, b"{ }")


@pytest.mark.parametrize(
    ("presented", "allowed", "expected"),
    [
        ("key-a", ["key-a", "key-b"], True),
        ("key-b", ["key-a", "key-b"], True),
        ("key-c", ["key-a", "key-b"], False),
        ("key-", ["key-a"], False),
        ("key-aa", ["key-a"], False),
        ("KEY-A", ["key-a"], False),
        (None, ["key-a"], False),
        ("", ["key-a", ""], False),
        ("", [], False),
        ("key-a", [], False),
        ("clé-é", ["clé-é"], True),
        ("clé", ["key-a"], False),
    ],
)
def test_api_key_ok(presented: str | None, allowed: list[str], expected: bool) -> None:
    assert api_key_ok(presented, allowed) is expected


# ---------------------------------------------------------------- email addresses


def test_email_hash_is_sha256_of_the_normalised_address() -> None:
    expected = hashlib.sha256(b"jane.doe@globex.example").hexdigest()

    assert email_hash("jane.doe@globex.example") == expected
    assert email_hash(" Jane.Doe@GLOBEX.example ") == expected
    with pytest.raises(ValueError):
        email_hash("not an address")
