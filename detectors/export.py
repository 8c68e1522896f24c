"""The rules for Elasticsearch: Lucene and ES|QL queries, Elastic Security detection rules and
Kibana saved searches (``soc rules export --target ...``).

The same rule files and the same processing pipeline as the SQLite store (:mod:`detectors.sigma`:
site placeholders, log source -> ``event.dataset`` condition, field names unchanged: the events
in Elasticsearch are the same ECS documents, in data streams named like ``logs-ics.modbus-*``),
compiled by pySigma's Elasticsearch backends, offline (the local ATT&CK for ICS table).

Targets:

- ``lucene``: one JSON line per rule: ``{"id", "title", "level", "index", "query"}``. The Lucene
  backend converts no correlation rule: those are reported as skipped (use ``esql``).
- ``esql``: the same lines with an ES|QL query (``FROM <index> ... | WHERE ...``), correlation
  rules included (``| STATS ... BY``). ES|QL counts a correlation in fixed time buckets of the
  rule's timespan (``date_trunc``), where the SQLite runner slides the window.
- ``elastic-ndjson``: Elastic Security detection rules to import in Kibana (Security > Rules >
  Import): the backend's ``siem_rule_ndjson`` documents with our id, title, description,
  severity and risk score from the level, the ATT&CK for ICS threat mapping of our table, the
  index pattern, the interval, disabled. Base rules are Lucene query rules, correlation rules
  ES|QL rules.
- ``kibana-ndjson``: Kibana saved searches (Discover), one per rule, as ES|QL (the ES|QL
  backend's ``kibana_ndjson``: self-contained, no data view to create first).

A rule whose expression Elasticsearch cannot run as written is never exported broken: it is
reported (``skipped: <why>``). Known cases: a regular expression on a numeric field (a regexp
query needs a keyword field; ES|QL's ``RLIKE`` takes strings), a regular expression Lucene's
syntax does not read like Python's, and in ES|QL a condition on a list field other than
"contains" (ES|QL's ``WHERE`` gives null on a multi-valued field).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sigma.backends.elasticsearch.elasticsearch_esql import ESQLBackend
from sigma.backends.elasticsearch.elasticsearch_lucene import LuceneBackend
from sigma.conditions import ConditionFieldEqualsValueExpression
from sigma.conversion.state import ConversionState
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaFeatureNotSupportedByBackendError
from sigma.processing.pipeline import ProcessingPipeline
from sigma.rule import SigmaRule
from sigma.types import SigmaRegularExpression, SigmaString, SpecialChars

from detectors.attack import AttackTable, install_offline, load_table
from detectors.sigma import (
    LIST_FIELDS,
    SitePlaceholderTransformation,
    _attack,
    _conversion_order,
    _label,
    _message,
    load_pipeline,
    load_rule_file,
    rule_files,
)
from soc.config import LAB_SITE
from soc.errors import RuleError

TARGETS = ("lucene", "esql", "elastic-ndjson", "kibana-ndjson")
DEFAULT_INDEX = "logs-ics.*"
DEFAULT_INTERVAL = "5m"
AUTHOR = "ics-soc"
LICENSE = "Apache-2.0"

#: Elastic Security's severities and risk scores (its own conventions) for Sigma's levels.
SEVERITY: Mapping[str, tuple[str, int]] = {
    "informational": ("low", 1),
    "low": ("low", 21),
    "medium": ("medium", 47),
    "high": ("high", 73),
    "critical": ("critical", 99),
}
ATTACK_URL = "https://attack.mitre.org"
_INTERVAL = re.compile(r"([1-9][0-9]*)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Unsupported(SigmaFeatureNotSupportedByBackendError):
    """A rule's expression that the target cannot run as written (the rule is skipped)."""


# -- what Elasticsearch cannot run as written -------------------------------------------------


def numeric_fields(pipeline: ProcessingPipeline) -> frozenset[str]:
    """The fields our pipeline declares numeric (``numeric_fields`` of the site placeholders)."""
    return frozenset(
        name
        for item in pipeline.items
        if isinstance(item.transformation, SitePlaceholderTransformation)
        for name in item.transformation.numeric_fields
    )


_PYTHON_ONLY = re.compile(r"\\[dDwWsSbBAZ]|\(\?|(?<!\\)[\^$](?!$)")


def lucene_regex(pattern: str) -> str:
    """A Python regular expression (``re.search``) as Lucene's (always the whole value).

    ``^...$`` lose their anchors, an unanchored side gains ``.*``; escapes and groups Lucene does
    not know (``\\d``, ``\\w``, ``\\s``, ``(?...)``, an anchor inside) raise :class:`Unsupported`.
    """
    body = pattern
    start = body.startswith("^")
    body = body[1:] if start else body
    end = body.endswith("$") and not body.endswith("\\$")
    body = body[:-1] if end else body
    if _PYTHON_ONLY.search(body) or "^" in body.replace("[^", "") or re.search(r"(?<!\\)\$", body):
        raise Unsupported(f"the regular expression {pattern!r} uses syntax Lucene does not read")
    if "|" in body and not (body.startswith("(") and body.endswith(")")) and (start or end):
        body = f"({body})"  # ^a|b$ anchors both alternatives once the anchors are gone
    return ("" if start else ".*") + body + ("" if end else ".*")


class _Checks:
    """What both backends refuse: a regular expression on a numeric field."""

    numeric: frozenset[str] = frozenset()
    target = ""

    def _check_regex(self, cond: ConditionFieldEqualsValueExpression) -> None:
        if cond.field in self.numeric:
            raise Unsupported(
                f"regular expression on the numeric field {cond.field}: Elasticsearch maps it as"
                f" a number, and {self.target} applies regular expressions to strings only"
            )
        value = cast(SigmaRegularExpression, cond.value)
        cond.value = SigmaRegularExpression(lucene_regex(value.regexp.original), value.flags)


class IcsLuceneBackend(_Checks, LuceneBackend):
    """pySigma's Lucene backend, refusing what Elasticsearch would reject or misread."""

    target = "a Lucene regexp query"

    def __init__(self, pipeline: ProcessingPipeline, index: str, interval: str) -> None:
        value, unit = _interval(interval)
        super().__init__(
            pipeline, index_names=[index], schedule_interval=value, schedule_interval_unit=unit
        )
        self.numeric = numeric_fields(pipeline)

    def convert_condition_field_eq_val_re(
        self, cond: ConditionFieldEqualsValueExpression, state: ConversionState
    ) -> Any:
        self._check_regex(cond)
        return super().convert_condition_field_eq_val_re(cond, state)


_LIST_SEPARATOR = " "


class IcsESQLBackend(_Checks, ESQLBackend):
    """pySigma's ES|QL backend over our index pattern, refusing what ES|QL would misread.

    ES|QL's ``WHERE`` gives null (no match, a warning) for a comparison on a multi-valued field;
    a "contains" on a list field (``modbus.anomalies|contains``) tests the elements joined with
    a space (``MV_CONCAT``), which is exact when the value has no space; anything else on a list
    field is refused.
    """

    target = "ES|QL's RLIKE"

    def __init__(self, pipeline: ProcessingPipeline, index: str, interval: str) -> None:
        value, unit = _interval(interval)
        super().__init__(pipeline, schedule_interval=value, schedule_interval_unit=unit)
        # the FROM clause (a class variable of the backend: this instance's index pattern)
        setattr(self, "state_defaults", {**ESQLBackend.state_defaults, "index": index})  # noqa: B010
        self.numeric = numeric_fields(pipeline)

    def convert_condition_field_eq_val_re(
        self, cond: ConditionFieldEqualsValueExpression, state: ConversionState
    ) -> Any:
        self._check_regex(cond)
        if cond.field in LIST_FIELDS:
            raise Unsupported(f"regular expression on the list field {cond.field} in ES|QL")
        return super().convert_condition_field_eq_val_re(cond, state)

    def convert_condition_field_eq_val_str(
        self, cond: ConditionFieldEqualsValueExpression, state: ConversionState
    ) -> Any:
        name = cond.field
        if name not in LIST_FIELDS:
            return super().convert_condition_field_eq_val_str(cond, state)
        value = cast(SigmaString, cond.value)
        parts = list(value.s)
        contains = (
            len(parts) == 3
            and parts[0] == SpecialChars.WILDCARD_MULTI
            and parts[2] == SpecialChars.WILDCARD_MULTI
            and isinstance(parts[1], str)
            and _LIST_SEPARATOR not in parts[1]
        )
        if not contains:
            raise Unsupported(
                f"{name} holds a list, and ES|QL compares a multi-valued field as null; only"
                " 'contains' on it converts"
            )
        marker = "sigma_list_field_marker"
        cond.field = marker
        try:
            out = str(super().convert_condition_field_eq_val_str(cond, state))
        finally:
            cond.field = name
        joined = f'mv_concat({self.escape_and_quote_field(name)}, "{_LIST_SEPARATOR}")'
        return out.replace(marker, joined)


def _interval(interval: str) -> tuple[int, str]:
    match = _INTERVAL.fullmatch(interval)
    if match is None:
        raise RuleError(f"not an interval: {interval!r} (a number and s, m, h or d: 5m)")
    return int(match[1]), match[2]


# -- the export -------------------------------------------------------------------------------


@dataclass
class Export:
    """What an export produced: one document per converted rule, and the rules skipped."""

    target: str
    documents: list[dict[str, Any]] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)  # rule ids
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # id, title, why

    def lines(self) -> list[str]:
        """The documents as NDJSON / JSON lines."""
        return [json.dumps(doc, ensure_ascii=False, sort_keys=False) for doc in self.documents]


def export_rules(
    target: str,
    rules_dir: Path | None = None,
    site: Mapping[str, Sequence[str]] | None = None,
    *,
    index: str = DEFAULT_INDEX,
    interval: str = DEFAULT_INTERVAL,
) -> Export:
    """Convert every alerting rule for ``target`` (one of :data:`TARGETS`), offline.

    A rule file that does not load raises :class:`~soc.errors.RuleError`; a rule the target
    cannot express is in :attr:`Export.skipped` with the reason.
    """
    if target not in TARGETS:
        raise RuleError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    _interval(interval)
    install_offline()
    site = LAB_SITE if site is None else site
    table = load_table()
    out = Export(target)
    for path in rule_files(rules_dir):
        _export_file(out, path, site, index, interval, table)
    return out


def _export_file(
    out: Export,
    path: Path,
    site: Mapping[str, Sequence[str]],
    index: str,
    interval: str,
    table: AttackTable,
) -> None:
    lucene = out.target in ("lucene", "elastic-ndjson")
    esql = out.target in ("esql", "elastic-ndjson", "kibana-ndjson")
    # each backend converts its own copy: the pipeline changes the rules it converts
    backends: dict[str, tuple[Any, list[SigmaRule | SigmaCorrelationRule]]] = {}
    if lucene:
        pipeline = load_pipeline(site)
        backends["lucene"] = (
            IcsLuceneBackend(pipeline, index, interval),
            _conversion_order(load_rule_file(path), path),
        )
    if esql:
        pipeline = load_pipeline(site)
        backends["esql"] = (
            IcsESQLBackend(pipeline, index, interval),
            _conversion_order(load_rule_file(path), path),
        )
    results: dict[str, list[tuple[SigmaRule | SigmaCorrelationRule, Any, str | None]]] = {}
    for name, (backend, rules) in backends.items():
        fmt = {
            "lucene": "default",
            "esql": "default",
            "elastic-ndjson": "siem_rule_ndjson",
            "kibana-ndjson": "kibana_ndjson",
        }[out.target]
        results[name] = [_convert(backend, rule, fmt) for rule in rules]
    count = len(next(iter(results.values())))
    for i in range(count):
        options = {name: results[name][i] for name in results}
        rule = next(iter(options.values()))[0]
        if not rule._output:
            continue  # a base rule only its correlation uses
        if rule.id is None:
            raise RuleError(f"{_label(rule)}: no id", location=str(path))
        rule_id, title = str(rule.id), rule.title
        # elastic-ndjson: a base rule as a Lucene query rule, a correlation as an ES|QL rule
        order = ["lucene", "esql"] if not isinstance(rule, SigmaCorrelationRule) else ["esql"]
        reasons = []
        if isinstance(rule, SigmaCorrelationRule) and "lucene" in options:
            reasons.append(
                "lucene: the Lucene backend converts no correlation rule (export --target esql)"
            )
        chosen = None
        for name in order:
            if name not in options:
                continue
            _, converted, why = options[name]
            if why is None:
                chosen = (name, converted)
                break
            reasons.append(f"{name}: {why}")
            if out.target == "elastic-ndjson" and name == "lucene":
                continue  # try the rule as an ES|QL rule
        if chosen is None:
            out.skipped.append((rule_id, title, "; ".join(reasons) or "not converted"))
            continue
        name, converted = chosen
        out.documents.append(_document(out.target, name, rule, converted, index, interval, table))
        out.converted.append(rule_id)


def _convert(
    backend: Any, rule: SigmaRule | SigmaCorrelationRule, fmt: str
) -> tuple[SigmaRule | SigmaCorrelationRule, Any, str | None]:
    tags = list(rule.tags)  # the backends' threat model removes the attack tags from the rule
    try:
        if isinstance(rule, SigmaCorrelationRule):
            queries = backend.convert_correlation_rule(rule, output_format=fmt)
        else:
            queries = backend.convert_rule(rule, output_format=fmt)
    except NotImplementedError as exc:
        return rule, None, str(exc) or "not supported by the backend"
    except (SigmaError, ValueError) as exc:
        return rule, None, _message(exc)
    finally:
        rule.tags[:] = tags
    if not queries:
        return rule, None, "converted to no query"
    if len(queries) != 1:
        return rule, None, f"converted to {len(queries)} queries, expected one"
    return rule, queries[0], None


def _document(
    target: str,
    backend: str,
    rule: SigmaRule | SigmaCorrelationRule,
    converted: Any,
    index: str,
    interval: str,
    table: AttackTable,
) -> dict[str, Any]:
    level = rule.level.name.lower() if rule.level else None
    if target in ("lucene", "esql"):
        return {
            "id": str(rule.id),
            "title": rule.title,
            "level": level,
            "index": index,
            "language": "lucene" if backend == "lucene" else "esql",
            "query": str(converted),
        }
    doc = dict(cast(Mapping[str, Any], converted))
    if target == "kibana-ndjson":
        attributes = dict(doc["attributes"])
        attributes["title"] = rule.title
        attributes["description"] = (rule.description or "").strip()
        doc["attributes"] = attributes
        return doc
    severity, risk = SEVERITY.get(level or "low", SEVERITY["low"])
    tags = [str(t) for t in rule.tags]
    references = [str(r) for r in (rule.references or [])]
    lookback = _interval(interval)
    lookback_s = lookback[0] * _SECONDS[lookback[1]]
    if isinstance(rule, SigmaCorrelationRule):  # the query's window must hold the timespan
        lookback_s += int(rule.timespan.seconds)
    doc.update(
        {
            "rule_id": str(rule.id),
            "id": str(rule.id),
            "name": rule.title,
            "description": (rule.description or "").strip() or rule.title,
            "author": [rule.author or AUTHOR],
            "license": rule.license or LICENSE,
            "severity": severity,
            "risk_score": risk,
            "threat": threat(rule, table),
            "tags": ["ics-soc", "sigma", *tags],
            "references": references,
            "false_positives": [str(f) for f in (rule.falsepositives or [])],
            "interval": interval,
            "from": f"now-{lookback_s}s",
            "enabled": False,
        }
    )
    if doc.get("type") == "query":
        doc["index"] = [index]
    return doc


def threat(rule: SigmaRule | SigmaCorrelationRule, table: AttackTable) -> list[dict[str, Any]]:
    """Elastic's ``threat`` of a rule: its ATT&CK for ICS techniques under their tactics.

    Techniques and tactics come from the rule's ``attack.*`` tags and our table (for a
    correlation without tags, from the rules it refers to); a technique sits under the rule's
    tactic tags it belongs to, else under all its tactics.
    """
    tags: list[str] = [str(t) for t in rule.tags]
    if isinstance(rule, SigmaCorrelationRule) and not any(t.startswith("attack.t") for t in tags):
        tags = [str(t) for ref in rule.referenced_rules for t in getattr(ref.rule, "tags", [])]
    techniques, tactics = _attack(tuple(tags), table)
    by_tactic: dict[str, list[dict[str, Any]]] = {}
    for tid in techniques:
        technique = table.techniques.get(tid)
        if technique is None:
            continue
        under = [t for t in technique.tactics if t in tactics] or list(technique.tactics)
        entry = {
            "id": tid,
            "name": technique.name,
            "reference": f"{ATTACK_URL}/techniques/{tid}/",
            "subtechnique": [],
        }
        for short in under:
            by_tactic.setdefault(short, []).append(entry)
    out = []
    for tactic in table.tactics:  # the matrix's order
        if tactic.short_name in by_tactic:
            out.append(
                {
                    "framework": "MITRE ATT&CK",
                    "tactic": {
                        "id": tactic.id,
                        "name": tactic.name,
                        "reference": f"{ATTACK_URL}/tactics/{tactic.id}/",
                    },
                    "technique": by_tactic[tactic.short_name],
                }
            )
    return out
