"""The demo's e-mail backend: it keeps every message in the database instead of sending it.

A development stand-in for SMTP that works across processes (``locmem`` keeps mails in
the sending process only): ``runconsumers`` sends, the web process shows ``/emails/``.
"""

from collections.abc import Sequence

from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

from .models import SentEmail


class OutboxBackend(BaseEmailBackend):
    """Store each message as a ``SentEmail`` row."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        SentEmail.objects.bulk_create(
            SentEmail(to=", ".join(m.to), subject=str(m.subject), body=str(m.body))
            for m in email_messages
        )
        return len(email_messages)
