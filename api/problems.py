"""Errors as RFC 9457 problem details (``application/problem+json``), never a bare 500.

Every error the API returns has ``type``, ``title``, ``status`` and ``detail``; a request that
does not validate also lists ``errors``, each with the ``field`` at fault (``query.limit``,
``body.status``) and a message. Handlers are installed by :func:`install`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from soc.errors import AuthError, IncidentError, SocError, StoreError

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """An error to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})


def problem_response(
    status: int,
    detail: str,
    *,
    errors: Sequence[Mapping[str, str]] = (),
    headers: Mapping[str, str] | None = None,
    instance: str | None = None,
) -> JSONResponse:
    """A problem document with its status."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = list(errors)
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=MEDIA_TYPE
    )


def field_name(loc: Sequence[Any]) -> str:
    """``("query", "limit")`` -> ``query.limit``."""
    return ".".join(str(part) for part in loc) or "request"


def install(app: FastAPI) -> None:
    """Answer every error with a problem document."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(
            exc.status,
            exc.detail,
            errors=exc.errors,
            headers=exc.headers,
            instance=request.url.path,
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": field_name(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
            for e in exc.errors()
        ]
        fields = ", ".join(dict.fromkeys(e["field"] for e in errors))
        return problem_response(
            422, f"invalid request: {fields}", errors=errors, instance=request.url.path
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(
            exc.status_code,
            str(exc.detail),
            headers=getattr(exc, "headers", None),
            instance=request.url.path,
        )

    async def on_soc(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SocError)
        if isinstance(exc, IncidentError):
            status = 404 if exc.location == "incident" else 409 if exc.location == "status" else 422
            errors = [{"field": f"body.{exc.location}", "message": exc.message}]
            return problem_response(status, exc.message, errors=errors, instance=request.url.path)
        if isinstance(exc, AuthError):
            return problem_response(401, exc.message, instance=request.url.path)
        if isinstance(exc, StoreError) and (exc.location or "").startswith("query"):
            errors = [{"field": str(exc.location), "message": exc.message}]
            return problem_response(422, exc.message, errors=errors, instance=request.url.path)
        if isinstance(exc, StoreError):
            log.warning("store error on %s: %s", request.url.path, exc)
            return problem_response(
                503, "the store is unavailable; try again", instance=request.url.path
            )
        return problem_response(400, str(exc), instance=request.url.path)

    async def on_any(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return problem_response(500, "internal error (logged)", instance=request.url.path)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(SocError, on_soc)
    app.add_exception_handler(Exception, on_any)
