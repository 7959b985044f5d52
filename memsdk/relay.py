"""A loopback TCP relay that can be cut: for tests and `memsdk simulate --chaos redis-kill`.

    async with TcpRelay("127.0.0.1", 6379) as relay:
        url = f"redis://127.0.0.1:{relay.port}/0"   # clients connect through the relay
        relay.cut()        # every open connection reset, new connections refused
        relay.restore()    # listening again, on the same port

Killing someone's Redis to show what a Redis outage does is not ours to do. Cutting our own
relay in front of it looks the same to a client: open connections are reset (TCP RST, as
from a crashed server) and connects are refused, while the server itself keeps running.
Bytes are relayed as they come, in both directions, so any protocol works (plain TCP only:
a TLS certificate names the server, not the relay).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from types import TracebackType

from memsdk.loopback import LoopbackListener, reset_connection

__all__ = ["RelayCounts", "TcpRelay"]

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class RelayCounts:
    """What the relay did since start."""

    connections_total: int = 0
    # Connections the relay accepted but could not open to the upstream.
    upstream_failures: int = 0
    # Connections reset by cut() (those open at the time).
    connections_cut: int = 0
    cuts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class TcpRelay:
    """Relays TCP connections from 127.0.0.1:<port> to one upstream host and port."""

    def __init__(self, upstream_host: str, upstream_port: int, *, connect_timeout: float = 2.0):
        if not upstream_host or not 0 < upstream_port < 65_536:
            raise ValueError("upstream must be a host name and a port in 1-65535")
        self._upstream = (upstream_host, upstream_port)
        self._connect_timeout = connect_timeout
        self._listener = LoopbackListener(self._handle)
        # Each open relayed connection: (client side, upstream side or None while connecting).
        self._pairs: dict[asyncio.StreamWriter, asyncio.StreamWriter | None] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._cut = False
        self._closed = False
        self._counts = RelayCounts()

    @property
    def port(self) -> int:
        """The loopback port clients connect to (stable across cut() and restore())."""
        port = self._listener.port
        if port is None:
            raise RuntimeError("TcpRelay is not started")
        return port

    @property
    def is_cut(self) -> bool:
        """True between cut() and restore()."""
        return self._cut

    @property
    def open_connections(self) -> int:
        """Relayed connections open right now."""
        return len(self._pairs)

    @property
    def counts(self) -> RelayCounts:
        """A snapshot of the counters."""
        return dataclasses.replace(self._counts)

    async def start(self) -> None:
        """Listen on a free loopback port; idempotent."""
        if self._closed:
            raise RuntimeError("TcpRelay is closed")
        if not self._cut:
            self._listener.listen()
        await self._listener.started()

    def cut(self) -> None:
        """Stop listening and reset every open connection, at once; idempotent."""
        if self._cut:
            return
        self._cut = True
        self._counts.cuts += 1
        self._listener.stop()
        for client, upstream in list(self._pairs.items()):
            self._counts.connections_cut += 1
            reset_connection(client)
            if upstream is not None:
                upstream.close()

    def restore(self) -> None:
        """Listen again on the same port; idempotent. Needs a running event loop."""
        if not self._cut or self._closed:
            return
        self._cut = False
        if self._listener.port is not None:
            self._listener.listen()

    async def aclose(self) -> None:
        """Stop listening and close every connection; idempotent."""
        self._closed = True
        self._listener.stop()
        await self._listener.started()
        for client in list(self._pairs):
            client.transport.abort()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def __aenter__(self) -> TcpRelay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ connections

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio.start_server runs each handler in its own task
        self._handlers.add(task)
        self._counts.connections_total += 1
        self._pairs[writer] = None
        upstream: _Stream | None = None
        try:
            if self._cut or self._closed:
                reset_connection(writer)  # accepted just before the listener closed
                return
            try:
                async with asyncio.timeout(self._connect_timeout):
                    upstream = await asyncio.open_connection(*self._upstream)
            except (OSError, TimeoutError) as exc:
                self._counts.upstream_failures += 1
                logger.debug("relay: upstream connect failed (%s)", type(exc).__name__)
                reset_connection(writer)
                return
            if self._cut or self._closed:
                reset_connection(writer)  # cut while we were connecting
                return
            self._pairs[writer] = upstream[1]
            up = asyncio.create_task(self._pipe(reader, upstream[1], up=True))
            down = asyncio.create_task(self._pipe(upstream[0], writer, up=False))
            try:
                # Either side ending ends the relayed connection: Redis-like protocols do
                # not half-close, and a cut must leave nothing behind.
                await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in (up, down):
                    pipe.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._pairs.pop(writer, None)
            self._handlers.discard(task)
            if upstream is not None:
                upstream[1].close()
            writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if up:
                    self._counts.bytes_up += len(data)
                else:
                    self._counts.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except OSError as exc:
            logger.debug("relay: connection ended (%s)", type(exc).__name__)
