"""Sigma rules, compiled by pySigma to SQL over the store's ``events`` table; checked and tested.

The pieces, each usable alone:

- **Loading.** Every ``rules/<service>/*.yml`` (never ``*.tests.yml``) is one
  :class:`~sigma.collection.SigmaCollection`: a rule and the correlation rules that refer to it,
  as separate YAML documents, references resolved within the file.
- **Compilation** (:func:`compile_rules`). pySigma applies our processing pipeline
  (``rules/pipelines/ics.yml``: site placeholders from ``[detect.site]``, log source -> dataset)
  and its SQLite backend writes the query, ``SELECT * FROM logs WHERE `modbus.function_code`=5
  ...``, or for a correlation rule a ``WITH`` query of window functions over ``logs``. ``logs``
  is a common table expression we put in front (:func:`logs_select`): one row per stored event
  with ``id``, ``ts`` (µs) and one column per field the rule names, named exactly like the dotted
  field and read from the event's JSON (or from the store's promoted columns). List fields
  (:data:`LIST_FIELDS`) hold JSON arrays, and the backend (:class:`StoreBackend`) tests their
  elements (``EXISTS (SELECT 1 FROM json_each(...) WHERE value = ...)``).
- **Running** (:func:`execute`, :func:`run_on_events`). A compiled rule runs on any connection
  holding an ``events`` table (the store, or an in-memory copy of a few events); the SQL does
  not depend on where it runs, and a caller can narrow the events read (``where``).
- **Checking and testing** (:func:`check_rules`, :func:`run_tests`): pySigma's validators,
  offline, and ours; the test cases kept beside each rule (``<slug>.tests.yml``).

Nothing here touches the network: ATT&CK data comes from ``rules/attack_ics.json``
(:mod:`detectors.attack`), and the pipeline uses no remote placeholder source.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import apsw
import orjson
import yaml
from sigma.backends.sqlite.sqlite import sqliteBackend
from sigma.collection import SigmaCollection
from sigma.conditions import ConditionFieldEqualsValueExpression
from sigma.conversion.state import ConversionState
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRuleLocation, SigmaValueError
from sigma.processing.pipeline import ProcessingPipeline
from sigma.processing.transformations import transformations
from sigma.processing.transformations.placeholder import ValueListPlaceholderTransformation
from sigma.rule import SigmaRule
from sigma.types import (
    Placeholder,
    SigmaExists,
    SigmaExpansion,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
    SigmaType,
)
from sigma.validators.base import SigmaRuleValidator, SigmaValidationIssue
from sigma.validators.core import validators as core_validators
from sigma.validators.core.metadata import DuplicateFilenameIssue, FilenameLengthIssue
from sigma.validators.core.tags import ATTACKTagValidator

from detectors.attack import AttackTable, install_offline, load_table
from rules import rules_dir as bundled_rules_dir
from soc.config import LAB_SITE
from soc.errors import RuleError, StoreError
from soc.event import get_field
from soc.store.migrations import MIGRATIONS, PROMOTED_FIELDS
from soc.store.sqlite import prepare_rows
from soc.types import Event

#: The services of the log-source taxonomy (``logsource: {product: ics, service: ...}``).
SERVICES = ("modbus", "opcua", "dlms", "mqtt")
FLOW_CATEGORY = "network_connection"
PIPELINE_FILE = Path("pipelines") / "ics.yml"
TESTS_SUFFIX = ".tests.yml"

#: Event fields that hold a JSON array. A rule's ``field: value`` on one of them matches when any
#: element does, as in Elasticsearch; on the SQLite store that needs the field declared here (a
#: field that is a list in a test case's events but not declared is reported by the test run).
LIST_FIELDS = frozenset(
    {
        "event.category",
        "event.type",
        "related.ip",
        "related.hosts",
        "modbus.anomalies",
        "modbus.request.values",
        "modbus.response.values",
        "modbus.request.records",
        "modbus.response.records",
        "opcua.nodes",
        "opcua.write.values",
        "dlms.obis",  # these four are lists in a with-list request, numbers or text otherwise
        "dlms.class_id",
        "dlms.attribute",
        "dlms.method",
        "dlms.anomalies",
        "mqtt.topics",
        "mqtt.anomalies",
    }
)

#: Fields the store keeps in columns of their own (cheaper than JSON, and indexed).
_COLUMNS: Mapping[str, str] = {
    "event.id": "id",
    "event.dataset": "dataset",
    **PROMOTED_FIELDS,
}
_FIELD_NAME = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9_@\-]*(\.[A-Za-z0-9_@][A-Za-z0-9_@\-]*)*")
_TECHNIQUE_TAG = re.compile(r"t\d{4}(\.\d{3})?")
_INSERT_COLUMNS = ("id", "ts", "dataset", *PROMOTED_FIELDS.values(), "doc")
_INSERT = (
    f"INSERT OR IGNORE INTO events ({', '.join(_INSERT_COLUMNS)})"  # noqa: S608 - fixed names
    f" VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})"
)


# -- the pipeline's site placeholders ---------------------------------------------------------


@dataclass
class SitePlaceholderTransformation(ValueListPlaceholderTransformation):
    """``%name%`` (with ``|expand``) -> the values of ``name`` in the pipeline's ``vars``.

    pySigma's ``value_placeholders`` turns an empty list into an error (and an empty value list
    would read as "field is null"), and makes every value a string, which SQLite never finds
    equal to a stored number. Here a placeholder whose list is empty makes the value one no
    event carries (-1, ``0.0.0.0`` for an address, the empty string otherwise; for a regular
    expression too), the values of ``numeric_fields`` become numbers, and an unknown name is an
    error that names it.
    """

    numeric_fields: list[str] = field(default_factory=list)

    def apply_value(self, field: str | None, val: SigmaType) -> Any:
        if not isinstance(val, SigmaString | SigmaRegularExpression):
            return None
        if not val.contains_placeholder(self.include, self.exclude):
            return None
        numeric = field in self.numeric_fields
        parts = val.regexp.s if isinstance(val, SigmaRegularExpression) else val.s
        names = [p.name for p in parts if isinstance(p, Placeholder)]
        if any(not self._values(name) for name in names):  # unknown names raise here
            return [_never_value(field, numeric)]  # an empty list: nothing can match
        if isinstance(val, SigmaString) and len(parts) == 1:  # the usual '%name%'
            return [self._typed(field, v, numeric) for v in self._values(names[0])]
        expanded = val.replace_placeholders(self.placeholder_replacements_base)
        if numeric and isinstance(val, SigmaString):
            return [self._typed(field, str(v), numeric) for v in expanded]
        return expanded

    def placeholder_replacements(self, p: Placeholder) -> list[SigmaString]:
        return [SigmaString(v) for v in self._values(p.name)]

    def _values(self, name: str) -> list[str]:
        site = {  # pySigma adds the backend's options to the variables: not site values
            k: v
            for k, v in (self._pipeline.vars if self._pipeline is not None else {}).items()
            if not k.startswith("backend") and k != "output_format"
        }
        if name not in site:
            known = ", ".join(sorted(site)) or "none"
            raise SigmaValueError(
                f"unknown placeholder %{name}%: not in the configuration's [detect.site]"
                f" (known: {known})"
            )
        values = site[name]
        return [str(v) for v in (values if isinstance(values, list | tuple) else [values])]

    @staticmethod
    def _typed(field: str | None, value: str, numeric: bool) -> SigmaType:
        if not numeric:
            return SigmaString(value)
        try:
            prefixed = value.lower().startswith(("0x", "0o", "0b"))
            return SigmaNumber(int(value, 0) if prefixed else int(value))
        except ValueError:
            raise SigmaValueError(
                f"{field} takes numbers, but the site gives it {value!r}"
            ) from None


def _never_value(field: str | None, numeric: bool) -> SigmaType:
    if numeric:
        return SigmaNumber(-1)
    if field is not None and field.rsplit(".", 1)[-1] == "ip":
        return SigmaString("0.0.0.0")  # noqa: S104 - a value to compare with, never bound
    return SigmaString("")


transformations["ics_site_placeholders"] = SitePlaceholderTransformation


def load_pipeline(
    site: Mapping[str, Sequence[str]], path: Path | None = None
) -> ProcessingPipeline:
    """Our processing pipeline (``rules/pipelines/ics.yml``) with ``site`` as its variables."""
    path = path or bundled_rules_dir() / PIPELINE_FILE
    try:
        text = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():  # pySigma parses rule_cond_expr with a deprecated
            warnings.simplefilter("ignore", DeprecationWarning)  # pyparsing name (parseString)
            pipeline = ProcessingPipeline.from_yaml(text)
    except (OSError, SigmaError, yaml.YAMLError) as exc:
        raise RuleError(f"cannot load the processing pipeline: {exc}", location=str(path)) from exc
    pipeline.vars = {name: list(values) for name, values in site.items()}
    return pipeline


# -- the backend ------------------------------------------------------------------------------

_ELEMENT = "value"  # the element column of SQLite's json_each()


class StoreBackend(sqliteBackend):
    """pySigma's SQLite backend, set for our store: ``ts`` in µs, ``id``, list fields.

    Correlation windows read ``ts`` (µs since the epoch) and events are known by ``id``
    (``event.id``). Strings compare case-insensitively, as Sigma says. A condition on a field of
    ``list_fields`` is written for one element and tested on each (``json_each``).
    """

    list_fields = LIST_FIELDS

    def __init__(self, pipeline: ProcessingPipeline) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            pipeline,
            timestamp_field="ts",
            timestamp_format="unix_us",
            event_id_field="id",
            collate_nocase=True,
        )

    def convert_condition_field_eq_val(
        self, cond: ConditionFieldEqualsValueExpression, state: ConversionState
    ) -> Any:
        name = cond.field
        if name not in self.list_fields or isinstance(
            cond.value, SigmaExists | SigmaNull | SigmaExpansion
        ):
            return super().convert_condition_field_eq_val(cond, state)
        cond.field = _ELEMENT
        try:
            element = super().convert_condition_field_eq_val(cond, state)
        finally:
            cond.field = name
        return f"EXISTS (SELECT 1 FROM json_each({_quote(name)}) WHERE {element})"  # noqa: S608

    def fields_of(self, rule: SigmaRule | SigmaCorrelationRule) -> list[str]:
        """The event fields the converted rule reads (``id`` and ``ts`` aside)."""
        if isinstance(rule, SigmaCorrelationRule):
            plan = self._correlation_plans[id(rule)]
            names = {f for fs in plan["required_fields"].values() for f in fs}
        else:
            names = set(self.required_fields(rule))  # type: ignore[no-untyped-call]
        return sorted(names - {"id", "ts"})


# -- compiled rules and the SQL around them ---------------------------------------------------


@dataclass(frozen=True)
class CompiledRule:
    """One rule that raises alerts, compiled to SQL over ``logs`` (see :func:`logs_select`).

    ``query`` is what pySigma wrote; ``sql`` the whole statement over the ``events`` table (base
    rules return ``id, ts`` rows; correlation rules pySigma's alert rows). :meth:`statement` gives
    the same over another table, or a subset of it.
    """

    id: str
    title: str
    level: str | None
    status: str | None
    tags: tuple[str, ...]
    techniques: tuple[str, ...]  # T0855 ...
    #: ATT&CK for ICS tactics (short names): the rule's tactic tags, else its techniques' tactics
    tactics: tuple[str, ...]
    query: str
    fields: tuple[str, ...]
    is_correlation: bool
    path: Path
    description: str = ""
    falsepositives: tuple[str, ...] = ()
    correlation_type: str | None = None  # event_count, value_count, temporal ...
    timespan_s: float | None = None  # the correlation's window
    group_by: tuple[str, ...] = ()
    sql: str = field(default="", compare=False)
    #: a correlation's stages as pySigma plans them (``prepare``: name, select, indexes; then
    #: ``query``), for :func:`execute` to materialise with indexes on large inputs
    plan: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def statement(self, source: str = "events", where: str | None = None) -> str:
        """The rule's statement over ``source`` (a table or view with the ``events`` columns),
        reading only its rows that satisfy ``where`` (SQL over those columns, e.g. ``seq > ?``)."""
        logs = f"logs AS ({logs_select(self.fields, source, where)})"
        if self.is_correlation:
            if not self.query.startswith("WITH "):
                raise RuleError("unexpected correlation query shape", location=str(self.path))
            return f"WITH {logs}, {self.query.removeprefix('WITH ')}"
        return f"WITH {logs} SELECT id, ts FROM ({self.query})"  # noqa: S608 - pySigma's SQL


def field_sql(name: str) -> str:
    """The SQL expression of a dotted event field over an ``events`` row."""
    if name in _COLUMNS:
        return _COLUMNS[name]
    if not _FIELD_NAME.fullmatch(name):
        raise RuleError(f"not a field name: {name!r}")
    path = "$." + ".".join(f'"{part}"' for part in name.split("."))
    if name in LIST_FIELDS:
        return f"(doc -> '{path}')"  # JSON text, for json_each
    return f"json_extract(doc, '{path}')"


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def logs_select(fields: Iterable[str], source: str = "events", where: str | None = None) -> str:
    """``SELECT id, ts, <field> AS `<field>`, ... FROM source [WHERE ...]``: the relation the
    backend's queries read as ``logs``."""
    columns = ["id", "ts", *(f"{field_sql(f)} AS {_quote(f)}" for f in fields)]
    sql = f"SELECT {', '.join(columns)} FROM {source}"  # noqa: S608 - checked names
    return f"{sql} WHERE {where}" if where else sql


# -- loading ----------------------------------------------------------------------------------


def rule_files(rules_dir: Path | None = None) -> list[Path]:
    """Every rule file: ``<rules_dir>/<folder>/*.yml`` except tests and the pipelines."""
    root = rules_dir or bundled_rules_dir()
    return sorted(
        path
        for path in root.glob("*/*.yml")
        if not path.name.endswith(TESTS_SUFFIX) and path.parent.name != PIPELINE_FILE.parent.name
    )


def tests_path(rule_file: Path) -> Path:
    """Where a rule file's test cases live: ``<slug>.tests.yml`` beside it."""
    return rule_file.with_name(rule_file.stem + TESTS_SUFFIX)


def load_rule_file(path: Path, *, collect_errors: bool = False) -> SigmaCollection:
    """Parse one rule file (rules and the correlations between them), references resolved."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleError(f"cannot read the rule file: {exc.strerror}", location=str(path)) from exc
    try:
        collection = SigmaCollection.from_yaml(
            text, collect_errors=collect_errors, source=SigmaRuleLocation(path)
        )
    except yaml.YAMLError as exc:
        raise RuleError(f"not valid YAML: {_yaml_problem(exc)}", location=str(path)) from exc
    except SigmaError as exc:
        raise RuleError(_message(exc), location=str(path)) from exc
    if not collect_errors and not list(collection):
        raise RuleError("no rule in the file", location=str(path))
    return collection


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


def _message(exc: BaseException) -> str:
    """The error's message without the file pySigma appends to it (the location says it)."""
    return str(exc.args[0]) if exc.args else str(exc)


def _label(rule: SigmaRule | SigmaCorrelationRule) -> str:
    return f"rule {rule.id}" if rule.id is not None else f"rule {rule.name or rule.title!r}"


# -- compilation ------------------------------------------------------------------------------


def compile_rules(
    rules_dir: Path | None = None,
    site: Mapping[str, Sequence[str]] | None = None,
    *,
    pipeline_path: Path | None = None,
) -> list[CompiledRule]:
    """Compile every rule file under ``rules_dir`` (default: the bundled rules) for the site.

    ``site`` maps placeholder names to values (default: the lab's, ``soc.config.LAB_SITE``).
    The first rule that does not load or compile raises :class:`~soc.errors.RuleError` naming
    its file and the rule.
    """
    compiled: list[CompiledRule] = []
    seen: dict[str, Path] = {}
    for path in rule_files(rules_dir):
        for rule in compile_file(path, site, pipeline_path=pipeline_path):
            if rule.id in seen:
                raise RuleError(
                    f"rule id {rule.id} is also used in {seen[rule.id]}", location=str(path)
                )
            seen[rule.id] = path
            compiled.append(rule)
    return compiled


def compile_file(
    path: Path,
    site: Mapping[str, Sequence[str]] | None = None,
    *,
    pipeline_path: Path | None = None,
) -> list[CompiledRule]:
    """Compile the rules of one file that raise alerts (standalone rules, correlation rules)."""
    site = LAB_SITE if site is None else site
    install_offline()
    collection = load_rule_file(path)  # afresh: the pipeline changes the rules it converts
    backend = StoreBackend(load_pipeline(site, pipeline_path))
    table = load_table()
    out: list[CompiledRule] = []
    for rule in _conversion_order(collection, path):
        try:
            if isinstance(rule, SigmaCorrelationRule):
                queries = backend.convert_correlation_rule(rule)  # type: ignore[no-untyped-call]
            else:
                queries = backend.convert_rule(rule)  # type: ignore[no-untyped-call]
        except (SigmaError, ValueError, NotImplementedError) as exc:
            raise RuleError(f"{_label(rule)}: {_message(exc)}", location=str(path)) from exc
        if not rule._output:  # a base rule only a correlation uses
            continue
        if not queries or not all(isinstance(q, str) for q in queries):
            raise RuleError(f"{_label(rule)}: compiled to no query", location=str(path))
        if rule.id is None:
            raise RuleError(f"{_label(rule)}: no id", location=str(path))
        out.append(_compiled(rule, cast(list[str], queries), backend, table, path))
    return out


def _conversion_order(
    collection: SigmaCollection, path: Path
) -> list[SigmaRule | SigmaCorrelationRule]:
    """Base rules first, then each correlation after the correlations it refers to."""
    rules = [r for r in collection if isinstance(r, SigmaRule | SigmaCorrelationRule)]
    ordered: list[SigmaRule | SigmaCorrelationRule] = [r for r in rules if isinstance(r, SigmaRule)]
    pending = [r for r in rules if isinstance(r, SigmaCorrelationRule)]
    done = {id(r) for r in ordered}
    while pending:
        ready = [
            c
            for c in pending
            if all(
                not isinstance(ref.rule, SigmaCorrelationRule) or id(ref.rule) in done
                for ref in c.referenced_rules
            )
        ]
        if not ready:
            raise RuleError("correlation rules refer to each other in a cycle", location=str(path))
        ordered += ready
        done |= {id(c) for c in ready}
        pending = [c for c in pending if id(c) not in done]
    return ordered


def _compiled(
    rule: SigmaRule | SigmaCorrelationRule,
    queries: list[str],
    backend: StoreBackend,
    table: AttackTable,
    path: Path,
) -> CompiledRule:
    is_correlation = isinstance(rule, SigmaCorrelationRule)
    if is_correlation and len(queries) != 1:
        raise RuleError(f"{_label(rule)}: expected one correlation query", location=str(path))
    tags = tuple(str(t) for t in rule.tags)
    own = _attack(tags, table)
    if is_correlation and not own[0]:  # a correlation without tags: its rules' techniques
        assert isinstance(rule, SigmaCorrelationRule)
        inherited = [str(t) for ref in rule.referenced_rules for t in getattr(ref.rule, "tags", [])]
        own = _attack(tuple(inherited), table)
    try:
        fields = tuple(backend.fields_of(rule))
        for name in fields:
            field_sql(name)
    except RuleError as exc:
        raise RuleError(f"{_label(rule)}: {exc.message}", location=str(path)) from exc
    correlation = rule if isinstance(rule, SigmaCorrelationRule) else None
    compiled = CompiledRule(
        id=str(rule.id),
        title=rule.title,
        level=rule.level.name.lower() if rule.level else None,
        status=rule.status.name.lower() if rule.status else None,
        tags=tags,
        techniques=own[0],
        tactics=own[1],
        query=" UNION ".join(queries),
        fields=fields,
        is_correlation=is_correlation,
        path=path,
        description=rule.description or "",
        falsepositives=tuple(rule.falsepositives or ()),
        correlation_type=correlation.type.name.lower() if correlation else None,
        timespan_s=float(correlation.timespan.seconds) if correlation else None,
        group_by=tuple(correlation.group_by or ()) if correlation else (),
        plan=backend._correlation_plans[id(rule)] if correlation else None,
    )
    return replace(compiled, sql=compiled.statement())


def _attack(tags: Sequence[str], table: AttackTable) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ATT&CK for ICS techniques (T0855) and tactics (short names) of a rule's tags."""
    techniques: list[str] = []
    tactics: list[str] = []
    for tag in tags:
        namespace, _, name = tag.partition(".")
        if namespace != "attack":
            continue
        if _TECHNIQUE_TAG.fullmatch(name):
            techniques.append(name.upper())
        elif table.tactic(name) is not None:
            tactics.append(name)
    if not tactics:  # no tactic tag: every tactic of the techniques
        tactics = [
            tactic
            for t in techniques
            if t in table.techniques
            for tactic in table.techniques[t].tactics
        ]
    return tuple(dict.fromkeys(techniques)), tuple(dict.fromkeys(tactics))


# -- running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """What one rule found: the events, and for a correlation its window, group and metric."""

    rule_id: str
    event_ids: tuple[str, ...]
    ts: int  # µs: the event's time, or the end of the correlation's window
    window_start: int | None = None
    group: Mapping[str, Any] = field(default_factory=dict)
    metric: float | None = None


def prepare_connection(conn: apsw.Connection) -> None:
    """Give a connection what compiled rules may call: ``REGEXP`` (Sigma's ``|re``)."""
    conn.create_scalar_function("regexp", _regexp, 2, deterministic=True)


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp(*args: Any) -> int:
    pattern, value = args
    if pattern is None or value is None:
        return 0
    return int(_pattern(str(pattern)).search(str(value)) is not None)


def execute(
    conn: apsw.Connection,
    rule: CompiledRule,
    *,
    source: str = "events",
    where: str | None = None,
    params: Sequence[Any] = (),
    materialize: bool = False,
) -> list[Hit]:
    """Run a compiled rule on ``conn`` (which :func:`prepare_connection` prepared) over the rows
    of ``source`` that satisfy ``where`` (with ``params``).

    A correlation runs as one statement, or with ``materialize`` stage by stage into indexed
    temporary tables as pySigma plans it: the same rows, about 2.5 times faster on thousands of
    events (the one statement suits a test case's few).
    """
    try:
        if rule.is_correlation and materialize:
            rows = _run_plan(conn, rule, source, where, params)
        else:
            sql = (
                rule.sql if source == "events" and where is None else rule.statement(source, where)
            )
            rows = list(conn.execute(sql, tuple(params)))
    except apsw.Error as exc:
        raise StoreError(
            f"rule {rule.id} failed: {type(exc).__name__}: {exc}", location=str(rule.path)
        ) from exc
    if not rule.is_correlation:
        return [Hit(rule.id, (str(eid),), int(ts)) for eid, ts in rows]
    # pySigma's alert rows: alert_id, group_keys, occurrence_time, window_start, window_end,
    # metric_name, metric_value, event_count, event_ids ("<source>:<id>"), child_alert_ids
    hits = []
    for _alert, group, _occurred, start, end, _name, metric, _count, event_ids, _kids in rows:
        hits.append(
            Hit(
                rule.id,
                tuple(str(e).split(":", 1)[-1] for e in orjson.loads(event_ids)),
                round(float(end) * 1_000_000),
                round(float(start) * 1_000_000),
                orjson.loads(group),
                float(metric) if metric is not None else None,
            )
        )
    return hits


def _run_plan(
    conn: apsw.Connection, rule: CompiledRule, source: str, where: str | None, params: Sequence[Any]
) -> list[Any]:
    """pySigma's correlation plan, stage by stage into temporary tables (its runtime module
    does the same on a ``sqlite3`` connection; this one is APSW)."""
    if rule.plan is None or rule.plan.get("version") != 2:
        raise RuleError(f"rule {rule.id}: no correlation plan", location=str(rule.path))
    created: list[str] = []
    try:
        conn.execute(f"CREATE TEMP TABLE logs AS {logs_select(rule.fields, source, where)}", params)
        created.append("logs")
        for stage in rule.plan["prepare"]:
            name = stage["name"]
            if not re.fullmatch(r"sigma_[A-Za-z0-9_]+", name):
                raise RuleError(
                    f"rule {rule.id}: unexpected stage {name!r}", location=str(rule.path)
                )
            conn.execute(f"CREATE TEMP TABLE {name} AS {stage['select']}")
            created.append(name)
            for i, columns in enumerate(stage["indexes"]):
                conn.execute(
                    f"CREATE INDEX temp.{name}_i{i} ON {name} ({', '.join(map(_quote, columns))})"
                )
        return list(conn.execute(rule.plan["query"]))
    finally:
        for name in reversed(created):
            conn.execute(f"DROP TABLE IF EXISTS temp.{_quote(name)}")


def memory_store(events: Iterable[Event]) -> apsw.Connection:
    """An in-memory database with the store's schema holding just ``events``."""
    conn = apsw.Connection(":memory:")
    prepare_connection(conn)
    for migration in MIGRATIONS:
        for statement in migration.statements:
            conn.execute(statement)
    rows = prepare_rows(events)
    with conn:
        conn.executemany(_INSERT, rows)
    return conn


def run_on_events(
    compiled: Iterable[CompiledRule], events: Iterable[Event]
) -> dict[str, list[str]]:
    """Each rule's matching event ids over exactly ``events`` (rules with no match included).

    For a correlation rule, the events of every window that met its condition.
    """
    conn = memory_store(events)
    try:
        result: dict[str, list[str]] = {}
        for rule in compiled:
            ids = [eid for hit in execute(conn, rule) for eid in hit.event_ids]
            result[rule.id] = list(dict.fromkeys(ids))
        return result
    finally:
        conn.close()


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when present: 20x faster

# -- test cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleTestCase:
    """One case of a ``.tests.yml`` file."""

    rule_id: str
    name: str
    match: bool
    events: tuple[Event, ...]


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one test case."""

    file: str
    rule_id: str
    title: str
    case: str
    expected: bool
    matched: tuple[str, ...]
    passed: bool
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rule_id": self.rule_id,
            "title": self.title,
            "case": self.case,
            "expected_match": self.expected,
            "matched_event_ids": list(self.matched),
            "passed": self.passed,
            "error": self.error,
        }


def load_tests(path: Path) -> list[RuleTestCase]:
    """The cases of a ``<slug>.tests.yml`` file; a malformed file raises ``RuleError``."""
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)  # noqa: S506 - safe
    except OSError as exc:
        raise RuleError(f"cannot read the tests: {exc.strerror}", location=str(path)) from exc
    except yaml.YAMLError as exc:
        raise RuleError(f"not valid YAML: {_yaml_problem(exc)}", location=str(path)) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise RuleError("expected a mapping with 'rule' and a list of 'cases'", location=str(path))
    default_rule = doc.get("rule")
    cases: list[RuleTestCase] = []
    for number, case in enumerate(doc["cases"], start=1):
        where = f"{path}: case {number}"
        if not isinstance(case, dict):
            raise RuleError("a case is a mapping (name, match, events)", location=where)
        rule_id = case.get("rule", default_rule)
        name = case.get("name", f"case {number}")
        events = case.get("events")
        if not isinstance(rule_id, str) or not rule_id:
            raise RuleError("no 'rule' id (file-level or in the case)", location=where)
        if not isinstance(case.get("match"), bool):
            raise RuleError("'match' must be true or false", location=where)
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise RuleError("'events' must be a list of ECS events (mappings)", location=where)
        cases.append(RuleTestCase(rule_id, str(name), case["match"], tuple(events)))
    return cases


def run_tests(
    rules_dir: Path | None = None, site: Mapping[str, Sequence[str]] | None = None
) -> list[CaseResult]:
    """Run every rule file's test cases (files without tests give no result)."""
    results: list[CaseResult] = []
    for path in rule_files(rules_dir):
        results += run_file_tests(path, site)
    return results


def run_file_tests(path: Path, site: Mapping[str, Sequence[str]] | None = None) -> list[CaseResult]:
    """Run the test cases of one rule file against its compiled rules."""
    tests = tests_path(path)
    if not tests.exists():
        return []
    name = str(path)
    try:
        compiled = {rule.id: rule for rule in compile_file(path, site)}
        cases = load_tests(tests)
    except RuleError as exc:  # the whole file fails: one result says why
        return [CaseResult(name, "-", path.name, "(rule file)", True, (), False, exc.message)]
    results = []
    for case in cases:
        rule = compiled.get(case.rule_id)
        if rule is None:
            error = f"no alerting rule with id {case.rule_id} in {path.name}"
            results.append(
                CaseResult(name, case.rule_id, "-", case.name, case.match, (), False, error)
            )
            continue
        try:
            _check_case_events(rule, case)
            matched = tuple(run_on_events([rule], case.events)[rule.id])
        except (RuleError, StoreError) as exc:
            results.append(
                CaseResult(name, rule.id, rule.title, case.name, case.match, (), False, str(exc))
            )
            continue
        passed = bool(matched) == case.match
        results.append(
            CaseResult(name, rule.id, rule.title, case.name, case.match, matched, passed)
        )
    return results


def _check_case_events(rule: CompiledRule, case: RuleTestCase) -> None:
    """Refuse events a rule would silently misread: duplicate ids, undeclared list fields."""
    ids = [get_field(e, "event.id") for e in case.events]
    if len(set(map(str, ids))) != len(ids):
        raise RuleError(f"case {case.name!r}: two events share an event.id")
    for event in case.events:
        for name in rule.fields:
            if name not in LIST_FIELDS and isinstance(get_field(event, name), list):
                raise RuleError(
                    f"case {case.name!r}: {name} is a list in the events; the SQLite runner"
                    " reads it as one value (declare it in detectors.sigma.LIST_FIELDS)"
                )


# -- checks -----------------------------------------------------------------------------------


class IcsAttackTagValidator(ATTACKTagValidator):
    """pySigma's ATT&CK tag validator over the local ICS table (``attack.ics`` allowed)."""

    def _load_allowed_tags(self) -> set[str]:
        table = load_table()
        return (
            {"ics"}
            | {t.short_name for t in table.tactics}
            | {tid.lower() for tid in table.techniques}
        )


#: pySigma's own validators left out: ``attacktag`` (replaced by :class:`IcsAttackTagValidator`,
#: which reads local ICS data), ``d3_fendtag`` (downloads MITRE D3FEND), and the Windows-specific
#: ``specific_instead_of_generic_logsource``.
SKIPPED_VALIDATORS = frozenset({"attacktag", "d3_fendtag", "specific_instead_of_generic_logsource"})


def validator_classes() -> list[type[SigmaRuleValidator]]:
    """The validators ``soc rules check`` runs: pySigma's (offline ones) and ours."""
    chosen = [
        cls for name, cls in sorted(core_validators.items()) if name not in SKIPPED_VALIDATORS
    ]
    return [*chosen, IcsAttackTagValidator]


def check_rules(
    rules_dir: Path | None = None, site: Mapping[str, Sequence[str]] | None = None
) -> dict[Path, list[str]]:
    """Every problem of every rule file (an empty list: the file is sound).

    pySigma loads each file and its validators run over all of them (identifier and title
    uniqueness, tags, conditions, modifiers ...); then ours: every alerting rule has an id,
    status, level, falsepositives and at least one ``attack.tXXXX`` technique of ATT&CK for ICS;
    the file sits in the folder of its service; it compiles for the site; and its
    ``.tests.yml`` has a positive and a negative case for each alerting rule.
    """
    from sigma.validation import SigmaValidator

    install_offline()
    root = rules_dir or bundled_rules_dir()
    problems: dict[Path, list[str]] = {}
    loaded: dict[Path, SigmaCollection] = {}
    for path in rule_files(root):
        problems[path] = []
        try:
            collection = load_rule_file(path, collect_errors=True)
        except RuleError as exc:
            problems[path].append(exc.message)
            continue
        errors = list(collection.errors) + [e for r in collection for e in r.errors]
        problems[path] += [f"{_message(e)}" for e in errors]
        if not list(collection) and not errors:
            problems[path].append("no rule in the file")
        if not errors:
            loaded[path] = collection
    for stray in sorted(root.glob("*.yml")):
        problems[stray] = ["a rule file belongs in a service folder: rules/<service>/<slug>.yml"]

    validator = SigmaValidator(validator_classes())
    issues: list[SigmaValidationIssue] = []
    for collection in loaded.values():
        for rule in collection:
            issues += validator.validate_rule(cast(SigmaRule, rule))  # correlations too
    issues += validator.finalize()
    for issue in issues:
        for rule in issue.rules:
            where = rule.source.path if rule.source is not None else None
            if where is None or where not in problems:
                continue
            about_file = isinstance(issue, FilenameLengthIssue | DuplicateFilenameIssue)
            text = _issue_text(issue) if about_file else f"{_label(rule)}: {_issue_text(issue)}"
            if text not in problems[where]:
                problems[where].append(text)

    table = load_table()
    for path, collection in loaded.items():
        problems[path] += _metadata_problems(path, collection, table)
        compiled: list[CompiledRule] = []
        try:
            compiled = compile_file(path, site)
        except RuleError as exc:
            problems[path].append(f"does not compile: {exc.message}")
        problems[path] += _test_problems(path, compiled)
    return problems


def _issue_text(issue: SigmaValidationIssue) -> str:
    extra = ", ".join(
        f"{k}={v}"
        for k, v in vars(issue).items()
        if k not in ("rules", "severity", "description") and v is not None
    )
    text = f"{issue.description} [{issue.severity.name.lower()}]"
    return f"{text} ({extra})" if extra else text


def _metadata_problems(path: Path, collection: SigmaCollection, table: AttackTable) -> list[str]:
    out: list[str] = []
    for rule in collection:
        if not isinstance(rule, SigmaRule | SigmaCorrelationRule):
            continue
        label = _label(rule)
        if isinstance(rule, SigmaRule):
            source = rule.logsource
            if source.product != "ics" or (
                source.service not in SERVICES and source.category != FLOW_CATEGORY
            ):
                out.append(
                    f"{label}: log source {source.product}/{source.category}/{source.service}"
                    " is not in the taxonomy (rules/TAXONOMY.md)"
                )
            elif source.service is not None and path.parent.name != source.service:
                out.append(f"{label}: a {source.service} rule belongs in rules/{source.service}/")
        for tag in rule.tags:
            name = str(tag.name)
            if tag.namespace == "attack" and name.upper() in table.retired:
                out.append(
                    f"{label}: attack.{name} is {table.retired[name.upper()]} in ATT&CK for ICS"
                )
        if not rule._output:
            continue  # a base rule only its correlation uses: the correlation carries the rest
        missing = [
            what
            for what, present in (
                ("id", rule.id is not None),
                ("status", rule.status is not None),
                ("level", rule.level is not None),
                ("description", bool(rule.description)),
                ("falsepositives", bool(rule.falsepositives)),
            )
            if not present
        ]
        if missing:
            out.append(f"{label}: missing {', '.join(missing)}")
        techniques = [
            str(t.name).upper()
            for t in rule.tags
            if t.namespace == "attack" and _TECHNIQUE_TAG.fullmatch(str(t.name))
        ]
        if not any(t in table.techniques for t in techniques):
            out.append(
                f"{label}: no attack.tXXXX tag of an ATT&CK for ICS technique"
                " (rules/attack_ics.json)"
            )
    return out


def _test_problems(path: Path, compiled: list[CompiledRule]) -> list[str]:
    tests = tests_path(path)
    if not tests.exists():
        return [f"no test cases: {tests.name} is missing"]
    try:
        cases = load_tests(tests)
    except RuleError as exc:
        return [f"{tests.name}: {exc.message} ({exc.location})"]
    out = []
    ids = {rule.id for rule in compiled}
    for unknown in sorted({c.rule_id for c in cases} - ids):
        if compiled:
            out.append(f"{tests.name}: rule {unknown} is not an alerting rule of this file")
    for rule in compiled:
        kinds = {c.match for c in cases if c.rule_id == rule.id}
        for kind, word in ((True, "positive (match: true)"), (False, "negative (match: false)")):
            if kind not in kinds:
                out.append(f"{tests.name}: rule {rule.id} has no {word} case")
    return out
