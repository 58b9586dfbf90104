"""What a lead may hold, the same at every door: bad values refused with the field
named, bounded attributes, event ids per lead, odd addresses reachable, bursts
of updates to one lead all answered (HTTP API on a real uvicorn, CSV import)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from nurture import crud
from nurture.config import Settings
from nurture.db import upgrade
from nurture.importer import import_file
from nurture.models import Event
from nurture.leadfields import MAX_ATTRIBUTE_VALUE, MAX_ATTRIBUTES_BYTES, FieldError, check_attributes
from nurture.service import Nurture
from nurture.temporal import start_dev_server, wait_for_server
from nurture.timeskip import free_port
from tests.conftest import Stack, _stack, make_settings
from tests.test_api import AUTH, api  # noqa: F401  (api is a fixture)
from tests.test_webhooks import KEY, post, public_key, serve, sg


def stored(stack, email: str):
    with stack.session() as session:
        return crud.get_lead(session=session, email=email)


@pytest.mark.parametrize(("extra", "field", "says"), [
    ({"timezone": "Mars/Base"}, "timezone", "'Mars/Base' is not an IANA time zone like Europe/Paris"),
    ({"locale": "français"}, "locale", "is not a locale like fr or fr-FR"),
    ({"country": "France"}, "country", "is not a two-letter country code"),
    ({"company_size": 99_999_999_999}, "company_size", None),
    ({"consent_at": "0001-01-01T00:00:00+01:00"}, "consent_at", "must be between 1971 and 2999"),
    ({"consent_at": "9999-12-31T23:59:59-01:00"}, "consent_at", "must be between 1971 and 2999"),
    ({"first_name": "Ann\x00"}, "first_name", "contains a NUL character"),
    ({"attributes": {"plan\x00": "pro"}}, "attributes", "contains a NUL character"),
    ({"attributes": {"notes": "x" * 900_000}}, "attributes.notes", f"longer than {MAX_ATTRIBUTE_VALUE} characters"),
    ({"attributes": {f"k{i}": "v" for i in range(101)}}, "attributes", "101 attributes, more than 100"),
])
async def test_the_api_refuses_bad_values_naming_the_field_and_stores_nothing(api, extra, field, says):
    stack, http = api
    response = await http.post("/v1/leads", headers=AUTH, json={"email": "ann@acme.example", **extra})

    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert says is None or says in response.json()["error"]
    assert stored(stack, "ann@acme.example") is None


async def test_attributes_are_bounded_once_merged_and_later_updates_still_work(api):
    stack, http = api
    half = {f"a{i}": "x" * 1000 for i in range(20)}  # about 20 kB
    first = await http.post("/v1/leads", headers=AUTH, json={"email": "ann@acme.example", "attributes": half})
    second = await http.post("/v1/leads", headers=AUTH, json={
        "email": "ann@acme.example", "attributes": {f"b{i}": "y" * 1000 for i in range(20)}})
    later = await http.post("/v1/leads", headers=AUTH, json={"email": "ann@acme.example", "attributes": {"plan": "pro"}})

    assert first.status_code == 201, first.text
    assert second.status_code == 422 and second.json()["field"] == "attributes"
    assert f"more than {MAX_ATTRIBUTES_BYTES:,}" in second.json()["error"]
    assert later.status_code == 200, later.text
    assert stored(stack, "ann@acme.example").attributes == {**half, "plan": "pro"}


async def test_csv_cells_past_the_bounds_cost_their_row_only(api, tmp_path):
    stack, _ = api
    path = tmp_path / "leads.csv"
    path.write_text("email,notes,first_name\n"
                    f"ann@acme.example,{'x' * 5000},Ann\n"
                    "bob@acme.example,hello,Bo\x00b\n"
                    "cy@acme.example,hello,Cy\n", encoding="utf-8")

    report = await import_file(stack.nurture, path)

    assert report.problems == [f"{path}:2: notes: longer than {MAX_ATTRIBUTE_VALUE} characters",
                               f"{path}:3: first_name: contains a NUL character"]
    assert (report.created, report.rejected) == (1, 2)
    assert stored(stack, "ann@acme.example") is None and stored(stack, "cy@acme.example") is not None


async def test_an_event_id_of_one_lead_is_refused_for_another(api):
    stack, http = api
    for email in ("ann@acme.example", "bob@acme.example"):
        assert (await http.post("/v1/leads", headers=AUTH, json={"email": email})).status_code == 201
    ann = await http.post("/v1/events", headers=AUTH, json={"email": "ann@acme.example", "type": "quote_request",
                                                             "id": "ev-1"})
    again = await http.post("/v1/events", headers=AUTH, json={"email": "ann@acme.example", "type": "quote_request",
                                                               "id": "ev-1"})
    bob = await http.post("/v1/events", headers=AUTH, json={"email": "bob@acme.example", "type": "quote_request",
                                                             "id": "ev-1"})
    batch = await http.post("/v1/events", headers=AUTH, json=[
        {"email": "bob@acme.example", "type": "quote_request", "id": "ev-2"},
        {"email": "ann@acme.example", "type": "quote_request", "id": "ev-2"}])

    assert ann.status_code == again.status_code == 200 and again.json()["duplicates"] == 1
    assert bob.status_code == 409 and bob.json()["field"] == "id" and "another lead" in bob.json()["error"]
    assert batch.status_code == 409 and batch.json()["field"] == "1.id"
    scores = {email: stack.show(email)["score"] for email in ("ann@acme.example", "bob@acme.example")}
    assert scores == {"ann@acme.example": 30, "bob@acme.example": 0}  # the batch stored nothing either
    rescored = await stack.nurture.rescore("ann@acme.example")
    assert rescored.lead["score"] == 30


async def test_huge_ids_and_edge_times_are_4xx_not_500(api):
    _, http = api
    handoff = await http.post(f"/v1/handoffs/{2**63}/accept", headers=AUTH)
    event = await http.post("/v1/events", headers=AUTH, json={"email": "ann@acme.example", "type": "page_view",
                                                               "at": "0001-01-01T00:00:00+01:00"})
    nul = await http.post("/v1/events", headers=AUTH, json={"email": "ann@acme.example", "type": "page_view",
                                                             "url": "https://acme.example/\x00"})

    assert handoff.status_code == 404, handoff.text
    assert (event.status_code, event.json()["field"]) == (422, "at")
    assert (nul.status_code, nul.json()["field"]) == (422, "url")


async def test_an_address_with_a_slash_is_reachable_by_path(api):
    _, http = api
    created = await http.post("/v1/leads", headers=AUTH, json={"email": "sales/emea@acme.example"})
    plain = await http.get("/v1/leads/sales/emea@acme.example", headers=AUTH)
    encoded = await http.get("/v1/leads/sales%2Femea@acme.example", headers=AUTH)
    bant = await http.post("/v1/leads/sales/emea@acme.example/bant", headers=AUTH, json={"budget": True})

    assert created.status_code == 201, created.text
    assert plain.status_code == encoded.status_code == bant.status_code == 200, (plain.text, bant.text)
    assert plain.json()["email"] == "sales/emea@acme.example" and bant.json()["bant"]["budget"] is True


@pytest.fixture
async def strict_server(tmp_path):
    """A Temporal dev server of its own that admits only 2 in-flight updates per
    workflow (the default is 10): a burst past the limit, without waiting for a worker
    as slow as a loaded machine's."""
    server = start_dev_server(tmp_path / "temporal", port=free_port(), ui_port=free_port(), persist=False,
                              extra=["--dynamic-config-value", "history.maxInFlightUpdates=2"])
    try:
        yield await wait_for_server(Settings(home=tmp_path), server)
    finally:
        server.stop()


async def test_sixty_concurrent_updates_of_one_lead_are_all_answered(strict_server, tmp_path):
    settings = make_settings(tmp_path)
    upgrade(settings.db_url)
    stack = Stack(SimpleNamespace(client=strict_server), settings, Nurture(settings, strict_server))  # type: ignore[arg-type]
    async with stack.start_worker(), serve(stack) as http:
        await http.post("/v1/leads", headers=AUTH, json={"email": "ann@acme.example"})

        responses = await asyncio.gather(*(
            http.post("/v1/leads", headers=AUTH, json={"email": "ann@acme.example", "attributes": {f"k{i}": i}})
            for i in range(60)))

    assert [r.status_code for r in responses] == [200] * 60, [r.text for r in responses if r.status_code != 200]
    assert stored(stack, "ann@acme.example").attributes == {f"k{i}": i for i in range(60)}


async def test_nul_in_a_signed_webhook_batch_is_taken_out_not_a_500(temporal_env, tmp_path, postgres_url):
    """PostgreSQL cannot keep a NUL in text; SendGrid would retry a refused batch for days."""
    settings = make_settings(tmp_path, database_url=postgres_url, sendgrid_webhook_public_key=public_key(KEY))
    async with _stack(temporal_env, settings) as stack, serve(stack) as http:
        await stack.add("ann@acme.example")
        response = await post(http, [sg("dropped", "ann@acme.example", sg_event_id="ab\x00cd", reason="Bounced\x00 Address",
                                        campaign="b2b\x00")])

        assert response.status_code == 200, response.text
        with stack.session() as session:
            event = session.get(Event, "sg:abcd")
        assert event is not None and event.lead_key is not None
        assert event.data["reason"] == "Bounced Address" and event.data["campaign"] == "b2b"


@pytest.mark.parametrize(("attributes", "field", "says"), [
    ({"k" * 65: "v"}, "attributes", "attribute name 'kkkkkkkkkkkkkkkkkkkk...' longer than 64 characters"),
    ({" ": "v"}, "attributes", "an attribute name is empty"),
    ({"plan": ["pro"]}, "attributes.plan", "must be text, a number, true/false or null"),
    ({"plan": "x" * 1001}, "attributes.plan", "longer than 1000 characters"),
])
def test_attribute_bounds_name_what_is_wrong(attributes, field, says):
    with pytest.raises(FieldError) as caught:
        check_attributes(attributes)
    assert (caught.value.field, caught.value.message) == (field, says)
