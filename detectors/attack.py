"""MITRE ATT&CK for ICS, offline: a compact table derived from the STIX bundle, and pySigma fed
from it.

The table (``rules/attack_ics.json``, committed) holds what detection needs and nothing more: the
ICS tactics in the matrix's order (id, short name, name) and every technique (id, name, tactic
short names), with the deprecated and revoked techniques apart so a rule tagged with one gets a
clear message. Regenerate it from MITRE's bundle (``ics-attack.json``, never committed) with::

    python -m detectors.attack --bundle ../shared/data/ics-attack.json

pySigma's ``sigma.data.mitre_attack`` downloads the Enterprise bundle from GitHub on first use and
caches it under ``~/.cache``. :func:`install_offline` puts this table in that cache's place, in
the format pySigma expects, so the validators and the Elasticsearch backends (which name
techniques and tactics in their output) read local ICS data and never open a socket.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from rules import rules_dir
from soc.errors import RuleError

TABLE_NAME = "attack_ics.json"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ics-attack.json"


@dataclass(frozen=True)
class Technique:
    """One ATT&CK for ICS technique."""

    id: str  # T0855
    name: str
    tactics: tuple[str, ...]  # short names: impair-process-control, ...


@dataclass(frozen=True)
class Tactic:
    """One ATT&CK for ICS tactic."""

    id: str  # TA0106
    short_name: str  # impair-process-control (the Sigma tag's name)
    name: str  # Impair Process Control


@dataclass(frozen=True)
class AttackTable:
    """The derived table: tactics in matrix order, techniques by id, retired techniques apart."""

    domain: str
    modified: str
    source_sha256: str
    tactics: tuple[Tactic, ...]
    techniques: Mapping[str, Technique]
    retired: Mapping[str, str]  # technique id -> "Name (deprecated|revoked)"

    def tactic(self, short_name: str) -> Tactic | None:
        """The tactic of this short name (``attack.<short name>`` tag), if any."""
        return next((t for t in self.tactics if t.short_name == short_name), None)


_ATTACK_SOURCES = ("mitre-attack", "mitre-ics-attack")  # older (now retired) objects use the latter


def _external_id(obj: Mapping[str, Any]) -> str | None:
    for ref in obj.get("external_references", []):
        if ref.get("source_name") in _ATTACK_SOURCES and ref.get("external_id"):
            return str(ref["external_id"])
    return None


#: MITRE's licence asks every copy to carry its copyright designation and the licence
#: (``ics-attack.LICENSE.txt`` beside the bundle is copied whole when present).
MITRE_LICENSE = (
    "The MITRE Corporation (MITRE) hereby grants you a non-exclusive, royalty-free license to use"
    " ATT&CK for research, development, and commercial purposes. Any copy you make for such"
    " purposes is authorized provided that you reproduce MITRE's copyright designation and this"
    ' license in any such copy. "(c) The MITRE Corporation. This work is reproduced and'
    ' distributed with the permission of The MITRE Corporation."'
)


def build_table(
    bundle: Mapping[str, Any], *, source_sha256: str = "", license_text: str = MITRE_LICENSE
) -> dict[str, Any]:
    """The compact table (JSON-ready) of an ATT&CK for ICS STIX bundle."""
    objects: Sequence[Mapping[str, Any]] = bundle.get("objects", [])
    by_ref = {o["id"]: o for o in objects if "id" in o}
    matrices = [o for o in objects if o.get("type") == "x-mitre-matrix"]
    if len(matrices) != 1 or _external_id(matrices[0]) != "ics-attack":
        raise RuleError("not the ATT&CK for ICS bundle (expected one ics-attack matrix)")
    matrix = matrices[0]
    tactics = []
    for ref in matrix.get("tactic_refs", []):
        obj = by_ref[ref]
        tactics.append([_external_id(obj), obj["x_mitre_shortname"], obj["name"]])
    techniques: dict[str, Any] = {}
    retired: dict[str, str] = {}
    for obj in objects:
        if obj.get("type") != "attack-pattern" or "ics-attack" not in obj.get(
            "x_mitre_domains", []
        ):
            continue
        tid = _external_id(obj)
        if tid is None:
            continue
        if obj.get("revoked") or obj.get("x_mitre_deprecated"):
            why = "revoked" if obj.get("revoked") else "deprecated"
            retired[tid] = f"{obj['name']} ({why})"
            continue
        phases = [
            p["phase_name"]
            for p in obj.get("kill_chain_phases", [])
            if p.get("kill_chain_name") == "mitre-ics-attack"
        ]
        techniques[tid] = [obj["name"], phases]
    return {
        "domain": "ics-attack",
        "source": "derived by `python -m detectors.attack` from MITRE ATT&CK for ICS"
        " (ics-attack.json, a STIX bundle)",
        "license": license_text.strip(),
        "source_sha256": source_sha256,
        "modified": max((str(o.get("modified", "")) for o in objects), default=""),
        "tactics": tactics,
        "techniques": dict(sorted(techniques.items())),
        "retired": dict(sorted(retired.items())),
    }


def write_table(bundle_path: Path, out: Path) -> dict[str, Any]:
    """Derive the table from ``bundle_path`` and write it to ``out``, one entry per line."""
    raw = bundle_path.read_bytes()
    license_file = bundle_path.with_name(bundle_path.stem + ".LICENSE.txt")
    license_text = license_file.read_text("utf-8") if license_file.exists() else MITRE_LICENSE
    table = build_table(
        json.loads(raw), source_sha256=hashlib.sha256(raw).hexdigest(), license_text=license_text
    )

    def block(items: list[str], opening: str, closing: str) -> str:
        inner = ",\n".join(f"    {item}" for item in items)
        return f"{opening}\n{inner}\n  {closing}" if items else opening + closing

    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in table.items() if k not in _BLOCKS]
    lines.append('  "tactics": ' + block([json.dumps(t) for t in table["tactics"]], "[", "]"))
    for section in ("techniques", "retired"):
        items = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in table[section].items()]
        lines.append(f'  "{section}": ' + block(items, "{", "}"))
    out.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return table


_BLOCKS = ("tactics", "techniques", "retired")


def table_path() -> Path:
    """Where the committed table lives."""
    return rules_dir() / TABLE_NAME


@cache
def load_table(path: Path | None = None) -> AttackTable:
    """Read the derived table (default: the committed ``rules/attack_ics.json``)."""
    path = path or table_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return AttackTable(
            domain=data["domain"],
            modified=data["modified"],
            source_sha256=data["source_sha256"],
            tactics=tuple(Tactic(*t) for t in data["tactics"]),
            techniques={
                tid: Technique(tid, name, tuple(tactics))
                for tid, (name, tactics) in data["techniques"].items()
            },
            retired=dict(data["retired"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuleError(f"cannot read the ATT&CK for ICS table: {exc}", location=str(path)) from exc


def pysigma_data(table: AttackTable) -> dict[str, Any]:
    """The table in the shape ``sigma.data.mitre_attack`` caches (ICS techniques and tactics)."""
    return {
        "mitre_attack_version": f"ics-attack {table.modified[:10]}",
        "mitre_attack_tactics": {t.id: t.short_name for t in table.tactics},
        "mitre_attack_techniques": {t.id: t.name for t in table.techniques.values()},
        "mitre_attack_techniques_tactics_mapping": {
            t.id: list(t.tactics) for t in table.techniques.values()
        },
        "mitre_attack_intrusion_sets": {},
        "mitre_attack_software": {},
        "mitre_attack_datasources": {},
        "mitre_attack_mitigations": {},
    }


class _LocalCache:
    """Stands in for pySigma's ``diskcache.Cache``: serves the local table, never downloads."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = {"mitre_attack_data": data}

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def set(self, key: str, value: Any) -> bool:
        self._data[key] = value
        return True

    def clear(self) -> int:  # set_url() clears the cache: keep serving the local table
        return 0

    def close(self) -> None:
        return None


def install_offline(table: AttackTable | None = None) -> None:
    """Make pySigma's ATT&CK data module serve the local ICS table (idempotent).

    After this, ``sigma.data.mitre_attack.mitre_attack_techniques`` and friends are the ICS
    techniques and tactics of the table: no download, no disk cache under ``~/.cache``.
    """
    from sigma.data import mitre_attack

    cache_object = _LocalCache(pysigma_data(table or load_table()))
    setattr(mitre_attack, "_cache", cache_object)  # noqa: B010 - a private slot of pySigma's module
    setattr(mitre_attack, "_custom_url", str(table_path()))  # noqa: B010 - never the GitHub URL


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detectors.attack``: write ``rules/attack_ics.json`` from MITRE's bundle."""
    parser = argparse.ArgumentParser(prog="python -m detectors.attack", description=main.__doc__)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="ics-attack.json")
    parser.add_argument("--out", type=Path, default=table_path(), help="the table to write")
    args = parser.parse_args(argv)
    try:
        table = write_table(args.bundle, args.out)
    except (OSError, ValueError, RuleError) as exc:
        print(f"error: {exc} ({args.bundle})", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {len(table['tactics'])} tactics, {len(table['techniques'])} techniques,"
        f" {len(table['retired'])} retired (bundle modified {table['modified'][:10]})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def tactic_order(table: AttackTable | None = None) -> dict[str, int]:
    """ATT&CK for ICS tactic ids in the matrix's order (incidents rank a chain with it)."""
    return {t.id: i for i, t in enumerate((table or load_table()).tactics)}
