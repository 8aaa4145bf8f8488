"""The published JSON Schemas of every command's ``--format json`` output, one file per command.

Every output carries ``schema_version``: at the top of the object, or in each entry of the outputs that are
lists (``compare``, ``list``), so that existing readers of those lists keep working. Keys are added between
versions, never renamed or removed: the schemas require the documented keys and allow others.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

# 2: summary --train added per-layer and total training keys and "training"; time added train, optimizer and amp;
# compare added backward_macs, saved_bytes, train_peak_bytes and training; the fit command
SCHEMA_VERSION = 2
COMMANDS = ("summary", "verify", "arith", "rf", "time", "compare", "list", "fit")


def load_schema(command: str) -> dict[str, Any]:
    """The JSON Schema of ``resnet-inspect COMMAND --format json`` (a dict)."""
    if command not in COMMANDS:
        raise ValueError(f"no schema for {command!r}; the commands are {', '.join(COMMANDS)}")
    return json.loads(resources.files(__package__).joinpath(f"{command}.schema.json").read_text(encoding="utf-8"))


__all__ = ["COMMANDS", "SCHEMA_VERSION", "load_schema"]
