"""A one-file Django project wrapped in SSEMiddleware; a view publishes through request.META."""

from __future__ import annotations

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

settings.configure(
    DEBUG=False,
    SECRET_KEY="sse-wsgi-test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402  (after settings)

from sse_wsgi import SSEMiddleware  # noqa: E402


@csrf_exempt
@require_POST
def publish(request: HttpRequest) -> HttpResponse:
    publisher = request.META["sse.publisher"]
    return HttpResponse(publisher.publish(request.body.decode("utf-8"), request.GET["channel"]))


urlpatterns = [path("publish", publish)]

app = SSEMiddleware(get_wsgi_application(), heartbeat=1)
