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

from .._process import PerProcess
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


class _Line:
    """What one proxy's sender has in one process: its queue, its thread and its connection."""

    __slots__ = ("connection", "queue", "thread")

    def __init__(self) -> None:
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self.connection: http.client.HTTPConnection | None = None
        self.thread: threading.Thread | None = None


class _Sender:
    """One proxy's queue and thread, made in the process that publishes (again in a forked child)."""

    def __init__(self, proxy: GripProxy) -> None:
        self.proxy = proxy
        parts = urlsplit(proxy.publish_url)
        self._https = parts.scheme == "https"
        self._host, self._port, self._path = parts.hostname or "", parts.port, parts.path
        self._stop = threading.Event()
        self._line = PerProcess(self._open_line)
        self.sent = 0
        self.refused = 0
        self.last_error: str | None = None

    def _open_line(self) -> _Line:
        """This process's queue and thread (what a parent had queued is the parent's)."""
        line = _Line()
        name = f"sse-wsgi-grip-{self._host}:{self._port}"
        line.thread = threading.Thread(target=self._run, args=(line,), name=name, daemon=True)
        line.thread.start()
        return line

    def send(self, items: list[dict[str, Any]]) -> None:
        line = self._line.get()
        for item in items:
            try:
                line.queue.put_nowait(item)
            except queue.Full:
                self.refused += 1

    def _run(self, line: _Line) -> None:
        while not self._stop.is_set():
            try:
                batch = [line.queue.get(timeout=POLL)]
            except queue.Empty:
                continue
            while len(batch) < BATCH:
                try:
                    batch.append(line.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._post(line, batch)
            except Exception:  # a logged boundary: the sender must outlive one bad batch
                logger.exception("GRIP proxy at %s: sending %d items failed", self.proxy.publish_url, len(batch))
                self.refused += len(batch)
        self._disconnect(line)

    def _post(self, line: _Line, batch: list[dict[str, Any]]) -> None:
        body = json.dumps({"items": batch}, separators=(",", ":")).encode()
        try:
            if line.connection is None:
                connection_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                line.connection = connection_class(self._host, self._port, timeout=TIMEOUT)
            line.connection.request("POST", self._path, body, {"Content-Type": "application/json"})
            response = line.connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as error:
            self._disconnect(line)
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

    @staticmethod
    def _disconnect(line: _Line) -> None:
        if line.connection is not None:
            line.connection.close()
            line.connection = None

    def stats(self) -> dict[str, Any]:
        line = self._line.here()
        queued = line.queue.qsize() if line is not None else 0
        return {"sent": self.sent, "refused": self.refused, "queued": queued, "last_error": self.last_error}

    def close(self) -> None:
        self._stop.set()
        line = self._line.here()
        if line is None or line.thread is None:
            return
        if line.thread is not threading.current_thread():
            line.thread.join(POLL + TIMEOUT)
        self._disconnect(line)


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
