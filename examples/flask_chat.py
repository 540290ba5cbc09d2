"""A Flask chat: Flask serves the page and the send view, SSEMiddleware streams the events.

Run:   python examples/flask_chat.py [PORT]      then open http://localhost:5000
Watch: curl -N 'http://localhost:5000/events?channel=chat'
Send:  curl -d '{"name": "curl", "text": "hi"}' -H 'Content-Type: application/json' http://localhost:5000/send
"""

from __future__ import annotations

import sys

import flask

from sse_wsgi import SSEMiddleware
from sse_wsgi.demo import chat_page, parse_message, publish_message

flask_app = flask.Flask(__name__)


@flask_app.get("/")
def page() -> flask.Response:
    return flask.Response(chat_page(), mimetype="text/html")


@flask_app.post("/send")
def send() -> tuple[str, int]:
    try:
        message = parse_message(flask.request.get_data())
    except ValueError as error:
        return f"{error}\n", 400
    return publish_message(flask.request.environ["sse.publisher"], message), 200


# Every request sees environ["sse.publisher"]; GET /events?channel=chat streams.
app = SSEMiddleware(flask_app, heartbeat=15)

if __name__ == "__main__":
    from werkzeug.serving import run_simple

    run_simple("localhost", int(sys.argv[1]) if len(sys.argv) > 1 else 5000, app, threaded=True)
