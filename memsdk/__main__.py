"""`python -m memsdk` is the `memsdk` command."""

import sys

from memsdk.cli import main

sys.exit(main())
