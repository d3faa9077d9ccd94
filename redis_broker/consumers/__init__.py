"""Stream consumers: ``@stream_consumer`` handlers run by ``manage.py runconsumers``.

``registry`` holds the decorator and the discovered specs, ``message`` the object a
handler receives, ``policy`` retries, dead letters and group lifecycle, ``worker`` the
loop of one (stream, group), and ``runner`` the process: signals, status, burst, outbox.
"""

from __future__ import annotations

from ..exceptions import Reject
from .message import StreamMessage
from .registry import StreamConsumerSpec, stream_consumer

__all__ = ["Reject", "StreamConsumerSpec", "StreamMessage", "stream_consumer"]
