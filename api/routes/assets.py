"""``/assets``: the passive asset inventory (hosts seen, their roles, protocols, identities)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Security
from pydantic import BaseModel

from api.auth import Principal, authorize
from api.deps import state
from api.problems import Problem
from soc.incidents.service import site_map
from soc.store.base import AssetQuery

router = APIRouter(prefix="/assets", tags=["assets"])


class AssetList(BaseModel):
    """The matching assets (each an asset document of ``soc.assets``), with their site."""

    items: list[dict[str, Any]]


def _with_sites(request: Request, principal: Principal, docs: list[dict[str, Any]]) -> list[Any]:
    app = state(request)
    sites = app.cache.get("site_map")
    if sites is None:  # the sites' networks parsed once, not per request
        sites = app.cache["site_map"] = site_map(app.settings)
    out = []
    for doc in docs:
        site = sites.site_of(doc.get("ip"))
        if principal.may_see(site):
            out.append({**doc, "site": site})
    return out


@router.get("", response_model=AssetList, summary="List assets")
async def list_assets(
    request: Request,
    principal: Annotated[Principal, Security(authorize, scopes=["assets:read"])],
    network: Annotated[
        str | None, Query(max_length=64, description="an address or CIDR network")
    ] = None,
    role: Annotated[Literal["client", "server", "master", "slave"] | None, Query()] = None,
    protocol: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z0-9_]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> AssetList:
    """Assets seen on the wire, by address; engineers see their sites' assets."""
    if network is not None:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise Problem(
                422,
                "network is not an address or a CIDR network",
                errors=[{"field": "query.network", "message": "e.g. 10.0.0.0/24"}],
            ) from None
    store = state(request).tables().store
    docs = store.list_assets(AssetQuery(network=network, role=role, protocol=protocol))
    return AssetList(items=_with_sites(request, principal, [dict(d) for d in docs])[:limit])


@router.get("/{ip}", summary="Read an asset")
async def get_asset(
    request: Request,
    ip: Annotated[str, Path(max_length=64)],
    principal: Annotated[Principal, Security(authorize, scopes=["assets:read"])],
) -> dict[str, Any]:
    """One asset by address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise Problem(
            422, "not an IP address", errors=[{"field": "path.ip", "message": "an address"}]
        ) from None
    store = state(request).tables().store
    docs = store.list_assets(AssetQuery(network=str(address)))
    found = _with_sites(request, principal, [dict(d) for d in docs if d.get("ip") == str(address)])
    if not found:
        raise Problem(404, f"no asset {address}")
    result: dict[str, Any] = found[0]
    return result
