"""Views of the demo site: home, chat rooms, the user's tickets, the e-mails sent and
price quotes."""

import re
import time
from typing import Any

import redis
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from redis_broker import NoResponders, RemoteError, RequestTimeout, get_redis
from redis_broker.conf import get_config
from redis_broker.naming import prefixed

from .events import EmailJob, QuoteRequest
from .models import SentEmail, Ticket
from .publishers import email_jobs, quote_requests

ROOMS = ["lobby", "random", "support"]
ROOM_RE = re.compile(r"[a-z0-9_-]{1,50}")
#: How often an open chat page says it is still there (seconds); see consumers.py.
PRESENCE_HEARTBEAT = 10
#: How long the quote page waits for the pricing service (seconds).
QUOTE_TIMEOUT = 2.0


def email_address(user: Any) -> str:
    """Return where the demo mails ``user`` (demo users have no address: make one up)."""
    return str(user.email or f"{user.get_username()}@example.com")


def home(request: HttpRequest) -> HttpResponse:
    """Show what the demo is about and where to go next."""
    return render(request, "home.html", {"rooms": ROOMS})


def not_found(request: HttpRequest, explanation: str) -> HttpResponse:
    """Return the demo's 404 page with ``explanation`` (it says what would have worked)."""
    return render(request, "404.html", {"explanation": explanation}, status=404)


def tickets_url(pk: object = None) -> str:
    """Return the URL of the tickets page, anchored at ticket ``pk`` when given."""
    return reverse("tickets") + (f"#ticket-{pk}" if pk is not None else "")


@login_required
def chat(request: HttpRequest, room: str) -> HttpResponse:
    """Show a chat room: messages travel over the relay on channel ``chat.<room>``.

    Room names are lowercase: ``/chat/Lobby/`` redirects to ``/chat/lobby/``. A name that
    is still not 1-50 of ``a-z 0-9 _ -`` after lowercasing gets a 404 that says so.
    """
    name = room.strip().lower()
    if not ROOM_RE.fullmatch(name):
        return not_found(
            request,
            "Room names are 1 to 50 characters: lowercase letters a-z, digits, "
            "“-” and “_” (capitals are lowercased).",
        )
    if name != room:
        return redirect("chat", name)
    return render(
        request,
        "chat.html",
        {
            "room": room,
            "rooms": ROOMS,
            "channel": f"chat.{room}",
            "presence": {
                "publish": f"presence.{room}",
                "online": f"online.{room}",
                "heartbeat_ms": PRESENCE_HEARTBEAT * 1000,
            },
        },
    )


@login_required
def tickets(request: HttpRequest) -> HttpResponse:
    """List the user's tickets with a form to change each one's status."""
    return render(
        request,
        "tickets.html",
        {"tickets": Ticket.objects.filter(owner=request.user), "statuses": Ticket.Status.choices},
    )


# The two ticket actions answer POST. A GET (a bookmark, the address bar, a login's
# ``next``) goes back to the tickets page instead of Django's empty 405.
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def create_ticket(request: HttpRequest) -> HttpResponse:
    """Open a new ticket for the user."""
    if request.method != "POST":
        return redirect(tickets_url())
    title = request.POST.get("title", "").strip()[:200] or "Something is broken"
    ticket = Ticket.objects.create(owner=request.user, title=title)
    messages.success(request, f"Ticket #{ticket.pk} opened: “{ticket.title}”.")
    return redirect(tickets_url(ticket.pk))


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def update_ticket(request: HttpRequest, pk: int) -> HttpResponse:
    """Change the status of one of the user's tickets and queue an e-mail about it.

    A model event follows the commit, and so does the e-mail job: ``email_jobs`` pushes it
    onto the ``demo.emails`` list, and ``runconsumers`` sends it, so the request never
    waits for a mail server (and a failed send is retried, not lost).
    """
    if request.method != "POST":
        return redirect(tickets_url(pk))
    ticket = get_object_or_404(Ticket, pk=pk, owner=request.user)
    status = request.POST.get("status")
    if status in Ticket.Status.values:
        ticket.status = status
        ticket.save(update_fields=["status", "updated_at"])
        job = EmailJob(
            user=request.user.pk,
            subject=f"Ticket #{ticket.pk} is now {ticket.get_status_display()}",
            body=f"Your ticket “{ticket.title}” changed status: {ticket.get_status_display()}.",
        )
        transaction.on_commit(lambda: email_jobs.publish(job))
        messages.success(
            request, f"Ticket #{ticket.pk} saved: {ticket.get_status_display()}. Watch the bell."
        )
    else:
        messages.error(request, f"Ticket #{ticket.pk} was not changed: pick a status.")
    return redirect(tickets_url(ticket.pk))


def newest_entry_id(channel: str) -> str:
    """Return the id of the newest entry of durable ``channel`` (``"0-0"`` when empty).

    Without Redis it returns the current time as an id: close enough for a page that
    only uses it to tell old messages from new ones.
    """
    key = prefixed(get_config().key_prefix, channel)
    try:
        newest: Any = get_redis().xrevrange(key, count=1)
    except redis.RedisError:
        return f"{int(time.time() * 1000)}-0"
    if not newest:
        return "0-0"
    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


@login_required
def emails(request: HttpRequest) -> HttpResponse:
    """List the e-mails the demo sent to the user (``send_email`` in consumers.py).

    The page's socket replays the user's notifications from the start (for the bell), so
    the page is told the newest one before the list is read: only later e-mail
    notifications are added live (one sent in between may show twice, never not at all).
    """
    address = email_address(request.user)
    seen = newest_entry_id(f"user.{request.user.pk}")
    sent = SentEmail.objects.filter(to=address)[:50]
    return render(request, "emails.html", {"emails": sent, "address": address, "live_after": seen})


class QuoteForm(forms.Form):
    """What the quote page asks the pricing service about."""

    sku = forms.CharField(label="Product SKU", max_length=40, initial="A1")
    quantity = forms.IntegerField(label="Quantity", min_value=1, max_value=1000, initial=1)


@login_required
def quote(request: HttpRequest) -> HttpResponse:
    """Ask the pricing service for a quote and show its answer, or why there is none.

    ``quote_requests.request()`` (``redis_broker.request()`` with the publisher's stream)
    blocks this view until the ``price_quote`` consumer in consumers.py replies. It
    fails fast when nothing can answer (``NoResponders``) or the service refused
    (``RemoteError``); only a slow service costs the full ``QUOTE_TIMEOUT``.
    """
    form = QuoteForm(request.POST if request.method == "POST" else None)
    outcome: dict[str, Any] | None = None
    if form.is_valid():
        started = time.perf_counter()
        try:
            query = QuoteRequest(
                sku=form.cleaned_data["sku"], quantity=form.cleaned_data["quantity"]
            )
            reply = quote_requests.request(query, timeout=QUOTE_TIMEOUT)
            outcome = {"kind": "price", "quote": reply.data, "headers": reply.headers}
        except NoResponders:
            outcome = {"kind": "no-responders"}
        except RemoteError as exc:
            outcome = {"kind": "refused", "error": exc}
        except RequestTimeout:
            outcome = {"kind": "timeout"}
        outcome["elapsed_ms"] = (time.perf_counter() - started) * 1000
    return render(
        request, "quote.html", {"form": form, "outcome": outcome, "timeout": QUOTE_TIMEOUT}
    )
