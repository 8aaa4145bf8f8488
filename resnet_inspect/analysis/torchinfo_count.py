"""torchinfo's "Mult-Adds" and parameters beside ours, with each difference explained.

torchinfo counts a layer's Mult-Adds from its parameters: a convolution's weights and bias times the output
positions, any other layer's parameters times the batch size. Against our MACs (convolutions and linear
layers, biases not counted) that gives four differences, each computed here from torchinfo's own per-layer
numbers: BatchNorm layers (their parameters), biases, Linear layers on 3-D tensors (torchinfo multiplies by the
batch only, not by the sequence), and functional convolutions (torchinfo sees modules only).
torchinfo runs on a meta-device copy of the model: nothing is allocated and the model is not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torchinfo
from torch import nn

from resnet_inspect.analysis.counting import Counts
from resnet_inspect.capture.trace import structural_copy
from resnet_inspect.records import Capture

# Differences between torchinfo's Mult-Adds and our MACs, in the order the footer explains them.
BATCHNORM = "BatchNorm parameters"
BIASES = "biases"
LINEAR_3D = "Linear layers on 3-D tensors"
FUNCTIONAL = "functional convolutions"
OTHER = "other layers with parameters"


@dataclass(frozen=True)
class TorchinfoCounts:
    """torchinfo's totals and per-module numbers, and what separates its Mult-Adds from our MACs."""

    mult_adds: int
    params: int
    by_module: dict[str, int]  # module name -> Mult-Adds of the module and everything inside it
    params_by_module: dict[str, int]
    differences: dict[str, int]  # reason -> torchinfo minus ours; they add up to mult_adds - our MACs

    def explanation(self, macs: int) -> tuple[str, ...]:
        """One line per difference, in words, and what is left unexplained (0 for the models we know)."""
        lines = []
        for reason, difference in self.differences.items():
            if not difference:
                continue
            if reason == BATCHNORM:
                lines.append(f"  + {difference:,} {reason}: torchinfo counts each BatchNorm parameter once per "
                             "image as a Mult-Add; we count no MACs for BatchNorm")
            elif reason == BIASES:
                lines.append(f"  + {difference:,} {reason}: torchinfo counts a bias once per output position; "
                             "our MACs count multiplications only")
            elif reason == LINEAR_3D:
                lines.append(f"  {'+' if difference > 0 else '-'} {abs(difference):,} {reason}: torchinfo "
                             "multiplies a Linear layer's parameters by the batch size only, not by every "
                             "position of the other axes")
            elif reason == FUNCTIONAL:
                lines.append(f"  - {-difference:,} {reason}: F.conv2d, F.linear and the like called in forward; "
                             "torchinfo sees modules only")
            else:
                lines.append(f"  {'+' if difference > 0 else '-'} {abs(difference):,} {reason}: torchinfo counts "
                             "their parameters once per image")
        rest = self.mult_adds - macs - sum(self.differences.values())
        if rest:
            lines.append(f"  {'+' if rest > 0 else '-'} {abs(rest):,} not explained")
        return tuple(lines)


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _reason(module: nn.Module, input_dims: int) -> str:
    if _is_batchnorm(module):
        return BATCHNORM
    if isinstance(module, nn.Linear) and input_dims > 2:
        return LINEAR_3D
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        return BIASES
    return OTHER


def torchinfo_count(model: nn.Module, capture: Capture, counts: Counts, input_data: Any = None) -> TorchinfoCounts:
    """Run torchinfo.summary on a meta copy of ``model`` at the capture's input and explain its Mult-Adds."""
    copy = structural_copy(model, "meta")
    names = {id(module): name for name, module in copy.named_modules()}
    modules = dict(copy.named_modules())
    if input_data is not None:
        def meta(tensor: torch.Tensor) -> torch.Tensor:
            return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")

        data = ({key: meta(value) for key, value in input_data.items()} if isinstance(input_data, dict)
                else [meta(value) for value in input_data] if isinstance(input_data, (tuple, list))
                else [meta(input_data)])
        result = torchinfo.summary(copy, input_data=data, verbose=0, device="meta")
    else:
        result = torchinfo.summary(copy, input_size=[capture.input_shape], verbose=0, device="meta",
                                   dtypes=[getattr(torch, capture.dtype)])
    own: dict[str, int] = {}  # Mult-Adds torchinfo gives each module itself (its calls added up)
    params: dict[str, int] = {}
    for info in result.summary_list:
        name = names.get(id(info.module))
        if not name:
            continue
        params.setdefault(name, info.num_params)
        if info.is_leaf_layer:  # torchinfo's total adds up its leaf layers only
            own[name] = own.get(name, 0) + info.macs
    ours: dict[str, int] = {}  # our MACs of each leaf module
    input_dims: dict[str, int] = {}
    for layer in capture.layers:
        if layer.is_leaf:
            ours[layer.name] = ours.get(layer.name, 0) + counts.layer_macs.get(layer.index, 0)
            input_dims[layer.name] = len(layer.input_shape)
    differences = dict.fromkeys((BATCHNORM, BIASES, LINEAR_3D, OTHER), 0)
    for name in {*own, *ours}:
        difference = own.get(name, 0) - ours.get(name, 0)
        if difference and name in modules:
            differences[_reason(modules[name], input_dims.get(name, 2))] += difference
    differences[FUNCTIONAL] = -counts.macs_outside_leaves
    inclusive = {name: sum(value for other, value in own.items() if other == name or other.startswith(f"{name}."))
                 for name in params}
    return TorchinfoCounts(int(result.total_mult_adds), int(result.total_params), inclusive, params, differences)
