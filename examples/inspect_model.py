"""Inspect a registered model with the Python API: the numbers of `resnet-inspect summary`, as a dict.

    python examples/inspect_model.py              # resnet18 at 224x224
    python examples/inspect_model.py resnet50 160
"""

from __future__ import annotations

import sys

import resnet_inspect


def main(name: str = "resnet18", size: int = 224) -> None:
    print("registered:", ", ".join(resnet_inspect.list_models()))
    model = resnet_inspect.get_model(name)  # random weights; inspect() traces a copy on the meta device
    report = resnet_inspect.inspect(model, input_size=size, model_name=name)
    data = report.to_dict()  # exactly the JSON of `resnet-inspect summary --format json`

    totals = data["totals"]
    print(f"\n{data['model']}: {data['input_shape']} -> {data['output_shape']}")
    print(f"parameters {totals['params']:,}   MACs {totals['macs']:,}   FLOPs (2 x MACs) {totals['flops']:,}")
    print(f"arithmetic: {data['arithmetic']['checked']} layers checked, {data['arithmetic']['failed']} failed")
    field = data["receptive_field"]  # at the encoder output: size, effective stride and padding per axis
    print(f"receptive field {field['size'][0]}, effective stride {field['stride'][0]}, padding {field['padding'][0]}")

    # Every module call is a layer; depth 2 gives the stem ("gate"), the stages and the head.
    print(f"\n{'layer':<18} {'output':>16} {'RF':>5} {'params':>11} {'MACs':>15}")
    for layer in data["layers"]:
        if layer["depth"] == 2:
            rf = layer["receptive_field"]["size"][0] if layer["receptive_field"] else "-"
            shape = "x".join(map(str, layer["output_shape"]))
            print(f"{layer['name']:<18} {shape:>16} {rf:>5} {layer['params']:>11,} {layer['macs']:>15,}")

    # Each convolution and pooling layer carries its arithmetic check. The stem's 7x7/2 conv: (224 + 6 - 7) is
    # odd, so the floor of relation 6 leaves the last padded row and column uncovered.
    checked = [layer for layer in data["layers"] if layer["arithmetic"] is not None]
    first = checked[0]
    check = first["arithmetic"]
    print(f"\n{first['name']} ({first['type']}): relation {check['relation']}, expected {check['expected']}, "
          f"observed {check['observed']}, ok {check['ok']}, dropped rows/columns {check['dropped']}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "resnet18", int(sys.argv[2]) if len(sys.argv) > 2 else 224)
