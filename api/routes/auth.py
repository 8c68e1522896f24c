"""``POST /auth/token``: the OAuth2 token endpoint (password and refresh-token grants)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from pydantic import BaseModel

from api.auth import issue, verify
from api.deps import now_us, state
from api.problems import Problem
from soc.access import dummy_verify, verify_password
from soc.errors import AuthError

router = APIRouter(prefix="/auth", tags=["auth"])


class TokenResponse(BaseModel):
    """RFC 6749 section 5.1."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int
    refresh_token: str


@router.post("/token", response_model=TokenResponse, summary="Log in or refresh")
def token(
    request: Request,
    grant_type: Annotated[Literal["password", "refresh_token"], Form()],
    username: Annotated[str | None, Form(max_length=64)] = None,
    password: Annotated[str | None, Form(max_length=1024)] = None,
    refresh_token: Annotated[str | None, Form(max_length=4096)] = None,
) -> TokenResponse:
    """Exchange a user name and password (``grant_type=password``) or a refresh token
    (``grant_type=refresh_token``) for an access token and a new refresh token."""
    app = state(request)
    tables = app.tables()
    if grant_type == "password":
        if not username or not password:
            raise Problem(
                422,
                "username and password are required with grant_type=password",
                errors=[{"field": "body.username", "message": "required"}],
            )
        user = tables.access.get_user(username)
        if user is None:
            dummy_verify(password)
            ok, rehash = False, None
        else:
            ok, rehash = verify_password(user.password_hash, password)
        if user is None or not ok or user.disabled:
            tables.incidents.audit(now_us(), username, "login_failed", "user", username)
            raise Problem(401, "wrong user name or password, or the user is disabled")
        if rehash is not None:
            tables.access.set_password(user.username, rehash, revoke=False)
        tables.incidents.audit(now_us(), user.username, "login", "user", user.username)
    else:
        if not refresh_token:
            raise Problem(
                422,
                "refresh_token is required with grant_type=refresh_token",
                errors=[{"field": "body.refresh_token", "message": "required"}],
            )
        try:
            claims = verify(app.secret, refresh_token, "refresh")
        except AuthError as exc:
            raise Problem(401, exc.message) from None
        user = tables.access.get_user(str(claims["sub"]))
        if user is None or user.disabled or user.token_version != claims.get("ver"):
            raise Problem(401, "the refresh token is no longer valid")
    api = app.settings.api
    access_s = api.access_token_minutes * 60
    return TokenResponse(
        access_token=issue(app.secret, user.username, user.token_version, "access", access_s),
        expires_in=access_s,
        refresh_token=issue(
            app.secret, user.username, user.token_version, "refresh", api.refresh_token_hours * 3600
        ),
    )
