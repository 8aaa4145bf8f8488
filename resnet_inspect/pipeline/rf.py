"""`rf`: load the model (with seeded random or given weights for the effective field), capture it, analyse its
receptive fields, check them with gradients and measure the effective field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_inspect.errors import BadInputError, InspectError
from resnet_inspect.report.rf import RfReport

if TYPE_CHECKING:
    from torch import nn


ERF_SEED = 0


def load_rf_model(spec: str, in_channels: int | None, num_classes: int | None, real: bool,
                  seed: int = ERF_SEED) -> tuple[nn.Module, str]:
    """Load the model: on the meta device for the analysis alone, with seeded random weights on CPU for the ERF."""
    import torch

    from resnet_inspect.capture.loader import load_model

    if not real:
        return load_model(spec, in_channels=in_channels, num_classes=num_classes, device="meta")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_model(spec, in_channels=in_channels, num_classes=num_classes, device=None)


OWN_WEIGHTS = "own (the module as given)"


def weights_label(spec: str, in_channels: int | None, num_classes: int | None, model: nn.Module,
                  seed: int = ERF_SEED) -> str:
    """What the weights of ``model``, built from ``spec`` by ``load_rf_model(..., seed=seed)``, are.

    The tool seeds the random generator, but a factory may set its weights itself (load a checkpoint). A second
    build with another seed tells them apart: a parameter that changes with the seed is the seeded random
    initialisation; one that stays and is not a constant (ones, zeros) was set by the model's own code.
    """
    import torch

    other, _ = load_rf_model(spec, in_channels, num_classes, real=True, seed=seed + 1)
    reseeded = dict(other.named_parameters())
    seeded = own = 0
    for name, tensor in model.named_parameters():
        again = reseeded.get(name)
        if again is None or again.shape != tensor.shape or not torch.equal(again, tensor):
            seeded += 1
        elif tensor.numel() > 1 and not bool((tensor == tensor.flatten()[0]).all()):
            own += 1
    if seeded and not own:
        return f"random (seed {seed})"
    if not seeded:
        return "own (set by the model's code, not by this tool)"
    return (f"random (seed {seed}) for {seeded} of {seeded + own} parameter tensors; the others set by the "
            "model's code")


def _looks_torchvision(keys: list[str]) -> bool:
    return "conv1.weight" in keys and any(key.startswith("layer1.") for key in keys)


# Checkpoints that wrap the state_dict: {"model": ...} (torchvision's references, timm's train script saves
# "state_dict"), {"state_dict": ...} (Lightning); a "module." prefix comes from DataParallel/DDP.
_WRAPPING_KEYS = ("state_dict", "model", "model_state_dict", "model_state")


_PARALLEL_PREFIX = "module."


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A state_dict from ``path`` (unwrapped from a training checkpoint); InspectError says why it cannot be."""
    import pickle

    import torch

    if not path.is_file():
        raise BadInputError(f"weights file not found: {path}")
    try:
        if path.stat().st_size == 0:
            raise InspectError(f"cannot read weights from {path}: the file is empty")
        with open(path, "rb") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise InspectError(f"cannot read weights from {path}: {exc.strerror or exc}") from exc
    except pickle.UnpicklingError as exc:
        pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if pickled:  # torch.save(model) pickles the class: loading it would run code from the file
            raise InspectError(
                f"{path} holds a pickled object ({pickled.group(1)}), not only tensors, and "
                "torch.load(weights_only=True) refuses it; save a state_dict instead: "
                "torch.save(model.state_dict(), 'weights.pt')") from exc
        raise InspectError(f"cannot read weights from {path}: not a PyTorch checkpoint") from exc
    except Exception as exc:  # torch.load raises RuntimeError, EOFError, ValueError... for damaged files
        raise InspectError(f"cannot read weights from {path}: not a PyTorch checkpoint ({_first_line(exc)})") from exc
    for key in _WRAPPING_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InspectError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    if state and all(key.startswith(_PARALLEL_PREFIX) for key in state):
        state = {key.removeprefix(_PARALLEL_PREFIX): value for key, value in state.items()}
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def state_dict_problems(model: nn.Module, state: dict[str, Any]) -> list[str]:
    """Every missing, unexpected and mis-shaped key, in full: empty when ``state`` fits ``model`` exactly."""
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    mismatched = [f"{key} (checkpoint {tuple(state[key].shape)}, model {tuple(own[key].shape)})"
                  for key in own if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
    return [f"{title} ({len(keys)}): {', '.join(keys)}" for title, keys in found.items() if keys]


def load_weights(model: nn.Module, path: Path) -> str:
    """Load a state_dict file into ``model``; torchvision-layout keys go through ``load_torchvision_weights``.

    A file that does not fit names every missing, unexpected and mis-shaped key.
    """
    from resnet_inspect.models import ResNet, load_torchvision_weights

    state = read_checkpoint(path)
    try:
        if isinstance(model, ResNet) and _looks_torchvision(list(state)):
            load_torchvision_weights(model, state)
            return str(path)
    except ValueError as exc:
        raise InspectError(f"weights in {path} do not fit the model: {exc}") from exc
    problems = state_dict_problems(model, state)
    if problems:
        raise InspectError(f"weights in {path} do not fit the model: {'; '.join(problems)}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InspectError(f"weights in {path} do not fit the model: {_first_line(exc)}") from exc
    return str(path)


def _size_text(sizes: tuple[int, ...]) -> str:
    return "x".join(str(size) for size in sizes)


def rf_report(model: nn.Module, name: str, input_size: int | tuple[int, ...], in_channels: int | None = None,
              check: bool = False, erf: bool = False, erf_samples: int = 8,
              weights_path: Path | None = None, weights: str = OWN_WEIGHTS, callers_model: bool = False) -> RfReport:
    """Analyse ``model``'s receptive fields at ``input_size``; check them with gradients and measure the ERF.

    ``weights`` says what the model's weights are for the ERF's label (``weights_label`` for a model this tool
    built); a ``weights_path`` loaded into it names itself instead, and loads into a private copy of a
    ``callers_model`` (the caller's own weights are never overwritten).

    Pictures are the renderers' work (``render/heatmap.py``, ``render/plot.py``): the report only holds the mass map.
    Before the check or the ERF allocates anything, the memory guard compares its estimated peak with the
    memory available (MemoryGuardError when it does not fit). A stage whose analytic field is undefined gets a
    measured one (``analysis/measured.py``), guarded too: one that does not fit stays undefined.
    """
    from resnet_inspect.analysis.empirical import check_input_size, effective_receptive_field, empirical_check
    from resnet_inspect.analysis.measured import with_measured_fields
    from resnet_inspect.analysis.memory import ensure_fits, gradient_bytes, replay_bytes
    from resnet_inspect.analysis.receptive_field import analyze_receptive_field
    from resnet_inspect.pipeline.build import capture_model

    captured = capture_model(model, input_size, 1, in_channels, name)
    result = analyze_receptive_field(captured)
    wants_erf = erf or weights_path is not None
    if wants_erf:
        where = _size_text(captured.input_shape[2:])
        ensure_fits(gradient_bytes(captured), f"the effective receptive field at {where}", "lower --input-size")
    if check:  # the replay runs at the nominal size, then at most at check_input_size (a field that spills over)
        size = check_input_size(result)
        ensure_fits(replay_bytes(captured, size), f"--check (a one-channel replay at {_size_text(size)})",
                    "lower --input-size, or leave out --check")
    empirical = empirical_check(model, captured, result, in_channels) if check else None
    erf_result = None
    if wants_erf:
        if weights_path is not None:
            if callers_model:
                from resnet_inspect.capture.tensors import private_copy

                model = private_copy(model)
            weights = load_weights(model, weights_path)
        erf_result = effective_receptive_field(model, captured, result, erf_samples, ERF_SEED, weights)
    result = with_measured_fields(model, captured, result, stages=True)  # where the rules ran out
    return RfReport(name, captured.input_shape, result, empirical, erf_result)


__all__ = [
    "OWN_WEIGHTS", "load_rf_model", "load_weights", "read_checkpoint", "rf_report", "state_dict_problems",
    "weights_label",
]
