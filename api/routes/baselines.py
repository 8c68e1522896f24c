"""``/baselines``: a site's learnt communication baseline (learning mode), and accepting a
protect-mode alert into it (a new revision, audited)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Security
from pydantic import BaseModel, Field

from api.auth import Principal, authorize
from api.deps import now_us, state
from api.problems import Problem
from soc.store.sqlite_baselines import BaselineTables, NotAcceptable

router = APIRouter(prefix="/baselines", tags=["baselines"])
Site = Annotated[str, Path(max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]


@router.get("/{site}", summary="Read a site's baseline")
async def get_baseline(
    request: Request,
    site: Site,
    principal: Annotated[Principal, Security(authorize, scopes=["baselines:read"])],
    revision: Annotated[int | None, Query(ge=1, description="default: the latest")] = None,
) -> dict[str, Any]:
    """The baseline document (who talks to whom, with what; see ``soc baseline show``)."""
    if not principal.may_see(site):
        raise Problem(404, f"no baseline for {site}")
    found = BaselineTables(state(request).tables().store).get(site, revision)
    if found is None:
        raise Problem(
            404, f"no baseline for {site}" + (f" revision {revision}" if revision else "")
        )
    return found.doc()


class Acceptance(BaseModel):
    """The protect-mode alert whose finding is normal."""

    alert_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


@router.post("/{site}/accept", status_code=201, summary="Accept an alert into the baseline")
async def accept_alert(
    request: Request,
    site: Site,
    body: Acceptance,
    principal: Annotated[Principal, Security(authorize, scopes=["baselines:write"])],
) -> dict[str, Any]:
    """What a protect-mode alert found becomes part of the site's baseline: a new revision,
    written to the audit trail under the caller's name."""
    if not principal.may_see(site):
        raise Problem(404, f"no baseline for {site}")
    tables = BaselineTables(state(request).tables().store)
    try:
        _, revision = tables.accept_alert(body.alert_id, principal.name, now_us(), site)
    except NotAcceptable as exc:
        if exc.missing:
            raise Problem(404, exc.message) from None
        raise Problem(
            422,
            "not a protect-mode alert of this site's baseline",
            errors=[{"field": "body.alert_id", "message": f"an alert of baseline {site}"}],
        ) from None
    return {"site": site, "revision": revision, "alert_id": body.alert_id}
