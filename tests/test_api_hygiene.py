"""The Python API leaves the caller's model as it found it, whether the analysis succeeds or fails.

No hook stays registered, every module's train/eval flag is what it was (a training model with frozen
BatchNorm layers included), parameters and buffers keep their values, storage, requires_grad, device and
dtype, no gradient appears, and no torch function mode, grad mode, thread count or random state is changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import resnet_inspect
from resnet_inspect.analysis.empirical import effective_receptive_field, empirical_check
from resnet_inspect.analysis.receptive_field import analyze_receptive_field
from resnet_inspect.capture.loader import load_model
from resnet_inspect.capture.trace import capture, smallest_input_size
from resnet_inspect.errors import ForwardError
from resnet_inspect.models import get_model
from resnet_inspect.pipeline.build import verify
from resnet_inspect.pipeline.rf import rf_report

ZOO = "tests/fixtures/cnn_zoo.py"
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_state_dict_hooks", "_load_state_dict_pre_hooks")
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks")


@dataclass
class ModelState:
    """Everything about a model an analysis could change, in a form that compares with ==."""

    tensors: dict[str, tuple[Any, ...]]
    training: dict[str, bool]
    hooks: dict[str, int]
    grads: list[str]

    @classmethod
    def of(cls, model: nn.Module) -> ModelState:
        tensors = {}
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            values = None if tensor.is_meta else tensor.detach().clone()
            tensors[name] = (id(tensor), tensor.data_ptr(), tensor.requires_grad, tensor.device, tensor.dtype,
                             tuple(tensor.shape), values)
        return cls(
            tensors=tensors,
            training={name: module.training for name, module in model.named_modules()},
            hooks={f"{name}.{kind}": len(getattr(module, kind)) for name, module in model.named_modules()
                   for kind in HOOK_DICTS if len(getattr(module, kind, ()))},
            grads=[name for name, parameter in model.named_parameters() if parameter.grad is not None],
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelState):
            return NotImplemented
        same_tensors = self.tensors.keys() == other.tensors.keys() and all(
            mine[:-1] == theirs[:-1] and (mine[-1] is None or torch.equal(mine[-1], theirs[-1]))
            for mine, theirs in zip(self.tensors.values(), other.tensors.values(), strict=True)
        )
        return same_tensors and (self.training, self.hooks, self.grads) == (other.training, other.hooks, other.grads)


def global_state() -> dict[str, Any]:
    """Process-wide torch state an analysis could leave changed."""
    module = torch.nn.modules.module
    return {
        "function modes": torch._C._len_torch_function_stack(),
        "grad enabled": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "default dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
        "random state": torch.get_rng_state().tolist(),
        "global hooks": {name: len(getattr(module, name, {})) for name in GLOBAL_HOOKS},
    }


def assert_left_as_it_was(model: nn.Module, run: Callable[[], Any], raises: type[Exception] | None = None) -> None:
    before, environment = ModelState.of(model), global_state()
    if raises is None:
        run()
    else:
        with pytest.raises(raises):
            run()
    after = ModelState.of(model)
    assert after.hooks == before.hooks, "hooks left on the model"
    assert after.training == before.training, "train/eval flags changed"
    assert after.grads == before.grads, "gradients left on the parameters"
    assert after == before, "parameters or buffers changed"
    assert global_state() == environment


def small_resnet(mode: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """ResNet-20 with random weights, its stem frozen; 'mixed' trains but keeps the BatchNorm layers in eval."""
    torch.manual_seed(0)
    model = get_model("resnet20").to(dtype)
    for parameter in model.encoder.gate.parameters():
        parameter.requires_grad_(False)
    model.train(mode != "eval")
    if mode == "mixed":
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
    return model


ANALYSES: dict[str, Callable[[nn.Module], Any]] = {
    "inspect": lambda model: resnet_inspect.inspect(model, 32),
    "inspect with fvcore": lambda model: resnet_inspect.inspect(model, 32, fvcore=True),
    "verify": lambda model: verify(model, (32, 40), batch_size=2),
    "capture": lambda model: capture(model, 32),
    "smallest input size": lambda model: smallest_input_size(model),
    "rf": lambda model: rf_report(model, "model", (32, 32)),
    "rf check": lambda model: rf_report(model, "model", (32, 32), check=True),
    "rf effective field": lambda model: rf_report(model, "model", (32, 32), erf=True, erf_samples=2),
    "empirical check": lambda model: empirical_check(
        model, captured := capture(model, 32), analyze_receptive_field(captured)),
    "effective field": lambda model: effective_receptive_field(
        model, captured := capture(model, 32), analyze_receptive_field(captured), samples=2),
}

def analysis_case(name: str, mode: str):
    return pytest.param(name, mode, id=f"{name}-{mode}")


@pytest.mark.parametrize(("analysis", "mode"),
                         [analysis_case(name, mode) for name in ANALYSES for mode in ("train", "eval", "mixed")])
def test_an_analysis_leaves_the_model_as_it_was(analysis, mode):
    model = small_resnet(mode)
    assert_left_as_it_was(model, lambda: ANALYSES[analysis](model))


@pytest.mark.parametrize("analysis", ["inspect", "verify", "capture", "rf", "rf check"])
def test_a_model_on_the_meta_device_stays_there(analysis):
    with torch.device("meta"):
        model = get_model("resnet20")
    assert_left_as_it_was(model, lambda: ANALYSES[analysis](model))
    assert all(parameter.is_meta for parameter in model.parameters())


@pytest.mark.parametrize("analysis", [
    "inspect", "verify", "capture", "rf", "rf check",
    "inspect with fvcore", "rf effective field",
])
def test_a_float64_model_keeps_its_dtype(analysis):
    model = small_resnet("train", torch.float64)
    assert_left_as_it_was(model, lambda: ANALYSES[analysis](model))
    assert all(parameter.dtype == torch.float64 for parameter in model.parameters())


# ------------------------------------------------------------------------------------------ failing forward


def exploding_model(training: bool) -> nn.Module:
    """The fixture zoo's CNN whose linear head has the wrong in_features: every forward pass raises."""
    model, _ = load_model(f"{ZOO}:exploding", device=None)
    return model.train(training)


class DataDependent(nn.Module):
    """Its forward reads a value (``.item()``), so the meta capture falls back to real CPU tensors, then fails."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        y.mean().item()  # fine on real tensors, impossible on meta ones
        raise ValueError("refusing this input on purpose")


FAILING = {
    "inspect": lambda model: resnet_inspect.inspect(model, 32),
    "verify": lambda model: verify(model, 32),
    "capture": lambda model: capture(model, 32),
    "rf": lambda model: rf_report(model, "model", (32, 32)),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("analysis", FAILING)
def test_a_forward_that_raises_leaves_the_model_as_it_was(analysis, training):
    model = exploding_model(training)
    assert_left_as_it_was(model, lambda: FAILING[analysis](model), raises=ForwardError)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_forward_that_fails_only_on_real_data_leaves_the_model_as_it_was(training):
    model = DataDependent().train(training)
    assert_left_as_it_was(model, lambda: capture(model, 16), raises=ForwardError)


def test_a_failed_capture_names_the_layer_and_keeps_no_hooks():
    model = exploding_model(True)
    with pytest.raises(ForwardError, match=r"head \(Linear\)"):
        capture(model, 32)
    assert not ModelState.of(model).hooks
