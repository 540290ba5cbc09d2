"""Falcon wrapped in SSEMiddleware; a resource publishes through req.env."""

from __future__ import annotations

import falcon

from sse_wsgi import SSEMiddleware


class Publish:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        publisher = req.env["sse.publisher"]
        channel = req.get_param("channel", required=True)
        resp.text = publisher.publish(req.bounded_stream.read().decode("utf-8"), channel)
        resp.content_type = falcon.MEDIA_TEXT


falcon_app = falcon.App()
falcon_app.add_route("/publish", Publish())

app = SSEMiddleware(falcon_app, heartbeat=1)
