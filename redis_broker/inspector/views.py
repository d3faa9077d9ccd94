"""Read-only pages of the admin inspector.

Each view is thin: ``pages.inspector_view`` checks the permission and turns a Redis
outage into the "unavailable" page (503) and a vanished key into a 404 page; the view
calls one or two functions of ``queries`` and renders with ``pages.render``, whose
context starts with ``admin_site.each_context(request)``. Views receive the
``BrokerAdmin`` as ``model_admin``, so they work on any ``AdminSite``.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from ..conf import BrokerConfig, get_config
from ..connection import get_redis, mask_url, translate_errors
from ..exceptions import BrokerUnavailable
from ..naming import dead_letter_name
from ..outbox import backlog
from ..relay import channel_layer_prefixes
from ..relay.status import read_relays
from . import queries
from .forms import (
    DeadLetterSearchForm,
    EntryFilterForm,
    PendingFilterForm,
    SearchForm,
    StreamPageForm,
)
from .nodes import BadCursor
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
from .search import SEARCH_WINDOW, SearchResult, search_entries


def _filtered(
    form_class: type[forms.Form], request: HttpRequest, count: int
) -> tuple[forms.Form, dict[str, Any], int]:
    """Return a page's filter form, its valid values (or none) and the page size chosen."""
    form = form_class(request.GET or None)
    params: dict[str, Any] = form.cleaned_data if form.is_valid() else {}
    return form, params, params.get("count") or count


#: How often the live pages (overview, workers) ask for fresh figures, in milliseconds.
#: ``console.js`` doubles the wait after each failure, up to a minute, and stops asking
#: while the tab is hidden.
POLL_MS = 3000


# --- Pages ----------------------------------------------------------------------------------


def _stream_summary(client: Any, config: BrokerConfig, stream: str) -> queries.StreamSummary:
    """Return the header figures every page of one stream shows (its tabs)."""
    return queries.stream_summary(
        client,
        prefix=config.key_prefix,
        name=stream,
        dead_letter_suffix=config.consumers.dead_letter_suffix,
    )


def _page_params(request: HttpRequest) -> tuple[StreamPageForm, dict[str, Any], str]:
    """Return the overview's form, its usable values and what was wrong with the link.

    A value that fails its check is dropped (the first page, all streams, the default
    size) and named in the message the page shows, never a 500.
    """
    form = StreamPageForm(request.GET or None)
    problem = ""
    if form.is_bound and not form.is_valid():
        wrong = sorted(form.errors)
        verb = "was" if len(wrong) == 1 else "were"
        problem = f"This link's {' and '.join(wrong)} could not be read and {verb} left out."
        if "cursor" in form.errors:
            problem += " The page starts over."
    params = {name: form.cleaned_data.get(name) for name in form.fields} if form.is_bound else {}
    if not params.get("cursor"):
        params["page"] = None  # a page number without its cursor means nothing
    return form, params, problem


def _stream_page(client: Any, config: BrokerConfig, params: dict[str, Any]) -> queries.StreamPage:
    """Read the overview's page of streams that ``params`` (``_page_params``) ask for."""
    return queries.stream_page(
        client,
        prefix=config.key_prefix,
        dead_letter_suffix=config.consumers.dead_letter_suffix,
        cursor=params.get("cursor"),
        span=params.get("span"),
        count=params.get("count") or queries.STREAM_PAGE,
        contains=params.get("q") or "",
    )


@inspector_view()
def overview(request: HttpRequest, model_admin: InspectorAdmin) -> HttpResponse:
    """Show the server's facts and one page of the streams under KEY_PREFIX, live.

    Pages follow Redis's SCAN order (``queries.stream_page``), each sorted by name; a
    "Next page" link carries the opaque cursor. ``console.js`` polls ``overview_live``
    with the page's span (the same reads, as JSON) every ``POLL_MS``, updates the
    figures in place and charts each stream's throughput and group lag.
    """
    config = get_config()
    client = get_redis()
    form, params, problem = _page_params(request)
    params["span"] = None  # the page walks from its cursor; only the live poll repeats a span
    try:
        listing = _stream_page(client, config, params)
    except BadCursor as exc:
        problem = f"{exc} The page starts over."
        params["cursor"] = params["page"] = None
        listing = _stream_page(client, config, params)
    number = params.get("page") or 1
    here = admin_url(request, "broker_changelist")
    keep = {"q": params.get("q"), "count": params.get("count")}
    return render(
        request,
        model_admin,
        "redis_broker/admin/overview.html",
        title="Redis broker",
        crumbs=[],
        server=queries.server_info(client),
        listing=listing,
        form=form,
        name_filter=params.get("q") or "",
        listing_count=params.get("count") or queries.STREAM_PAGE,
        page_number=number,
        problem=problem,
        first_url=with_query(here, keep),
        next_url=(
            with_query(here, {**keep, "cursor": listing.next_cursor, "page": number + 1})
            if listing.next_cursor
            else None
        ),
        redis_url=mask_url(config.url),
        outbox=backlog(),
        live_url=with_query(
            admin_url(request, "overview_live"), {"q": params.get("q"), "span": listing.span}
        ),
        poll_ms=POLL_MS,
        poll_s=POLL_MS / 1000,
    )


@inspector_view(data=True)
def overview_live(request: HttpRequest, model_admin: InspectorAdmin) -> HttpResponse:
    """Return the overview's figures as JSON, for the page to update itself (GET, read-only).

    The overview's reads (``INFO``, the page's ``SCAN`` calls again from its ``span``,
    in one round trip, with pipelined ``XINFO STREAM``, the outbox count) plus one
    pipelined ``XINFO GROUPS`` per stream for the groups' lag and pending counts,
    ``MAX_CHART_GROUPS`` groups each. Without ``span``, the first page. ``added`` is
    ``entries-added`` (Redis 7.0+; null before), from which the page works out entries
    added per second. A span or cursor this Redis did not hand out answers 400.
    """
    config = get_config()
    client = get_redis()
    _, params, problem = _page_params(request)
    if problem:
        return JsonResponse({"error": problem}, status=400)
    try:
        listing = _stream_page(client, config, params)
    except BadCursor as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    server = queries.server_info(client)
    lags = queries.group_lags(
        client, prefix=config.key_prefix, names=[s.name for s in listing.streams]
    )
    return JsonResponse(
        {
            "at": queries.now_ms(),
            "server": {
                "used_memory_human": server.used_memory_human,
                "connected_clients": server.connected_clients,
                "uptime": server.uptime_display,
            },
            "streams": [
                {
                    "name": s.name,
                    "length": s.length,
                    "added": s.entries_added,
                    "groups": s.groups,
                    "dead_letters": s.dead_letters,
                    "dead_letter_of": s.dead_letter_of,
                    "first_id": s.first_id,
                    "first_time": s.first_time,
                    "first_age": s.first_age,
                    "last_id": s.last_id,
                    "last_time": s.last_time,
                    "last_age": s.last_age,
                    "lag": [
                        {"group": g.group, "lag": g.lag, "pending": g.pending}
                        for g in lags.get(s.name, [])
                    ],
                }
                for s in listing.streams
            ],
            "next_cursor": listing.next_cursor,
            "truncated": listing.truncated,
            "outbox": backlog().count,
        }
    )


@inspector_view()
def workers(request: HttpRequest, model_admin: InspectorAdmin) -> HttpResponse:
    """Show every live ``runconsumers`` worker from its heartbeat; the page keeps it live.

    A worker killed without a word drops out once its heartbeat expires (three
    ``HEARTBEAT_INTERVAL``s after its last beat). ``console.js`` polls ``workers_live``.
    """
    rows = queries.read_worker_rows(get_redis(), prefix=get_config().key_prefix)
    return render(
        request,
        model_admin,
        "redis_broker/admin/workers.html",
        title="Workers",
        crumbs=[("Workers", None)],
        workers=rows,
        max_workers=queries.MAX_WORKERS,
        live_url=admin_url(request, "workers_live"),
        poll_ms=POLL_MS,
        poll_s=POLL_MS / 1000,
    )


@inspector_view(data=True)
def workers_live(request: HttpRequest, model_admin: InspectorAdmin) -> HttpResponse:
    """Return the workers table's rows as JSON: the count and the rows' HTML, escaped.

    The rows are rendered by the page's own template fragment, so the page and its
    updates cannot differ, and every value a heartbeat holds is escaped on the server.
    """
    rows = queries.read_worker_rows(get_redis(), prefix=get_config().key_prefix)
    html = render_to_string(
        "redis_broker/admin/_worker_rows.html", {"workers": rows}, request=request
    )
    return JsonResponse({"at": queries.now_ms(), "count": len(rows), "html": html})


@inspector_view()
def stream(request: HttpRequest, model_admin: InspectorAdmin, stream: str) -> HttpResponse:
    """Show one page of a stream's entries, newest first, with an id-range filter."""
    config = get_config()
    client = get_redis()
    form, params, count = _filtered(EntryFilterForm, request, 25)
    summary = _stream_summary(client, config, stream)
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


def _search(
    request: HttpRequest, form: SearchForm, *, prefix: str, name: str, here: str
) -> tuple[SearchResult | None, str | None]:
    """Run the search a valid ``form`` asks for on stream ``name``; return it and "older" URL.

    No search (an empty box, an invalid form) gives ``(None, None)``.
    """
    if not form.is_valid() or not form.cleaned_data["q"]:
        return None, None
    params = form.cleaned_data
    result = search_entries(
        get_redis(),
        prefix=prefix,
        name=name,
        by=params["by"],
        needle=params["q"],
        before=params.get("before") or None,
        window=params.get("window") or SEARCH_WINDOW,
    )
    older = None
    if result.older:
        keep = {"q": request.GET.get("q", ""), "by": params["by"], "window": result.window}
        older = with_query(here, {**keep, "before": result.older})
    return result, older


@inspector_view()
def search(request: HttpRequest, model_admin: InspectorAdmin, stream: str) -> HttpResponse:
    """Search a stream by event id, type, payload substring or entry id, newest first.

    Bounded: at most the chosen window of entries is read per request (``search``
    module), with a "Search older" link that continues below the last entry scanned.
    """
    config = get_config()
    summary = _stream_summary(get_redis(), config, stream)
    form = SearchForm(request.GET or None)
    here = admin_url(request, "search", stream=stream)
    result, older_url = _search(request, form, prefix=config.key_prefix, name=stream, here=here)
    return render(
        request,
        model_admin,
        "redis_broker/admin/search.html",
        title=f"Search {stream}",
        crumbs=stream_crumbs(request, stream, ("Search", None)),
        tab="search",
        stream=stream,
        summary=summary,
        form=form,
        result=result,
        older_url=older_url,
        continued=bool(request.GET.get("before")),
    )


@inspector_view()
def groups(request: HttpRequest, model_admin: InspectorAdmin, stream: str) -> HttpResponse:
    """Show a stream's consumer groups (pending, lag, last delivered id) and consumers."""
    config = get_config()
    client = get_redis()
    summary = _stream_summary(client, config, stream)
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
    here = admin_url(request, "dead_letters", stream=stream)
    search_form = DeadLetterSearchForm(request.GET if "q" in request.GET else None)
    result: SearchResult | None = None
    older_url = None
    try:
        result, older_url = _search(
            request, search_form, prefix=config.key_prefix, name=dlq, here=here
        )
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
    if result is not None:
        # The search's matches take the page's place (its own "Search older" pages them).
        page = queries.EntryPage(entries=result.entries, older=None, newer=None)
    keep = {"count": count}
    search = search_form.cleaned_data if search_form.is_bound and search_form.is_valid() else {}
    bulk = {"by": search.get("by", ""), "q": request.GET.get("q", "")} if result else {}
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
        search_form=search_form,
        result=result,
        search_older_url=older_url,
        requeue_all_url=with_query(admin_url(request, "requeue_matching", stream=stream), bulk),
        delete_all_url=with_query(admin_url(request, "delete_matching", stream=stream), bulk),
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
        with translate_errors():  # a cluster that cannot be reached too
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


# --- The AsyncAPI document ---------------------------------------------------------------


@inspector_view()
def asyncapi_page(request: HttpRequest, model_admin: InspectorAdmin) -> HttpResponse:
    """Show the project's AsyncAPI document: channels, operations, messages and schemas.

    Built from the code and settings (``asyncapi.project_document``, as ``manage.py
    asyncapi`` builds it), so it reads nothing from Redis; it imports every app's
    ``consumers`` and ``publishers`` modules. Schemas are indented JSON, folded.
    """
    # Imported here: it brings the consumer machinery, which only this page needs.
    from .. import asyncapi

    document = asyncapi.project_document()
    here = admin_url(request, "asyncapi")
    return render(
        request,
        model_admin,
        "redis_broker/admin/asyncapi.html",
        title="AsyncAPI document",
        crumbs=[("AsyncAPI document", None)],
        info=document["info"],
        servers=sorted(document["servers"].items()),
        channels=_asyncapi_channels(document),
        operations=_asyncapi_operations(document),
        schemas=[
            (name, _indented(schema)) for name, schema in document["components"]["schemas"].items()
        ],
        json_url=f"{here}asyncapi.json",
        yaml_url=f"{here}asyncapi.yaml" if asyncapi.yaml_available() else None,
    )


@inspector_view()
def asyncapi_download(request: HttpRequest, model_admin: InspectorAdmin, fmt: str) -> HttpResponse:
    """Return the AsyncAPI document as a file, ``asyncapi.json`` or ``asyncapi.yaml``."""
    from .. import asyncapi

    if fmt not in asyncapi.FORMATS or (fmt == "yaml" and not asyncapi.yaml_available()):
        raise Http404("The document is served as asyncapi.json, and as asyncapi.yaml with PyYAML.")
    text = asyncapi.dumps(asyncapi.project_document(), fmt)
    kind = "application/json" if fmt == "json" else "application/yaml"
    response = HttpResponse(text, content_type=f"{kind}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="asyncapi.{fmt}"'
    return response


def _indented(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _asyncapi_channels(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Return each channel of ``document`` as the page lists it, messages indented."""
    return [
        {
            "id": cid,
            "address": channel.get("address"),
            "kind": channel.get("x-redis-kind", ""),
            "description": channel.get("description", ""),
            "parameters": sorted((channel.get("parameters") or {}).items()),
            "messages": [
                {
                    "id": mid,
                    "title": message.get("title", mid),
                    "summary": message.get("summary", ""),
                    "payload": _indented(message.get("payload", {})),
                }
                for mid, message in channel.get("messages", {}).items()
            ],
        }
        for cid, channel in document["channels"].items()
    ]


def _last(ref: dict[str, Any]) -> str:
    """Return the id a ``$ref`` ends with (``#/channels/stream.orders`` -> ``stream.orders``)."""
    return str(ref.get("$ref", "")).rpartition("/")[2]


def _asyncapi_operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Return each operation of ``document`` as the page lists it, refs made readable."""
    return [
        {
            "id": oid,
            "action": op.get("action", ""),
            "title": op.get("title", oid),
            "summary": op.get("summary", ""),
            "description": op.get("description", ""),
            "channel": _last(op.get("channel", {})),
            "messages": [_last(ref) for ref in op.get("messages", [])],
            "group": op.get("x-redis-group", ""),
            "replies": [_last(ref) for ref in op["reply"].get("messages", [])]
            if "reply" in op
            else None,
        }
        for oid, op in document["operations"].items()
    ]
