"""Compare ResNet depths with the Python API: what each extra block buys in parameters, MACs and receptive field.

Every row comes from one capture on the meta device (no weights, no real forward pass), so even ResNet-152
takes about a second.

    python examples/compare_depths.py            # the five ImageNet depths at 224x224
    python examples/compare_depths.py cifar      # He et al.'s CIFAR-10 networks at 32x32
"""

from __future__ import annotations

import sys

from resnet_inspect.pipeline.compare import compare, family_models


def main(family: str = "imagenet") -> None:
    names = family_models(family)  # registry names, shallowest first
    report = compare(names)  # the library side of `resnet-inspect compare`
    rows = report.to_dict()  # one dict per model; "vs_first" holds ratios to the first row

    print(f"{'model':<10} {'depth':>5} {'blocks':>9} {'params':>12} {'MACs':>15} {'x MACs':>7} {'RF':>5} "
          f"{'RF/input':>8}  encoder output")
    for row in rows:
        blocks = "-".join(map(str, row["stages"]))
        field = row["receptive_field"]["size"][0]
        ratio = row["receptive_field_input_ratio"][0]
        output = "x".join(map(str, row["output_shape"]))
        print(f"{row['model']:<10} {row['depth']:>5} {blocks:>9} {row['params']:>12,} {row['macs']:>15,} "
              f"{row['vs_first']['macs']:>7.2f} {field:>5} {ratio:>8.2f}  {output}")

    # Depth counts convolutions and linear layers on the longest path (6n + 2 for the CIFAR nets, the name's
    # number for ImageNet ones); the receptive field grows with every 3x3 conv, by (3 - 1) x its stride product.
    deepest = max(rows, key=lambda row: row["depth"])
    share = {stage["name"]: stage["macs_share"] for stage in deepest["stage_details"]}
    spread = ", ".join(f"{name} {100 * value:.1f}%" for name, value in share.items() if value is not None)
    print(f"\n{deepest['model']}: share of MACs per stage: {spread}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "imagenet")
