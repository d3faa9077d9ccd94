"""What every inspector page shares: access, failure pages, the admin's chrome, links.

``inspector_view`` wraps a page: it checks the ``Broker`` permissions, turns a Redis
outage into the "unavailable" page (503) and a vanished stream or group into the "not
found" page (404), which names the type of a key that holds no stream. ``render``
draws a template inside the admin's header, sidebar and breadcrumbs, with a context that
starts with ``admin_site.each_context(request)``. The rest builds the links between
pages: inspector URLs, breadcrumb trails, pager links.

The read pages (``views``) and the actions (``actions``) both stand on this module. It
knows the admin only through ``InspectorAdmin``, the little it needs of a ``ModelAdmin``,
so nothing in the inspector imports ``redis_broker.admin``, which imports the inspector.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, ParamSpec, Protocol
from urllib.parse import urlencode

from django.contrib.admin.sites import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from ..conf import get_config
from ..connection import get_redis, mask_url, translate_errors
from ..exceptions import BrokerUnavailable
from ..models import Broker, OutboxEvent
from .queries import EntryPage, KeyMissing, key_facts


class InspectorAdmin(Protocol):
    """What the inspector needs of the ``ModelAdmin`` that serves it (``BrokerAdmin``).

    Its admin site (login wrapper, each page's context, URL namespace) and its two
    permission checks: ``redis_broker.view_broker`` to read, ``change_broker`` to act.
    """

    @property
    def admin_site(self) -> AdminSite:
        """Return the admin site the inspector's pages belong to."""

    def has_view_permission(self, request: HttpRequest) -> bool:
        """Return True when the user may read the inspector's pages."""

    def has_change_permission(self, request: HttpRequest) -> bool:
        """Return True when the user may run the inspector's actions."""


P = ParamSpec("P")
#: An inspector page: the request and the admin serving it, then its URL's arguments.
View = Callable[Concatenate[HttpRequest, InspectorAdmin, P], HttpResponse]
#: Breadcrumbs after the overview's: (label, URL), the URL None for the current page.
Crumbs = list[tuple[str, str | None]]


def inspector_view(*, change: bool = False, data: bool = False) -> Callable[[View[P]], View[P]]:
    """Wrap an inspector view: permission check, 503 page on outage, 404 page on a lost key.

    ``change=True`` requires ``redis_broker.change_broker`` (for actions, on GET as well,
    so a user who may not act is never shown a confirmation button). ``data=True`` marks
    a JSON endpoint polled by the live console: an outage or a lost key answers JSON
    ``{"error": …}`` with the same status, which the page shows while it backs off.
    """

    def decorator(func: View[P]) -> View[P]:
        @functools.wraps(func)
        def wrapper(
            request: HttpRequest, model_admin: InspectorAdmin, /, *args: P.args, **kwargs: P.kwargs
        ) -> HttpResponse:
            # {% url 'admin:...' %} and reverse() then pick this admin site's instance.
            request.current_app = model_admin.admin_site.name
            if not model_admin.has_view_permission(request):
                raise PermissionDenied
            if change and not model_admin.has_change_permission(request):
                raise PermissionDenied
            try:
                with translate_errors():  # a cluster that cannot be reached too
                    try:
                        return func(request, model_admin, *args, **kwargs)
                    except KeyMissing as exc:
                        if data:
                            return JsonResponse({"error": str(exc)}, status=404)
                        # Inside translate_errors: the page asks Redis what the key holds.
                        return missing(request, model_admin, exc)
            except BrokerUnavailable as exc:
                if data:
                    where = mask_url(get_config().url)
                    message = f"Redis cannot be reached at {where}: {exc}"
                    return JsonResponse({"error": message}, status=503)
                return unavailable(request, model_admin, exc)

        return wrapper

    return decorator


def render(
    request: HttpRequest,
    model_admin: InspectorAdmin,
    template: str,
    *,
    title: str,
    crumbs: Crumbs,
    status: int = 200,
    **context: Any,
) -> TemplateResponse:
    """Render an inspector template inside the admin's chrome (header, sidebar, crumbs)."""
    config = get_config()
    full = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "opts": Broker._meta,
        "app_label": Broker._meta.app_label,
        "crumbs": crumbs,
        "overview_url": admin_url(request, "broker_changelist"),
        "can_change": model_admin.has_change_permission(request),
        "key_prefix": config.key_prefix,
        "dead_letter_suffix": config.consumers.dead_letter_suffix,
        **context,
    }
    return TemplateResponse(request, template, full, status=status)


def unavailable(
    request: HttpRequest, model_admin: InspectorAdmin, exc: BrokerUnavailable
) -> TemplateResponse:
    """Render the "Redis is unreachable" page (503) with the masked URL."""
    return render(
        request,
        model_admin,
        "redis_broker/admin/unavailable.html",
        title="Redis is unavailable",
        crumbs=[("Unavailable", None)],
        status=503,
        redis_url=mask_url(get_config().url),
        reason=str(exc),
    )


def missing(request: HttpRequest, model_admin: InspectorAdmin, exc: KeyMissing) -> TemplateResponse:
    """Render the "not found" page (404): the stream or group is gone since it was linked.

    When the stream's name holds a key of another type, say so, with the key's type,
    size and expiry: publishing to it fails with ``WRONGTYPE``, the usual cause of a
    stuck outbox, whose rows waiting for that stream are counted.
    """
    facts = None
    if exc.name is not None:
        facts = key_facts(get_redis(), prefix=get_config().key_prefix, name=exc.name)
    if facts is not None and facts.type not in ("none", "stream"):
        return render(
            request,
            model_admin,
            "redis_broker/admin/missing.html",
            title=f"{facts.name} is a {facts.type}, not a stream",
            crumbs=[(facts.name, None)],
            status=404,
            reason=f"“{facts.name}” is a {facts.type}, not a stream.",
            facts=facts,
            outbox_waiting=OutboxEvent.objects.filter(stream=facts.name).count(),
        )
    return render(
        request,
        model_admin,
        "redis_broker/admin/missing.html",
        title="Not found",
        crumbs=[("Not found", None)],
        status=404,
        reason=str(exc),
    )


# --- Links ------------------------------------------------------------------------------


def admin_url(request: HttpRequest, name: str, **kwargs: str) -> str:
    """Return the URL of inspector page ``name`` on the current admin site."""
    return reverse(
        f"admin:redis_broker_{name}",
        kwargs=kwargs or None,
        current_app=getattr(request, "current_app", None),
    )


def with_query(url: str, params: Mapping[str, Any]) -> str:
    """Return ``url`` with the non-empty ``params`` as its query string."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{url}?{urlencode(kept, doseq=True)}" if kept else url


def stream_crumbs(request: HttpRequest, stream: str, *more: tuple[str, str | None]) -> Crumbs:
    """Return the breadcrumbs of a stream's pages after the overview: the stream, then ``more``."""
    return [(stream, admin_url(request, "stream", stream=stream) if more else None), *more]


def list_crumbs(request: HttpRequest, *more: tuple[str, str | None]) -> Crumbs:
    """Return the breadcrumbs of the lists page (linked when ``more`` follow), then ``more``."""
    return [("Lists", admin_url(request, "lists") if more else None), *more]


def pending_crumbs(
    request: HttpRequest, stream: str, group: str, *more: tuple[str, str | None]
) -> Crumbs:
    """Return the breadcrumbs of a group's pending page, then ``more`` (the page linked if any)."""
    here = admin_url(request, "pending", stream=stream, group=group) if more else None
    return stream_crumbs(
        request,
        stream,
        ("Groups", admin_url(request, "groups", stream=stream)),
        (f"{group}: pending", here),
        *more,
    )


def pager_urls(here: str, keep: dict[str, Any], page: EntryPage) -> dict[str, Any]:
    """Return the Newest / Older / Newer links of a cursor-paged entry list."""
    return {
        "newest_url": with_query(here, keep),
        "older_url": with_query(here, {**keep, "before": page.older}) if page.older else None,
        "newer_url": with_query(here, {**keep, "after": page.newer}) if page.newer else None,
    }
