"""Views of the demo site: home, chat rooms and the user's tickets."""

import re

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .models import Ticket

ROOMS = ["lobby", "random", "support"]
ROOM_RE = re.compile(r"[a-z0-9_-]{1,50}")


def home(request: HttpRequest) -> HttpResponse:
    """Show what the demo is about and where to go next."""
    return render(request, "home.html", {"rooms": ROOMS})


@login_required
def chat(request: HttpRequest, room: str) -> HttpResponse:
    """Show a chat room: messages travel over the relay on channel ``chat.<room>``."""
    if not ROOM_RE.fullmatch(room):
        raise Http404("No such room")
    return render(request, "chat.html", {"room": room, "rooms": ROOMS, "channel": f"chat.{room}"})


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
    """Change the status of one of the user's tickets (a model event follows the commit)."""
    ticket = get_object_or_404(Ticket, pk=pk, owner=request.user)
    status = request.POST.get("status")
    if status in Ticket.Status.values:
        ticket.status = status
        ticket.save(update_fields=["status", "updated_at"])
    return redirect("tickets")
