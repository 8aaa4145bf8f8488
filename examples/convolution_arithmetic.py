"""Convolution arithmetic (Dumoulin & Visin 2016) with the library's pure functions: no model, no torch.

Prints one example of every relation the tool knows, then shows why the seed's ``Conv2dAuto`` (p = k // 2)
keeps the size only for an odd kernel at stride 1, and which paddings would keep it.

    python examples/convolution_arithmetic.py
"""

from __future__ import annotations

from resnet_inspect.ops.arithmetic import conv_output, conv_transpose_output, pool_output, solve_padding

# (what it shows, the call): one line per relation, with small sizes you can check by hand.
EXAMPLES = [
    ("no padding, unit stride", conv_output(i=5, k=3)),
    ("padding p, unit stride", conv_output(i=5, k=4, p=2)),
    ("half padding, odd k", conv_output(i=5, k=3, p=1)),
    ("full padding", conv_output(i=5, k=3, p=2)),
    ("no padding, stride 2", conv_output(i=5, k=3, s=2)),
    ("padding and stride (general)", conv_output(i=6, k=3, s=2, p=1)),
    ("max pool of the ResNet stem", pool_output(i=112, k=3, s=2, p=1)),
    ("transposed, no padding", conv_transpose_output(i=3, k=3)),
    ("transposed, padding", conv_transpose_output(i=3, k=4, p=2)),
    ("transposed, half padding", conv_transpose_output(i=5, k=3, p=1)),
    ("transposed, full padding", conv_transpose_output(i=7, k=3, p=2)),
    ("transposed, stride 2", conv_transpose_output(i=2, k=3, s=2)),
    ("transposed, stride 2, padding", conv_transpose_output(i=3, k=3, s=2, p=1)),
    # Dumoulin & Visin's relation 14 (the a = (i + 2p - k) mod s extra rows) is PyTorch's output_padding.
    ("transposed, output_padding 1", conv_transpose_output(i=3, k=3, s=2, p=1, output_padding=1)),
    ("dilated (d = 2)", conv_output(i=7, k=3, d=2)),
]


def main() -> None:
    print("relation  case                           formula")
    for case, result in EXAMPLES:
        print(f"{result.relation:>8}  {case:<30} {result.formula}")

    # Conv2dAuto pads p = k // 2 on each side. Relation 2 gives o = i - k + 2(k // 2) + 1:
    # that is i when k is odd (2(k // 2) = k - 1) and i + 1 when k is even (2(k // 2) = k).
    print("\nConv2dAuto's p = k // 2 at i = 56:")
    for kernel in (1, 2, 3, 4, 5, 7):
        result = conv_output(i=56, k=kernel, p=kernel // 2)
        verdict = "keeps the size" if result.output == 56 else "grows by one"
        print(f"  k={kernel} p={kernel // 2}: {result.formula:<28} {verdict}  {list(result.flags)}")

    # With stride 2 no padding keeps the size; the best is o = ceil(i / s), and the floor may drop rows.
    strided = conv_output(i=56, k=3, s=2, p=1)
    print(f"\nstride 2, k=3, p=1: {strided.formula}, dropped rows/columns: {strided.dropped}")
    print("paddings giving o = i for k=3, s=1:", solve_padding(i=56, k=3))
    print("paddings giving o = i for k=4, s=1:", solve_padding(i=56, k=4), "(none: an even kernel needs p + p_end = 3)")
    print("paddings giving o = ceil(56 / 2) for k=3, s=2:", solve_padding(i=56, k=3, s=2))


if __name__ == "__main__":
    main()
