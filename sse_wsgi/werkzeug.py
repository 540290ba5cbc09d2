"""A werkzeug (Flask) response that streams a :class:`~sse_wsgi.Subscription`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from ._http import STREAM_HEADERS, OpenedStream
from .publisher import Subscription

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["EventStreamResponse"]


class EventStreamResponse(Response):
    """Stream *subscription* with the event-stream headers; closing the response closes it.

    For views that route the stream themselves::

        @app.get("/stream")
        def stream():
            return EventStreamResponse(publisher.subscribe("chat", heartbeat=15))

    The first chunk (a comment) goes out at once, so the client sees the
    stream open; chunks are passed through unbuffered. Other keyword
    arguments go to :class:`werkzeug.wrappers.Response`.
    """

    def __init__(self, subscription: Subscription, **kwargs: Any) -> None:
        if not isinstance(subscription, Subscription):
            raise TypeError(f"subscription must be a sse_wsgi.Subscription, not {type(subscription).__name__}")
        kwargs.setdefault("status", 200)
        super().__init__(OpenedStream(subscription), direct_passthrough=True, **kwargs)
        for name, value in STREAM_HEADERS:
            self.headers[name] = value
        self.subscription = subscription
        self.call_on_close(subscription.close)

    def get_app_iter(self, environ: WSGIEnvironment) -> Any:
        """The body; for a ``HEAD`` request (no body) the subscription is closed at once."""
        app_iter = super().get_app_iter(environ)
        if app_iter is not self.response:
            self.subscription.close()
        return app_iter
