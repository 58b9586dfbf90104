"""What the HTTP server refuses at its door, over real HTTP on loopback: a Host that is
not ours (DNS rebinding), and webhook requests whose headers already say they are not
SendGrid's, before a byte of their body is read."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.conftest import _stack, make_settings
from tests.test_webhooks import KEY, SIG, TS, public_key, serve, signed

FORGED_SIZE = 16 << 20


@pytest.fixture
async def door(temporal_env, tmp_path, request):
    settings = make_settings(tmp_path, public_url="https://crm.acme.example", sendgrid_webhook_public_key=public_key(KEY),
                             **getattr(request, "param", {}))
    async with _stack(temporal_env, settings) as stack, serve(stack) as http:
        yield http


async def status_for_host(http, host: str) -> int:
    response = await http.get("/healthz", headers={"Host": host})
    if response.status_code == 400:
        assert response.json() == {"error": "this server does not answer for that Host (see NURTURE_ALLOWED_HOSTS)",
                                   "field": "host"}
    return response.status_code


async def test_only_our_hosts_are_answered(door):
    for host in ("127.0.0.1", "127.0.0.1:8000", "localhost:1234", "LOCALHOST", "[::1]:8000", "crm.acme.example",
                 "crm.acme.example:443"):
        assert await status_for_host(door, host) == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "crm.acme.example.evil.example",
                 "[::2]:8000"):
        assert await status_for_host(door, host) == 400, host
    response = await door.post("/v1/events", headers={"Host": "evil.example", "Authorization": "Bearer test-key"},
                               json={"email": "a@b.example", "type": "email_open"})
    assert response.status_code == 400


@pytest.mark.parametrize("door", [{"allowed_hosts": "nurture.internal, 10.0.0.7"}], indirect=True)
async def test_allowed_hosts_add_names_to_loopback_and_the_public_url(door):
    for host in ("nurture.internal:8000", "10.0.0.7", "crm.acme.example", "127.0.0.1:8000", "localhost"):
        assert await status_for_host(door, host) == 200, host
    assert await status_for_host(door, "nurture.internal.evil.example") == 400


@pytest.mark.parametrize("door", [{"allowed_hosts": "*"}], indirect=True)
async def test_a_star_answers_any_host(door):
    assert await status_for_host(door, "anything.example") == 200


async def raw_response_head(port: int, head: str) -> str:
    """Send only a request's head (no body) and read what comes back: an answer means the
    server decided without waiting for the body it was promised. In a thread: the server
    runs on this test's event loop."""
    return await asyncio.to_thread(_send_head, port, head)


def _send_head(port: int, head: str, timeout: float = 5.0) -> str:
    """The whole response to a request of which only the head was sent ("" if none came)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(head.encode())
        try:
            while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _length(received):
                chunk = connection.recv(4096)
                if not chunk:
                    break
                received += chunk
        except socket.timeout:
            pass
    return received.decode("latin-1")


def _length(response: bytes) -> int:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def webhook_head(length: int, headers: dict[str, str]) -> str:
    lines = ["POST /webhooks/sendgrid HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {length}", *(f"{name}: {value}" for name, value in headers.items())]
    return "\r\n".join(lines) + "\r\n\r\n"


async def test_a_forged_huge_webhook_body_is_refused_from_its_headers(door):
    port = door.base_url.port
    now = str(int(time.time()))
    unsigned = await raw_response_head(port, webhook_head(FORGED_SIZE, {}))
    assert unsigned.startswith("HTTP/1.1 403"), unsigned
    malformed = await raw_response_head(port, webhook_head(FORGED_SIZE, {SIG: "not a signature!", TS: now}))
    assert malformed.startswith("HTTP/1.1 403") and "is not a base64 signature" in malformed, malformed
    # Well-formed headers, a declared size past the limit: 413, still before the body.
    well_formed = signed(b"[]")
    oversized = await raw_response_head(port, webhook_head(FORGED_SIZE + 1, {SIG: well_formed[SIG], TS: well_formed[TS]}))
    assert oversized.startswith("HTTP/1.1 413"), oversized


async def test_a_huge_timestamp_is_a_403_not_a_500(door):
    body = b"[]"
    for timestamp in ("9" * 400, "9" * 13, "-1", "1e9", "17.5"):
        response = await door.post("/webhooks/sendgrid", content=body, headers={**signed(body), TS: timestamp})
        assert response.status_code == 403, (timestamp, response.text)
        assert response.json()["error"] == f"webhook refused: {TS} is not a Unix time", timestamp
