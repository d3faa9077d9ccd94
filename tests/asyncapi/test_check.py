"""``manage.py asyncapi --check``: each kind of break fails with its own line; additions
and unchanged documents pass."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import CommandError, call_command

from redis_broker.asyncapi import project_document
from redis_broker.asyncapi_compat import breaking_changes

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture
def current(db: Any) -> dict[str, Any]:
    """Return the document the test project (the demo plus the test app) has now."""
    return project_document()


def check(tmp_path: Path, committed: dict[str, Any], name: str = "committed.json") -> str:
    """Run ``asyncapi --check`` against ``committed``; return what it wrote on stderr."""
    path = tmp_path / name
    text = yaml.safe_dump(committed) if name.endswith(".yaml") else json.dumps(committed)
    path.write_text(text)
    err = StringIO()
    call_command("asyncapi", check=str(path), stdout=StringIO(), stderr=err)
    return err.getvalue()


def broken(tmp_path: Path, current: dict[str, Any], edit: Edit) -> str:
    """Return the CommandError message of ``--check`` against ``current`` edited."""
    committed = copy.deepcopy(current)
    edit(committed)
    with pytest.raises(CommandError) as raised:
        check(tmp_path, committed)
    return str(raised.value)


def test_the_unchanged_document_passes(tmp_path: Path, current: dict[str, Any]) -> None:
    """Tests that the current document passes against itself, as JSON and as YAML."""
    assert "No breaking change" in check(tmp_path, current)
    assert "No breaking change" in check(tmp_path, current, "committed.yaml")


def test_a_removed_channel_fails(tmp_path: Path, current: dict[str, Any]) -> None:
    """Tests that a channel the committed document has and the code lost is a break."""

    def edit(doc: dict[str, Any]) -> None:
        doc["channels"]["stream.refunds"] = {"address": "refunds", "x-redis-kind": "stream"}

    message = broken(tmp_path, current, edit)
    assert "in 1 way:" in message
    assert "stream 'refunds' was removed." in message


def test_a_removed_operation_fails(tmp_path: Path, current: dict[str, Any]) -> None:
    """Tests that an operation the code no longer has is a break."""

    def edit(doc: dict[str, Any]) -> None:
        doc["operations"]["consume.refund"] = {
            **doc["operations"]["consume.notify"],
            "title": "refund",
        }

    assert "operation 'consume.refund' (receive) was removed." in broken(tmp_path, current, edit)


def test_a_removed_message_fails(tmp_path: Path, current: dict[str, Any]) -> None:
    """Tests that a message a kept channel no longer carries is a break."""

    def edit(doc: dict[str, Any]) -> None:
        messages = doc["channels"]["stream.demo.tickets"]["messages"]
        messages["publish.tickets_v1"] = messages["model.demo.ticket"]

    message = broken(tmp_path, current, edit)
    assert "stream 'demo.tickets': message 'publish.tickets_v1' was removed." in message


def test_a_new_required_field_fails(tmp_path: Path, current: dict[str, Any]) -> None:
    """Tests that a field the payload now requires and the committed one did not is a
    break, found through the message's $ref to the type's schema."""

    def edit(doc: dict[str, Any]) -> None:
        doc["components"]["schemas"]["EmailJob"]["required"].remove("subject")

    message = broken(tmp_path, current, edit)
    assert (
        "list 'demo.emails', message 'consume.send_email': data.subject is a new required "
        "field." in message
    )


def test_a_changed_field_type_fails(tmp_path: Path, current: dict[str, Any]) -> None:
    """Tests that a field whose type changed is a break."""

    def edit(doc: dict[str, Any]) -> None:
        doc["components"]["schemas"]["QuoteRequest"]["properties"]["quantity"] = {"type": "string"}

    message = broken(tmp_path, current, edit)
    assert (
        "stream 'demo.quotes', message 'consume.price_quote': data.quantity changed type "
        "from string to integer." in message
    )


def test_a_changed_type_inside_a_nested_schema_fails(
    tmp_path: Path, current: dict[str, Any]
) -> None:
    """Tests that a type change two $refs deep (TicketEvent -> TicketFields) is found, and
    in the model event's own schema too."""

    def edit(doc: dict[str, Any]) -> None:
        doc["components"]["schemas"]["TicketFields"]["properties"]["owner"] = {"type": "string"}
        model = doc["components"]["schemas"]["demo.Ticket"]["properties"]["fields"]
        model["properties"]["title"] = {"type": ["string", "null"]}

    message = broken(tmp_path, current, edit)
    assert (
        "message 'consume.notify': data.fields.owner changed type from string to integer."
        in message
    )
    assert (
        "message 'model.demo.ticket': data.fields.title changed type from null | string to "
        "string." in message
    )


def test_a_responder_that_stops_replying_fails(tmp_path: Path, current: dict[str, Any]) -> None:
    """Tests that an operation that had a reply and lost it (``no_reply=True``) is a break."""

    def edit(doc: dict[str, Any]) -> None:
        doc["operations"]["consume.notify"]["reply"] = doc["operations"]["consume.price_quote"][
            "reply"
        ]

    message = broken(tmp_path, current, edit)
    assert "operation 'consume.notify' no longer has a reply" in message


def test_additions_pass(tmp_path: Path, current: dict[str, Any]) -> None:
    """Tests that a new channel, operation, message and optional field pass: the committed
    document lacks them, and nothing it promised is gone."""

    def edit(doc: dict[str, Any]) -> None:
        del doc["channels"]["channel.chat.room"]
        del doc["operations"]["publish.chat_messages"]
        del doc["channels"]["stream.demo.tickets"]["messages"]["consume.notify"]
        del doc["operations"]["consume.notify"]
        doc["info"]["description"] = "An older description."

    committed = copy.deepcopy(current)
    edit(committed)
    assert "No breaking change" in check(tmp_path, committed)
    # A new optional field (the code has none to remove, so it is added to "now").
    now = copy.deepcopy(current)
    now["components"]["schemas"]["EmailNotification"]["properties"]["cc"] = {"type": "string"}
    assert breaking_changes(current, now) == []
    now["components"]["schemas"]["EmailNotification"]["required"].append("cc")
    assert breaking_changes(current, now) == [
        "channel 'user.{user_id}', message 'publish.email_notifications': data.cc is a new "
        "required field."
    ]


def test_an_unreadable_committed_document_is_a_command_error(tmp_path: Path, db: Any) -> None:
    """Tests that a missing file, or one that is no AsyncAPI document, is a CommandError
    that names the file."""
    with pytest.raises(CommandError, match="missing.json"):
        call_command("asyncapi", check=str(tmp_path / "missing.json"), stderr=StringIO())
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CommandError, match="no AsyncAPI document"):
        call_command("asyncapi", check=str(tmp_path / "list.json"), stderr=StringIO())


def test_an_optional_field_becoming_nullable_and_a_recursive_type_are_compared() -> None:
    """Tests the comparison on hand-written documents: ``T`` to ``T | None`` is a type
    change, a recursive schema ends, and an operation that moves channel is a break."""

    def document(node: dict[str, Any], channel: str) -> dict[str, Any]:
        return {
            "asyncapi": "3.0.0",
            "channels": {
                "a": {
                    "address": "a",
                    "x-redis-kind": "stream",
                    "messages": {"m": {"payload": {"$ref": "#/components/schemas/Node"}}},
                },
                "b": {"address": "b", "x-redis-kind": "stream", "messages": {}},
            },
            "operations": {"op": {"action": "send", "channel": {"$ref": f"#/channels/{channel}"}}},
            "components": {"schemas": {"Node": node}},
        }

    before = {
        "type": "object",
        "properties": {
            "value": {"type": "integer"},
            "next": {"$ref": "#/components/schemas/Node"},
            "items": {"type": "array", "items": {"type": "string"}},
        },
    }
    after = copy.deepcopy(before)
    after["properties"]["value"] = {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    after["properties"]["items"]["items"] = {"type": "integer"}
    assert breaking_changes(document(before, "a"), document(after, "b")) == [
        "operation 'op' moved from stream a to stream b.",
        "stream 'a', message 'm': items[] changed type from string to integer.",
        "stream 'a', message 'm': value changed type from integer to integer | null.",
    ]
