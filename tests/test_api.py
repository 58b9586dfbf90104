"""The /v1 HTTP API on a real uvicorn on loopback, against the real dev server."""

from __future__ import annotations

import pytest

from tests.test_webhooks import serve

AUTH = {"Authorization": "Bearer test-key"}


@pytest.fixture
async def api(stack):
    async with serve(stack) as http:
        yield stack, http


async def test_leads_events_bant_and_handoff_over_http(api):
    stack, http = api
    created = await http.post("/v1/leads", headers=AUTH, json={
        "email": " Kim@Hooli.Example ", "first_name": "Kim", "job_title": "Head of IT", "company_size": 300,
        "source": "web_form", "consent": True, "attributes": {"plan": "pro"}})
    assert created.status_code == 201, created.text
    assert created.json()["email"] == "kim@hooli.example" and created.json()["campaign"] == "b2b-trial"
    again = await http.post("/v1/leads", headers=AUTH, json={"email": "kim@hooli.example", "first_name": "Kim"})
    assert again.status_code == 200  # the same form twice: an update that changes nothing

    posted = await http.post("/v1/events", headers=AUTH, json=[
        {"email": "kim@hooli.example", "type": "quote_request", "id": "q-1"},
        {"email": "kim@hooli.example", "type": "quote_request", "id": "q-1"},
        {"email": "kim@hooli.example", "type": "page_view", "url": "https://acme.example/pricing"},
    ])
    assert posted.status_code == 200, posted.text
    assert posted.json()["duplicates"] == 1
    lead = (await http.get("/v1/leads/kim@hooli.example", headers=AUTH)).json()
    assert lead["score"] == 45 and lead["stage"] == "lead"

    await http.post("/v1/events", headers=AUTH, json={"email": "kim@hooli.example", "type": "webinar_attended"})
    bant = await http.post("/v1/leads/kim@hooli.example/bant", headers=AUTH,
                           json={"budget": True, "authority": True, "need": True, "timing": True})
    assert bant.status_code == 200 and bant.json()["stage"] == "sql" and bant.json()["owner"]
    from nurture import crud

    with stack.session() as session:
        (handoff,) = crud.list_handoffs(session=session)
    refused = await http.post(f"/v1/handoffs/{handoff.id}/reject", headers=AUTH, json={})
    assert refused.status_code == 422 and refused.json()["field"] == "reason"
    accepted = await http.post(f"/v1/handoffs/{handoff.id}/accept", headers=AUTH)
    assert accepted.status_code == 200 and accepted.json()["stage"] == "opportunity"
    twice = await http.post(f"/v1/handoffs/{handoff.id}/accept", headers=AUTH)
    assert twice.status_code == 409 and "cannot accept" in twice.json()["error"]


async def test_anonymous_events_count_once_the_visitor_becomes_a_lead(api):
    _, http = api
    posted = await http.post("/v1/events", headers=AUTH, json=[
        {"anonymous_id": "v-42", "type": "page_view", "url": "https://acme.example/pricing"},
        {"anonymous_id": "v-42", "type": "content_download", "asset": "buyers-guide-2026"},
    ])
    assert posted.json()["anonymous"] == 2
    created = await http.post("/v1/leads", headers=AUTH, json={"email": "vis@globex.example", "anonymous_id": "v-42"})
    lead = created.json()
    assert lead["score"] == 30
    assert [h["reason"] for h in lead["history"] if h["kind"] == "score"] == ["page_view", "content_download"]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "field"), [
    ("post", "/v1/leads", {"email": "x@y.example"}, {}, 401, "authorization"),
    ("post", "/v1/leads", {"email": "x@y.example"}, {"Authorization": "Bearer nope"}, 401, "authorization"),
    ("post", "/v1/leads", {"email": "not an email"}, AUTH, 422, "email"),
    ("post", "/v1/leads", {"email": "x@y.example", "company_size": "many"}, AUTH, 422, "company_size"),
    ("post", "/v1/leads", {"email": "x@y.example", "colour": "red"}, AUTH, 422, "colour"),
    ("post", "/v1/events", {"type": "email_click"}, AUTH, 422, "email"),
    ("post", "/v1/events", {"email": "x@y.example", "type": "Email Click"}, AUTH, 422, "type"),
    ("post", "/v1/events", [{"email": "x@y.example", "type": "page_view", "at": "yesterday"}], AUTH, 422, "0.at"),
    ("get", "/v1/leads/nobody@nowhere.example", None, AUTH, 404, None),
    ("post", "/v1/handoffs/999/accept", None, AUTH, 404, None),
])
async def test_bad_requests_get_a_4xx_naming_the_field(api, method, path, body, headers, status, field):
    _, http = api
    response = await getattr(http, method)(path, headers=headers, **({"json": body} if body is not None else {}))
    assert response.status_code == status, response.text
    assert response.json()["field"] == field


async def test_malformed_and_huge_bodies(api):
    _, http = api
    malformed = await http.post("/v1/events", headers={**AUTH, "Content-Type": "application/json"}, content=b'{"email": ')
    assert malformed.status_code == 400 and malformed.json()["error"] == "malformed JSON body"
    huge = await http.post("/v1/events", headers={**AUTH, "Content-Type": "application/json"},
                           content=b"[" + b'{"email": "a@b.example", "type": "page_view"},' * 30_000 + b"{}]")
    assert huge.status_code == 413
    assert (await http.get("/healthz")).json() == {"ok": True}
