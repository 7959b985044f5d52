"""The public surface is curated: a change to it must be deliberate (and in the CHANGELOG)."""

from __future__ import annotations

import subprocess
import sys

import memsdk
from memsdk import errors


def test_exported_members() -> None:
    assert sorted(memsdk.__all__) == sorted(
        [
            "AppendReceipt",
            "Config",
            "Context",
            "Health",
            "MemoryClient",
            "Meta",
            "Summary",
            "Turn",
            "__version__",
            "errors",
        ]
    )
    for name in memsdk.__all__:
        assert hasattr(memsdk, name)


def test_error_tree() -> None:
    base = errors.MemsdkError
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), base)
    assert issubclass(errors.InvalidSessionIdError, errors.InvalidInputError)
    assert issubclass(errors.TurnTooLargeError, errors.InvalidInputError)
    assert issubclass(errors.StoreUnavailableError, errors.StoreError)
    assert issubclass(errors.ConfigError, ValueError)
    assert errors.StoreUnavailableError("x").retryable
    assert not errors.SessionOwnershipError("x").retryable
    e = errors.ContextLostError("gone", session_id="s-1")
    assert e.session_id == "s-1" and "s-1" in str(e)


def test_import_is_light() -> None:
    # Importing memsdk must not pull a backend or a network client (no work at import time).
    code = (
        "import sys, memsdk; "
        "heavy = [m for m in ('aioboto3', 'botocore', 'aiohttp', 'redis', 'sqlite3') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_py_typed_shipped() -> None:
    from importlib.resources import files

    assert files("memsdk").joinpath("py.typed").is_file()
