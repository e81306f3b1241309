"""GraphiQL at `GET /graphql`, served with all its assets by this API: checked over HTTP, and in
a real headless Chromium that may reach nothing but 127.0.0.1."""

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
from playwright.async_api import Route, async_playwright, expect
from sqlalchemy import text

from core.settings import PROJECT_ROOT, Settings
from gql.app import create_app
from gql.schema.ids import to_global_id
from gql.transport.graphiql import NODE_MODULES
from tests.factories import Factory
from tests.live import npm_ci, serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = PROJECT_ROOT / "test-output" / "graphiql.png"
PRODUCTS_QUERY = "{ products(first: 3) { edges { node { name } } } }"


@pytest.fixture(scope="session", autouse=True)
def graphiql_assets() -> None:
    """The pinned GraphiQL packages (`make assets` installs them; pytest alone does too)."""
    if not (NODE_MODULES / "graphiql").is_dir():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed, so the GraphiQL assets cannot be installed")
        npm_ci(NODE_MODULES.parent)


async def test_graphiql_page_loads_every_script_and_stylesheet_from_this_server(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    references = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page.text)
    assets = [ref for ref in references if not ref.startswith("data:")]
    assert len(assets) == 4, references
    assert "//" not in " ".join(assets)  # no absolute URL, so no CDN
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200, asset
        expected = "text/css" if asset.endswith(".css") else "javascript"
        assert expected in response.headers["content-type"]
        assert len(response.content) > 10_000


async def test_only_the_graphiql_bundles_are_served_from_node_modules(
    client: httpx.AsyncClient,
) -> None:
    for name in ("package.json", "..%2Fpackage.json", "graphiql.min.js.map", "react"):
        response = await client.get(f"/graphiql-assets/{name}")
        assert response.status_code == 404, name


async def test_a_shared_link_opens_graphiql_in_a_browser_but_runs_for_api_clients(
    client: httpx.AsyncClient,
) -> None:
    link = f"/graphql?query={quote('{ __typename }')}"
    browser = await client.get(link, headers={"Accept": "text/html,application/xhtml+xml,*/*"})
    assert "graphiql.min.js" in browser.text
    api = await client.get(link, headers={"Accept": "application/json"})
    assert api.json() == {"data": {"__typename": "Query"}}


@pytest.fixture
async def live_url(database_url: str, settings: Settings) -> AsyncIterator[str]:
    async with serving(create_app(settings, database_url=database_url)) as url:
        yield url


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    return CHROMIUM


async def test_graphiql_runs_a_query_in_a_browser_without_internet(
    factory: Factory, live_url: str, chromium: Path
) -> None:
    names = ["Fjord Cabin", "Glacier Hike", "Night Train Berth"]
    for name in names:
        await factory.product(name=name)
    blocked: list[str] = []
    requested: list[str] = []

    async def loopback_only(route: Route) -> None:
        url = route.request.url
        requested.append(url)
        if urlsplit(url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            blocked.append(url)
            await route.abort()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 800})
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            await page.route("**/*", loopback_only)

            await page.goto(f"{live_url}/graphql?query={quote(PRODUCTS_QUERY)}")
            run = page.locator(".graphiql-execute-button")
            await expect(run).to_be_visible(timeout=30_000)
            await run.click()
            result = page.locator(".graphiql-response")
            for name in names:
                await expect(result).to_contain_text(name, timeout=30_000)
            # The docs come from introspection of this schema.
            await page.get_by_label("Show Documentation Explorer").click()
            await expect(page.locator(".graphiql-doc-explorer")).to_contain_text(
                "ProductConnection", timeout=30_000
            )
            await page.screenshot(path=SCREENSHOT)
        finally:
            await browser.close()

    assert not page_errors, page_errors
    assert not blocked, f"the page tried to reach beyond 127.0.0.1: {blocked}"
    assert any(url.endswith("/graphiql-assets/graphiql.min.js") for url in requested)


async def test_graphiql_runs_a_subscription_over_its_websocket(
    factory: Factory, live_url: str, chromium: Path
) -> None:
    product = await factory.product(name="Fjord Cabin", stock=5)
    product_id = to_global_id("Product", product.id)
    query = f'subscription {{ productStockChanged(ids: ["{product_id}"]) {{ name stock }} }}'
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 800})
            sockets: list[str] = []
            page.on("websocket", lambda socket: sockets.append(socket.url))
            await page.goto(f"{live_url}/graphql?query={quote(query)}")
            run = page.locator(".graphiql-execute-button")
            await expect(run).to_be_visible(timeout=30_000)
            await run.click()
            result = page.locator(".graphiql-response")
            # Written until the subscription, which the click opened, sends the new stock.
            for stock in range(4, 0, -1):
                async with factory.session_factory() as session, session.begin():
                    await session.execute(
                        text("UPDATE products SET stock = :stock WHERE id = :id"),
                        {"stock": stock, "id": product.id},
                    )
                try:
                    await expect(result).to_contain_text(f'"stock": {stock}', timeout=2_000)
                    break
                except AssertionError:
                    continue
            else:
                pytest.fail("GraphiQL showed no stock change")
        finally:
            await browser.close()
    assert sockets == [live_url.replace("http://", "ws://") + "/graphql"]
