"""The inspector in a real browser: Debian's Chromium through Playwright, on a live server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.urls import reverse

from .helpers import DLQ, GROUP, STREAM, Seeded

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_superuser_browses_every_page_and_requeues_a_dead_letter(
    browser: Any,
    live_server: Any,
    seeded: Seeded,
    redis_client: redis.Redis,
    artifacts_dir: Path,
) -> None:
    """Tests the operator's path: log in, open every inspector page, requeue a dead letter."""
    User.objects.create_superuser("admin", "admin@example.com", "admin")
    redis_client.xadd(STREAM, {"data": '{"note": "<script>alert(1)</script>"}', "type": "xss"})
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto(live_server.url + reverse("admin:redis_broker_broker_changelist"))
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin")
        page.click("input[type=submit]")
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
    finally:
        page.close()
    assert [entry_id for entry_id, _ in redis_client.xrange(DLQ)] == seeded.dead[1:]
    assert redis_client.xrevrange(STREAM, count=1)[0][1]["event_id"] == seeded.dead_event_ids[0]
