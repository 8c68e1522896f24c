"""``/baselines``: a site's learnt baseline, and an analyst accepting a protect-mode alert into
it (a new revision, in the audit trail under the analyst's name)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import BASELINE_ALERT, login


def test_an_analyst_accepts_an_alert_and_the_auditor_sees_who(client: TestClient) -> None:
    ana = login(client, "ana")
    first = client.get("/baselines/water_plant", headers=ana)
    assert first.status_code == 200
    assert first.json()["revision"] == 1
    assert first.json()["accepted"] == []
    done = client.post(
        "/baselines/water_plant/accept", headers=ana, json={"alert_id": BASELINE_ALERT}
    )
    assert done.status_code == 201, done.text
    assert done.json()["revision"] == 2
    after = client.get("/baselines/water_plant", headers=ana).json()
    assert after["accepted"][0]["alert"] == BASELINE_ALERT
    assert after["accepted"][0]["by"] == "ana"
    old = client.get("/baselines/water_plant?revision=1", headers=ana).json()
    assert old["accepted"] == []
    trail = client.get("/audit?action=baseline.accept", headers=login(client, "aud")).json()
    assert [(e["actor"], e["object_id"]) for e in trail["items"]] == [("ana", "water_plant#2")]


def test_what_cannot_be_accepted_says_why(client: TestClient) -> None:
    ana = login(client, "ana")
    wrong = client.post(
        "/baselines/water_plant/accept", headers=ana, json={"alert_id": "grid-alert-1"}
    )
    assert wrong.status_code == 422
    assert wrong.json()["errors"][0]["field"] == "body.alert_id"
    missing = client.post("/baselines/water_plant/accept", headers=ana, json={"alert_id": "nope"})
    assert missing.status_code == 404
    bad = client.post("/baselines/water_plant/accept", headers=ana, json={"alert": "x"})
    assert bad.status_code == 422
    assert "alert_id" in bad.text
    assert client.get("/baselines/smart_grid", headers=ana).status_code == 404  # none learnt
    eve = login(client, "eve")  # an engineer reads, does not accept
    assert client.get("/baselines/water_plant", headers=eve).status_code == 200
    denied = client.post(
        "/baselines/water_plant/accept", headers=eve, json={"alert_id": BASELINE_ALERT}
    )
    assert denied.status_code == 403
