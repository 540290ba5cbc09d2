"""The basic app (tests.support.servers.apps.basic) with an ``X-Worker-Pid`` header on every answer.

So that a test on several gunicorn workers can tell which worker served a
stream or a publish.
"""

from __future__ import annotations

import os

from tests.support.servers.apps.basic import app as basic_app


def app(environ, start_response):
    def start_with_pid(status, headers, exc_info=None):
        return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

    return basic_app(environ, start_with_pid)
