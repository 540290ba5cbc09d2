"""Locks and per-process state that survive a fork (``gunicorn --preload``, uWSGI without ``lazy-apps``).

An app imported in a server's master process and then forked must not
share the master's threads, sockets or locks with its workers. gevent's
worker monkey-patches only after the fork, so a lock made at import time is
a real OS lock in the worker: a greenlet that waits on it blocks every
other greenlet. So what this module hands out is made at first use in the
process (and the fork generation) that uses it: after the worker's
monkey-patching, in the worker itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["PerProcess", "ProcessLock", "fork_generation"]

_generation = 0
_guard = threading.Lock()  # held only while a lock is made: never across a switch


def _after_fork_in_child() -> None:
    global _generation, _guard
    _guard = threading.Lock()
    _generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_generation() -> int:
    """A number that changes in a child process after each fork: compare it to tell "made before the fork"."""
    return _generation


class PerProcess(Generic[T]):
    """A resource made by *make* at first use in each process: made again in a child after a fork.

    The one fork guard of the package: a broker's start, the Redis receiver,
    a proxy's sender thread and the ticker's thread are each one of these,
    so a publisher made before a fork starts them anew in every worker.
    """

    __slots__ = ("_generation", "_lock", "_make", "_value")

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._generation = -1
        self._lock = ProcessLock()

    def get(self) -> T:
        """The resource of this process, made now if it has none."""
        if self._generation != _generation:
            with self._lock:
                if self._generation != _generation:
                    self._value = self._make()
                    self._generation = _generation
        return self._value  # type: ignore[return-value]

    def here(self) -> T | None:
        """The resource of this process if it was made here, else ``None`` (makes nothing)."""
        return self._value if self._generation == _generation else None

    def forget(self) -> None:
        """Make it again at the next :meth:`get` (the resource ended)."""
        self._generation = -1


class ProcessLock:
    """A ``threading.Lock`` made in the process that first takes it, and made again after a fork.

    Use it as a context manager, like a lock.
    """

    __slots__ = ("_generation", "_lock")

    def __init__(self) -> None:
        self._lock: Any = None
        self._generation = -1

    def _current(self) -> Any:
        if self._generation != _generation:
            with _guard:
                if self._generation != _generation:
                    self._lock = threading.Lock()
                    self._generation = _generation
        return self._lock

    def __enter__(self) -> ProcessLock:
        self._current().acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()
