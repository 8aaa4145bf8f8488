"""`registry`: every registered model with its parameters, counted from its configuration (nothing is built)."""

from __future__ import annotations

from resnet_inspect.report.registry import RegistryEntry, RegistryReport


def registry_report() -> RegistryReport:
    """Every registered model with its parameters, counted from its configuration (nothing is built)."""
    from resnet_inspect.models import list_models, model_spec

    entries = []
    for name in list_models():
        spec = model_spec(name)
        entries.append(RegistryEntry(name, spec.family, spec.block, tuple(spec.stages), spec.params))
    return RegistryReport(tuple(entries))


__all__ = ["registry_report"]
