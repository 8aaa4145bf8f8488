"""Built-in entries for upsampling: interpolation and pixel (un)shuffle, whose receptive-field
stride is rational."""

from __future__ import annotations

from typing import Any

from resnet_inspect.ops import rules
from resnet_inspect.ops.table import Call, OpSpec
from resnet_inspect.records import Geometry, OpKind


def describe_interpolate(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    if module is not None:
        mode = getattr(module, "mode", "nearest")
        return Geometry(OpKind.UPSAMPLE), {"mode": mode, "align_corners": getattr(module, "align_corners", None)}
    return Geometry(OpKind.UPSAMPLE), {"mode": call.arg(3, "mode", "nearest"),
                                       "align_corners": call.arg(4, "align_corners"),
                                       "antialias": bool(call.arg(6, "antialias", False))}


def describe_upsample_bilinear(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.UPSAMPLE), {"mode": "bilinear", "align_corners": True}


def describe_pixel_shuffle(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.UPSAMPLE), {"mode": "nearest"}


def describe_pixel_unshuffle(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    factor = module.downscale_factor if module is not None else call.arg(1, "downscale_factor", 1)
    return Geometry(OpKind.UPSAMPLE), {"factor": int(factor)}


def upsample_ops() -> list[OpSpec]:
    """Interpolation and pixel (un)shuffle."""
    from torch import nn

    return [
        OpSpec("upsample", OpKind.UPSAMPLE, rules.upsampled, modules=(nn.Upsample,),
               functions=("interpolate", "upsample", "upsample_nearest"), describe=describe_interpolate,
               replay=rules.replay_upsample, doc="interpolation: rational stride"),
        OpSpec("upsample_bilinear", OpKind.UPSAMPLE, rules.upsampled, functions=("upsample_bilinear",),
               describe=describe_upsample_bilinear, replay=rules.replay_upsample,
               doc="F.upsample_bilinear (align_corners=True)"),
        OpSpec("pixel_shuffle", OpKind.UPSAMPLE, rules.upsampled, modules=(nn.PixelShuffle,),
               functions=("pixel_shuffle",), describe=describe_pixel_shuffle, replay=rules.replay_upsample,
               doc="pixel shuffle: channels to positions, a nearest upsampling of the grid"),
        OpSpec("pixel_unshuffle", OpKind.UPSAMPLE, rules.unshuffled, modules=(nn.PixelUnshuffle,),
               functions=("pixel_unshuffle",), describe=describe_pixel_unshuffle, replay=rules.replay_unshuffle,
               doc="pixel unshuffle: r x r blocks to channels, a window k = s = r"),
    ]
