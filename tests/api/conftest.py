"""A site for API tests: the lab's reference capture detected and correlated (one incident on
the water plant), one more incident on the smart grid, a user per role, API keys; and clients.

The store is built once per session and copied for each test that uses it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import build_app
from api.auth import load_secret
from detectors.attack import tactic_order
from detectors.runner import Detector, collect_captures, load_plans
from soc.access import hash_password, new_api_key
from soc.assets import AssetInventory
from soc.config import ApiSettings, Settings
from soc.incidents.service import correlate_store
from soc.store.base import AlertRow
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_access import AccessTables
from soc.store.sqlite_incidents import IncidentQuery, IncidentTables

CAPTURE = Path(__file__).resolve().parents[2] / "lab" / "reference" / "capture.pcap.gz"
PASSWORD = "correct horse battery staple"
#: user name -> (roles, sites)
USERS = {
    "ana": (["analyst"], []),
    "eve": (["engineer"], ["water_plant"]),
    "gus": (["engineer"], ["smart_grid"]),
    "aud": (["auditor"], []),
    "adm": (["admin"], []),
    "old": (["analyst"], []),  # disabled after setup
}


@dataclass
class Site:
    """What the tests know about the prepared store."""

    data_dir: Path
    plant_incident: str  # water_plant
    grid_incident: str  # smart_grid
    key: str  # an analyst's API key
    revoked_key: str


def _grid_alert() -> AlertRow:
    ts = 1_795_640_000_000_000
    doc: dict[str, Any] = {
        "@timestamp": "2026-11-25T21:33:20.000000Z",
        "event": {"kind": "alert", "dataset": "ics.alert", "severity": 73},
        "rule": {"id": "test-grid-rule", "name": "Meter remote disconnect from an unknown host"},
        "labels": {"level": "high"},
        "threat": {
            "technique": {"id": ["T0855"], "name": ["Unauthorized Command Message"]},
            "tactic": {"id": ["TA0106"], "name": ["Impair Process Control"]},
        },
        "source": {"ip": "127.0.66.6"},
        "destination": {"ip": "127.0.20.1", "port": 4059},
        "related": {"ip": ["127.0.20.1", "127.0.66.6"]},
        "ics": {"alert": {"event_ids": [], "event_count": 0}},
    }
    return AlertRow("grid-alert-1", "test-grid-rule", "[]", ts, ts, 73, doc)


BASELINE_ALERT = "baseline-alert-1"


def _baseline(store: SQLiteStore, events: list[dict[str, Any]]) -> None:
    """The water plant's baseline (learnt on the capture's first 10 s) and one protect-mode
    alert of it, stored as ``soc baseline check`` stores them."""
    from detectors.attack import load_table
    from detectors.baseline import alerts_of, check, learn
    from detectors.baseline_cli import alert_row
    from soc.event import parse_timestamp
    from soc.incidents.correlate import SiteMap
    from soc.store.sqlite_baselines import BaselineTables

    sites = SiteMap(Settings().incidents.sites, {})
    plant = [e for e in events if sites.site_of(e["destination"]["ip"]) == "water_plant"]
    first = parse_timestamp(plant[0]["@timestamp"])
    normal = [e for e in plant if parse_timestamp(e["@timestamp"]) < first + 10_000_000]
    baseline = learn("water_plant", normal)
    BaselineTables(store).save(baseline, "test", "learnt", first)
    (alert, *_) = alerts_of(check(baseline, plant), load_table(), first, "water_plant", 1)
    alert["event"]["id"] = BASELINE_ALERT
    store.write_alerts([alert_row(alert)])


@pytest.fixture(scope="session")
def base_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    data = tmp_path_factory.mktemp("site")
    settings = Settings(data_dir=data)
    with SQLiteStore.from_settings(settings) as store:
        events = collect_captures([CAPTURE])
        store.write_events(events)
        inventory = AssetInventory()
        inventory.observe_all(events)
        store.upsert_assets(inventory.docs())
        Detector(store, load_plans()).run_once()
        store.write_alerts([_grid_alert()])
        _baseline(store, events)
        tables = IncidentTables(store)
        correlate_store(tables, settings, tactic_order())
        docs, _ = tables.list_incidents(IncidentQuery())
        by_site = {d["site"]: d["id"] for d in docs}
        access = AccessTables(store)
        hashed = hash_password(PASSWORD)
        now = time.time_ns() // 1000
        for name, (roles, sites) in USERS.items():
            access.add_user(name, hashed, roles, sites, now)
        access.set_disabled("old", True)
        key_id, key, secret_hash = new_api_key()
        access.add_key(key_id, "gateway", secret_hash, ["analyst"], [], "test", now)
        gone_id, gone, gone_hash = new_api_key()
        access.add_key(gone_id, "old gateway", gone_hash, ["analyst"], [], "test", now)
        access.revoke_key(gone_id, now)
    load_secret(settings.api_secret_path)
    return Site(data, by_site["water_plant"], by_site["smart_grid"], key, gone)


@pytest.fixture
def site(base_site: Site, tmp_path: Path) -> Site:
    """A copy of the prepared site this test may change."""
    target = tmp_path / "site"
    shutil.copytree(base_site.data_dir, target)
    return replace(base_site, data_dir=target)


def make_client(site: Site, **api: Any) -> TestClient:
    """A test client of the API over ``site`` (``api``: ApiSettings overrides)."""
    settings = Settings(data_dir=site.data_dir, api=ApiSettings(**api))
    return TestClient(build_app(settings), raise_server_exceptions=False)


@pytest.fixture
def client(site: Site) -> Iterator[TestClient]:
    with make_client(site) as c:
        yield c


def login(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Bearer headers for ``username``."""
    response = client.post(
        "/auth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}
