"""The demo's stream consumer: ticket events become notifications in the owner's browser.

The path it shows: ``Ticket.save()`` -> ``demo.tickets`` stream (model events) ->
``manage.py runconsumers`` -> ``broadcast("user.<owner>")`` -> the owner's open tabs.
"""

from typing import Any

from redis_broker import broadcast, stream_consumer

STATUS_LABELS = {"open": "Open", "in_progress": "In progress", "resolved": "Resolved"}


@stream_consumer("demo.tickets", group="notifier")
def notify(message: Any) -> None:
    """Tell a ticket's owner that it was created, changed or deleted."""
    fields = message.data.get("fields", {})
    owner_id = fields.get("owner")
    if owner_id is None:
        return
    action = message.type.rsplit(".", 1)[-1]
    status = STATUS_LABELS.get(fields.get("status"), fields.get("status"))
    broadcast(
        f"user.{owner_id}",
        {
            "kind": "ticket",
            "ticket": message.data.get("pk"),
            "title": fields.get("title", ""),
            "status": fields.get("status"),
            "text": f"Ticket “{fields.get('title', '')}” {action}: {status}",
        },
        type="demo.notification",
    )
