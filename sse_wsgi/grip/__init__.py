"""GRIP: streams held by a proxy (Pushpin, Fastly Fanout) instead of by the app's workers.

The app answers a stream request from the proxy at once with instructions
(``Grip-Hold: stream``, the channel to follow, a first body), and every
``publish`` also goes to the proxy, which sends the event to the connections
it holds. The modules, one job each:

- :mod:`.protocol`: the protocol itself (GRIP URLs, ``Grip-Sig``, the header
  formats, the signed recovery link);
- :mod:`.sender`: sending published events to the proxies (a thread and a
  bounded queue per proxy);
- :mod:`.responder`: answering the proxy's requests (hold, recovery).
"""

from __future__ import annotations

from .protocol import (
    GripProxy,
    grip_channel_header,
    held_channel,
    keep_alive_header,
    link_signature,
    parse_grip,
    parse_grip_last,
    verify_grip_sig,
)
from .responder import GripResponder
from .sender import ProxySenders

__all__ = [
    "GripProxy",
    "GripResponder",
    "ProxySenders",
    "grip_channel_header",
    "held_channel",
    "keep_alive_header",
    "link_signature",
    "parse_grip",
    "parse_grip_last",
    "verify_grip_sig",
]
