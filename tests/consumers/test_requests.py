"""Tests of request/reply: every via, errors that are not timeouts, crashes, deadlines."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from redis_broker import (
    NoResponders,
    Reject,
    RemoteError,
    Reply,
    RequestTimeout,
    arequest,
    publish,
    request,
)
from redis_broker.conf import get_config
from redis_broker.connection import aclose_async_redis
from redis_broker.consumers.message import StreamMessage
from redis_broker.consumers.registry import (
    ChannelConsumerSpec,
    ListConsumerSpec,
    StreamConsumerSpec,
)
from redis_broker.consumers.runner import ConsumerRunner
from redis_broker.requests import reply_fields, reset_inbox, responder_idle_ms
from redis_broker.testing import wait_for
from tests.helpers import single_node_only
from tests.testapp.consumers import HANDLED, QUOTES, attempts_key

from .helpers import Worker

pytestmark = pytest.mark.usefixtures("fast_consumers")


@pytest.fixture(autouse=True)
def fresh_inbox() -> Iterator[None]:
    """Give each test its own inbox reader, on this test's settings."""
    reset_inbox()
    yield
    reset_inbox()


def doubler(message: StreamMessage) -> Reply:
    """A sync responder: the payload doubled, and a header of its own."""
    return Reply(message.data * 2, headers={"by": "doubler"})


async def adoubler(message: StreamMessage) -> int:
    """An async responder."""
    return int(message.data) * 2


def test_replies_come_back_over_streams_channels_and_lists(
    serve: Callable[..., ConsumerRunner],
) -> None:
    """Tests the three vias, with sync and async callers and responders, headers included."""
    serve(
        StreamConsumerSpec(func=doubler, stream="rpc.s", group="g", name="s"),
        ChannelConsumerSpec(func=adoubler, pattern="rpc.c", name="c"),
        ListConsumerSpec(func=doubler, list="rpc.l", name="l"),
    )
    reply = request("rpc.s", 21, timeout=5, headers={"trace": "t"})
    assert (reply.data, reply.headers["by"], len(reply.event_id)) == (42, "doubler", 36)
    assert request("rpc.c", 4, via="channel").data == 8
    assert request("rpc.l", "ab", via="list").data == "abab"

    async def ask() -> list[Any]:
        try:
            replies = await asyncio.gather(
                arequest("rpc.s", 1),
                arequest("rpc.c", 2, via="channel"),
                arequest("rpc.l", 3, via="list"),
            )
        finally:
            await aclose_async_redis()  # this loop's client, before asyncio.run closes it
        return [r.data for r in replies]

    assert asyncio.run(ask()) == [2, 4, 6]


@pytest.mark.parametrize("via", ["stream", "channel", "list"])
def test_no_responders_is_raised_at_once_not_after_the_timeout(via: str) -> None:
    """Tests a stream without a group, a channel without a subscriber, an unwatched list."""
    started = time.monotonic()
    with pytest.raises(NoResponders, match="no one can answer"):
        request("nobody.home", {"q": 1}, timeout=5, via=via)
    assert time.monotonic() - started < 1.0  # at once: the timeout is 5 s


def test_a_stream_whose_group_has_no_recent_reader_has_no_responders(
    redis_client: redis.Redis,
) -> None:
    """Tests a group whose only consumer stopped reading long ago (a dead worker)."""
    redis_client.xgroup_create("stale", "g", id="0", mkstream=True)
    redis_client.xgroup_createconsumer("stale", "g", "gone")
    quiet_for = responder_idle_ms(get_config())  # 450 ms with the fast settings
    wait_for(
        lambda: redis_client.xinfo_consumers("stale", "g")[0]["idle"] > quiet_for,
        message="a consumer silent for longer than a live worker ever is",
    )
    with pytest.raises(NoResponders):
        request("stale", 1, timeout=5)
    assert redis_client.xlen("stale") == 0  # nothing was appended


@pytest.mark.parametrize(
    ("payload", "error_type"), [({"reject": True}, "Reject"), ({"fail_times": 99}, "RuntimeError")]
)
def test_a_handler_failing_for_good_raises_remote_error_at_once(
    serve: Callable[..., ConsumerRunner], payload: dict[str, Any], error_type: str
) -> None:
    """Tests ``Reject`` and spent retries: the caller gets the error, not a timeout."""
    failed_at: list[float] = []

    def handler(message: StreamMessage) -> None:
        if message.data.get("reject"):
            failed_at.append(time.time())
            raise Reject("no price for this one")
        if message.delivery_count >= 3:  # MAX_DELIVERIES in the fast settings
            failed_at.append(time.time())
        raise RuntimeError(f"planned failure {message.delivery_count}")

    serve(StreamConsumerSpec(func=handler, stream="rpc.fail", group="g", name="fail"))
    with pytest.raises(RemoteError) as raised:
        request("rpc.fail", payload, timeout=5)
    assert time.time() - failed_at[-1] < 1.0  # at once: the timeout is 5 s
    assert raised.value.type == error_type
    assert ("no price for this one" if error_type == "Reject" else "planned failure 3") in str(
        raised.value
    )


def test_a_slow_handler_is_a_request_timeout(serve: Callable[..., ConsumerRunner]) -> None:
    """Tests that only slowness turns into ``RequestTimeout``."""
    release = threading.Event()
    serve(
        StreamConsumerSpec(
            func=lambda m: release.wait(5), stream="rpc.slow", group="g", name="slow"
        )
    )
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        request("rpc.slow", 1, timeout=0.3)
    release.set()
    assert 0.3 <= time.monotonic() - started < 1.0


@single_node_only  # counts and kills connections of one server
def test_a_thousand_concurrent_requests_share_a_few_connections(
    redis_client: redis.Redis, serve: Callable[..., ConsumerRunner]
) -> None:
    """Tests 1,000 concurrent ``arequest`` calls: all answered, on at most 10 connections."""
    serve(ChannelConsumerSpec(func=adoubler, pattern="rpc.many", name="many", concurrency=64))
    # By id: connections of earlier tests closing meanwhile (an inbox reader notices its
    # stop within a second) must not hide the ones these calls open.
    before = {client["id"] for client in redis_client.client_list()}
    peak = 0

    async def ask() -> list[int]:
        nonlocal peak

        async def watch() -> None:
            nonlocal peak
            while True:
                opened = [c for c in redis_client.client_list() if c["id"] not in before]
                peak = max(peak, len(opened))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        try:
            replies = await asyncio.gather(
                *(arequest("rpc.many", n, via="channel", timeout=30) for n in range(1000))
            )
        finally:
            watcher.cancel()
            await aclose_async_redis()
        return [r.data for r in replies]

    assert asyncio.run(ask()) == [2 * n for n in range(1000)]
    assert 0 < peak <= 10, peak


def test_an_expired_request_is_acked_without_calling_the_handler(redis_client: redis.Redis) -> None:
    """Tests that a responder skips a request whose caller's deadline has passed."""
    calls: list[Any] = []
    publish(
        "rpc.late",
        {"q": 1},
        headers={"reply_to": "some:inbox", "correlation_id": "c1", "deadline": 1_000},
    )
    spec = StreamConsumerSpec(func=calls.append, stream="rpc.late", group="g", name="late")
    runner = ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None)
    assert runner.run() == 0
    assert calls == []
    assert runner.workers[0].stats.expired == 1
    assert redis_client.xpending("rpc.late", "g")["pending"] == 0
    assert not redis_client.exists("some:inbox")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_inside_the_handler_still_gets_the_caller_its_reply(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests at-least-once requests: kill -9 mid-call, another worker reclaims and answers."""
    victim = start_worker("quote")
    victim.wait_for_line("Running")
    answer: list[Any] = []
    caller = threading.Thread(
        target=lambda: answer.append(request(QUOTES, {"sku": "A1", "sleep_ms": 800}, timeout=8))
    )
    caller.start()
    wait_for(lambda: list(redis_client.scan_iter("test:attempts:*")), message="the call under way")
    victim.signal(signal.SIGKILL)
    victim.wait()
    rescuer = start_worker("quote")
    caller.join(timeout=10)
    assert answer and answer[0].data == {"sku": "A1", "price": 10}
    assert answer[0].headers == {"currency": "EUR"}
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait() == 0, rescuer.output


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@single_node_only  # counts and kills connections of one server
def test_a_reply_sent_while_the_callers_connection_was_killed_arrives(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests CLIENT KILL of the inbox reader mid-call: it reconnects and reads the reply."""
    worker = start_worker("quote")
    worker.wait_for_line("Running")
    request(QUOTES, {"sku": "warm"}, timeout=5)  # the inbox reader is up
    answer: list[Any] = []
    caller = threading.Thread(
        target=lambda: answer.append(request(QUOTES, {"sku": "B2", "sleep_ms": 500}, timeout=5))
    )
    caller.start()
    wait_for(lambda: redis_client.llen(HANDLED) >= 1, message="the warm-up handled")
    readers = [c for c in redis_client.client_list() if c.get("cmd") == "xread"]
    assert readers
    for reader in readers:
        redis_client.client_kill_filter(_id=reader["id"])
    caller.join(timeout=10)
    assert answer and answer[0].data == {"sku": "B2", "price": 10}
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output


def test_a_redelivered_request_is_answered_from_its_reply_record(redis_client: redis.Redis) -> None:
    """Tests the record of a sent reply: a reclaimed request is answered, not handled again."""
    calls: list[Any] = []
    publish(
        "rpc.again",
        {"q": 1},
        headers={"reply_to": "rpc:inbox", "correlation_id": "c9", "deadline": 10**13},
    )
    redis_client.xgroup_create("rpc.again", "g", id="0")
    redis_client.xreadgroup("g", "died-after-replying", {"rpc.again": ">"})
    sent = reply_fields(7, "c9")  # what the worker that died had sent and recorded
    redis_client.set("redis-broker:reply:c9", "rpc:inbox\n" + json.dumps(sent))
    wait_for(
        lambda: (
            redis_client.xpending_range("rpc.again", "g", "-", "+", 1)[0]["time_since_delivered"]
            >= 300
        ),
        message="idle past CLAIM_IDLE_MS",
    )
    spec = StreamConsumerSpec(func=calls.append, stream="rpc.again", group="g", name="again")
    runner = ConsumerRunner(specs=[spec], burst=True, relay_outbox=False, echo=lambda line: None)
    assert runner.run() == 0
    assert calls == []
    ((_, reply),) = redis_client.xrange("rpc:inbox")
    assert (reply["data"], '"c9"' in reply["headers"]) == ("7", True)
    assert redis_client.xpending("rpc.again", "g")["pending"] == 0


def test_no_reply_consumers_and_plain_messages_send_nothing(
    redis_client: redis.Redis, serve: Callable[..., ConsumerRunner]
) -> None:
    """Tests ``no_reply=True`` (the caller times out) and that a plain event gets no reply."""
    serve(StreamConsumerSpec(func=doubler, stream="rpc.quiet", group="g", name="q", no_reply=True))
    with pytest.raises(RequestTimeout):
        request("rpc.quiet", 1, timeout=0.3)
    assert [
        key for key in redis_client.scan_iter("redis-broker:inbox:*") if redis_client.xlen(key)
    ] == []
    assert redis_client.get(attempts_key("none")) is None


#: A responder written from the README's wire description alone: bash and redis-cli.
SHELL_RESPONDER = r"""
set -u
cli() { redis-cli -c -u "$URL" --raw "$@"; }
cli XGROUP CREATE rpc.shell sh '$' MKSTREAM >/dev/null 2>&1 || true
cli XGROUP CREATECONSUMER rpc.shell sh bash-1 >/dev/null
echo ready
while true; do
  reply=$(cli XREADGROUP GROUP sh bash-1 COUNT 1 BLOCK 1000 STREAMS rpc.shell '>')
  [ -z "$reply" ] && continue
  id=$(printf '%s\n' "$reply" | sed -n 2p)
  data=$(printf '%s\n' "$reply" | sed -n '/^data$/{n;p}')
  headers=$(printf '%s\n' "$reply" | sed -n '/^headers$/{n;p}')
  to=$(printf '%s' "$headers" | sed -n 's/.*"reply_to":"\([^"]*\)".*/\1/p')
  cid=$(printf '%s' "$headers" | sed -n 's/.*"correlation_id":"\([^"]*\)".*/\1/p')
  cli XADD "$to" '*' type '' data "{\"echo\":$data,\"by\":\"bash\"}" \
    event_id "bash-$id" published_at "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" \
    headers "{\"correlation_id\":\"$cid\",\"status\":\"ok\"}" >/dev/null
  cli XACK rpc.shell sh "$id" >/dev/null
done
"""

#: A requester likewise: it asks a @stream_consumer and prints the reply's fields.
SHELL_REQUESTER = r"""
set -eu
cli() { redis-cli -c -u "$URL" --raw "$@"; }
deadline=$(( $(date +%s%3N) + 10000 ))
cli XADD test.quote '*' type quote.ask data '{"sku":"Z9"}' event_id shell-1 \
  published_at "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" \
  headers "{\"reply_to\":\"shell:inbox\",\"correlation_id\":\"shell-cid\",\"deadline\":$deadline}" \
  >/dev/null
cli XREAD COUNT 1 BLOCK 8000 STREAMS shell:inbox 0
"""


def _shell(script: str, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", script],
        env={**os.environ, "URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli")
def test_a_responder_in_bash_with_redis_cli_answers_a_request(redis_broker_url: str) -> None:
    """Tests that the wire format is language-neutral: a shell loop answers ``request()``."""
    responder = _shell(SHELL_RESPONDER, redis_broker_url)
    try:
        assert responder.stdout is not None
        assert responder.stdout.readline().strip() == "ready"
        reply = request("rpc.shell", {"n": 5}, timeout=5)
        assert reply.data == {"echo": {"n": 5}, "by": "bash"}
        assert reply.event_id.startswith("bash-")
    finally:
        responder.kill()
        responder.communicate(timeout=10)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli")
def test_a_request_sent_with_redis_cli_is_answered_by_a_stream_consumer(
    redis_broker_url: str, start_worker: Callable[..., Worker]
) -> None:
    """Tests the other way round: a shell script's request gets the consumer's reply."""
    worker = start_worker("quote")
    worker.wait_for_line("Running")
    requester = _shell(SHELL_REQUESTER, redis_broker_url)
    output, _ = requester.communicate(timeout=15)
    assert requester.returncode == 0, output
    lines = output.splitlines()
    assert lines[lines.index("data") + 1] == '{"sku":"Z9","price":10}'
    headers = json.loads(lines[lines.index("headers") + 1])
    assert headers == {"currency": "EUR", "correlation_id": "shell-cid", "status": "ok"}
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_on_a_quiet_stream_still_answers_and_a_stopped_one_does_not(
    redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Tests the responder check: heartbeats, not the stream's last read, tell who is alive."""
    worker = start_worker("quote")
    worker.wait_for_line("Running")
    quiet_for = responder_idle_ms(get_config())
    wait_for(
        lambda: redis_client.xinfo_consumers(QUOTES, "pricing")[0]["idle"] > quiet_for,
        message="a stream quieter than the idle threshold",
    )
    assert request(QUOTES, {"sku": "Q1"}, timeout=5).data == {"sku": "Q1", "price": 10}
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output
    assert redis_client.xinfo_consumers(QUOTES, "pricing") == []  # it left its group
    started = time.monotonic()
    with pytest.raises(NoResponders):
        request(QUOTES, {"sku": "Q2"}, timeout=5)
    assert time.monotonic() - started < 1.0  # at once: the timeout is 5 s
