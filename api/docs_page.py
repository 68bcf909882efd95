"""The interactive API docs (`/docs`, Swagger UI; `/redoc`, ReDoc), served from the
installation, with no request to a CDN.

    app = FastAPI(..., docs_url=None, redoc_url=None, openapi_url=None)
    install_docs_pages(app)

Design (why it looks like this):

* **Assets come from a package, not the network.** FastAPI's default pages load
  Swagger UI and ReDoc from jsDelivr, so on a host without internet access (the
  usual self-hosted deployment) `/docs` was a blank page. `fastapi-offline` ships
  the same bundles (Swagger UI 5, which renders OpenAPI 3.1 as FastAPI writes it;
  ReDoc 2) as package data; only its files are used here, mounted under
  `ASSETS_URL` with Starlette's `StaticFiles`.
* **Outside the API's contract**: the pages and assets are `include_in_schema=False`
  routes and a mount, so `/openapi.json` is the same with or without them.
* **`/openapi.json` is a route of this module**, not FastAPI's own, so the app's
  access check (`api.deps.authorize`, rule `api.auth.DOCS`) applies to it as to the
  pages: a key, unless `AGENTRUN_API_PUBLIC_DOCS=true`. The bundled assets (Swagger
  UI's and ReDoc's own files, no data) are served to anyone.
* Every URL on the pages is relative to the app's `root_path`, so the pages work
  behind a proxy that serves the API under a prefix.

This module must not: reference any URL outside the app (fonts, favicons and
scripts included), or add operations to the OpenAPI document.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, JSONResponse

__all__ = ["ASSETS_URL", "DOCS_URL", "OPENAPI_URL", "REDOC_URL", "assets_dir", "install_docs_pages"]

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OPENAPI_URL = "/openapi.json"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
"""Where the bundled Swagger UI / ReDoc files are served."""


def assets_dir() -> Path:
    """The directory of the installed Swagger UI and ReDoc bundles."""
    return Path(str(files("fastapi_offline") / "static"))


def install_docs_pages(app: FastAPI) -> None:
    """Add `/docs`, its OAuth2 redirect, `/redoc` and their assets to `app`."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
