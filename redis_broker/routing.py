"""WebSocket URL patterns of the browser relay: include them in your ``asgi.py``."""

from __future__ import annotations

from django.urls import path

from .relay.consumer import BrokerSocketConsumer

websocket_urlpatterns = [
    path("ws/broker/", BrokerSocketConsumer.as_asgi(), name="redis_broker_socket"),
]
