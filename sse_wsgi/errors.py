"""Public exceptions of sse_wsgi."""

from __future__ import annotations

__all__ = ["BrokerUnavailable", "PublishOutcomeUnknown", "PublisherClosed"]


class PublisherClosed(RuntimeError):
    """Raised by ``subscribe`` and ``publish`` after ``Publisher.close()``."""


class BrokerUnavailable(ConnectionError):
    """Raised by ``publish`` when a cross-process broker cannot be reached or refuses the event.

    Raised as such, the event was not published. Its subclass
    :class:`PublishOutcomeUnknown` says that it may have been.
    """


class PublishOutcomeUnknown(BrokerUnavailable):
    """Raised by ``publish`` when the broker failed before it confirmed the event (a timeout, a broken link).

    The event may have been published, or not, or (on a Redis Cluster, for
    several channels) on some of its channels only. Publish it again with
    ``idempotency_key=error.idempotency_key`` (within the broker's
    idempotency window, two minutes on Redis) to publish it exactly once:
    what was stored before is not stored again, and the retry returns the
    same id.

    :ivar idempotency_key: the key the failed publish used (the caller's, or one made for it).
    """

    def __init__(self, message: str, idempotency_key: str) -> None:
        super().__init__(message)
        self.idempotency_key = idempotency_key
