"""Prometheus metrics of the broker: in-process instruments and scrape-time figures.

``process`` holds the instruments a worker (or any process that publishes) updates as
it runs; ``scrape`` reads the broker's figures from Redis and the outbox table when
Prometheus asks, behind ``metrics_view``. This package imports neither at import time:
``process`` sits on the publish path, and a worker must not pay for ``scrape``'s
Django views and auth to count a publish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

__all__ = ["metrics_view"]


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Answer a Prometheus scrape with figures read from Redis (``scrape.metrics_view``).

    Mount it in a URLconf: ``path("broker/metrics", redis_broker.metrics.metrics_view)``.
    Staff with ``redis_broker.view_broker``, or ``Authorization: Bearer <METRICS_TOKEN>``.
    """
    from .scrape import metrics_view as view

    return view(request)
