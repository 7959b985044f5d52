"""The Redis META cache (L2): one node, a Redis Cluster or a Sentinel group; best-effort.

Key: `memsdk:{<session_id>}:meta` (the hash tag keeps a session in one cluster slot).
Value: the META version as 20 zero-padded decimal digits, the epoch (40 hex digits: the
`master_replid` of the primary that stored it), then the msgpack of MetaRecord; JSON
instead (it starts with `{`, which no msgpack map does) for the rare META whose attributes
hold an int that msgpack cannot (outside [-2**63, 2**64)).
A Lua script writes only versions above the cached one, comparing the digit prefixes as
strings: Lua numbers are doubles and versions (~2^60) would lose precision.

Replication is asynchronous: a failover can promote a replica that missed the newest SETs,
so after a failover Redis may hold a META older than one memsdk acknowledged. A promoted
replica always takes a new `master_replid`, so the read script serves only values stamped
with the current primary's replid: whatever was written before a failover is a miss (one
store read per session), never a stale context. It also refuses to answer on a replica
(a demoted primary that clients are still connected to) and on a primary that has lost
the replicas `min-replicas-to-write` asks for (the old side of a partition).

A read-through fill (a META read from the store after a miss) must not land once a newer
META may have been written through and lost with the key (a flush, an eviction, a
restart): a compare-and-set finds nothing to compare with then. So a miss leaves a lease
in the key (`L` .. token, a few seconds), and a fill lands only over its own lease or over
an older value of the current epoch; a write-through or invalidation ends the lease.

Every redis, OS, timeout or decode failure is a miss (or False) and a count in `errors`;
only asyncio.CancelledError escapes. Values hold customer ids and page context: they are
never logged, and neither are keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import msgspec
from redis._parsers import AsyncCommandsParser
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from memsdk.cache.base import CacheLookup, CacheObserver, CallGate, MetaCacheStats
from memsdk.config import RedisSpec, parse_redis_url
from memsdk.errors import ConfigError
from memsdk.jsonshape import too_few_brackets_to_nest, within_depth
from memsdk.logs import RateLimitedLog
from memsdk.records import MetaRecord

__all__ = ["RedisMetaCache"]

_log = logging.getLogger(__name__)

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(MetaRecord)
_JSON_ENCODER: Final = msgspec.json.Encoder()
_JSON_DECODER: Final = msgspec.json.Decoder(MetaRecord)
_VERSION_DIGITS: Final = 20
_EPOCH_DIGITS: Final = 40  # a master_replid
# How long a lookup's lease waits for its fill: a store read (read_timeout, 1 s by default)
# with room to spare. A lease whose holder never fills (the session is absent, or the
# process died) only keeps other readers' fills out until then: they read the store anyway.
_LEASE_MS: Final = 5000
_MISS: Final = CacheLookup(None, None)
_MAX_VERSION: Final = 10**_VERSION_DIGITS - 1
# Session ids are validated upstream; this only guards key construction (fullmatch: no
# trailing newline, no braces that would change the hash tag).
_SESSION_ID: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_KEY_PREFIX: Final = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
# The largest value a META can be: the item limit plus the version and epoch prefixes. A
# larger reply is not ours: refused unread (a miss, and the key is dropped).
_MAX_VALUE_BYTES: Final = 400 * 1024 + _VERSION_DIGITS + _EPOCH_DIGITS

# The epoch: the replication id of the primary running the script. A replica takes a new
# one when it is promoted, so a value stamped with another epoch was written before a
# failover (or a restart, or a reshard moved it) and may be older than what memsdk
# acknowledged since. A node that is not a primary, or a primary with min-replicas-to-write
# set and no replica in reach (the old side of a partition, which Redis itself stops
# taking writes on), is not trusted at all: READONLY, which makes redis-py's Sentinel
# client drop the connection, so that the next one asks the Sentinels for the primary.
_EPOCH_LUA: Final = """
local function primary_epoch()
  local info = redis.call('INFO', 'replication')
  if not string.find(info, 'role:master', 1, true) then
    return nil, 'READONLY memsdk: not a primary'
  end
  if string.match(info, 'min_slaves_good_slaves:(%d+)') == '0' then
    return nil, 'READONLY memsdk: no replica in reach (min-replicas-to-write)'
  end
  local epoch = string.match(info, 'master_replid:(%x+)')
  if not epoch or string.len(epoch) ~= 40 then
    return nil, 'ERR memsdk: no master_replid in INFO replication'
  end
  return epoch
end
"""

# What every write script starts with: the primary's epoch (or the error that refuses a
# non-primary), the new value's version prefix, and the value stored now.
_WRITE_PRELUDE_LUA: Final = (
    _EPOCH_LUA
    + """
local epoch, err = primary_epoch()
if not epoch then
  return redis.error_reply(err)
end
local new = string.sub(ARGV[1], 1, 20)
local cur = redis.call('GET', KEYS[1])
"""
)

# KEYS[1] = key; ARGV[1] = 20-digit version .. payload; ARGV[2] = TTL in seconds. Stores
# version .. epoch .. payload. Equal-length digit strings order like the numbers they spell.
# A value from another epoch may be replaced by the same version (re-stamped: the caller
# read it from the store), never by an older one. A stored value without a well-formed
# prefix is foreign or corrupt, or a reader's lease (which a write-through ends): overwrite
# it rather than let it block forever.
_PUT_LUA: Final = (
    _WRITE_PRELUDE_LUA
    + """
if cur then
  local old = string.sub(cur, 1, 20)
  if string.len(old) == 20 and not string.find(old, '%D')
      and (old > new or (old == new and string.sub(cur, 21, 60) == epoch)) then
    return 0
  end
end
redis.call('SET', KEYS[1], new .. epoch .. string.sub(ARGV[1], 21), 'EX', ARGV[2])
return 1
"""
)

# KEYS[1] = key; ARGV[1] = a lease token ('' for none), ARGV[2] = the lease's TTL in ms,
# ARGV[3] = the largest value a META can be (a larger one is not ours: deleted unsent).
# The value if it was stored in this primary's epoch (or is malformed: the caller drops it).
# A miss otherwise: 1 if the key was absent and now holds our lease, 2 if it held another
# primary's value and now holds our lease, 0 for such a value without a lease, nil for an
# absent key without a lease or a key holding another reader's lease. A lease is `L` ..
# token: only a fill carrying that token may replace it (see _FILL_LUA); a write-through,
# an invalidation or the key's loss ends it. pcall: a replica or a full noeviction Redis
# refuses the SET, and that is a miss without a lease, not an error.
_GET_LUA: Final = (
    _EPOCH_LUA
    + """
local function lease(granted)
  if ARGV[1] == '' then
    return nil
  end
  local ok = redis.pcall('SET', KEYS[1], 'L' .. ARGV[1], 'PX', ARGV[2])
  if type(ok) == 'table' and ok.ok then
    return granted
  end
  return nil
end
local cur = redis.call('GET', KEYS[1])
if not cur then
  return lease(1)
end
if string.len(cur) > tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  return lease(1)
end
if string.sub(cur, 1, 1) == 'L' then
  return nil
end
local epoch, err = primary_epoch()
if not epoch then
  return redis.error_reply(err)
end
local version = string.sub(cur, 1, 20)
if string.sub(cur, 21, 60) ~= epoch and string.len(version) == 20
    and not string.find(version, '%D') then
  return lease(2) or 0
end
return cur
"""
)

# KEYS[1] = key; ARGV[1] = 20-digit version .. payload; ARGV[2] = TTL in seconds; ARGV[3] =
# the lease token of the lookup that missed ('' for none). A read-through fill: the META
# was read from the store after that lookup, and a newer write may have committed since.
# So it lands only where nothing newer can have been written through: over its own lease
# (no write-through, invalidation or loss of the key since the lookup), or over an older
# value this primary stored. Never on an absent key (lost since the lookup: a newer
# write-through may have been lost with it), another reader's lease, another primary's
# value or a malformed one.
_FILL_LUA: Final = (
    _WRITE_PRELUDE_LUA
    + """
if not cur then
  return 0
end
if string.sub(cur, 1, 1) == 'L' then
  if ARGV[3] == '' or cur ~= 'L' .. ARGV[3] then
    return 0
  end
else
  local old = string.sub(cur, 1, 20)
  if string.len(old) ~= 20 or string.find(old, '%D')
      or string.sub(cur, 21, 60) ~= epoch or old >= new then
    return 0
  end
end
redis.call('SET', KEYS[1], new .. epoch .. string.sub(ARGV[1], 21), 'EX', ARGV[2])
return 1
"""
)

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

    async def __call__(
        self, client: Redis | RedisCluster, key: str, *args: bytes | str | int
    ) -> Any:
        # Not redis-py's Script: it reloads with SCRIPT LOAD, which a cluster client sends
        # to every primary; EVAL reaches only the key's node and needs no second round trip.
        # redis-py types eval/evalsha as `Awaitable[str] | str` for sync and async alike.
        try:
            return await cast(Awaitable[Any], client.evalsha(self.sha, 1, key, *args))
        except NoScriptError:
            return await cast(Awaitable[Any], client.eval(self.source, 1, key, *args))


_PUT: Final = _Script(_PUT_LUA)
_GET: Final = _Script(_GET_LUA)
_FILL: Final = _Script(_FILL_LUA)
# What each cache operation sends, as Redis (and its slowlog) names it.
_COMMANDS: Final = {"get": "EVALSHA", "put": "EVALSHA", "fill": "EVALSHA", "invalidate": "DEL"}
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


class _SharedLookupSentinel(Sentinel):
    """redis-py's Sentinel, with one primary look-up in flight at a time, shared by callers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # untyped upstream
        # Our own list: redis-py reorders self.sentinels, and its `sentinels[0], sentinels[i]
        # = ...` swap, run by two interleaved look-ups, can duplicate one Sentinel and drop
        # another from the list (whose connections then never close).
        self.nodes: tuple[Redis, ...] = tuple(self.sentinels)
        self._lookup: asyncio.Future[tuple[str, int]] | None = None

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        """The primary's address; concurrent callers (every new connection during a
        failover) share one look-up, which also keeps the list above consistent."""
        lookup = self._lookup
        if lookup is None or lookup.done():
            lookup = asyncio.ensure_future(super().discover_master(service_name))
            # Retrieved here in case every caller gave up (their deadline) before the end.
            lookup.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._lookup = lookup
        # One caller's deadline must not cancel the look-up the others wait for.
        return await asyncio.shield(lookup)

    async def aclose(self) -> None:
        """Stop a look-up in flight and close every Sentinel connection."""
        lookup, self._lookup = self._lookup, None
        if lookup is not None and not lookup.done():
            lookup.cancel()
            await asyncio.gather(lookup, return_exceptions=True)
        for node in self.nodes:
            await _close_quietly(node, None)


class _DecodeError(Exception):
    """A cached value that is not a version prefix plus a MetaRecord of the key's session."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


_BYPASSED: Final = object()
_DESCRIPTIONS: Final = {
    "standalone": "redis",
    "cluster": "redis-cluster",
    "sentinel": "redis-sentinel",
}


class _Failed:
    """A command that failed (timeout, connection, server error): a miss, never raised."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class RedisMetaCache:
    """MetaCache on Redis: `redis://`, `rediss://` (TLS), `redis+cluster://` or
    `redis[s]+sentinel://` URLs (see memsdk.config.parse_redis_url)."""

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
        key_prefix: str | None = None,
    ) -> None:
        """`key_prefix`: this deployment's namespace in a Redis that others may share
        (keys `memsdk:<prefix>:{<session_id>}:meta`); None: `memsdk:{<session_id>}:meta`."""
        self._spec: RedisSpec = parse_redis_url(url)
        if key_prefix is not None and not _KEY_PREFIX.fullmatch(key_prefix):
            raise ConfigError("key_prefix must be 1-64 characters of [A-Za-z0-9._:-]")
        self._key_head = "memsdk:" if key_prefix is None else f"memsdk:{key_prefix}:"
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
        self._sentinel: _SharedLookupSentinel | None = None
        # Cluster nodes of slot maps redis-py dropped, to close (see _track_dropped_slot_maps).
        self._dropped_nodes: list[ClusterNode] = []
        self._log = RateLimitedLog(_log)
        self._hits = self._misses = self._errors = self._writes = self._refused = 0
        self._previous_epoch = 0
        # A circuit breaker: while Redis is down or hanging, calls are skipped (a miss at no
        # cost) instead of each waiting out redis_timeout.
        self._gate = gate
        self._bypassed = 0
        self._observer = observer

    @property
    def description(self) -> str:
        """'redis', 'redis-cluster' or 'redis-sentinel': never the URL (it may hold a password)."""
        return _DESCRIPTIONS[self._spec.topology]

    async def open(self) -> None:
        """Create the client; no I/O, so an unreachable server only shows up as misses."""
        if self._client is None:
            self._client = self._new_client()

    def _new_client(self) -> Redis | RedisCluster:
        settings: dict[str, Any] = {
            # No socket_timeout: redis-py would wrap every send in asyncio.wait_for, which on
            # Python 3.11 loses a cancel that lands as the send completes (the caller's call
            # then returns normally). _send bounds every command with our own
            # asyncio.timeout instead; the connect timeout uses asyncio.timeout too.
            "socket_timeout": None,
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
        spec = self._spec
        credentials: dict[str, Any] = {"username": spec.username, "password": spec.password}
        if spec.topology == "cluster":
            host, port = spec.nodes[0]
            # Per node: max_connections. retry=0 also means no cluster-level retry after
            # ConnectionError/TimeoutError/CLUSTERDOWN (each would re-discover the topology
            # first); MOVED/ASK/TRYAGAIN are still followed, up to 16 redirects.
            # reinitialize_steps=0: a MOVED patches that slot only. By default every 5th
            # MOVED closes every connection (in-flight commands of other tasks included)
            # and reloads the topology, which turns a reshard into a burst of errors.
            cluster = RedisCluster(
                host=host, port=port, reinitialize_steps=0, **credentials, **settings
            )
            cluster.commands_parser = _CommandTableOnce()
            _track_dropped_slot_maps(cluster, self._dropped_nodes)
            return cluster
        if spec.topology == "sentinel":
            assert spec.service_name is not None
            # A new connection first asks the Sentinels, in turn, for the primary's address
            # (SENTINEL MASTERS); one that answers moves to the front. A connection error or
            # READONLY (the old primary came back as a replica) closes the connection, so
            # the next call asks again: after a failover the client follows the Sentinels.
            # The Sentinels get the same short timeouts and no retries; AUTH, if any, is
            # the primary's (Sentinels without a password).
            self._sentinel = _SharedLookupSentinel(
                list(spec.nodes),
                sentinel_kwargs={
                    # Kept for the Sentinels: each must be bounded on its own so that the
                    # look-up moves on to the next one. The look-up runs in a task of its
                    # own that callers await through a shield (their cancel is theirs), and
                    # aclose() stops it with stop_tasks, which outlasts a swallowed cancel.
                    "socket_timeout": self._timeout,
                    "socket_connect_timeout": self._connect_timeout,
                    "retry": Retry(NoBackoff(), 0),
                    "health_check_interval": 0,
                    # A few concurrent look-ups per Sentinel; a full pool is a failed
                    # look-up there, and the next Sentinel is asked.
                    "max_connections": 4,
                    "driver_info": None,
                    "ssl": spec.tls,
                },
                **settings,
            )
            # redis-py leaves master_for() untyped.
            master = self._sentinel.master_for(
                spec.service_name, db=spec.db, ssl=spec.tls, **credentials
            )
            return cast(Redis, master)
        host, port = spec.nodes[0]
        return Redis(host=host, port=port, db=spec.db, ssl=spec.tls, **credentials, **settings)

    async def aclose(self) -> None:
        """Close the client and its connections; idempotent."""
        client, self._client = self._client, None
        if client is None:
            return
        if isinstance(client, RedisCluster):
            # Also the nodes of dropped slot maps not reaped yet (see _reap_orphans).
            nodes = {id(n): n for n in [*_cluster_nodes(client), *self._dropped_nodes]}
            self._dropped_nodes.clear()
            await _disconnect_nodes(list(nodes.values()), None)
        await _close_quietly(client, None)
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            await sentinel.aclose()

    async def get(self, session_id: str) -> MetaRecord | None:
        """The cached META (live or a tombstone), or None on a miss or any trouble."""
        return (await self._lookup(session_id, "")).meta

    async def lookup(self, session_id: str) -> CacheLookup:
        """get(), and on a miss a lease that lets fill() store what the store then says."""
        return await self._lookup(session_id, secrets.token_hex(8))

    async def _lookup(self, session_id: str, token: str) -> CacheLookup:
        key = self._key(session_id)
        client = self._client
        if key is None or client is None:
            self._fail_get("closed" if key is not None else "bad_session_id", None)
            return _MISS
        started = time.time_ns()
        outcome = await self._send(
            client, lambda: _GET(client, key, token, _LEASE_MS, _MAX_VALUE_BYTES)
        )
        if outcome is _BYPASSED:
            self._misses += 1
            self._tell("get", "bypassed", started, None)
            return _MISS
        if isinstance(outcome, _Failed):
            self._fail_get(_kind(outcome.error), outcome.error)
            self._tell("get", "error", started, outcome.error)
            return _MISS
        if outcome is None or isinstance(outcome, int):
            # nil, 0: a miss; 1, 2: a miss that leased the key to this lookup. 0 and 2: the
            # key held a META another primary stored (before a failover or restart, or
            # before a reshard moved it here), maybe older than an acknowledged append; the
            # next write, or the fill of the lease that replaced it, stores a current one.
            self._misses += 1
            if outcome in (0, 2):
                self._previous_epoch += 1
                self._warn("meta_stored_by_another_primary", None)
            self._tell("get", "miss", started, None)
            return CacheLookup(None, token) if outcome in (1, 2) else _MISS
        raw = cast(bytes, outcome)
        try:
            meta = _decode(raw, session_id)
        except _DecodeError as exc:
            # Not a META this cache wrote for this session (corrupt, hostile, another
            # session's value copied onto this key): never served, never kept.
            await self._drop(client, key, raw)
            self._fail_get(exc.kind, None)
            self._tell("get", "error", started, None)
            return _MISS
        self._hits += 1
        self._tell("get", "hit", started, None)
        return CacheLookup(meta, None)

    async def put(self, meta: MetaRecord, *, now_s: int, essential: bool = False) -> bool:
        """Cache `meta` unless a version >= meta.version is cached; True if stored.

        `essential` (a write-through): sent even while the breaker is open, see _send.
        """
        return await self._write("put", _PUT, meta, now_s, essential=essential)

    async def fill(self, meta: MetaRecord, *, now_s: int, lease: str | None) -> bool:
        """Cache `meta` read from the store after a lookup, if nothing newer can have been
        written since: over that lookup's lease, or over an older value; True if stored."""
        return await self._write("fill", _FILL, meta, now_s, lease or "")

    async def _write(
        self,
        operation: str,
        script: _Script,
        meta: MetaRecord,
        now_s: int,
        *extra: str,
        essential: bool = False,
    ) -> bool:
        """Run a write script (ARGV: version + value, TTL, then `extra`); True if stored."""
        key = self._key(meta.session_id)
        client = self._client
        if key is None or client is None:
            return self._fail("closed" if key is not None else "bad_session_id", None)
        if not 0 <= meta.version <= _MAX_VERSION:
            return self._fail("version_out_of_range", None)
        # A live META lives as long as its session (>= 1 s here); an expired one is a
        # tombstone that keeps refusing stale fills for a while.
        live = meta.expires_at > now_s and not meta.deleted
        ttl = meta.expires_at - now_s if live else self._tombstone_ttl
        try:
            value = _encode(meta)
        except Exception as exc:  # never raise, even for a META we cannot serialise
            return self._fail("unencodable_meta", exc)
        started = time.time_ns()
        stored = await self._send(
            client, lambda: script(client, key, value, ttl, *extra), essential=essential
        )
        if stored is _BYPASSED:
            self._tell(operation, "bypassed", started, None)
            return False
        if isinstance(stored, _Failed):
            self._tell(operation, "error", started, stored.error)
            return self._fail(_kind(stored.error), stored.error)
        if stored == 1:
            self._writes += 1
            self._tell(operation, "stored", started, None)
            return True
        self._refused += 1
        self._tell(operation, "refused", started, None)
        return False

    async def invalidate(self, session_id: str, *, essential: bool = False) -> bool:
        """Drop the cached META; True when Redis confirmed the delete."""
        key = self._key(session_id)
        client = self._client
        if key is None or client is None:
            return self._fail("closed" if key is not None else "bad_session_id", None)
        started = time.time_ns()
        deleted = await self._send(client, lambda: client.delete(key), essential=essential)
        if deleted is _BYPASSED:
            self._tell("invalidate", "bypassed", started, None)
            return False
        if isinstance(deleted, _Failed):
            self._tell("invalidate", "error", started, deleted.error)
            return self._fail(_kind(deleted.error), deleted.error)
        self._tell("invalidate", "deleted", started, None)
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
            previous_epoch=self._previous_epoch,
        )

    async def _send(
        self,
        client: Redis | RedisCluster,
        command: Callable[[], Awaitable[Any]],
        *,
        essential: bool = False,
    ) -> Any:
        """One command within the call budget and the breaker: its reply, _BYPASSED (the
        breaker is open: not sent) or _Failed (any trouble; never raised). Behind
        Sentinel, a node that turned out not to be the primary is left for the one the
        Sentinels name, once, within the same budget.

        An essential command (a write-through, its repair) is sent even while the breaker
        is open, without a verdict for it. Breakers are per process: a writer's may be open
        while a reader's is closed, and a skipped write-through leaves Redis with an older
        META that the reader trusts. A Redis that refuses connections makes the attempt
        cost next to nothing; one that hangs costs the append one call budget.
        """
        gate = self._gate
        admitted = gate is None or gate.try_acquire()
        if not admitted and not essential:
            self._bypassed += 1
            return _BYPASSED
        judged = gate if admitted else None
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._budget):
                try:
                    reply = await command()
                except RedisConnectionError as exc:
                    if not self._moved(exc):
                        raise
                    # The node is no longer the primary: followed once, like a cluster's
                    # MOVED. redis-py closed that connection; the next asks the Sentinels.
                    reply = await command()
        except asyncio.CancelledError:
            if judged is not None:
                judged.record_neutral()  # the caller gave up: no verdict on Redis
            raise
        except Exception as exc:
            if judged is not None:
                judged.record_failure(time.monotonic() - started)
            await self._reap_orphans(client)
            return _Failed(exc)
        if judged is not None:
            judged.record_success(time.monotonic() - started)
        await self._reap_orphans(client)
        return reply

    def _tell(self, operation: str, outcome: str, started_ns: int, error: Exception | None) -> None:
        if self._observer is not None:
            error_type = None if error is None else type(error).__name__
            command = _COMMANDS[operation]
            self._observer.observe(
                operation, command, outcome, started_ns, time.time_ns(), error_type
            )

    def _moved(self, exc: RedisConnectionError) -> bool:
        # redis-py's Sentinel connection turns READONLY (from Redis or from our scripts)
        # into "ConnectionError: The previous master is now a slave", raised while
        # handling the ReadOnlyError.
        return self._sentinel is not None and isinstance(exc.__context__, ReadOnlyError)

    def _key(self, session_id: str) -> str | None:
        if isinstance(session_id, str) and _SESSION_ID.fullmatch(session_id):
            return f"{self._key_head}{{{session_id}}}:meta"
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
        # (fixed upstream by redis-py#4057). Every slot map it drops is handed to us (two
        # may be dropped between two of our calls); close what no current map uses.
        if not isinstance(client, RedisCluster) or not self._dropped_nodes:
            return
        dropped = {id(n): n for n in self._dropped_nodes}
        self._dropped_nodes.clear()
        keep = {id(node) for node in _cluster_nodes(client)}
        orphans = [n for key, n in dropped.items() if key not in keep]
        if orphans:
            await _disconnect_nodes(orphans, self._budget)

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


def _decode(raw: bytes, session_id: str) -> MetaRecord:
    """The MetaRecord of `session_id` that `raw` holds; _DecodeError for anything else."""
    if not isinstance(raw, bytes) or len(raw) > _MAX_VALUE_BYTES:
        raise _DecodeError("oversized_value")
    prefix = raw[:_VERSION_DIGITS]
    if len(prefix) != _VERSION_DIGITS or not prefix.isdigit():
        raise _DecodeError("undecodable_value")
    payload = raw[_VERSION_DIGITS + _EPOCH_DIGITS :]
    is_json = payload[:1] == b"{"
    try:
        meta = (_JSON_DECODER if is_json else _DECODER).decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        # RecursionError: msgspec's answer to deeply nested input, not a DecodeError.
        raise _DecodeError("undecodable_value") from exc
    if meta.version != int(prefix):
        raise _DecodeError("undecodable_value")
    if meta.session_id != session_id:
        raise _DecodeError("foreign_value")
    # The bracket count means something in JSON only: msgpack nests with other bytes.
    if not (is_json and too_few_brackets_to_nest(payload)) and not (
        within_depth(meta.page_context) and within_depth(meta.attributes)
    ):
        raise _DecodeError("undecodable_value")  # deeper than memsdk ever writes
    return meta


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        # Our deadline (the builtin) or a socket timeout (redis-py's own class): one kind.
        return "timeout"
    return type(exc).__name__ if isinstance(exc, RedisError | OSError) else "unexpected_error"


def _track_dropped_slot_maps(client: RedisCluster, dropped: list[ClusterNode]) -> None:
    """Make the client's NodesManager append the nodes of every slot map it replaces.

    NodesManager has __slots__, so its `slots_cache` slot is wrapped by a property in a
    subclass with the same layout, and the instance's class is swapped for it. The nodes
    are held here, strongly, until _reap_orphans closes them: left to the garbage
    collector, a node with an open socket warns (ResourceWarning) and leaks it meanwhile.
    """
    manager = client.nodes_manager
    base = type(manager)
    member = base.__dict__["slots_cache"]  # the __slots__ descriptor

    def get(self: Any) -> Any:
        return member.__get__(self, base)

    def set_(self: Any, new: Any) -> None:
        try:
            old = member.__get__(self, base)
        except AttributeError:  # the first map, set in __init__
            old = None
        member.__set__(self, new)
        if old is not None and old is not new:
            # 16,384 slots share a handful of nodes: hand each one over once.
            dropped.extend({id(node): node for nodes in old.values() for node in nodes}.values())

    manager.__class__ = type(
        "_TrackedNodesManager", (base,), {"__slots__": (), "slots_cache": property(get, set_)}
    )


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
