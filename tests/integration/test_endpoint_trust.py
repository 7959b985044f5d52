"""A hostile DynamoDB endpoint, through the whole client on both data paths (finding 8d).

A loopback server answers every request with an error whose `__type` and message carry
terminal escape sequences and kilobytes of filler. Whatever reaches the caller (the
exception) or the logs must be printable and short: the endpoint does not get to write
into an operator's terminal or flood a log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from memsdk import Config, MemoryClient, Turn
from memsdk.errors import StoreError, StoreUnavailableError
from tests.harness.dynamodb_local import aws_test_env
from tests.harness.http_endpoint import loopback_endpoint

TYPE_PREFIX = "com.amazonaws.dynamodb.v20120810#"
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\u202e"
HOSTILE = json.dumps(
    {
        "__type": f"{TYPE_PREFIX}Evil{ESCAPES}Exception" + "A" * 5_000,
        "message": f"{ESCAPES} run this: rm -rf / " * 500,
    }
).encode()


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in aws_test_env().items():
        monkeypatch.setenv(key, value)


async def _endpoint(status: int) -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=HOSTILE, content_type="application/x-amz-json-1.0")

    async with loopback_endpoint(handle) as url:
        yield f"dynamodb://memsdk-hostile?region=us-east-1&endpoint={url}"


@pytest.fixture
async def refusing_url() -> AsyncIterator[str]:
    """An endpoint that answers every request with a hostile HTTP 400."""
    async for url in _endpoint(400):
        yield url


@pytest.fixture
async def failing_url() -> AsyncIterator[str]:
    """An endpoint that answers every request with a hostile HTTP 500."""
    async for url in _endpoint(500):
        yield url


def assert_safe(text: str) -> None:
    assert all(ch.isprintable() for ch in text), text
    assert "rm -rf" not in text  # the message is not repeated into memsdk's own
    assert len(text) < 1_000


def config(url: str, data_path: str) -> Config:
    return Config(
        store=url,
        dynamodb_data_path=data_path,  # type: ignore[arg-type]
        read_timeout=15.0,
        write_timeout=15.0,
        store_max_attempts=1,
    )


@pytest.mark.parametrize("data_path", ["lean", "aioboto3"])
async def test_a_hostile_error_type_reaches_neither_errors_nor_logs(
    refusing_url: str, data_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="memsdk"):
        async with MemoryClient(config(refusing_url, data_path)) as mem:
            with pytest.raises(StoreError) as loading:
                await mem.load_context("sess-1")
            with pytest.raises(StoreError) as appending:
                await mem.append_turns("sess-1", [Turn(role="user", content="hi")])
    for info in (loading, appending):
        assert not isinstance(info.value, StoreUnavailableError)
        assert_safe(str(info.value))
        assert "Evil?" in str(info.value)  # the code is still there to read, defused
    for record in caplog.records:
        assert_safe(record.getMessage())


@pytest.mark.parametrize("data_path", ["lean", "aioboto3"])
async def test_a_hostile_5xx_is_unavailable_and_defused(
    failing_url: str, data_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="memsdk"):
        async with MemoryClient(config(failing_url, data_path)) as mem:
            with pytest.raises(StoreUnavailableError) as info:
                await mem.append_turns("sess-1", [Turn(role="user", content="hi")])
            context = await mem.load_context("sess-1")  # degraded, not an error
    assert context.degraded
    assert_safe(str(info.value))
    for record in caplog.records:
        assert_safe(record.getMessage())
