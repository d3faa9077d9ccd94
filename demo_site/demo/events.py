"""The demo's message types: what its consumers read and what it sends.

What a handler reads is a ``TypedDict``: ``message.data`` is a plain dict whether or not
the payload is checked against its type, so handler code reads it the same way either
way. What only browsers read is a dataclass, built by the code that sends it. Each type
describes the payload exactly as the demo has always sent it.
"""

from dataclasses import dataclass
from typing import Literal, TypedDict


class TicketFields(TypedDict):
    """The fields ``MODEL_EVENTS`` publishes for a ticket (settings.py)."""

    owner: int
    title: str
    status: str


class TicketEvent(TypedDict):
    """A ``demo.Ticket`` model event: its primary key and the configured fields."""

    pk: int
    fields: TicketFields


class Presence(TypedDict):
    """A chat page saying it arrived, is still there or left (sent through the relay)."""

    event: Literal["join", "heartbeat", "leave"]
    page: str


class ChatMessage(TypedDict):
    """A line of chat, sent by a chat page through the relay."""

    text: str


class EmailJob(TypedDict):
    """An e-mail to send to a user: queued by the tickets view, sent by ``send_email``."""

    user: int
    subject: str
    body: str


class QuoteRequest(TypedDict):
    """What the quote page asks the pricing service."""

    sku: str
    quantity: int


class Quote(TypedDict):
    """The pricing service's answer (prices are decimal text, in the ``currency`` header's
    currency)."""

    sku: str
    product: str
    quantity: int
    unit_price: str
    discount: str
    total: str


@dataclass
class TicketNotification:
    """The bell's notice that one of the user's tickets changed."""

    kind: Literal["ticket"]
    ticket: int
    title: str
    status: str
    text: str
    url: str


@dataclass
class EmailNotification:
    """The bell's notice that an e-mail was sent to the user."""

    kind: Literal["email"]
    subject: str
    body: str
    text: str
    url: str


@dataclass
class OnlineUsers:
    """Who has a chat room open, by user name, sorted."""

    users: list[str]
