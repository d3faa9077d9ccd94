"""The demo's consumers, one of each kind, run by ``manage.py runconsumers``.

* ``notify`` (stream): ``Ticket.save()`` -> ``demo.tickets`` stream (model events) ->
  ``broadcast("user.<owner>")`` -> the owner's open tabs.
* ``track_presence`` (channel): chat pages announce themselves on ``presence.<room>``;
  it keeps who is there and broadcasts the list on ``online.<room>``.
* ``send_email`` (list): the tickets view ``push()``es an e-mail job to ``demo.emails``;
  it sends the mail and rings the recipient's bell.
* ``price_quote`` (stream, request/reply): the quote page ``request()``s a price on
  ``demo.quotes`` and waits for the return value.

Each declares the type of what it reads (``events.py``) and sends through a declared
publisher (``publishers.py``), so ``manage.py asyncapi`` documents both. Only
``price_quote`` answers requests; the others say so with ``no_reply=True``.
"""

import re
import time
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.urls import reverse

from redis_broker import (
    Reject,
    Reply,
    StreamMessage,
    channel_consumer,
    get_redis,
    list_consumer,
    stream_consumer,
)

from .events import (
    EmailJob,
    EmailNotification,
    OnlineUsers,
    Presence,
    QuoteRequest,
    TicketEvent,
    TicketNotification,
)
from .publishers import email_notifications, online_users, ticket_notifications
from .views import PRESENCE_HEARTBEAT, QUOTE_TIMEOUT, email_address

STATUS_LABELS = {"open": "Open", "in_progress": "In progress", "resolved": "Resolved"}
#: A page not heard from for this long has gone (it missed two heartbeats).
PRESENCE_TIMEOUT = 3 * PRESENCE_HEARTBEAT
#: The price list of ``price_quote``: SKU -> (product, unit price in euros).
PRICES = {
    "A1": ("Espresso cup", Decimal("4.50")),
    "B2": ("Teapot", Decimal("24.00")),
    "C3": ("Coffee grinder", Decimal("89.90")),
    "Z9": ("Made-to-order table (slow to price)", Decimal("640.00")),
}
#: SKUs whose price takes longer to work out than the quote page waits.
SLOW_SKUS = {"Z9"}
#: From this many items on, a quote is 10% off.
BULK_QUANTITY = 10


@stream_consumer("demo.tickets", group="notifier", schema=TicketEvent, no_reply=True)
def notify(message: StreamMessage) -> None:
    """Tell a ticket's owner that it was created, changed or deleted."""
    fields = message.data.get("fields", {})
    owner_id = fields.get("owner")
    if owner_id is None:
        return
    action = message.type.rsplit(".", 1)[-1]
    status = STATUS_LABELS.get(fields.get("status"), fields.get("status"))
    pk = message.data.get("pk")
    ticket_notifications.publish(
        TicketNotification(
            kind="ticket",
            ticket=pk,
            title=fields.get("title", ""),
            status=fields.get("status"),
            text=f"Ticket “{fields.get('title', '')}” {action}: {status}",
            # The bell links each notification here; the tickets page highlights the row.
            url=reverse("tickets") + (f"#ticket-{pk}" if action != "deleted" else ""),
        ),
        user_id=owner_id,
    )


@channel_consumer("presence.{room}", schema=Presence, no_reply=True)
def track_presence(message: StreamMessage, room: str) -> None:
    """Record a chat page's join, heartbeat or leave; broadcast who is in ``room``.

    A room is a sorted set of open pages (``<username>/<page id>``) scored by when each
    was last heard from, so closing one of two tabs leaves the user online. The user is
    read from ``message.type``, which the relay sets (``browser.user.<pk>``), never from
    the data a page chose. Pub/Sub is at most once: a lost heartbeat costs nothing, the
    next one comes soon, and a lost leave expires after ``PRESENCE_TIMEOUT``.
    """
    sender = re.fullmatch(r"browser\.user\.(\d+)", message.type)
    if sender is None:
        return  # not sent from a logged-in browser
    users = get_user_model().objects.filter(pk=sender[1])
    username = users.values_list("username", flat=True).first()
    if username is None:
        return
    data = message.data if isinstance(message.data, dict) else {}
    key, member = f"demo:online:{room}", f"{username}/{data.get('page', '')}"[:100]
    now = time.time()
    pipe = get_redis().pipeline()
    if data.get("event") == "leave":
        pipe.zrem(key, member)
    else:
        pipe.zadd(key, {member: now})
    pipe.zremrangebyscore(key, "-inf", now - PRESENCE_TIMEOUT)
    pipe.expire(key, PRESENCE_TIMEOUT)
    pipe.zrange(key, 0, -1)
    online = sorted({page.decode().split("/")[0] for page in pipe.execute()[-1]})
    online_users.publish(OnlineUsers(users=online), room=room)


@list_consumer("demo.emails", schema=EmailJob, no_reply=True)
def send_email(message: StreamMessage) -> None:
    """Send one queued e-mail; an exception retries it, then dead-letters it.

    The job stays in this worker's processing list until the function returns; if the
    worker dies mid-send, a live one puts the job back in the queue (at least once: a
    mail may go out twice). Retries and ``demo.emails:dlq`` work as for streams;
    ``Reject`` skips the retries for a job that can never succeed.
    """
    job = message.data
    user = get_user_model().objects.filter(pk=job["user"]).first()
    if user is None:
        raise Reject(f"no user {job['user']!r}")
    send_mail(job["subject"], job["body"], None, [email_address(user)])
    email_notifications.publish(
        EmailNotification(
            kind="email",
            subject=job["subject"],
            body=job["body"],
            text=f"E-mail sent: {job['subject']}",
            url=reverse("emails"),
        ),
        user_id=user.pk,
    )


@stream_consumer("demo.quotes", group="pricing", schema=QuoteRequest)
def price_quote(message: StreamMessage) -> Reply:
    """Price ``quantity`` items of ``sku``: the return value is the caller's reply.

    The quote page calls ``request("demo.quotes", ...)`` and waits. ``Reject`` fails the
    request for good: the caller gets ``RemoteError`` with this message at once, instead
    of waiting for a timeout. The currency travels as a reply header.
    """
    data = message.data if isinstance(message.data, dict) else {}
    sku, quantity = str(data.get("sku", "")), data.get("quantity")
    if sku not in PRICES:
        raise Reject(f"unknown product {sku!r}")
    if not isinstance(quantity, int) or quantity < 1:
        raise Reject(f"the quantity must be a positive whole number, not {quantity!r}")
    if sku in SLOW_SKUS:
        time.sleep(QUOTE_TIMEOUT + 1)  # the page gives up first: RequestTimeout
    name, unit_price = PRICES[sku]
    discount = Decimal("0.10") if quantity >= BULK_QUANTITY else Decimal(0)
    total = (unit_price * quantity * (1 - discount)).quantize(Decimal("0.01"))
    return Reply(
        {
            "sku": sku,
            "product": name,
            "quantity": quantity,
            "unit_price": str(unit_price),
            "discount": f"{discount:.0%}",
            "total": str(total),
        },
        headers={"currency": "EUR"},
    )
