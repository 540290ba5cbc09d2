"""SSEMiddleware: serve event streams on the configured path(s) of any WSGI app."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ._http import (
    STREAM_HEADERS,
    UNAVAILABLE_RETRY_MS,
    BadRequest,
    check_channel_name,
    decode_wsgi_text,
    last_event_id,
    opening_event,
    query_params,
    retry_hint,
    text_answer,
)
from ._servers import disconnect_probe, warn_if_not_concurrent
from ._validate import check_count, check_seconds
from .cors import ALLOW, CorsPolicy
from .errors import BrokerUnavailable
from .event import check_retry
from .grip import GripResponder
from .publisher import DEFAULT_CHANNEL, Publisher

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["SSEMiddleware"]

logger = logging.getLogger(__name__)

# A stream refused by max_subscribers tells the browser to come back after a
# random delay in this range (milliseconds), so refused clients spread out.
_SHED_RETRY_MS = (5_000, 15_000)
# A stream asked of a draining process (one that is stopping) is told to come
# back soon: the browser reconnects to another process.
_DRAIN_RETRY_MS = (250, 2_000)


class SSEMiddleware:
    """Serve event streams on *path*, and hand every request ``environ["sse.publisher"]``.

    ``GET {path}?channel=a&channel=b`` streams channels ``a`` and ``b`` (the
    ``"default channel"`` when none is named); ``GET {path}/{name}`` streams
    the one URL-decoded channel *name*. Every other request goes to *app*.

    :param app: the wrapped WSGI application.
    :param publisher: the :class:`Publisher`; ``None`` creates an in-memory one.
    :param path: the events path, or a list of path prefixes.
    :param authorize: ``authorize(environ, channels)``; false gives ``403``.
    :param properties: ``properties(environ)`` gives the subscriber's properties.
    :param heartbeat: seconds between keep-alive comments on an idle stream.
    :param retry: reconnection delay (ms) sent at the start of every stream;
        ``None`` sends :data:`~sse_wsgi._http.DEFAULT_RETRY_MS` (3000), so a
        longer hint given by load shedding never sticks in the browser.
    :param cors_origins: origins allowed to subscribe cross-origin with
        credentials (each echoed back with
        ``Access-Control-Allow-Credentials: true``); ``"*"`` allows any
        origin *without* credentials, so no other site can read a logged-in
        user's streams. The opaque origin ``null`` is allowed only if listed.
    :param max_channels: the most channels one stream may ask for.
    :param max_subscribers: the most open streams; beyond it a client gets a
        stream that only carries a ``retry:`` hint and ends.
    :param max_lifetime: seconds after which a stream ends normally (the
        browser resumes by id); ``None`` for no limit.
    """

    def __init__(
        self,
        app: WSGIApplication,
        publisher: Publisher | None = None,
        path: str | Sequence[str] = "/events",
        *,
        authorize: Callable[[WSGIEnvironment, tuple[str, ...]], Any] | None = None,
        properties: Callable[[WSGIEnvironment], Any] | None = None,
        heartbeat: float | None = 15.0,
        retry: int | None = None,
        cors_origins: str | Iterable[str] = (),
        max_channels: int = 32,
        max_subscribers: int | None = None,
        max_lifetime: float | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, not {app!r}")
        if publisher is not None and not isinstance(publisher, Publisher):
            raise TypeError(f"publisher must be a sse_wsgi.Publisher or None, not {type(publisher).__name__}")
        for name, hook in (("authorize", authorize), ("properties", properties)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable or None, not {hook!r}")
        check_seconds("heartbeat", heartbeat)
        check_seconds("max_lifetime", max_lifetime)
        check_retry(retry)
        check_count("max_channels", max_channels)
        if max_subscribers is not None:
            check_count("max_subscribers", max_subscribers)
        self.app = app
        self.publisher = publisher if publisher is not None else Publisher()
        self.paths = _normalize_paths(path)
        self.authorize = authorize
        self.properties = properties
        self.heartbeat = heartbeat
        self.retry = retry
        self._cors = CorsPolicy(cors_origins)
        self.cors_origins = self._cors.origins
        self.max_channels = max_channels
        self.max_subscribers = max_subscribers
        self.max_lifetime = max_lifetime
        self._opening = opening_event(retry)
        self._grip = GripResponder(self.publisher, heartbeat, self._opening.encode())

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ["sse.publisher"] = self.publisher
        target = self._match(environ.get("PATH_INFO", ""))
        if target is None:
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        cors = self._cors.headers(environ)
        if method == "OPTIONS":
            return self._cors.preflight(environ, start_response, cors)
        answer_cors = cors or []  # an origin that may not subscribe gets no CORS header
        if method not in ("GET", "HEAD"):
            return text_answer(start_response, "405 Method Not Allowed", "Method not allowed\n", [ALLOW, *answer_cors])
        if "HTTP_GRIP_LAST" in environ:  # a proxy asks what followed the last event it delivered
            return self._recover(environ, start_response, target)
        try:
            query = query_params(environ.get("QUERY_STRING", ""))
            channels = self._channels(target, query)
        except BadRequest as error:
            return text_answer(start_response, "400 Bad Request", f"Bad request: {error}\n", answer_cors)
        if cors is None:
            return text_answer(start_response, "403 Forbidden", "Forbidden\n")
        if self.authorize is not None and not self.authorize(environ, channels):
            return text_answer(start_response, "403 Forbidden", "Forbidden\n", cors)
        if self.publisher.closed:
            return text_answer(start_response, "503 Service Unavailable", "The event publisher is closed\n", cors)
        headers = STREAM_HEADERS + cors
        if method == "HEAD":
            start_response("200 OK", headers)
            return []
        if self._grip.proxied(environ):
            resume_after = last_event_id(environ.get("HTTP_LAST_EVENT_ID"), query, len(channels))
            held = self._grip.hold(environ, start_response, target[0], channels, resume_after, headers)
            if held is not None:
                return held
        if self.publisher.draining:
            return retry_hint(start_response, headers, _DRAIN_RETRY_MS)
        if self.max_subscribers is not None and self.publisher.subscription_count >= self.max_subscribers:
            self.publisher.count_refused_stream()
            return retry_hint(start_response, headers, _SHED_RETRY_MS)
        return self._stream(environ, start_response, channels, query, headers)

    def _stream(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        channels: tuple[str, ...],
        query: list[tuple[str, str]],
        headers: list[tuple[str, str]],
    ) -> Iterable[bytes]:
        environ["eventlet.minimum_write_chunk_size"] = 0  # eventlet.wsgi buffers 4 KiB otherwise
        warn_if_not_concurrent(environ)
        try:
            subscription = self.publisher.subscribe(
                channels,
                properties=self.properties(environ) if self.properties is not None else None,
                initial_data=[self._opening],
                last_event_id=last_event_id(environ.get("HTTP_LAST_EVENT_ID"), query, len(channels)),
                heartbeat=self.heartbeat,
                max_lifetime=self.max_lifetime,
                client_disconnected=disconnect_probe(environ),
            )
        except BrokerUnavailable as error:  # the browser comes back later: a non-200 answer would stop it for good
            logger.warning("stream refused for now: %s", error)
            return retry_hint(start_response, headers, UNAVAILABLE_RETRY_MS)
        start_response("200 OK", headers)
        return subscription

    def _recover(
        self, environ: WSGIEnvironment, start_response: StartResponse, target: tuple[str, str | None]
    ) -> Iterable[bytes]:
        """Hand a proxy's recovery request to the GRIP responder, with the channels its link names."""
        channels: tuple[str, ...] | None
        try:
            query = query_params(environ.get("QUERY_STRING", ""))
            channels = self._channels(target, query)
        except BadRequest:
            query, channels = [], None
        return self._grip.recover(environ, start_response, target[0], channels, dict(query).get("grip_link", ""))

    def _match(self, path_info: str) -> tuple[str, str | None] | None:
        """``(prefix, None)`` for the query form, ``(prefix, raw name)`` for ``{path}/{name}``."""
        for prefix in self.paths:
            if path_info in (prefix, prefix + "/"):
                return prefix, None
            if path_info.startswith(prefix + "/"):
                return prefix, path_info[len(prefix) + 1 :]
        return None

    def _channels(self, target: tuple[str, str | None], query: list[tuple[str, str]]) -> tuple[str, ...]:
        _, raw_name = target
        if raw_name is not None:
            return (check_channel_name(decode_wsgi_text(raw_name)),)
        names = list(dict.fromkeys(value for key, value in query if key == "channel"))
        if len(names) > self.max_channels:
            raise BadRequest(f"at most {self.max_channels} channels per stream")
        return tuple(check_channel_name(name) for name in names) or (DEFAULT_CHANNEL,)


def _normalize_paths(path: str | Sequence[str]) -> tuple[str, ...]:
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        raise ValueError("path must name at least one events path")
    for item in paths:
        if not isinstance(item, str):
            raise TypeError(f"path must be a str or a list of str, not {type(item).__name__}: {item!r}")
        if not item.startswith("/") or item == "/":
            raise ValueError(f"an events path must start with '/' and not be the root: {item!r}")
    # Longest first, so that "/events/admin" wins over "/events".
    return tuple(sorted((p.rstrip("/") for p in paths), key=len, reverse=True))
