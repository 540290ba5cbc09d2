"""Cross-origin access to the events path: who may subscribe from another site, and the preflight answer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["ALLOWED_METHODS", "CorsPolicy"]

ALLOWED_METHODS = "GET, HEAD, OPTIONS"
ALLOW = ("Allow", ALLOWED_METHODS)
_PREFLIGHT_HEADERS = "Accept, Authorization, Cache-Control, Last-Event-ID, X-Requested-With"
_PREFLIGHT_MAX_AGE = "600"  # seconds


class CorsPolicy:
    """The origins allowed to subscribe cross-origin.

    :param origins: origins allowed with credentials (each echoed back with
        ``Access-Control-Allow-Credentials: true``); ``"*"`` allows any origin
        *without* credentials, so no other site can read a logged-in user's
        streams. The opaque origin ``null`` is allowed only if listed.
    """

    def __init__(self, origins: str | Iterable[str]) -> None:
        self.origins = _normalize_origins(origins)

    def headers(self, environ: WSGIEnvironment) -> list[tuple[str, str]] | None:
        """CORS headers for this request; ``None`` when its origin may not subscribe."""
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            return []
        if self.origins != "*" and origin in self.origins:  # listed: credentials allowed
            return [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"),
            ]
        if _is_same_origin(origin, environ):
            return []
        if self.origins == "*" and origin != "null":
            return [("Access-Control-Allow-Origin", "*")]  # never with credentials: the browser sends no cookies
        return None

    @staticmethod
    def preflight(
        environ: WSGIEnvironment, start_response: StartResponse, cors: list[tuple[str, str]] | None
    ) -> Iterable[bytes]:
        """Answer ``OPTIONS``: ``204`` with ``Allow``, and the preflight headers for an allowed origin."""
        headers = [ALLOW, ("Content-Length", "0")]
        if cors and environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD"):
            headers += [
                *cors,
                ("Access-Control-Allow-Methods", ALLOWED_METHODS),
                ("Access-Control-Allow-Headers", _PREFLIGHT_HEADERS),
                ("Access-Control-Max-Age", _PREFLIGHT_MAX_AGE),
            ]
        start_response("204 No Content", headers)
        return []


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
