"""The local SendGrid fake: it must accept what SendGrid accepts and refuse what it refuses."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Category, CustomArg, From, Header, Mail, To

from tests.fake_sendgrid import SPEC_ENV, FakeSendGrid, find_spec


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as server:
        yield server


def build_mail(to: str = "jane.doe@globex.example", send_id: str = "send-1") -> Mail:
    mail = Mail(
        from_email=From("hello@acme.example", "Acme"),
        to_emails=To(to, "Jane Doe"),
        subject="How Globex cut reporting time by 30%",
        plain_text_content="Hi Jane,\n\nRead the story.",
        html_content="<p>Hi Jane,</p><p>Read the story.</p>",
    )
    mail.custom_arg = [CustomArg("send_id", send_id), CustomArg("campaign", "b2b-trial")]
    mail.category = [Category("b2b-trial"), Category("case-study")]
    mail.header = [
        Header("List-Unsubscribe", "<http://127.0.0.1:8000/u/NDI.token>"),
        Header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    return mail


_HTTP = httpx.Client()  # one client: building one per request costs ~40 ms of TLS setup


def post(fake: FakeSendGrid, body: Any, key: str | None = None, timeout: float = 5) -> httpx.Response:
    return _HTTP.post(
        f"{fake.url}/v3/mail/send",
        json=body,
        headers={"Authorization": f"Bearer {key or fake.api_key}"},
        timeout=timeout,
    )


def test_mail_built_with_the_sendgrid_library_is_accepted(fake: FakeSendGrid) -> None:
    response = SendGridAPIClient(fake.api_key, host=fake.url).send(build_mail())

    assert response.status_code == 202
    assert response.headers["X-Message-Id"]
    [message] = fake.messages
    assert message["custom_args"] == {"send_id": "send-1", "campaign": "b2b-trial"}
    assert sorted(message["categories"]) == ["b2b-trial", "case-study"]
    assert message["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert fake.sent_to("Jane.Doe@globex.example") == [message]
    assert fake.sent_to("someone@else.example") == []
    assert fake.count_by_send_id() == {"send-1": 1}
    assert [(r.status, r.reason) for r in fake.requests] == [(202, None)]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.pop("from"), "from"),
        (lambda b: b.update(personalizations=[]), "personalizations"),
        (lambda b: b.pop("personalizations"), "personalizations"),
        (lambda b: b["personalizations"][0].update(to=[]), "personalizations.0.to"),
        (lambda b: b["personalizations"][0]["to"][0].update(email="not-an-address"), "personalizations.0.to.0.email"),
        (lambda b: b.update({"from": {"email": "hello at acme"}}), "from.email"),
        (lambda b: b.update(categories=["x"] * 2), "categories"),
        (lambda b: b.update(custom_args={"send_id": 42}), "custom_args.send_id"),
        (lambda b: b.update(custom_args="send-1"), "custom_args"),
        (lambda b: b.pop("content"), "content"),
        (lambda b: b.pop("subject"), "subject"),
        (lambda b: b["content"][0].update(value=""), "content.0.value"),
    ],
)
def test_invalid_bodies_get_400_naming_the_field(fake: FakeSendGrid, change: Any, field: str) -> None:
    body = build_mail().get()
    change(body)

    response = post(fake, body)

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert field in [e["field"] for e in errors]
    assert all(set(e) == {"message", "field", "help"} for e in errors)
    assert fake.messages == []
    assert fake.requests[-1].status == 400 and field in (fake.requests[-1].reason or "")


def test_invalid_body_through_the_sendgrid_library_raises_bad_request(fake: FakeSendGrid) -> None:
    body = build_mail().get()
    body["personalizations"] = []

    with pytest.raises(HTTPError) as caught:
        SendGridAPIClient(fake.api_key, host=fake.url).send(body)

    assert caught.value.status_code == 400
    assert fake.messages == []


def test_body_that_is_not_json_gets_400(fake: FakeSendGrid) -> None:
    response = httpx.post(
        f"{fake.url}/v3/mail/send", content=b"{nope", headers={"Authorization": f"Bearer {fake.api_key}"}
    )

    assert response.status_code == 400
    assert fake.messages == []


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "SG.fake-test-key", "Basic eDp5"])
def test_wrong_or_missing_key_gets_401(fake: FakeSendGrid, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    response = httpx.post(f"{fake.url}/v3/mail/send", json=build_mail().get(), headers=headers)

    assert response.status_code == 401
    assert response.json()["errors"][0]["field"] is None
    assert fake.messages == []
    assert fake.requests[-1].status == 401


def test_wrong_key_through_the_sendgrid_library(fake: FakeSendGrid) -> None:
    with pytest.raises(HTTPError) as caught:
        SendGridAPIClient("SG.wrong", host=fake.url).send(build_mail())

    assert caught.value.status_code == 401


def test_fail_next_refuses_then_recovers(fake: FakeSendGrid) -> None:
    fake.fail_next(429, count=2)
    client = SendGridAPIClient(fake.api_key, host=fake.url)

    statuses = []
    for _ in range(3):
        try:
            statuses.append(client.send(build_mail()).status_code)
        except HTTPError as exc:
            statuses.append(exc.status_code)

    assert statuses == [429, 429, 202]
    assert len(fake.messages) == 1
    assert [r.status for r in fake.requests] == [429, 429, 202]


def test_fail_rate_errors_do_not_accept_the_message(fake: FakeSendGrid) -> None:
    fake.fail_rate(1.0, statuses=(500,))

    response = post(fake, build_mail(send_id="s-1").get())

    assert response.status_code == 500
    assert fake.count_by_send_id() == {}  # SendGrid's 5xx: the message was not taken


def test_fail_rate_is_a_reproducible_fraction(fake: FakeSendGrid) -> None:
    fake.fail_rate(0.3, statuses=(429, 500), seed=7)
    statuses = [post(fake, build_mail(send_id=f"s-{i}").get()).status_code for i in range(100)]

    fake.reset()
    fake.fail_rate(0.3, statuses=(429, 500), seed=7)
    again = [post(fake, build_mail(send_id=f"s-{i}").get()).status_code for i in range(100)]

    assert statuses == again
    assert 15 <= sum(s != 202 for s in statuses) <= 45
    assert set(statuses) == {202, 429, 500}
    assert len(fake.messages) == sum(s == 202 for s in statuses)


def test_slow_answer_arrives_late_after_acceptance(fake: FakeSendGrid) -> None:
    fake.fail_rate(1.0, statuses=(), slow_seconds=0.4)

    started = time.monotonic()
    response = post(fake, build_mail().get())

    assert response.status_code == 202
    assert time.monotonic() - started >= 0.4
    assert len(fake.messages) == 1


def test_slow_answer_times_out_the_client_but_the_message_left(fake: FakeSendGrid) -> None:
    fake.fail_rate(1.0, statuses=(), slow_seconds=2)

    with pytest.raises(httpx.ReadTimeout):
        post(fake, build_mail(send_id="s-9").get(), timeout=0.3)

    assert fake.count_by_send_id() == {"s-9": 1}


def test_accept_then_hang_never_answers(fake: FakeSendGrid) -> None:
    fake.accept_then_hang(0.3)

    with pytest.raises(httpx.RemoteProtocolError):
        post(fake, build_mail(send_id="s-h").get())
    response = post(fake, build_mail(send_id="s-ok").get())

    assert response.status_code == 202
    assert fake.count_by_send_id() == {"s-h": 1, "s-ok": 1}


def test_count_by_send_id_shows_duplicates(fake: FakeSendGrid) -> None:
    for send_id in ("a", "b", "a"):
        post(fake, build_mail(send_id=send_id).get())

    assert fake.count_by_send_id() == {"a": 2, "b": 1}


def test_unknown_path_gets_404(fake: FakeSendGrid) -> None:
    response = httpx.get(f"{fake.url}/v3/templates", headers={"Authorization": f"Bearer {fake.api_key}"})

    assert response.status_code == 404
    assert response.json()["errors"]


def test_keep_alive_connection_serves_many_requests(fake: FakeSendGrid) -> None:
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {fake.api_key}"}) as client:
        statuses = {client.post("/v3/mail/send", json=build_mail(send_id=str(i)).get()).status_code for i in range(20)}

    assert statuses == {202}
    assert len(fake.count_by_send_id()) == 20


def test_spec_location_can_be_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    copy = tmp_path / "spec.json"
    copy.write_text(json.dumps(json.loads(find_spec().read_text())))
    monkeypatch.setenv(SPEC_ENV, str(copy))

    assert find_spec() == copy


def test_missing_spec_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SPEC_ENV, str(tmp_path / "absent.json"))

    with pytest.raises(FileNotFoundError, match=SPEC_ENV):
        FakeSendGrid()


def test_stop_does_not_wait_for_a_hanging_answer() -> None:
    fake = FakeSendGrid().start()
    fake.accept_then_hang(30)
    with pytest.raises(httpx.ReadTimeout):
        post(fake, build_mail().get(), timeout=0.2)

    started = time.monotonic()
    fake.stop()

    assert time.monotonic() - started < 5
