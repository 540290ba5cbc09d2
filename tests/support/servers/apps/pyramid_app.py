"""Pyramid wrapped in SSEMiddleware; a view publishes, another streams with EventStreamResponse."""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.response import Response

from sse_wsgi import SSEMiddleware
from sse_wsgi.webob import EventStreamResponse


def publish(request) -> Response:
    publisher = request.environ["sse.publisher"]
    return Response(publisher.publish(request.text, request.params["channel"]))


def stream(request) -> EventStreamResponse:
    publisher = request.environ["sse.publisher"]
    return EventStreamResponse(publisher.subscribe(request.params["channel"], heartbeat=1))


def count(request) -> Response:
    return Response(str(request.environ["sse.publisher"].subscription_count))


with Configurator() as config:
    config.add_route("count", "/count")
    config.add_view(count, route_name="count")
    config.add_route("publish", "/publish", request_method="POST")
    config.add_view(publish, route_name="publish")
    config.add_route("stream", "/stream")
    config.add_view(stream, route_name="stream")
    pyramid_app = config.make_wsgi_app()

app = SSEMiddleware(pyramid_app, heartbeat=1)
