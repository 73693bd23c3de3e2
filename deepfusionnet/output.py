"""What a ``--json`` run prints: the one JSON document on stdout (kept apart from cli.py so the command
modules, which cli.py imports, need not import cli.py back)."""

from __future__ import annotations

import json
import sys


def emit_json(obj) -> None:
    """Print ``obj`` as JSON on stdout (the only thing a --json run prints there)."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
