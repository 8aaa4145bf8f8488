"""Run the seed notebook's ResNet code and show each error it raises, then what the project's rewrite does.

The seed's cells are kept below as text (verbatim, trimmed to the lines that matter, one long line wrapped) and
executed one step at a time, so every message printed is the one Python and PyTorch really give.

    python examples/seed_bugs.py
"""

from __future__ import annotations

import torch
from torch import nn

from resnet_inspect.models import ResidualBlock, ResNetBasicBlock

SEED_IMPORTS = """
from torch import Tensor
from torch.nn import Sequential
from collections import OrderedDict
"""

SEED_CONV2D_AUTO = """
class Conv2dAuto(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
"""

SEED_BLOCKS = """
def conv_bn(in_channels, out_channels, convolution, *args, **kwargs) -> Sequential:
    return nn.Sequential(OrderedDict({
        'conv': convolution(in_channels, out_channels, *args, **kwargs),
        'bn': nn.BatchNorm2d(out_channels)
    }))

class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.blocks = nn.Identity()
        self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        residual = self.shortcut(x) if self.should_apply_shortcut else x
        x = self.blocks(x) + residual
        return x

    @property
    def should_apply_shortcut(self):
        return self.in_channels != self.out_channels

class ResNetResidualBlock(ResidualBlock):
    def __init__(self, in_channels: int, out_channels: int, expansion: int = 1, downsampling: int = 1,
                 *args, **kwargs):
        self.expansion = expansion
        self.downsampling = downsampling
        self.conv = partial(Conv2dAuto, kernel_size = 3, bias = False) # Really needed?
        self.shortcut = conv_bn(self.in_channels, self.expanded_channels, nn.Conv2d,
                                kernel_size = 1, stride = self.downsampling,
                                bias = False) if self.should_apply_shortcut else None
    @property
    def expanded_channels(self):
        return self.out_channels * self.expansion

    @property
    def should_apply_shortcut(self):
        return self.in_channels != self.expanded_channels
"""


def attempt(label: str, code: str, namespace: dict) -> None:
    """Run ``code`` in ``namespace`` and print what it raised (or that it ran)."""
    try:
        exec(code, namespace)
    except Exception as error:
        print(f"{label}\n    -> {type(error).__name__}: {error}")
    else:
        print(f"{label}\n    -> ran")


def main() -> None:
    seed: dict = {}
    attempt("1. the seed's imports, then class Conv2dAuto(nn.Conv2d)", SEED_IMPORTS + SEED_CONV2D_AUTO, seed)
    seed["nn"] = nn  # from torch import nn: the import the seed lacks
    attempt("   ... with `from torch import nn` added", SEED_CONV2D_AUTO + SEED_BLOCKS, seed)
    attempt("2. ResNetResidualBlock(64, 128)", "ResNetResidualBlock(64, 128)", seed)
    attempt("   ... with `from functools import partial` added",
            "from functools import partial\nResNetResidualBlock(64, 128)", seed)
    # The property reads self.in_channels, which only ResidualBlock.__init__ sets and which never runs here;
    # Python then reports the property itself as missing. Calling super().__init__() late does not help either:
    attempt("3. any module assigned before super().__init__()", """
class ShortcutFirst(nn.Module):
    def __init__(self):
        self.shortcut = conv_bn(64, 128, nn.Conv2d, kernel_size=1, stride=2, bias=False)
        super().__init__()
ShortcutFirst()""", seed)
    attempt("4. ResNetBasicBlock's conv_bn(..., conv=self.conv, bias=False)",
            "conv_bn(64, 64, conv=partial(Conv2dAuto, kernel_size=3, bias=False), bias=False)", seed)
    attempt("5. the encoder's nn.ModuleList([ResNetLayer()])", """
class ResNetLayer(nn.Module):
    def __init__(self, in_channels, out_channels, block=None, n=1, *args, **kwargs):
        super().__init__()
nn.ModuleList([ResNetLayer()])""", seed)

    # 6. No activation after the addition: the seed returns blocks(x) + residual, He et al. apply ReLU to it.
    torch.manual_seed(0)
    x = torch.randn(1, 8, 4, 4)
    seed_sum = seed["ResidualBlock"](8, 8)(x)
    ours = ResidualBlock(8, 8)(x)
    print(f"6. smallest output of a residual block: seed {seed_sum.min().item():.2f}, rewrite {ours.min().item():.2f}")

    # 7. The seed's should_apply_shortcut compares channels only: a stride-2 block that keeps 64 channels
    # would keep the identity shortcut and add a 2x2 map to a 4x4 one.
    block = ResNetBasicBlock(64, 64, downsampling=2).eval()
    print(f"7. ResNetBasicBlock(64, 64, downsampling=2): rewrite's should_apply_shortcut = "
          f"{block.should_apply_shortcut} (the seed's rule gives {block.in_channels != block.expanded_channels})")
    block.shortcut = nn.Identity()  # what the seed's rule would leave
    try:
        block(torch.randn(1, 64, 4, 4))
    except RuntimeError as error:
        print(f"    with an identity shortcut -> RuntimeError: {error}")


if __name__ == "__main__":
    main()
