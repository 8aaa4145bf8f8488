"""Receptive field and effective receptive field (ERF) of your own CNN, with the Python API.

The theoretical field comes from the layer geometry alone (Araujo et al., Distill 2019); the gradient check
confirms it by backpropagating through a linear replay of the graph; the ERF (Luo et al. 2016) is where the
gradient of the centre output unit actually lands in the real model.

    python examples/receptive_field.py
"""

from __future__ import annotations

import torch
from torch import nn

from resnet_inspect.analysis.empirical import effective_receptive_field, empirical_check
from resnet_inspect.analysis.receptive_field import analyze_receptive_field
from resnet_inspect.capture.trace import capture
from resnet_inspect.render.heatmap import erf_heatmap


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    # padding = dilation keeps the size of a 3x3 conv at stride 1 (relation 15 with k' = 2d + 1).
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class TinyNet(nn.Module):
    """A stem, two stages of 3x3 convolutions and a classifier; ``dilation`` widens the last stage's convs."""

    def __init__(self, dilation: int = 1) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 16, stride=2)
        self.stage1 = nn.Sequential(*(conv_bn_relu(16, 16) for _ in range(3)))
        self.stage2 = nn.Sequential(conv_bn_relu(16, 32, stride=2), *(conv_bn_relu(32, 32, dilation=dilation)
                                                                       for _ in range(3)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(self.stem(x))))


def study(dilation: int) -> None:
    torch.manual_seed(0)  # the ERF depends on the (random) weights; fix them
    model = TinyNet(dilation)
    captured = capture(model, input_size=96)  # one traced forward pass on a meta-device copy
    fields = analyze_receptive_field(captured)
    print(f"TinyNet(dilation={dilation}) at 96x96")
    print(f"  {'stage':<7} {'size':>4} {'stride':>6} {'padding':>7}  output")
    for stage in fields.stages:
        print(f"  {stage.name:<7} {stage.size[0]:>4} {stage.stride[0]:>6} {stage.padding[0]:>7}  "
              f"{stage.output_size[0]}x{stage.output_size[1]}")

    # The gradient check: in a linear all-ones replay, the input positions with a nonzero gradient are exactly
    # the centre unit's field, so the measured sizes must equal the analytic ones.
    support = empirical_check(model, captured, fields)
    measured = [check.measured_size[0] for check in support.stages]
    print(f"  gradient support of each stage's centre unit: {measured} (agrees: {support.agrees})")

    erf = effective_receptive_field(model, captured, fields, samples=4, seed=0)
    print(f"  ERF: r50 {erf.r50:g} px, r90 {erf.r90:g} px, r99 {erf.r99:g} px; r99 / field half-width = {erf.ratio}")
    for line in erf_heatmap(erf.mass, columns=24):
        if line.strip():  # the rows the gradient never reaches are blank
            print("   |" + line + "|")


def main() -> None:
    study(dilation=1)
    print()
    study(dilation=2)  # each dilated 3x3 adds 2 * (3 - 1) * 4 = 16 instead of 8 to the field


if __name__ == "__main__":
    main()
