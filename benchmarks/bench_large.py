"""Benchmark: `resnet-inspect summary resnet152 -i 2048 -b 8` in under 5 s and under 1 GiB peak RSS.

A real forward pass at that size would need tens of GiB of activations; the summary captures on the meta
device instead. The reference is the plainest way to get the same shapes: a fresh process that imports
torch, builds ResNet-152 on the meta device and runs one bare forward pass of an 8x3x2048x2048 meta tensor
(no hooks, no records, no analysis). It is not a floor: PyTorch's meta kernels load their Python reference
implementations on first use (about 1.5 s), which our capture's shape rules skip; the ratio shows what that
buys, and the limits are absolute anyway. The two alternate round by round, each in
a fresh process; wall time is measured around the child, peak RSS comes from ``os.wait4``. Our output is
checked (the input shape and the exact parameter count), so no run can skip work. Exits 1 when our median
misses either limit.

    python benchmarks/bench_large.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from _child import load_average, resnet_inspect_command, run_child

LIMIT_SECONDS, LIMIT_BYTES = 5.0, 2**30
RESNET152_PARAMS = 60_192_808
ARGS = ["summary", "resnet152", "-i", "2048", "-b", "8", "--format", "json"]

REFERENCE = """
import torch

from resnet_inspect.models import get_model

with torch.device("meta"):  # built without allocating weights
    model = get_model("resnet152").eval()
with torch.no_grad():
    output = model(torch.empty(8, 3, 2048, 2048, device="meta"))
print(tuple(output.shape))
"""


def check_ours(text: str) -> None:
    data = json.loads(text)
    assert data["input_shape"] == [8, 3, 2048, 2048], data["input_shape"]
    assert data["totals"]["params"] == RESNET152_PARAMS, data["totals"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    ours = resnet_inspect_command(*ARGS)
    reference = [sys.executable, "-c", REFERENCE]
    walls: dict[str, list[float]] = {"ours": [], "reference": []}
    memories: dict[str, list[int]] = {"ours": [], "reference": []}
    print(f"{os.cpu_count()} CPUs, load average {load_average()} at the start; python {sys.version.split()[0]}")
    print(f"ours      = resnet-inspect {' '.join(ARGS)}")
    print("reference = import torch, build resnet152 on meta, one bare forward of an 8x3x2048x2048 meta tensor")
    for round_index in range(args.rounds):
        order = ("ours", "reference") if round_index % 2 == 0 else ("reference", "ours")
        for name in order:
            child = run_child(ours if name == "ours" else reference)
            if name == "ours":
                check_ours(child.stdout)
            walls[name].append(child.wall_s)
            memories[name].append(child.peak_rss_bytes)
        print(f"round {round_index + 1}: " + "   ".join(
            f"{name} {walls[name][-1]:5.2f} s {memories[name][-1] / 2**20:5.0f} MiB" for name in walls))

    wall, memory = statistics.median(walls["ours"]), statistics.median(memories["ours"])
    wall_ratio = statistics.median(o / r for o, r in zip(walls["ours"], walls["reference"], strict=True))
    memory_ratio = statistics.median(o / r for o, r in zip(memories["ours"], memories["reference"], strict=True))
    print(f"\nmedians over {args.rounds} rounds (load average {load_average()} at the end):")
    print(f"  ours      wall {wall:5.2f} s   peak RSS {memory / 2**20:5.0f} MiB")
    print(f"  reference wall {statistics.median(walls['reference']):5.2f} s   "
          f"peak RSS {statistics.median(memories['reference']) / 2**20:5.0f} MiB")
    print(f"  ratio ours / reference: wall {wall_ratio:.2f}x, memory {memory_ratio:.2f}x")
    fast, small = wall < LIMIT_SECONDS, memory < LIMIT_BYTES
    print(f"limits: under {LIMIT_SECONDS:g} s: {'met' if fast else 'MISSED'}; "
          f"under 1 GiB peak RSS: {'met' if small else 'MISSED'}")
    return 0 if fast and small else 1


if __name__ == "__main__":
    sys.exit(main())
