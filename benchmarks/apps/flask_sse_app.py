"""flask-sse's documented setup: its Blueprint on /events, publishing through Redis pub/sub."""

from __future__ import annotations

import os

import flask
from flask_sse import sse

app = flask.Flask(__name__)
app.config["REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
app.register_blueprint(sse, url_prefix="/events")


@app.post("/publish")
def publish() -> str:
    sse.publish(flask.request.get_data(as_text=True), type="message", channel="bench")
    return "ok"
