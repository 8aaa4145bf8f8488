"""Benchmark: `resnet-inspect summary resnet50 --format json` against torchinfo + fvcore on the same model.

Ours runs end to end as a user runs it (the console script, a fresh process each time), once as it is by
default (the capture on the meta device: no weights, no activations, no fvcore) and once with `--fvcore`
(which also builds real weights and runs fvcore's FlopCountAnalysis at batch 1). The reference is what one
would do without us: build ResNet-50 with real weights, call ``torchinfo.summary`` on a 1x3x224x224 input,
then ``fvcore.nn.FlopCountAnalysis`` and print its ``flop_count_table``, in a fresh process too.

The three alternate round by round (the order rotates), so a drift in machine speed hits them alike. Each
child's wall time is measured around it and its peak RSS comes from ``os.wait4`` (that child alone). Every
output is checked (ours: the exact MACs, fvcore's total with --fvcore; the reference: both tables), so no run
can skip work. Prints every round, the medians and the ratios ours / reference (also of CPU time, user +
system: the reference's convolutions use several threads, ours runs none); exits 1 when the default misses a
target (wall time at most 0.9x, peak memory at most 0.7x the reference's).

    python benchmarks/bench_summary.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable

from _child import load_average, resnet_inspect_command, run_child

RESNET50_MACS = 4_089_184_256
TARGET_WALL, TARGET_MEMORY = 0.9, 0.7

REFERENCE = """
import torch
import torchinfo
from fvcore.nn import FlopCountAnalysis, flop_count_table

from resnet_inspect.models import get_model

model = get_model("resnet50").eval()  # real, randomly initialised weights
print(torchinfo.summary(model, input_size=(1, 3, 224, 224), verbose=0))
analysis = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
print(flop_count_table(analysis))
print("fvcore total", analysis.total())
"""


def ours_command(*extra: str) -> list[str]:
    return resnet_inspect_command("summary", "resnet50", "--format", "json", *extra)


def check_ours(text: str, fvcore: bool) -> None:
    totals = json.loads(text)["totals"]
    assert totals["macs"] == RESNET50_MACS, totals
    assert (totals["fvcore_flops"] is not None) == fvcore, totals


def check_reference(text: str) -> None:
    assert "Total mult-adds" in text and "| module" in text and "fvcore total" in text, text[-500:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    runs: dict[str, tuple[list[str], Callable[[str], None]]] = {
        "ours (default)": (ours_command("--no-fvcore"), lambda text: check_ours(text, fvcore=False)),
        "ours --fvcore": (ours_command("--fvcore"), lambda text: check_ours(text, fvcore=True)),
        "reference": ([sys.executable, "-c", REFERENCE], check_reference),
    }
    names = list(runs)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    memories: dict[str, list[int]] = {name: [] for name in names}
    print(f"{os.cpu_count()} CPUs, load average {load_average()} at the start; python {sys.version.split()[0]}")
    print("ours (default) = `resnet-inspect summary resnet50 --format json` (meta-device capture, no fvcore)")
    print("ours --fvcore  = the same with --fvcore (real weights, fvcore at batch 1)")
    print("reference      = torchinfo.summary + fvcore FlopCountAnalysis + flop_count_table, real weights")
    for round_index in range(args.rounds):
        shift = round_index % len(names)  # rotate the order so that no run always goes first
        line = []
        for name in names[shift:] + names[:shift]:
            argv, check = runs[name]
            child = run_child(argv)
            check(child.stdout)
            wall, cpu, memory = child.wall_s, child.cpu_s, child.peak_rss_bytes
            walls[name].append(wall)
            cpus[name].append(cpu)
            memories[name].append(memory)
            line.append(f"{name} {wall:5.2f} s {memory / 2**20:6.0f} MiB")
        print(f"round {round_index + 1}: " + "   ".join(line))

    reference_wall = statistics.median(walls["reference"])
    reference_memory = statistics.median(memories["reference"])
    print(f"\nmedians over {args.rounds} rounds (load average {load_average()} at the end):")
    verdicts = []
    for name in names:
        wall, memory = statistics.median(walls[name]), statistics.median(memories[name])
        wall_ratio = statistics.median(w / r for w, r in zip(walls[name], walls["reference"], strict=True))
        cpu_ratio = statistics.median(c / r for c, r in zip(cpus[name], cpus["reference"], strict=True))
        memory_ratio = statistics.median(m / r for m, r in zip(memories[name], memories["reference"], strict=True))
        print(f"  {name:15s} wall {wall:5.2f} s   peak RSS {memory / 2**20:6.0f} MiB   "
              f"ratio to reference: wall {wall_ratio:.2f}x, memory {memory_ratio:.2f}x (CPU time {cpu_ratio:.2f}x)")
        if name == "ours (default)":
            verdicts = [wall_ratio <= TARGET_WALL, memory_ratio <= TARGET_MEMORY]
    print(f"  (reference: wall {reference_wall:.2f} s, peak RSS {reference_memory / 2**20:.0f} MiB)")
    print(f"targets for the default: wall <= {TARGET_WALL}x: {'met' if verdicts[0] else 'MISSED'}; "
          f"peak memory <= {TARGET_MEMORY}x: {'met' if verdicts[1] else 'MISSED'}")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
