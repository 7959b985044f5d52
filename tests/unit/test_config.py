"""Config: defaults, validation at construction, store and Redis URL parsing, from_env."""

from __future__ import annotations

from typing import Any

import pytest

from memsdk import Config
from memsdk.config import DynamoDBStoreSpec, RedisSpec, SQLiteStoreSpec, parse_redis_url
from memsdk.errors import ConfigError


def test_defaults_match_the_design() -> None:
    c = Config()
    assert (c.ttl_seconds, c.last_n, c.consistency) == (86_400, 20, "validated")
    assert (c.max_turn_bytes, c.l1_max_bytes, c.wal_max_bytes) == (350_000, 64 << 20, 1 << 30)
    assert (c.read_timeout, c.write_timeout) == (0.3, 1.0)
    assert c.redis_url is None and c.wal_dir is None
    assert c.store_spec == SQLiteStoreSpec(path="memsdk.db")


def test_config_is_frozen_and_keyword_only() -> None:
    c = Config()
    with pytest.raises(AttributeError):
        c.last_n = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        Config("sqlite:///x.db")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "spec"),
    [
        ("sqlite:///rel/path.db", SQLiteStoreSpec(path="rel/path.db")),
        ("sqlite:////abs/path.db", SQLiteStoreSpec(path="/abs/path.db")),
        ("sqlite:///:memory:", SQLiteStoreSpec(path=":memory:")),
        (
            "dynamodb://conversation_memory?endpoint=http://127.0.0.1:8000&region=us-east-1",
            DynamoDBStoreSpec(
                table="conversation_memory", region="us-east-1", endpoint="http://127.0.0.1:8000"
            ),
        ),
        (
            "dynamodb://t-1.x?region=eu-west-2",
            DynamoDBStoreSpec(table="t-1.x", region="eu-west-2", endpoint=None),
        ),
    ],
)
def test_store_urls(url: str, spec: object) -> None:
    assert Config(store=url).store_spec == spec


@pytest.mark.parametrize(
    "url",
    [
        "",
        "postgres://x",
        "sqlite://rel.db",
        "sqlite:///",
        "sqlite:///x.db?mode=ro",
        "dynamodb://",
        "dynamodb://ab?region=us-east-1",  # table name too short
        "dynamodb://bad/name?region=us-east-1",
        "dynamodb://table?region=nowhere",
        "dynamodb://table?region=us-east-1&endpoint=ftp://host",
        "dynamodb://table?region=us-east-1&endpoint=http://",
        "dynamodb://table?region=us-east-1&endpoint=http://h:99999",
        "dynamodb://table?region=us-east-1&endpoint=http://h/path",
        "dynamodb://table?region=us-east-1&colour=blue",
        "dynamodb://table?region=us-east-1&region=us-west-2",
    ],
)
def test_bad_store_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        Config(store=url)


def test_dynamodb_region_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ConfigError, match="region"):
        Config(store="dynamodb://table")
    monkeypatch.setenv("AWS_REGION", "ap-southeast-1")
    assert Config(store="dynamodb://table").store_spec == DynamoDBStoreSpec(
        table="table", region="ap-southeast-1", endpoint=None
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ttl_seconds", 0),
        ("ttl_seconds", 1.5),
        ("ttl_seconds", True),
        ("last_n", 0),
        ("consistency", "eventual"),
        ("max_turn_bytes", 500_000),
        ("max_turn_bytes", 10),
        ("l1_max_bytes", -1),
        ("wal_max_bytes", 10),
        ("read_timeout", 0),
        ("write_timeout", -1.0),
        ("write_timeout", "1"),
        ("redis_url", "http://cache"),
        ("wal_dir", ""),
        ("max_pool_connections", 0),
        ("store_max_attempts", 0),
    ],
)
def test_bad_values_raise_config_error(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        Config(**{field: value})


def test_redis_url_schemes_accepted() -> None:
    for url in (
        "redis://h:6379/0",
        "rediss://u:p@h:6380",
        "redis+cluster://h:7000",
        "redis+sentinel://h1:26379,h2:26379,h3:26379/mymaster",
        "rediss+sentinel://h1:26379/mymaster?db=2",
    ):
        assert Config(redis_url=url).redis_url == url


def test_redis_urls_parse_into_a_spec() -> None:
    assert Config().redis_spec is None
    assert parse_redis_url("rediss://us%40r:p%3Aw@cache.internal:6380/4") == RedisSpec(
        topology="standalone",
        tls=True,
        nodes=(("cache.internal", 6380),),
        db=4,
        username="us@r",
        password="p:w",
    )
    spec = Config(redis_url="REDIS+CLUSTER://:pw@10.0.0.1:7000").redis_spec
    expected = RedisSpec(topology="cluster", tls=False, nodes=(("10.0.0.1", 7000),), password="pw")
    assert spec == expected


def test_sentinel_urls_parse_into_a_spec() -> None:
    spec = parse_redis_url(
        "redis+sentinel://app:s3cr%2Fet@10.0.0.1:26379,[::1]:26380,sentinel-3:26381/cache.main"
    )
    assert spec == RedisSpec(
        topology="sentinel",
        tls=False,
        nodes=(("10.0.0.1", 26379), ("::1", 26380), ("sentinel-3", 26381)),
        service_name="cache.main",
        username="app",
        password="s3cr/et",
    )
    assert "s3cr" not in repr(spec)  # repr (and so logs of it) never shows credentials
    tls = parse_redis_url("rediss+sentinel://:pw@h:26379/m?db=7")
    assert (tls.tls, tls.db, tls.username, tls.password) == (True, 7, None, "pw")
    assert parse_redis_url("redis+sentinel://h:1/m").password is None


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h1:26379,h2:26379/",  # no service name
        "redis+sentinel://h1:26379",
        "redis+sentinel://h1:26379/my master",
        "redis+sentinel://h1:26379/m/x",
        "redis+sentinel://h1/m",  # no port
        "redis+sentinel://h1:26379,/m",  # an empty host
        "redis+sentinel://h1:26379,h2:99999/m",
        "redis+sentinel://h1:26379,u:p@h2:26379/m",  # credentials belong before the first host
        "redis+sentinel://h1:26379/m?db=x",
        "redis+sentinel://h1:26379/m?db=1&db=2",
        "redis+sentinel://h1:26379/m?socket_timeout=30",  # timeouts are memsdk's
        "redis+sentinel://h1:26379/m?db",
        "redis+sentinel://h1:26379/m#frag",
        "redis+sentinel+cluster://h1:26379/m",
        "sentinel://h1:26379/m",
    ],
)
def test_bad_sentinel_urls_raise_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        Config(redis_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:s3cr3t@h1:26379,h2:bad/m",
        "redis+sentinel://user:s3cr3t@h1:26379/m?db=x",
        "redis+sentinel://user:s3cr3t@h1:26379/",
        "rediss+sentinel://user:s3cr3t@h1/m",
        "redis://user:s3cr3t@h:6379/0?x=1",
        "redis://user:s3cr3t@h:bad",
    ],
)
def test_redis_url_errors_never_echo_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(redis_url=url)
    assert "s3cr3t" not in str(info.value)


def test_the_redis_password_stays_out_of_the_config_repr() -> None:
    config = Config(redis_url="redis+sentinel://app:s3cr3t@h1:26379,h2:26379/m")
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in str(config)
    assert config.redis_url is not None and "s3cr3t" in config.redis_url


def test_from_env() -> None:
    env = {
        "MEMSDK_STORE": "sqlite:///env.db",
        "MEMSDK_TTL_SECONDS": "3_600",
        "MEMSDK_LAST_N": "7",
        "MEMSDK_READ_TIMEOUT": "0.5",
        "MEMSDK_CONSISTENCY": "strong",
        "MEMSDK_REDIS_URL": "redis://127.0.0.1:6379",
        "UNRELATED": "x",
    }
    c = Config.from_env(env, last_n=9)
    assert c.store == "sqlite:///env.db" and c.ttl_seconds == 3600 and c.last_n == 9
    assert c.read_timeout == 0.5 and c.consistency == "strong"
    assert c.redis_url == "redis://127.0.0.1:6379"


def test_from_env_rejects_malformed_numbers() -> None:
    with pytest.raises(ConfigError, match="MEMSDK_LAST_N"):
        Config.from_env({"MEMSDK_LAST_N": "twenty"})


def test_error_messages_never_echo_url_credentials() -> None:
    with pytest.raises(ConfigError) as info:
        Config(store="postgres://admin:hunter2@db/x")
    assert "hunter2" not in str(info.value)
