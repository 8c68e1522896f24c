"""``/incidents``: list, read, change (status, owner), comment, timeline, alerts and events.

Every access is written to the audit trail (who listed or read which incident, who changed
what). Engineers see only the incidents of their sites; another site's incident is a 404, as if
it did not exist.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request, Response, Security
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.auth import Principal, authorize
from api.deps import now_us, state
from api.problems import Problem
from soc.incidents.service import change_incident
from soc.store.sqlite_incidents import IncidentQuery

router = APIRouter(prefix="/incidents", tags=["incidents"])

Status = Literal["new", "acknowledged", "investigating", "resolved", "false_positive"]
Level = Literal["low", "medium", "high", "critical"]
IncidentId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f-]+$")]
Cursor = Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]*$")]


class RuleCount(BaseModel):
    """A rule that raised alerts in the incident, how many, when."""

    id: str
    name: str
    level: str
    count: int
    first: str
    last: str


class Named(BaseModel):
    """An ATT&CK for ICS technique or tactic."""

    id: str
    name: str


class Incident(BaseModel):
    """An incident: correlated alerts with a status, an owner and a severity."""

    id: str
    title: str
    status: Status
    owner: str | None
    site: str
    severity: int = Field(ge=0, le=100)
    level: Level
    created: str
    updated: str
    first_seen: str
    last_seen: str
    attackers: list[str]
    assets: list[str]
    asset_criticality: str
    alert_count: int
    event_count: int
    rules: list[RuleCount]
    techniques: list[Named]
    tactics: list[Named]


class IncidentPage(BaseModel):
    """One page of incidents; ``next_cursor`` fetches the next (null at the end)."""

    items: list[Incident]
    next_cursor: str | None


class IncidentChange(BaseModel):
    """A change: a new status, an owner (or ``unassign``), and/or a comment."""

    model_config = ConfigDict(extra="forbid")

    status: Status | None = None
    owner: str | None = Field(default=None, min_length=1, max_length=64)
    unassign: bool = False
    comment: str | None = Field(default=None, min_length=1, max_length=10_000)


class CommentIn(BaseModel):
    """A comment on an incident."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=10_000)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a comment cannot be blank")
        return value


class TimelineEntry(BaseModel):
    """One note of an incident's timeline."""

    seq: int
    ts: int  # µs since the epoch
    actor: str
    kind: str  # alert, status, owner, comment
    detail: dict[str, Any]


class DocPage(BaseModel):
    """One page of ECS documents (alerts or events)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def _us(moment: datetime | None, field: str) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise Problem(
            422,
            f"{field} needs a time zone",
            errors=[{"field": f"query.{field}", "message": "add Z or an offset"}],
        )
    return round(moment.timestamp() * 1e6)


def _visible(request: Request, principal: Principal, incident_id: str) -> dict[str, Any]:
    doc = state(request).tables().incidents.get_incident(incident_id)
    if doc is None or not principal.may_see(doc.get("site")):
        raise Problem(404, f"no incident {incident_id}")
    return doc


@router.get("", response_model=IncidentPage, summary="List incidents")
async def list_incidents(
    request: Request,
    principal: Annotated[Principal, Security(authorize, scopes=["incidents:read"])],
    status: Annotated[list[Status] | None, Query(max_length=5)] = None,
    level: Annotated[Level | None, Query(description="this level or above")] = None,
    site: Annotated[str | None, Query(max_length=64)] = None,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    asset: Annotated[str | None, Query(max_length=64, description="an address involved")] = None,
    since: Annotated[datetime | None, Query(description="latest alert at or after")] = None,
    until: Annotated[datetime | None, Query(description="latest alert before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> Response:
    """Incidents, latest activity first, filtered; engineers see their sites only."""
    if asset is not None:
        try:
            ipaddress.ip_address(asset)
        except ValueError:
            raise Problem(
                422,
                "asset is not an IP address",
                errors=[{"field": "query.asset", "message": "an IPv4 or IPv6 address"}],
            ) from None
    sites: tuple[str, ...] | None = principal.sites
    if site is not None:
        sites = (site,) if principal.may_see(site) else ()
    query = IncidentQuery(
        statuses=tuple(status or ()),
        min_level=level,
        sites=sites,
        owner=owner,
        asset=asset,
        since_us=_us(since, "since"),
        until_us=_us(until, "until"),
        limit=min(limit, state(request).settings.api.page_max),
        cursor=cursor,
    )
    tables = state(request).tables()
    docs, following = tables.incidents.list_incident_rows(query)
    filters = {
        k: v
        for k, v in {"status": status, "level": level, "site": site, "asset": asset}.items()
        if v
    }
    tables.incidents.audit(
        now_us(), principal.name, "list", "incident", None, {"filters": filters, "n": len(docs)}
    )
    return page_response(docs, following)


def page_response(items: list[str], following: str | None) -> Response:
    """A page of stored documents as they are (written by us, already in the documented
    shape): no parse and no re-validation of each one."""
    body = b'{"items":[' + ",".join(items).encode() + b'],"next_cursor":'
    return Response(body + orjson.dumps(following) + b"}", media_type="application/json")


@router.get("/{incident_id}", response_model=Incident, summary="Read an incident")
async def get_incident(
    request: Request,
    incident_id: IncidentId,
    principal: Annotated[Principal, Security(authorize, scopes=["incidents:read"])],
) -> dict[str, Any]:
    """One incident."""
    doc = _visible(request, principal, incident_id)
    state(request).tables().incidents.audit(
        now_us(), principal.name, "read", "incident", incident_id
    )
    return doc


@router.patch("/{incident_id}", response_model=Incident, summary="Change an incident")
async def update_incident(
    request: Request,
    incident_id: IncidentId,
    change: IncidentChange,
    principal: Annotated[Principal, Security(authorize, scopes=["incidents:write"])],
) -> dict[str, Any]:
    """Change the status (along the workflow), the owner, and/or add a comment. A status the
    workflow does not allow from the current one is a 409."""
    _visible(request, principal, incident_id)
    return change_incident(
        state(request).tables().incidents,
        incident_id,
        principal.name,
        status=change.status,
        owner=change.owner,
        unassign=change.unassign,
        comment=change.comment,
    )


@router.post(
    "/{incident_id}/comments",
    response_model=Incident,
    status_code=201,
    summary="Comment on an incident",
)
async def comment_incident(
    request: Request,
    incident_id: IncidentId,
    comment: CommentIn,
    principal: Annotated[Principal, Security(authorize, scopes=["incidents:write"])],
) -> dict[str, Any]:
    """Add a comment to the incident's timeline."""
    _visible(request, principal, incident_id)
    return change_incident(
        state(request).tables().incidents, incident_id, principal.name, comment=comment.text
    )


@router.get(
    "/{incident_id}/timeline",
    response_model=list[TimelineEntry],
    summary="An incident's timeline",
)
async def timeline(
    request: Request,
    incident_id: IncidentId,
    principal: Annotated[Principal, Security(authorize, scopes=["incidents:read"])],
) -> list[dict[str, Any]]:
    """Alerts joining, status and owner changes, comments: who, when, what."""
    _visible(request, principal, incident_id)
    tables = state(request).tables()
    tables.incidents.audit(now_us(), principal.name, "read_timeline", "incident", incident_id)
    return tables.incidents.timeline(incident_id)


@router.get("/{incident_id}/alerts", response_model=DocPage, summary="An incident's alerts")
async def incident_alerts(
    request: Request,
    incident_id: IncidentId,
    principal: Annotated[Principal, Security(authorize, scopes=["incidents:read", "alerts:read"])],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """The alerts correlated into the incident, in time order (ECS documents)."""
    _visible(request, principal, incident_id)
    tables = state(request).tables()
    docs, following = tables.incidents.incident_alerts(incident_id, limit, cursor)
    tables.incidents.audit(now_us(), principal.name, "read_alerts", "incident", incident_id)
    return {"items": docs, "next_cursor": following}


@router.get("/{incident_id}/events", response_model=DocPage, summary="An incident's events")
async def incident_events(
    request: Request,
    incident_id: IncidentId,
    principal: Annotated[Principal, Security(authorize, scopes=["incidents:read", "events:read"])],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """The events of the incident's alerts, in time order (ECS documents), each once."""
    _visible(request, principal, incident_id)
    tables = state(request).tables()
    docs, following = tables.incidents.incident_events(incident_id, limit, cursor)
    tables.incidents.audit(now_us(), principal.name, "read_events", "incident", incident_id)
    return {"items": docs, "next_cursor": following}
