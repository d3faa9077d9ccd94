"""The AsyncAPI page in a real browser: Debian's Chromium through Playwright."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from redis_broker.publishers import publisher, registry

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_staff_open_the_page_fold_out_a_schema_and_no_markup_runs(
    browser: Any, live_server: Any, artifacts_dir: Path
) -> None:
    """Tests the page as a superuser sees it: reached from the overview's link, a
    message's schema folds out as indented JSON, and a publisher's markup never runs."""
    declared = publisher("xss.out", name="xss", description="<img src=x onerror=alert(1)>")
    User.objects.create_superuser("admin", "admin@example.com", "admin")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto(live_server.url + reverse("admin:redis_broker_broker_changelist"))
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin")
        page.click("input[type=submit]")
        page.click("#rb-asyncapi-link")
        page.wait_for_selector("#channels")
        row = page.locator("[id='channel-stream.demo.tickets']")
        fold = row.locator("details").first
        assert not fold.locator("pre").is_visible()
        fold.locator("summary").click()
        assert '"$ref": "#/components/schemas/' in fold.locator("pre").inner_text()
        assert page.locator("[id='operation-publish.xss']").inner_text().count("<img") == 1
        page.screenshot(path=str(artifacts_dir / "inspector-asyncapi.png"), full_page=True)
        assert dialogs == []
    finally:
        page.close()
        registry.unregister(declared.name)
