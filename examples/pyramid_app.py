"""A Pyramid chat: Pyramid serves the page and the send view, and streams with EventStreamResponse.

The stream is routed by Pyramid itself (``/events``) through
``sse_wsgi.webob.EventStreamResponse``; SSEMiddleware still hands every request
``environ["sse.publisher"]``, on a path Pyramid does not use.

Run:   python examples/pyramid_app.py [PORT]     then open http://localhost:5000
Watch: curl -N 'http://localhost:5000/events?channel=chat'
Send:  curl -d '{"name": "curl", "text": "hi"}' http://localhost:5000/send
"""

from __future__ import annotations

import sys

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response

from sse_wsgi import SSEMiddleware
from sse_wsgi.demo import CHAT_CHANNEL, chat_page, parse_message, publish_message
from sse_wsgi.webob import EventStreamResponse


def page(request: Request) -> Response:
    return Response(chat_page(), content_type="text/html", charset="utf-8")


def send(request: Request) -> Response:
    try:
        message = parse_message(request.body)
    except ValueError as error:
        return Response(f"{error}\n", status=400, content_type="text/plain", charset="utf-8")
    return Response(publish_message(request.environ["sse.publisher"], message), content_type="text/plain")


def events(request: Request) -> EventStreamResponse:
    publisher = request.environ["sse.publisher"]
    last_event_id = request.headers.get("Last-Event-ID") or request.params.get("lastEventId")
    return EventStreamResponse(publisher.subscribe(CHAT_CHANNEL, last_event_id=last_event_id, heartbeat=15))


with Configurator() as config:
    config.add_route("page", "/")
    config.add_view(page, route_name="page", request_method="GET")
    config.add_route("send", "/send")
    config.add_view(send, route_name="send", request_method="POST")
    config.add_route("events", "/events")
    config.add_view(events, route_name="events", request_method="GET")
    pyramid_app = config.make_wsgi_app()

app = SSEMiddleware(pyramid_app, path="/sse")

if __name__ == "__main__":
    from waitress import serve

    serve(app, host="localhost", port=int(sys.argv[1]) if len(sys.argv) > 1 else 5000, threads=64)
