"""The TCP relay behind `--chaos redis-kill`: relays bytes, cuts like a crash, comes back.

Real loopback sockets against a small echo server started by each test (no other service).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from memsdk.relay import TcpRelay


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()


async def test_relays_bytes_in_order_both_ways(echo_port: int) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, odd size
    async with TcpRelay("127.0.0.1", echo_port) as relay:
        assert relay.port != echo_port
        assert await roundtrip(relay.port, payload) == payload
        assert await roundtrip(relay.port, b"PING\r\n") == b"PING\r\n"
        counts = relay.counts
    assert counts.connections_total == 2 and counts.upstream_failures == 0
    assert counts.bytes_up == counts.bytes_down == len(payload) + 6


async def test_cut_resets_open_connections_and_refuses_new_ones(echo_port: int) -> None:
    async with TcpRelay("127.0.0.1", echo_port) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        assert relay.open_connections == 1

        relay.cut()
        assert relay.is_cut
        # The open connection dies the way a crashed server's does: reset (or EOF).
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            writer.write(b"again")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(5), 5)
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", relay.port)
        relay.cut()  # idempotent
        counts = relay.counts
        assert counts.cuts == 1 and counts.connections_cut == 1

        port = relay.port
        relay.restore()
        assert not relay.is_cut and relay.port == port
        assert await roundtrip(port, b"back") == b"back"


async def test_cut_and_restore_in_a_row_leave_one_working_listener(echo_port: int) -> None:
    async with TcpRelay("127.0.0.1", echo_port) as relay:
        for _ in range(5):
            relay.cut()
            relay.restore()  # before the previous listener even finished starting
        assert await roundtrip(relay.port, b"ok") == b"ok"
        relay.cut()
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", relay.port)


async def test_upstream_down_closes_the_client_connection() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with TcpRelay("127.0.0.1", dead_port) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        assert relay.counts.upstream_failures == 1


async def test_aclose_is_idempotent_and_final(echo_port: int) -> None:
    relay = TcpRelay("127.0.0.1", echo_port)
    await relay.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
    await relay.aclose()
    await relay.aclose()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert relay.open_connections == 0
    with pytest.raises(RuntimeError):
        await relay.start()


def test_rejects_a_bad_upstream() -> None:
    with pytest.raises(ValueError):
        TcpRelay("127.0.0.1", 0)
    with pytest.raises(ValueError):
        TcpRelay("", 6379)
