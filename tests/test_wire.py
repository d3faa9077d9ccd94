"""The wire format: what other languages read, encoded and decoded in one module."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import uuid
from typing import Any

import pytest

from redis_broker import wire
from redis_broker.exceptions import MalformedEntry


def test_entry_fields_follow_the_contract() -> None:
    """Tests that an entry has type, JSON data, a UUID4 event_id and an ISO UTC timestamp."""
    fields = wire.encode_entry({"id": 1}, type="order.created")
    assert set(fields) == {"type", "data", "event_id", "published_at"}
    assert fields["type"] == "order.created"
    assert json.loads(fields["data"]) == {"id": 1}
    assert uuid.UUID(fields["event_id"]).version == 4
    published = datetime.datetime.fromisoformat(fields["published_at"].replace("Z", "+00:00"))
    assert published.utcoffset() == datetime.timedelta(0)


def test_headers_field_is_present_only_when_given() -> None:
    """Tests that headers are JSON object text, and absent when none were given."""
    assert "headers" not in wire.encode_entry(1)
    assert json.loads(wire.encode_entry(1, headers={"trace": "x"})["headers"]) == {"trace": "x"}


def test_django_types_are_encoded() -> None:
    """Tests that dates, Decimals and UUIDs are encoded with Django's JSON encoder."""
    value = {
        "when": datetime.date(2026, 1, 2),
        "total": decimal.Decimal("9.90"),
        "ref": uuid.UUID(int=1),
    }
    data = json.loads(wire.encode_entry(value)["data"])
    assert data == {
        "when": "2026-01-02",
        "total": "9.90",
        "ref": "00000000-0000-0000-0000-000000000001",
    }


def test_unencodable_payload_raises_type_error() -> None:
    """Tests that a payload JSON cannot encode raises a clear TypeError."""
    with pytest.raises(TypeError, match="cannot be encoded as JSON"):
        wire.encode_entry({"obj": object()})


def test_decode_reads_bytes_back() -> None:
    """Tests that decode_entry parses what encode_entry wrote, as redis-py returns it."""
    fields = wire.encode_entry([1, "é"], type="t", headers={"h": 1})
    raw = {k.encode(): v.encode() for k, v in fields.items()}
    decoded = wire.decode_entry(raw)
    assert decoded.data == [1, "é"]
    assert decoded.type == "t"
    assert decoded.headers == {"h": 1}
    assert decoded.event_id == fields["event_id"]


def test_foreign_entry_with_only_data_is_accepted() -> None:
    """Tests that another producer's entry needs only a JSON data field."""
    decoded = wire.decode_entry({b"data": b'{"x": 1}'})
    assert decoded.data == {"x": 1}
    assert decoded.type == ""


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({b"type": b"x"}, "no 'data'"),
        ({b"data": b"{not json"}, "not JSON"),
        ({b"data": b"1", b"headers": b"[1]"}, "not a JSON object"),
        ({b"data": b"\xff\xfe"}, "not UTF-8"),
    ],
)
def test_malformed_entries_raise_malformed_entry(raw: dict[bytes, bytes], reason: str) -> None:
    """Tests that entries that are not ours raise MalformedEntry saying why."""
    with pytest.raises(MalformedEntry, match=reason):
        wire.decode_entry(raw)


def test_dead_letter_fields_keep_the_original_and_requeue_restores_it() -> None:
    """Tests that dead-letter fields add where/why/how often and requeue strips them again."""
    fields = wire.encode_entry({"a": 1}, type="t")
    dead = wire.dead_letter_fields(
        fields, original_stream="orders", original_id="1-0", error="boom", delivery_count=5
    )
    assert dead["original_stream"] == "orders"
    assert dead["original_id"] == "1-0"
    assert dead["error"] == "boom"
    assert dead["delivery_count"] == "5"
    assert wire.requeue_fields(dead) == fields


def test_pubsub_message_is_one_json_object() -> None:
    """Tests that a Pub/Sub message is JSON with type, data, event_id and published_at."""
    text = wire.encode_message({"text": "hi"}, type="chat")
    body = json.loads(text)
    assert set(body) == {"type", "data", "event_id", "published_at"}
    decoded = wire.decode_message(text)
    assert decoded.data == {"text": "hi"}
    assert decoded.id is None


def test_durable_message_parts_splice_into_valid_json() -> None:
    """Tests that the two halves around the entry id form the documented JSON message."""
    fields = wire.encode_entry({"n": 1}, type="note")
    before, after = wire.durable_message_parts(fields)
    body = json.loads(before + "1700000000000-0" + after)
    assert body == {
        "type": "note",
        "data": {"n": 1},
        "event_id": fields["event_id"],
        "published_at": fields["published_at"],
        "id": "1700000000000-0",
    }


def test_foreign_pubsub_json_is_wrapped_as_data() -> None:
    """Tests that a plain JSON message from another publisher becomes untyped data."""
    decoded = wire.decode_message(b'{"hello": "world"}')
    assert decoded.data == {"hello": "world"}
    assert decoded.event_id == ""


def test_event_ids_are_uuid4_text_and_never_repeat() -> None:
    """Tests that event ids read as UUID4 and stay unique across many blocks of ids."""
    ids = [wire.new_event_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(str(uuid.UUID(event_id, version=4)) == event_id for event_id in ids)


def test_forked_child_does_not_repeat_its_parents_event_ids() -> None:
    """Tests that a child forked with ids made ahead draws its own, not the parent's next."""
    wire.new_event_id()  # the parent now holds ids made ahead
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids, exit without running pytest's cleanup
        os.close(read_end)
        os.write(write_end, json.dumps([wire.new_event_id() for _ in range(20)]).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = json.loads(pipe.read())
    os.waitpid(pid, 0)
    parent_ids = [wire.new_event_id() for _ in range(20)]
    assert len(child_ids) == 20
    assert not set(child_ids) & set(parent_ids)


# --- Poison input: no decoding raises anything but MalformedEntry -------------------------


def nested(depth: int, leaf: Any = 1) -> Any:
    """Return ``leaf`` inside ``depth`` alternating lists and objects."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def nested_text(depth: int) -> str:
    """Return JSON text nested ``depth`` arrays deep, built as text (no Python recursion)."""
    return "[" * depth + "1" + "]" * depth


def python_depth(value: Any) -> int:
    """Return the nesting depth of a decoded JSON value (the reference json_depth must match)."""
    if isinstance(value, dict):
        return 1 + max((python_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((python_depth(v) for v in value), default=0)
    return 0


HUGE_INT = "9" * 5000  # more digits than Python converts (sys.get_int_max_str_digits)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (nested_text(1000).encode(), "nested deeper than 100 levels"),
        (nested_text(wire.MAX_DEPTH + 1).encode(), "nested deeper than 100 levels"),
        (b"[" * 100_000, "nested deeper than 100 levels"),  # unclosed
        (HUGE_INT.encode(), "not JSON"),
        (b'"\xff"', "not UTF-8"),
        (b'"\xed\xa0\x80"', "not UTF-8"),  # a UTF-16 surrogate encoded as UTF-8
        (b'"\\ud800"', "not valid Unicode"),  # a lone surrogate escape
        (b'{"a": "\\udc00\\ud800"}', "not valid Unicode"),  # pair in the wrong order
    ],
)
def test_poison_data_raises_malformed_entry(data: bytes, reason: str) -> None:
    """Tests that deep nesting, huge numbers, bad UTF-8 and lone surrogates in an entry's
    data raise MalformedEntry saying why, never RecursionError or ValueError."""
    with pytest.raises(MalformedEntry, match=reason):
        wire.decode_entry({b"data": data, b"event_id": b"e"})


@pytest.mark.parametrize(
    "raw",
    [
        nested_text(1000).encode(),
        b'{"type": "", "data": ' + nested_text(1000).encode() + b', "event_id": "e"}',
        b'{"data": ' + HUGE_INT.encode() + b', "event_id": "e"}',
        b'{"data": "\xed\xa0\x80", "event_id": "e"}',
        b'{"data": "\\ud800", "event_id": "e"}',
        nested_text(wire.MAX_DEPTH + 1).encode(),  # a foreign value deeper than a payload
    ],
)
def test_poison_pubsub_message_raises_malformed_entry(raw: bytes) -> None:
    """Tests that a Pub/Sub message nested too deep, with a huge number or a lone
    surrogate raises MalformedEntry, whether it is our envelope or a foreign value."""
    with pytest.raises(MalformedEntry):
        wire.decode_message(raw)


def test_headers_nested_too_deep_raise_malformed_entry() -> None:
    """Tests that the headers field goes through the same reader as the data field."""
    headers = '{"h": ' + nested_text(1000) + "}"
    with pytest.raises(MalformedEntry, match="'headers' field is nested deeper"):
        wire.decode_entry({"data": "1", "headers": headers})


def test_payload_at_max_depth_round_trips_and_one_more_level_is_refused() -> None:
    """Tests that MAX_DEPTH levels are published and read back, by entry and by message,
    and that one more level is refused by the encoder with a clear TypeError."""
    deepest = nested(wire.MAX_DEPTH)
    assert wire.decode_entry(wire.encode_entry(deepest)).data == deepest
    assert wire.decode_message(wire.encode_message(deepest, entry_id="1-0")).data == deepest
    message = "nested deeper than 100 levels; consumers could not decode it"
    too_deep = nested(wire.MAX_DEPTH + 1)
    with pytest.raises(TypeError, match=message):
        wire.encode_entry(too_deep)
    with pytest.raises(TypeError, match=message):
        wire.encode_message(too_deep)
    with pytest.raises(TypeError, match=f"The headers cannot be sent: {message}"):
        wire.encode_entry(1, headers={"h": nested(wire.MAX_DEPTH)})


def test_payload_too_deep_for_the_python_stack_is_a_type_error() -> None:
    """Tests that a payload nested thousands deep is refused with the depth message, not
    with RecursionError."""
    with pytest.raises(TypeError, match="nested deeper than 100 levels"):
        wire.dumps(nested(5000))


@pytest.mark.parametrize(
    "value",
    [
        ["[" * 500, "{" * 500],
        {"[[[": "]]]" * 300, "k": [["\\"] * 3, '"[', '\\"[{']},
        [{"id": n, "name": f"item [{n}]"} for n in range(300)],
        [{"escaped": '\\\\"[', "unicode": "é[ü{"}] * 200,
        nested(wire.MAX_DEPTH, leaf="[" * 200),
    ],
)
def test_brackets_inside_strings_do_not_count_towards_depth(value: Any) -> None:
    """Tests that brackets in strings (escaped quotes and backslashes included) do not
    make a shallow payload look deep, in compact and indented JSON alike."""
    for text in (wire.dumps(value), json.dumps(value), json.dumps(value, indent=2)):
        assert wire.json_depth(text) == python_depth(value)
    assert wire.decode_entry(wire.encode_entry(value)).data == value


def test_valid_surrogate_pair_escape_is_accepted() -> None:
    """Tests that an escaped astral character (a surrogate pair) decodes as usual."""
    assert wire.decode_entry({b"data": b'"\\ud83d\\ude00"'}).data == "\U0001f600"
    assert wire.loads('"\\\\ud800"') == "\\ud800"  # an escaped backslash, not an escape


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_are_refused_when_publishing(value: float) -> None:
    """Tests that publishing refuses floats that JSON (and other languages) cannot carry."""
    with pytest.raises(TypeError, match="cannot be"):
        wire.encode_entry({"x": value})


@pytest.mark.parametrize("text", ['{"x": NaN}', "[Infinity]", "-Infinity"])
def test_nan_and_infinity_from_other_producers_are_malformed(text: str) -> None:
    """Tests that a reader treats the non-JSON constants Python would accept as malformed."""
    with pytest.raises(MalformedEntry, match="not JSON"):
        wire.loads(text)
