"""Actions of the admin inspector: a GET shows a confirmation page, a POST acts.

Every action needs ``redis_broker.change_broker`` (checked on GET too, so nobody is
shown a button they may not press), runs only on POST with a valid CSRF token (the
admin site's ``admin_view`` adds ``csrf_protect``), is recorded as a ``LogEntry`` on
the ``Broker`` content type, reports with ``messages.success`` / ``messages.error``
and redirects back to the page it came from. A GET never writes to Redis.

The Redis writes are the small functions at the top of the module; the views below
them only validate, confirm, call one of them and report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis
from django import forms
from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from .. import wire
from ..conf import BrokerConfig, get_config
from ..connection import get_redis
from ..exceptions import MalformedEntry
from ..models import Broker
from ..naming import prefixed, unprefixed
from . import queries
from .forms import ClaimForm, ConfirmForm, CreateGroupForm, EntryIdsForm, TrimForm
from .views import Crumbs, admin_url, inspector_view, render, stream_crumbs

if TYPE_CHECKING:
    from ..admin import BrokerAdmin


# --- Redis writes ------------------------------------------------------------------------


def ack_entries(client: redis.Redis, key: str, group: str, ids: Sequence[str]) -> int:
    """Acknowledge ``ids`` in ``group``; return how many were pending."""
    return int(client.xack(key, group, *ids))


def claim_entries(
    client: redis.Redis, key: str, group: str, consumer: str, ids: Sequence[str]
) -> list[str]:
    """Give pending ``ids`` to ``consumer``; return the ids it now owns.

    ``JUSTID`` keeps the delivery counters: handing an entry to another consumer is
    not a delivery, and must not bring it closer to the dead-letter stream.
    """
    claimed = client.xclaim(
        key, group, consumer, min_idle_time=0, message_ids=list(ids), justid=True
    )
    return [queries.text(entry_id) for entry_id in claimed]


@dataclass(frozen=True, slots=True)
class RequeueResult:
    """What a requeue did: new ids per original stream, and what it could not do."""

    requeued: list[tuple[str, str, str]]  # (dead-letter id, stream name, new id)
    missing: list[str]  # ids no longer in the dead-letter stream
    failed: list[tuple[str, str]]  # (dead-letter id, reason); left in the dead-letter stream


def requeue_entries(
    client: redis.Redis, config: BrokerConfig, *, stream: str, ids: Sequence[str]
) -> RequeueResult:
    """Append dead-lettered entries to their original stream again, then remove them.

    Each entry gets a new id in its ``original_stream`` (the consumer's ``stream`` when
    the field is missing) with its original fields, ``event_id`` included
    (``wire.requeue_fields``). An entry is deleted from the dead-letter stream only once
    its copy was appended, so a failure can duplicate an event (same ``event_id``) but
    never lose one.
    """
    prefix = config.key_prefix
    dlq_key = prefixed(prefix, stream + config.consumers.dead_letter_suffix)
    read = client.pipeline(transaction=False)
    for entry_id in ids:
        read.xrange(dlq_key, min=entry_id, max=entry_id, count=1)
    plans: list[tuple[str, str, dict[str, str]]] = []
    missing: list[str] = []
    failed: list[tuple[str, str]] = []
    for entry_id, rows in zip(ids, read.execute(), strict=True):
        if not rows:
            missing.append(entry_id)
            continue
        try:
            fields = wire.fields_as_text(rows[0][1])
        except MalformedEntry as exc:
            failed.append((entry_id, str(exc)))
            continue
        # Accept the field with or without KEY_PREFIX: it names a stream of this prefix.
        target = unprefixed(prefix, fields.get(wire.ORIGINAL_STREAM) or stream)
        plans.append((entry_id, target, wire.requeue_fields(fields)))
    xadd_args: dict[str, Any] = {}
    if config.stream_maxlen is not None:
        xadd_args = {"maxlen": config.stream_maxlen, "approximate": True}
    write = client.pipeline(transaction=False)
    for _entry_id, target, fields in plans:
        write.xadd(prefixed(prefix, target), dict(fields), **xadd_args)  # type: ignore[arg-type]
    requeued: list[tuple[str, str, str]] = []
    for (entry_id, target, _fields), reply in zip(
        plans, write.execute(raise_on_error=False), strict=True
    ):
        if isinstance(reply, Exception):
            failed.append((entry_id, f"{target}: {reply}"))
        else:
            requeued.append((entry_id, target, queries.text(reply)))
    if requeued:
        client.xdel(dlq_key, *[entry_id for entry_id, _, _ in requeued])
    return RequeueResult(requeued=requeued, missing=missing, failed=failed)


def delete_entries(client: redis.Redis, key: str, ids: Sequence[str]) -> int:
    """Delete ``ids`` from the stream; return how many existed."""
    return int(client.xdel(key, *ids))


def trim_stream(client: redis.Redis, key: str, maxlen: int, *, approximate: bool) -> int:
    """Trim the stream to its newest ``maxlen`` entries; return how many were removed."""
    return int(client.xtrim(key, maxlen=maxlen, approximate=approximate))


def delete_consumer(client: redis.Redis, key: str, group: str, consumer: str) -> int:
    """Remove ``consumer`` from ``group``; return how many pending entries it dropped."""
    return int(client.xgroup_delconsumer(key, group, consumer))


def create_group(client: redis.Redis, key: str, group: str, start: str) -> None:
    """Create ``group`` on an existing stream, reading from ``start`` (``$``, ``0`` or an id)."""
    client.xgroup_create(key, group, id=start, mkstream=False)


def destroy_group(client: redis.Redis, key: str, group: str) -> bool:
    """Destroy ``group``; return False when it did not exist."""
    return bool(client.xgroup_destroy(key, group))


# --- The confirm-then-act view helper ------------------------------------------------


def log_action(request: HttpRequest, object_id: str, message: str) -> None:
    """Record ``message`` in the admin log, on the ``Broker`` content type."""
    LogEntry.objects.create(
        user_id=cast(int, request.user.pk),
        content_type=ContentType.objects.get_for_model(Broker),
        object_id=object_id,
        object_repr=f"stream {object_id}"[:200],
        action_flag=CHANGE,
        change_message=message,
    )


def confirm_or_act(
    request: HttpRequest,
    model_admin: BrokerAdmin,
    *,
    form_class: type[forms.Form],
    title: str,
    crumbs: Crumbs,
    stream: str,
    back_url: str,
    act: Callable[[dict[str, Any]], str],
    question: str,
    describe: Callable[[list[str]], list[Any]] | None = None,
    danger: bool = True,
    **context: Any,
) -> HttpResponse:
    """Show the confirmation page on GET; on a valid POST run ``act``, log, report, redirect.

    ``act`` returns the success message (also the log message) and may raise
    ``redis.ResponseError`` (reported as an error; nothing is logged). ``describe``
    turns the selected ids into the items listed on the confirmation page.
    """
    if request.method == "POST":
        form = form_class(request.POST)
        if form.is_valid():
            try:
                message = act(form.cleaned_data)
            except redis.ResponseError as exc:
                messages.error(request, f"{title} failed: {exc}")
                return HttpResponseRedirect(back_url)
            log_action(request, stream, message)
            messages.success(request, message)
            return HttpResponseRedirect(back_url)
    else:
        # The confirmation page: pre-fill from the query string (the selection), but
        # show errors only for the selection itself, not for fields still to be typed.
        form = form_class(initial=_initial(form_class, request))
        selection = EntryIdsForm(request.GET) if "ids" in form_class.base_fields else None
        if selection is not None and not selection.is_valid():
            form = form_class(request.GET)
            form.is_valid()
    ids: list[str] = []
    if "ids" in form_class.base_fields:
        raw = (request.POST if request.method == "POST" else request.GET).getlist("ids")
        ids = [i for i in raw if queries.ENTRY_ID_RE.fullmatch(i)]
    return render(
        request,
        model_admin,
        "redis_broker/admin/confirm.html",
        title=title,
        crumbs=[*crumbs, (title, None)],
        form=form,
        question=question,
        items=describe(ids) if describe and ids else [],
        ids=ids,
        back_url=back_url,
        danger=danger,
        has_errors=form.is_bound and bool(form.errors),
        **context,
    )


def _initial(form_class: type[forms.Form], request: HttpRequest) -> dict[str, Any]:
    initial: dict[str, Any] = {}
    for name, field in form_class.base_fields.items():
        if name == "ids":
            initial[name] = request.GET.getlist("ids")
        elif name in request.GET:
            initial[name] = request.GET[name]
        elif field.initial is not None:
            initial[name] = field.initial
    return initial


def _entries(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"


def _ids_text(ids: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _require_stream(client: redis.Redis, prefix: str, stream: str) -> None:
    if not queries.is_stream(client, prefix=prefix, name=stream):
        raise queries.KeyMissing(f"There is no stream {stream!r}.")


def _pending_crumbs(request: HttpRequest, stream: str, group: str) -> Crumbs:
    return stream_crumbs(
        request,
        stream,
        ("Groups", admin_url(request, "groups", stream=stream)),
        (f"{group}: pending", admin_url(request, "pending", stream=stream, group=group)),
    )


def _describe_pending(
    client: redis.Redis, key: str, group: str
) -> Callable[[list[str]], list[Any]]:
    def describe(ids: list[str]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(key, group, min=entry_id, max=entry_id, count=1)
        found: list[queries.PendingEntry] = []
        for rows in pipe.execute(raise_on_error=False):
            if isinstance(rows, list):
                found.extend(
                    queries.PendingEntry(
                        id=queries.text(r["message_id"]),
                        consumer=queries.text(r["consumer"]),
                        idle_ms=int(r["time_since_delivered"]),
                        deliveries=int(r["times_delivered"]),
                    )
                    for r in rows
                )
        return found

    return describe


def _describe_entries(
    client: redis.Redis, prefix: str, name: str
) -> Callable[[list[str]], list[Any]]:
    def describe(ids: list[str]) -> list[Any]:
        return queries.read_entries_by_id(client, prefix=prefix, name=name, ids=ids)

    return describe


# --- Action views ------------------------------------------------------------------------


@inspector_view(change=True)
def ack(request: HttpRequest, model_admin: BrokerAdmin, stream: str, group: str) -> HttpResponse:
    """Acknowledge the selected pending entries of a group."""
    config = get_config()
    client = get_redis()
    key = prefixed(config.key_prefix, stream)
    queries.get_group(client, prefix=config.key_prefix, name=stream, group=group)

    def act(data: dict[str, Any]) -> str:
        ids = data["ids"]
        done = ack_entries(client, key, group, ids)
        return (
            f"Acknowledged {done} of {len(ids)} pending entries of group {group} "
            f"on stream {stream}: {_ids_text(ids)}."
        )

    return confirm_or_act(
        request,
        model_admin,
        form_class=EntryIdsForm,
        title="Acknowledge pending entries",
        crumbs=_pending_crumbs(request, stream, group),
        stream=stream,
        back_url=admin_url(request, "pending", stream=stream, group=group),
        act=act,
        question=f"Acknowledge these entries for group “{group}”? They will not be "
        "processed again by this group.",
        describe=_describe_pending(client, key, group),
        item_kind="pending",
    )


@inspector_view(change=True)
def claim(request: HttpRequest, model_admin: BrokerAdmin, stream: str, group: str) -> HttpResponse:
    """Hand the selected pending entries to a chosen consumer of the group."""
    config = get_config()
    client = get_redis()
    key = prefixed(config.key_prefix, stream)
    info = queries.get_group(client, prefix=config.key_prefix, name=stream, group=group)

    def act(data: dict[str, Any]) -> str:
        ids, consumer = data["ids"], data["consumer"]
        claimed = claim_entries(client, key, group, consumer, ids)
        return (
            f"Claimed {len(claimed)} of {len(ids)} pending entries of group {group} on "
            f"stream {stream} for consumer {consumer}: {_ids_text(claimed)}."
        )

    return confirm_or_act(
        request,
        model_admin,
        form_class=ClaimForm,
        title="Claim pending entries",
        crumbs=_pending_crumbs(request, stream, group),
        stream=stream,
        back_url=admin_url(request, "pending", stream=stream, group=group),
        act=act,
        question=f"Give these entries of group “{group}” to another consumer? Their "
        "delivery counts are kept.",
        describe=_describe_pending(client, key, group),
        danger=False,
        item_kind="pending",
        consumer_names=[c.name for c in info.consumers],
    )


@inspector_view(change=True)
def requeue(request: HttpRequest, model_admin: BrokerAdmin, stream: str) -> HttpResponse:
    """Append the selected dead-lettered entries to their original stream again."""
    config = get_config()
    client = get_redis()
    dlq = stream + config.consumers.dead_letter_suffix
    _require_stream(client, config.key_prefix, dlq)
    back_url = admin_url(request, "dead_letters", stream=stream)

    def act(data: dict[str, Any]) -> str:
        result = requeue_entries(client, config, stream=stream, ids=data["ids"])
        if result.failed or result.missing:
            problems = [f"{i}: {reason}" for i, reason in result.failed]
            problems += [f"{i}: no longer in {dlq}" for i in result.missing]
            messages.error(request, "Not requeued: " + "; ".join(problems[:20]))
        if not result.requeued:
            raise redis.ResponseError("no entry was requeued")
        moved = ", ".join(f"{old} → {target} {new}" for old, target, new in result.requeued[:20])
        return f"Requeued {_entries(len(result.requeued))} from {dlq} (same event ids): {moved}."

    return confirm_or_act(
        request,
        model_admin,
        form_class=EntryIdsForm,
        title="Requeue dead letters",
        crumbs=stream_crumbs(request, stream, ("Dead letters", back_url)),
        stream=stream,
        back_url=back_url,
        act=act,
        question="Append these entries to their original stream again (as new entries "
        "with the same event ids) and remove them from the dead-letter stream?",
        describe=_describe_entries(client, config.key_prefix, dlq),
        danger=False,
        item_kind="entries",
    )


@inspector_view(change=True)
def delete(request: HttpRequest, model_admin: BrokerAdmin, stream: str) -> HttpResponse:
    """Delete the selected entries of a stream (or of a dead-letter stream)."""
    config = get_config()
    client = get_redis()
    _require_stream(client, config.key_prefix, stream)
    key = prefixed(config.key_prefix, stream)
    suffix = config.consumers.dead_letter_suffix
    if stream.endswith(suffix) and len(stream) > len(suffix):
        base = stream[: -len(suffix)]
        back_url = admin_url(request, "dead_letters", stream=base)
        crumbs = stream_crumbs(request, base, ("Dead letters", back_url))
    else:
        back_url = admin_url(request, "stream", stream=stream)
        crumbs = stream_crumbs(request, stream, ("Entries", back_url))

    def act(data: dict[str, Any]) -> str:
        ids = data["ids"]
        done = delete_entries(client, key, ids)
        return f"Deleted {done} of {len(ids)} entries from stream {stream}: {_ids_text(ids)}."

    return confirm_or_act(
        request,
        model_admin,
        form_class=EntryIdsForm,
        title="Delete entries",
        crumbs=crumbs,
        stream=stream,
        back_url=back_url,
        act=act,
        question=f"Delete these entries from stream “{stream}”? This cannot be undone.",
        describe=_describe_entries(client, config.key_prefix, stream),
        item_kind="entries",
    )


@inspector_view(change=True)
def trim(request: HttpRequest, model_admin: BrokerAdmin, stream: str) -> HttpResponse:
    """Trim a stream to its newest N entries."""
    config = get_config()
    client = get_redis()
    _require_stream(client, config.key_prefix, stream)
    key = prefixed(config.key_prefix, stream)
    back_url = admin_url(request, "stream", stream=stream)

    def act(data: dict[str, Any]) -> str:
        removed = trim_stream(client, key, data["maxlen"], approximate=data["approximate"])
        how = "about " if data["approximate"] else ""
        return f"Trimmed stream {stream} to {how}{data['maxlen']} entries: {removed} removed."

    return confirm_or_act(
        request,
        model_admin,
        form_class=TrimForm,
        title="Trim stream",
        crumbs=stream_crumbs(request, stream, ("Entries", back_url)),
        stream=stream,
        back_url=back_url,
        act=act,
        question=f"Remove the oldest entries of “{stream}” (now {client.xlen(key)} entries), "
        "keeping the newest ones? Entries not yet processed by a group are removed too.",
    )


@inspector_view(change=True)
def remove_consumer(
    request: HttpRequest, model_admin: BrokerAdmin, stream: str, group: str, consumer: str
) -> HttpResponse:
    """Delete a consumer from a group (its pending entries are dropped from the group)."""
    config = get_config()
    client = get_redis()
    key = prefixed(config.key_prefix, stream)
    info = queries.get_group(client, prefix=config.key_prefix, name=stream, group=group)
    found = [c for c in info.consumers if c.name == consumer]
    if not found:
        raise queries.KeyMissing(f"Group {group!r} of {stream!r} has no consumer {consumer!r}.")
    back_url = admin_url(request, "groups", stream=stream)

    def act(data: dict[str, Any]) -> str:
        dropped = delete_consumer(client, key, group, consumer)
        return (
            f"Deleted consumer {consumer} from group {group} on stream {stream}; "
            f"{dropped} pending entries were dropped."
        )

    return confirm_or_act(
        request,
        model_admin,
        form_class=ConfirmForm,
        title="Delete consumer",
        crumbs=stream_crumbs(request, stream, ("Groups", back_url)),
        stream=stream,
        back_url=back_url,
        act=act,
        question=f"Delete consumer “{consumer}” from group “{group}”? Its "
        f"{found[0].pending} pending entries will no longer be pending for anyone "
        "(claim them to another consumer first to keep them).",
    )


@inspector_view(change=True)
def add_group(request: HttpRequest, model_admin: BrokerAdmin, stream: str) -> HttpResponse:
    """Create a consumer group on a stream."""
    config = get_config()
    client = get_redis()
    _require_stream(client, config.key_prefix, stream)
    key = prefixed(config.key_prefix, stream)
    back_url = admin_url(request, "groups", stream=stream)

    def act(data: dict[str, Any]) -> str:
        create_group(client, key, data["group"], data["start"])
        return f"Created group {data['group']} on stream {stream}, starting at {data['start']}."

    return confirm_or_act(
        request,
        model_admin,
        form_class=CreateGroupForm,
        title="Create consumer group",
        crumbs=stream_crumbs(request, stream, ("Groups", back_url)),
        stream=stream,
        back_url=back_url,
        act=act,
        question=f"Create a consumer group on “{stream}”.",
        danger=False,
    )


@inspector_view(change=True)
def remove_group(
    request: HttpRequest, model_admin: BrokerAdmin, stream: str, group: str
) -> HttpResponse:
    """Destroy a consumer group (its position and pending entries are lost)."""
    config = get_config()
    client = get_redis()
    key = prefixed(config.key_prefix, stream)
    info = queries.get_group(client, prefix=config.key_prefix, name=stream, group=group)
    back_url = admin_url(request, "groups", stream=stream)

    def act(data: dict[str, Any]) -> str:
        if not destroy_group(client, key, group):
            raise redis.ResponseError(f"group {group} no longer exists")
        return f"Destroyed group {group} on stream {stream} ({info.pending} were pending)."

    return confirm_or_act(
        request,
        model_admin,
        form_class=ConfirmForm,
        title="Destroy consumer group",
        crumbs=stream_crumbs(request, stream, ("Groups", back_url)),
        stream=stream,
        back_url=back_url,
        act=act,
        question=f"Destroy group “{group}” of “{stream}”? Its position in the stream and "
        f"its {info.pending} pending entries are lost; its consumers will re-create it "
        "from the start of the stream when they restart.",
    )
