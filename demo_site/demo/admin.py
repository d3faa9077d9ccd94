"""Admin of the demo: change a ticket here and watch its owner's bell."""

from django.contrib import admin

from .models import Ticket


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Tickets, editable by staff; every save publishes a model event."""

    list_display = ("id", "title", "owner", "status", "updated_at")
    list_filter = ("status",)
    list_editable = ("status",)
