"""Read-only pages of the admin inspector.

Each view is thin: the ``inspector_view`` decorator checks the permission and turns a
Redis outage into the "unavailable" page (503) and a vanished key into a 404 page; the
view calls one or two functions of ``queries`` and renders a ``TemplateResponse`` whose
context starts with ``admin_site.each_context(request)``. Views receive the
``BrokerAdmin`` as ``model_admin``, so they work on any ``AdminSite``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec
from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from ..conf import get_config
from ..connection import get_redis, mask_url, translate_errors
from ..exceptions import BrokerUnavailable
from ..models import Broker
from ..outbox import backlog
from . import queries
from .forms import EntryFilterForm, PendingFilterForm

if TYPE_CHECKING:
    from ..admin import BrokerAdmin

P = ParamSpec("P")
View = Callable[Concatenate[HttpRequest, "BrokerAdmin", P], HttpResponse]
Crumbs = list[tuple[str, str | None]]


def inspector_view(*, change: bool = False) -> Callable[[View[P]], View[P]]:
    """Wrap an inspector view: permission check, 503 page on outage, 404 page on a lost key.

    ``change=True`` requires ``redis_broker.change_broker`` (for actions, on GET as well,
    so a user who may not act is never shown a confirmation button).
    """

    def decorator(func: View[P]) -> View[P]:
        @functools.wraps(func)
        def wrapper(
            request: HttpRequest, model_admin: BrokerAdmin, /, *args: P.args, **kwargs: P.kwargs
        ) -> HttpResponse:
            # {% url 'admin:...' %} and reverse() then pick this admin site's instance.
            request.current_app = model_admin.admin_site.name
            if not model_admin.has_view_permission(request):
                raise PermissionDenied
            if change and not model_admin.has_change_permission(request):
                raise PermissionDenied
            try:
                with translate_errors():
                    return func(request, model_admin, *args, **kwargs)
            except BrokerUnavailable as exc:
                return unavailable(request, model_admin, exc)
            except queries.KeyMissing as exc:
                return render(
                    request,
                    model_admin,
                    "redis_broker/admin/missing.html",
                    title="Not found",
                    crumbs=[("Not found", None)],
                    status=404,
                    reason=str(exc),
                )

        return wrapper

    return decorator


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


def render(
    request: HttpRequest,
    model_admin: BrokerAdmin,
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
    request: HttpRequest, model_admin: BrokerAdmin, exc: BrokerUnavailable
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


def stream_crumbs(request: HttpRequest, stream: str, *more: tuple[str, str | None]) -> Crumbs:
    """Return the breadcrumbs of a stream's pages after the overview: the stream, then ``more``."""
    return [(stream, admin_url(request, "stream", stream=stream) if more else None), *more]


# --- Pages ----------------------------------------------------------------------------------


@inspector_view()
def overview(request: HttpRequest, model_admin: BrokerAdmin) -> HttpResponse:
    """Show the server's facts and every stream under KEY_PREFIX."""
    config = get_config()
    client = get_redis()
    return render(
        request,
        model_admin,
        "redis_broker/admin/overview.html",
        title="Redis broker",
        crumbs=[],
        server=queries.server_info(client),
        listing=queries.list_streams(
            client,
            prefix=config.key_prefix,
            dead_letter_suffix=config.consumers.dead_letter_suffix,
        ),
        redis_url=mask_url(config.url),
        outbox=backlog(),
    )


@inspector_view()
def stream(request: HttpRequest, model_admin: BrokerAdmin, stream: str) -> HttpResponse:
    """Show one page of a stream's entries, newest first, with an id-range filter."""
    config = get_config()
    client = get_redis()
    form = EntryFilterForm(request.GET or None)
    params: dict[str, Any] = form.cleaned_data if form.is_valid() else {}
    count = params.get("count") or 25
    summary = queries.stream_summary(
        client,
        prefix=config.key_prefix,
        name=stream,
        dead_letter_suffix=config.consumers.dead_letter_suffix,
    )
    page = queries.read_entries(
        client,
        prefix=config.key_prefix,
        name=stream,
        count=count,
        before=params.get("before") or None,
        after=params.get("after") or None,
        start=params.get("start") or None,
        end=params.get("end") or None,
    )
    here = admin_url(request, "stream", stream=stream)
    keep = {"start": params.get("start"), "end": params.get("end"), "count": count}
    return render(
        request,
        model_admin,
        "redis_broker/admin/stream.html",
        title=f"Stream {stream}",
        crumbs=stream_crumbs(request, stream),
        tab="entries",
        stream=stream,
        summary=summary,
        page=page,
        form=form,
        **pager_urls(here, keep, page),
    )


def pager_urls(here: str, keep: dict[str, Any], page: queries.EntryPage) -> dict[str, Any]:
    """Return the Newest / Older / Newer links of a cursor-paged entry list."""
    return {
        "newest_url": with_query(here, keep),
        "older_url": with_query(here, {**keep, "before": page.older}) if page.older else None,
        "newer_url": with_query(here, {**keep, "after": page.newer}) if page.newer else None,
    }


@inspector_view()
def groups(request: HttpRequest, model_admin: BrokerAdmin, stream: str) -> HttpResponse:
    """Show a stream's consumer groups (pending, lag, last delivered id) and consumers."""
    config = get_config()
    client = get_redis()
    summary = queries.stream_summary(
        client,
        prefix=config.key_prefix,
        name=stream,
        dead_letter_suffix=config.consumers.dead_letter_suffix,
    )
    return render(
        request,
        model_admin,
        "redis_broker/admin/groups.html",
        title=f"Groups of {stream}",
        crumbs=stream_crumbs(request, stream, ("Groups", None)),
        tab="groups",
        stream=stream,
        summary=summary,
        groups=queries.list_groups(client, prefix=config.key_prefix, name=stream),
    )


@inspector_view()
def pending(
    request: HttpRequest, model_admin: BrokerAdmin, stream: str, group: str
) -> HttpResponse:
    """Show one page of a group's pending entries, oldest first, with ack and claim."""
    config = get_config()
    client = get_redis()
    form = PendingFilterForm(request.GET or None)
    params: dict[str, Any] = form.cleaned_data if form.is_valid() else {}
    count = params.get("count") or 50
    info = queries.get_group(client, prefix=config.key_prefix, name=stream, group=group)
    page = queries.read_pending(
        client,
        prefix=config.key_prefix,
        name=stream,
        group=group,
        count=count,
        after=params.get("after") or None,
        consumer=params.get("consumer") or None,
    )
    here = admin_url(request, "pending", stream=stream, group=group)
    keep = {"consumer": params.get("consumer"), "count": count}
    return render(
        request,
        model_admin,
        "redis_broker/admin/pending.html",
        title=f"Pending entries of {group} on {stream}",
        crumbs=stream_crumbs(
            request,
            stream,
            ("Groups", admin_url(request, "groups", stream=stream)),
            (f"{group}: pending", None),
        ),
        tab="groups",
        stream=stream,
        group=info,
        page=page,
        consumer=params.get("consumer") or "",
        first_url=with_query(here, keep),
        next_url=with_query(here, {**keep, "after": page.next_after}) if page.next_after else None,
        is_first_page=not params.get("after"),
    )


@inspector_view()
def dead_letters(request: HttpRequest, model_admin: BrokerAdmin, stream: str) -> HttpResponse:
    """Show the entries dead-lettered from ``stream``, with their error and original id."""
    config = get_config()
    client = get_redis()
    dlq = stream + config.consumers.dead_letter_suffix
    form = EntryFilterForm(request.GET or None)
    params: dict[str, Any] = form.cleaned_data if form.is_valid() else {}
    count = params.get("count") or 25
    try:
        page = queries.read_entries(
            client,
            prefix=config.key_prefix,
            name=dlq,
            count=count,
            before=params.get("before") or None,
            after=params.get("after") or None,
        )
    except queries.KeyMissing:
        # No dead letter yet is normal for a healthy stream; only a missing stream is a 404.
        if not queries.is_stream(client, prefix=config.key_prefix, name=stream):
            raise
        page = queries.EntryPage(entries=[], older=None, newer=None)
    here = admin_url(request, "dead_letters", stream=stream)
    keep = {"count": count}
    return render(
        request,
        model_admin,
        "redis_broker/admin/dead_letters.html",
        title=f"Dead letters of {stream}",
        crumbs=stream_crumbs(request, stream, ("Dead letters", None)),
        tab="dead_letters",
        stream=stream,
        dlq=dlq,
        page=page,
        **pager_urls(here, keep, page),
    )


@inspector_view()
def pubsub(request: HttpRequest, model_admin: BrokerAdmin) -> HttpResponse:
    """Show the active Pub/Sub channels under KEY_PREFIX with their subscriber counts."""
    config = get_config()
    return render(
        request,
        model_admin,
        "redis_broker/admin/pubsub.html",
        title="Pub/Sub channels",
        crumbs=[("Pub/Sub channels", None)],
        info=queries.pubsub_info(get_redis(), prefix=config.key_prefix),
    )


@inspector_view()
def outbox(request: HttpRequest, model_admin: BrokerAdmin) -> HttpResponse:
    """Show the outbox backlog: how many events wait for Redis, and the oldest ones."""
    return render(
        request,
        model_admin,
        "redis_broker/admin/outbox.html",
        title="Outbox backlog",
        crumbs=[("Outbox", None)],
        info=queries.outbox_info(),
    )
