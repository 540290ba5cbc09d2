"""The GRIP protocol, as this app speaks it with a proxy (Pushpin, Fastly Fanout).

This module knows the protocol and nothing else: the GRIP URLs a publisher is given,
the proxy's request signature (``Grip-Sig``), the names the held
connections follow, and the signed link a proxy fetches to recover what it
missed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..event import HEARTBEAT

__all__ = [
    "GripProxy",
    "grip_channel_header",
    "held_channel",
    "keep_alive_header",
    "link_signature",
    "parse_grip",
    "parse_grip_last",
    "verify_grip_sig",
]

_SAFE_ID = re.compile(r"[A-Za-z0-9._~+/=:@!$*-]*")  # an id that needs no quoting as a header parameter


@dataclass(frozen=True)
class GripProxy:
    """One proxy: where its HTTP control endpoint is, and the key it signs its requests with.

    :ivar publish_url: the URL that takes published items (``.../publish/``).
    :ivar key: the signing key (Pushpin's ``sig_key``).
    """

    publish_url: str
    key: bytes = field(repr=False)

    @classmethod
    def from_url(cls, url: str) -> GripProxy:
        """Parse a GRIP URL: ``http://127.0.0.1:5561?key=SECRET`` (``key=base64:...`` for a binary key)."""
        if not isinstance(url, str):
            raise TypeError(f"a GRIP URL must be a str like 'http://127.0.0.1:5561?key=SECRET', not {url!r}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a GRIP URL must be an http(s) URL of the proxy's control endpoint: {url!r}")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        key = params.get("key")
        if not key:
            raise ValueError(
                f"a GRIP URL needs the proxy's signing key (?key=..., Pushpin's sig_key), so that the app can tell "
                f"the proxy's requests from a client's: {parts._replace(query='').geturl()!r}"
            )
        if key.startswith("base64:"):
            try:
                secret = base64.b64decode(key[len("base64:") :], validate=True)
            except binascii.Error:
                raise ValueError("the GRIP key after base64: is not valid base64") from None
        else:
            secret = key.encode()
        path = parts.path.rstrip("/") + "/publish/"
        return cls(urlunsplit((parts.scheme, parts.netloc, path, "", "")), secret)


def parse_grip(grip: str | Sequence[str] | None) -> list[GripProxy]:
    """The proxies of a ``grip=`` argument: a GRIP URL, a list of them, or ``None``."""
    if grip is None:
        return []
    urls = [grip] if isinstance(grip, str) else list(grip)
    if not urls:
        raise ValueError("grip must name at least one proxy, or be None")
    return [GripProxy.from_url(url) for url in urls]


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_grip_sig(token: str | None, keys: Iterable[bytes], now: float | None = None) -> bool:
    """True when *token* is an HS256 JWT signed with one of *keys* and not expired (it needs ``exp``)."""
    if not token:
        return False
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        signature = _b64url_decode(signature_b64)
        signed = f"{header_b64}.{payload_b64}".encode("ascii")
    except (ValueError, binascii.Error):
        return False
    if not any(hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), signature) for key in keys):
        return False  # checked first: a client's token is never parsed (deeply nested JSON would raise)
    try:
        header = json.loads(_b64url_decode(header_b64))
        payload = json.loads(_b64url_decode(payload_b64))
    except (ValueError, binascii.Error):
        return False
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(payload, dict):
        return False
    expires = payload.get("exp")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        return False
    return expires > (time.time() if now is None else now)


def held_channel(channels: Iterable[str]) -> str:
    """The proxy channel that connections held on this set of channels follow.

    A digest of the sorted names, so that any name (commas, semicolons,
    200 characters) makes a short, header-safe channel, and a set of several
    channels is one channel on the proxy: a connection gets each event once.
    """
    names = sorted(set(channels))
    return "sse-" + hashlib.blake2b("\0".join(names).encode(), digest_size=12).hexdigest()


def link_signature(keys: Sequence[bytes], channels: Iterable[str]) -> str:
    """The signature of a recovery link for *channels*, with the first proxy key."""
    names = "\0".join(sorted(set(channels)))
    return hmac.new(keys[0], b"sse_wsgi grip link\0" + names.encode(), hashlib.sha256).hexdigest()[:32]


def _quoted(value: str) -> str:
    if _SAFE_ID.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def grip_channel_header(channel: str, prev_id: str) -> str:
    """A ``Grip-Channel`` value: the channel, and the id of the last event the held connection has."""
    return f"{channel}; prev-id={_quoted(prev_id)}"


_HEARTBEAT_CSTRING = HEARTBEAT.decode().replace("\n", "\\n")  # the heartbeat, escaped as Pushpin reads it


def keep_alive_header(heartbeat: float) -> str:
    """A ``Grip-Keep-Alive`` value that sends the heartbeat comment every *heartbeat* seconds (rounded up)."""
    return f"{_HEARTBEAT_CSTRING}; format=cstring; timeout={max(1, math.ceil(heartbeat))}"


def parse_grip_last(header: str) -> dict[str, str]:
    """``{channel: last-id}`` from a ``Grip-Last`` header (``name; last-id=ID, ...``)."""
    found: dict[str, str] = {}
    for match in re.finditer(r'\s*([^;,\s]+)\s*;\s*last-id=(?:"((?:[^"\\]|\\.)*)"|([^,]*))\s*(?:,|$)', header):
        quoted, plain = match.group(2), match.group(3)
        found[match.group(1)] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain.strip()
    return found
