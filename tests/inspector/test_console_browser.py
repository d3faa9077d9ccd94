"""The live console in a real browser (Debian's Chromium): pages that refresh themselves,
the workers page following a real ``runconsumers`` process, search and bulk requeue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from redis_broker import wire
from redis_broker.inspector import views
from tests.consumers.helpers import Worker

from .helpers import DLQ, STREAM, Seeded
from .test_browser import admin_page
from .test_console import dead_letters, fill

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LENGTH = 'tr[data-rb-stream="orders"] [data-rb-field="length"]'


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the live pages poll every 500 ms (the live server runs in this process)."""
    monkeypatch.setattr(views, "POLL_MS", 500)


def test_overview_updates_its_figures_and_charts_without_reloading(
    browser: Any,
    live_server: Any,
    seeded: Seeded,
    redis_client: redis.Redis,
    artifacts_dir: Path,
    fast_polls: None,
) -> None:
    """Tests that entries published while the overview is open show up in its table and
    charts, and that the page was never reloaded (a variable set after load survives)."""
    overview = reverse("admin:redis_broker_broker_changelist")
    with admin_page(browser, live_server, overview) as (page, dialogs):
        page.wait_for_selector(LENGTH)
        page.evaluate("window.rbLoadMarker = 'set after load'")
        assert page.inner_text(LENGTH) == "10"
        for _ in range(5):
            polls = page.evaluate("window.rbConsole.polls")
            fill(redis_client, STREAM, 40)
            page.wait_for_function("n => window.rbConsole.polls > n + 1", arg=polls)
        page.wait_for_function(
            f"() => document.querySelector('{LENGTH}').textContent === '210'", timeout=10_000
        )
        assert page.evaluate("window.rbLoadMarker") == "set after load"
        assert page.evaluate("window.rbConsole.errors") == 0
        chart = page.locator('[data-rb-chart="orders"]')
        assert chart.locator("canvas").count() == 2  # throughput and lag
        assert "entries/s" in chart.inner_text() and "billing" in chart.inner_text()
        assert "Live: updated" in page.inner_text("[data-rb-status]")
        page.screenshot(path=str(artifacts_dir / "console-overview-charts.png"), full_page=True)
    assert dialogs == []


def test_workers_page_lists_a_running_worker_and_drops_it_once_killed(
    browser: Any,
    live_server: Any,
    redis_client: redis.Redis,
    redis_broker_url: str,
    artifacts_dir: Path,
    fast_polls: None,
) -> None:
    """Tests the workers page against a real ``runconsumers``: it appears with its stream and
    a stuck call in flight, then leaves by itself after ``kill -9`` (its heartbeat expires)."""
    worker = Worker("scripted", redis_url=redis_broker_url, HEARTBEAT_INTERVAL=0.3)
    try:
        with admin_page(browser, live_server, reverse("admin:redis_broker_workers")) as (
            page,
            dialogs,
        ):
            page.evaluate("window.rbLoadMarker = 'set after load'")
            row = page.locator("tr[data-rb-worker]")
            row.wait_for(timeout=20_000)
            assert f"pid {worker.pid}" in row.inner_text()
            assert "test.orders" in row.inner_text() and "workers" in row.inner_text()
            redis_client.xadd("test.orders", wire.encode_entry({"stuck": True}, type="t"))
            page.wait_for_function(
                "() => document.querySelector('tr[data-rb-worker] td.rb-num')"
                ".textContent.trim() === '1'",
                timeout=15_000,
            )
            page.screenshot(path=str(artifacts_dir / "console-workers.png"), full_page=True)
            worker.process.kill()
            worker.process.wait(timeout=10)
            row.wait_for(state="detached", timeout=15_000)
            assert "No live worker" in page.inner_text("#workers")
            assert page.evaluate("window.rbLoadMarker") == "set after load"
            page.screenshot(path=str(artifacts_dir / "console-workers-gone.png"), full_page=True)
        assert dialogs == []
    finally:
        worker.stop()


def test_search_finds_an_entry_by_event_id_and_search_older_continues(
    browser: Any, live_server: Any, redis_client: redis.Redis, artifacts_dir: Path
) -> None:
    """Tests the search page: the oldest of 20,000 entries by event id, then a payload search
    whose small window stops early and continues with "Search older"."""
    entries = fill(redis_client, STREAM, 20_000)
    search = reverse("admin:redis_broker_search", kwargs={"stream": STREAM})
    with admin_page(browser, live_server, search) as (page, dialogs):
        page.fill("#id_q", entries[0][1])
        page.click("#search-form input[type=submit]")
        page.wait_for_selector("#results")
        assert entries[0][0] in page.inner_text("#results")
        assert "1 match" in page.inner_text("#search-summary")
        page.screenshot(path=str(artifacts_dir / "console-search.png"), full_page=True)
        page.fill("#id_q", "item-1")  # item-1, item-10…19, item-100…: thousands match
        page.select_option("#id_by", "payload")
        page.click("#search-form input[type=submit]")
        page.wait_for_selector("#search-older")
        assert "stopped after 50 matches" in page.inner_text("#search-summary")
        first = page.locator("#results td.rb-id a").all_inner_texts()
        page.click("#search-older")
        page.wait_for_selector("text=below the previous search")
        second = page.locator("#results td.rb-id a").all_inner_texts()
        assert len(first) == len(second) == 50
        key = wire.entry_id_key
        assert max(map(key, second)) < min(map(key, first))  # strictly older, no overlap
    assert dialogs == []


def test_bulk_requeue_of_1000_matching_dead_letters_in_the_browser(
    browser: Any, live_server: Any, redis_client: redis.Redis, artifacts_dir: Path
) -> None:
    """Tests search, "Requeue all matching…", the confirmation and the admin log entry."""
    dead_letters(redis_client, 1000, error="TimeoutError: slow")
    dead_letters(redis_client, 3, error="ValueError: bad")
    page_url = reverse("admin:redis_broker_dead_letters", kwargs={"stream": STREAM})
    with admin_page(browser, live_server, page_url) as (page, dialogs):
        page.fill("#id_q", "TimeoutError")
        page.select_option("#id_by", "error")
        page.click("#search-form input[type=submit]")
        page.wait_for_selector("#search-summary")
        page.click("#requeue-all")
        page.wait_for_selector("#selection")
        assert f"Requeue 1,000 dead letters of {DLQ} whose error contains" in page.inner_text(
            "#content"
        )
        page.screenshot(path=str(artifacts_dir / "console-bulk-confirm.png"), full_page=True)
        page.click("input[type=submit][value^='Yes']")
        page.wait_for_selector(".messagelist .success")
        assert f"Requeued 1,000 dead letters of {DLQ}" in page.inner_text(".messagelist")
        page.screenshot(path=str(artifacts_dir / "console-bulk-done.png"), full_page=True)
    assert dialogs == []
    assert redis_client.xlen(STREAM) == 1000 and redis_client.xlen(DLQ) == 3
    assert LogEntry.objects.get().object_repr == (
        f"Requeued 1,000 dead letters of {DLQ} to {STREAM}"
    )
