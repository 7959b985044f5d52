"""Config: frozen, keyword-only, validated at construction; store URL parsing; from_env()."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

from memsdk.errors import ConfigError
from memsdk.limits import DYNAMODB_ITEM_LIMIT

__all__ = [
    "Config",
    "Consistency",
    "DynamoDBStoreSpec",
    "RedisSpec",
    "SQLiteStoreSpec",
    "StoreSpec",
    "parse_redis_url",
]

Consistency = Literal["validated", "sticky", "strong"]
_CONSISTENCY_MODES = ("validated", "sticky", "strong")
DynamoDBDataPath = Literal["lean", "aioboto3"]
_DATA_PATHS = ("lean", "aioboto3")

# DynamoDB's item limit is 400 KB; the META update and key overhead need headroom.
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{3,255}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_SENTINEL_SERVICE = re.compile(r"[A-Za-z0-9._\-]{1,128}")
RedisTopology = Literal["standalone", "cluster", "sentinel"]
_REDIS_SCHEMES = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "redis+cluster": ("cluster", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}


@dataclass(frozen=True, slots=True)
class SQLiteStoreSpec:
    """The embedded store: one SQLite file (or ':memory:')."""

    path: str


@dataclass(frozen=True, slots=True)
class DynamoDBStoreSpec:
    """A DynamoDB table, reached through a region endpoint or an explicit endpoint URL."""

    table: str
    region: str
    endpoint: str | None


StoreSpec = SQLiteStoreSpec | DynamoDBStoreSpec

# What Config.telemetry_attributes may name: the only identifying span attributes memsdk
# can emit, each off unless a deployment asks for it.
TELEMETRY_ATTRIBUTES = frozenset({"session_id", "customer_id"})


# A URL scheme that is safe to quote back: a plain word, never credentials or controls.
_PLAIN_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}")


def parse_store_url(url: str) -> StoreSpec:
    """Parse `sqlite:///rel.db`, `sqlite:////abs.db` or `dynamodb://TABLE?region=..&endpoint=..`.

    Messages never quote the URL (it may hold credentials): at most its scheme.
    """
    if not isinstance(url, str) or not url:
        raise ConfigError("store must be a non-empty URL such as sqlite:///memsdk.db")
    if url.startswith("sqlite:"):
        return _parse_sqlite(url)
    if url.startswith("dynamodb:"):
        return _parse_dynamodb(url)
    scheme, sep, _ = url.partition("://")
    named = f" {scheme!r}" if sep and _PLAIN_SCHEME.fullmatch(scheme) else ""
    raise ConfigError(
        f"unsupported store URL scheme{named}: use sqlite:///PATH or dynamodb://TABLE"
    )


def _parse_sqlite(url: str) -> SQLiteStoreSpec:
    # SQLAlchemy convention: three slashes then a relative path, four for an absolute one.
    if not url.startswith("sqlite:///"):
        raise ConfigError(
            "sqlite store URL must look like sqlite:///relative.db or sqlite:////abs.db"
        )
    path = url[len("sqlite:///") :]
    if not path or "?" in path or "\x00" in path:
        raise ConfigError("sqlite store URL needs a file path (or :memory:) and takes no options")
    return SQLiteStoreSpec(path=path)


_DYNAMODB_OPTIONS = ("region", "endpoint", "allow_http")


def _parse_dynamodb(url: str) -> DynamoDBStoreSpec:
    # No message here quotes the URL or a part of it: a misplaced secret (user:password@,
    # a key pasted into an option) must not reach a log through a ConfigError.
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError("dynamodb store URL is malformed (brackets in the host?)") from None
    if parts.scheme != "dynamodb" or not url.startswith("dynamodb://"):
        raise ConfigError("dynamodb store URL must look like dynamodb://TABLE?region=us-east-1")
    table = parts.netloc
    if "@" in table:
        raise ConfigError(
            "dynamodb store URL takes no credentials (user:password@): memsdk uses the AWS "
            "provider chain (environment, profile, SSO, instance or container role)"
        )
    if parts.path not in ("", "/"):
        raise ConfigError("dynamodb store URL takes the table name as its host: dynamodb://TABLE")
    if not _TABLE_NAME.match(table):
        raise ConfigError("invalid DynamoDB table name: it must be 3-255 chars of [A-Za-z0-9_.-]")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    if set(query) - set(_DYNAMODB_OPTIONS):
        raise ConfigError(
            f"unknown dynamodb store URL option: the options are {', '.join(_DYNAMODB_OPTIONS)}"
        )
    for key, values in query.items():
        if len(values) != 1 or not values[0]:
            raise ConfigError(f"dynamodb store URL option {key!r} must be given once, non-empty")
    region = (
        query.get("region", [""])[0]
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION", "")
    )
    if not region:
        raise ConfigError("dynamodb store URL needs region=... (or AWS_REGION in the environment)")
    if not _REGION.match(region):
        raise ConfigError(
            "invalid AWS region in the dynamodb store URL (or AWS_REGION): expected a region "
            "name such as us-east-1"
        )
    allow_http = query.get("allow_http", ["0"])[0]
    if allow_http not in ("0", "1"):
        raise ConfigError("dynamodb store URL option allow_http must be 1 or 0")
    endpoint = query.get("endpoint", [None])[0]
    if endpoint is not None:
        _check_endpoint(endpoint, allow_http=allow_http == "1")
    return DynamoDBStoreSpec(table=table, region=region, endpoint=endpoint)


def _check_endpoint(endpoint: str, *, allow_http: bool) -> None:
    try:
        ep = urlsplit(endpoint)
        ep.port  # noqa: B018 - parsing the port raises ValueError when it is malformed
    except ValueError:
        raise ConfigError("dynamodb endpoint has a malformed host or port") from None
    if ep.scheme not in ("http", "https") or not ep.hostname:
        raise ConfigError("dynamodb endpoint must be an http:// or https:// URL with a host")
    if ep.path not in ("", "/") or ep.query or ep.fragment or ep.username or ep.password:
        raise ConfigError("dynamodb endpoint must be scheme://host[:port] with nothing after it")
    if ep.scheme == "http" and not allow_http and not _is_loopback(ep.hostname):
        # Conversations (and request signatures) would cross the network in cleartext.
        raise ConfigError(
            "dynamodb endpoint uses http:// to a host that is not loopback (127.0.0.0/8, ::1, "
            "localhost): conversations would cross the network unencrypted. Use https://, or "
            "add allow_http=1 to the store URL if that network is trusted"
        )


def _is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); names are not resolved."""
    if host == "localhost":  # urlsplit lowercases hostnames
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name: whatever it resolves to, it may travel the network


@dataclass(frozen=True, slots=True)
class RedisSpec:
    """A parsed redis_url: which Redis to reach and how. Holds the password: never log it."""

    topology: RedisTopology
    tls: bool
    # The server; a cluster's seed node; or every Sentinel, in the URL's order.
    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    service_name: str | None = None  # the Sentinel master name


def parse_redis_url(url: str) -> RedisSpec:
    """Parse `redis://`, `rediss://`, `redis+cluster://` or `redis[s]+sentinel://` URLs.

    Sentinel: `redis+sentinel://[user:password@]host:port,host:port,.../service_name[?db=N]`;
    the credentials are the master's (Sentinels without AUTH). Messages never echo the URL.
    """
    if not isinstance(url, str) or not url:
        raise ConfigError("redis_url must be a non-empty URL such as redis://host:6379/0")
    scheme, sep, rest = url.partition("://")
    kind = _REDIS_SCHEMES.get(scheme.lower()) if sep else None
    if kind is None:
        raise ConfigError(
            "redis_url must use redis://, rediss://, redis+cluster://, redis+sentinel:// "
            "or rediss+sentinel:// (redis+cluster over TLS is not supported)"
        )
    topology, tls = cast(tuple[RedisTopology, bool], kind)
    if topology == "sentinel":
        return _parse_sentinel(rest, tls)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError("redis_url is malformed (bad host or port)") from exc
    if not parts.hostname or port is None:
        raise ConfigError("redis_url must name a host and a port: redis://host:6379")
    if parts.query or parts.fragment:
        # redis-py lets query options override our timeouts and retries: refuse them.
        raise ConfigError("redis_url takes no ?options or #fragment; timeouts are set by memsdk")
    path = parts.path.strip("/")
    if path and (topology == "cluster" or not path.isdigit()):
        raise ConfigError(
            "redis_url path must be a database number (redis://host:6379/0); "
            "redis+cluster:// takes none"
        )
    return RedisSpec(
        topology=topology,
        tls=tls,
        nodes=((parts.hostname, port),),
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _parse_sentinel(rest: str, tls: bool) -> RedisSpec:
    netloc, _, tail = rest.partition("/")
    service, _, query = tail.partition("?")
    if "#" in rest:
        raise ConfigError("redis_url (Sentinel) takes no #fragment")
    userinfo, at, hosts = netloc.rpartition("@")
    if "," in userinfo:
        raise ConfigError(
            "redis_url (Sentinel): credentials go before the first host, percent-encoded "
            "(redis+sentinel://user:password@h1:26379,h2:26379/mymaster)"
        )
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        try:
            parts = urlsplit(f"//{item}")
            port = parts.port
        except ValueError as exc:
            raise ConfigError("redis_url (Sentinel) has a malformed Sentinel host or port") from exc
        if not parts.hostname or port is None or parts.username or parts.password:
            raise ConfigError(
                "redis_url (Sentinel) must list Sentinels as host:port separated by commas: "
                "redis+sentinel://h1:26379,h2:26379,h3:26379/mymaster"
            )
        nodes.append((parts.hostname, port))
    if not _SENTINEL_SERVICE.fullmatch(service):
        raise ConfigError(
            "redis_url (Sentinel) must end with the master's service name (1-128 chars of "
            "[A-Za-z0-9._-]): redis+sentinel://h1:26379,h2:26379/mymaster"
        )
    db = 0
    if query:
        try:
            options = parse_qs(query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise ConfigError("redis_url (Sentinel) has a malformed ?query") from exc
        values = options.pop("db", [])
        if options or len(values) != 1 or not values[0].isdigit():
            # Only the database: timeouts and retries are memsdk's (see redis_timeout).
            raise ConfigError("redis_url (Sentinel) takes one option, ?db=N (a database number)")
        db = int(values[0])
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return RedisSpec(
        topology="sentinel",
        tls=tls,
        nodes=tuple(nodes),
        db=db,
        username=username,
        password=password,
        service_name=service,
    )


# A Redis key namespace: no braces (the hash tag is memsdk's), no spaces or controls.
_KEY_PREFIX = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """Everything memsdk needs to know; a bad value raises ConfigError right here."""

    store: str = "sqlite:///memsdk.db"
    # Out of repr: the URL may hold a password, and a Config is easily logged.
    redis_url: str | None = field(default=None, repr=False)
    # The namespace of this deployment's keys in Redis. None: derived from the store's
    # identity (table and endpoint, or the SQLite file), so that deployments sharing one
    # Redis never see each other's META (docs/security.md).
    redis_key_prefix: str | None = None
    wal_dir: str | None = None
    ttl_seconds: int = 86_400
    last_n: int = 20
    consistency: Consistency = "validated"
    max_turn_bytes: int = 350_000
    l1_max_bytes: int = 64 * 1024 * 1024
    wal_max_bytes: int = 1024 * 1024 * 1024
    read_timeout: float = 0.3
    write_timeout: float = 1.0
    # How long turns and summaries physically outlive their last write. Visibility follows
    # META (one sliding TTL for the whole session); this only bounds how long DynamoDB
    # keeps the bytes of a session that stays active for weeks.
    turn_retention_seconds: int = 30 * 86_400
    max_pool_connections: int = 64
    connect_timeout: float = 1.0
    store_max_attempts: int = 2
    # "lean": msgspec + aiohttp + botocore's SigV4 signer (~2.5x less CPU per call);
    # "aioboto3": the reference client, for regions or features the lean path lacks.
    dynamodb_data_path: DynamoDBDataPath = "lean"
    # Redis is a cache on the hot path: a slow Redis must cost a miss, not a slow reply.
    redis_timeout: float = 0.1
    # The write-ahead log (wal_dir set). Segments are capped at a quarter of wal_max_bytes
    # so that confirmed segments can be deleted well before the budget is reached.
    wal_segment_bytes: int = 64 * 1024 * 1024
    # Group commit: 0 means no linger; appends that arrive during an fsync share the next.
    wal_linger: float = 0.0
    wal_batch_records: int = 256
    # Sessions the background flusher writes to the store at once.
    wal_flush_concurrency: int = 16
    # Turns per flush transaction (an append is never split). Small transactions keep each
    # call fast while a backlog drains beside live traffic; many run at once.
    wal_flush_batch_turns: int = 25
    # How long aclose() waits for the WAL to drain before leaving records for the next start.
    wal_close_timeout: float = 5.0
    # Circuit breakers, one per dependency (store, Redis): a failure (or slow-call) rate over
    # a sliding window, judged only with enough calls, or a run of failures in a row; open
    # for a while, then a few probes. The open period doubles up to its maximum: a probe
    # round costs 3 calls, a late close costs every reply until then, so the cap is short.
    breaker_window: float = 10.0
    breaker_min_calls: int = 50
    breaker_failure_rate: float = 0.5
    breaker_slow_rate: float = 0.8
    breaker_slow_call: float = 0.25
    breaker_open_seconds: float = 5.0
    breaker_max_open_seconds: float = 15.0
    breaker_half_open_probes: int = 3
    breaker_consecutive_failures: int = 20
    # While the store's breaker is open, memsdk asks the store directly (one GetItem of a
    # key no session uses) about this often; the first answer ends the open period early,
    # so recovery costs about this interval, not up to breaker_max_open_seconds. 0: off.
    breaker_probe_interval: float = 1.0
    # Retries may add at most this share of recent store calls (plus a small reserve), so an
    # outage never multiplies the load on the store.
    retry_budget_ratio: float = 0.1
    retry_budget_min_per_second: float = 10.0
    # Store calls in flight at once (the rest wait, within their deadline); keep it at or
    # below max_pool_connections so a call never waits for a connection it cannot see.
    max_inflight_store_calls: int = 64
    # OpenTelemetry (docs/observability.md): spans and metrics through the global providers
    # (or those given to MemoryClient); False removes even the no-op calls. Identifying
    # attributes are opt-in: any of "session_id", "customer_id". Turn content and page
    # context never leave memsdk in telemetry, whatever this says.
    telemetry_enabled: bool = True
    telemetry_attributes: tuple[str, ...] = ()
    store_spec: StoreSpec = field(init=False, repr=False, compare=False)
    redis_spec: RedisSpec | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "store_spec", parse_store_url(self.store))
        redis_spec = None if self.redis_url is None else parse_redis_url(self.redis_url)
        object.__setattr__(self, "redis_spec", redis_spec)
        if self.redis_key_prefix is not None and not (
            isinstance(self.redis_key_prefix, str) and _KEY_PREFIX.fullmatch(self.redis_key_prefix)
        ):
            raise ConfigError("redis_key_prefix must be None or 1-64 characters of [A-Za-z0-9._:-]")
        if self.wal_dir is not None and (not isinstance(self.wal_dir, str) or not self.wal_dir):
            raise ConfigError("wal_dir must be a non-empty directory path or None")
        _check_int("ttl_seconds", self.ttl_seconds, 1, 10 * 365 * 86_400)
        _check_int("last_n", self.last_n, 1, 10_000)
        if self.consistency not in _CONSISTENCY_MODES:
            raise ConfigError(f"consistency must be one of {', '.join(_CONSISTENCY_MODES)}")
        _check_int("max_turn_bytes", self.max_turn_bytes, 1_024, DYNAMODB_ITEM_LIMIT - 8_192)
        _check_int("l1_max_bytes", self.l1_max_bytes, 0, 1 << 40)
        _check_int("wal_max_bytes", self.wal_max_bytes, 1 << 14, 1 << 44)
        _check_int("wal_segment_bytes", self.wal_segment_bytes, 1 << 12, 1 << 34)
        _check_float("wal_linger", self.wal_linger, 0.0, 1.0)
        _check_int("wal_batch_records", self.wal_batch_records, 1, 100_000)
        _check_int("wal_flush_concurrency", self.wal_flush_concurrency, 1, 1_024)
        _check_int("wal_flush_batch_turns", self.wal_flush_batch_turns, 1, 99)
        _check_float("wal_close_timeout", self.wal_close_timeout, 0.0, 3_600.0)
        _check_float("breaker_window", self.breaker_window, 0.1, 3_600.0)
        _check_int("breaker_min_calls", self.breaker_min_calls, 1, 1_000_000)
        _check_fraction("breaker_failure_rate", self.breaker_failure_rate)
        _check_fraction("breaker_slow_rate", self.breaker_slow_rate)
        _check_float("breaker_slow_call", self.breaker_slow_call, 0.001, 600.0)
        _check_float("breaker_open_seconds", self.breaker_open_seconds, 0.001, 3_600.0)
        _check_float(
            "breaker_max_open_seconds",
            self.breaker_max_open_seconds,
            self.breaker_open_seconds,
            86_400.0,
        )
        _check_int("breaker_half_open_probes", self.breaker_half_open_probes, 1, 1_000)
        _check_int("breaker_consecutive_failures", self.breaker_consecutive_failures, 1, 1_000_000)
        if self.breaker_probe_interval != 0:
            _check_float("breaker_probe_interval", self.breaker_probe_interval, 0.05, 600.0)
        _check_fraction("retry_budget_ratio", self.retry_budget_ratio)
        _check_float("retry_budget_min_per_second", self.retry_budget_min_per_second, 0.0, 1e6)
        _check_int("max_inflight_store_calls", self.max_inflight_store_calls, 1, 100_000)
        _check_float("read_timeout", self.read_timeout, 0.001, 600.0)
        _check_float("write_timeout", self.write_timeout, 0.001, 600.0)
        _check_int("turn_retention_seconds", self.turn_retention_seconds, 0, 10 * 365 * 86_400)
        _check_int("max_pool_connections", self.max_pool_connections, 1, 10_000)
        _check_float("connect_timeout", self.connect_timeout, 0.001, 600.0)
        _check_int("store_max_attempts", self.store_max_attempts, 1, 10)
        _check_float("redis_timeout", self.redis_timeout, 0.001, 10.0)
        if not isinstance(self.telemetry_enabled, bool):
            raise ConfigError(
                f"telemetry_enabled must be True or False, got {self.telemetry_enabled!r}"
            )
        if (
            not isinstance(self.telemetry_attributes, tuple)
            or not set(self.telemetry_attributes) <= TELEMETRY_ATTRIBUTES
        ):
            raise ConfigError(
                "telemetry_attributes must be a tuple of "
                f"{', '.join(sorted(TELEMETRY_ATTRIBUTES))}, got {self.telemetry_attributes!r}"
            )
        if self.dynamodb_data_path not in _DATA_PATHS:
            raise ConfigError(f"dynamodb_data_path must be one of {', '.join(_DATA_PATHS)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Build a Config from MEMSDK_<FIELD> variables (e.g. MEMSDK_STORE); overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            raw = env.get(f"MEMSDK_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, raw, f.default)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]  # values were coerced per field above


def _coerce(name: str, raw: str, default: object) -> object:
    if isinstance(default, bool):
        raise ConfigError(f"MEMSDK_{name.upper()}: boolean settings are not read from the env")
    if isinstance(default, int):
        try:
            return int(raw.replace("_", ""))
        except ValueError as exc:
            raise ConfigError(f"MEMSDK_{name.upper()} must be an integer, got {raw!r}") from exc
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError as exc:
            raise ConfigError(f"MEMSDK_{name.upper()} must be a number, got {raw!r}") from exc
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if default is None and raw == "":
        return None
    return raw


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number of seconds in [{low}, {high}], got {value!r}")


def _check_fraction(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise ConfigError(f"{name} must be a fraction in (0, 1], got {value!r}")
