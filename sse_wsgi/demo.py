"""The demo chat: a bare WSGI app whose page streams a ``chat`` channel through SSEMiddleware.

``python -m sse_wsgi`` serves it; the examples in ``examples/`` serve the same
page from Flask, Bottle and Pyramid.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from ._http import text_answer
from .middleware import SSEMiddleware
from .publisher import Publisher

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["CHAT_CHANNEL", "CHAT_EVENT", "chat_app", "chat_page", "make_app", "parse_message"]

CHAT_CHANNEL = "chat"
CHAT_EVENT = "chat"  # the page listens with addEventListener("chat", ...)
MAX_NAME = 40  # characters
MAX_TEXT = 2000  # characters
MAX_BODY = 16 * 1024  # bytes


def chat_page() -> bytes:
    """The chat page (HTML, UTF-8) shipped in ``sse_wsgi/static/chat.html``."""
    return files("sse_wsgi").joinpath("static/chat.html").read_bytes()


def parse_message(body: bytes) -> dict[str, str]:
    """Read a ``{"name": ..., "text": ...}`` JSON message; raise ``ValueError`` with a short reason."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError('the body must be JSON: {"name": ..., "text": ...}') from None
    if not isinstance(message, dict):
        raise ValueError("the body must be a JSON object")
    name, text = message.get("name"), message.get("text")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise ValueError(f"name must be a non-empty string of at most {MAX_NAME} characters")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        raise ValueError(f"text must be a non-empty string of at most {MAX_TEXT} characters")
    return {"name": name.strip(), "text": text}


def publish_message(publisher: Publisher, message: dict[str, str]) -> str:
    """Publish a chat message to every page; return its event id."""
    return publisher.publish(message, CHAT_CHANNEL, event=CHAT_EVENT)


def chat_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """``GET /`` serves the page, ``POST /send`` publishes a message (JSON)."""
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
    if path == "/":
        if method not in ("GET", "HEAD"):
            return text_answer(start_response, "405 Method Not Allowed", "use GET\n", [("Allow", "GET, HEAD")])
        page = chat_page()
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))])
        return [page] if method == "GET" else []
    if path == "/send":
        if method != "POST":
            return text_answer(start_response, "405 Method Not Allowed", "use POST\n", [("Allow", "POST")])
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return text_answer(start_response, "400 Bad Request", f"send a JSON body of at most {MAX_BODY} bytes\n")
        try:
            message = parse_message(environ["wsgi.input"].read(length))
        except ValueError as error:
            return text_answer(start_response, "400 Bad Request", f"{error}\n")
        event_id = publish_message(environ["sse.publisher"], message)
        return text_answer(start_response, "200 OK", event_id)
    return text_answer(start_response, "404 Not Found", "not found\n")


def make_app(publisher: Publisher | None = None, **options: Any) -> SSEMiddleware:
    """The chat app wrapped in :class:`SSEMiddleware`; *options* go to the middleware."""
    return SSEMiddleware(chat_app, publisher, **options)
