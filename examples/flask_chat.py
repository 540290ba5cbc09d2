"""A Flask chat in one file: Flask serves the page and the send view, SSEMiddleware streams the events.

Copy it into a project, ``pip install sse-wsgi flask``, and:

Run:   python examples/flask_chat.py [PORT]      then open http://localhost:5000
Watch: curl -N 'http://localhost:5000/events?channel=chat'
Send:  curl -d '{"name": "curl", "text": "hi"}' -H 'Content-Type: application/json' http://localhost:5000/send
"""

from __future__ import annotations

import json
import os
import sys

import flask

from sse_wsgi import SSEMiddleware

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


flask_app = flask.Flask(__name__)
TEXT = {"Content-Type": "text/plain; charset=utf-8"}


@flask_app.get("/")
def page() -> flask.Response:
    return flask.Response(PAGE, mimetype="text/html")


@flask_app.post("/send")
def send() -> tuple[str, int, dict[str, str]]:
    try:
        message = parse_message(flask.request.stream.read(MAX_BODY + 1))
    except ValueError as error:
        return f"{error}\n", 400, TEXT
    # The middleware gives every request its publisher; publish returns the event's id.
    event_id = flask.request.environ["sse.publisher"].publish(message, CHANNEL, event="chat")
    return event_id, 200, TEXT


# GET /events?channel=chat streams; every other request goes to Flask.
app = SSEMiddleware(flask_app, heartbeat=15)

if __name__ == "__main__":
    from werkzeug.serving import run_simple

    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "5000"))
    run_simple("localhost", port, app, threaded=True)  # a thread per open stream
