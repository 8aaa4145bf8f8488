"""Benchmark: `fit` costs at most three meta passes, each measured as one `summary` of the same model.

- `resnet-inspect fit resnet50 --memory 24GiB --format json` against `resnet-inspect summary resnet50 --format json`;
- `resnet-inspect fit resnet50 --train --memory 24GiB --format json` against `resnet-inspect summary resnet50
  --train --format json`;
- `resnet-inspect fit resnet50 -i 64 --train --memory 1GiB --checkpoint auto --format json` (a checkpointing plan)
  against `resnet-inspect summary resnet50 -i 64 --train --format json`, with the target at most 5.

A summary is one meta pass plus every analysis of it, so it is a generous unit; what both commands share (starting
Python, importing torch) is measured on its own with `python -c "import torch"` and taken off both. The figure is

    passes = (fit - import torch) / (summary - import torch)

with the target at most 3 (5 for a checkpointing plan). Every run is a fresh process (a cold start); the three
commands run in turn, the order rotating every round, so a drift in machine speed hits them all. Prints every
round, the medians and the figure; exits 1 when one misses.

    python benchmarks/bench_fit.py --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys

from _child import load_average, resnet_inspect_command, run_child

IMPORT_TORCH = [sys.executable, "-c", "import torch"]
CASES = {
    "fit resnet50 (inference)": (resnet_inspect_command("fit", "resnet50", "--memory", "24GiB", "--format", "json"),
                                 resnet_inspect_command("summary", "resnet50", "--format", "json")),
    "fit resnet50 --train": (resnet_inspect_command("fit", "resnet50", "--train", "--memory", "24GiB", "--format",
                                                    "json"),
                             resnet_inspect_command("summary", "resnet50", "--train", "--format", "json")),
    "fit resnet50 --train --checkpoint auto": (
        resnet_inspect_command("fit", "resnet50", "-i", "64", "--train", "--memory", "1GiB", "--checkpoint", "auto",
                               "--format", "json"),
        resnet_inspect_command("summary", "resnet50", "-i", "64", "--train", "--format", "json")),
}
TARGET_PASSES = {"fit resnet50 --train --checkpoint auto": 5.0}  # else 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"load average {load_average()}; {args.rounds} rounds per case")
    missed = False
    for label, (fit, summary) in CASES.items():
        commands = {"fit": fit, "summary": summary, "import torch": IMPORT_TORCH}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for round_number in range(args.rounds):
            order = list(commands.items())
            shift = round_number % len(order)
            for name, command in order[shift:] + order[:shift]:
                child = run_child(command)
                if name != "import torch" and not child.stdout.strip():
                    raise SystemExit(f"{label}: {name} printed nothing")
                times[name].append(child.wall_s)
            print(f"  {label} round {round_number + 1}: " + ", ".join(f"{name} {values[-1]:.2f} s"
                                                                        for name, values in times.items()))
        fit_s, summary_s, torch_s = (statistics.median(times[name]) for name in commands)
        passes = (fit_s - torch_s) / (summary_s - torch_s)
        target = TARGET_PASSES.get(label, 3.0)
        verdict = "ok" if passes <= target else "MISSED"
        missed = missed or passes > target
        print(f"{label}: median fit {fit_s:.2f} s, summary {summary_s:.2f} s, import torch {torch_s:.2f} s -> "
              f"{passes:.2f} summaries' worth (target {target:.0f}) {verdict}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
