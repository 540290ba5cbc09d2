"""Running ``python -m sse_wsgi`` (the demo) in a subprocess for the tests."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["run_demo"]

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def run_demo(args: list[str]) -> Iterator[str]:
    """Run ``python -m sse_wsgi`` on a free port; yield its base URL; stop it with Ctrl-C (SIGINT)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sse_wsgi", "--host", "127.0.0.1", "--port", "0", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], name="test-cli-out", daemon=True).start()
    try:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", lines.get(timeout=15))
        assert match, "the demo did not say where to point the browser"
        yield match.group(0).rstrip("/")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        proc.stdout.close()
