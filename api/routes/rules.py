"""``/rules``: the detection rule inventory, and the auditor's report."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from api.auth import Principal, authorize
from api.deps import state

router = APIRouter(prefix="/rules", tags=["rules"])
REPORT_TTL_S = 300.0  # the report runs every rule's test cases: reused for five minutes
_report_lock = threading.Lock()


class Rule(BaseModel):
    """One rule of the inventory."""

    id: str
    title: str
    status: str | None
    level: str | None
    service: str | None
    techniques: list[str]
    tactics: list[str]
    correlation: str | None


def _inventory(request: Request) -> list[Rule]:
    from detectors.sigma import compile_rules

    app = state(request)
    cached = app.cache.get("rules")
    if cached is None:
        settings = app.settings
        cached = [
            Rule(
                id=r.id,
                title=r.title,
                status=r.status,
                level=r.level,
                service=r.path.parent.name,
                techniques=list(r.techniques),
                tactics=list(r.tactics),
                correlation=r.correlation_type,
            )
            for r in compile_rules(settings.detect.rules_dir, settings.detect.site)
        ]
        app.cache["rules"] = cached
    rules: list[Rule] = cached
    return rules


@router.get("", response_model=list[Rule], summary="The rule inventory")
def list_rules(
    request: Request,
    principal: Annotated[Principal, Security(authorize, scopes=["rules:read"])],
) -> list[Rule]:
    """Every alerting rule: id, title, status, level, protocol, ATT&CK for ICS techniques."""
    return _inventory(request)


@router.get(
    "/report",
    summary="The auditor's report",
    responses={200: {"content": {"text/html": {}, "text/markdown": {}, "application/json": {}}}},
)
def report(
    request: Request,
    principal: Annotated[Principal, Security(authorize, scopes=["reports:read"])],
    format: Annotated[Literal["json", "md", "html"], Query()] = "json",
) -> Response:
    """Inventory, ATT&CK for ICS coverage, test evidence and alerts per rule (as `soc rules
    report`); regenerated at most every five minutes."""
    from detectors.report import generate, render
    from rules import rules_dir

    app = state(request)
    with _report_lock:
        made = app.cache.get("report")
        if made is None or time.monotonic() - made[0] > REPORT_TTL_S:
            folder = app.settings.detect.rules_dir or rules_dir()
            made = (time.monotonic(), generate(app.settings, folder))
            app.cache["report"] = made
    doc: dict[str, Any] = made[1]
    if format == "json":
        return JSONResponse(doc)
    text = render(doc, format)
    if format == "html":
        return HTMLResponse(text)
    return PlainTextResponse(text, media_type="text/markdown")
