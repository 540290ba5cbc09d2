"""A Bottle chat: Bottle serves the page and the send view, SSEMiddleware streams the events.

Run:   python examples/bottle_chat.py [PORT]     then open http://localhost:5000
Watch: curl -N 'http://localhost:5000/events?channel=chat'
Send:  curl -d '{"name": "curl", "text": "hi"}' http://localhost:5000/send
"""

from __future__ import annotations

import sys

import bottle

from sse_wsgi import SSEMiddleware
from sse_wsgi.demo import chat_page, parse_message, publish_message

bottle_app = bottle.Bottle()


@bottle_app.get("/")
def page() -> bytes:
    bottle.response.content_type = "text/html; charset=utf-8"
    return chat_page()


@bottle_app.post("/send")
def send() -> str:
    try:
        message = parse_message(bottle.request.body.read())
    except ValueError as error:
        bottle.response.status = 400
        return f"{error}\n"
    return publish_message(bottle.request.environ["sse.publisher"], message)


app = SSEMiddleware(bottle_app, heartbeat=15)

if __name__ == "__main__":
    # A threaded server: each open stream holds one thread.
    bottle.run(app, server="waitress", host="localhost", port=int(sys.argv[1]) if len(sys.argv) > 1 else 5000,
               threads=64)  # fmt: skip
