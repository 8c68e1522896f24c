"""Configuration read in one place: defaults, then ``soc.toml``, then ``SOC_*`` variables.

Every key has a type and a default. A key ``section.name`` is read from ``[section] name = ...``
in ``soc.toml`` and from the environment variable ``SOC_SECTION_NAME`` (top-level keys: ``SOC_NAME``),
the environment winning. A value of the wrong type, or a key in ``soc.toml`` that does not exist,
raises :class:`~soc.errors.ConfigError` naming the key and where the value came from.

Relative paths in ``soc.toml`` are taken from the file's folder; elsewhere, from the working
directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from soc.errors import ConfigError

ENV_PREFIX = "SOC_"
CONFIG_FILE = "soc.toml"


@dataclass(frozen=True)
class StoreSettings:
    """Which backend holds events, and how writes are batched."""

    backend: Literal["sqlite", "elasticsearch"] = "sqlite"
    batch_size: int = 5000

    def __post_init__(self) -> None:
        _require(1 <= self.batch_size <= 1_000_000, "store.batch_size", "between 1 and 1000000")


@dataclass(frozen=True)
class SqliteSettings:
    """The embedded store: one file, WAL mode."""

    path: Path | None = None  # default: <data_dir>/soc.db
    busy_timeout_ms: int = 5000
    synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"
    cache_mb: int = 64
    page_size: int = 16384  # bytes; applies when the file is created

    def __post_init__(self) -> None:
        _require(self.busy_timeout_ms >= 0, "sqlite.busy_timeout_ms", "at least 0")
        _require(self.cache_mb >= 1, "sqlite.cache_mb", "at least 1")
        powers = {2**k for k in range(9, 17)}
        _require(self.page_size in powers, "sqlite.page_size", "a power of two, 512 to 65536")


@dataclass(frozen=True)
class ElasticsearchSettings:
    """The scale-out store (used when ``store.backend = "elasticsearch"``)."""

    url: str | None = None
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class CollectSettings:
    """The passive collectors: protocol ports, pairing and flow limits."""

    modbus_ports: tuple[int, ...] = (502,)
    opcua_ports: tuple[int, ...] = (4840,)
    mqtt_ports: tuple[int, ...] = (1883,)
    #: topic templates whose PUBLISHes are sensor observations (``wellbeing.*`` on the event, and
    #: the store's observations): literal levels, ``+``, and ``{sensor}``, ``{zone}``,
    #: ``{quantity}`` (the lab's stations publish on city/<zone>/<station>/<quantity>)
    mqtt_observation_topics: tuple[str, ...] = ("city/{zone}/{sensor}/{quantity}",)
    dlms_ports: tuple[int, ...] = (4059,)  # the IEC 62056-4-7 wrapper's port, or HDLC over TCP
    dlms_udp_ports: tuple[int, ...] = (4059,)
    #: keys to read ciphered DLMS APDUs, each "SYSTEM_TITLE:BLOCK_CIPHER_KEY:AUTHENTICATION_KEY"
    #: in hex (8, 16 and 16 bytes; the system title is the sender's: a meter's or a client's)
    dlms_keys: tuple[str, ...] = ()
    response_timeout_ms: int = 5000  # a request unanswered this long is reported as such
    idle_timeout_s: int = 300  # a flow silent this long (capture time) is closed
    max_flows: int = 100_000  # flows tracked at once; the longest idle are evicted beyond
    max_pending_kb: int = 256  # out-of-order bytes held per direction before a gap is declared
    observer_name: str = ""  # observer.name of events; empty: this host's name

    def __post_init__(self) -> None:
        _require(all(0 < p < 65536 for p in self.modbus_ports), "collect.modbus_ports", "TCP ports")
        _require(all(0 < p < 65536 for p in self.opcua_ports), "collect.opcua_ports", "TCP ports")
        _require(all(0 < p < 65536 for p in self.mqtt_ports), "collect.mqtt_ports", "TCP ports")
        _require(all(0 < p < 65536 for p in self.dlms_ports), "collect.dlms_ports", "TCP ports")
        _require(
            all(0 < p < 65536 for p in self.dlms_udp_ports), "collect.dlms_udp_ports", "UDP ports"
        )
        _require(self.response_timeout_ms > 0, "collect.response_timeout_ms", "positive")
        _require(self.idle_timeout_s > 0, "collect.idle_timeout_s", "positive")
        _require(self.max_flows >= 10, "collect.max_flows", "at least 10")
        _require(self.max_pending_kb >= 1, "collect.max_pending_kb", "at least 1")
        _require(
            all(_topic_template(t) for t in self.mqtt_observation_topics),
            "collect.mqtt_observation_topics",
            "topic templates: levels that are names, + or {name}",
        )
        _require(
            all(_dlms_key(k) is not None for k in self.dlms_keys),
            "collect.dlms_keys",
            "SYSTEM_TITLE:BLOCK_CIPHER_KEY:AUTHENTICATION_KEY in hex (8, 16 and 16 bytes)",
        )

    def dlms_key_table(self) -> dict[bytes, tuple[bytes, bytes]]:
        """``dlms_keys`` as system title -> (block cipher key, authentication key)."""
        table = {}
        for text in self.dlms_keys:
            parsed = _dlms_key(text)
            if parsed is not None:
                table[parsed[0]] = (parsed[1], parsed[2])
        return table


def _topic_template(text: str) -> bool:
    from collectors.mqtt import ObservationTopic

    try:
        ObservationTopic.parse(text)
    except ValueError:
        return False
    return True


def _dlms_key(text: str) -> tuple[bytes, bytes, bytes] | None:
    """(system title, block cipher key, authentication key) of one ``dlms_keys`` entry."""
    try:
        title, block, auth = (bytes.fromhex(part) for part in text.split(":"))
    except ValueError:
        return None
    if (len(title), len(block), len(auth)) != (8, 16, 16):
        return None
    return title, block, auth


#: The lab's site (``lab.base.LabSite``, ``lab/plant.py``): what the rules' test cases are written
#: against, and the defaults of ``[detect.site]``. A real site sets its own in ``soc.toml``.
LAB_SITE: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "modbus_masters": ("127.0.10.100",),  # the HMI polls and writes the PLC
        "modbus_servers": ("127.0.10.1",),  # the water-tank PLC
        "modbus_setpoint_registers": ("1", "2", "3", "4"),  # holding registers: setpoints, limits
        "modbus_alarm_registers": ("3", "4"),  # the high-high and low-low limits
        # written values beyond the tank's 4,000 mm (a regular expression, for |re|expand)
        "modbus_setpoint_out_of_range": (
            "^(400[1-9]|40[1-9][0-9]|4[1-9][0-9][0-9]|[5-9][0-9][0-9][0-9]|[1-9][0-9][0-9][0-9][0-9]+)$",
        ),
        "modbus_ports": ("502", "5020"),  # the standard port and the lab PLC's
        "engineering_workstations": (),  # none in the lab
        "opcua_clients": ("127.0.10.100",),  # the SCADA client
        "dlms_head_ends": ("127.0.20.100",),
        "mqtt_publishers": ("127.0.30.11", "127.0.30.12", "127.0.30.13"),  # sensor stations
        "mqtt_subscribers": (),  # consumers of the sensor topics: none in the lab yet
        "mqtt_ports": ("1883",),  # the broker's
    }
)
_SITE_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class DetectSettings:
    """Detection: where the Sigma rules are, and the site knowledge their placeholders name.

    ``site`` maps a placeholder name (``%modbus_masters%`` in a rule, with ``|expand``) to its
    values. ``[detect.site]`` in ``soc.toml`` and ``SOC_DETECT_SITE_<NAME>`` (comma-separated; empty
    for none) set one name each; the names not set keep their defaults (:data:`LAB_SITE`).
    """

    rules_dir: Path | None = None  # default: the rules shipped with the package (rules/)
    site: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(LAB_SITE), hash=False)

    def __post_init__(self) -> None:
        for name, values in self.site.items():
            _require(bool(_SITE_NAME.fullmatch(name)), f"detect.site.{name}", "a lowercase name")
            _require(
                isinstance(values, tuple) and all(isinstance(v, str) and v for v in values),
                f"detect.site.{name}",
                "a list of non-empty strings",
            )


#: The lab's sites (``lab.base.LabSite``): the networks of each, for incidents and for the
#: engineers assigned to a site. A real deployment sets its own in ``[incidents.sites]``.
LAB_SITES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "water_plant": ("127.0.10.0/24",),  # the PLC, the OPC UA server, the HMI
        "smart_grid": ("127.0.20.0/24",),  # the meters and their head-end
        "city_sensors": ("127.0.30.0/24",),  # the broker and the sensor stations
    }
)
#: The lab's assets by criticality (``[incidents.criticality]``: level -> networks/addresses);
#: an asset in none of them is "medium".
LAB_CRITICALITY: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "critical": ("127.0.10.1",),  # the PLC that runs the process
        "high": ("127.0.10.2", "127.0.10.100", "127.0.20.100"),  # OPC UA, HMI, head-end
        "low": ("127.0.30.0/24",),  # the city sensors
    }
)
LEVELS = ("low", "medium", "high", "critical")
Level = Literal["low", "medium", "high", "critical"]


@dataclass(frozen=True)
class IncidentSettings:
    """How alerts become incidents: the time window, the sites and the assets' criticality."""

    window_s: int = 1800  # an alert joins an open incident whose last alert is this close
    sites: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(LAB_SITES), hash=False
    )
    criticality: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(LAB_CRITICALITY), hash=False
    )

    def __post_init__(self) -> None:
        _require(self.window_s > 0, "incidents.window_s", "positive")
        for level in self.criticality:
            _require(
                level in LEVELS, f"incidents.criticality.{level}", "one of " + ", ".join(LEVELS)
            )
        for key, table in (("sites", self.sites), ("criticality", self.criticality)):
            for name, networks in table.items():
                for network in networks:
                    try:
                        ipaddress.ip_network(network, strict=False)
                    except ValueError:
                        _require(
                            False,
                            f"incidents.{key}.{name}",
                            f"addresses or networks, not {network!r}",
                        )


@dataclass(frozen=True)
class NotifySettings:
    """Notifications of new and escalated incidents: a JSON webhook and syslog in CEF."""

    webhook_url: str | None = None
    webhook_secret: str | None = None  # signs each body: X-SOC-Signature: sha256=<HMAC hex>
    webhook_min_level: Level = "high"
    syslog_address: str | None = None  # host:port of a syslog receiver
    syslog_transport: Literal["udp", "tcp"] = "udp"
    syslog_min_level: Level = "medium"
    timeout_s: float = 5.0
    retries: int = 5  # attempts after the first, with exponential back-off
    backoff_s: float = 1.0  # the first retry's delay; doubled each time
    queue_size: int = (
        10_000  # notifications waiting at most; beyond, the oldest are dropped (counted)
    )

    def __post_init__(self) -> None:
        _require(self.timeout_s > 0, "notify.timeout_s", "positive")
        _require(self.retries >= 0, "notify.retries", "at least 0")
        _require(self.backoff_s >= 0, "notify.backoff_s", "at least 0")
        _require(self.queue_size >= 1, "notify.queue_size", "at least 1")
        if self.webhook_url is not None:
            _require(
                self.webhook_url.startswith(("http://", "https://")),
                "notify.webhook_url",
                "an http:// or https:// URL",
            )
        if self.syslog_address is not None:
            host, _, port = self.syslog_address.rpartition(":")
            _require(
                bool(host) and port.isdigit() and 0 < int(port) < 65536,
                "notify.syslog_address",
                "host:port",
            )


@dataclass(frozen=True)
class ApiSettings:
    """``soc serve``: where it listens, its tokens, and its limits per request and per client."""

    host: str = "127.0.0.1"
    port: int = 8000
    secret_file: Path | None = None  # the JWT signing key; default <data_dir>/api-secret, made once
    access_token_minutes: int = 15
    refresh_token_hours: int = 8
    max_body_kb: int = 64  # larger request bodies: 413
    rate_per_s: float = 50.0  # requests per second per client (user, key or address), sustained
    rate_burst: int = 200  # requests a client may send at once before 429
    page_max: int = 500  # the largest page a list route returns
    workers: int = 1  # server processes of `soc serve`

    def __post_init__(self) -> None:
        _require(0 < self.port < 65536, "api.port", "a TCP port")
        _require(self.access_token_minutes >= 1, "api.access_token_minutes", "at least 1")
        _require(self.refresh_token_hours >= 1, "api.refresh_token_hours", "at least 1")
        _require(self.max_body_kb >= 1, "api.max_body_kb", "at least 1")
        _require(self.rate_per_s > 0, "api.rate_per_s", "positive")
        _require(self.rate_burst >= 1, "api.rate_burst", "at least 1")
        _require(self.page_max >= 1, "api.page_max", "at least 1")
        _require(1 <= self.workers <= 64, "api.workers", "1 to 64")


@dataclass(frozen=True)
class Settings:
    """The whole configuration; ``sources`` says where each key's value came from."""

    data_dir: Path = Path("soc-data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    store: StoreSettings = field(default_factory=StoreSettings)
    sqlite: SqliteSettings = field(default_factory=SqliteSettings)
    collect: CollectSettings = field(default_factory=CollectSettings)
    elasticsearch: ElasticsearchSettings = field(default_factory=ElasticsearchSettings)
    detect: DetectSettings = field(default_factory=DetectSettings)
    incidents: IncidentSettings = field(default_factory=IncidentSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sqlite_path(self) -> Path:
        """The SQLite database file: ``sqlite.path``, else ``<data_dir>/soc.db``."""
        return self.sqlite.path if self.sqlite.path is not None else self.data_dir / "soc.db"

    @property
    def api_secret_path(self) -> Path:
        """The API's JWT signing key: ``api.secret_file``, else ``<data_dir>/api-secret``."""
        return (
            self.api.secret_file
            if self.api.secret_file is not None
            else self.data_dir / "api-secret"
        )


def _require(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"must be {what}", location=key)


_SECRET_KEYS = frozenset(
    {"elasticsearch.api_key", "elasticsearch.password", "notify.webhook_secret"}
)


def env_name(key: str) -> str:
    """The environment variable that sets ``key`` (``store.batch_size`` -> ``SOC_STORE_BATCH_SIZE``)."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def load_settings(
    path: Path | None = None, env: Mapping[str, str] | None = None, *, cwd: Path | None = None
) -> Settings:
    """Read the configuration: defaults, then ``path`` (or ``./soc.toml``), then ``env``.

    ``path`` may also come from ``SOC_CONFIG``; a path given explicitly must exist.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    explicit = path if path is not None else _env_path(env)
    file_path = explicit if explicit is not None else cwd / CONFIG_FILE
    table: dict[str, Any] = {}
    if file_path.exists():
        table = _read_toml(file_path)
    elif explicit is not None:
        raise ConfigError(
            f"configuration file not found: {explicit}", location="SOC_CONFIG/--config"
        )
    sources: dict[str, str] = {}
    settings: Settings = _build(Settings, "", table, env, file_path, cwd, sources)
    return replace(settings, sources=sources)


def iter_settings(settings: Settings) -> list[tuple[str, Any, str]]:
    """Every key with its effective value and source, secrets masked; for ``soc config show``."""
    rows: list[tuple[str, Any, str]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            if f.name == "sources":
                continue
            value = getattr(obj, f.name)
            key = prefix + f.name
            if is_dataclass(value):
                walk(value, key + ".")
                continue
            if isinstance(value, Mapping):  # detect.site: one row per name
                for name, item in value.items():
                    rows.append(
                        (f"{key}.{name}", item, settings.sources.get(f"{key}.{name}", "default"))
                    )
                continue
            if key in _SECRET_KEYS and value is not None:
                value = "********"
            rows.append(
                (
                    key,
                    str(value) if isinstance(value, Path) else value,
                    settings.sources.get(key, "default"),
                )
            )

    walk(settings, "")
    return rows


def _env_path(env: Mapping[str, str]) -> Path | None:
    value = env.get(ENV_PREFIX + "CONFIG")
    return Path(value) if value else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", location=str(path)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read configuration: {exc.strerror}", location=str(path)) from exc


def _build(
    cls: type[Any],
    prefix: str,
    table: Mapping[str, Any],
    env: Mapping[str, str],
    file_path: Path,
    cwd: Path,
    sources: dict[str, str],
) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "sources"}
    for name in table:
        if name not in known:
            raise ConfigError(
                f"unknown configuration key in {file_path.name}", location=prefix + name
            )
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name == "sources":
            continue
        key = prefix + f.name
        hint = hints[f.name]
        if isinstance(hint, type) and is_dataclass(hint):
            section = table.get(f.name, {})
            if not isinstance(section, Mapping):
                raise ConfigError(f"expected a [{key}] table in {file_path.name}", location=key)
            values[f.name] = _build(hint, key + ".", section, env, file_path, cwd, sources)
            continue
        if typing.get_origin(hint) is Mapping:
            default = f.default_factory() if callable(f.default_factory) else {}
            values[f.name] = _build_mapping(
                key, default, table.get(f.name), env, file_path, sources
            )
            continue
        variable = env_name(key)
        if variable in env:
            values[f.name] = _cast(env[variable], hint, key, variable, cwd)
            sources[key] = variable
        elif f.name in table:
            values[f.name] = _cast(table[f.name], hint, key, file_path.name, file_path.parent)
            sources[key] = str(file_path.name)
    return cls(**values)


def _build_mapping(
    key: str,
    default: Mapping[str, tuple[str, ...]],
    raw: Any,
    env: Mapping[str, str],
    file_path: Path,
    sources: dict[str, str],
) -> Mapping[str, tuple[str, ...]]:
    """A table of named string lists (``[detect.site]``): the defaults, each name overridden by
    ``soc.toml`` then by ``SOC_<KEY>_<NAME>``."""
    result = dict(default)
    if raw is not None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"expected a [{key}] table in {file_path.name}", location=key)
        for name, value in raw.items():
            result[name] = _string_list(value, f"{key}.{name}", file_path.name)
            sources[f"{key}.{name}"] = file_path.name
    prefix = env_name(key) + "_"
    for variable, value in env.items():
        if variable.startswith(prefix) and len(variable) > len(prefix):
            name = variable[len(prefix) :].lower()
            result[name] = _string_list(value, f"{key}.{name}", variable)
            sources[f"{key}.{name}"] = variable
    for name in result:
        if not _SITE_NAME.fullmatch(name):
            raise ConfigError("must be a lowercase name (a-z, 0-9, _)", location=f"{key}.{name}")
    return result  # a plain dict: settings travel to worker processes (pickle)


def _string_list(raw: Any, key: str, origin: str) -> tuple[str, ...]:
    """A list of strings from TOML (strings or integers) or the environment (comma-separated)."""
    items = [i.strip() for i in raw.split(",")] if isinstance(raw, str) else raw
    if isinstance(raw, str) and not raw.strip():
        items = []
    if not isinstance(items, list) or not all(
        isinstance(i, str | int) and not isinstance(i, bool) for i in items
    ):
        raise ConfigError(
            f"expected a list of strings or integers, got {raw!r} (from {origin})", location=key
        )
    values = tuple(str(i) for i in items)
    if not all(values):
        raise ConfigError(f"empty value in {raw!r} (from {origin})", location=key)
    return values


def _cast(raw: Any, hint: Any, key: str, origin: str, base: Path) -> Any:
    """Cast ``raw`` (a string from the environment or a TOML value) to ``hint``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if raw == "" or raw is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        text = str(raw)
        for choice in args:
            if text.lower() == str(choice).lower():
                return choice
        raise ConfigError(
            f"expected one of {', '.join(map(str, args))}, got {raw!r} (from {origin})",
            location=key,
        )
    try:
        return _scalar(raw, hint, base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"expected {hint.__name__}, got {raw!r} (from {origin})", location=key
        ) from exc


def _scalar(raw: Any, hint: Any, base: Path) -> Any:
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError(raw)
    if hint is int:
        if isinstance(raw, (bool, float)):
            raise TypeError(raw)
        return int(raw)
    if hint is float:
        if isinstance(raw, bool):
            raise TypeError(raw)
        return float(raw)
    if hint is Path:
        if not isinstance(raw, str):
            raise TypeError(raw)
        p = Path(raw).expanduser()
        return p if p.is_absolute() else base / p
    if hint is str:
        if not isinstance(raw, str):
            raise TypeError(raw)
        return raw
    if typing.get_origin(hint) is tuple:  # a list in TOML, comma-separated in the environment
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise TypeError(raw)
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_scalar(i.strip() if isinstance(i, str) else i, item, base) for i in items)
    raise TypeError(f"unsupported setting type {hint}")
