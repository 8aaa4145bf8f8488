"""Load a checkpoint saved in torchvision's ResNet layout (conv1, bn1, layer1.0.conv1, ..., fc) into our ResNet.

No download: the script writes its own torchvision-layout checkpoint by renaming a seeded model's state_dict
with ``torchvision_key_map``, saves it to bytes as ``torch.save`` would to a file, loads it into a fresh
model and checks that both give the same output. A real torchvision file loads the same way.

    python examples/load_torchvision_weights.py
"""

from __future__ import annotations

import io

import torch

import resnet_inspect
from resnet_inspect.models import torchvision_key_map


def main() -> None:
    torch.manual_seed(0)
    source = resnet_inspect.get_model("resnet18").eval()
    key_map = torchvision_key_map(source)  # our key -> torchvision's key, derived from the model's structure
    for ours in ("encoder.gate.conv.weight", "encoder.layers.1.blocks.0.blocks.2.bn.running_mean",
                 "encoder.layers.1.blocks.0.shortcut.conv.weight", "decoder.fc.bias"):
        print(f"{ours:<52} -> {key_map[ours]}")

    # A torchvision-layout checkpoint, round-tripped through bytes like a .pth file.
    checkpoint = {key_map[key]: tensor for key, tensor in source.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    state_dict = torch.load(buffer, weights_only=True)
    print(f"\ncheckpoint: {len(state_dict)} tensors, e.g. {sorted(state_dict)[:3]}")

    torch.manual_seed(1)  # different random weights, so the load must overwrite all of them
    target = resnet_inspect.get_model("resnet18").eval()
    resnet_inspect.load_torchvision_weights(target, state_dict)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        difference = (source(image) - target(image)).abs().max().item()
    print(f"largest output difference after loading: {difference}")
    assert difference < 1e-6, difference

    # A checkpoint that does not fit is refused with every problem named, before anything is copied.
    broken = dict(state_dict)
    del broken["fc.bias"]
    broken["layer5.0.conv1.weight"] = torch.zeros(1)
    try:
        resnet_inspect.load_torchvision_weights(target, broken)
    except ValueError as error:
        print(f"\nrefused: {error}")


if __name__ == "__main__":
    main()
