"""The incident workflow end to end through HTTP, as the issue states it: an engineer logs in,
sees only their site's incidents, acknowledges and resolves one, and an auditor sees who did it.
Also tokens (refresh, revocation by disabling), bad input (4xx naming the field) and limits."""

from __future__ import annotations

from fastapi.testclient import TestClient

from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_access import AccessTables
from tests.api.conftest import PASSWORD, Site, login, make_client


def test_engineer_acknowledges_and_resolves_and_the_auditor_sees_who(
    client: TestClient, site: Site
) -> None:
    eve = login(client, "eve")  # engineer on water_plant
    listed = client.get("/incidents", headers=eve).json()
    assert [i["id"] for i in listed["items"]] == [site.plant_incident]
    assert listed["items"][0]["site"] == "water_plant"
    assert client.get(f"/incidents/{site.grid_incident}", headers=eve).status_code == 404

    url = f"/incidents/{site.plant_incident}"
    acked = client.patch(url, headers=eve, json={"status": "acknowledged", "owner": "eve"})
    assert acked.status_code == 200, acked.text
    assert (acked.json()["status"], acked.json()["owner"]) == ("acknowledged", "eve")
    commented = client.post(f"{url}/comments", headers=eve, json={"text": "pump isolated"})
    assert commented.status_code == 201
    back = client.patch(url, headers=eve, json={"status": "new"})
    assert back.status_code == 409
    assert back.headers["content-type"] == "application/problem+json"
    assert back.json()["errors"][0]["field"] == "body.status"
    resolved = client.patch(url, headers=eve, json={"status": "resolved"})
    assert resolved.json()["status"] == "resolved"

    timeline = client.get(f"{url}/timeline", headers=eve).json()
    changes = [(n["actor"], n["kind"], n["detail"]) for n in timeline if n["actor"] == "eve"]
    assert changes == [
        ("eve", "status", {"from": "new", "to": "acknowledged"}),
        ("eve", "owner", {"from": None, "to": "eve"}),
        ("eve", "comment", {"text": "pump isolated"}),
        ("eve", "status", {"from": "acknowledged", "to": "resolved"}),
    ]

    aud = login(client, "aud")
    assert client.patch(url, headers=aud, json={"status": "investigating"}).status_code == 403
    trail = client.get(
        "/audit", headers=aud, params={"actor": "eve", "object_id": site.plant_incident}
    ).json()["items"]
    actions = [(row["action"], row["detail"]) for row in reversed(trail)]
    assert (
        "update",
        {"status": {"from": "new", "to": "acknowledged"}, "owner": {"from": None, "to": "eve"}},
    ) in actions
    assert ("update", {"status": {"from": "acknowledged", "to": "resolved"}}) in actions
    assert ("comment", {"comment": True}) in actions
    assert ("read_timeline", {}) in actions
    reads = client.get("/audit", headers=aud, params={"actor": "eve", "action": "list"}).json()
    assert reads["items"][0]["object_type"] == "incident"


def test_alerts_and_events_of_an_incident(client: TestClient, site: Site) -> None:
    ana = login(client, "ana")
    url = f"/incidents/{site.plant_incident}"
    incident = client.get(url, headers=ana).json()
    alerts = client.get(f"{url}/alerts", headers=ana, params={"limit": 500}).json()
    assert len(alerts["items"]) == incident["alert_count"] >= 10
    assert all(a["event"]["kind"] == "alert" for a in alerts["items"])
    first = client.get(f"{url}/events", headers=ana, params={"limit": 100}).json()
    second = client.get(
        f"{url}/events", headers=ana, params={"limit": 100, "cursor": first["next_cursor"]}
    ).json()
    ids = [e["event"]["id"] for e in first["items"] + second["items"]]
    assert len(ids) == len(set(ids)) == 200  # pages do not overlap
    times = [e["@timestamp"] for e in first["items"] + second["items"]]
    assert times == sorted(times)


def test_refresh_and_revocation(client: TestClient, site: Site) -> None:
    tokens = client.post(
        "/auth/token", data={"grant_type": "password", "username": "ana", "password": PASSWORD}
    ).json()
    renewed = client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
    )
    assert renewed.status_code == 200
    headers = {"Authorization": f"Bearer {renewed.json()['access_token']}"}
    assert client.get("/incidents", headers=headers).status_code == 200
    with SQLiteStore(site.data_dir / "soc.db") as store:
        AccessTables(store).set_disabled("ana", True)
    assert client.get("/incidents", headers=headers).status_code == 401
    again = client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
    )
    assert again.status_code == 401
    wrong = client.post(
        "/auth/token", data={"grant_type": "password", "username": "eve", "password": "nope"}
    )
    assert wrong.status_code == 401
    aud = login(client, "aud")
    failed = client.get("/audit", headers=aud, params={"action": "login_failed"}).json()
    assert failed["items"][0]["actor"] == "eve"


def test_bad_input_is_a_4xx_naming_the_field(client: TestClient) -> None:
    ana = login(client, "ana")
    cases = {
        ("get", "/incidents?limit=0"): "query.limit",
        ("get", "/incidents?status=closed"): "query.status.0",
        ("get", "/incidents?since=yesterday"): "query.since",
        ("get", "/incidents?since=2026-11-25T10:00:00"): "query.since",
        ("get", "/incidents?asset=plc-1"): "query.asset",
        ("get", "/assets?network=10.0.0.0/99"): "query.network",
        ("get", "/incidents?cursor=%25%25"): "query.cursor",
        ("patch", "/incidents/abc"): "body",
    }
    for (method, url), field in cases.items():
        response = client.request(method.upper(), url, headers=ana)
        assert 400 <= response.status_code < 500, (url, response.status_code)
        assert response.headers["content-type"] == "application/problem+json"
        fields = [e["field"] for e in response.json().get("errors", [])]
        assert field in fields, (url, response.json())
    unknown = client.patch("/incidents/abc", headers=ana, json={"status": "resolved", "x": 1})
    assert unknown.status_code == 422
    assert "body.x" in [e["field"] for e in unknown.json()["errors"]]
    bad_cursor = client.get("/incidents", headers=ana, params={"cursor": "bm90LWEtY3Vyc29y"})
    assert bad_cursor.status_code in (400, 422)


def test_body_and_rate_limits(site: Site) -> None:
    with make_client(site, max_body_kb=1, rate_per_s=1, rate_burst=3) as client:
        big = client.post(
            "/auth/token",
            content=b"grant_type=password&" + b"x" * 4096,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert big.status_code == 413
        statuses = [client.get("/health").status_code for _ in range(4)]
        assert statuses[:2] == [200, 200]
        limited = client.get("/health")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["status"] == 429
