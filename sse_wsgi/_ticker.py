"""One background thread per publisher that wakes the streams whose heartbeat or end of life is due."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

__all__ = ["Ticker"]

logger = logging.getLogger(__name__)

MAX_INTERVAL = 1.0  # seconds: the most a heartbeat or an end of life can be late
MIN_INTERVAL = 0.02  # seconds
_JOIN_TIMEOUT = 2.0  # seconds


class Timed(Protocol):
    """A stream the ticker watches."""

    def _is_due(self, now: float) -> bool: ...

    def _wake_up(self) -> None: ...


class Ticker:
    """Wake each registered stream when its heartbeat or end of life is due.

    A stream waits for its next event with no timeout of its own: a timeout
    per wait would cost a timer object on every event, and under gevent an
    exception thrown into the greenlet whenever one fires. Instead this one thread (a
    greenlet under gevent or eventlet monkey-patching) checks the registered
    streams every *interval* seconds: a quarter of the shortest period asked
    for, at most :data:`MAX_INTERVAL`. It starts with the first stream and
    ends at the first check that finds none left.
    """

    def __init__(self, name: str = "sse-wsgi-ticker") -> None:
        self._name = name
        self._streams: dict[Timed, None] = {}
        self._lock = threading.Lock()
        self._interval = MAX_INTERVAL
        self._closed = False
        # Made with the thread, so that an app imported before monkey-patching
        # (gunicorn --preload) still gets a cooperative event.
        self._poke: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def add(self, stream: Timed, period: float) -> None:
        """Watch *stream*, which needs waking about every *period* seconds."""
        interval = min(MAX_INTERVAL, max(MIN_INTERVAL, period / 4))
        with self._lock:
            if self._closed:
                return
            self._streams[stream] = None
            sooner = interval < self._interval
            self._interval = min(self._interval, interval)
            if self._thread is None:
                self._poke = threading.Event()
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif sooner and self._poke is not None:
                self._poke.set()  # the thread waits for the old, longer interval: restart its wait

    def discard(self, stream: Timed) -> None:
        """Stop watching *stream*."""
        with self._lock:
            self._streams.pop(stream, None)

    def clear(self) -> None:
        """Stop watching every stream."""
        with self._lock:
            self._streams.clear()

    def close(self) -> None:
        """Stop the thread and wait for it (bounded)."""
        with self._lock:
            self._closed = True
            self._streams.clear()
            thread, poke = self._thread, self._poke
        if poke is not None:
            poke.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)

    def _run(self) -> None:
        poke = self._poke
        assert poke is not None
        while True:
            poke.wait(self._interval)
            poke.clear()
            with self._lock:
                if self._closed or not self._streams:
                    self._thread = self._poke = None  # the next stream starts a new thread
                    self._interval = MAX_INTERVAL
                    return
                streams = list(self._streams)
            try:
                self._wake_due(streams, time.monotonic())
            except Exception:  # a logged boundary: the ticker must outlive one bad stream
                logger.exception("waking due streams failed")

    @staticmethod
    def _wake_due(streams: list[Timed], now: float) -> None:
        for stream in streams:
            if stream._is_due(now):
                stream._wake_up()
