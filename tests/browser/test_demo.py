"""The demo in a real Chromium: chat between two users, notifications, logout revocation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, manage, subprocess_env

from .helpers import wait_subscribed

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_two_users_chat_in_a_room(logged_in_page, demo_users, artifacts_dir: Path) -> None:
    """Tests that alice and bob, in two browser contexts, each see the other's message."""
    alice, bob = logged_in_page("alice"), logged_in_page("bob")
    for page in (alice, bob):
        page.goto(page.url.rsplit("/", 1)[0] + "/chat/lobby/")
        wait_subscribed(page, "chat.lobby")
    alice.fill("#chat-input", "hello bob <b>not bold</b>")
    alice.click("#chat-send")
    bob.wait_for_selector("#messages li.chat-message:has-text('hello bob')")
    bob.fill("#chat-input", "hi alice")
    bob.press("#chat-input", "Enter")
    alice.wait_for_selector("#messages li.chat-message:has-text('hi alice')")
    assert bob.locator("#messages b").count() == 0  # the payload was shown as text
    assert "<b>not bold</b>" in bob.inner_text("#messages")
    assert alice.locator("#messages li.chat-message").count() == 2
    alice.screenshot(path=str(artifacts_dir / "chat-alice.png"))
    bob.screenshot(path=str(artifacts_dir / "chat-bob.png"))


def test_logout_in_one_context_closes_the_users_socket_in_another(
    logged_in_page, demo_users, artifacts_dir: Path
) -> None:
    """Tests that logging out in one browser closes the same user's socket in the other."""
    first, second = logged_in_page("alice"), logged_in_page("alice")
    other = logged_in_page("bob")
    for page in (first, second, other):
        page.wait_for_selector("#relay-status[data-state='open']")
    first.click("#logout")
    second.wait_for_selector("#relay-status[data-state='revoked']")
    assert second.evaluate("window.broker.closeCode") == 4001
    assert other.get_attribute("#relay-status", "data-state") == "open"
    second.screenshot(path=str(artifacts_dir / "logout-revoked.png"))


def test_model_change_in_another_process_notifies_its_owner_only(
    logged_in_page, demo_users, artifacts_dir: Path
) -> None:
    """Tests that a Ticket saved by another process reaches its owner's bell through the
    stream consumer, and not the other user's."""
    from demo_site.demo.models import Ticket

    alice_user, bob_user = demo_users["alice"], demo_users["bob"]
    ticket = Ticket.objects.create(owner=alice_user, title="Printer on fire")
    bobs = Ticket.objects.create(owner=bob_user, title="Coffee machine empty")
    env = subprocess_env()
    consumers = manage("runconsumers", "notify", env=env)
    try:
        alice, bob = logged_in_page("alice"), logged_in_page("bob")
        wait_subscribed(alice, f"user.{alice_user.pk}")
        wait_subscribed(bob, f"user.{bob_user.pk}")
        change = (
            "import django; django.setup()\n"
            "from demo_site.demo.models import Ticket\n"
            f"t = Ticket.objects.get(pk={ticket.pk}); t.status = 'resolved'; t.save()\n"
            f"t = Ticket.objects.get(pk={bobs.pk}); t.status = 'in_progress'; t.save()\n"
        )
        subprocess.run([sys.executable, "-c", change], cwd=ROOT, env=env, check=True, timeout=60)
        alice.wait_for_selector(
            "#notifications li.notification:has-text('Printer on fire'):has-text('Resolved')",
            state="attached",
        )
        assert int(alice.inner_text("#bell-count")) >= 1
        alice.click("#bell")
        alice.screenshot(path=str(artifacts_dir / "notification-alice.png"))
        # Bob's own notification was published after alice's, on the same stream, to the
        # same consumer: once it is there, a misrouted copy of alice's would be too.
        bob.wait_for_selector(
            "#notifications li.notification:has-text('Coffee machine'):has-text('In progress')",
            state="attached",
        )
        assert "Printer" not in (bob.text_content("#notifications") or "")
        assert "Coffee" not in (alice.text_content("#notifications") or "")
    finally:
        consumers.terminate()
        try:
            consumers.wait(timeout=30)
        except subprocess.TimeoutExpired:
            consumers.kill()
        assert consumers.stdout is not None
        consumers.stdout.close()
