"""Which changes between two AsyncAPI documents break the older one's contract.

``breaking_changes(committed, current)`` lists, one sentence each:

* a removed channel (matched by its kind and address, so ids may change freely);
* a removed operation, or one that moved to another channel or stopped replying;
* a removed message of a channel both documents have;
* a new required field in a message's payload, at any depth;
* a changed field type, at any depth (``$ref`` followed in each document's
  ``components.schemas``; ``T | None`` compared as ``T`` and ``null``).

Anything else passes: new channels, operations, messages and optional fields, and
changes to descriptions. One function per kind of break, each pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

Document = Mapping[str, Any]

#: A JSON value's JSON Schema type.
_JSON_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
    list: "array",
    dict: "object",
}


def breaking_changes(committed: Document, current: Document) -> list[str]:
    """Return every way ``current`` breaks ``committed``, empty when it breaks nothing."""
    return [
        *removed_channels(committed, current),
        *removed_operations(committed, current),
        *moved_operations(committed, current),
        *lost_replies(committed, current),
        *removed_messages(committed, current),
        *new_required_fields(committed, current),
        *changed_field_types(committed, current),
    ]


# --- Channels and operations -----------------------------------------------------------


def _channels(document: Document) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """Return the document's channels by key: ``kind address``, or ``#id`` when it has no
    address (the reply inboxes), mapped to (label for messages, channel)."""
    found = {}
    for cid, channel in (document.get("channels") or {}).items():
        if not isinstance(channel, Mapping):
            continue
        address = channel.get("address")
        kind = channel.get("x-redis-kind", "channel")
        if address is None:
            found[f"#{cid}"] = (f"channel {cid!r}", channel)
        else:
            found[f"{kind} {address}"] = (f"{kind} {address!r}", channel)
    return found


def _channel_key_of(document: Document, ref: Any) -> str | None:
    """Return the key (``_channels``) of the channel an operation's ``$ref`` points to."""
    target = ref.get("$ref", "") if isinstance(ref, Mapping) else ""
    cid = target.removeprefix("#/channels/")
    channel = (document.get("channels") or {}).get(cid)
    if not isinstance(channel, Mapping):
        return None
    address = channel.get("address")
    return f"#{cid}" if address is None else f"{channel.get('x-redis-kind', 'channel')} {address}"


def _operations(document: Document) -> dict[str, Mapping[str, Any]]:
    return {
        oid: op for oid, op in (document.get("operations") or {}).items() if isinstance(op, Mapping)
    }


def removed_channels(committed: Document, current: Document) -> list[str]:
    """Return a line per channel of ``committed`` that ``current`` no longer has."""
    now = _channels(current)
    return [
        f"{label} was removed."
        for key, (label, _channel) in sorted(_channels(committed).items())
        if key not in now
    ]


def removed_operations(committed: Document, current: Document) -> list[str]:
    """Return a line per operation of ``committed`` that ``current`` no longer has."""
    now = _operations(current)
    return [
        f"operation {oid!r} ({op.get('action', '?')}) was removed."
        for oid, op in sorted(_operations(committed).items())
        if oid not in now
    ]


def moved_operations(committed: Document, current: Document) -> list[str]:
    """Return a line per operation that now has the other action or another channel."""
    now = _operations(current)
    lines = []
    for oid, op in sorted(_operations(committed).items()):
        new = now.get(oid)
        if new is None:
            continue
        if new.get("action") != op.get("action"):
            lines.append(
                f"operation {oid!r} changed from {op.get('action')} to {new.get('action')}."
            )
        before = _channel_key_of(committed, op.get("channel"))
        after = _channel_key_of(current, new.get("channel"))
        if before != after:
            lines.append(f"operation {oid!r} moved from {before} to {after}.")
    return lines


def lost_replies(committed: Document, current: Document) -> list[str]:
    """Return a line per operation that answered (or made) requests and no longer does."""
    now = _operations(current)
    return [
        f"operation {oid!r} no longer has a reply: requests to it would time out."
        for oid, op in sorted(_operations(committed).items())
        if "reply" in op and oid in now and "reply" not in now[oid]
    ]


# --- Messages ----------------------------------------------------------------------------


def _message_pairs(
    committed: Document, current: Document
) -> Iterator[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """Yield (where, committed message, current message) for each message in both."""
    now = _channels(current)
    for key, (label, channel) in sorted(_channels(committed).items()):
        if key not in now:
            continue
        new_messages = now[key][1].get("messages") or {}
        for mid, message in sorted((channel.get("messages") or {}).items()):
            new = new_messages.get(mid)
            if isinstance(message, Mapping) and isinstance(new, Mapping):
                yield f"{label}, message {mid!r}", message, new


def removed_messages(committed: Document, current: Document) -> list[str]:
    """Return a line per message removed from a channel both documents have."""
    now = _channels(current)
    lines = []
    for key, (label, channel) in sorted(_channels(committed).items()):
        if key in now:
            kept = now[key][1].get("messages") or {}
            lines += [
                f"{label}: message {mid!r} was removed."
                for mid in sorted(channel.get("messages") or {})
                if mid not in kept
            ]
    return lines


def new_required_fields(committed: Document, current: Document) -> list[str]:
    """Return a line per field that a message's payload now requires and did not."""
    return [
        f"{where}: {path} is a new required field."
        for where, walk in _payload_walks(committed, current)
        for path in walk.required
    ]


def changed_field_types(committed: Document, current: Document) -> list[str]:
    """Return a line per field of a message's payload whose type changed."""
    return [
        f"{where}: {path} changed type from {before} to {after}."
        for where, walk in _payload_walks(committed, current)
        for path, before, after in walk.retyped
    ]


def _payload_walks(committed: Document, current: Document) -> Iterator[tuple[str, _Walk]]:
    """Yield each message both documents have, as its label and the walk that compared
    its payloads."""
    for where, old, new in _message_pairs(committed, current):
        walk = _Walk(committed, current)
        walk.compare(old.get("payload"), new.get("payload"), "")
        yield where, walk


# --- Schemas ---------------------------------------------------------------------------------


class _Walk:
    """Compare two schemas field by field, following ``$ref`` in each document.

    Each pair of named schemas is compared once: a type used by several fields reports
    its breaks once, and a recursive type ends.
    """

    def __init__(self, committed: Document, current: Document) -> None:
        self.old_components = _components(committed)
        self.new_components = _components(current)
        self.required: list[str] = []
        self.retyped: list[tuple[str, str, str]] = []
        self._seen: set[tuple[str, str]] = set()

    def compare(self, old: Any, new: Any, path: str) -> None:
        """Compare ``old`` (committed) with ``new`` (current) at ``path`` and below."""
        old, old_ref = _resolve(old, self.old_components)
        new, new_ref = _resolve(new, self.new_components)
        if old_ref or new_ref:
            if (old_ref, new_ref) in self._seen:
                return
            self._seen.add((old_ref, new_ref))
        if path:
            before = _types(old, self.old_components)
            after = _types(new, self.new_components)
            if before != after:
                self.retyped.append((path, _describe(before), _describe(after)))
                return  # what lies under a changed type is no longer comparable
        old_object = _branch(old, "object", self.old_components)
        new_object = _branch(new, "object", self.new_components)
        if old_object is not None and new_object is not None:
            required = set(new_object.get("required") or ()) - set(old_object.get("required") or ())
            self.required += [_join(path, name) for name in sorted(required)]
            old_properties = old_object.get("properties") or {}
            new_properties = new_object.get("properties") or {}
            for name in sorted(set(old_properties) & set(new_properties)):
                self.compare(old_properties[name], new_properties[name], _join(path, name))
        old_array = _branch(old, "array", self.old_components)
        new_array = _branch(new, "array", self.new_components)
        if old_array is not None and new_array is not None:
            self.compare(old_array.get("items"), new_array.get("items"), f"{path}[]")


def _branch(schema: Any, kind: str, components: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the part of ``schema`` that describes ``kind`` (object or array) values:
    itself, or its one such ``anyOf``/``oneOf`` member (as in ``T | None``)."""
    if not isinstance(schema, Mapping):
        return None
    members = schema.get("anyOf") or schema.get("oneOf")
    if members:
        found = [
            resolved
            for resolved, _ in (_resolve(member, components) for member in members)
            if isinstance(resolved, Mapping) and _is_kind(resolved, kind)
        ]
        return found[0] if len(found) == 1 else None
    return schema if _is_kind(schema, kind) else None


def _components(document: Document) -> Mapping[str, Any]:
    components = document.get("components") or {}
    schemas = components.get("schemas") if isinstance(components, Mapping) else None
    return schemas if isinstance(schemas, Mapping) else {}


def _resolve(schema: Any, components: Mapping[str, Any]) -> tuple[Any, str]:
    """Follow ``$ref`` chains to ``#/components/schemas/<name>``; return the schema and
    the last name followed ("" when none)."""
    name = ""
    for _ in range(32):  # a chain of refs longer than this is a loop
        if not isinstance(schema, Mapping) or "$ref" not in schema:
            break
        ref = str(schema["$ref"])
        name = ref.rpartition("/")[2]
        if not ref.startswith("#/components/schemas/") or name not in components:
            break
        schema = components[name]
    return schema, name


def _types(schema: Any, components: Mapping[str, Any], depth: int = 0) -> frozenset[str] | None:
    """Return the JSON types a schema allows; None when it allows any value."""
    schema, _ = _resolve(schema, components)
    if not isinstance(schema, Mapping) or depth > 10:
        return None
    if "type" in schema:
        kinds = schema["type"]
        return frozenset(kinds if isinstance(kinds, list) else [kinds])
    if "const" in schema:
        return frozenset({_JSON_TYPES.get(type(schema["const"]), "object")})
    if "enum" in schema:
        return frozenset(_JSON_TYPES.get(type(v), "object") for v in schema["enum"])
    members = schema.get("anyOf") or schema.get("oneOf")
    if members:
        union: set[str] = set()
        for member in members:
            kinds = _types(member, components, depth + 1)
            if kinds is None:
                return None
            union |= kinds
        return frozenset(union)
    if schema.get("allOf"):
        for member in schema["allOf"]:
            kinds = _types(member, components, depth + 1)
            if kinds is not None:
                return kinds
    if "properties" in schema:
        return frozenset({"object"})
    if "items" in schema:
        return frozenset({"array"})
    return None


def _is_kind(schema: Mapping[str, Any], kind: str) -> bool:
    kinds = schema.get("type")
    if kinds is None:
        return (kind == "object" and "properties" in schema) or (
            kind == "array" and "items" in schema
        )
    return kind in (kinds if isinstance(kinds, list) else [kinds])


def _describe(kinds: frozenset[str] | None) -> str:
    return "any" if kinds is None else " | ".join(sorted(kinds))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
