"""Actions of the admin inspector: a GET shows a confirmation page, a POST acts.

Every action needs ``redis_broker.change_broker`` (checked on GET too, so nobody is
shown a button they may not press), runs only on POST with a valid CSRF token (the
admin site's ``admin_view`` adds ``csrf_protect``), is recorded as a ``LogEntry`` on
the ``Broker`` content type, reports with ``messages.success`` / ``messages.error``
and redirects back to the page it came from. A GET never writes to Redis.

The Redis writes are the small functions at the top of the module. Below them each
action is an ``Action`` record (its form, its question, the page it returns to, and
the function that calls one of the writes and words the report); ``confirm_or_act``
does the rest, the same way for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

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
from ..naming import dead_letter_name, dead_letter_source, prefixed, unprefixed
from ..publishing import trim_args
from . import queries
from .forms import ClaimForm, ConfirmForm, CreateGroupForm, EntryIdsForm, TrimForm
from .pages import (
    Crumbs,
    InspectorAdmin,
    admin_url,
    inspector_view,
    pending_crumbs,
    render,
    stream_crumbs,
)

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
    dlq_key = prefixed(prefix, dead_letter_name(stream, config.consumers.dead_letter_suffix))
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
    # Not publishing.publish_encoded: it raises on the first refused XADD, and a requeue
    # must report each entry and remove from the dead letters exactly those appended.
    xadd_args = trim_args(config.stream_maxlen)
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
            requeued.append((entry_id, target, wire.reply_text(reply, "replace")))
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


# --- Actions as records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What an action acts on, found before its page is shown (``KeyMissing`` when gone)."""

    client: redis.Redis
    config: BrokerConfig
    stream: str  # the stream named in the URL
    name: str  # the stream acted on: ``stream``, or its dead-letter stream
    group: str = ""
    consumer: str = ""
    pending: int = 0  # entries pending for the consumer, else for the group
    consumers: tuple[str, ...] = ()  # the group's consumers

    @property
    def key(self) -> str:
        """Return the Redis key of the stream acted on."""
        return prefixed(self.config.key_prefix, self.name)

    @property
    def length(self) -> int:
        """Return the stream's length now (read only by a question that shows it)."""
        return int(self.client.xlen(self.key))


#: The page an action returns to. ``entries`` is where the selected entries were listed:
#: the stream's page, or for a dead-letter stream the dead letters page of its stream.
BackPage = Literal["stream", "entries", "dead_letters", "groups", "pending"]
#: Breadcrumb labels of the pages an action returns to (the pending page names its group).
_LABELS = {"stream": "Entries", "dead_letters": "Dead letters", "groups": "Groups"}


@dataclass(frozen=True, slots=True)
class Action:
    """One inspector action, described once; calling it serves its page like a view.

    ``act`` calls one of the Redis writes with the form's cleaned data and returns the
    report, shown as the success message and written as the admin log's change message;
    a ``redis.ResponseError`` it raises is reported as "<title> failed: …" and nothing is
    logged. ``question`` is formatted with the ``Target`` as ``t``.
    """

    act: Callable[[HttpRequest, Target, dict[str, Any]], str]
    title: str  # the page's title and button ("Yes, <title>")
    form_class: type[forms.Form]  # ``ConfirmForm`` when only the CSRF token is posted
    question: str
    back: BackPage
    lists: Literal["pending", "entries"] | None = None  # how the selected ids are shown
    danger: bool = True  # a red button: the action loses data or position
    on_dead_letters: bool = False  # acts on the stream's dead-letter stream

    def __call__(
        self,
        request: HttpRequest,
        model_admin: InspectorAdmin,
        /,
        stream: str,
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
    name = stream
    if action.on_dead_letters:
        name = dead_letter_name(stream, config.consumers.dead_letter_suffix)
    if not group:
        if not queries.is_stream(client, prefix=config.key_prefix, name=name):
            raise queries.KeyMissing(f"There is no stream {name!r}.")
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
    if request.method == "POST":
        form = form_class(request.POST)
        if form.is_valid():
            try:
                message = action.act(request, target, form.cleaned_data)
            except redis.ResponseError as exc:
                messages.error(request, f"{action.title} failed: {exc}")
                return HttpResponseRedirect(back_url)
            log_action(request, target.stream, message)
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
        ids = [i for i in raw if wire.is_entry_id(i)]
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


def _way_back(request: HttpRequest, action: Action, target: Target) -> tuple[str, Crumbs]:
    """Return the URL of the page ``action`` returns to, and the breadcrumbs through it."""
    here = (action.title, None)
    stream, page = target.stream, action.back
    if page == "pending":
        url = admin_url(request, "pending", stream=stream, group=target.group)
        return url, pending_crumbs(request, stream, target.group, here)
    if page == "entries":
        source = dead_letter_source(stream, target.config.consumers.dead_letter_suffix)
        page, stream = ("dead_letters", source) if source else ("stream", stream)
    url = admin_url(request, page, stream=stream)
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


def _ids_text(ids: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


# --- The eight actions -------------------------------------------------------------------


def _ack(request: HttpRequest, t: Target, data: dict[str, Any]) -> str:
    ids = data["ids"]
    done = ack_entries(t.client, t.key, t.group, ids)
    return (
        f"Acknowledged {done} of {len(ids)} pending entries of group {t.group} "
        f"on stream {t.stream}: {_ids_text(ids)}."
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


def _claim(request: HttpRequest, t: Target, data: dict[str, Any]) -> str:
    ids, consumer = data["ids"], data["consumer"]
    claimed = claim_entries(t.client, t.key, t.group, consumer, ids)
    return (
        f"Claimed {len(claimed)} of {len(ids)} pending entries of group {t.group} on "
        f"stream {t.stream} for consumer {consumer}: {_ids_text(claimed)}."
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


def _requeue(request: HttpRequest, t: Target, data: dict[str, Any]) -> str:
    result = requeue_entries(t.client, t.config, stream=t.stream, ids=data["ids"])
    if result.failed or result.missing:
        problems = [f"{i}: {reason}" for i, reason in result.failed]
        problems += [f"{i}: no longer in {t.name}" for i in result.missing]
        messages.error(request, "Not requeued: " + "; ".join(problems[:20]))
    if not result.requeued:
        raise redis.ResponseError("no entry was requeued")
    moved = ", ".join(f"{old} → {target} {new}" for old, target, new in result.requeued[:20])
    return f"Requeued {_entries(len(result.requeued))} from {t.name} (same event ids): {moved}."


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


def _delete(request: HttpRequest, t: Target, data: dict[str, Any]) -> str:
    ids = data["ids"]
    done = delete_entries(t.client, t.key, ids)
    return f"Deleted {done} of {len(ids)} entries from stream {t.stream}: {_ids_text(ids)}."


#: Delete the selected entries of a stream (or of a dead-letter stream).
delete = Action(
    _delete,
    title="Delete entries",
    form_class=EntryIdsForm,
    question="Delete these entries from stream “{t.stream}”? This cannot be undone.",
    back="entries",
    lists="entries",
)


def _trim(request: HttpRequest, t: Target, data: dict[str, Any]) -> str:
    removed = trim_stream(t.client, t.key, data["maxlen"], approximate=data["approximate"])
    how = "about " if data["approximate"] else ""
    return f"Trimmed stream {t.stream} to {how}{data['maxlen']} entries: {removed} removed."


#: Trim a stream to its newest N entries.
trim = Action(
    _trim,
    title="Trim stream",
    form_class=TrimForm,
    question="Remove the oldest entries of “{t.stream}” (now {t.length} entries), keeping "
    "the newest ones? Entries not yet processed by a group are removed too.",
    back="stream",
)


def _remove_consumer(request: HttpRequest, t: Target, data: dict[str, Any]) -> str:
    dropped = delete_consumer(t.client, t.key, t.group, t.consumer)
    return (
        f"Deleted consumer {t.consumer} from group {t.group} on stream {t.stream}; "
        f"{dropped} pending entries were dropped."
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


def _add_group(request: HttpRequest, t: Target, data: dict[str, Any]) -> str:
    create_group(t.client, t.key, data["group"], data["start"])
    return f"Created group {data['group']} on stream {t.stream}, starting at {data['start']}."


#: Create a consumer group on a stream.
add_group = Action(
    _add_group,
    title="Create consumer group",
    form_class=CreateGroupForm,
    question="Create a consumer group on “{t.stream}”.",
    back="groups",
    danger=False,
)


def _remove_group(request: HttpRequest, t: Target, data: dict[str, Any]) -> str:
    if not destroy_group(t.client, t.key, t.group):
        raise redis.ResponseError(f"group {t.group} no longer exists")
    return f"Destroyed group {t.group} on stream {t.stream} ({t.pending} were pending)."


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
