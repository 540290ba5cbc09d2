"""``python -m sse_wsgi`` run for real in a subprocess: it serves the page and the chat."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.chat import chat_once
from tests.support.demo import run_demo


@pytest.mark.integration
def test_python_m_sse_wsgi_serves_page_and_chat() -> None:
    with run_demo([]) as base:
        page = httpx.get(base + "/", timeout=5)
        assert page.status_code == 200 and "new EventSource(" in page.text
        event, sent_id = chat_once(base, {"name": "ann", "text": "héllo\nworld"})
        assert httpx.post(base + "/send", content=b"not json", timeout=5).status_code == 400
    assert (event.type, event.last_event_id) == ("chat", sent_id)
    assert json.loads(event.data) == {"name": "ann", "text": "héllo\nworld"}
