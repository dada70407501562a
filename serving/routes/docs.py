"""The API's documentation: /docs.json (BentoML's OpenAPI document with these routes merged in, serving/openapi.py)
and its Swagger page at /docs."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving import openapi

# Swagger UI from BentoML's own copy (/static_content), so nothing is fetched from the internet.
SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dfcompress API</title>
<link rel="icon" href="/static_content/favicon-light-32x32.png">
<link rel="stylesheet" href="/static_content/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static_content/swagger-ui-bundle.js"></script>
<script src="/ui/swagger.js"></script></body></html>
"""


async def docs_page(request: Request) -> Response:
    return Response(SWAGGER_PAGE, media_type="text/html")


async def docs_json(request: Request) -> Response:
    return JSONResponse(openapi.merged(request.app.state.bentoml_spec()))
