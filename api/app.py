"""The FastAPI application, assembled in one place (:func:`build_app`).

Outside in: rate limit per client -> body size limit -> FastAPI (problem-details error
handlers, the routers). Each router holds one resource; each route declares the scopes it needs
(:mod:`api.auth`). The OpenAPI document is at ``/openapi.json``, the interactive docs at
``/docs``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import problems
from api.auth import load_secret
from api.deps import AppState
from api.limits import BodyLimit, RateLimit
from api.routes import alerts, assets, audit, auth, baselines, health, incidents, rules
from soc import __version__
from soc.config import Settings, load_settings
from soc.store.sqlite import SQLiteStore

ROUTERS = (auth, health, incidents, alerts, assets, rules, audit, baselines)
#: Routes anyone may call: their own access control is the credentials they take, or none.
PUBLIC = frozenset(
    {"/auth/token", "/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)


def build_app(settings: Settings) -> FastAPI:
    """The API over the configured store (created and migrated now if missing)."""
    SQLiteStore.from_settings(settings).close()  # fail now, clearly, if the store cannot open
    app_state = AppState(settings, load_secret(settings.api_secret_path))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app_state.close()

    app = FastAPI(
        title="ICS SOC API",
        version=__version__,
        summary="Incidents, alerts, assets and rules of the industrial SOC",
        description=(
            "Log in with `POST /auth/token` (OAuth2 password flow) and send the access token"
            " as `Authorization: Bearer ...`, or send an API key in `X-API-Key`. Each route"
            " names the scopes it needs; errors are RFC 9457 problem details."
        ),
        lifespan=lifespan,
    )
    app.state.soc = app_state
    problems.install(app)
    for module in ROUTERS:
        app.include_router(module.router)
    app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_kb * 1024)
    app.add_middleware(RateLimit, rate_per_s=settings.api.rate_per_s, burst=settings.api.rate_burst)
    return app


def create_app() -> FastAPI:
    """The app over the configuration this process reads (``SOC_CONFIG``, ``soc.toml``, the
    environment): what each worker of ``soc serve --workers N`` runs."""
    return build_app(load_settings())
