"""memsdk: conversation memory for chatbot orchestrators.

Importing memsdk is cheap: no store backend, no network client, no work at import time.
"""

from memsdk import errors
from memsdk.client import MemoryClient
from memsdk.config import Config
from memsdk.models import AppendReceipt, Context, Health, Meta, Summary, Turn

__all__ = [
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

__version__ = "0.1.0"
