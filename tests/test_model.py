"""The model-based test of the Publisher on the in-memory broker (the machine: tests/support/model.py)."""

from __future__ import annotations

from hypothesis import settings

from sse_wsgi import Publisher
from tests.support.model import EXAMPLES, HISTORY, QUEUE, PublisherModel


class MemoryModel(PublisherModel):
    def make_publisher(self) -> Publisher:
        return Publisher(history=HISTORY, queue_size=QUEUE)


TestMemoryModel = MemoryModel.TestCase
TestMemoryModel.settings = settings(max_examples=EXAMPLES or 200, stateful_step_count=30, deadline=None, database=None)
