"""Telemetry at the edges: the store, the DynamoDB data path and Redis, seen from outside.

Each class here wraps one of the narrow protocols (Store, DataPath, CacheObserver) and
reports to memsdk.telemetry.Telemetry, so the store, data path and cache modules stay
free of OpenTelemetry. A span belongs to one request sent to a dependency:

- DynamoDB: one span per operation the data path sends (GetItem, Query,
  TransactWriteItems, ...), retries inside it shown as `memsdk.retry` events;
- SQLite: one span per store method, each one transaction in the store's worker thread;
- Redis: one span per command, reported after the fact by the cache (it only calls an
  observer), so the cache itself never touches a span.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from memsdk.store.base import Store
from memsdk.store.dynamodb_path import DataPath
from memsdk.store.wrapper import StoreCall, StoreWrapper, Wrapper
from memsdk.telemetry import Telemetry

__all__ = ["ObservedDataPath", "ObservedStore", "RedisObserver", "server_attributes"]

T = TypeVar("T")


def server_attributes(url: str | None, default_port: int | None = None) -> dict[str, Any]:
    """`server.address` and `server.port` of a URL; never its user, password or path."""
    if not url:
        return {}
    parts = urlsplit(url)
    attrs: dict[str, Any] = {}
    try:
        explicit = parts.port
    except ValueError:  # not one host:port (a list of nodes): no single server to name
        return {}
    if parts.hostname:
        attrs["server.address"] = parts.hostname
    port = explicit or default_port or {"https": 443, "http": 80}.get(parts.scheme)
    if port is not None:
        attrs["server.port"] = port
    return attrs


class ObservedDataPath(Wrapper[DataPath]):
    """A DynamoDB DataPath whose every call is a client span and a latency measurement.

    Its protocol's one data method, `call`, already is the hook: only the lifecycle is
    forwarded (by Wrapper).
    """

    def __init__(
        self,
        inner: DataPath,
        telemetry: Telemetry,
        *,
        table: str,
        endpoint: str,
        breaker_state: Callable[[], str],
    ) -> None:
        super().__init__(inner)
        self._telemetry = telemetry
        self._table = table
        self._breaker_state = breaker_state
        self._attrs: dict[str, Any] = {
            "aws.dynamodb.table_names": (table,),
            **server_attributes(endpoint),
        }

    async def call(
        self,
        operation: str,
        params: dict[str, Any],
        response_type: type[T],
        *,
        write: bool,
        session_id: str | None = None,
    ) -> T:
        """The wrapped call inside a `{operation} {table}` client span."""
        with self._telemetry.dependency(
            "aws.dynamodb", operation, target=self._table, attributes=self._attrs
        ) as scope:
            if scope.recording:
                scope.set("memsdk.breaker.state", self._breaker_state())
            return await self.inner.call(
                operation, params, response_type, write=write, session_id=session_id
            )


class ObservedStore(StoreWrapper):
    """A Store whose every method is a client span (SQLite, or a store a user passed in)."""

    def __init__(self, inner: Store, telemetry: Telemetry, *, system: str) -> None:
        super().__init__(inner)
        self._telemetry = telemetry
        self._system = system

    async def around(self, call: StoreCall[T]) -> T:
        """The wrapped call in a span named after its operation."""
        with self._telemetry.dependency(self._system, call.operation):
            return await call.run()


_LOOKUP_RESULTS = {"hit": "hit", "miss": "miss", "error": "error", "bypassed": "bypassed"}


class RedisObserver:
    """The Redis cache's CacheObserver: a span and a latency sample per command sent, a
    lookup count per GET, an event and a count per command skipped by the breaker."""

    def __init__(self, telemetry: Telemetry, attributes: Mapping[str, Any]) -> None:
        self._telemetry = telemetry
        self._attrs = dict(attributes)

    def observe(
        self,
        operation: str,
        command: str,
        outcome: str,
        started_ns: int,
        ended_ns: int,
        error: str | None,
    ) -> None:
        """Report one operation (see memsdk.cache.base.CacheObserver)."""
        telemetry = self._telemetry
        if operation == "get":
            telemetry.cache_lookup("redis", _LOOKUP_RESULTS.get(outcome, "error"))
        if outcome == "bypassed":
            telemetry.redis_bypassed(operation)
            return
        if not telemetry.listening():
            return  # nobody collects: do not even build the attributes
        telemetry.finished_dependency_call(
            "redis",
            command,
            started_ns=started_ns,
            ended_ns=ended_ns,
            error_type=error if error is not None else (None if outcome != "error" else "error"),
            attributes={
                **self._attrs,
                "memsdk.cache.operation": operation,
                "memsdk.cache.result": outcome,
            },
        )
