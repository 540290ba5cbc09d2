"""SSEMiddleware: serve event streams on the configured path(s) of any WSGI app."""

from __future__ import annotations

import hmac
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from ._http import (
    STREAM_HEADERS,
    BadRequest,
    check_channel_name,
    decode_wsgi_text,
    last_event_id,
    opening_event,
    query_params,
    text_answer,
)
from ._servers import disconnect_probe, warn_if_not_concurrent
from ._validate import check_count, check_seconds
from .broker import Replay
from .errors import BrokerUnavailable, PublisherClosed
from .event import Event, check_retry
from .grip import (
    grip_channel_header,
    held_channel,
    keep_alive_header,
    link_signature,
    parse_grip_last,
    verify_grip_sig,
)
from .publisher import DEFAULT_CHANNEL, Publisher, history_lost_chunk

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["SSEMiddleware"]

logger = logging.getLogger(__name__)

ALLOWED_METHODS = "GET, HEAD, OPTIONS"
_ALLOW = ("Allow", ALLOWED_METHODS)
_PREFLIGHT_HEADERS = "Accept, Authorization, Cache-Control, Last-Event-ID, X-Requested-With"
_PREFLIGHT_MAX_AGE = "600"  # seconds
# A stream refused by max_subscribers tells the browser to come back after a
# random delay in this range (milliseconds), so refused clients spread out.
_SHED_RETRY_MS = (5_000, 15_000)
# A stream asked of a draining process (one that is stopping) is told to come
# back soon: the browser reconnects to another process.
_DRAIN_RETRY_MS = (250, 2_000)
# A stream that the broker cannot set up now (Redis unreachable for a channel
# this process does not follow yet) is told to come back in a few seconds.
_UNAVAILABLE_RETRY_MS = (1_000, 5_000)
# A GRIP proxy fetches a held stream's recovery link this often (seconds) even
# when it missed nothing: that renews the registration of a held set of channels.
_RECOVERY_EVERY = 60


def _retry_hint(start_response: StartResponse, headers: list[tuple[str, str]], span: tuple[int, int]) -> list[bytes]:
    """A stream that carries only a ``retry:`` hint, random within *span* milliseconds, then ends."""
    start_response("200 OK", headers)
    return [Event(retry=random.randint(*span)).encode()]


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
        self.cors_origins = _normalize_origins(cors_origins)
        self.max_channels = max_channels
        self.max_subscribers = max_subscribers
        self.max_lifetime = max_lifetime
        self._opening = opening_event(retry)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ["sse.publisher"] = self.publisher
        target = self._match(environ.get("PATH_INFO", ""))
        if target is None:
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        cors = self._cors_headers(environ)
        if method == "OPTIONS":
            return self._preflight(environ, start_response, cors)
        answer_cors = cors or []  # an origin that may not subscribe gets no CORS header
        if method not in ("GET", "HEAD"):
            return text_answer(start_response, "405 Method Not Allowed", "Method not allowed\n", [_ALLOW, *answer_cors])
        keys = self.publisher.grip_keys
        proxied = bool(keys) and verify_grip_sig(environ.get("HTTP_GRIP_SIG"), keys)
        if "HTTP_GRIP_LAST" in environ:  # a proxy asks what followed the last event it delivered
            return self._recover(environ, start_response, target, proxied)
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
        if proxied:
            held = self._hold(environ, start_response, target, channels, query, headers)
            if held is not None:
                return held
        if self.publisher.draining:
            return _retry_hint(start_response, headers, _DRAIN_RETRY_MS)
        if self.max_subscribers is not None and self.publisher.subscription_count >= self.max_subscribers:
            self.publisher.count_refused_stream()
            return _retry_hint(start_response, headers, _SHED_RETRY_MS)
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
            return _retry_hint(start_response, headers, _UNAVAILABLE_RETRY_MS)
        start_response("200 OK", headers)
        return subscription

    def _hold(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        target: tuple[str, str | None],
        channels: tuple[str, ...],
        query: list[tuple[str, str]],
        headers: list[tuple[str, str]],
    ) -> Iterable[bytes] | None:
        """Let the GRIP proxy hold this stream: answer at once with its start and what to follow.

        ``None`` when the set of channels cannot be held (too many held sets
        share one of them): the app then serves the stream itself.
        """
        resume_after = last_event_id(environ.get("HTTP_LAST_EVENT_ID"), query, len(channels))
        try:
            hold = self.publisher.hold(channels, resume_after)
        except BrokerUnavailable as error:  # not held: the body ends, and the browser comes back
            logger.warning("stream not held for now: %s", error)
            return _retry_hint(start_response, headers, _UNAVAILABLE_RETRY_MS)
        if hold is None:
            logger.warning("too many held sets share one of %s: the app serves this stream itself", list(channels))
            return None
        start_response("200 OK", headers + self._grip_headers(environ, target, channels, hold.id))
        return [self._opening.encode(), *self._held_body(hold.replay, resume_after)]

    def _recover(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        target: tuple[str, str | None],
        proxied: bool,
    ) -> Iterable[bytes]:
        """Answer a proxy's recovery request: what followed the last id it delivered, and the hold again.

        Trusted on the proxy's signature and the link this app signed, never on
        ``authorize``: the proxy sends no cookies with it.
        """
        if not proxied:
            return text_answer(start_response, "403 Forbidden", "Forbidden\n")
        try:
            query = query_params(environ.get("QUERY_STRING", ""))
            channels = self._channels(target, query)
        except BadRequest:
            return text_answer(start_response, "403 Forbidden", "Forbidden\n")
        signature = dict(query).get("grip_link", "").encode()  # bytes: any text compares, none raises
        expected = link_signature(self.publisher.grip_keys, channels).encode()
        last = parse_grip_last(environ["HTTP_GRIP_LAST"]).get(held_channel(channels))
        if not hmac.compare_digest(signature, expected) or last is None:
            return text_answer(start_response, "403 Forbidden", "Forbidden\n")
        try:
            hold = self.publisher.hold(channels, last)
        except (BrokerUnavailable, PublisherClosed) as error:  # an answer without Grip-Hold ends the stream
            logger.warning("cannot recover a held stream now: %s", error)
            hold = None
        if hold is None:  # an answer without Grip-Hold ends the stream: the browser resumes from the app
            start_response("200 OK", list(STREAM_HEADERS))
            return []
        start_response("200 OK", STREAM_HEADERS + self._grip_headers(environ, target, channels, hold.id))
        return self._held_body(hold.replay, last, unknown_is_lost=True)

    def _held_body(self, replay: Replay | None, after: str | None, *, unknown_is_lost: bool = False) -> list[bytes]:
        """The replay after *after* as chunks, the loss event first where it applies."""
        if replay is None:
            return [history_lost_chunk(after, None)] if unknown_is_lost else []
        resume_id = None if replay.items else replay.resume_id
        chunks = [history_lost_chunk(after, replay.oldest_id, resume_id)] if replay.lost else []
        chunks.extend(record.encode_with_id(wire_id) for record, wire_id in replay.items)
        return chunks

    def _grip_headers(
        self, environ: WSGIEnvironment, target: tuple[str, str | None], channels: tuple[str, ...], held_id: str
    ) -> list[tuple[str, str]]:
        """``Grip-Hold`` and its companions: the channel at *held_id*, the signed recovery link, the keep-alive."""
        params = [("channel", name) for name in channels]
        params.append(("grip_link", link_signature(self.publisher.grip_keys, channels)))
        link = quote(environ.get("SCRIPT_NAME", "") + target[0]) + "?" + urlencode(params)
        headers = [
            ("Grip-Hold", "stream"),
            ("Grip-Channel", grip_channel_header(held_channel(channels), held_id)),
            ("Grip-Link", f"<{link}>; rel=next; timeout={_RECOVERY_EVERY}"),
        ]
        if self.heartbeat is not None:
            headers.append(("Grip-Keep-Alive", keep_alive_header(self.heartbeat)))
        return headers

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

    def _cors_headers(self, environ: WSGIEnvironment) -> list[tuple[str, str]] | None:
        """CORS headers for this request; ``None`` when its origin may not subscribe."""
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            return []
        if self.cors_origins != "*" and origin in self.cors_origins:  # listed: credentials allowed
            return [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"),
            ]
        if _is_same_origin(origin, environ):
            return []
        if self.cors_origins == "*" and origin != "null":
            return [("Access-Control-Allow-Origin", "*")]  # never with credentials: the browser sends no cookies
        return None

    def _preflight(
        self, environ: WSGIEnvironment, start_response: StartResponse, cors: list[tuple[str, str]] | None
    ) -> Iterable[bytes]:
        headers = [_ALLOW, ("Content-Length", "0")]
        if cors and environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD"):
            headers += [
                *cors,
                ("Access-Control-Allow-Methods", ALLOWED_METHODS),
                ("Access-Control-Allow-Headers", _PREFLIGHT_HEADERS),
                ("Access-Control-Max-Age", _PREFLIGHT_MAX_AGE),
            ]
        start_response("204 No Content", headers)
        return []


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


def _normalize_origins(origins: str | Iterable[str]) -> str | frozenset[str]:
    if origins == "*":
        return "*"
    if isinstance(origins, str):
        origins = [origins]
    normalized = frozenset(origins)
    for origin in normalized:
        if origin == "null":
            continue  # the opaque origin (sandboxed iframes, file: pages), allowed only when listed
        if not isinstance(origin, str) or "://" not in origin or origin.endswith("/"):
            raise ValueError(f"cors_origins entries must be origins like 'https://example.com': {origin!r}")
    return normalized


def _is_same_origin(origin: str, environ: WSGIEnvironment) -> bool:
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme == environ.get("wsgi.url_scheme", "http") and parts.netloc.lower() == host.lower()
