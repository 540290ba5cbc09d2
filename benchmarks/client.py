"""The load client: N event-stream subscribers on raw asyncio sockets (httptools parses HTTP/1.1,
chunked included) and a publisher that POSTs numbered, timestamped events.

Each event's data is ``"<seq> <monotonic publish time> <padding>"``; every
subscriber notes which sequence numbers it got and how late, so the report
has per-event loss, duplicates and latency.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httptools

CONNECT_CONCURRENCY = 200  # connections being opened at once
LIVE_TIMEOUT = 120.0  # seconds for all subscribers to be live
PUBLISH_TIMEOUT = 30.0  # seconds for one publish to be answered
WARM_UP = b"warm-up"  # the data of the events that open streams which send nothing before the first event
WARM_UP_INTERVAL = 0.5  # seconds


@dataclass
class Delivery:
    """What all subscribers received."""

    events: int
    subscribers: int
    counts: list[bytearray] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    first_publish: float = 0.0
    last_delivery: float = 0.0

    def tally(self) -> tuple[int, int]:
        """(events lost, events duplicated) over all subscribers."""
        lost = sum(c.count(0) for c in self.counts)
        duplicated = sum(n - 1 for c in self.counts for n in c if n > 1)
        return lost, duplicated


class ResponseProtocol(asyncio.Protocol):
    """Sends *request* once connected; httptools parses the answer and calls this object's ``on_*`` methods."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def cut(self) -> bool:
        """Whether the connection is closed (by the server, when asked before :meth:`close`)."""
        return self.transport is None or self.transport.is_closing()


class Subscriber(ResponseProtocol):
    """One stream: parses the HTTP response and the events in its body."""

    def __init__(self, request: bytes, delivery: Delivery, index: int) -> None:
        super().__init__(request)
        self.delivery = delivery
        self.counts = delivery.counts[index]
        self.pending = b""
        self.live: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_headers_complete(self) -> None:
        if self.parser.get_status_code() != 200 and not self.live.done():
            self.live.set_result(False)

    def on_body(self, body: bytes) -> None:
        if not self.live.done():
            self.live.set_result(True)
        if b"\r" in body:  # sse-starlette ends lines with CRLF
            body = body.replace(b"\r\n", b"\n")
        *events, self.pending = (self.pending + body).split(b"\n\n")
        now = time.monotonic()
        for event in events:
            start = event.find(b"data:")
            if start < 0:
                continue  # a comment: stream open, heartbeat
            # flask-sse sends the data as a JSON string: data:"<seq> <time> ..."
            data = event[start + 5 :].lstrip(b' "')
            if data.startswith(WARM_UP):
                continue
            seq, sent = data.split(b" ", 2)[:2]
            number = int(seq)
            if number < len(self.counts):
                self.counts[number] += 1
                self.delivery.latencies.append(now - float(sent))
                self.delivery.last_delivery = now

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.live.done():
            self.live.set_result(False)


class Publisher:
    """POSTs events on one keep-alive connection and waits for each answer.

    A server that answers ``Connection: close`` (gunicorn's sync worker) gets a new connection for the next one.
    """

    def __init__(self, port: int, path: str = "/publish") -> None:
        self.port = port
        self.path = path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def publish(self, seq: int, padding: bytes) -> None:
        await self.send(b"%d %.6f %s" % (seq, time.monotonic(), padding))

    async def send(self, body: bytes) -> None:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (self.path.encode(), len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        length, close = 0, False
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            await self.close()
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"publish answered {head.splitlines()[0]!r}")

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            await writer.wait_closed()


async def warm_up(port: int) -> None:
    """Publish one warm-up event on a connection of its own (a server may close idle keep-alive ones)."""
    publisher = Publisher(port)
    await publisher.connect()
    try:
        await publisher.send(WARM_UP)
    finally:
        await publisher.close()


async def open_subscribers(
    port: int,
    path: str,
    count: int,
    delivery: Delivery,
    publish_port: int | None = None,
    in_flight: int | None = None,
) -> tuple[list[Subscriber], float]:
    """Open *count* streams on *port*; return them and the seconds until all were live.

    A stream is live once body bytes arrive. Servers that send nothing before
    the first event (flask-sse on gunicorn: not even the headers) get a
    warm-up event every half second until every stream is live (POSTed to
    *publish_port*, by default *port*). *in_flight* bounds the stream requests
    not yet live (``None``: only the connects are bounded); a server whose streams
    send nothing before the first event cannot take it.
    """
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    opening = asyncio.Semaphore(in_flight or count)
    started = time.monotonic()

    async def one(index: int) -> Subscriber:
        async with opening:
            async with gate:
                _, subscriber = await loop.create_connection(
                    lambda: Subscriber(request, delivery, index), "127.0.0.1", port
                )
            if in_flight:
                remaining = max(0.0, started + LIVE_TIMEOUT - time.monotonic())
                await asyncio.wait_for(asyncio.shield(subscriber.live), remaining)
            return subscriber

    subscribers = await asyncio.gather(*(one(i) for i in range(count)))
    all_live = asyncio.gather(*(asyncio.shield(s.live) for s in subscribers))
    deadline = started + LIVE_TIMEOUT
    while not all_live.done():
        try:
            await asyncio.wait_for(asyncio.shield(all_live), WARM_UP_INTERVAL)
        except asyncio.TimeoutError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every stream was live after {LIVE_TIMEOUT} s") from None
            await asyncio.wait_for(warm_up(publish_port or port), PUBLISH_TIMEOUT)
    failed = sum(1 for s in subscribers if not s.live.result())
    if failed:
        raise RuntimeError(f"{failed} of {count} streams did not open")
    return list(subscribers), time.monotonic() - started


async def run_load(
    port: int,
    stream_path: str,
    subscribers: int,
    events: int,
    rate: float | None,
    payload: int,
    drain: float,
    publish_port: int | None = None,
    in_flight: int | None = None,
) -> dict[str, float | int]:
    """Hold *subscribers* streams on *port* (*in_flight* opening at once at most, see :func:`open_subscribers`),
    publish *events* to *publish_port* (by default *port*) at *rate* per second (or as fast as possible), measure."""
    delivery = Delivery(events, subscribers, [bytearray(events) for _ in range(subscribers)])
    streams, connect_seconds = await open_subscribers(port, stream_path, subscribers, delivery, publish_port, in_flight)
    publisher = Publisher(publish_port or port)
    await publisher.connect()
    padding = b"x" * max(0, payload - 24)
    delivery.first_publish = start = time.monotonic()
    client_cpu_before = time.process_time()
    for seq in range(events):
        if rate:
            delay = start + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.wait_for(publisher.publish(seq, padding), PUBLISH_TIMEOUT)
    published_in = time.monotonic() - start
    deadline = time.monotonic() + drain
    expected = events * subscribers
    while len(delivery.latencies) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    client_cpu = time.process_time() - client_cpu_before
    client_seconds = time.monotonic() - start
    await publisher.close()
    cut = sum(1 for stream in streams if stream.cut)
    for stream in streams:
        stream.close()
    lost, duplicated = delivery.tally()
    latencies = sorted(delivery.latencies) or [float("nan")]
    span = max(delivery.last_delivery - delivery.first_publish, 1e-9)

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000

    return {
        "subscribers": subscribers,
        "events": events,
        "offered_rate": rate or 0,
        "connect_seconds": round(connect_seconds, 3),
        "publish_seconds": round(published_in, 3),
        "deliveries": len(delivery.latencies),
        "expected_deliveries": expected,
        "lost": lost,
        "duplicated": duplicated,
        "streams_cut": cut,
        "deliveries_per_second": round(len(delivery.latencies) / span),
        "latency_p50_ms": round(percentile(0.50), 1),
        "latency_p90_ms": round(percentile(0.90), 1),
        "latency_p99_ms": round(percentile(0.99), 1),
        "latency_max_ms": round(latencies[-1] * 1000, 1),
        "client_cpu_percent": round(100 * client_cpu / client_seconds, 1),
    }


async def hold_idle(
    port: int, stream_path: str, subscribers: int, publish_port: int | None = None, in_flight: int | None = None
) -> tuple[list[Subscriber], float]:
    """Open *subscribers* streams on *port* and keep them; return them and the connect time."""
    delivery = Delivery(1, subscribers, [bytearray(1) for _ in range(subscribers)])
    return await open_subscribers(port, stream_path, subscribers, delivery, publish_port, in_flight)
