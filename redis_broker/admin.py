"""The admin inspector's entry point, and a read-only admin of the outbox.

``Broker`` has no table; it only carries the ``view_broker`` and ``change_broker``
permissions. ``BrokerAdmin`` turns its changelist into the inspector's overview and
adds the inspector's pages (``inspector.urls``) in front of the usual model URLs, each
wrapped by the admin site's ``admin_view``.

Both are registered on ``django.contrib.admin.site``. A project with its own
``AdminSite`` registers them there too::

    from redis_broker.admin import BrokerAdmin, OutboxEventAdmin
    from redis_broker.models import Broker, OutboxEvent

    my_site.register(Broker, BrokerAdmin)
    my_site.register(OutboxEvent, OutboxEventAdmin)
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, reverse

from . import wire
from .inspector import views
from .inspector.actions import CHANNEL_OBJECT_ID, LIST_OBJECT_ID, OUTBOX_OBJECT_ID
from .inspector.urls import get_admin_urlpatterns
from .models import Broker, OutboxEvent

__all__ = ["BrokerAdmin", "OutboxEventAdmin"]


class BrokerAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The Redis broker inspector: streams, groups, pending entries, dead letters, lists, Pub/Sub.

    Reading needs ``redis_broker.view_broker`` (or ``change_broker``); actions need
    ``redis_broker.change_broker``. Superusers have both.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Return False: there is nothing to add."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Return False: there is no object to delete (actions have their own pages)."""
        return False

    def get_model_perms(self, request: HttpRequest) -> dict[str, bool]:
        """Return the index's view of the section: view only, so the link reads "View".

        The admin index offers "Change" for a model whose ``change`` permission the user
        has; there is nothing to change here, only pages to inspect (actions check
        ``change_broker`` themselves, through ``has_change_permission``).
        """
        return {
            "add": False,
            "change": False,
            "delete": False,
            "view": self.has_view_permission(request),
        }

    def get_urls(self) -> list[URLPattern]:
        """Return the inspector's pages in front of the model's own URLs."""
        return [*get_admin_urlpatterns(self), *super().get_urls()]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Render the inspector's overview instead of a list of rows."""
        return views.overview(request, self)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """Redirect to the stream's page: admin log entries link here with the stream name.

        An action on a list is logged as ``lists/<name>`` and leads to the lists page; one
        on the outbox as ``outbox/``, a broadcast as ``pubsub/<channel>``: their pages.
        """
        name = unquote(object_id)
        for prefix, page in (
            (LIST_OBJECT_ID, "lists"),
            (OUTBOX_OBJECT_ID, "outbox"),
            (CHANNEL_OBJECT_ID, "pubsub"),
        ):
            if name.startswith(prefix):
                return HttpResponseRedirect(
                    reverse(f"admin:redis_broker_{page}", current_app=self.admin_site.name)
                )
        return HttpResponseRedirect(
            reverse(
                "admin:redis_broker_stream",
                kwargs={"stream": name},
                current_app=self.admin_site.name,
            )
        )

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Redirect to the stream's page: there is no row whose history could be shown."""
        return self.change_view(request, object_id)


class OutboxEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The outbox rows, read-only: the relay alone adds and removes them."""

    list_display = ("id", "stream", "event_type", "created_at", "attempts", "short_error")
    list_filter = ("stream",)
    search_fields = ("stream", "last_error")
    date_hierarchy = "created_at"
    readonly_fields = ("stream", "fields", "created_at", "attempts", "last_error")

    @admin.display(description="type")
    def event_type(self, obj: OutboxEvent) -> str:
        """Return the event's ``type`` field."""
        return str((obj.fields or {}).get(wire.TYPE, ""))

    @admin.display(description="last error")
    def short_error(self, obj: OutboxEvent) -> str:
        """Return the start of the last error, for the list."""
        return obj.last_error[:80]

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Return False: rows come from model events only."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Return False: a row holds an encoded event that must be relayed unchanged."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Return False: deleting a row loses an event; the relay deletes relayed rows."""
        return False


admin.site.register(Broker, BrokerAdmin)
admin.site.register(OutboxEvent, OutboxEventAdmin)
