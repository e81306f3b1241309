"""GraphiQL served entirely by this API: the page, and its JavaScript and CSS from the npm
packages pinned in gql/static/package.json (installed by `make assets`), never from a CDN."""

import logging
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

logger = logging.getLogger(__name__)

ASSETS_PATH = "/graphiql-assets"
NODE_MODULES = Path(__file__).resolve().parent.parent / "static" / "node_modules"
TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "graphiql.html"

# Only these files are served: the UMD bundles that run without a bundler (React 18 still
# ships UMD builds, and graphiql 3 its standalone `graphiql.min.js`).
ASSETS = {
    "react.production.min.js": NODE_MODULES / "react" / "umd" / "react.production.min.js",
    "react-dom.production.min.js": NODE_MODULES
    / "react-dom"
    / "umd"
    / "react-dom.production.min.js",
    "graphiql.min.js": NODE_MODULES / "graphiql" / "graphiql.min.js",
    "graphiql.min.css": NODE_MODULES / "graphiql" / "graphiql.min.css",
}


@cache
def graphiql_html() -> str:
    return TEMPLATE.read_text(encoding="utf-8").replace("{{assets}}", ASSETS_PATH)


def missing_assets() -> list[str]:
    return [name for name, path in ASSETS.items() if not path.is_file()]


def assets_router() -> APIRouter:
    """Routes that serve the GraphiQL assets."""
    missing = missing_assets()
    if missing:
        logger.warning(
            "GraphiQL assets missing (%s): run `make assets` to install them",
            ", ".join(missing),
        )
    router = APIRouter()

    @router.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def graphiql_asset(name: str) -> FileResponse:
        path = ASSETS.get(name)
        if path is None or not path.is_file():
            raise HTTPException(status_code=404)
        # The files change only with the pinned versions; a day of caching is plenty.
        return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})

    return router
