"""Sending published events to GRIP proxies: one named thread and one bounded queue per proxy.

``publish`` only queues the items, so a proxy that is down or slow never
blocks it: a full queue drops items (counted as refused), and the proxy's
connections then see a gap at the next item (its ``prev-id`` does not match)
and ask the app for what they missed, or they drop and their browsers resume
from history. Each sender posts what has queued up in one request, in order.
The thread is started in the process that publishes (after a fork too).
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
from typing import Any
from urllib.parse import urlsplit

from .._process import ProcessLock, fork_generation
from ..broker import ProxyItem
from .protocol import GripProxy, held_channel

__all__ = ["ProxySenders"]

logger = logging.getLogger(__name__)

QUEUE_SIZE = 10_000  # items waiting for one proxy
BATCH = 500  # items in one request at most
TIMEOUT = 5.0  # seconds for one request to a proxy
POLL = 0.5  # seconds a sender waits for items before it looks at its stop flag


def _item(item: ProxyItem) -> dict[str, Any]:
    content = item.record.encode_with_id(item.id).decode()
    return {
        "channel": held_channel(item.channels),
        "id": item.id,
        "prev-id": item.prev_id,
        "formats": {"http-stream": {"content": content}},
    }


class _Sender:
    """One proxy's queue and thread."""

    def __init__(self, proxy: GripProxy) -> None:
        self.proxy = proxy
        parts = urlsplit(proxy.publish_url)
        self._https = parts.scheme == "https"
        self._host, self._port, self._path = parts.hostname or "", parts.port, parts.path
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = -1
        self._connection: http.client.HTTPConnection | None = None
        self._lock = ProcessLock()
        self.sent = 0
        self.refused = 0
        self.last_error: str | None = None

    def send(self, items: list[dict[str, Any]]) -> None:
        self._ensure_thread()
        for item in items:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.refused += 1

    def _ensure_thread(self) -> None:
        if self._generation == fork_generation() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._generation != fork_generation() or self._thread is None or not self._thread.is_alive():
                if self._generation != fork_generation():
                    self._queue = queue.Queue(QUEUE_SIZE)  # what the parent had queued is the parent's
                    self._connection = None
                self._generation = fork_generation()
                name = f"sse-wsgi-grip-{self._host}:{self._port}"
                self._thread = threading.Thread(target=self._run, name=name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._queue.get(timeout=POLL)]
            except queue.Empty:
                continue
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._post(batch)
        self._disconnect()

    def _post(self, batch: list[dict[str, Any]]) -> None:
        body = json.dumps({"items": batch}, separators=(",", ":")).encode()
        try:
            if self._connection is None:
                connection_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                self._connection = connection_class(self._host, self._port, timeout=TIMEOUT)
            self._connection.request("POST", self._path, body, {"Content-Type": "application/json"})
            response = self._connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as error:
            self._disconnect()
            self._refuse(len(batch), f"{type(error).__name__}: {error}")
            return
        if response.status // 100 != 2:
            self._refuse(len(batch), f"HTTP {response.status}: {answer[:200]!r}")
            return
        self.sent += len(batch)
        self.last_error = None

    def _refuse(self, count: int, error: str) -> None:
        if self.last_error is None:
            logger.warning("GRIP proxy at %s refused %d items: %s", self.proxy.publish_url, count, error)
        self.refused += count
        self.last_error = error

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def stats(self) -> dict[str, Any]:
        queued = self._queue.qsize()
        return {"sent": self.sent, "refused": self.refused, "queued": queued, "last_error": self.last_error}

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and self._generation == fork_generation() and thread is not threading.current_thread():
            thread.join(POLL + TIMEOUT)
        self._disconnect()


class ProxySenders:
    """Every proxy's sender: each published event goes to each proxy once."""

    def __init__(self, proxies: list[GripProxy]) -> None:
        self.keys = [proxy.key for proxy in proxies]
        self._senders = [_Sender(proxy) for proxy in proxies]

    def send(self, items: list[ProxyItem]) -> None:
        """Queue *items* for every proxy (never blocks)."""
        encoded = [_item(item) for item in items]
        for sender in self._senders:
            sender.send(encoded)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per proxy: items sent, refused (a full queue, an error or a non-2xx answer), queued, last error."""
        return {sender.proxy.publish_url: sender.stats() for sender in self._senders}

    def close(self) -> None:
        """Stop the senders, after what they are sending now."""
        for sender in self._senders:
            sender.close()
