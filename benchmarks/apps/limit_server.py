"""The limit: a minimal asyncio server that encodes each event once and writes the bytes to every socket.

Run: python -m benchmarks.apps.limit_server PORT
"""

from __future__ import annotations

import asyncio
import sys

HEADERS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\n\r\n: stream open\n\n"
)
subscribers: set[asyncio.StreamWriter] = set()
counter = 0


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global counter
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /events"):
            writer.write(HEADERS)
            subscribers.add(writer)
            try:
                await reader.read()  # until the client goes away
            finally:
                subscribers.discard(writer)
            return
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        counter += 1
        chunk = b"id: %d\ndata: %s\n\n" % (counter, body)
        for subscriber in subscribers:
            subscriber.write(chunk)
        answer = str(counter).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
