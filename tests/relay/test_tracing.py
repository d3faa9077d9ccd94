"""Tests of the browser relay's traces: a browser's publish starts one, the hub continues it."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanKind

from redis_broker.testing import wait_for
from tests.otel import Captured, captured, ids, parent_id

from .helpers import receive, send, subscribe

__all__ = ["captured"]  # the fixture, imported to be found by pytest

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_browser_publish_starts_a_trace_that_the_hub_continues_once_per_process(
    captured: Captured, connect, make_user
) -> None:
    """Tests the relay: a producer span for the browser's publish, its context in the
    message, and one ``deliver`` span however many local sockets receive it."""
    sender, reader = await connect(await make_user("alice")), await connect(await make_user("bob"))
    await subscribe(sender, "chat.room1")
    await subscribe(reader, "chat.room1")
    await send(sender, {"action": "publish", "channel": "chat.room1", "data": {"text": "yo"}})
    assert (await receive(reader))["data"] == {"text": "yo"}
    assert (await receive(sender))["data"] == {"text": "yo"}
    wait_for(lambda: captured.named("deliver chat.room1"), message="the hub's span")
    (published,) = captured.named("broadcast chat.room1")
    (delivered,) = captured.named("deliver chat.room1")
    assert (published.kind, parent_id(published)) == (SpanKind.PRODUCER, 0)  # a new trace
    assert (delivered.kind, ids(delivered)[0], parent_id(delivered)) == (
        SpanKind.CONSUMER,
        *ids(published),
    )
    assert (delivered.attributes or {})["messaging.destination.name"] == "chat.room1"


async def test_a_server_broadcast_outside_any_span_costs_the_hub_no_span(
    captured: Captured, connect, make_user
) -> None:
    """Tests that an untraced message (headers, no ``traceparent``) starts no trace in the
    hub, and a traced one continues its trace there."""
    from redis_broker import abroadcast

    socket = await connect(await make_user("alice"))
    await subscribe(socket, "chat.lobby")
    await abroadcast("chat.lobby", {"n": 1}, headers={"sender_id": "1"})
    assert (await receive(socket))["data"] == {"n": 1}
    with captured.tracer.start_as_current_span("job") as job:
        await abroadcast("chat.lobby", {"n": 2})
    assert (await receive(socket))["data"] == {"n": 2}
    wait_for(lambda: captured.named("deliver chat.lobby"), message="the traced one's span")
    (delivered,) = captured.named("deliver chat.lobby")
    (sent,) = captured.named("broadcast chat.lobby")
    assert parent_id(sent) == ids(job)[1]  # type: ignore[arg-type]
    assert (ids(delivered)[0], parent_id(delivered)) == ids(sent)
