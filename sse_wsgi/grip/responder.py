"""The app's side of a held stream: answer a proxy's request with a hold, and its recovery requests.

:class:`GripResponder` is what :class:`~sse_wsgi.SSEMiddleware` hands a
request to when a GRIP proxy forwarded it (its ``Grip-Sig`` verifies): a
stream request is answered at once with ``Grip-Hold`` and the stream's
start; a recovery request (``Grip-Last``) with what followed the last id the
proxy delivered, and the hold again. The middleware decides everything
else (routing, CORS, ``authorize``, limits) before.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from .._http import STREAM_HEADERS, UNAVAILABLE_RETRY_MS, retry_hint, text_answer
from ..errors import BrokerUnavailable, PublisherClosed
from ..event import history_lost_chunk
from .protocol import (
    grip_channel_header,
    held_channel,
    keep_alive_header,
    link_signature,
    parse_grip_last,
    verify_grip_sig,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..broker import Hold
    from ..publisher import Publisher

__all__ = ["GripResponder"]

logger = logging.getLogger(__name__)

# A GRIP proxy fetches a held stream's recovery link this often (seconds) even
# when it missed nothing: that renews the registration of a held set of channels.
RECOVERY_EVERY = 60


class GripResponder:
    """Hold streams for the GRIP proxies of *publisher*, and answer their recovery requests.

    :param publisher: the publisher (its ``grip_keys`` verify the proxy's requests).
    :param heartbeat: seconds between the keep-alive comments the proxy sends (``None``: none).
    :param opening: the first chunk of every stream.
    """

    def __init__(self, publisher: Publisher, heartbeat: float | None, opening: bytes) -> None:
        self.publisher = publisher
        self.heartbeat = heartbeat
        self.opening = opening

    def proxied(self, environ: WSGIEnvironment) -> bool:
        """True when the request carries a ``Grip-Sig`` that one of the proxies' keys verifies."""
        keys = self.publisher.grip_keys
        return bool(keys) and verify_grip_sig(environ.get("HTTP_GRIP_SIG"), keys)

    def hold(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        channels: tuple[str, ...],
        resume_after: str | None,
        headers: list[tuple[str, str]],
    ) -> Iterable[bytes] | None:
        """Let the proxy hold this stream: answer at once with its start and what to follow.

        ``None`` when the set of channels cannot be held (too many held sets
        share one of them): the app then serves the stream itself.
        """
        try:
            hold = self.publisher.hold(channels, resume_after)
        except BrokerUnavailable as error:  # not held: the body ends, and the browser comes back
            logger.warning("stream not held for now: %s", error)
            return retry_hint(start_response, headers, UNAVAILABLE_RETRY_MS)
        if hold is None:
            logger.warning("too many held sets share one of %s: the app serves this stream itself", list(channels))
            return None
        start_response("200 OK", headers + self._grip_headers(environ, path, channels, hold))
        return [self.opening, *self._body(hold, resume_after)]

    def recover(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        channels: tuple[str, ...] | None,
        link_signature_given: str,
    ) -> Iterable[bytes]:
        """Answer a recovery request: what followed the last id the proxy delivered, and the hold again.

        Trusted on the proxy's signature and the link this app signed
        (*channels*: ``None`` when the link names none validly), never on
        ``authorize``: the proxy sends no cookies with it.
        """
        if not self.proxied(environ) or channels is None:
            return text_answer(start_response, "403 Forbidden", "Forbidden\n")
        given = link_signature_given.encode()  # bytes: any text compares, none raises
        expected = link_signature(self.publisher.grip_keys, channels).encode()
        last = parse_grip_last(environ["HTTP_GRIP_LAST"]).get(held_channel(channels))
        if not hmac.compare_digest(given, expected) or last is None:
            return text_answer(start_response, "403 Forbidden", "Forbidden\n")
        hold: Hold | None
        try:
            hold = self.publisher.hold(channels, last)
        except (BrokerUnavailable, PublisherClosed) as error:
            logger.warning("cannot recover a held stream now: %s", error)
            hold = None
        if hold is None:  # an answer without Grip-Hold ends the stream: the browser resumes from the app
            start_response("200 OK", list(STREAM_HEADERS))
            return []
        start_response("200 OK", STREAM_HEADERS + self._grip_headers(environ, path, channels, hold))
        if hold.replay is None:  # an id that names nothing: say so, then what comes next
            return [history_lost_chunk(last, None)]
        return self._body(hold, last)

    @staticmethod
    def _body(hold: Hold, after: str | None) -> list[bytes]:
        return [] if hold.replay is None else hold.replay.chunks(after)[0]

    def _grip_headers(
        self, environ: WSGIEnvironment, path: str, channels: tuple[str, ...], hold: Hold
    ) -> list[tuple[str, str]]:
        """``Grip-Hold`` and its companions: the channel at the hold's id, the signed recovery link, the keep-alive."""
        params = [("channel", name) for name in channels]
        params.append(("grip_link", link_signature(self.publisher.grip_keys, channels)))
        link = quote(environ.get("SCRIPT_NAME", "") + path) + "?" + urlencode(params)
        headers = [
            ("Grip-Hold", "stream"),
            ("Grip-Channel", grip_channel_header(held_channel(channels), hold.id)),
            ("Grip-Link", f"<{link}>; rel=next; timeout={RECOVERY_EVERY}"),
        ]
        if self.heartbeat is not None:
            headers.append(("Grip-Keep-Alive", keep_alive_header(self.heartbeat)))
        return headers
