"""Views of the demo site."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def home(request: HttpRequest) -> HttpResponse:
    """Show what the demo is about and where to go next."""
    return render(request, "home.html")
