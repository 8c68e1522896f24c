"""``/audit``: who did what to which object, when (auditors and admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Security
from pydantic import BaseModel

from api.auth import Principal, authorize
from api.deps import state
from api.routes.incidents import Cursor, _us
from soc.store.sqlite_incidents import AuditQuery

router = APIRouter(prefix="/audit", tags=["audit"])


class AuditEntry(BaseModel):
    """One access or change."""

    seq: int
    ts: int  # µs since the epoch
    actor: str
    action: str
    object_type: str
    object_id: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    """One page of the audit trail, newest first."""

    items: list[AuditEntry]
    next_cursor: str | None


@router.get("", response_model=AuditPage, summary="The audit trail")
async def list_audit(
    request: Request,
    principal: Annotated[Principal, Security(authorize, scopes=["audit:read"])],
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=32)] = None,
    object_type: Annotated[str | None, Query(max_length=32)] = None,
    object_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """The audit trail, filtered, newest first."""
    rows, following = (
        state(request)
        .tables()
        .incidents.list_audit(
            AuditQuery(
                actor=actor,
                action=action,
                object_type=object_type,
                object_id=object_id,
                since_us=_us(since, "since"),
                limit=limit,
                cursor=cursor,
            )
        )
    )
    return {"items": rows, "next_cursor": following}
