"""sse_wsgi: HTTP Server-Sent Events for any WSGI application."""

from __future__ import annotations

from .errors import BrokerUnavailable, PublisherClosed, PublishOutcomeUnknown
from .event import HISTORY_LOST_EVENT, Event
from .middleware import SSEMiddleware
from .publisher import DEFAULT_CHANNEL, Publisher
from .subscription import Subscription

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CHANNEL",
    "HISTORY_LOST_EVENT",
    "BrokerUnavailable",
    "Event",
    "PublishOutcomeUnknown",
    "Publisher",
    "PublisherClosed",
    "SSEMiddleware",
    "Subscription",
    "__version__",
]
