"""Operations: liveness, readiness, the plan, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .errors import NotFound, NotReady
from .runtime import Runtime

router = APIRouter()  # behind the API key when CODESERVE_PUBLIC_METRICS=false
probes = APIRouter()  # always open: orchestrators' probes carry no key


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@probes.get("/health")
async def health(request: Request) -> JSONResponse:
    """The process can serve, now or once loaded: 503 once the engine died or failed to load (restart me)."""
    problem = _runtime(request).check_engine()
    if problem is not None:
        return JSONResponse({"status": "failed", "detail": problem}, status_code=503)
    return JSONResponse({"status": "ok", "detail": ""})


@probes.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once serving; else 503 with the start's phase (downloading, quantizing, loading; failed), its progress where
    measured (0..1, else null) and what it is doing in `detail`."""
    runtime = _runtime(request)
    runtime.check_engine()
    body = {"status": runtime.status, "detail": runtime.detail, "phase": runtime.phase,
            "progress": None if runtime.progress is None else round(runtime.progress, 4)}
    return JSONResponse(body, status_code=200 if runtime.ready else 503)


@router.get("/v1/plan")
async def plan(request: Request) -> dict[str, Any]:
    """The plan: as planned while the engine loads; once it runs, the option that started (after any
    out-of-memory fallback, listed under `failed_to_start`) and the engine's own arguments and context."""
    runtime = _runtime(request)
    if runtime.fleet is not None and len(runtime.fleet.served) > 1:  # several roles: the fleet's shape
        engines = [core.engine.describe() for core in runtime.cores]
        return {**runtime.fleet.to_dict(), "status": runtime.status, "engines": engines}
    if runtime.plan is None:
        raise NotReady("no plan yet")
    return {**runtime.plan.to_dict(), "status": runtime.status, "engine": runtime.engine}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Prometheus text"}})
async def metrics(request: Request) -> Response:
    runtime = _runtime(request)
    if runtime.metrics is None:
        raise NotFound("metrics are disabled")
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
