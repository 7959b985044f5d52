"""The Redis META cache (L2): one standalone node or a Redis Cluster, best-effort.

Key: `memsdk:{<session_id>}:meta` (the hash tag keeps a session in one cluster slot).
Value: the META version as 20 zero-padded decimal digits, then the msgpack of MetaRecord;
JSON instead (it starts with `{`, which no msgpack map does) for the rare META whose
attributes hold an int that msgpack cannot (outside [-2**63, 2**64)).
A Lua script writes only versions above the cached one, comparing the digit prefixes as
strings: Lua numbers are doubles and versions (~2^60) would lose precision.

Every redis, OS, timeout or decode failure is a miss (or False) and a count in `errors`;
only asyncio.CancelledError escapes. Values hold customer ids and page context: they are
never logged, and neither are keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast
from urllib.parse import SplitResult, urlsplit, urlunsplit

import msgspec
from redis._parsers import AsyncCommandsParser
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from memsdk.cache.base import CacheObserver, CallGate, MetaCacheStats
from memsdk.errors import ConfigError
from memsdk.logs import RateLimitedLog
from memsdk.store.base import MetaRecord

__all__ = ["RedisMetaCache"]

_log = logging.getLogger(__name__)

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(MetaRecord)
_JSON_ENCODER: Final = msgspec.json.Encoder()
_JSON_DECODER: Final = msgspec.json.Decoder(MetaRecord)
_VERSION_DIGITS: Final = 20
_MAX_VERSION: Final = 10**_VERSION_DIGITS - 1
# Session ids are validated upstream; this only guards key construction (fullmatch: no
# trailing newline, no braces that would change the hash tag).
_SESSION_ID: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

# KEYS[1] = key; ARGV[1] = 20-digit version .. msgpack; ARGV[2] = TTL in seconds.
# Equal-length digit strings order like the numbers they spell. A stored value without a
# well-formed prefix is foreign or corrupt: overwrite it rather than let it block forever.
_PUT_LUA: Final = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local old = string.sub(cur, 1, 20)
  if string.len(old) == 20 and not string.find(old, '%D')
      and old >= string.sub(ARGV[1], 1, 20) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# Delete an undecodable value only if it is still the one we read: never a fresh write.
_DROP_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _Script:
    """A Lua script run by EVALSHA, falling back to EVAL (which caches it) on NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: Redis | RedisCluster, key: str, *args: bytes | int) -> Any:
        # Not redis-py's Script: it reloads with SCRIPT LOAD, which a cluster client sends
        # to every primary; EVAL reaches only the key's node and needs no second round trip.
        # redis-py types eval/evalsha as `Awaitable[str] | str` for sync and async alike.
        try:
            return await cast(Awaitable[Any], client.evalsha(self.sha, 1, key, *args))
        except NoScriptError:
            return await cast(Awaitable[Any], client.eval(self.source, 1, key, *args))


_PUT: Final = _Script(_PUT_LUA)
_DROP: Final = _Script(_DROP_LUA)


class _CommandTableOnce(AsyncCommandsParser):
    """The cluster client's COMMAND table, fetched once instead of on every topology refresh."""

    async def initialize(self, node: ClusterNode | None = None) -> None:
        # redis-py 7.4 re-fetches COMMAND (~50 KB, ~70 ms of event-loop CPU) on every
        # topology refresh, and it refreshes after every connection error: a node outage
        # would stall the whole process. The table does not change with the topology; an
        # unknown command (a server upgrade) still reloads it (get_keys passes no node).
        if node is not None:
            self.node = node
            if self.commands:
                return
        await super().initialize()


class _DecodeError(Exception):
    """A cached value that is not a version prefix plus a MetaRecord."""


_BYPASSED: Final = object()


class _Failed:
    """A command that failed (timeout, connection, server error): a miss, never raised."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class RedisMetaCache:
    """MetaCache on Redis: `redis://`, `rediss://` (TLS) or `redis+cluster://` URLs."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.1,
        connect_timeout: float = 0.2,
        tombstone_ttl_seconds: int = 3600,
        max_connections: int = 64,
        gate: CallGate | None = None,
        observer: CacheObserver | None = None,
    ) -> None:
        self._parts, self._cluster = _parse_url(url)
        _check_positive("timeout", timeout)
        _check_positive("connect_timeout", connect_timeout)
        if isinstance(tombstone_ttl_seconds, bool) or not isinstance(tombstone_ttl_seconds, int):
            raise ConfigError("tombstone_ttl_seconds must be an integer number of seconds")
        if tombstone_ttl_seconds < 1:
            raise ConfigError("tombstone_ttl_seconds must be >= 1")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ConfigError("max_connections must be an integer")
        if max_connections < 1:
            raise ConfigError("max_connections must be >= 1")
        self._timeout = float(timeout)
        self._connect_timeout = float(connect_timeout)
        self._tombstone_ttl = tombstone_ttl_seconds
        self._max_connections = max_connections
        # One connection set-up plus one command: the most a healthy attempt needs. redis-py
        # can chain more (cluster topology refresh, a 0.25 s sleep on CLUSTERDOWN, one
        # connect per startup node): this deadline bounds every call whatever it does.
        self._budget = self._connect_timeout + self._timeout
        self._client: Redis | RedisCluster | None = None
        # The cluster slot map we last saw (see _reap_orphans).
        self._slots_seen: dict[int, list[ClusterNode]] | None = None
        self._log = RateLimitedLog(_log)
        self._hits = self._misses = self._errors = self._writes = self._refused = 0
        # A circuit breaker: while Redis is down or hanging, calls are skipped (a miss at no
        # cost) instead of each waiting out redis_timeout.
        self._gate = gate
        self._bypassed = 0
        self._observer = observer

    @property
    def description(self) -> str:
        """'redis' or 'redis-cluster': never the URL, which may hold a password."""
        return "redis-cluster" if self._cluster else "redis"

    async def open(self) -> None:
        """Create the client; no I/O, so an unreachable server only shows up as misses."""
        if self._client is None:
            self._client = self._new_client()

    def _new_client(self) -> Redis | RedisCluster:
        settings: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._connect_timeout,
            # No retries in redis-py: memsdk owns retries (STYLE: one layer only), and for
            # a cache the fallback read from the store is the retry. The pool already
            # replaces a connection the server closed before handing it out.
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            "max_connections": self._max_connections,
            # No CLIENT SETINFO on connect: one round trip less per new connection, and
            # nothing to wait for on a server that accepts but never answers.
            "driver_info": None,
            "decode_responses": False,
        }
        if self._cluster:
            url = urlunsplit(self._parts._replace(scheme="redis"))
            # Per node: max_connections. retry=0 also means no cluster-level retry after
            # ConnectionError/TimeoutError/CLUSTERDOWN (each would re-discover the topology
            # first); MOVED/ASK/TRYAGAIN are still followed, up to 16 redirects.
            # reinitialize_steps=0: a MOVED patches that slot only. By default every 5th
            # MOVED closes every connection (in-flight commands of other tasks included)
            # and reloads the topology, which turns a reshard into a burst of errors.
            cluster = RedisCluster.from_url(url, reinitialize_steps=0, **settings)
            cluster.commands_parser = _CommandTableOnce()
            return cluster
        return Redis.from_url(urlunsplit(self._parts), **settings)

    async def aclose(self) -> None:
        """Close the client and its connections; idempotent."""
        client, self._client = self._client, None
        seen, self._slots_seen = self._slots_seen, None
        if client is None:
            return
        if isinstance(client, RedisCluster):
            # Also the nodes that only the slot maps hold (see _reap_orphans).
            nodes = {id(n): n for n in _cluster_nodes(client)}
            for node_list in (seen or {}).values():
                nodes.update((id(n), n) for n in node_list)
            await _disconnect_nodes(list(nodes.values()), None)
        await _close_quietly(client, None)

    async def get(self, session_id: str) -> MetaRecord | None:
        """The cached META (live or a tombstone), or None on a miss or any trouble."""
        key = self._key(session_id)
        client = self._client
        if key is None or client is None:
            self._fail_get("closed" if key is not None else "bad_session_id", None)
            return None
        started = time.time_ns()
        outcome = await self._send(client, lambda: client.get(key))
        if outcome is _BYPASSED:
            self._misses += 1
            self._tell("GET", "bypassed", started, None)
            return None
        if isinstance(outcome, _Failed):
            self._fail_get(_kind(outcome.error), outcome.error)
            self._tell("GET", "error", started, outcome.error)
            return None
        raw = cast(bytes | None, outcome)
        if raw is None:
            self._misses += 1
            self._tell("GET", "miss", started, None)
            return None
        try:
            meta = _decode(raw)
        except _DecodeError:
            await self._drop(client, key, raw)
            self._fail_get("undecodable_value", None)
            self._tell("GET", "error", started, None)
            return None
        self._hits += 1
        self._tell("GET", "hit", started, None)
        return meta

    async def put(self, meta: MetaRecord, *, now_s: int) -> bool:
        """Cache `meta` unless a version >= meta.version is cached; True if stored."""
        key = self._key(meta.session_id)
        client = self._client
        if key is None or client is None:
            return self._fail("closed" if key is not None else "bad_session_id", None)
        if not 0 <= meta.version <= _MAX_VERSION:
            return self._fail("version_out_of_range", None)
        # A live META lives as long as its session (>= 1 s here); an expired one is a
        # tombstone that keeps refusing stale fills for a while.
        live = meta.expires_at > now_s
        ttl = meta.expires_at - now_s if live else self._tombstone_ttl
        try:
            value = _encode(meta)
        except Exception as exc:  # never raise, even for a META we cannot serialise
            return self._fail("unencodable_meta", exc)
        started = time.time_ns()
        stored = await self._send(client, lambda: _PUT(client, key, value, ttl))
        if stored is _BYPASSED:
            self._tell("EVALSHA", "bypassed", started, None)
            return False
        if isinstance(stored, _Failed):
            self._tell("EVALSHA", "error", started, stored.error)
            return self._fail(_kind(stored.error), stored.error)
        if stored == 1:
            self._writes += 1
            self._tell("EVALSHA", "stored", started, None)
            return True
        self._refused += 1
        self._tell("EVALSHA", "refused", started, None)
        return False

    async def invalidate(self, session_id: str) -> bool:
        """Drop the cached META; True when Redis confirmed the delete."""
        key = self._key(session_id)
        client = self._client
        if key is None or client is None:
            return self._fail("closed" if key is not None else "bad_session_id", None)
        started = time.time_ns()
        deleted = await self._send(client, lambda: client.delete(key))
        if deleted is _BYPASSED:
            self._tell("DEL", "bypassed", started, None)
            return False
        if isinstance(deleted, _Failed):
            self._tell("DEL", "error", started, deleted.error)
            return self._fail(_kind(deleted.error), deleted.error)
        self._tell("DEL", "deleted", started, None)
        return True

    def stats(self) -> MetaCacheStats:
        """Counters since the cache was created; no I/O."""
        return MetaCacheStats(
            hits=self._hits,
            misses=self._misses,
            errors=self._errors,
            writes=self._writes,
            stale_writes_refused=self._refused,
            bypassed=self._bypassed,
        )

    async def _send(
        self, client: Redis | RedisCluster, command: Callable[[], Awaitable[Any]]
    ) -> Any:
        """One command within the call budget and the breaker: its reply, _BYPASSED (the
        breaker is open: not sent) or _Failed (any trouble; never raised)."""
        gate = self._gate
        if gate is not None and not gate.try_acquire():
            self._bypassed += 1
            return _BYPASSED
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._budget):
                reply = await command()
        except asyncio.CancelledError:
            if gate is not None:
                gate.record_neutral()  # the caller gave up: no verdict on Redis
            raise
        except Exception as exc:
            if gate is not None:
                gate.record_failure(time.monotonic() - started)
            await self._reap_orphans(client)
            return _Failed(exc)
        if gate is not None:
            gate.record_success(time.monotonic() - started)
        await self._reap_orphans(client)
        return reply

    def _tell(self, command: str, outcome: str, started_ns: int, error: Exception | None) -> None:
        if self._observer is not None:
            error_type = None if error is None else type(error).__name__
            self._observer.observe(command, outcome, started_ns, time.time_ns(), error_type)

    def _key(self, session_id: str) -> str | None:
        if isinstance(session_id, str) and _SESSION_ID.fullmatch(session_id):
            return f"memsdk:{{{session_id}}}:meta"
        return None

    async def _drop(self, client: Redis | RedisCluster, key: str, raw: bytes) -> None:
        try:
            async with asyncio.timeout(self._budget):
                await _DROP(client, key, raw)
        except Exception as exc:
            self._warn(_kind(exc), exc)

    async def _reap_orphans(self, client: Redis | RedisCluster) -> None:
        # redis-py 7.4's async cluster client fills a refreshed slot map with new
        # ClusterNode objects but keeps the old ones in nodes_cache, which is all that
        # aclose() closes: the previous slot map's nodes and their sockets are orphaned
        # (fixed upstream by redis-py#4057). Close them when the slot map is replaced.
        if not isinstance(client, RedisCluster):
            return
        slots = client.nodes_manager.slots_cache
        old, self._slots_seen = self._slots_seen, slots
        if old is None or old is slots:
            return
        keep = {id(node) for node in _cluster_nodes(client)}
        orphans = {id(n): n for nodes in old.values() for n in nodes if id(n) not in keep}
        if orphans:
            await _disconnect_nodes(list(orphans.values()), self._budget)

    def _fail_get(self, kind: str, exc: BaseException | None) -> None:
        self._misses += 1
        self._fail(kind, exc)

    def _fail(self, kind: str, exc: BaseException | None) -> bool:
        self._errors += 1
        self._warn(kind, exc)
        return False

    def _warn(self, kind: str, exc: BaseException | None) -> None:
        # Exception text from redis-py names hosts and commands, never keys or values.
        detail = ""
        if exc is not None:
            name = type(exc).__name__
            detail = f": {str(exc)[:200]}" if name == kind else f": {name}: {str(exc)[:200]}"
        self._log.log(
            logging.WARNING,
            kind,
            "redis META cache (%s) bypassed: %s%s",
            self.description,
            kind,
            detail,
            extra={"redis_error": kind},
        )


def _encode(meta: MetaRecord) -> bytes:
    prefix = b"%020d" % meta.version
    try:
        return prefix + _ENCODER.encode(meta)
    except OverflowError:
        # Attributes may hold any int (the stores keep them exactly); JSON can too.
        return prefix + _JSON_ENCODER.encode(meta)


def _decode(raw: bytes) -> MetaRecord:
    prefix = raw[:_VERSION_DIGITS]
    if len(prefix) != _VERSION_DIGITS or not prefix.isdigit():
        raise _DecodeError
    payload = raw[_VERSION_DIGITS:]
    try:
        decoder = _JSON_DECODER if payload[:1] == b"{" else _DECODER
        meta = decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _DecodeError from exc
    if meta.version != int(prefix):
        raise _DecodeError
    return meta


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        # Our deadline (the builtin) or a socket timeout (redis-py's own class): one kind.
        return "timeout"
    return type(exc).__name__ if isinstance(exc, RedisError | OSError) else "unexpected_error"


def _cluster_nodes(client: RedisCluster) -> list[ClusterNode]:
    manager = client.nodes_manager
    nodes = list(manager.nodes_cache.values()) + list(manager.startup_nodes.values())
    seen: set[int] = set()
    for node_list in manager.slots_cache.values():
        for node in node_list:
            if id(node) not in seen:
                seen.add(id(node))
                nodes.append(node)
    return nodes


async def _disconnect_nodes(nodes: list[ClusterNode], deadline: float | None) -> None:
    try:
        async with asyncio.timeout(deadline):
            await asyncio.gather(*(node.disconnect() for node in nodes), return_exceptions=True)
    except Exception as exc:  # best-effort: a node that cannot close is gone anyway
        _log.debug("closing redis cluster nodes failed: %s", type(exc).__name__)


async def _close_quietly(client: Redis | RedisCluster, deadline: float | None) -> None:
    try:
        async with asyncio.timeout(deadline):
            await client.aclose()
    except Exception as exc:  # a half-dead connection may fail to close; it is gone anyway
        _log.debug("closing the redis client failed: %s", type(exc).__name__)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 600:
        raise ConfigError(f"{name} must be a number of seconds in (0, 600]")


def _parse_url(url: str) -> tuple[SplitResult, bool]:
    """Validate a redis URL; return its parts (scheme kept) and whether it is a cluster."""
    if not isinstance(url, str) or not url:
        raise ConfigError("redis_url must be a non-empty URL such as redis://host:6379/0")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError("redis_url is malformed (bad host or port)") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "redis+cluster"):
        raise ConfigError(
            "redis_url must use redis://, rediss:// or redis+cluster:// "
            "(redis+cluster over TLS is not supported)"
        )
    if not parts.hostname or port is None:
        raise ConfigError("redis_url must name a host and a port: redis://host:6379")
    if parts.query or parts.fragment:
        # redis-py lets query options override our timeouts and retries: refuse them.
        raise ConfigError("redis_url takes no ?options or #fragment; timeouts are set by memsdk")
    cluster = scheme == "redis+cluster"
    path = parts.path.strip("/")
    if path and (cluster or not path.isdigit()):
        raise ConfigError(
            "redis_url path must be a database number (redis://host:6379/0); "
            "redis+cluster:// takes none"
        )
    return parts._replace(scheme=scheme), cluster
