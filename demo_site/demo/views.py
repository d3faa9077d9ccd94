"""Views of the demo site: home, chat rooms, the user's tickets, the e-mails sent and
price quotes."""

import re
import time
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

import redis_broker
from redis_broker import NoResponders, RemoteError, RequestTimeout, push

from .models import SentEmail, Ticket

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


@login_required
def chat(request: HttpRequest, room: str) -> HttpResponse:
    """Show a chat room: messages travel over the relay on channel ``chat.<room>``."""
    if not ROOM_RE.fullmatch(room):
        raise Http404("No such room")
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


@login_required
@require_POST
def create_ticket(request: HttpRequest) -> HttpResponse:
    """Open a new ticket for the user."""
    title = request.POST.get("title", "").strip()[:200] or "Something is broken"
    Ticket.objects.create(owner=request.user, title=title)
    return redirect("tickets")


@login_required
@require_POST
def update_ticket(request: HttpRequest, pk: int) -> HttpResponse:
    """Change the status of one of the user's tickets and queue an e-mail about it.

    A model event follows the commit, and so does the e-mail job: ``push()`` appends it
    to the ``demo.emails`` list, and ``runconsumers`` sends it, so the request never
    waits for a mail server (and a failed send is retried, not lost).
    """
    ticket = get_object_or_404(Ticket, pk=pk, owner=request.user)
    status = request.POST.get("status")
    if status in Ticket.Status.values:
        ticket.status = status
        ticket.save(update_fields=["status", "updated_at"])
        job = {
            "user": request.user.pk,
            "subject": f"Ticket #{ticket.pk} is now {ticket.get_status_display()}",
            "body": f"Your ticket “{ticket.title}” changed status: {ticket.get_status_display()}.",
        }
        transaction.on_commit(lambda: push("demo.emails", job, type="demo.email"))
    return redirect("tickets")


@login_required
def emails(request: HttpRequest) -> HttpResponse:
    """List the e-mails the demo sent to the user (``send_email`` in consumers.py)."""
    address = email_address(request.user)
    sent = SentEmail.objects.filter(to=address)[:50]
    return render(request, "emails.html", {"emails": sent, "address": address})


class QuoteForm(forms.Form):
    """What the quote page asks the pricing service about."""

    sku = forms.CharField(label="Product SKU", max_length=40, initial="A1")
    quantity = forms.IntegerField(label="Quantity", min_value=1, max_value=1000, initial=1)


@login_required
def quote(request: HttpRequest) -> HttpResponse:
    """Ask the pricing service for a quote and show its answer, or why there is none.

    ``redis_broker.request()`` (qualified: a view's ``request`` is the HTTP request)
    blocks this view until the ``price_quote`` consumer in consumers.py replies. It
    fails fast when nothing can answer (``NoResponders``) or the service refused
    (``RemoteError``); only a slow service costs the full ``QUOTE_TIMEOUT``.
    """
    form = QuoteForm(request.POST if request.method == "POST" else None)
    outcome: dict[str, Any] | None = None
    if form.is_valid():
        started = time.perf_counter()
        try:
            reply = redis_broker.request("demo.quotes", form.cleaned_data, timeout=QUOTE_TIMEOUT)
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
