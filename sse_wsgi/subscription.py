"""One subscriber's stream: :class:`Subscription`, an iterator of encoded events for a WSGI body."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .broker import Cursor, Record
from .event import HEARTBEAT, history_lost_chunk

__all__ = ["MAX_CHUNK_BYTES", "Loss", "Subscription"]

# The most bytes one chunk of a stream joins (one event larger than this goes
# alone). A resuming client may be owed the whole history: in one chunk, that
# would be one large copy per client, held until a slow client has read it.
MAX_CHUNK_BYTES = 64 * 1024


class Loss:
    """A queued notice: events of *stream* (``None``: any) were lost before this point."""

    __slots__ = ("oldest_id", "stream")

    def __init__(self, stream: str | None, oldest_id: str | None) -> None:
        self.stream = stream
        self.oldest_id = oldest_id


class Subscription:
    """One subscriber's stream: an iterator of ``bytes`` chunks, each one or more whole events.

    Use it directly as a WSGI body or a framework's streaming response. It
    is registered from creation (``Publisher.subscribe`` makes it);
    :meth:`close` unregisters it (the WSGI server calls it when the client
    goes away), also when it was never iterated. It is a context manager.
    One thread (or greenlet) iterates it; the publisher queues events for
    it from others.

    :ivar channels: the channels subscribed to.
    :ivar properties: the properties given to ``subscribe``.
    :ivar last_id: the id of the last event handed to this stream.
    """

    def __init__(
        self,
        channels: tuple[str, ...],
        properties: Any,
        *,
        initial: list[bytes],
        heartbeat: float | None,
        max_lifetime: float | None,
        client_disconnected: Callable[[], bool] | None,
        queue_size: int,
        on_close: Callable[[Subscription], None],
    ) -> None:
        self.channels = channels
        self.properties = properties
        self.last_id: str | None = None
        self._pending = initial  # a list, not a deque: one per idle stream, and usually short
        self._queue: deque[tuple[Record | Loss, bytes | None]] = deque()
        self._queue_size = queue_size
        self._on_close = on_close
        self._wake = threading.Event()
        self._cursor: Cursor | None = None  # set by start(), before subscribe returns
        self._heartbeat = heartbeat
        self._deadline = None if max_lifetime is None else time.monotonic() + max_lifetime
        self._client_disconnected = client_disconnected
        self._last_sent = self._last_probe = time.monotonic()
        self._ended = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<Subscription channels={self.channels!r} closed={self._closed}>"

    @property
    def closed(self) -> bool:
        """True once the subscription is closed (unregistered)."""
        return self._closed

    # -- what the publisher calls ------------------------------------------------------------

    def start(self, cursor: Cursor, replayed: Sequence[bytes] = (), last_id: str | None = None) -> None:
        """Begin at *cursor*, after the *replayed* chunks (the last of which had *last_id*)."""
        self._pending.extend(replayed)
        self._cursor = cursor
        if last_id is not None:
            self.last_id = last_id

    def queue(self, item: Record | Loss, chunk: bytes | None = None) -> bool:
        """Queue a record (with its chunk when made for this subscriber) or a loss; ``False`` when full."""
        if len(self._queue) >= self._queue_size:
            return False
        self._queue.append((item, chunk))
        self.wake_up()
        return True

    def end(self, *, drop_queued: bool = False) -> None:
        """End the stream normally after what is queued (or at once, dropping it)."""
        self._ended = True
        if drop_queued:
            self._queue.clear()
        self._wake.set()

    def is_due(self, now: float) -> bool:
        """True when a heartbeat or the end of the stream's life is due (the publisher's ticker asks)."""
        heartbeat_due = self._heartbeat is not None and now - self._last_sent >= self._heartbeat
        return heartbeat_due or (self._deadline is not None and now >= self._deadline)

    def wake_up(self) -> None:
        """Make a waiting ``next()`` look again now (the ticker's call when a heartbeat is due)."""
        if not self._wake.is_set():
            self._wake.set()

    # -- the iterator ------------------------------------------------------------------------

    def _take(self) -> list[bytes]:
        """What goes out next, in order: replayed chunks, then queued ones, up to :data:`MAX_CHUNK_BYTES`."""
        pending = self._pending
        taken = size = 0
        while taken < len(pending) and size < MAX_CHUNK_BYTES:
            size += len(pending[taken])
            taken += 1
        chunks = pending[:taken]
        del pending[:taken]
        queue = self._queue
        cursor = self._cursor
        while queue and size < MAX_CHUNK_BYTES and cursor is not None:
            item, chunk = queue.popleft()
            if isinstance(item, Loss):
                cursor.reset(item.stream)
                chunk = history_lost_chunk(self.last_id, item.oldest_id)
            else:
                wire_id = cursor.admit(item)
                if wire_id is None:
                    continue  # already sent, or sent from another of its streams
                if chunk is None:
                    chunk = item.encode_with_id(wire_id)  # the shared chunk when it is the record's own id
                self.last_id = wire_id
            chunks.append(chunk)
            size += len(chunk)
        return chunks

    def __iter__(self) -> Subscription:
        return self

    def _client_gone(self, now: float) -> bool:
        """Ask the server's disconnect signal, at most once a heartbeat period."""
        if self._client_disconnected is None or self._heartbeat is None or now - self._last_probe < self._heartbeat:
            return False
        self._last_probe = now
        return self._client_disconnected()

    def __next__(self) -> bytes:
        while not self._closed:
            now = time.monotonic()
            if self._deadline is not None and now >= self._deadline:
                break  # also on a busy stream: the browser resumes by id
            if self._client_gone(now):
                break
            chunks = self._take()
            if chunks:
                self._last_sent = now
                return b"".join(chunks)
            if self._ended:
                break
            if self._heartbeat is not None and now - self._last_sent >= self._heartbeat:
                self._last_sent = now
                return HEARTBEAT
            self._wake.clear()
            if self._queue or self._ended or self._closed:
                continue
            # No timeout: the publisher's ticker wakes this stream when a heartbeat or its end is due.
            self._wake.wait()
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Unregister and end the stream; safe to call more than once, from any thread."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        self._queue.clear()
        self._pending.clear()
        self._wake.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
