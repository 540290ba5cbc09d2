"""The demo chat for live and browser tests, configured from the environment.

``SSE_RETRY`` (ms), ``SSE_MAX_LIFETIME`` and ``SSE_HEARTBEAT`` (s),
``SSE_REDIS_URL`` (use the Redis broker), ``SSE_GRIP`` (a GRIP URL: let that proxy hold the streams).
"""

from __future__ import annotations

import os

from sse_wsgi import Publisher
from sse_wsgi.demo import make_app

redis_url = os.environ.get("SSE_REDIS_URL")
grip = os.environ.get("SSE_GRIP") or None
app = make_app(
    Publisher.from_url(redis_url, grip=grip) if redis_url else Publisher(grip=grip),
    retry=int(os.environ.get("SSE_RETRY", "1000")),
    max_lifetime=float(os.environ["SSE_MAX_LIFETIME"]) if os.environ.get("SSE_MAX_LIFETIME") else None,
    heartbeat=float(os.environ.get("SSE_HEARTBEAT", "15")),
)
