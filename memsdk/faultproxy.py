"""A loopback HTTP/1.1 proxy that injects DynamoDB faults: for tests and `memsdk simulate`.

    async with FaultProxy(upstream="http://127.0.0.1:8000", seed=7) as proxy:
        store = f"dynamodb://t?region=us-east-1&endpoint={proxy.endpoint}"
        proxy.set_mode("throttle")                             # every request: HTTP 400
        proxy.set_mode("pass", probability=0.1, fault="throttle")  # 10% of requests

DynamoDB Local never throttles, never fails with a 5xx and never hangs; this proxy does, on
command. The mode is read once per request, so a change applies to the next request of
every open keep-alive connection. It speaks just enough HTTP/1.1 for DynamoDB's JSON
protocol: requests with a Content-Length body; replies with a Content-Length or chunked
body (1xx interim replies are not supported: DynamoDB never sends them).

Modes (FaultMode): pass, http5xx, throttle, latency, reset, blackhole, down, and
lost_reply (the request is forwarded and applied, then the connection is reset before the
reply: a write whose outcome the client cannot know). Outcomes
(FaultCounts.by_outcome, one per request read, summing to requests_total): forwarded
(sent on, after any delay), http5xx, throttle, reset, blackhole, lost_reply, rejected
(chunked body).

`capacity_per_s` models a table at its provisioned throughput (a flash-sale surge): a token
bucket of that many requests per second (burst: one second's worth); a request that finds
it empty is throttled as DynamoDB would, whatever the mode says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http
import logging
import random
import time
import zlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, NamedTuple, get_args
from urllib.parse import urlsplit

from memsdk.loopback import LoopbackListener, reset_connection

__all__ = ["FaultCounts", "FaultMode", "FaultProxy"]

logger = logging.getLogger(__name__)

FaultMode = Literal[
    "pass", "http5xx", "throttle", "latency", "reset", "blackhole", "down", "lost_reply"
]
# What `fault` may be in probability mode: per-request faults ("down" is per listener).
_REQUEST_FAULTS = frozenset({"http5xx", "throttle", "latency", "reset", "blackhole", "lost_reply"})
OUTCOMES = ("forwarded", "http5xx", "throttle", "reset", "blackhole", "lost_reply", "rejected")
_TYPE_PREFIX = "com.amazonaws.dynamodb.v20120810#"
_THROTTLE_MESSAGE = "Rate of requests exceeds the allowed throughput."
_CHUNKED_MESSAGE = "The fault proxy does not accept chunked request bodies: send Content-Length."
_MAX_HEAD_BYTES = 64 * 1024
# Anything a broken or misbehaving peer can raise while we read, parse or write.
_PEER_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)

_Upstream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class FaultCounts:
    """What the proxy saw since start (or the last reset_counts)."""

    requests_total: int = 0
    connections_total: int = 0
    # Forwarded requests that got no complete reply from the upstream (down, reset, ...).
    upstream_failures: int = 0
    by_outcome: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    # Keyed by the X-Amz-Target operation ("GetItem", "Query", ...).
    by_operation: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Plan:
    mode: FaultMode
    status: int
    delay_s: float
    probability: float
    fault: FaultMode | None
    capacity_per_s: float | None


class _Request(NamedTuple):
    head: bytes  # request line and headers, forwarded byte for byte
    body: bytes
    operation: str
    keep_alive: bool
    chunked: bool


def _headers(head: bytes) -> dict[str, str]:
    """Header names lower-cased; the first line (request or status line) is skipped."""
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _error_reply(status: int, code: str, message: str) -> bytes:
    """A complete DynamoDB-style JSON error reply, checksum included as DynamoDB sends it."""
    body = f'{{"__type":"{_TYPE_PREFIX}{code}","message":"{message}"}}'.encode()
    return (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/x-amz-json-1.0\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-crc32: {zlib.crc32(body)}\r\n\r\n"
    ).encode() + body


class FaultProxy:
    """A fault-injecting HTTP proxy on 127.0.0.1 in front of one http:// upstream."""

    def __init__(self, *, upstream: str, seed: int | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError("upstream must be http://HOST:PORT (no TLS)")
        self._upstream = (parts.hostname, parts.port)
        self._rng = random.Random(seed)
        self._plan = _Plan("pass", 500, 0.0, 1.0, None, None)
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._mode_left: int | None = None  # requests left under the plan, then "pass"
        self._counts = FaultCounts()
        self._listener = LoopbackListener(self._handle, limit=_MAX_HEAD_BYTES)
        self._clients: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def endpoint(self) -> str:
        """http://127.0.0.1:PORT, stable for the proxy's life (across "down" too)."""
        port = self._listener.port
        if port is None:
            raise RuntimeError("FaultProxy is not started")
        return f"http://127.0.0.1:{port}"

    @property
    def counts(self) -> FaultCounts:
        """A snapshot of the counters (later traffic does not change it)."""
        c = self._counts
        return dataclasses.replace(
            c, by_outcome=dict(c.by_outcome), by_operation=dict(c.by_operation)
        )

    def reset_counts(self) -> None:
        """Zero every counter."""
        self._counts = FaultCounts()

    async def start(self) -> None:
        """Listen on a free loopback port; idempotent."""
        if self._closed:
            raise RuntimeError("FaultProxy is closed")
        self._listener.listen()  # fixes the port, even for a proxy set "down" before start
        if self._plan.mode == "down":
            self._listener.stop()
        await self._listener.started()

    def set_mode(
        self,
        mode: FaultMode,
        *,
        status: int = 500,
        delay_s: float = 0.0,
        probability: float = 1.0,
        fault: FaultMode | None = None,
        capacity_per_s: float | None = None,
        requests: int | None = None,
    ) -> None:
        """Apply `mode` from the next request on; with `fault`, apply it to a random share.

        With `capacity_per_s`, requests beyond that rate are throttled (a full table).
        With `requests`, only that many requests get `mode`; then it is "pass" again.
        """
        if mode not in get_args(FaultMode):
            raise ValueError(f"unknown mode {mode!r}")
        if not 500 <= status <= 599:
            raise ValueError("status must be a 5xx code")
        if delay_s < 0 or not 0.0 <= probability <= 1.0:
            raise ValueError("delay_s must be >= 0 and probability in [0, 1]")
        if fault is not None and (fault not in _REQUEST_FAULTS or mode == "down"):
            raise ValueError(f"fault must be one of {sorted(_REQUEST_FAULTS)}, mode not down")
        if capacity_per_s is not None and not capacity_per_s > 0:
            raise ValueError("capacity_per_s must be None or > 0")
        if requests is not None and (mode == "down" or not requests >= 1):
            raise ValueError("requests must be None or >= 1, and mode not down")
        self._mode_left = requests
        self._plan = _Plan(mode, status, delay_s, probability, fault, capacity_per_s)
        if capacity_per_s is not None:
            self._tokens = capacity_per_s  # start with a full second's burst
            self._tokens_at = time.monotonic()
        if self._listener.port is None or self._closed:
            return
        if mode == "down":
            self._go_down()
        else:
            self._listener.listen()

    async def aclose(self) -> None:
        """Stop listening and close every connection; idempotent."""
        self._closed = True
        self._go_down()
        await self._listener.started()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _go_down(self) -> None:
        self._listener.stop()
        for writer in list(self._clients):
            reset_connection(writer)  # an outage also breaks the connections already open

    # ------------------------------------------------------------------ connections

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio.start_server runs each handler in its own task
        self._handlers.add(task)
        self._clients.add(writer)
        self._counts.connections_total += 1
        upstream: _Upstream | None = None
        try:
            if self._plan.mode == "down" or self._closed:
                reset_connection(writer)  # accepted just before the listener closed
                return
            while (request := await self._read_request(reader)) is not None:
                outcome, plan = self._decide(request)
                if outcome in ("forwarded", "lost_reply"):
                    await asyncio.sleep(plan.delay_s)
                    try:
                        reply, upstream = await self._forward(request, upstream)
                    except _PEER_ERRORS as exc:
                        self._counts.upstream_failures += 1
                        logger.debug("fault proxy: upstream failed (%s)", type(exc).__name__)
                        return  # the client sees the connection drop, as from a dead server
                    if outcome == "lost_reply":
                        reset_connection(writer)  # applied upstream; the client never hears of it
                        return
                    writer.write(reply)
                    if upstream is None:
                        await writer.drain()
                        return  # the upstream ended its connection: so do we, in step
                elif outcome in ("http5xx", "throttle", "rejected"):
                    writer.write(self._fault_reply(outcome, plan))
                    if outcome == "rejected":
                        await writer.drain()
                        return  # the body was not read: the stream is out of step
                elif outcome == "reset":
                    reset_connection(writer)
                    return
                else:  # blackhole: swallow whatever comes until the client gives up
                    while await reader.read(65536):
                        pass
                    return
                await writer.drain()
                if not request.keep_alive:
                    return
        except _PEER_ERRORS as exc:
            logger.debug("fault proxy: client connection ended (%s)", type(exc).__name__)
        finally:
            self._clients.discard(writer)
            self._handlers.discard(task)
            if upstream is not None:
                upstream[1].close()
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request | None:
        """The next request, or None when the client closed the connection between requests."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        headers = _headers(head)
        version = head.split(b"\r\n", 1)[0].rsplit(b" ", 1)[-1]
        connection = headers.get("connection", "").lower()
        chunked = "transfer-encoding" in headers
        body = b"" if chunked else await reader.readexactly(int(headers.get("content-length", "0")))
        return _Request(
            head=head,
            body=body,
            operation=headers.get("x-amz-target", "").rpartition(".")[2] or "?",
            keep_alive=version == b"HTTP/1.1" and connection != "close",
            chunked=chunked,
        )

    def _decide(self, request: _Request) -> tuple[str, _Plan]:
        """Pick and count this request's outcome under the current plan."""
        plan = self._plan
        mode: FaultMode = plan.mode
        if plan.fault is not None and self._rng.random() < plan.probability:
            mode = plan.fault
        outcome: str
        if request.chunked:
            outcome = "rejected"
        elif plan.capacity_per_s is not None and not self._take_token(plan.capacity_per_s):
            outcome = "throttle"
        elif mode in ("pass", "latency"):
            outcome = "forwarded"
            if mode == "pass" and plan.fault == "latency":
                plan = dataclasses.replace(plan, delay_s=0.0)  # the delay is the fault's
        elif mode == "down":
            outcome = "reset"  # a request raced set_mode("down") on an open connection
        else:
            outcome = mode
        if self._mode_left is not None:
            self._mode_left -= 1
            if self._mode_left == 0:
                self._mode_left = None
                self._plan = _Plan("pass", 500, 0.0, 1.0, None, None)
        c = self._counts
        c.requests_total += 1
        c.by_outcome[outcome] += 1
        c.by_operation[request.operation] = c.by_operation.get(request.operation, 0) + 1
        logger.debug("fault proxy: %s -> %s", request.operation, outcome)
        return outcome, plan

    def _take_token(self, rate: float) -> bool:
        """Take one request's worth from the capacity bucket; False when it is empty."""
        now = time.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _fault_reply(self, outcome: str, plan: _Plan) -> bytes:
        if outcome == "throttle":
            return _error_reply(400, "ThrottlingException", _THROTTLE_MESSAGE)
        if outcome == "rejected":
            return _error_reply(400, "SerializationException", _CHUNKED_MESSAGE)
        return _error_reply(plan.status, "InternalServerError", "Injected by the fault proxy.")

    # ------------------------------------------------------------------ upstream

    async def _forward(
        self, request: _Request, upstream: _Upstream | None
    ) -> tuple[bytes, _Upstream | None]:
        """The upstream's reply, and the connection to reuse for the next request (if any)."""
        if upstream is not None and upstream[0].at_eof():
            upstream[1].close()  # the upstream closed it while idle: not a failure
            upstream = None
        if upstream is None:
            upstream = await asyncio.open_connection(*self._upstream, limit=_MAX_HEAD_BYTES)
        try:
            reply, keep = await self._exchange(request, upstream)
        except BaseException:
            upstream[1].close()
            raise
        if not keep:
            upstream[1].close()
            return reply, None
        return reply, upstream

    async def _exchange(self, request: _Request, upstream: _Upstream) -> tuple[bytes, bool]:
        """Send `request` on `upstream` and return (the whole reply, keep the connection)."""
        up_reader, up_writer = upstream
        up_writer.write(request.head + request.body)
        await up_writer.drain()
        head = await up_reader.readuntil(b"\r\n\r\n")
        headers = _headers(head)
        status = int(head.split(b" ", 2)[1])
        parts = [head]
        keep = headers.get("connection", "").lower() != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            # Relayed as received, chunk framing included.
            while True:
                size_line = await up_reader.readuntil(b"\r\n")
                parts.append(size_line)
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    break
                parts.append(await up_reader.readexactly(size + 2))  # data + CRLF
            while (line := await up_reader.readuntil(b"\r\n")) != b"\r\n":
                parts.append(line)  # trailers
            parts.append(line)
        elif "content-length" in headers:
            parts.append(await up_reader.readexactly(int(headers["content-length"])))
        elif status not in (204, 304):
            parts.append(await up_reader.read())  # the body ends when the upstream closes
            keep = False
        return b"".join(parts), keep
