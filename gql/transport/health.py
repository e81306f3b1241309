"""Operator endpoints: liveness (the process answers), readiness (its database and Redis
answer), and Prometheus metrics."""

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gql.transport.metrics import metrics_endpoint

logger = logging.getLogger(__name__)

router = APIRouter()
router.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)


@router.get("/healthz", include_in_schema=False)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    timeout = state.settings.readiness_timeout
    checks: dict[str, str] = {}
    # The full error texts, for the log only: they can name hosts, users and databases.
    details: dict[str, str] = {}
    try:
        async with asyncio.timeout(timeout), state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = details["database"] = "ok"
    except Exception as error:
        checks["database"], details["database"] = _reason(error), _detail(error)
    if state.redis is not None:
        try:
            async with asyncio.timeout(timeout):
                await state.redis.ping()
            checks["redis"] = details["redis"] = "ok"
        except Exception as error:
            checks["redis"], details["redis"] = _reason(error), _detail(error)
    ready = all(value == "ok" for value in checks.values())
    if not ready:
        logger.warning("not ready: %s", details, extra={"checks": details})
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


def _reason(error: BaseException) -> str:
    """What the public answer says: the kind of failure, not its text."""
    return f"unavailable ({type(error).__name__})"


def _detail(error: BaseException) -> str:
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return f"unavailable: {type(error).__name__}" + (f": {text}" if text else "")
