"""A loopback listener that can be switched off and on, keeping its port: for test servers.

The fault proxy and the TCP relay both play a dependency that goes away and comes back at
the same address; this is the part they share. Connections already accepted are their
owner's business: stop() only refuses new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

__all__ = ["LoopbackListener", "reset_connection"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN: what a client of a crashed server sees."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class LoopbackListener:
    """Accepts connections on 127.0.0.1:<port> for `handler` while listening."""

    def __init__(self, handler: Handler, *, limit: int = 2**16) -> None:
        self._handler = handler
        self._limit = limit
        self._port: int | None = None
        self._sock: socket.socket | None = None  # the listening socket, while listening
        self._server: asyncio.Server | None = None
        self._starting: asyncio.Task[None] | None = None

    @property
    def port(self) -> int | None:
        """The port, fixed by the first listen() (None before it)."""
        return self._port

    def listen(self) -> None:
        """Listen (on the same port as before, if any); idempotent. Needs a running loop."""
        if self._sock is not None:
            return  # listening, or about to be
        # Bound and listening now, synchronously: a client that connects before the server
        # object exists waits in the backlog instead of being refused.
        self._sock = socket.create_server(("127.0.0.1", self._port or 0))
        self._port = self._sock.getsockname()[1]
        self._starting = asyncio.get_running_loop().create_task(self._serve(self._sock))

    async def started(self) -> None:
        """Return once a pending listen() has its server (or was stopped first)."""
        if self._starting is not None:
            await self._starting

    def stop(self) -> None:
        """Stop listening at once: new connections are refused; idempotent."""
        if self._server is not None:
            self._server.close()  # closes the listening socket
            self._server = None
        elif self._sock is not None:
            self._sock.close()  # _serve() has not made its server yet; it will see this
        self._sock = None

    async def _serve(self, sock: socket.socket) -> None:
        try:
            if self._sock is not sock:
                return  # stopped before we got here
            try:
                server = await asyncio.start_server(self._handler, sock=sock, limit=self._limit)
            except (OSError, ValueError):
                if self._sock is not sock:
                    return  # stop() closed the socket under us: nothing to serve
                sock.close()
                self._sock = None
                raise
            if self._sock is not sock:  # stopped while we were starting
                server.close()
                return
            self._server = server
        finally:
            if self._starting is asyncio.current_task():
                self._starting = None
