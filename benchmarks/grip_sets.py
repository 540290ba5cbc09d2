"""What a publish costs when many streams held by a GRIP proxy share one channel (``[user:i, news]``).

python -m benchmarks.grip_sets                  # 12,000 held sets, 200 publishes to "news"
python -m benchmarks.grip_sets --sets 2000 --publishes 50

Each of ``--sets`` users holds the set ``[user:i, news]`` through the proxy (``Publisher.hold``,
what the middleware does for a held request); then ``news`` gets ``--publishes`` publishes. For
the in-memory broker and for a real ``redis-server`` (started on a free loopback port), it reports
how many sets were registered, the proxy items one publish makes, the median wall time of a
publish (items built, none sent: the GRIP URL names port 9, where nothing listens), and on Redis
the Redis CPU the publish script takes per call (``INFO commandstats``). A channel is part of at
most ``sse_wsgi.broker.MAX_HELD_SETS`` sets: the sets beyond it are served by the app itself.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from sse_wsgi import Publisher
from sse_wsgi.broker import MAX_HELD_SETS, Message
from tests.support.redis_server import RedisServer

GRIP = "http://127.0.0.1:9?key=benchmark"


def measure(publisher: Publisher, sets: int, publishes: int) -> dict[str, Any]:
    """Hold *sets* sets on *publisher*, then time *publishes* publishes to ``news``."""
    held = sum(publisher.hold([f"user:{n}", "news"], None) is not None for n in range(sets))
    times, items = [], 0
    for _ in range(publishes):
        started = time.perf_counter()
        _, made = publisher.broker.publish_for_proxies(Message(("news",), "x"))
        times.append(time.perf_counter() - started)
        items = len(made)
    median_ms = round(statistics.median(times) * 1e3, 3)
    return {"sets_held": held, "items_per_publish": items, "publish_ms_median": median_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grip_sets", description=__doc__)
    parser.add_argument("--sets", type=int, default=12_000)
    parser.add_argument("--publishes", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"{args.sets} held sets [user:i, news], {args.publishes} publishes to news, MAX_HELD_SETS={MAX_HELD_SETS}")
    with Publisher(grip=GRIP) as publisher:
        print("memory", measure(publisher, args.sets, args.publishes))
    binary = shutil.which("redis-server", path="/usr/bin") or shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no redis-server: install Debian's redis-server")
    server = RedisServer(binary, Path(tempfile.mkdtemp(prefix="grip-sets-"))).start()
    try:
        admin = redis.Redis.from_url(server.url)
        with Publisher.from_url(server.url, grip=GRIP) as publisher:
            publisher.hold(["warm", "up"], None)
            admin.config_resetstat()
            figures = measure(publisher, args.sets, args.publishes)
        scripts = admin.info("commandstats").get("cmdstat_evalsha", {})
        figures["publish_script_us_per_call"] = scripts.get("usec_per_call")
        admin.close()
        print("redis", figures)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
