"""A WebOb (Pyramid) response that streams a :class:`~sse_wsgi.Subscription`."""

from __future__ import annotations

from typing import Any

from webob import Response

from ._http import STREAM_HEADERS, OpenedStream
from .publisher import Subscription

__all__ = ["EventStreamResponse"]


class EventStreamResponse(Response):
    """Stream *subscription* with the event-stream headers; closing the body closes it.

    For views that route the stream themselves (Pyramid)::

        @view_config(route_name="stream")
        def stream(request):
            return EventStreamResponse(publisher.subscribe("chat", heartbeat=15))

    The first chunk (a comment) goes out at once. Other keyword arguments go
    to :class:`webob.Response`.
    """

    def __init__(self, subscription: Subscription, **kwargs: Any) -> None:
        if not isinstance(subscription, Subscription):
            raise TypeError(f"subscription must be a sse_wsgi.Subscription, not {type(subscription).__name__}")
        super().__init__(app_iter=OpenedStream(subscription), **kwargs)
        for name, value in STREAM_HEADERS:
            self.headers[name] = value
        self.subscription = subscription
