"""The registry listing: name, family, block, blocks per stage, parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resnet_inspect.render.document import Column, Document, Table
from resnet_inspect.report.view import ReportView
from resnet_inspect.schemas import SCHEMA_VERSION


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    family: str
    block: str
    stages: tuple[int, ...]
    params: int


@dataclass(frozen=True, repr=False)
class RegistryReport(ReportView):
    entries: tuple[RegistryEntry, ...]

    def to_dict(self) -> list[dict[str, Any]]:
        return [
            {"schema_version": SCHEMA_VERSION, "name": e.name, "family": e.family, "block": e.block,
             "stages": list(e.stages), "params": e.params}
            for e in self.entries
        ]

    def document(self) -> Document:
        rows = tuple(
            (e.name, e.family, e.block, "-".join(map(str, e.stages)), f"{e.params:,}") for e in self.entries
        )
        columns = (Column("model"), Column("family"), Column("block"), Column("blocks per stage"),
                   Column("parameters", "right"))
        return Document((Table("Registered models", columns, rows),))


