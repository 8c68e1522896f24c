"""``/alerts``: the alerts rules and detectors raised, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Security

from api.auth import Principal, authorize
from api.deps import state
from api.routes.incidents import Cursor, DocPage, _us

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get("", response_model=DocPage, summary="List alerts")
async def list_alerts(
    request: Request,
    principal: Annotated[Principal, Security(authorize, scopes=["alerts:read"])],
    rule: Annotated[str | None, Query(max_length=64, description="a rule id")] = None,
    since: Annotated[datetime | None, Query(description="first event at or after")] = None,
    until: Annotated[datetime | None, Query(description="first event before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Alerts (ECS documents; ``ics.incident_id`` once correlated), newest first. Engineers see
    the alerts of their sites' incidents."""
    docs, following = (
        state(request)
        .tables()
        .incidents.list_alerts(
            rule_id=rule,
            since_us=_us(since, "since"),
            until_us=_us(until, "until"),
            sites=principal.sites,
            limit=limit,
            cursor=cursor,
        )
    )
    return {"items": docs, "next_cursor": following}
