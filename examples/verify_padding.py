"""Verify the padding arithmetic of your own CNN, and catch a layer whose output contradicts its geometry.

The deliberately wrong layer is the seed's ``Conv2dAuto``, which sets ``self.padding`` after
``nn.Conv2d.__init__``. With the default zero padding that works, but with ``padding_mode="reflect"`` PyTorch
pads by the ``_reversed_padding_repeated_twice`` it computed in ``__init__`` (from padding=0), so the layer
declares p=1 and pads nothing: its output is two rows smaller than its geometry says.

    python examples/verify_padding.py
    resnet-inspect verify examples/verify_padding.py:good_cnn -i 32        # exit code 0
    resnet-inspect verify examples/verify_padding.py:seed_style_cnn -i 32  # exit code 1
"""

from __future__ import annotations

from torch import nn

from resnet_inspect.models import Conv2dAuto
from resnet_inspect.pipeline.build import verify


class SeedConv2dAuto(nn.Conv2d):
    """The seed's version: padding assigned after the parent constructor has used it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)


def good_cnn() -> nn.Module:
    """The project's Conv2dAuto passes its padding to nn.Conv2d, so every padding mode honours it."""
    return nn.Sequential(
        Conv2dAuto(3, 16, kernel_size=3, padding_mode="reflect"), nn.ReLU(),
        nn.MaxPool2d(kernel_size=2),
        Conv2dAuto(16, 32, kernel_size=3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def seed_style_cnn() -> nn.Module:
    """The same network with the seed's Conv2dAuto, plus an even kernel (legal, but it grows the map by one)."""
    return nn.Sequential(
        SeedConv2dAuto(3, 16, kernel_size=3, padding_mode="reflect"), nn.ReLU(),
        nn.MaxPool2d(kernel_size=2),
        Conv2dAuto(16, 32, kernel_size=4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def show(name: str, model: nn.Module) -> int:
    report = verify(model, input_size=32, model_name=name)  # the same report as `resnet-inspect verify`
    data = report.to_dict()
    print(f"{name}: {data['checked']} layers checked, {data['failed']} failed")
    for item, layer in zip(report.checks, data["layers"], strict=True):
        mark = "ok  " if layer["ok"] else "FAIL"
        relation = "adaptive" if layer["relation"] is None else f"relation {layer['relation']}"
        print(f"  {mark} {layer['name']:<2} {layer['type']:<17} {relation:<10}  "
              f"{item.check.formulas[0]:<38} observed {layer['observed']}")
    for warning in data["warnings"]:
        print(f"  warning: {warning}")
    return data["failed"]


def main() -> None:
    assert show("good_cnn", good_cnn()) == 0
    print()
    failed = show("seed_style_cnn", seed_style_cnn())
    assert failed == 1, "the seed's Conv2dAuto with reflect padding should be caught"
    print("\ncaught: layer 0 declares p=1 (expected 32x32) but pads nothing (30x30)")


if __name__ == "__main__":
    main()
