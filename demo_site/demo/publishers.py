"""What the demo sends besides its model events, declared for its AsyncAPI document.

``manage.py asyncapi`` (and the admin inspector's AsyncAPI page) shows each publisher as
a ``send`` operation with its payload type. The chat pages' publishers send from the
browser, through the relay; they are declared here so the document shows what the
consumers and pages on the other side receive.
"""

from redis_broker import publisher

from .events import (
    ChatMessage,
    EmailJob,
    EmailNotification,
    OnlineUsers,
    Presence,
    Quote,
    QuoteRequest,
    TicketNotification,
)

ticket_notifications = publisher(
    "user.{user_id}",
    via="channel",
    schema=TicketNotification,
    type="demo.notification",
    name="ticket_notifications",
    description="The `notify` consumer rings a ticket owner's bell when a ticket changes.",
)
email_notifications = publisher(
    "user.{user_id}",
    via="channel",
    schema=EmailNotification,
    type="demo.notification",
    name="email_notifications",
    description="The `send_email` consumer rings the recipient's bell once the mail is sent.",
)
online_users = publisher(
    "online.{room}",
    via="channel",
    schema=OnlineUsers,
    type="demo.online",
    name="online_users",
    description="The `track_presence` consumer tells a room's pages who is there.",
)
email_jobs = publisher(
    "demo.emails",
    via="list",
    schema=EmailJob,
    type="demo.email",
    name="email_jobs",
    description="The tickets view queues an e-mail after a status change commits.",
)
quote_requests = publisher(
    "demo.quotes",
    schema=QuoteRequest,
    reply=Quote,
    name="quote_requests",
    description="The quote page asks the pricing service (`price_quote`) and waits.",
)
chat_messages = publisher(
    "chat.{room}",
    via="channel",
    schema=ChatMessage,
    name="chat_messages",
    description="Chat pages publish each line through the browser relay; the event type "
    "is the relay's (`browser.user.<pk>`).",
)
presence = publisher(
    "presence.{room}",
    via="channel",
    schema=Presence,
    name="presence",
    description="Chat pages say join, heartbeat and leave through the browser relay; the "
    "`track_presence` consumer reads them.",
)
