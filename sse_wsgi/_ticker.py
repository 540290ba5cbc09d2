"""One background thread per publisher that wakes the streams whose heartbeat or end of life is due."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from ._process import PerProcess, ProcessLock

__all__ = ["Ticker"]

logger = logging.getLogger(__name__)

MAX_INTERVAL = 1.0  # seconds: the most a heartbeat or an end of life can be late
MIN_INTERVAL = 0.02  # seconds
_JOIN_TIMEOUT = 2.0  # seconds


class Timed(Protocol):
    """A stream the ticker watches."""

    def is_due(self, now: float) -> bool: ...

    def wake_up(self) -> None: ...


class Ticker:
    """Wake each registered stream when its heartbeat or end of life is due.

    A stream waits for its next event with no timeout of its own: a timeout
    per wait would cost a timer object on every event, and under gevent an
    exception thrown into the greenlet whenever one fires. Instead this one
    thread (a greenlet under gevent or eventlet monkey-patching) checks the
    registered streams every *interval* seconds: a quarter of the shortest
    period of the streams registered now, at most :data:`MAX_INTERVAL`. It
    starts with the first stream and ends at the first check that finds
    none left. Its lock and thread are made in the process that uses them
    (see :mod:`sse_wsgi._process`).
    """

    def __init__(self, name: str = "sse-wsgi-ticker") -> None:
        self._name = name
        self._lock = ProcessLock()
        self._closed = False
        self._here = PerProcess(_Run)  # a thread of the parent process does not run in a child

    def add(self, stream: Timed, period: float) -> None:
        """Watch *stream*, which needs waking about every *period* seconds."""
        interval = min(MAX_INTERVAL, max(MIN_INTERVAL, period / 4))
        with self._lock:
            if self._closed:
                return
            run = self._here.get()
            run.streams[stream] = interval
            poke = run.poke
            sooner = interval < run.interval
            if sooner:
                run.interval = interval
            if run.thread is None:
                # Made with the thread, so that an app imported before monkey-patching
                # (gunicorn --preload) still gets a cooperative event.
                poke = run.poke = threading.Event()
                thread = run.thread = threading.Thread(target=self._run, args=(run, poke), name=self._name, daemon=True)
            else:
                thread = None
        if thread is not None:
            thread.start()  # outside the lock: under gevent, starting a thread yields
        elif sooner and poke is not None:
            poke.set()  # the thread waits for the old, longer interval: restart its wait

    def discard(self, stream: Timed) -> None:
        """Stop watching *stream*."""
        with self._lock:
            self._here.get().streams.pop(stream, None)

    def clear(self) -> None:
        """Stop watching every stream."""
        with self._lock:
            self._here.get().streams.clear()

    def close(self) -> None:
        """Stop the thread and wait for it (bounded)."""
        with self._lock:
            self._closed = True
            run = self._here.get()
            run.streams.clear()
            thread, poke = run.thread, run.poke
        if poke is not None:
            poke.set()
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(_JOIN_TIMEOUT)

    def _run(self, run: _Run, poke: threading.Event) -> None:
        while True:
            poke.wait(run.interval)
            poke.clear()
            with self._lock:
                if self._closed or not run.streams or run.poke is not poke:
                    if run.poke is poke:
                        run.thread = run.poke = None  # the next stream starts a new thread
                        run.interval = MAX_INTERVAL
                    return
                streams = list(run.streams)
                # The streams registered now set the pace: a short period that left no longer does.
                run.interval = min(run.streams.values())
            try:
                self._wake_due(streams, time.monotonic())
            except Exception:  # a logged boundary: the ticker must outlive one bad stream
                logger.exception("waking due streams failed")

    @staticmethod
    def _wake_due(streams: list[Timed], now: float) -> None:
        for stream in streams:
            if stream.is_due(now):
                stream.wake_up()


class _Run:
    """What the ticker has in one process: the streams it watches, its thread and the event that wakes it."""

    __slots__ = ("interval", "poke", "streams", "thread")

    def __init__(self) -> None:
        self.streams: dict[Timed, float] = {}  # stream -> its check interval
        self.interval = MAX_INTERVAL
        self.poke: threading.Event | None = None
        self.thread: threading.Thread | None = None
