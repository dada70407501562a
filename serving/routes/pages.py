"""The web page: / and its files under /ui/ (serving/static/)."""
from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent.parent / "static"


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


def static_files() -> Mount:
    return Mount("/ui", StaticFiles(directory=STATIC), name="ui")
