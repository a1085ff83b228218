"""The status page the admin port serves at ``GET /`` to a web browser.

The page is static: the same three files (``ui/status.html``, ``.js``, ``.css``, shipped with the
package) for every sidecar, with no data of its own.  Its script reads everything from the admin
API (``/api/v1/...``) with ``fetch``, every two seconds (longer when the reads are slow: status.js),
so it shows what ``regproxy ctl`` shows and asks for nothing else.  That is why the files are served
without the ``auth_token`` the API asks for: the data is still behind it, and the page asks for the
token when the API answers 401 (it keeps it in the tab's ``sessionStorage`` and sends it as
``Authorization: Bearer``).

``GET /`` stays the JSON index for programs: the page is served when the caller's ``Accept`` names
``text/html`` before ``application/json`` (what a browser's navigation sends), the index otherwise.

Nothing is loaded from anywhere else (no CDN); the Content-Security-Policy says so to the browser,
so a service or rule name holding markup could not load or run anything even if the script wrote
it as HTML (it writes text only).
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from aiohttp import web

__all__ = ["ASSET_PATHS", "PAGE_HEADERS", "asset", "page", "wants_html"]

_UI = resources.files("regproxy.api") / "ui"

# path -> (file under ui/, Content-Type)
_ASSETS: Final = {
    "/ui/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/ui/status.css": ("status.css", "text/css; charset=utf-8"),
}
ASSET_PATHS: Final = frozenset(_ASSETS)

# Only this origin's script, style and API; no frames (clickjacking the drain button), no referrer.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return (_UI / name).read_bytes()


# Read once: a few tens of KiB, and a missing file fails at import (the wheel's package data), not
# at the first browser.
_PAGE: Final = _read("status.html")
_BODIES: Final = {path: (_read(name), ctype) for path, (name, ctype) in _ASSETS.items()}


def wants_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for HTML before JSON (a browser navigating to the page).

    Browsers send ``text/html,application/xhtml+xml,...,*/*;q=0.8``; curl sends ``*/*`` and
    ``regproxy ctl`` ``application/json``: both get the JSON index.  Quality values are honoured
    where they differ; on a tie, the one listed first wins.
    """
    if not accept:
        return False
    best: dict[str, tuple[float, int]] = {}
    for order, part in enumerate(accept.split(",")):
        kind, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = kind.lower()
        if kind in ("text/html", "application/json") and kind not in best:
            best[kind] = (q, -order)
    html = best.get("text/html")
    if html is None or html[0] <= 0:
        return False
    json_ = best.get("application/json")
    return json_ is None or html > json_


def page() -> web.Response:
    return web.Response(body=_PAGE, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


async def asset(request: web.Request) -> web.Response:
    body, ctype = _BODIES[request.path]
    return web.Response(body=body, headers={**PAGE_HEADERS, "Content-Type": ctype})
