"""Benchmark: what the operation table costs at start-up, each against its own reference, in one run.

- `resnet-inspect summary resnet50 --format json` against a bare `python -c "import torch"`: at most 1.15x;
- `resnet-inspect summary benchmarks/patterns.py:backbone --format json` (ConvNeXt stages, SE gates, attention)
  against importing torch and that file and building the model: at most 1.2x;
- `resnet-inspect list` against `import torch`: at most 0.5 s more;
- `resnet-inspect summary resnet50 --train --format json` (one training step on the meta device) against
  `resnet-inspect summary resnet50 --format json`: at most 1.3x.

Every run is a fresh process (a cold start); each pair runs alternately, the order flipping every round, so a
drift in machine speed hits both. Prints every round, the medians and the ratios; exits 1 when one misses.

    python benchmarks/bench_table.py --rounds 7
    python benchmarks/bench_table.py --rounds 7 --only "summary resnet50 --train"
"""

from __future__ import annotations

import argparse
import statistics
import sys

from _child import load_average, resnet_inspect_command, run_child

BUILD_PATTERNS = ("import importlib.util, torch; spec = importlib.util.spec_from_file_location('patterns', "
                  "'benchmarks/patterns.py'); module = importlib.util.module_from_spec(spec); "
                  "spec.loader.exec_module(module); module.backbone()")
PAIRS = {
    "summary resnet50": (resnet_inspect_command("summary", "resnet50", "--format", "json"),
                         [sys.executable, "-c", "import torch"], "ratio", 1.15),
    "summary patterns": (resnet_inspect_command("summary", "benchmarks/patterns.py:backbone", "--format", "json"),
                         [sys.executable, "-c", BUILD_PATTERNS], "ratio", 1.2),
    "list": (resnet_inspect_command("list"), [sys.executable, "-c", "import torch"], "extra seconds", 0.5),
    "summary resnet50 --train": (resnet_inspect_command("summary", "resnet50", "--train", "--format", "json"),
                                 resnet_inspect_command("summary", "resnet50", "--format", "json"), "ratio", 1.3),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=list(PAIRS), help="run this pair alone")
    args = parser.parse_args()
    print(f"load average {load_average()}; {args.rounds} rounds per pair")
    missed = False
    for label, (ours, reference, measure, target) in PAIRS.items():
        if args.only is not None and label != args.only:
            continue
        times: dict[str, list[float]] = {"ours": [], "reference": []}
        for round_number in range(args.rounds):
            order = [("ours", ours), ("reference", reference)]
            for name, command in order if round_number % 2 == 0 else order[::-1]:
                child = run_child(command)
                if name == "ours" and not child.stdout.strip():
                    raise SystemExit(f"{label}: printed nothing")
                times[name].append(child.wall_s)
            print(f"  {label} round {round_number + 1}: ours {times['ours'][-1]:.2f} s, "
                  f"reference {times['reference'][-1]:.2f} s")
        ours_s, reference_s = statistics.median(times["ours"]), statistics.median(times["reference"])
        value = ours_s / reference_s if measure == "ratio" else ours_s - reference_s
        verdict = "ok" if value <= target else "MISSED"
        missed = missed or value > target
        shown = f"{value:.2f}x" if measure == "ratio" else f"+{value:.2f} s"
        print(f"{label}: median ours {ours_s:.2f} s, reference {reference_s:.2f} s -> {shown} "
              f"(target {target}{'x' if measure == 'ratio' else ' s'}) {verdict}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
