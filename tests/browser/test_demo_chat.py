"""The demo's chat in a real Chromium: authors and times, the signed-out state, missed
messages after a reconnect, and one readable notice per kind of refused publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import open_page, wait_subscribed

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MISSED = "Connection lost and restored: messages sent meanwhile may have been missed"


def open_lobby(page, server) -> None:
    """Open the lobby in ``page`` and wait until its chat subscription is live."""
    open_page(page, server, "/chat/lobby/")
    wait_subscribed(page, "chat.lobby")


def record_errors(page) -> None:
    """Keep the page's ``error`` events in ``window.errors``, to compare notices with."""
    page.evaluate("window.errors = []; window.broker.on('error', (f) => window.errors.push(f))")


def last_error_detail(page, code: str) -> str:
    """Return the ``detail`` of the last ``error`` event of ``code`` the page received."""
    return str(page.evaluate("(c) => window.errors.filter((f) => f.code === c).pop().detail", code))


def notice_count(page, code: str) -> int:
    """Return how many times the notice for error ``code`` was raised (0: none shown)."""
    notice = page.locator(f"#notices .notice[data-code='{code}']")
    return int(notice.get_attribute("data-count")) if notice.count() else 0


def test_chat_shows_the_relay_stamped_sender_and_not_a_name_the_page_forged(
    logged_in_page, daphne_server, demo_users, artifacts_dir: Path
) -> None:
    """Tests that bob sees alice as the author of her messages, with a time, even of one
    whose data claims another user: the name comes from the relay's ``sender`` stamp."""
    alice, bob = logged_in_page("alice"), logged_in_page("bob")
    for page in (alice, bob):
        open_lobby(page, daphne_server)
    alice.fill("#chat-input", "typed by alice")
    alice.click("#chat-send")
    alice.evaluate(
        "window.broker.publish('chat.lobby', {user: 'mallory', text: 'forged by alice'})"
    )
    forged = bob.locator("#messages li.chat-message", has_text="forged by alice")
    forged.wait_for()
    typed = bob.locator("#messages li.chat-message", has_text="typed by alice")
    assert typed.locator(".who").inner_text() == "alice"
    assert forged.locator(".who").inner_text() == "alice"
    assert "mallory" not in bob.inner_text("#messages")
    assert typed.locator("time").get_attribute("datetime")
    bob.screenshot(path=str(artifacts_dir / "chat-sender-stamped.png"))


def test_a_revoked_tab_shows_the_signed_out_state_and_disables_chat_input(
    logged_in_page, daphne_server, demo_users, artifacts_dir: Path
) -> None:
    """Tests that when alice logs out in another browser, her chat tab replaces her name
    with a link to log in again, explains why, and disables the chat input and button."""
    other, chat = logged_in_page("alice"), logged_in_page("alice")
    open_lobby(chat, daphne_server)
    other.wait_for_selector("#relay-status[data-state='open']")
    assert chat.locator("#chat-input").is_enabled()
    other.click("#logout")
    link = chat.locator("#signed-out")
    link.wait_for()
    assert link.inner_text() == "Signed out — log in again"
    assert link.get_attribute("href") == "/login/?next=/chat/lobby/"
    assert chat.locator("#whoami").count() == 0
    assert chat.locator("#logout").is_hidden()
    assert chat.locator("#signed-out-banner").is_visible()
    assert "You were signed out" in chat.inner_text("#signed-out-banner")
    assert chat.locator("#chat-input").is_disabled()
    assert chat.locator("#chat-send").is_disabled()
    chat.screenshot(path=str(artifacts_dir / "chat-signed-out.png"))


def test_a_reconnect_of_the_browsers_socket_shows_one_missed_messages_line(
    logged_in_page, daphne_server, demo_users, artifacts_dir: Path
) -> None:
    """Tests that when the page's own socket drops and reconnects, the chat shows one line
    saying messages may have been missed, and messages flow again afterwards."""
    alice, bob = logged_in_page("alice"), logged_in_page("bob")
    for page in (alice, bob):
        open_lobby(page, daphne_server)
    assert alice.locator("#messages li.missed").count() == 0
    alice.evaluate("window.broker.ws.close()")
    alice.wait_for_selector(f"#messages li.missed:has-text('{MISSED}')")
    wait_subscribed(alice, "chat.lobby")
    bob.fill("#chat-input", "after the drop")
    bob.click("#chat-send")
    alice.wait_for_selector("#messages li.chat-message:has-text('after the drop')")
    assert alice.locator("#messages li.missed").count() == 1
    assert bob.locator("#messages li.missed").count() == 0
    alice.screenshot(path=str(artifacts_dir / "chat-reconnected.png"))


def test_a_gap_after_the_relay_lost_redis_shows_the_missed_messages_line(
    logged_in_page, daphne_server, demo_users, redis_client
) -> None:
    """Tests that killing the relay's Pub/Sub connection in Redis (the hub reconnects and
    sends ``gap`` on the chat channel) shows the missed-messages line once."""
    page = logged_in_page("alice")
    open_lobby(page, daphne_server)
    gaps = []
    page.on("console", lambda message: gaps.append(message.text))
    page.evaluate("window.broker.on('gap', (c) => console.log('gap ' + c))")
    redis_client.client_kill_filter(_type="pubsub")
    page.wait_for_selector(f"#messages li.missed:has-text('{MISSED}')")
    assert "gap chat.lobby" in gaps
    assert page.locator("#messages li.missed").count() == 1


def test_a_burst_of_rate_limited_publishes_shows_one_notice_with_a_counter(
    logged_in_page, daphne_server, demo_users, artifacts_dir: Path
) -> None:
    """Tests that 200 publishes at once, most of them refused as ``rate_limited``, show one
    readable notice with the server's detail and a repeat counter, not a line each."""
    page = logged_in_page("alice")
    open_lobby(page, daphne_server)
    record_errors(page)
    page.evaluate(
        "for (let i = 0; i < 200; i++) window.broker.publish('chat.lobby', {text: 'burst ' + i})"
    )
    page.wait_for_function(
        "Number(document.querySelector(\"#notices .notice[data-code='rate_limited']\")"
        "?.dataset.count) >= 150"
    )
    notices = page.locator("#notices .notice")
    assert notices.count() == 1
    notice = notices.first
    count, repeat = notice.evaluate(
        "(n) => [n.dataset.count, n.querySelector('.repeat').textContent]"
    )
    assert repeat == f"×{count}"
    text = notice.inner_text()
    assert "You are sending too fast" in text
    detail = last_error_detail(page, "rate_limited")
    assert "20" in detail
    assert notice.locator(".detail").inner_text() == f"Server: {detail} · channel chat.lobby"
    assert "rate_limited" not in page.inner_text("#messages")
    page.screenshot(path=str(artifacts_dir / "chat-rate-limited.png"))


def test_frames_over_the_relays_and_the_pages_limits_share_one_too_large_notice(
    logged_in_page, daphne_server, demo_users, artifacts_dir: Path
) -> None:
    """Tests that a 100 kB publish (the relay answers ``too_large``) and a 2 MiB one (the
    page refuses it before sending) show one ``too_large`` notice counting two, each
    time with its reason, and that the socket stays open."""
    page = logged_in_page("alice")
    open_lobby(page, daphne_server)
    record_errors(page)
    page.evaluate("window.broker.publish('chat.lobby', {text: 'x'.repeat(100000)})")
    page.wait_for_function("document.querySelector(\"#notices .notice[data-code='too_large']\")")
    detail = last_error_detail(page, "too_large")
    assert "65536" in detail
    assert page.inner_text("#notices .detail").startswith(f"Server: {detail}")
    sent = page.evaluate("window.broker.publish('chat.lobby', {text: 'x'.repeat(2 * 1024 * 1024)})")
    assert sent is False
    assert notice_count(page, "too_large") == 2
    notice = page.locator("#notices .notice[data-code='too_large']")
    assert "That message is too large to send." in notice.inner_text()
    assert "not sent: the frame is 2097" in notice.inner_text()
    assert notice.locator(".repeat").inner_text() == "×2"
    assert page.evaluate("window.broker.state") == "open"
    assert page.locator("#messages li.missed").count() == 0
    page.screenshot(path=str(artifacts_dir / "chat-too-large.png"))


def test_a_frame_daphne_refuses_closes_with_1009_shows_too_large_and_reconnects(
    logged_in_page, daphne_server, demo_users
) -> None:
    """Tests that a 2 MiB frame sent past broker.js's check (straight on the socket) makes
    daphne close with 1009, which broker.js reports as ``too_large`` before reconnecting."""
    page = logged_in_page("alice")
    open_lobby(page, daphne_server)
    page.evaluate("window.broker.ws.send('x'.repeat(2 * 1024 * 1024))")
    page.wait_for_function("document.querySelector(\"#notices .notice[data-code='too_large']\")")
    assert "closed the connection because a frame was over its size limit" in page.inner_text(
        "#notices"
    )
    assert page.evaluate("window.broker.lastCloseCode") == 1009
    wait_subscribed(page, "chat.lobby")
    page.wait_for_selector(f"#messages li.missed:has-text('{MISSED}')")
