"""A Pyramid chat in one file: Pyramid serves the page and the send view, and routes the stream itself.

The stream (``/events``) is a Pyramid view returning ``sse_wsgi.webob.EventStreamResponse``;
SSEMiddleware still hands every request ``environ["sse.publisher"]``, and its own
stream path is moved to ``/sse``, a path Pyramid does not use.
Copy it into a project, ``pip install sse-wsgi pyramid waitress``, and:

Run:   python examples/pyramid_app.py [PORT]     then open http://localhost:5000
Watch: curl -N 'http://localhost:5000/events?channel=chat'
Send:  curl -d '{"name": "curl", "text": "hi"}' http://localhost:5000/send
"""

from __future__ import annotations

import json
import os
import sys

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response

from sse_wsgi import SSEMiddleware
from sse_wsgi.webob import EventStreamResponse

CHANNEL = "chat"  # the page streams /events?channel=chat and listens for "chat" events
MAX_NAME, MAX_TEXT, MAX_BODY = 40, 2000, 16 * 1024  # characters, characters, bytes

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Chat</title>
<style>li { white-space: pre-wrap; }</style>
<ul id="messages"></ul>
<form id="form">
  <input id="name" placeholder="name" maxlength="40" required>
  <input id="text" placeholder="message" maxlength="2000" required autocomplete="off">
  <button>Send</button>
</form>
<script>
const source = new EventSource("/events?channel=chat");
source.addEventListener("chat", (event) => {
  const message = JSON.parse(event.data);
  const item = document.createElement("li");
  item.textContent = message.name + ": " + message.text;  // text, never HTML
  document.getElementById("messages").append(item);
});
document.getElementById("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = document.getElementById("name").value, text = document.getElementById("text");
  const body = JSON.stringify({name: name, text: text.value});
  const response = await fetch("/send", {method: "POST", headers: {"Content-Type": "application/json"}, body});
  if (response.ok) text.value = ""; else alert(await response.text());
});
</script>
"""


def parse_message(body: bytes) -> dict[str, str]:
    """Read ``{"name": ..., "text": ...}`` from a JSON body; raise ``ValueError`` with a short reason."""
    if len(body) > MAX_BODY:
        raise ValueError(f"send a body of at most {MAX_BODY} bytes")
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep
        raise ValueError('the body must be JSON: {"name": ..., "text": ...}') from None
    if not isinstance(message, dict):
        raise ValueError("the body must be a JSON object")
    name, text = message.get("name"), message.get("text")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise ValueError(f"name must be a non-empty string of at most {MAX_NAME} characters")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        raise ValueError(f"text must be a non-empty string of at most {MAX_TEXT} characters")
    return {"name": name.strip(), "text": text}


def page(request: Request) -> Response:
    return Response(PAGE, content_type="text/html", charset="utf-8")


def send(request: Request) -> Response:
    try:
        message = parse_message(request.body_file.read(MAX_BODY + 1))
    except ValueError as error:
        return Response(f"{error}\n", status=400, content_type="text/plain", charset="utf-8")
    # The middleware gives every request its publisher; publish returns the event's id.
    event_id = request.environ["sse.publisher"].publish(message, CHANNEL, event="chat")
    return Response(event_id, content_type="text/plain", charset="utf-8")


def events(request: Request) -> EventStreamResponse:
    """Stream the chat channel, resuming after the ``Last-Event-ID`` a reconnecting browser sends."""
    last_event_id = request.headers.get("Last-Event-ID") or request.params.get("lastEventId")
    subscription = request.environ["sse.publisher"].subscribe(CHANNEL, last_event_id=last_event_id, heartbeat=15)
    return EventStreamResponse(subscription)


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

    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "5000"))
    serve(app, host="localhost", port=port, threads=64)  # each open stream holds one of the threads
