"""Building the tiers a Config names: the store and its wrapper stack, Redis, the breakers.

The one place that knows which class wraps which. A store call passes, from the outside
in: the guard (circuit breaker and bulkhead, memsdk.guard), the telemetry observer
(memsdk.observed: a span per store method on SQLite, per request on DynamoDB's data path),
and the store itself. Backends are imported lazily: `import memsdk` loads neither
aiohttp nor redis-py, and a store whose extra is not installed is a ConfigError that names
the extra.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from memsdk.cache.base import MetaCache
from memsdk.config import Config, DynamoDBStoreSpec, SQLiteStoreSpec
from memsdk.errors import ConfigError
from memsdk.guard import GuardedStore, RetryGateWhileClosed
from memsdk.observed import ObservedDataPath, ObservedStore, RedisObserver
from memsdk.resilience.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from memsdk.resilience.budget import RetryBudget
from memsdk.resilience.bulkhead import Bulkhead
from memsdk.store.base import Store
from memsdk.store.dynamodb_path import DataPath, RetryGate
from memsdk.telemetry import Telemetry

__all__ = [
    "Tiers",
    "breaker_policy",
    "build_meta_cache",
    "build_store",
    "build_tiers",
    "redis_namespace",
]


class Tiers(NamedTuple):
    """What a MemoryClient talks to, each behind its wrappers."""

    store: GuardedStore
    store_breaker: CircuitBreaker
    retry_budget: RetryBudget
    redis_breaker: CircuitBreaker
    meta_cache: MetaCache | None


def build_tiers(
    config: Config,
    telemetry: Telemetry,
    *,
    store: Store | None,
    meta_cache: MetaCache | None,
    on_breaker_change: Callable[[str, BreakerState, BreakerState], None],
) -> Tiers:
    """The store (given, or the one `config` names) behind telemetry and the guard, the
    breakers, the retry budget and Redis (given, or the one `config` names, or none)."""
    store_breaker = CircuitBreaker("store", breaker_policy(config), on_change=on_breaker_change)
    retry_budget = RetryBudget(
        ratio=config.retry_budget_ratio,
        min_per_s=config.retry_budget_min_per_second,
        window_s=config.breaker_window,
    )
    retry_gate = RetryGateWhileClosed(retry_budget, store_breaker, on_retry=telemetry.retry)
    if store is not None:
        system = store.description.split(":", 1)[0] or "other"
        store = ObservedStore(store, telemetry, system=system)
    else:
        store = build_store(config, retry_gate, telemetry, lambda: store_breaker.state)
    guarded = GuardedStore(
        store,
        store_breaker,
        Bulkhead(config.max_inflight_store_calls),
        slow_call_s=config.breaker_slow_call,
        on_shed=lambda: telemetry.backpressure("bulkhead"),
    )
    redis_breaker = CircuitBreaker(
        "redis",
        breaker_policy(config, slow_call_s=config.redis_timeout),
        on_change=on_breaker_change,
    )
    if meta_cache is None:
        meta_cache = build_meta_cache(config, redis_breaker, telemetry)
    return Tiers(guarded, store_breaker, retry_budget, redis_breaker, meta_cache)


def build_store(
    config: Config,
    retry_budget: RetryGate | None = None,
    telemetry: Telemetry | None = None,
    breaker_state: Callable[[], str] = lambda: "off",
) -> Store:
    """The store a Config names (imports the backend lazily: no aiohttp import for SQLite).

    `retry_budget` bounds the lean data path's retries; the aioboto3 path keeps botocore's
    standard retry mode, whose own retry quota plays that part. With `telemetry`, every
    request the store sends is a span (see memsdk.observed).
    """
    spec = config.store_spec
    if isinstance(spec, SQLiteStoreSpec):
        from memsdk.store.sqlite import SQLiteStore

        sqlite = SQLiteStore(spec.path)
        return sqlite if telemetry is None else ObservedStore(sqlite, telemetry, system="sqlite")
    if isinstance(spec, DynamoDBStoreSpec):
        return _build_dynamodb(config, spec, retry_budget, telemetry, breaker_state)
    raise ConfigError(f"unsupported store {type(spec).__name__}")


def _build_dynamodb(
    config: Config,
    spec: DynamoDBStoreSpec,
    retry_budget: RetryGate | None,
    telemetry: Telemetry | None,
    breaker_state: Callable[[], str],
) -> Store:
    try:
        from memsdk.store.dynamodb import DynamoDBStore
        from memsdk.store.dynamodb_lean import LeanDataPath, resolve_endpoint
    except ImportError as exc:  # the `dynamodb` extra is not installed
        raise ConfigError(
            "a dynamodb:// store needs the DynamoDB dependencies: pip install 'memsdk[dynamodb]'"
        ) from exc
    options: dict[str, Any] = {
        "max_pool_connections": config.max_pool_connections,
        "connect_timeout": config.connect_timeout,
        "read_timeout": max(config.read_timeout, config.write_timeout),
        "max_attempts": config.store_max_attempts,
    }
    path: DataPath
    if config.dynamodb_data_path == "aioboto3":
        from memsdk.store.dynamodb_aioboto3 import Aioboto3DataPath

        path = Aioboto3DataPath(spec, **options)
    else:
        path = LeanDataPath(spec, retry_budget=retry_budget, **options)
    if telemetry is not None:
        endpoint = spec.endpoint or resolve_endpoint(spec)
        path = ObservedDataPath(
            path, telemetry, table=spec.table, endpoint=endpoint, breaker_state=breaker_state
        )
    return DynamoDBStore(spec, path)


def breaker_policy(config: Config, *, slow_call_s: float | None = None) -> BreakerPolicy:
    """The circuit-breaker policy a Config describes (slow_call_s may differ per dependency)."""
    return BreakerPolicy(
        window_s=config.breaker_window,
        min_calls=config.breaker_min_calls,
        failure_rate=config.breaker_failure_rate,
        slow_call_s=config.breaker_slow_call if slow_call_s is None else slow_call_s,
        slow_rate=config.breaker_slow_rate,
        open_s=config.breaker_open_seconds,
        max_open_s=config.breaker_max_open_seconds,
        half_open_probes=config.breaker_half_open_probes,
        consecutive_failures=config.breaker_consecutive_failures,
    )


def redis_namespace(config: Config) -> str:
    """This deployment's namespace in Redis: `Config.redis_key_prefix`, else a digest of the
    store's identity (SQLite file, or DynamoDB table, region and endpoint). Deployments that
    share a Redis then miss each other's keys instead of reading them (docs/security.md)."""
    if config.redis_key_prefix is not None:
        return config.redis_key_prefix
    spec = config.store_spec
    if isinstance(spec, SQLiteStoreSpec):
        identity = f"sqlite|{os.path.abspath(spec.path)}"
    else:
        identity = f"dynamodb|{spec.region}|{spec.endpoint or ''}|{spec.table}"
    return "s" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def build_meta_cache(
    config: Config, breaker: CircuitBreaker | None = None, telemetry: Telemetry | None = None
) -> MetaCache | None:
    """The Redis META cache a Config names, or None (imports redis-py only when asked)."""
    if config.redis_url is None:
        return None
    try:
        from memsdk.cache.redis import RedisMetaCache
    except ImportError as exc:  # the `redis` extra is not installed
        raise ConfigError("redis_url needs redis-py: pip install 'memsdk[redis]'") from exc
    return RedisMetaCache(
        config.redis_url,
        key_prefix=redis_namespace(config),
        timeout=config.redis_timeout,
        connect_timeout=config.redis_timeout * 2,
        tombstone_ttl_seconds=min(config.ttl_seconds, 3_600),
        gate=breaker,
        observer=(
            None
            if telemetry is None
            else RedisObserver(telemetry, _redis_server_attributes(config))
        ),
    )


def _redis_server_attributes(config: Config) -> dict[str, Any]:
    """`server.address`/`server.port` of the Redis a Config names; none behind Sentinel
    (the primary is whichever node the Sentinels name at the time)."""
    spec = config.redis_spec
    if spec is None or spec.topology == "sentinel":
        return {}
    host, port = spec.nodes[0]
    return {"server.address": host, "server.port": port}
