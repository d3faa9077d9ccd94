"""URL patterns of the admin inspector, added to ``BrokerAdmin.get_urls()``.

They live under the ``Broker`` model's admin URL (``/admin/redis_broker/broker/``) and
are named ``redis_broker_<view>`` in the admin site's namespace, e.g.
``reverse("admin:redis_broker_stream", kwargs={"stream": "orders"})``. Stream, list,
group and consumer names are single path segments: a name containing ``/`` is listed
but has no pages or actions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path

from . import actions, views
from .pages import InspectorAdmin

_S = "streams/<str:stream>/"
_G = _S + "groups/<str:group>/"
_L = "lists/<str:stream>/"

#: (route, view, name without the ``redis_broker_`` prefix); an action's ``Action`` is its view.
ROUTES: list[tuple[str, Callable[..., HttpResponse], str]] = [
    # The same page as the model's changelist, under the inspector's naming scheme.
    ("", views.overview, "index"),
    ("live/", views.overview_live, "overview_live"),
    ("workers/", views.workers, "workers"),
    ("workers/live/", views.workers_live, "workers_live"),
    ("pubsub/", views.pubsub, "pubsub"),
    ("pubsub/users/<str:user_id>/disconnect/", actions.disconnect_relay_user, "disconnect_user"),
    ("outbox/", views.outbox, "outbox"),
    ("asyncapi/", views.asyncapi_page, "asyncapi"),
    ("asyncapi/asyncapi.<str:fmt>", views.asyncapi_download, "asyncapi_download"),
    ("outbox/delete/", actions.delete_outbox, "delete_outbox"),
    ("outbox/retry/", actions.retry_outbox, "retry_outbox"),
    ("send/", actions.send_message, "send"),
    ("lists/", views.lists, "lists"),
    # The framework's ``stream`` argument names the list here (``Action.on_processing_list``).
    (_L + "processing/<str:consumer>/requeue/", actions.requeue_processing, "requeue_processing"),
    (_S, views.stream, "stream"),
    (_S + "delete/", actions.delete, "delete"),
    (_S + "trim/", actions.trim, "trim"),
    (_S + "dead-letters/", views.dead_letters, "dead_letters"),
    (_S + "dead-letters/requeue/", actions.requeue, "requeue"),
    (_S + "dead-letters/requeue-all/", actions.requeue_matching, "requeue_matching"),
    (_S + "dead-letters/delete-all/", actions.delete_matching, "delete_matching"),
    (_S + "search/", views.search, "search"),
    (_S + "groups/", views.groups, "groups"),
    (_S + "create-group/", actions.add_group, "create_group"),
    (_G + "pending/", views.pending, "pending"),
    (_G + "ack/", actions.ack, "ack"),
    (_G + "claim/", actions.claim, "claim"),
    (_G + "retry/", actions.retry, "retry"),
    (_G + "destroy/", actions.remove_group, "destroy_group"),
    (_G + "consumers/<str:consumer>/delete/", actions.remove_consumer, "delete_consumer"),
]


def get_admin_urlpatterns(model_admin: InspectorAdmin) -> list[URLPattern]:
    """Return the inspector's URL patterns, each wrapped by the admin site's ``admin_view``.

    ``admin_view`` sends anonymous users to the admin login and adds CSRF protection
    and ``never_cache``; the views then check the ``Broker`` permissions.
    """

    def bind(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def bound(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            return view(request, model_admin, *args, **kwargs)

        return model_admin.admin_site.admin_view(bound)

    return [path(route, bind(view), name=f"redis_broker_{name}") for route, view, name in ROUTES]
