"""The overview's streams come in pages that follow Redis's SCAN order, on a single Redis
and on a cluster (``--redis-broker-cluster``): every stream once, bad cursors refused."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.test import Client

from redis_broker import wire
from redis_broker.conf import get_config
from redis_broker.connection import get_redis
from redis_broker.inspector import nodes, queries

from .helpers import DLQ, STREAM, snapshot, url

pytestmark = pytest.mark.django_db

OVERVIEW = url("broker_changelist")


def add_streams(client: redis.Redis, names: list[str]) -> None:
    """Create one stream of one entry per name, pipelined (per master on a cluster)."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xadd(name, {"data": "1"})
    pipe.execute()


def many(count: int, stem: str = "s") -> list[str]:
    """Return ``count`` stream names."""
    return [f"{stem}.{n:04d}" for n in range(count)]


def walk(client: Client, **params: Any) -> list[list[str]]:
    """Follow the overview's "Next page" links from the first page; return each page's names.

    Each page is checked on the way: a 200, its number, and a next link in its HTML
    exactly when there is a next page.
    """
    pages: list[list[str]] = []
    response = client.get(OVERVIEW, params)
    while True:
        assert response.status_code == 200
        assert response.context["page_number"] == len(pages) + 1
        assert not response.context["problem"]
        pages.append([s.name for s in response.context["listing"].streams])
        next_url = response.context["next_url"]
        assert ('id="rb-next-page"' in response.content.decode()) == (next_url is not None)
        if next_url is None:
            return pages
        assert len(pages) < 100, "the walk does not end"
        response = client.get(next_url)


def test_walking_the_pages_lists_every_stream_exactly_once(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that 250 streams, 50 a page, come in about five pages, each sorted by name,
    together every stream once; that a stream's dead letters are counted whatever page
    lists them; and that paging writes nothing."""
    names = many(250)
    add_streams(redis_client, names)
    redis_client.xadd(STREAM, {"data": "1"})
    redis_client.xadd(DLQ, {"data": "1"})
    redis_client.xadd(DLQ, {"data": "2"})
    before = snapshot(redis_client)
    pages = walk(admin_client, count=50)
    assert snapshot(redis_client) == before
    seen = Counter(name for page in pages for name in page)
    assert set(seen) == {*names, STREAM, DLQ}
    assert set(seen.values()) == {1}
    assert 4 <= len(pages) <= 7, [len(page) for page in pages]
    assert all(page == sorted(page) for page in pages)
    # SCAN returns whole hash buckets, so a page may end a few streams past 50.
    sizes = [len(page) for page in pages]
    assert all(size >= 50 for size in sizes[:-1]) and max(sizes) <= 80, sizes
    found = queries.stream_page(get_redis(), prefix="", dead_letter_suffix=":dlq", count=300)
    [orders] = [s for s in found.streams if s.name == STREAM]
    assert orders.dead_letters == 2


def test_a_page_reads_about_a_page_of_keys_not_the_keyspace(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that the first page's SCAN calls look at far fewer keys than the 250 streams
    there are: a page costs its size, not the keyspace's."""
    add_streams(redis_client, many(250))
    listing = admin_client.get(OVERVIEW, {"count": 50}).context["listing"]
    assert listing.full and listing.truncated
    assert listing.looked_at < 150, listing.looked_at
    assert listing.calls <= 4


def test_a_page_that_spends_its_scan_budget_stops_short_and_the_next_goes_on(
    redis_client: redis.Redis,
) -> None:
    """Tests that among 3,000 other keys a page stops after its SCAN calls with what it
    found (maybe nothing), and that following its cursor still finds every stream."""
    pipe = redis_client.pipeline(transaction=False)
    for n in range(3000):
        pipe.set(f"other.{n}", "x")
    pipe.execute()
    names = many(5)
    add_streams(redis_client, names)
    client = get_redis()
    patterns = nodes.key_patterns("")
    page = nodes.scan_page(client, patterns=patterns, type_="stream", want=5, max_calls=1)
    assert len(page.steps) == 1 and page.next is not None and len(page.keys) < 5
    found = list(page.keys)
    while page.next is not None:
        page = nodes.scan_page(
            client, patterns=patterns, type_="stream", want=5, start=page.next, max_calls=1
        )
        found.extend(page.keys)
    assert sorted(key.decode() for key in found) == names


def test_the_name_filter_pages_through_matching_streams_only(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that "Name contains" keeps only streams with that text in their name, on
    every page, and that glob characters in it are taken literally."""
    orders = many(120, "orders")
    add_streams(redis_client, [*orders, *many(60, "billing"), "odd*name", "odd?name"])
    pages = walk(admin_client, q="orders", count=50)
    assert len(pages) >= 2
    assert sorted(name for page in pages for name in page) == orders
    assert walk(admin_client, q="*") == [["odd*name"]]
    response = admin_client.get(OVERVIEW, {"q": "orders", "count": 50})
    assert "whose name contains “orders”" in response.content.decode()
    assert "q=orders" in response.context["next_url"]


BAD_CURSORS = [
    "garbage",
    "0-abc",
    "-1-5",
    "0-99999999999999999999",  # past 2**64
    "7-0",  # no such master
    "0-0-deadbeef",  # another cluster's, or a cluster's on a single Redis
    "0-" + "1" * 200,  # longer than any cursor
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_bad_cursor_shows_the_first_page_with_a_clear_message(
    admin_client: Client, redis_client: redis.Redis, cursor: str
) -> None:
    """Tests that a cursor this Redis did not hand out gives the first page (200, not a
    500) with a message saying the page starts over."""
    add_streams(redis_client, many(120))
    first = walk(admin_client, count=50)[0]
    response = admin_client.get(OVERVIEW, {"cursor": cursor, "count": 50, "page": 4})
    assert response.status_code == 200
    assert "The page starts over." in response.context["problem"]
    assert 'id="rb-page-problem"' in response.content.decode()
    shown = [s.name for s in response.context["listing"].streams]
    # The first page again: SCAN's order moves when another key is written meanwhile (a
    # worker's heartbeat on a shared test cluster can make Redis resize its table).
    again = walk(admin_client, count=50)[0]
    assert shown in (first, again)
    assert response.context["page_number"] == 1


def test_other_bad_parameters_are_left_out_and_named(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that a page size or page number the page does not offer is ignored (the
    default size, page 1) and named in the message, never a 500."""
    add_streams(redis_client, many(3))
    response = admin_client.get(OVERVIEW, {"count": 7, "page": "-2"})
    assert response.status_code == 200
    assert response.context["problem"] == (
        "This link's count and page could not be read and were left out."
    )
    assert len(response.context["listing"].streams) == 3


def test_a_cluster_cursor_from_other_masters_is_refused(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that a cursor whose masters' fingerprint is not this Redis's is refused: on a
    cluster it says the masters changed (a failover), on a single Redis it is no cursor."""
    add_streams(redis_client, many(3))
    client = get_redis()
    response = admin_client.get(OVERVIEW, {"cursor": "0-0-0badf00d"})
    if get_config().cluster:
        assert nodes.topology(client) and nodes.topology(client) != "0badf00d"
        assert "The cluster's masters changed" in response.context["problem"]
        good = nodes.format_cursor(client, (1, 0))
        assert good.endswith("-" + nodes.topology(client))
        assert nodes.parse_cursor(client, good) == (1, 0)
    else:
        assert nodes.topology(client) == ""
        assert "not one this page wrote" in response.context["problem"]
        assert nodes.parse_cursor(client, "0-5") == (0, 5)


def test_the_live_poll_repeats_the_page_it_was_given(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that the live endpoint, given a later page's span, answers exactly that
    page's streams, and that a span it did not hand out is a JSON 400, not a 500."""
    add_streams(redis_client, many(150))
    first = admin_client.get(OVERVIEW, {"count": 50})
    second = admin_client.get(first.context["next_url"])
    names = [s.name for s in second.context["listing"].streams]
    live = admin_client.get(second.context["live_url"])
    assert live.status_code == 200
    assert [s["name"] for s in live.json()["streams"]] == names
    assert second.context["live_url"] in second.content.decode().replace("&amp;", "&")
    for span in ("nonsense", "0-0-1001", "_".join(["0-0-10"] * 51), "0-0-10_0badf00d"):
        response = admin_client.get(url("overview_live"), {"span": span})
        assert response.status_code == 400, span
        assert "error" in response.json()


def test_names_and_the_filter_are_escaped_on_the_page(
    admin_client: Client, redis_client: redis.Redis
) -> None:
    """Tests that a hostile stream name and a hostile filter text are shown escaped."""
    evil = "<img src=x onerror=alert(1)>"
    add_streams(redis_client, [evil, "<b>bold</b>"])
    body = admin_client.get(OVERVIEW).content.decode()
    assert evil not in body and "<b>bold</b>" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    needle = '"><script>alert(2)</script>'
    body = admin_client.get(OVERVIEW, {"q": needle}).content.decode()
    assert "<script>alert(2)" not in body
    assert "&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in body


@pytest.mark.parametrize("name", ["broker_changelist", "overview_live"])
def test_paging_still_needs_the_view_permission(
    user_client: Callable[..., Client], viewer: Client, redis_client: redis.Redis, name: str
) -> None:
    """Tests that a later page and its live poll answer 403 to staff without view_broker,
    send anonymous users to the login, and answer a viewer."""
    add_streams(redis_client, many(120))
    first = viewer.get(OVERVIEW, {"count": 50})
    params = {"cursor": first.context["listing"].next_cursor, "count": 50, "page": 2}
    if name == "overview_live":
        params = {"span": first.context["listing"].span}
    assert user_client().get(url(name), params).status_code == 403
    anonymous = Client().get(url(name), params)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    assert viewer.get(url(name), params).status_code == 200


def test_dead_letters_of_a_stream_on_another_page_are_still_counted(
    redis_client: redis.Redis,
) -> None:
    """Tests that a stream's dead-letter count comes from its own read, not from its
    dead-letter stream being listed on the same page."""
    redis_client.xadd(STREAM, wire.encode_entry({"n": 1}, type="t"))
    for n in range(3):
        redis_client.xadd(DLQ, {"data": str(n)})
    client = get_redis()
    [orders] = queries.read_summaries(
        client, prefix="", keys=[STREAM.encode()], dead_letter_suffix=":dlq"
    )
    assert orders.dead_letters == 3
