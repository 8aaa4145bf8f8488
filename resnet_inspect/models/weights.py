"""Load checkpoints saved in torchvision's ResNet key layout into this package's ResNet.

The key mapping is derived from the model's structure: the stem's ``gate.conv``/``gate.bn`` are torchvision's
``conv1``/``bn1``; the i-th conv_bn unit of a block's residual branch is ``conv{i}``/``bn{i}``; a projection
shortcut is ``downsample.0``/``downsample.1``; the decoder's ``fc`` is ``fc``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from resnet_inspect.models.resnet import ResNet


def torchvision_key_map(model: ResNet) -> dict[str, str]:
    """Each key of ``model.state_dict()`` -> the key of the same tensor in torchvision's ResNet."""
    module_names = _torchvision_module_names(model)
    key_map: dict[str, str] = {}
    unmapped: list[str] = []
    for key in model.state_dict():
        module, _, tensor = key.rpartition(".")
        if module in module_names:
            key_map[key] = f"{module_names[module]}.{tensor}"
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"torchvision's ResNet layout has no place for {_key_list(unmapped)}")
    return key_map


def load_torchvision_weights(model: ResNet, state_dict: Mapping[str, Tensor]) -> ResNet:
    """Copy a torchvision-layout ``state_dict`` into ``model`` (in place) and return the model.

    Raises ``ValueError`` naming every missing key, unexpected key and shape mismatch. A missing
    ``num_batches_tracked`` is tolerated (older torchvision checkpoints lack it); the model keeps its own.
    """
    if not isinstance(model, ResNet):
        raise TypeError(f"expected a resnet_inspect ResNet, got {type(model).__name__}")
    key_map = torchvision_key_map(model)
    own_state = model.state_dict()

    missing = [
        theirs
        for theirs in key_map.values()
        if theirs not in state_dict and not theirs.endswith(".num_batches_tracked")
    ]
    unexpected = sorted(set(state_dict) - set(key_map.values()))
    mismatched = [
        f"{theirs} (checkpoint {tuple(state_dict[theirs].shape)}, model {tuple(own_state[ours].shape)})"
        for ours, theirs in key_map.items()
        if theirs in state_dict and state_dict[theirs].shape != own_state[ours].shape
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
    problems = [f"{title} ({len(keys)}): {_key_list(keys)}" for title, keys in found.items() if keys]
    if problems:
        raise ValueError("state_dict does not fit this model in torchvision's layout; " + "; ".join(problems))

    model.load_state_dict({ours: state_dict.get(theirs, own_state[ours]) for ours, theirs in key_map.items()})
    return model


def _torchvision_module_names(model: ResNet) -> dict[str, str]:
    """Our qualified module names -> torchvision's, for every module that owns tensors."""
    names = {"encoder.gate.conv": "conv1", "encoder.gate.bn": "bn1", "decoder.fc": "fc"}
    for stage_index, layer in enumerate(model.encoder.layers):
        for block_index, block in enumerate(layer.get_submodule("blocks").children()):
            ours = f"encoder.layers.{stage_index}.blocks.{block_index}"
            theirs = f"layer{stage_index + 1}.{block_index}"
            units = [name for name, module in block.get_submodule("blocks").named_children() if _is_conv_bn(module)]
            for number, unit in enumerate(units, start=1):
                names[f"{ours}.blocks.{unit}.conv"] = f"{theirs}.conv{number}"
                names[f"{ours}.blocks.{unit}.bn"] = f"{theirs}.bn{number}"
            if _is_conv_bn(block.get_submodule("shortcut")):
                names[f"{ours}.shortcut.conv"] = f"{theirs}.downsample.0"
                names[f"{ours}.shortcut.bn"] = f"{theirs}.downsample.1"
    return names


def _is_conv_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and [name for name, _ in module.named_children()] == ["conv", "bn"]


def _key_list(keys: list[str]) -> str:
    """Every key, in full: a user fixing a checkpoint needs the whole list, not the first few."""
    return ", ".join(keys)
