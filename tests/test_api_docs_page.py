"""The interactive docs pages work offline: everything they load comes from the API.

What they guard (issue 10): `/docs` loaded Swagger UI from a CDN, so on a host
without internet access it was a blank page.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from tests.api_fixtures import admin_headers, api_settings, serve_api

REFERENCE = re.compile(r"""(?:src|href|spec-url)="([^"]+)"|\burl: '([^']+)'""")
"""The URLs a docs page loads: script and style sources, links, the OpenAPI document."""

CONTENT_TYPES = {
    ".js": "javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


@pytest.fixture(scope="module")
async def http(
    client: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    settings = api_settings(tmp_path_factory.mktemp("docs-state"), "tq-docs-page")
    async with (
        serve_api(settings, client) as url,
        httpx.AsyncClient(base_url=url, headers=admin_headers(settings)) as http,
    ):
        yield http


def references(page: str) -> list[str]:
    return [a or b for a, b in REFERENCE.findall(page)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_a_docs_page_loads_only_urls_the_api_serves_and_each_answers(
    http: httpx.AsyncClient, page: str
) -> None:
    response = await http.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = references(response.text)
    outside = [u for u in urls if not u.startswith("/") or u.startswith("//")]
    assert not outside, f"{page} loads from outside the API: {outside}"
    assert "fonts.googleapis" not in response.text
    loaded = {Path(u).suffix: u for u in urls}
    # The page's script, its style (ReDoc's is in its script) and the document.
    assert ".js" in loaded and ".json" in loaded and ".png" in loaded, urls
    if page == "/docs":
        assert ".css" in loaded, urls
    for url in urls:
        asset = await http.get(url)
        assert asset.status_code == 200, url
        expected = CONTENT_TYPES[Path(url).suffix]
        assert expected in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > 100, url


async def test_swagger_ui_is_a_version_that_renders_openapi_3_1(http: httpx.AsyncClient) -> None:
    # FastAPI writes OpenAPI 3.1, which Swagger UI renders from version 5 on only.
    document = (await http.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    page = (await http.get("/docs")).text
    script = next(u for u in references(page) if u.endswith("swagger-ui-bundle.js"))
    bundle = (await http.get(script)).text
    versions = {int(v) for v in re.findall(r'version:"(\d+)\.\d+\.\d+"', bundle)}
    assert versions and max(versions) >= 5, versions


async def test_the_docs_pages_and_assets_are_not_operations_of_the_api(
    http: httpx.AsyncClient,
) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))], sorted(paths)
    oauth = await http.get("/docs/oauth2-redirect")
    assert oauth.status_code == 200
    assert "http" not in re.sub(r"window\.location\S*", "", "".join(references(oauth.text)))
