"""Public exceptions of sse_wsgi."""

from __future__ import annotations

__all__ = ["BrokerUnavailable", "PublisherClosed"]


class PublisherClosed(RuntimeError):
    """Raised by ``subscribe`` and ``publish`` after ``Publisher.close()``."""


class BrokerUnavailable(ConnectionError):
    """Raised by ``publish`` when a cross-process broker cannot be reached.

    The event was not published; the caller may retry it.
    """
