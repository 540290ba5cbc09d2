"""sse-starlette's documented pattern: one asyncio.Queue per subscriber, POST /publish puts to each."""

from __future__ import annotations

import asyncio

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

subscribers: set[asyncio.Queue[str]] = set()
counter = 0


async def events(request: Request) -> EventSourceResponse:
    queue: asyncio.Queue[str] = asyncio.Queue()
    subscribers.add(queue)

    async def stream():
        try:
            yield {"comment": "stream open"}
            while True:
                data = await queue.get()
                yield {"data": data}
        finally:
            subscribers.discard(queue)

    return EventSourceResponse(stream(), ping=15)


async def publish(request: Request) -> PlainTextResponse:
    global counter
    counter += 1
    data = (await request.body()).decode()
    for queue in subscribers:
        queue.put_nowait(data)
    return PlainTextResponse(str(counter))


app = Starlette(routes=[Route("/events", events), Route("/publish", publish, methods=["POST"])])
