"""gunicorn server hook: end every event stream at once when a worker is told to stop.

An event stream never ends by itself, so a worker that gunicorn stops
(``TERM``) or replaces (``HUP``, a graceful reload) would wait for
``graceful_timeout`` and then be killed, cutting its clients off. With this
hook the worker drains its publishers as soon as the signal arrives
(:meth:`~sse_wsgi.Publisher.drain`): every stream ends normally, a stream
request that still reaches the old worker gets a short ``retry:`` hint,
browsers reconnect to the new workers with ``Last-Event-ID``, and the worker
exits promptly. Name it in your
``gunicorn.conf.py``::

    from sse_wsgi.gunicorn import post_worker_init  # noqa: F401

(or call it from your own ``post_worker_init``). Nothing happens on import.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from .publisher import drain_all

__all__ = ["post_worker_init"]

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def post_worker_init(worker: Any) -> None:
    """gunicorn's ``post_worker_init`` hook: drain this worker's publishers when it is told to stop."""
    for signum in STOP_SIGNALS:
        _chain(signum)


def _chain(signum: int) -> None:
    previous = signal.getsignal(signum)

    def end_streams_then_stop(number: int, frame: Any) -> None:
        _run_outside_the_handler(_drain_all_logged)
        if callable(previous):
            previous(number, frame)

    signal.signal(signum, end_streams_then_stop)


def _run_outside_the_handler(function: Callable[[], None]) -> None:
    """Run *function* soon, elsewhere: it takes locks, and a signal handler must not block.

    Under gevent a handler runs in the event loop, where even starting a
    thread blocks, so a greenlet is spawned instead.
    """
    gevent_monkey: Any = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("threading"):
        import gevent

        gevent.spawn(function)
    else:
        threading.Thread(target=function, name="sse-wsgi-shutdown", daemon=True).start()


def _drain_all_logged() -> None:
    logger.info("worker stopping: ending every event stream")
    drain_all()
