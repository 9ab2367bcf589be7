"""Constants shared by the server-overhead benchmark's modules (``bench/overhead*.py``).

Paths (the repository, the results folder, the entry script every sub-process is started from),
the interpreter, the two pinned CPU cores and the two systems compared.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ENTRY = str(Path(__file__).resolve().parent / "overhead.py")  # re-executed for --client, --timer-check, ...
PY = sys.executable
SERVER_CORE, CLIENT_CORE = 0, 1
SYSTEMS = ("loragate", "floor")
