"""The admin web page's static assets, shipped inside the package and served from memory."""

from __future__ import annotations

import functools
from importlib import resources

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}  # fmt: skip
ASSETS = ("index.html", "app.js", "usage.js", "budget.js", "compare.js", "app.css")
# The page talks only to its own origin and runs only its own script: no inline code, no framing.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def asset(name: str) -> tuple[bytes, dict[str, str]] | None:
    """The bytes and response headers of one asset ("" is the page itself), or None if unknown."""
    name = name or "index.html"
    # Checked before the cache: the name comes from the request path, and caching every unknown
    # name a client sends would grow without bound.
    return _load(name) if name in ASSETS else None


@functools.cache
def _load(name: str) -> tuple[bytes, dict[str, str]]:
    body = resources.files("roundhouse_gateway.admin").joinpath("ui", name).read_bytes()
    return body, {"Content-Type": TYPES[name[name.rindex(".") :]], **HEADERS}
