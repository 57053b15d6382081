"""Swagger UI at ``/docs`` for the OpenAPI document, served from the ``swagger-ui-py`` wheel.

The wheel bundles Swagger UI 5 (which renders OpenAPI 3.1), so no asset comes from a
CDN. Only the page is ours: it points Swagger UI at the document and turns off the
online validator badge, which would call a public host.
"""

from __future__ import annotations

import html
import json

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui.utils import SWAGGER_UI_PY_ROOT

SWAGGER_UI_ASSETS = SWAGGER_UI_PY_ROOT / "static"
ASSETS_ROUTE = "swagger-ui-assets"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{css}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{bundle}"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: {openapi_url},
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
}});
</script>
</body>
</html>
"""


def _script_string(value: str) -> str:
    """A JSON string literal that cannot close the surrounding <script> element."""
    return json.dumps(value).replace("<", "\\u003c")


def docs_routes(
    openapi_url: str, *, path: str = "/docs", title: str = "Weather tweets API"
) -> list[BaseRoute]:
    """``GET {path}`` (the page) and ``{path}/assets/*`` (Swagger UI's bundled files).

    ``openapi_url`` is used as given, e.g. ``"/openapi.json"``. Asset URLs are built with
    ``url_for``, so they include whatever prefix the app is mounted under.
    """

    async def page(request: Request) -> Response:
        def asset(name: str) -> str:
            return str(request.url_for(ASSETS_ROUTE, path=name).path)

        body = _PAGE.format(
            title=html.escape(title),
            css=html.escape(asset("swagger-ui.css")),
            bundle=html.escape(asset("swagger-ui-bundle.js")),
            openapi_url=_script_string(openapi_url),
        )
        return HTMLResponse(body)

    return [
        Route(path, page, methods=["GET"]),
        Mount(f"{path}/assets", StaticFiles(directory=SWAGGER_UI_ASSETS), name=ASSETS_ROUTE),
    ]
