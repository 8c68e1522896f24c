"""``/health``: whether the service and its store answer (no authentication)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import state
from soc import __version__
from soc.errors import StoreError

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """The service's state."""

    status: Literal["ok", "degraded"]
    store: Literal["ok", "unavailable"]
    version: str


@router.get("/health", response_model=Health, summary="Health")
async def health(request: Request) -> JSONResponse:
    """200 when the store answers, 503 when it does not."""
    try:
        state(request).tables().store.max_event_seq()
        ok = True
    except StoreError:
        ok = False
    body = Health(
        status="ok" if ok else "degraded", store="ok" if ok else "unavailable", version=__version__
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
