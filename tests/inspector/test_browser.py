"""The inspector in a real browser: Debian's Chromium through Playwright, on a live server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.urls import reverse

from redis_broker import wire
from redis_broker.models import OutboxEvent
from redis_broker.naming import processing_list_name
from redis_broker.outbox import OutboxRelay

from .helpers import DEAD_WORKER, DLQ, GROUP, LIST, STREAM, Seeded, write_relay_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@contextmanager
def admin_page(browser: Any, live_server: Any, path: str) -> Iterator[tuple[Any, list[str]]]:
    """Open ``path`` logged in as a new superuser; yield the page and the dialogs it opened.

    A dialog would mean a payload's markup ran as script: tests assert there is none.
    """
    User.objects.create_superuser("admin", "admin@example.com", "admin")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto(live_server.url + path)
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin")
        page.click("input[type=submit]")
        yield page, dialogs
    finally:
        page.close()


def test_superuser_browses_every_page_and_requeues_a_dead_letter(
    browser: Any,
    live_server: Any,
    seeded: Seeded,
    redis_client: redis.Redis,
    artifacts_dir: Path,
) -> None:
    """Tests the operator's path: log in, open every inspector page, requeue a dead letter."""
    redis_client.xadd(STREAM, {"data": '{"note": "<script>alert(1)</script>"}', "type": "xss"})
    overview = reverse("admin:redis_broker_broker_changelist")
    with admin_page(browser, live_server, overview) as (page, dialogs):
        page.wait_for_selector("#streams")
        assert page.locator(f"#streams a[href$='/streams/{STREAM}/']").is_visible()
        page.screenshot(path=str(artifacts_dir / "inspector-overview.png"), full_page=True)

        pages = {
            "stream": reverse("admin:redis_broker_stream", kwargs={"stream": STREAM}),
            "groups": reverse("admin:redis_broker_groups", kwargs={"stream": STREAM}),
            "pending": reverse(
                "admin:redis_broker_pending", kwargs={"stream": STREAM, "group": GROUP}
            ),
            "pubsub": reverse("admin:redis_broker_pubsub"),
            "outbox": reverse("admin:redis_broker_outbox"),
            "lists": reverse("admin:redis_broker_lists"),
            "dead-letters": reverse("admin:redis_broker_dead_letters", kwargs={"stream": STREAM}),
        }
        for name, path in pages.items():
            response = page.goto(live_server.url + path)
            assert response is not None and response.status == 200, name
            assert page.locator("#content h1").is_visible(), name
            page.screenshot(path=str(artifacts_dir / f"inspector-{name}.png"), full_page=True)

        # Still on the dead-letters page: requeue the oldest dead letter.
        assert dialogs == []  # the <script> payload on the stream page never ran
        page.check(f"input[name=ids][value='{seeded.dead[0]}']")
        page.click("input[value='Requeue selected…']")
        page.wait_for_selector("#selection")
        page.screenshot(path=str(artifacts_dir / "inspector-requeue-confirm.png"), full_page=True)
        page.click("input[type=submit][value^='Yes']")
        page.wait_for_selector(".messagelist .success")
        assert "Requeued 1 entry" in page.inner_text(".messagelist")
        page.screenshot(path=str(artifacts_dir / "inspector-requeued.png"), full_page=True)
    assert [entry_id for entry_id, _ in redis_client.xrange(DLQ)] == seeded.dead[1:]
    assert redis_client.xrevrange(STREAM, count=1)[0][1]["event_id"] == seeded.dead_event_ids[0]


def test_superuser_requeues_a_dead_workers_processing_list(
    browser: Any,
    live_server: Any,
    seeded: Seeded,
    redis_client: redis.Redis,
    artifacts_dir: Path,
) -> None:
    """Tests the lists page in a browser: a hostile item stays text, and the requeue works."""
    evil = wire.encode_message({"note": "<script>alert(1)</script>"}, type="xss")
    redis_client.lpush(processing_list_name(LIST, DEAD_WORKER), evil)
    with admin_page(browser, live_server, reverse("admin:redis_broker_lists")) as (page, dialogs):
        page.wait_for_selector("#list-1")
        assert "dead/expired" in page.inner_text("#list-1")
        assert "<script>alert(1)</script>" in page.inner_text("#list-1")  # shown as text
        page.screenshot(path=str(artifacts_dir / "inspector-lists.png"), full_page=True)
        page.click("#list-1 a:text('Requeue…')")
        page.wait_for_selector("input[type=submit][value^='Yes']")
        page.screenshot(
            path=str(artifacts_dir / "inspector-requeue-processing.png"), full_page=True
        )
        page.click("input[type=submit][value^='Yes']")
        page.wait_for_selector(".messagelist .success")
        assert "Moved 3 items" in page.inner_text(".messagelist")
    assert dialogs == []
    assert redis_client.lrange(LIST, 0, -1) == [evil, *seeded.taken, *seeded.items]


def test_operator_pages_of_issue_18_in_a_browser(
    browser: Any,
    live_server: Any,
    seeded: Seeded,
    redis_client: redis.Redis,
    artifacts_dir: Path,
) -> None:
    """Tests select-all and retry on the pending page, a dead letter's traceback, the outbox
    actions, a test message sent and a key that is not a stream, saving screenshots."""
    redis_client.xadd(
        DLQ,
        wire.dead_letter_fields(
            wire.encode_entry({"order": 7, "note": "<script>alert(1)</script>"}, type="order.paid"),
            original_stream=STREAM,
            original_id=seeded.ids[3],
            error="ValueError: card declined",
            delivery_count=5,
            traceback='Traceback (most recent call last):\n  File "shop/consumers.py", line 12, '
            "in charge\n    gateway.charge(order)\nValueError: card declined",
        ),
    )
    redis_client.rpush("shop.refunds", "a list where a stream should be")
    OutboxEvent.objects.create(
        stream="shop.refunds", fields=wire.encode_entry({"refund": 1}, type="refund.created")
    )
    with pytest.raises(redis.ResponseError):
        OutboxRelay().relay_batch()
    pending = reverse("admin:redis_broker_pending", kwargs={"stream": STREAM, "group": GROUP})
    with admin_page(browser, live_server, pending) as (page, dialogs):
        page.wait_for_selector("#pending")
        assert "order.created" in page.inner_text("#pending")
        page.check("#pending input.rb-select-all")
        boxes = page.locator("#pending tbody input[name=ids]")
        assert boxes.count() == 4
        assert all(boxes.nth(n).is_checked() for n in range(4))
        page.screenshot(path=str(artifacts_dir / "inspector-pending-previews.png"), full_page=True)
        page.click("input[value='Retry selected now…']")
        page.wait_for_selector("#selection")
        page.click("input[type=submit][value^='Yes']")
        page.wait_for_selector(".messagelist .success")
        assert "Marked 4 of 4" in page.inner_text(".messagelist")

        page.goto(
            live_server.url + reverse("admin:redis_broker_dead_letters", kwargs={"stream": STREAM})
        )
        page.click("#dead-letters details.rb-traceback summary")
        assert "gateway.charge(order)" in page.inner_text("#dead-letters")
        page.screenshot(
            path=str(artifacts_dir / "inspector-dead-letter-traceback.png"), full_page=True
        )

        page.goto(live_server.url + reverse("admin:redis_broker_outbox"))
        assert "is a list, not a stream" in page.inner_text("#outbox")
        page.screenshot(path=str(artifacts_dir / "inspector-outbox-actions.png"), full_page=True)
        page.click("#outbox .rb-key-link a")
        page.wait_for_selector("#key-facts")
        assert "“shop.refunds” is a list, not a stream." in page.inner_text("#missing")
        page.screenshot(path=str(artifacts_dir / "inspector-not-a-stream.png"), full_page=True)

        page.goto(live_server.url + reverse("admin:redis_broker_send") + f"?name={STREAM}")
        page.fill("#id_type", "order.test")
        page.fill("#id_payload", '{"order": 42}')
        page.screenshot(path=str(artifacts_dir / "inspector-send-message.png"), full_page=True)
        page.click("#send-form input[type=submit]")
        page.wait_for_selector(".messagelist .success")
        assert f"to stream {STREAM} as entry" in page.inner_text(".messagelist")
        page.screenshot(path=str(artifacts_dir / "inspector-send-message-sent.png"), full_page=True)
    assert dialogs == []
    assert redis_client.xrevrange(STREAM, count=1)[0][1]["type"] == "order.test"
    _, claimed, _ = redis_client.xautoclaim(STREAM, GROUP, "w2", min_idle_time=60_000)
    assert [entry_id for entry_id, _ in claimed] == seeded.pending


def test_superuser_sees_the_browser_relay_and_confirms_a_disconnect(
    browser: Any, live_server: Any, redis_broker_url: str, artifacts_dir: Path
) -> None:
    """The Pub/Sub page's relay section lists processes, users and channels, and its
    Disconnect button leads to a confirmation page (screenshots of both for review)."""
    alice = str(User.objects.create_user("alice", password="alice").pk)
    bob = str(User.objects.create_user("bob", password="bob").pk)
    # On a thread: Playwright's sync API keeps an event loop running on this one.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(
            write_relay_status,
            redis_broker_url,
            "web1-4242-aaaaaa",
            users={(alice, "alice"): 2, (bob, "bob"): 1},
        ).result()
        thread.submit(
            write_relay_status,
            redis_broker_url,
            "web2-77-bbbbbb",
            sockets=1,
            users={(alice, "alice"): 1},
            channels={"chat.lobby": 1},
        ).result()
    with admin_page(browser, live_server, reverse("admin:redis_broker_pubsub")) as (page, dialogs):
        page.wait_for_selector("text=Browser relay")
        page.screenshot(path=str(artifacts_dir / "inspector-relay.png"), full_page=True)
        page.get_by_role("link", name="Disconnect").first.click()
        page.wait_for_url("**/disconnect/")
        assert page.get_by_text("alice").first.is_visible()
        page.screenshot(path=str(artifacts_dir / "inspector-relay-disconnect.png"), full_page=True)
    assert dialogs == []
