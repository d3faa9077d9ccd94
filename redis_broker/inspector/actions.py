"""Actions of the admin inspector: a GET shows a confirmation page, a POST acts.

Every action needs ``redis_broker.change_broker`` (checked on GET too, so nobody is
shown a button they may not press), runs only on POST with a valid CSRF token (the
admin site's ``admin_view`` adds ``csrf_protect``), is recorded as a ``LogEntry`` on
the ``Broker`` content type, reports with ``messages.success`` / ``messages.error``
and redirects back to the page it came from. A GET never writes to Redis.

The Redis writes are the small functions at the top of the module. Below them each
action is an ``Action`` record (its form, its question, the page it returns to, and
the function that calls one of the writes and words the report); ``confirm_or_act``
does the rest, the same way for all of them. An empty selection goes back to the list
with a "Select at least one…" message. The admin log's object text is a one-line
summary of what was done ("Acked 3 entries of orders (group billing)"), which is what
the admin index's "Recent actions" shows; the change message holds the details.

``send_message`` (a form, not a confirmation) publishes a test message to a stream or
broadcasts one on a channel, with the same permission, CSRF, log and messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis
from django import forms
from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import router, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from .. import wire
from ..conf import BrokerConfig, get_config
from ..connection import REDIS_ERRORS, get_redis, publish_command
from ..exceptions import MalformedEntry, WriteRefused
from ..models import Broker, OutboxEvent
from ..naming import (
    dead_letter_name,
    dead_letter_source,
    list_consumers_name,
    prefixed,
    processing_list_name,
    unprefixed,
)
from ..publishing import broadcast, publish, trim_args
from ..relay import disconnect_user
from ..relay.status import read_relays
from . import queries
from .forms import (
    BulkDeadLettersForm,
    ClaimForm,
    ConfirmForm,
    CreateGroupForm,
    EntryIdsForm,
    OutboxRowsForm,
    SelectionField,
    SendMessageForm,
    TrimForm,
)
from .pages import (
    Crumbs,
    InspectorAdmin,
    admin_url,
    inspector_view,
    list_crumbs,
    pending_crumbs,
    render,
    stream_crumbs,
    with_query,
)
from .search import SearchBy, chunks, matching_ids

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
    return [wire.reply_text(entry_id, "replace") for entry_id in claimed]


def retry_entries(
    client: redis.Redis, key: str, group: str, ids: Sequence[str], idle_ms: int
) -> list[str]:
    """Make pending ``ids`` due for redelivery at once; return the ids that were pending.

    Each stays with its consumer, its idle time set to ``idle_ms`` (``CLAIM_IDLE_MS``) by
    ``XCLAIM … IDLE … JUSTID``, so the next reclaim scan of any worker of the group
    (``XAUTOCLAIM``, at most 5 s apart) delivers it again: only this group sees it again,
    unlike a copy appended to the stream. ``JUSTID`` keeps the delivery count, so an
    entry at its last delivery still reaches the dead letters.
    """
    read = client.pipeline(transaction=False)
    for entry_id in ids:
        read.xpending_range(key, group, min=entry_id, max=entry_id, count=1)
    owners: dict[str, list[str]] = {}
    for rows in read.execute():
        for row in rows:
            consumer = wire.reply_text(row["consumer"], "replace")
            owners.setdefault(consumer, []).append(wire.reply_text(row["message_id"], "replace"))
    if not owners:
        return []
    write = client.pipeline(transaction=False)
    for consumer, owned in owners.items():
        write.xclaim(
            key,
            group,
            consumer,
            min_idle_time=0,
            message_ids=cast(list[Any], owned),
            idle=idle_ms,
            justid=True,
        )
    retried = [entry_id for claimed in write.execute() for entry_id in claimed]
    return [wire.reply_text(entry_id, "replace") for entry_id in retried]


@dataclass(frozen=True, slots=True)
class RequeueResult:
    """What a requeue did: new ids per original stream, and what it could not do."""

    requeued: list[tuple[str, str, str]]  # (dead-letter id, stream or list name, new id)
    missing: list[str]  # ids no longer in the dead-letter stream
    failed: list[tuple[str, str]]  # (dead-letter id, reason); left in the dead-letter stream


#: What ``RequeueResult.requeued`` gives as the new id of an item pushed back to a list.
LIST_TAIL = "(end of the list)"
#: ... and of a channel consumer's dead letter, published again.
PUBLISHED = "(published again)"


def requeue_entries(
    client: redis.Redis, config: BrokerConfig, *, stream: str, ids: Sequence[str]
) -> RequeueResult:
    """Append dead-lettered entries to their original stream again, then remove them.

    Each entry gets a new id in its ``original_stream`` (the consumer's ``stream`` when
    the field is missing) with its original fields, ``event_id`` included
    (``wire.requeue_fields``). A list consumer's dead letter goes back to the end of its
    list instead (``RPUSH``, as ``push()`` adds), as the element it was, same ``event_id``;
    a channel consumer's (``original_kind`` "channel") is published on its channel again,
    as the message it was.
    An entry is deleted from the dead-letter stream only once its copy was appended, so
    a failure can duplicate an event (same ``event_id``) but never lose one.
    """
    prefix = config.key_prefix
    dlq_key = prefixed(prefix, dead_letter_name(stream, config.consumers.dead_letter_suffix))
    read = client.pipeline(transaction=False)
    for entry_id in ids:
        read.xrange(dlq_key, min=entry_id, max=entry_id, count=1)
    plans: list[tuple[str, str, dict[str, str], str]] = []  # id, target, fields, origin
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
        plans.append((entry_id, target, wire.requeue_fields(fields), _origin(fields)))
    lists = _list_targets(client, prefix, plans)
    # Not publishing.publish_encoded: it raises on the first refused XADD, and a requeue
    # must report each entry and remove from the dead letters exactly those appended.
    xadd_args = trim_args(config.stream_maxlen)
    write = client.pipeline(transaction=False)
    written: list[tuple[str, str, str]] = []
    for entry_id, target, fields, origin in plans:
        kind = origin if origin == "channel" else ("list" if target in lists else "stream")
        try:
            _write_back(write, client, kind, prefixed(prefix, target), fields, xadd_args)
        except (MalformedEntry, TypeError) as exc:
            failed.append((entry_id, f"{target}: {exc}"))
            continue
        written.append((entry_id, target, kind))
    requeued: list[tuple[str, str, str]] = []
    replies = write.execute(raise_on_error=False)
    for (entry_id, target, kind), reply in zip(written, replies, strict=True):
        if isinstance(reply, Exception):
            failed.append((entry_id, f"{target}: {reply}"))
        else:
            new_id = _NEW_IDS.get(kind) or wire.reply_text(reply, "replace")
            requeued.append((entry_id, target, new_id))
    if requeued:
        client.xdel(dlq_key, *[entry_id for entry_id, _, _ in requeued])
    return RequeueResult(requeued=requeued, missing=missing, failed=failed)


#: What a requeued dead letter's new id reads as, by where it went back (a stream's is its id).
_NEW_IDS = {"list": LIST_TAIL, "channel": PUBLISHED}


def _origin(fields: Mapping[str, str]) -> str:
    """Return where a dead letter came from: "channel" (its ``original_kind``), "list"
    (no ``original_id``: list consumers dead-letter with ``""``), else "stream"."""
    if fields.get(wire.ORIGINAL_KIND) == "channel":
        return "channel"
    return "stream" if fields.get(wire.ORIGINAL_ID) else "list"


def _write_back(
    write: Any,
    client: redis.Redis,
    kind: str,
    key: str,
    fields: dict[str, str],
    xadd_args: dict[str, Any],
) -> None:
    """Queue on ``write`` what puts one dead letter back: a PUBLISH for a channel's, an
    RPUSH for a list's, else an XADD; raise what encoding the message raises."""
    if kind == "channel":
        write.execute_command(publish_command(client), key, _list_element(fields))
    elif kind == "list":
        write.rpush(key, _list_element(fields))
    else:
        write.xadd(key, dict(fields), **xadd_args)


def _list_targets(
    client: redis.Redis, prefix: str, plans: Sequence[tuple[str, str, dict[str, str], str]]
) -> set[str]:
    """Return the requeue targets that are lists (a channel's dead letter has none).

    A target is a list when its key holds one, or when it is absent (an emptied list)
    and the dead letter came from a list.
    """
    plans = [plan for plan in plans if plan[3] != "channel"]
    targets = sorted({target for _, target, _, _ in plans})
    pipe = client.pipeline(transaction=False)
    for target in targets:
        pipe.type(prefixed(prefix, target))
    kinds = dict(zip(targets, pipe.execute(), strict=True))
    return {
        target
        for _, target, _, origin in plans
        if kinds[target] == b"list" or (kinds[target] == b"none" and origin == "list")
    }


def _list_element(fields: dict[str, str]) -> str:
    """Return the list element a list consumer's dead letter was (same ``event_id``)."""
    entry = wire.decode_entry(fields)
    return wire.encode_message(
        entry.data,
        type=entry.type,
        event_id=entry.event_id or None,
        published_at=entry.published_at or None,
        headers=entry.headers or None,
    )


# Move every item of a processing list back to the head of its list, oldest first (as
# live workers return a dead one's: ``_RETURN`` in consumers/lists.py), then forget its
# consumer, in one step. Every key it touches derives from the list's name; the heartbeat
# is checked before, outside the script, as consumers/lists.py does.
_REQUEUE_PROCESSING = """
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do moved = moved + 1 end
redis.call('SREM', KEYS[3], ARGV[1])
return moved
"""


def requeue_processing_list(
    client: redis.Redis, prefix: str, list_name: str, consumer: str
) -> int | None:
    """Return a dead worker's items to the head of ``list_name``; return how many moved.

    Returns None, and changes nothing, while the worker's heartbeat has not expired: it is
    still handling those items. The items keep their delivery counts (``<list>:deliveries``),
    as when a live worker returns them, so a poison item still reaches the dead letters.
    """
    if queries.worker_alive(client, prefix=prefix, consumer=consumer):
        return None
    keys = [
        prefixed(prefix, processing_list_name(list_name, consumer)),
        prefixed(prefix, list_name),
        prefixed(prefix, list_consumers_name(list_name)),
    ]
    # EVAL, not a cached script: an operator's rare click, not a worker's loop.
    return int(client.eval(_REQUEUE_PROCESSING, len(keys), *keys, consumer))


def delete_entries(client: redis.Redis, key: str, ids: Sequence[str]) -> int:
    """Delete ``ids`` from the stream; return how many existed."""
    return int(client.xdel(key, *ids))


#: Most dead letters one bulk action requeues or deletes; run it again for the rest.
BULK_LIMIT = 10_000
#: Dead letters per round trip of a bulk action (one pipeline, or one ``XDEL``, each).
BULK_CHUNK = 1000


def requeue_many(
    client: redis.Redis, config: BrokerConfig, *, stream: str, ids: Sequence[str]
) -> RequeueResult:
    """Requeue ``ids`` (oldest first) ``BULK_CHUNK`` at a time with ``requeue_entries``.

    Each chunk is appended, then removed from the dead letters, before the next is read:
    a failure midway leaves the rest where they were, and never loses one.
    """
    requeued: list[tuple[str, str, str]] = []
    missing: list[str] = []
    failed: list[tuple[str, str]] = []
    for chunk in chunks(ids, BULK_CHUNK):
        result = requeue_entries(client, config, stream=stream, ids=chunk)
        requeued += result.requeued
        missing += result.missing
        failed += result.failed
    return RequeueResult(requeued=requeued, missing=missing, failed=failed)


def delete_many(client: redis.Redis, key: str, ids: Sequence[str]) -> int:
    """Delete ``ids`` from the stream, ``BULK_CHUNK`` per ``XDEL``; return how many existed."""
    pipe = client.pipeline(transaction=False)
    for chunk in chunks(ids, BULK_CHUNK):
        pipe.xdel(key, *chunk)
    return sum(int(n) for n in pipe.execute())


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


# --- Database writes (the outbox) --------------------------------------------------------


def delete_outbox_rows(ids: Sequence[int]) -> tuple[int, list[str]]:
    """Delete the outbox rows ``ids``; return how many were still there, and their streams.

    Their events are lost: the relay never sends them. The rows are locked first where
    the database can (a relay sending them meanwhile finishes first, and deletes them).
    """
    with transaction.atomic(using=router.db_for_write(OutboxEvent)):
        rows = OutboxEvent.objects.select_for_update().filter(id__in=list(ids))
        streams = sorted(set(rows.values_list("stream", flat=True)))
        deleted = rows.delete()[0]
    return deleted, streams


def retry_outbox_rows(ids: Sequence[int]) -> tuple[int, list[str]]:
    """Clear the attempts and last error of outbox rows ``ids``; return how many, and streams.

    The relay sends every waiting row again on each pass, in order per stream; a row it
    refused before goes alone, after its stream's others. Cleared, the row is like a new
    one: it goes in the relay's next batch, and if the cause remains its error is fresh.
    """
    rows = OutboxEvent.objects.filter(id__in=list(ids))
    streams = sorted(set(rows.values_list("stream", flat=True)))
    return rows.update(attempts=0, last_error=""), streams


# --- Actions as records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What an action acts on, found before its page is shown (``KeyMissing`` when gone)."""

    client: redis.Redis
    config: BrokerConfig
    stream: str  # the stream (or, for a processing list, the list) named in the URL
    name: str  # the key acted on: ``stream``, its dead-letter stream, or a processing list
    group: str = ""
    consumer: str = ""
    pending: int = 0  # pending for the consumer, else the group; or a processing list's items
    consumers: tuple[str, ...] = ()  # the group's consumers

    @property
    def key(self) -> str:
        """Return the Redis key of the stream acted on."""
        return prefixed(self.config.key_prefix, self.name)

    @property
    def length(self) -> int:
        """Return the stream's length now (read only by a question that shows it)."""
        return int(self.client.xlen(self.key))

    @property
    def owner(self) -> str:
        """Return whether the processing list's worker lives (read only by its question)."""
        prefix = self.config.key_prefix
        if queries.worker_alive(self.client, prefix=prefix, consumer=self.consumer):
            return (
                "Its worker is alive (its heartbeat has not expired) and still handles these "
                "items: the requeue will be refused."
            )
        return "Its worker's heartbeat has expired: the worker is gone."


@dataclass(frozen=True, slots=True)
class Report:
    """What an action did: ``message`` in full (the success message and the admin log's
    change message), ``summary`` in one line (the admin log's object text, shown by
    "Recent actions": "Acked 3 entries of orders (group billing)")."""

    message: str
    summary: str


#: The page an action returns to. ``entries`` is where the selected entries were listed:
#: the stream's page, or for a dead-letter stream the dead letters page of its stream.
BackPage = Literal["stream", "entries", "dead_letters", "groups", "pending", "lists", "outbox"]
#: Breadcrumb labels of the pages an action returns to (the pending page names its group).
_LABELS = {"stream": "Entries", "dead_letters": "Dead letters", "groups": "Groups"}


@dataclass(frozen=True, slots=True)
class Action:
    """One inspector action, described once; calling it serves its page like a view.

    ``act`` calls one of the Redis writes with the form's cleaned data and returns the
    report: a ``Report``, or its message alone (the log's summary is then the title and
    the stream). A ``redis.ResponseError`` it raises is reported as "<title> failed: …"
    and nothing is logged. ``question`` is formatted with the ``Target`` as ``t``.
    """

    act: Callable[[HttpRequest, Target, dict[str, Any]], Report | str]
    title: str  # the page's title and button ("Yes, <title>")
    form_class: type[forms.Form]  # ``ConfirmForm`` when only the CSRF token is posted
    question: str
    back: BackPage
    lists: Literal["pending", "entries", "outbox"] | None = None  # how the selection is shown
    danger: bool = True  # a red button: the action loses data or position
    on_dead_letters: bool = False  # acts on the stream's dead-letter stream
    on_processing_list: bool = False  # acts on list ``stream``'s processing list of ``consumer``
    on_outbox: bool = False  # acts on outbox rows (the database), not on Redis

    def __call__(
        self,
        request: HttpRequest,
        model_admin: InspectorAdmin,
        /,
        stream: str = "",
        group: str = "",
        consumer: str = "",
    ) -> HttpResponse:
        """Serve the action's page for the stream (group, consumer) named in the URL."""
        return _serve(request, model_admin, self, stream, group, consumer)


@inspector_view(change=True)
def _serve(
    request: HttpRequest,
    model_admin: InspectorAdmin,
    action: Action,
    stream: str,
    group: str,
    consumer: str,
) -> HttpResponse:
    """Check the permission, find the target, then confirm or act (``Action.__call__``)."""
    return confirm_or_act(request, model_admin, action, locate(action, stream, group, consumer))


def locate(action: Action, stream: str, group: str = "", consumer: str = "") -> Target:
    """Return what ``action`` acts on; ``KeyMissing`` when the stream, group or consumer is gone."""
    config = get_config()
    client = get_redis()
    if action.on_outbox:
        return Target(client, config, stream, stream)
    if action.on_processing_list:
        length = queries.processing_list_length(
            client, prefix=config.key_prefix, name=stream, consumer=consumer
        )
        name = processing_list_name(stream, consumer)
        return Target(client, config, stream, name, consumer=consumer, pending=length)
    name = stream
    if action.on_dead_letters:
        name = dead_letter_name(stream, config.consumers.dead_letter_suffix)
    if not group:
        if not queries.is_stream(client, prefix=config.key_prefix, name=name):
            raise queries.KeyMissing(f"There is no stream {name!r}.", name=name)
        return Target(client, config, stream, name)
    info = queries.get_group(client, prefix=config.key_prefix, name=stream, group=group)
    pending = info.pending
    if consumer:
        found = [c for c in info.consumers if c.name == consumer]
        if not found:
            raise queries.KeyMissing(f"Group {group!r} of {stream!r} has no consumer {consumer!r}.")
        pending = found[0].pending
    names = tuple(c.name for c in info.consumers)
    return Target(client, config, stream, name, group, consumer, pending, names)


def confirm_or_act(
    request: HttpRequest, model_admin: InspectorAdmin, action: Action, target: Target
) -> HttpResponse:
    """Show the confirmation page on GET; on a valid POST run the action, log, report, redirect."""
    back_url, crumbs = _way_back(request, action, target)
    form_class = action.form_class
    selection_field = form_class.base_fields.get("ids")
    submitted = request.POST if request.method == "POST" else request.GET
    if isinstance(selection_field, SelectionField) and not any(
        i.strip() for i in submitted.getlist("ids")
    ):
        # Nothing ticked: back to the list, which says so, rather than an error page.
        messages.warning(request, selection_field.empty_message)
        return HttpResponseRedirect(back_url)
    if request.method == "POST":
        form = form_class(request.POST)
        if form.is_valid():
            try:
                report = action.act(request, target, form.cleaned_data)
            except redis.ResponseError as exc:
                messages.error(request, f"{action.title} failed: {exc}")
                return HttpResponseRedirect(back_url)
            object_id, object_text = _logged_object(action, target)
            if isinstance(report, str):
                report = Report(report, f"{action.title}: {object_text}")
            log_action(request, object_id, report.summary, report.message)
            messages.success(request, report.message)
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
    if isinstance(selection_field, SelectionField):
        ids = [i for i in submitted.getlist("ids") if selection_field.is_item(i)]
    return render(
        request,
        model_admin,
        "redis_broker/admin/confirm.html",
        title=action.title,
        crumbs=crumbs,
        form=form,
        question=action.question.format(t=target),
        items=_selection(action, target, ids) if ids else [],
        ids=ids,
        back_url=back_url,
        danger=action.danger,
        has_errors=form.is_bound and bool(form.errors),
        item_kind=action.lists or "",
        consumer_names=target.consumers,
    )


def log_action(request: HttpRequest, object_id: str, object_repr: str, message: str) -> None:
    """Record ``message`` in the admin log, on the ``Broker`` content type."""
    LogEntry.objects.create(
        user_id=cast(int, request.user.pk),
        content_type=ContentType.objects.get_for_model(Broker),
        object_id=object_id,
        object_repr=object_repr[:200],
        action_flag=CHANGE,
        change_message=message,
    )


#: How the admin log's object id names a list: stream names holding "/" have no pages
#: (so no actions), hence no stream's id starts so.
LIST_OBJECT_ID = "lists/"
#: The admin log's object id of actions on the outbox (``BrokerAdmin`` links it there).
OUTBOX_OBJECT_ID = "outbox/"
#: How the admin log's object id names a Pub/Sub channel (a test message broadcast).
CHANNEL_OBJECT_ID = "pubsub/"


def _logged_object(action: Action, target: Target) -> tuple[str, str]:
    """Return the admin log's object id and text for ``action`` on ``target``.

    The id is the stream name, which "Recent actions" links back to (``BrokerAdmin``
    redirects it to the stream's page); a list's is ``LIST_OBJECT_ID`` + its name.
    """
    if action.on_processing_list:
        return LIST_OBJECT_ID + target.stream, f"list {target.stream}"
    if action.on_outbox:
        return OUTBOX_OBJECT_ID, "the outbox"
    return target.stream, f"stream {target.stream}"


def _way_back(request: HttpRequest, action: Action, target: Target) -> tuple[str, Crumbs]:
    """Return the URL of the page ``action`` returns to, and the breadcrumbs through it."""
    here = (action.title, None)
    stream, page = target.stream, action.back
    if page == "outbox":
        url = admin_url(request, "outbox")
        return url, [("Outbox", url), here]
    if page == "lists":
        return admin_url(request, "lists"), list_crumbs(request, here)
    if page == "pending":
        url = admin_url(request, "pending", stream=stream, group=target.group)
        return url, pending_crumbs(request, stream, target.group, here)
    if page == "entries":
        source = dead_letter_source(stream, target.config.consumers.dead_letter_suffix)
        page, stream = ("dead_letters", source) if source else ("stream", stream)
    url = admin_url(request, page, stream=stream)
    if page == "dead_letters" and not queries.is_stream(
        target.client, prefix=target.config.key_prefix, name=stream
    ):
        return url, list_crumbs(request, (f"{stream}: dead letters", url), here)
    return url, stream_crumbs(request, stream, (_LABELS[page], url), here)


def _selection(action: Action, target: Target, ids: list[str]) -> list[Any]:
    """Return the selected entries that still exist, as the confirmation page lists them."""
    prefix = target.config.key_prefix
    if action.lists == "pending":
        return queries.read_pending_by_id(
            target.client, prefix=prefix, name=target.name, group=target.group, ids=ids
        )
    if action.lists == "entries":
        return queries.read_entries_by_id(target.client, prefix=prefix, name=target.name, ids=ids)
    if action.lists == "outbox":
        return queries.outbox_rows_by_id([int(i) for i in ids])
    return []


def _initial(form_class: type[forms.Form], request: HttpRequest) -> dict[str, Any]:
    initial: dict[str, Any] = {}
    for name, form_field in form_class.base_fields.items():
        if name == "ids":
            initial[name] = request.GET.getlist("ids")
        elif name in request.GET:
            initial[name] = request.GET[name]
        elif form_field.initial is not None:
            initial[name] = form_field.initial
    return initial


def _entries(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"


def _events(count: int) -> str:
    return f"{count} outbox event" if count == 1 else f"{count} outbox events"


def _ids_text(ids: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


# --- The actions on Redis ----------------------------------------------------------------


def _ack(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    ids = data["ids"]
    done = ack_entries(t.client, t.key, t.group, ids)
    return Report(
        f"Acknowledged {done} of {len(ids)} pending entries of group {t.group} "
        f"on stream {t.stream}: {_ids_text(ids)}.",
        f"Acked {_entries(done)} of {t.stream} (group {t.group})",
    )


#: Acknowledge the selected pending entries of a group.
ack = Action(
    _ack,
    title="Acknowledge pending entries",
    form_class=EntryIdsForm,
    question="Acknowledge these entries for group “{t.group}”? They will not be processed "
    "again by this group.",
    back="pending",
    lists="pending",
)


def _claim(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    ids, consumer = data["ids"], data["consumer"]
    claimed = claim_entries(t.client, t.key, t.group, consumer, ids)
    return Report(
        f"Claimed {len(claimed)} of {len(ids)} pending entries of group {t.group} on "
        f"stream {t.stream} for consumer {consumer}: {_ids_text(claimed)}.",
        f"Claimed {_entries(len(claimed))} of {t.stream} for {consumer} (group {t.group})",
    )


#: Hand the selected pending entries to a chosen consumer of the group.
claim = Action(
    _claim,
    title="Claim pending entries",
    form_class=ClaimForm,
    question="Give these entries of group “{t.group}” to another consumer? Their delivery "
    "counts are kept.",
    back="pending",
    lists="pending",
    danger=False,
)


def _retry(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    ids = data["ids"]
    idle_ms = t.config.consumers.claim_idle_ms
    retried = retry_entries(t.client, t.key, t.group, ids, idle_ms)
    return Report(
        f"Marked {len(retried)} of {len(ids)} pending entries of group {t.group} on stream "
        f"{t.stream} for redelivery: the next reclaim scan of a running worker of the group "
        f"delivers them again (delivery counts kept): {_ids_text(retried)}.",
        f"Retried {_entries(len(retried))} of {t.stream} now (group {t.group})",
    )


#: Make the selected pending entries due for redelivery to the group at once.
retry = Action(
    _retry,
    title="Retry pending entries now",
    form_class=EntryIdsForm,
    question="Deliver these entries of group “{t.group}” again now? Each stays with its "
    "consumer but counts as abandoned, so the next reclaim scan of any running worker of the "
    "group (within 5 s) hands it out again; other groups are not affected. Their delivery "
    "counts are kept: an entry at its last delivery goes to the dead letters if it fails "
    "again. An entry its consumer is still handling may then run twice.",
    back="pending",
    lists="pending",
    danger=False,
)


def _requeue(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    result = requeue_entries(t.client, t.config, stream=t.stream, ids=data["ids"])
    if result.failed or result.missing:
        problems = [f"{i}: {reason}" for i, reason in result.failed]
        problems += [f"{i}: no longer in {t.name}" for i in result.missing]
        messages.error(request, "Not requeued: " + "; ".join(problems[:20]))
    if not result.requeued:
        raise redis.ResponseError("no entry was requeued")
    moved = ", ".join(f"{old} → {target} {new}" for old, target, new in result.requeued[:20])
    targets = _ids_text(sorted({target for _, target, _ in result.requeued}), limit=5)
    count = len(result.requeued)
    return Report(
        f"Requeued {_entries(count)} from {t.name} (same event ids): {moved}.",
        f"Requeued {count} dead letter{'s' if count != 1 else ''} of {t.stream} to {targets}",
    )


#: Append the selected dead-lettered entries to their original stream again.
requeue = Action(
    _requeue,
    title="Requeue dead letters",
    form_class=EntryIdsForm,
    question="Append these entries to their original stream again (as new entries with the "
    "same event ids) and remove them from the dead-letter stream?",
    back="dead_letters",
    lists="entries",
    danger=False,
    on_dead_letters=True,
)


def _requeue_processing(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    moved = requeue_processing_list(t.client, t.config.key_prefix, t.stream, t.consumer)
    if moved is None:
        raise redis.ResponseError(
            f"the worker {t.consumer} is alive (its heartbeat has not expired) and still "
            "handles the items of its processing list; nothing was moved"
        )
    return Report(
        f"Moved {moved} items of consumer {t.consumer} back to the head of list {t.stream} "
        f"and removed {t.consumer} from the list's consumers.",
        f"Requeued {moved} items of dead worker {t.consumer} to list {t.stream}",
    )


#: Return a dead worker's processing list to the head of its list.
requeue_processing = Action(
    _requeue_processing,
    title="Requeue processing list",
    form_class=ConfirmForm,
    question="Move the {t.pending} items that consumer “{t.consumer}” took from list "
    "“{t.stream}” back to the head of the list, oldest first, so the next worker takes "
    "them, and remove “{t.consumer}” from the list's consumers? {t.owner}",
    back="lists",
    danger=False,
    on_processing_list=True,
)


def _delete(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    ids = data["ids"]
    done = delete_entries(t.client, t.key, ids)
    return Report(
        f"Deleted {done} of {len(ids)} entries from stream {t.stream}: {_ids_text(ids)}.",
        f"Deleted {_entries(done)} of {t.stream}",
    )


#: Delete the selected entries of a stream (or of a dead-letter stream).
delete = Action(
    _delete,
    title="Delete entries",
    form_class=EntryIdsForm,
    question="Delete these entries from stream “{t.stream}”? This cannot be undone.",
    back="entries",
    lists="entries",
)


def _trim(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    removed = trim_stream(t.client, t.key, data["maxlen"], approximate=data["approximate"])
    how = "about " if data["approximate"] else ""
    return Report(
        f"Trimmed stream {t.stream} to {how}{data['maxlen']} entries: {removed} removed.",
        f"Trimmed {t.stream} to {how}{data['maxlen']} entries ({removed} removed)",
    )


#: Trim a stream to its newest N entries.
trim = Action(
    _trim,
    title="Trim stream",
    form_class=TrimForm,
    question="Remove the oldest entries of “{t.stream}” (now {t.length} entries), keeping "
    "the newest ones? Entries not yet processed by a group are removed too.",
    back="stream",
)


def _remove_consumer(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    dropped = delete_consumer(t.client, t.key, t.group, t.consumer)
    return Report(
        f"Deleted consumer {t.consumer} from group {t.group} on stream {t.stream}; "
        f"{dropped} pending entries were dropped.",
        f"Deleted consumer {t.consumer} of {t.stream} (group {t.group})",
    )


#: Delete a consumer from a group (its pending entries are dropped from the group).
remove_consumer = Action(
    _remove_consumer,
    title="Delete consumer",
    form_class=ConfirmForm,
    question="Delete consumer “{t.consumer}” from group “{t.group}”? Its {t.pending} pending "
    "entries will no longer be pending for anyone (claim them to another consumer first "
    "to keep them).",
    back="groups",
)


def _add_group(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    create_group(t.client, t.key, data["group"], data["start"])
    return Report(
        f"Created group {data['group']} on stream {t.stream}, starting at {data['start']}.",
        f"Created group {data['group']} on {t.stream}",
    )


#: Create a consumer group on a stream.
add_group = Action(
    _add_group,
    title="Create consumer group",
    form_class=CreateGroupForm,
    question="Create a consumer group on “{t.stream}”.",
    back="groups",
    danger=False,
)


def _remove_group(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    if not destroy_group(t.client, t.key, t.group):
        raise redis.ResponseError(f"group {t.group} no longer exists")
    return Report(
        f"Destroyed group {t.group} on stream {t.stream} ({t.pending} were pending).",
        f"Destroyed group {t.group} of {t.stream}",
    )


#: Destroy a consumer group (its position and pending entries are lost).
remove_group = Action(
    _remove_group,
    title="Destroy consumer group",
    form_class=ConfirmForm,
    question="Destroy group “{t.group}” of “{t.stream}”? Its position in the stream and its "
    "{t.pending} pending entries are lost; its consumers will re-create it from the start "
    "of the stream when they restart.",
    back="groups",
)


# --- The actions on the outbox ------------------------------------------------------------


def _delete_outbox(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    ids = data["ids"]
    done, streams = delete_outbox_rows(ids)
    names = _ids_text(streams, limit=5)
    return Report(
        f"Deleted {done} of {len(ids)} outbox rows ({names}): {_ids_text([str(i) for i in ids])}. "
        "Their events will never reach Redis.",
        f"Deleted {_events(done)} ({names})",
    )


#: Delete the selected outbox rows: their events are dropped.
delete_outbox = Action(
    _delete_outbox,
    title="Delete outbox events",
    form_class=OutboxRowsForm,
    question="Delete these events from the outbox? They will never reach Redis, and no "
    "consumer will see them. This cannot be undone.",
    back="outbox",
    lists="outbox",
    on_outbox=True,
)


def _retry_outbox(request: HttpRequest, t: Target, data: dict[str, Any]) -> Report:
    ids = data["ids"]
    done, streams = retry_outbox_rows(ids)
    names = _ids_text(streams, limit=5)
    return Report(
        f"Cleared the attempts and errors of {done} of {len(ids)} outbox rows ({names}): the "
        "relay sends them in its next batch, in order.",
        f"Retried {_events(done)} ({names})",
    )


#: Clear the selected rows' attempts and errors, so the relay sends them as new ones.
retry_outbox = Action(
    _retry_outbox,
    title="Retry outbox events",
    form_class=OutboxRowsForm,
    question="Send these events again now? Their attempts and last error are cleared, so "
    "the relay sends them in its next batch, each stream's in order. Fix the cause first "
    "(a key of another type at the stream's name, say): else they fail again.",
    back="outbox",
    lists="outbox",
    danger=False,
    on_outbox=True,
)


# --- Send a test message -----------------------------------------------------------------


@inspector_view(change=True)
def send_message(request: HttpRequest, model_admin: InspectorAdmin) -> HttpResponse:
    """Publish a test message to a stream, or broadcast one on a channel (POST only).

    A GET shows the form, pre-filled from the query string (``kind``, ``name``, ``type``,
    ``payload``). A valid POST publishes with ``publish`` or ``broadcast`` (as application
    code would, ``KEY_PREFIX`` added), logs, reports the new entry id or how many
    subscribers received it, and shows the form again, filled as it was sent.
    """
    here = admin_url(request, "send")
    if request.method == "POST":
        form = SendMessageForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                report, object_id = _send(data)
            except (redis.ResponseError, WriteRefused, TypeError) as exc:
                messages.error(request, f"Not sent: {exc}")
            else:
                log_action(request, object_id, report.summary, report.message)
                messages.success(request, report.message)
                again = {k: data[k] for k in ("kind", "name", "type")}
                if len(data["payload_text"]) <= 2000:
                    again["payload"] = data["payload_text"]
                return HttpResponseRedirect(with_query(here, again))
    else:
        form = SendMessageForm(initial={k: v for k, v in request.GET.items() if v})
    return render(
        request,
        model_admin,
        "redis_broker/admin/send.html",
        title="Send a test message",
        crumbs=[("Send a test message", None)],
        form=form,
    )


def _send(data: dict[str, Any]) -> tuple[Report, str]:
    """Publish or broadcast the form's message; return the report and the log's object id."""
    name, kind, event_type, payload = data["name"], data["kind"], data["type"], data["payload"]
    described = f" of type {event_type}" if event_type else ""
    if kind == "stream":
        entry_id = publish(name, payload, type=event_type)
        return (
            Report(
                f"Published a test message{described} to stream {name} as entry {entry_id}.",
                f"Sent a test message to {name} (entry {entry_id})",
            ),
            name,
        )
    receivers = broadcast(name, payload, type=event_type)
    subscribers = f"{receivers} subscriber{'s' if receivers != 1 else ''}"
    return (
        Report(
            f"Broadcast a test message{described} on channel {name}: {subscribers} received it.",
            f"Broadcast a test message on {name} ({subscribers})",
        ),
        CHANNEL_OBJECT_ID + name,
    )


# --- The relay: disconnect a user's sockets ------------------------------------------------


def _relay_user(user_id: str) -> Any:
    """Return the user whose sockets the disconnect action closes; ``KeyMissing`` if none."""
    model = get_user_model()
    try:
        return model._default_manager.get(pk=user_id)
    except (model.DoesNotExist, ValueError, ValidationError):
        raise queries.KeyMissing(f"There is no user with id {user_id!r}.") from None


def _sockets_text(client: redis.Redis, prefix: str, user_id: str) -> str:
    """Return how many relay sockets the user has open, as the relay processes last said."""
    relay = read_relays(client, prefix=prefix)
    open_now = sum(u.sockets for u in relay.users if u.id == user_id)
    processes = sum(1 for p in relay.processes if any(u.id == user_id for u in p.users))
    sockets = f"{open_now} relay socket{'s' if open_now != 1 else ''}"
    where = f" on {processes} server process{'es' if processes != 1 else ''}" if open_now else ""
    return f"{sockets} open{where}"


@inspector_view(change=True)
def disconnect_relay_user(
    request: HttpRequest, model_admin: InspectorAdmin, user_id: str
) -> HttpResponse:
    """Close every relay socket of one user on every server process: GET asks, POST acts.

    It calls ``redis_broker.relay.disconnect_user``: the sockets close with code 4001 and
    ``broker.js`` does not reconnect them. The user stays logged in, so a reloaded page
    opens a new socket; the question says so.
    """
    user = _relay_user(user_id)
    config = get_config()
    client = get_redis()
    name, pk = user.get_username(), str(user.pk)
    back_url = admin_url(request, "pubsub")
    title = "Disconnect user"
    form = ConfirmForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        before = _sockets_text(client, config.key_prefix, pk)
        try:
            sent = disconnect_user(user)
        except REDIS_ERRORS as exc:
            messages.error(request, f"{title} failed: {exc}")
            return HttpResponseRedirect(back_url)
        if not sent:
            messages.error(
                request,
                f"{title} failed: there is no CHANNEL_LAYERS to reach the server processes; "
                "no socket was closed.",
            )
            return HttpResponseRedirect(back_url)
        message = (
            f"Closed every relay socket of user {name} (id {pk}) on every server process "
            f"({before} before); their pages stopped receiving messages (close code 4001)."
        )
        summary = f"Disconnected {name} from the relay"
        log_action(request, f"{CHANNEL_OBJECT_ID}relay/users/{pk}", summary, message)
        messages.success(request, message)
        return HttpResponseRedirect(back_url)
    return render(
        request,
        model_admin,
        "redis_broker/admin/confirm.html",
        title=title,
        crumbs=[("Pub/Sub channels", back_url), (title, None)],
        form=form,
        question=(
            f"Close every relay socket of user “{name}” (id {pk}), on every server process? "
            f"The relay shows {_sockets_text(client, config.key_prefix, pk)}. Their pages "
            "stop receiving messages and do not reconnect; the user stays logged in, so a "
            "reloaded page connects again (deactivate the user to keep them out)."
        ),
        items=[],
        ids=[],
        back_url=back_url,
        danger=True,
        has_errors=False,
        item_kind="",
        consumer_names=(),
    )


# --- Bulk actions on dead letters -----------------------------------------------------------


def _search_text(by: SearchBy | None, needle: str) -> str:
    """Return how a bulk action's search reads in a sentence ("whose type is “x”")."""
    if by is None:
        return ""
    what = {
        "event_id": "whose event id is",
        "type": "whose type is",
        "payload": "whose payload contains",
        "error": "whose error contains",
        "id": "with entry id",
    }[by]
    return f" {what} “{needle}”"


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


@inspector_view(change=True)
def requeue_matching(
    request: HttpRequest, model_admin: InspectorAdmin, stream: str
) -> HttpResponse:
    """Requeue every dead letter of ``stream``, or every one a search matches (bulk).

    GET asks, showing how many match (at most ``BULK_LIMIT``) and the first ones; POST
    finds them again (what matches then is what is acted on), requeues them oldest
    first, ``BULK_CHUNK`` per round trip, and writes one admin log entry for the lot.
    """
    return _bulk(request, model_admin, stream, requeue=True)


@inspector_view(change=True)
def delete_matching(request: HttpRequest, model_admin: InspectorAdmin, stream: str) -> HttpResponse:
    """Delete every dead letter of ``stream``, or every one a search matches (bulk).

    As ``requeue_matching``: GET asks, POST acts on at most ``BULK_LIMIT``, one log entry.
    """
    return _bulk(request, model_admin, stream, requeue=False)


def _bulk(
    request: HttpRequest, model_admin: InspectorAdmin, stream: str, *, requeue: bool
) -> HttpResponse:
    """Confirm (GET) or run (POST) a bulk requeue or delete of ``stream``'s dead letters."""
    config = get_config()
    client = get_redis()
    prefix = config.key_prefix
    dlq = dead_letter_name(stream, config.consumers.dead_letter_suffix)
    title = "Requeue dead letters in bulk" if requeue else "Delete dead letters in bulk"
    back_url = admin_url(request, "dead_letters", stream=stream)
    if queries.is_stream(client, prefix=prefix, name=stream):
        crumbs = stream_crumbs(request, stream, ("Dead letters", back_url), (title, None))
    else:
        crumbs = list_crumbs(request, (f"{stream}: dead letters", back_url), (title, None))
    form = BulkDeadLettersForm(request.POST if request.method == "POST" else request.GET)
    matching = None
    searched = ""
    if form.is_valid():
        by, needle = form.cleaned_data["by"], form.cleaned_data["q"]
        matching = matching_ids(
            client, prefix=prefix, name=dlq, by=by, needle=needle, limit=BULK_LIMIT
        )
        searched = _search_text(by, needle)
    if request.method == "POST" and matching is not None:
        if not matching.ids:
            messages.warning(request, f"No dead letter of {dlq}{searched}: nothing was done.")
            return HttpResponseRedirect(back_url)
        report = (
            _requeue_bulk(request, client, config, stream, dlq, matching.ids, searched)
            if requeue
            else _delete_bulk(client, prefix, dlq, matching.ids, searched)
        )
        if report is None:
            return HttpResponseRedirect(back_url)
        if not matching.complete:
            report = Report(
                f"{report.message} More may match: run it again for the rest.", report.summary
            )
        log_action(request, stream, report.summary, report.message)
        messages.success(request, report.message)
        return HttpResponseRedirect(back_url)
    question = ""
    items: list[queries.Entry] = []
    if matching is not None:
        n = len(matching.ids)
        found = _count(n, "dead letter", "dead letters")
        more = ""
        if not matching.complete:
            # "All" reads oldest first; a search scans newest first.
            which = "oldest" if by is None else "newest"
            more = f" (the {which} {BULK_LIMIT:,}; more remain)"
        if requeue:
            question = (
                f"Requeue {found} of {dlq}{searched}{more}? Each is appended to its original "
                "stream again (a list consumer's to the end of its list), with the same event "
                f"id, then removed from {dlq}, oldest first, {BULK_CHUNK:,} per round trip."
            )
        else:
            question = (
                f"Delete {found} of {dlq}{searched}{more}? Their events are lost: no consumer "
                "will see them again. This cannot be undone."
            )
        if not n:
            question = f"No dead letter of {dlq}{searched}: there is nothing to do."
        items = queries.read_entries_by_id(client, prefix=prefix, name=dlq, ids=matching.ids[:20])
        if n > len(items):
            question += f" The first {len(items)} are shown."
    return render(
        request,
        model_admin,
        "redis_broker/admin/confirm.html",
        title=title,
        crumbs=crumbs,
        form=form,
        question=question,
        items=items,
        ids=[],
        back_url=back_url,
        danger=not requeue,
        has_errors=bool(form.errors) or not (matching and matching.ids),
        item_kind="entries",
        consumer_names=(),
    )


def _requeue_bulk(
    request: HttpRequest,
    client: redis.Redis,
    config: BrokerConfig,
    stream: str,
    dlq: str,
    ids: Sequence[str],
    searched: str,
) -> Report | None:
    """Requeue ``ids`` of ``dlq``; return the report, or None when nothing was requeued."""
    result = requeue_many(client, config, stream=stream, ids=ids)
    if result.failed or result.missing:
        problems = [f"{i}: {reason}" for i, reason in result.failed]
        problems += [f"{i}: no longer in {dlq}" for i in result.missing]
        more = f" and {len(problems) - 20} more" if len(problems) > 20 else ""
        messages.error(request, "Not requeued: " + "; ".join(problems[:20]) + more)
    if not result.requeued:
        messages.error(request, "Requeue dead letters in bulk failed: no entry was requeued.")
        return None
    count = len(result.requeued)
    targets = _ids_text(sorted({target for _, target, _ in result.requeued}), limit=5)
    first, last = result.requeued[0], result.requeued[-1]
    return Report(
        f"Requeued {_count(count, 'dead letter', 'dead letters')} of {dlq}{searched} to "
        f"{targets} (same event ids), oldest first: {first[0]} → {first[2]} … "
        f"{last[0]} → {last[2]}.",
        f"Requeued {_count(count, 'dead letter', 'dead letters')} of {dlq} to {targets}",
    )


def _delete_bulk(
    client: redis.Redis, prefix: str, dlq: str, ids: Sequence[str], searched: str
) -> Report:
    """Delete ``ids`` of ``dlq``; return the report."""
    done = delete_many(client, prefixed(prefix, dlq), ids)
    return Report(
        f"Deleted {_count(done, 'dead letter', 'dead letters')} of {dlq}{searched}: "
        f"{ids[0]} … {ids[-1]}.",
        f"Deleted {_count(done, 'dead letter', 'dead letters')} of {dlq}",
    )
