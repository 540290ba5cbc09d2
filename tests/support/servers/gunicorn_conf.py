"""gunicorn configuration for the shutdown tests: the documented hook, nothing else."""

from sse_wsgi.gunicorn import post_worker_init  # noqa: F401
