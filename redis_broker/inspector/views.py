"""Read-only pages of the admin inspector.

Each view is thin: ``pages.inspector_view`` checks the permission and turns a Redis
outage into the "unavailable" page (503) and a vanished key into a 404 page; the view
calls one or two functions of ``queries`` and renders with ``pages.render``, whose
context starts with ``admin_site.each_context(request)``. Views receive the
``BrokerAdmin`` as ``model_admin``, so they work on any ``AdminSite``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse

from ..conf import get_config
from ..connection import get_redis, mask_url, translate_errors
from ..exceptions import BrokerUnavailable
from ..naming import dead_letter_name
from ..outbox import backlog
from ..relay import channel_layer_prefixes
from ..relay.status import read_relays
from . import queries
from .forms import EntryFilterForm, PendingFilterForm
from .pages import (
    InspectorAdmin,
    admin_url,
    inspector_view,
    list_crumbs,
    pager_urls,
    pending_crumbs,
    render,
    stream_crumbs,
    with_query,
)


def _filtered(
    form_class: type[forms.Form], request: HttpRequest, count: int
) -> tuple[forms.Form, dict[str, Any], int]:
    """Return a page's filter form, its valid values (or none) and the page size chosen."""
    form = form_class(request.GET or None)
    params: dict[str, Any] = form.cleaned_data if form.is_valid() else {}
    return form, params, params.get("count") or count


# --- Pages ----------------------------------------------------------------------------------


@inspector_view()
def overview(request: HttpRequest, model_admin: InspectorAdmin) -> HttpResponse:
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
def stream(request: HttpRequest, model_admin: InspectorAdmin, stream: str) -> HttpResponse:
    """Show one page of a stream's entries, newest first, with an id-range filter."""
    config = get_config()
    client = get_redis()
    form, params, count = _filtered(EntryFilterForm, request, 25)
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


@inspector_view()
def groups(request: HttpRequest, model_admin: InspectorAdmin, stream: str) -> HttpResponse:
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
    request: HttpRequest, model_admin: InspectorAdmin, stream: str, group: str
) -> HttpResponse:
    """Show one page of a group's pending entries, oldest first, with ack and claim."""
    config = get_config()
    client = get_redis()
    form, params, count = _filtered(PendingFilterForm, request, 50)
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
        crumbs=pending_crumbs(request, stream, group),
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
def dead_letters(request: HttpRequest, model_admin: InspectorAdmin, stream: str) -> HttpResponse:
    """Show the entries dead-lettered from ``stream``, with their error and original id."""
    config = get_config()
    client = get_redis()
    dlq = dead_letter_name(stream, config.consumers.dead_letter_suffix)
    # A list consumer's dead letters are a stream too; the list's page is the lists page.
    # An emptied list is no key at all, while an emptied stream stays.
    source = queries.key_type(client, prefix=config.key_prefix, name=stream)
    form, params, count = _filtered(EntryFilterForm, request, 25)
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
        # No dead letter yet is normal for a healthy stream or list; a missing one is a 404.
        if source not in ("stream", "list"):
            raise
        page = queries.EntryPage(entries=[], older=None, newer=None)
    here = admin_url(request, "dead_letters", stream=stream)
    keep = {"count": count}
    crumbs = stream_crumbs(request, stream, ("Dead letters", None))
    if source != "stream":
        crumbs = list_crumbs(request, (f"{stream}: dead letters", None))
    return render(
        request,
        model_admin,
        "redis_broker/admin/dead_letters.html",
        title=f"Dead letters of {stream}",
        crumbs=crumbs,
        tab="dead_letters",
        stream=stream,
        source=source,
        dlq=dlq,
        page=page,
        **pager_urls(here, keep, page),
    )


@inspector_view()
def pubsub(request: HttpRequest, model_admin: InspectorAdmin) -> HttpResponse:
    """Show the active Pub/Sub channels, the live workers' channel consumers and the relay.

    Channels under KEY_PREFIX come with their subscriber counts, the Channels layer's
    own channels apart; each channel consumer with its worker and what Redis shows of
    its subscription; then each relay process's browser sockets (``relay.status``).
    """
    prefix = get_config().key_prefix
    client = get_redis()
    workers = queries.read_workers(client, prefix=prefix)
    layers = channel_layer_prefixes()
    return render(
        request,
        model_admin,
        "redis_broker/admin/pubsub.html",
        title="Pub/Sub channels",
        crumbs=[("Pub/Sub channels", None)],
        info=queries.pubsub_info(client, prefix=prefix, layer_prefixes=layers),
        subscriptions=queries.channel_subscriptions(client, prefix=prefix, workers=workers),
        relay=read_relays(client, prefix=prefix),
        layer_prefixes=layers,
    )


@inspector_view()
def lists(request: HttpRequest, model_admin: InspectorAdmin) -> HttpResponse:
    """Show the lists of list consumers, with each worker's processing list.

    A list shows its length, oldest item and dead letters; a processing list its items,
    its oldest item and its worker's heartbeat, with a requeue action once that expired.
    """
    config = get_config()
    return render(
        request,
        model_admin,
        "redis_broker/admin/lists.html",
        title="Lists",
        crumbs=list_crumbs(request),
        listing=queries.list_lists(
            get_redis(),
            prefix=config.key_prefix,
            dead_letter_suffix=config.consumers.dead_letter_suffix,
        ),
    )


@inspector_view()
def outbox(request: HttpRequest, model_admin: InspectorAdmin) -> HttpResponse:
    """Show the outbox backlog: how many events wait for Redis, and the oldest ones.

    Each stream named is checked with ``TYPE``, so a key of another type (the usual
    cause of rows Redis refuses with ``WRONGTYPE``) is pointed out. The page is read from
    the database and still shows, without those types, while Redis is unreachable: that
    is when the outbox fills up.
    """
    info = queries.outbox_info()
    names = sorted({s for s, _ in info.per_stream} | {row.stream for row in info.oldest})
    key_types: dict[str, str] = {}
    redis_error = ""
    try:
        with translate_errors():
            key_types = queries.key_types(get_redis(), prefix=get_config().key_prefix, names=names)
    except BrokerUnavailable as exc:
        redis_error = str(exc)
    return render(
        request,
        model_admin,
        "redis_broker/admin/outbox.html",
        title="Outbox backlog",
        crumbs=[("Outbox", None)],
        info=info,
        # (stream, waiting rows, its key's type) and (row, its stream key's type):
        # "" when Redis could not tell.
        per_stream=[(name, n, key_types.get(name, "")) for name, n in info.per_stream],
        rows=[(row, key_types.get(row.stream, "")) for row in info.oldest],
        redis_error=redis_error,
    )
