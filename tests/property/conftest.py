"""Hypothesis profiles for the property suite, and the services its machines share.

Profiles (select with HYPOTHESIS_PROFILE, default `ci`):
- `ci`: what `make test` runs, bounded to about 2.5 minutes of wall time on a 2-core box;
- `long`: deeper runs for a person hunting bugs (`HYPOTHESIS_PROFILE=long pytest tests/property`).
Both keep the example database in the repository's `.hypothesis/` (git-ignored), so a
failure found once replays first on the next run, until it is fixed.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from memsdk.faultproxy import FaultProxy
from tests.conftest import new_dynamodb_table
from tests.harness.dynamodb_local import DynamoDBLocal
from tests.harness.redis_server import RedisServer
from tests.property.harness import Env, simulated_disk

REPO = Path(__file__).resolve().parents[2]
DATABASE = DirectoryBasedExampleDatabase(str(REPO / ".hypothesis" / "examples"))

# Every example does real I/O (SQLite files, DynamoDB Local, redis-server): no per-example
# deadline, and `too_slow` would only measure the services. `function_scoped_fixture`:
# the fuzz tests share one pair of clients across examples on purpose (starting clients
# per example would dominate the run); every example uses a fresh session id, so nothing
# an example does can leak into the next.
_COMMON = {
    "deadline": None,
    "database": DATABASE,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}
settings.register_profile(
    "ci",
    max_examples=1,  # each test sets its own count, scaled by `scale()`
    **_COMMON,
)
settings.register_profile("long", max_examples=1, **_COMMON)
# For working on the machine itself: find, do not shrink (shrinking I/O examples is slow).
settings.register_profile(
    "noshrink",
    max_examples=1,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    **_COMMON,
)
settings.register_profile(
    "replay", phases=[Phase.explicit, Phase.reuse], verbosity=Verbosity.verbose, **_COMMON
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

# Per-profile sizes: (examples, steps per example) for each test kind.
_SIZES = {
    "ci": {"machine_sqlite": (40, 30), "machine_dynamodb": (8, 20), "fuzz": (40, 0)},
    "long": {"machine_sqlite": (1000, 60), "machine_dynamodb": (300, 50), "fuzz": (2000, 0)},
    "noshrink": {"machine_sqlite": (40, 30), "machine_dynamodb": (8, 20), "fuzz": (40, 0)},
    "replay": {"machine_sqlite": (1, 30), "machine_dynamodb": (1, 25), "fuzz": (1, 0)},
}


def profile_settings(kind: str, **overrides: object) -> settings:
    """The settings of one test kind under the selected profile."""
    examples, steps = _SIZES.get(PROFILE, _SIZES["ci"])[kind]
    values: dict[str, object] = {"max_examples": examples}
    if steps:
        values["stateful_step_count"] = steps
    values.update(overrides)
    return settings(settings.get_profile(PROFILE), **values)  # type: ignore[arg-type]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for a machine test: every example and service runs on it."""
    event_loop = asyncio.new_event_loop()
    try:
        yield event_loop
    finally:
        event_loop.close()


@pytest.fixture
def sqlite_env(
    loop: asyncio.AbstractEventLoop, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Env]:
    with tempfile.TemporaryDirectory(prefix="memsdk-prop-") as tmp, simulated_disk(monkeypatch):
        yield Env(kind="sqlite", loop=loop, redis=redis_server, tmp=tmp)


@pytest.fixture
def dynamodb_env(
    loop: asyncio.AbstractEventLoop,
    redis_server: RedisServer,
    dynamodb_local: DynamoDBLocal,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Env]:
    url = new_dynamodb_table(dynamodb_local)
    proxy = FaultProxy(upstream=dynamodb_local.endpoint, seed=8)
    loop.run_until_complete(proxy.start())
    proxied = url.replace(f"endpoint={dynamodb_local.endpoint}", f"endpoint={proxy.endpoint}")
    try:
        with tempfile.TemporaryDirectory(prefix="memsdk-prop-") as tmp, simulated_disk(monkeypatch):
            yield Env(
                kind="dynamodb",
                loop=loop,
                redis=redis_server,
                tmp=tmp,
                table_url=url,
                proxied_url=proxied,
                proxy=proxy,
            )
    finally:
        loop.run_until_complete(proxy.aclose())
