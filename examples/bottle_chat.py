"""A Bottle chat in one file: Bottle serves the page and the send view, SSEMiddleware streams the events.

Copy it into a project, ``pip install sse-wsgi bottle waitress``, and:

Run:   python examples/bottle_chat.py [PORT]     then open http://localhost:5000
Watch: curl -N 'http://localhost:5000/events?channel=chat'
Send:  curl -d '{"name": "curl", "text": "hi"}' http://localhost:5000/send
"""

from __future__ import annotations

import json
import os
import sys

import bottle

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


bottle_app = bottle.Bottle()


@bottle_app.get("/")
def page() -> str:
    bottle.response.content_type = "text/html; charset=utf-8"
    return PAGE


@bottle_app.post("/send")
def send() -> str:
    bottle.response.content_type = "text/plain; charset=utf-8"
    try:
        message = parse_message(bottle.request.body.read(MAX_BODY + 1))
    except ValueError as error:
        bottle.response.status = 400
        return f"{error}\n"
    # The middleware gives every request its publisher; publish returns the event's id.
    return bottle.request.environ["sse.publisher"].publish(message, CHANNEL, event="chat")


# GET /events?channel=chat streams; every other request goes to Bottle.
app = SSEMiddleware(bottle_app, heartbeat=15)

if __name__ == "__main__":
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "5000"))
    # A threaded server: each open stream holds one of its threads.
    bottle.run(app, server="waitress", host="localhost", port=port, threads=64)
