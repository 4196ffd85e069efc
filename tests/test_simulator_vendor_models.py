"""The simulator answers in the vendor's own models: its listing, stored conversation, both webhooks and its stream
events are validated with the ``smallestai`` SDK's pydantic models, so a plugin written against the simulator reads
the fields real Atoms answers have.

Validation alone is not enough: the SDK's models allow extra fields and keep their enums open
(``Union[Literal[...], Any]``), so a wrongly named field (``fromPhone`` for ``from``) or value (``inbound`` for
``telephony_inbound``) would pass. Every REST and webhook object is also checked to use only the model's field
names, and every enum field one of the model's known values. Stream events are the exception on names: real
streams carry fields the model does not list, and the simulator sends a script's fields as they are.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import trio
from smallestai.atoms.calls.types import (
    GetCallsResponse,
    GetCallsResponseData,
    GetCallsResponseDataTranscriptItem,
    ListCallsResponse,
    ListCallsResponseData,
    ListCallsResponseDataLogsItem,
    ListCallsResponseDataPagination,
)
from smallestai.atoms.live_transcripts.types import SubscribeToLiveEventsLiveTranscriptsResponse
from smallestai.atoms.types import (
    WebhookEventCallData,
    WebhookEventPostConversation,
    WebhookEventPostConversationMetadata,
    WebhookEventPreConversation,
    WebhookEventPreConversationMetadata,
    WebhookEventTranscriptTurn,
)

from hookrunner._simulator import Script, load_script, parse_script, running_simulator
from hookrunner.testing.receiver import running_receiver

KEY = {"Authorization": "Bearer sim-key"}
STREAMS = Path(__file__).parent / "streams"
SECRET = "whsec-vendor-test"


def fields_of(model: type[pydantic.BaseModel]) -> set[str]:
    """The names a model's fields have on the wire (their aliases)."""
    return {field.alias or name for name, field in model.model_fields.items()}


def known_values(model: type[pydantic.BaseModel], name: str) -> set[str]:
    """The literal values of an open enum field (``Optional[Union[Literal[...], Any]]``)."""
    found: set[str] = set()
    pending = [model.model_fields[name].annotation]
    while pending:
        kind = pending.pop()
        if typing.get_origin(kind) is typing.Literal:
            found.update(typing.get_args(kind))
        else:
            pending.extend(typing.get_args(kind))
    assert found, f"{model.__name__}.{name} has no literal values"
    return found


def assert_shaped_like(value: dict[str, Any], model: type[pydantic.BaseModel], where: str) -> pydantic.BaseModel:
    """Valid for ``model`` and using only its field names; returns the validated model."""
    extra = set(value) - fields_of(model)
    assert not extra, f"{where}: fields the SDK's {model.__name__} does not have: {sorted(extra)}"
    return model.model_validate(value)


def three_kinds_of_call(**settings: Any) -> Script:
    """An inbound, an outbound and a web call, each with agent speech, a user turn and a call_start."""

    def one(call_id: str, direction: str, start: float, **keys: Any) -> dict[str, Any]:
        return {
            "id": call_id, "start": start, **keys,
            "events": [
                {"at": 0.0, "event_type": "call_start", "telephony_id": f"TEL-{call_id}", "agent_id": "agent-v",
                 "direction": direction},
                {"at": 0.05, "event_type": "tts_completed", "tts_text": "Hello, how can I help?", "tts_latency": 212},
                {"at": 0.1, "event_type": "user_interim_transcription", "interim_transcription_text": "my"},
                {"at": 0.15, "event_type": "user_transcription", "user_transcription_text": "My bill is wrong."},
                {"at": 0.3, "event_type": "call_end", "metadata": {"reason": "hangup"}},
            ],
        }  # fmt: skip

    calls = [
        one("CALL-IN", "inbound", 0.0, variables={"customer_name": "Ada", "due_amount": 120.5}),
        one("CALL-OUT", "outbound", 0.05, from_phone="+14155550123", to_phone="+442071838750"),
        one("CALL-WEB", "webcall", 0.1),
    ]
    return parse_script({"keepalive": 0, **settings, "calls": calls}, source="vendor.toml")


async def get(client: httpx.AsyncClient, url: str, **params: Any) -> dict[str, Any]:
    response = await client.get(url, params=params, headers=KEY)
    assert response.status_code == 200, response.text
    return response.json()


def check_listing(body: dict[str, Any]) -> list[ListCallsResponseDataLogsItem]:
    assert_shaped_like(body, ListCallsResponse, "listing")
    assert_shaped_like(body["data"], ListCallsResponseData, "listing data")
    assert_shaped_like(body["data"]["pagination"], ListCallsResponseDataPagination, "pagination")
    logs = [assert_shaped_like(log, ListCallsResponseDataLogsItem, f"log {log.get('callId')}") for log in body["data"]["logs"]]
    for log in logs:
        assert isinstance(log, ListCallsResponseDataLogsItem)
        assert log.type in known_values(ListCallsResponseDataLogsItem, "type")
        assert log.status in known_values(ListCallsResponseDataLogsItem, "status")
        assert log.from_ and log.to and log.from_.startswith("+") and log.to.startswith("+")
    return logs


def check_conversation(body: dict[str, Any]) -> GetCallsResponseData:
    assert_shaped_like(body, GetCallsResponse, "conversation")
    data = assert_shaped_like(body["data"], GetCallsResponseData, "conversation data")
    assert isinstance(data, GetCallsResponseData)
    assert data.type in known_values(GetCallsResponseData, "type")
    assert data.status in known_values(GetCallsResponseData, "status")
    for turn in body["data"]["transcript"]:
        item = assert_shaped_like(turn, GetCallsResponseDataTranscriptItem, "transcript turn")
        assert isinstance(item, GetCallsResponseDataTranscriptItem)
        assert item.role in known_values(GetCallsResponseDataTranscriptItem, "role")
    return data


async def test_the_listing_and_the_stored_conversation_validate_with_the_sdk_models() -> None:
    async with running_simulator(three_kinds_of_call()) as sim, httpx.AsyncClient() as client:
        await trio.sleep_until(sim.started_at + 0.2)  # type: ignore[operator]
        during = await get(client, sim.listing_url, statusFilter="in_progress")
        live = await get(client, sim.conversation_url("CALL-IN"))
        await trio.sleep_until(sim.started_at + 0.6)  # type: ignore[operator]
        after = await get(client, sim.listing_url, statusFilter="completed")
        stored = {call_id: await get(client, sim.conversation_url(call_id)) for call_id in ("CALL-IN", "CALL-OUT", "CALL-WEB")}
    during_logs, after_logs = check_listing(during), check_listing(after)
    assert {log.call_id: log.type for log in during_logs} == {
        "CALL-IN": "telephony_inbound", "CALL-OUT": "telephony_outbound", "CALL-WEB": "webcall",
    }  # fmt: skip
    assert all(log.status == "completed" and log.duration == 0.3 and log.recording_url for log in after_logs)
    assert {log.call_id: (log.from_, log.to) for log in after_logs}["CALL-OUT"] == ("+14155550123", "+442071838750")
    in_progress = check_conversation(live)
    assert in_progress.status == "in_progress" and in_progress.recording_url is None
    datas = {call_id: check_conversation(body) for call_id, body in stored.items()}
    inbound = datas["CALL-IN"]
    assert inbound.status == "completed" and inbound.variables is not None
    assert inbound.variables["customer_name"] == "Ada" and inbound.variables["due_amount"] == 120.5
    assert [(turn.role, turn.content) for turn in inbound.transcript or []] == [
        ("agent", "Hello, how can I help?"), ("user", "My bill is wrong."),
    ]  # fmt: skip
    assert inbound.agent is not None and inbound.agent.id == "agent-v"


async def test_both_webhooks_validate_with_the_sdk_models() -> None:
    async with running_receiver() as receiver:
        script = three_kinds_of_call(push_url=receiver.url("/atoms"), push_secret=SECRET)
        async with running_simulator(script) as sim:
            requests = await receiver.wait_for(6, path="/atoms")
            await sim.wait_for_pushes(6)
    bodies = [request.json() for request in requests]
    pre = {body["metadata"]["callId"]: body for body in bodies if body["metadata"]["eventType"] == "pre-conversation"}
    post = {body["metadata"]["callId"]: body for body in bodies if body["metadata"]["eventType"] == "post-conversation"}
    assert set(pre) == set(post) == {"CALL-IN", "CALL-OUT", "CALL-WEB"}
    for call_id, body in pre.items():
        assert_shaped_like(body, WebhookEventPreConversation, f"{call_id} pre-conversation")
        metadata = assert_shaped_like(body["metadata"], WebhookEventPreConversationMetadata, f"{call_id} pre metadata")
        assert isinstance(metadata, WebhookEventPreConversationMetadata)
        assert metadata.from_phone.startswith("+") and metadata.to_phone.startswith("+")
        assert body["event"] == f"agent-v.pre-conversation"
    assert {call_id: body["metadata"]["conversationType"] for call_id, body in pre.items()} == {
        "CALL-IN": "telephonyInbound", "CALL-OUT": "telephonyOutbound", "CALL-WEB": "webcall",
    }  # fmt: skip (the SDK: "Known values: telephonyOutbound, telephonyInbound")
    for call_id, body in post.items():
        assert_shaped_like(body, WebhookEventPostConversation, f"{call_id} post-conversation")
        metadata = assert_shaped_like(body["metadata"], WebhookEventPostConversationMetadata, f"{call_id} post metadata")
        call_data = assert_shaped_like(body["metadata"]["callData"], WebhookEventCallData, f"{call_id} callData")
        assert isinstance(metadata, WebhookEventPostConversationMetadata) and isinstance(call_data, WebhookEventCallData)
        assert call_data.call_status in known_values(WebhookEventCallData, "call_status")
        for turn in body["metadata"]["transcript"]:
            parsed = assert_shaped_like(turn, WebhookEventTranscriptTurn, f"{call_id} transcript turn")
            assert isinstance(parsed, WebhookEventTranscriptTurn)
            assert parsed.role in known_values(WebhookEventTranscriptTurn, "role")
        assert [turn.content for turn in metadata.transcript] == ["Hello, how can I help?", "My bill is wrong."]
        assert metadata.recording_url.endswith(f"{call_id}.wav") and call_data.call_duration == 0.3
        assert call_data.answer_time < call_data.end_time
    directions = {call_id: body["metadata"]["callData"].get("callDirection") for call_id, body in post.items()}
    assert directions == {"CALL-IN": "telephony_inbound", "CALL-OUT": "telephony_outbound", "CALL-WEB": None}
    assert post["CALL-IN"]["metadata"]["variables"]["customer_name"] == "Ada"


async def read_all(sim: Any, call_id: str) -> list[dict[str, Any]]:
    with trio.fail_after(10):
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream("GET", sim.events_url(call_id), headers=KEY) as response:
                text = "".join([chunk async for chunk in response.aiter_text()])
    return [json.loads(line[len("data: ") :]) for line in text.split("\n") if line.startswith("data: ")]


@pytest.mark.parametrize("source", ["default", *sorted(path.name for path in STREAMS.glob("*.jsonl"))])
async def test_every_streamed_event_validates_with_the_sdks_live_event_model(source: str) -> None:
    """The bundled demo and the project's example streams (their real-stream shapes: epoch timestamps, float
    latencies, extra fields) as the simulator sends them. The failures allowed are the SDK's own known gaps
    against real streams (the project's notes on the wire format): it types ``tts_latency`` as an integer, where
    real streams send fractional floats (``5.713``), and a ``metrics`` item's ``value`` as a number, where real
    streams also send objects (token counts)."""
    script = load_script(STREAMS / source) if source != "default" else None
    async with running_simulator(script, speed=50.0) as sim:
        sent = {call.id: await read_all(sim, call.id) for call in sim.script.calls}
    problems = []
    count = 0
    for call_id, events in sent.items():
        assert events[0]["event_type"] == "sse_init" and events[-1]["event_type"] == "sse_close"
        for event in events:
            count += 1
            try:
                SubscribeToLiveEventsLiveTranscriptsResponse.model_validate(event)
            except pydantic.ValidationError as error:
                for detail in error.errors():
                    loc = detail["loc"]
                    fractional = loc == ("tts_latency",) and detail["type"] == "int_from_float"
                    metric_object = loc[:1] == ("metrics",) and loc[2:] == ("value",) and isinstance(detail["input"], dict)
                    if not (fractional or metric_object):
                        problems.append(f"{call_id} {event['event_type']}: {detail['loc']}: {detail['msg']}")
    assert count >= 10 and not problems, problems
