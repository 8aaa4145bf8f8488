"""Benchmark: a run that cannot fit is refused at once, against a bare `import torch`, in one run.

Each case asks for far more memory than any machine has (the same cases as the memory guard's tests); the
guard must refuse it from the meta pass alone, so the refusal costs little more than starting Python and
importing torch. Every run is a fresh process; ours and the reference alternate, the order flipping every
round. Prints every round, the medians and the ratios; exits 1 when a ratio misses its target (1.3x).

    python benchmarks/bench_refusal.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys

from _child import load_average, resnet_inspect_command, run_child

TARGET_RATIO = 1.3
CASES = {
    "ERF at 65536": ["rf", "resnet20", "-i", "65536", "--erf"],
    "rf --check": ["rf", "resnet152", "-i", "65536", "--check"],
    "time at batch 1048576": ["time", "resnet50", "-b", "1048576", "--warmup", "0", "--repeat", "1"],
    "summary --fvcore": ["summary", "resnet50", "-i", "65536", "--fvcore"],
}
GUARD_EXIT = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {load_average()}; {args.rounds} rounds per case")
    reference = [sys.executable, "-c", "import torch"]
    missed = False
    for label, case in CASES.items():
        ours_s: list[float] = []
        reference_s: list[float] = []
        for round_number in range(args.rounds):
            runs = [(ours_s, resnet_inspect_command(*case), GUARD_EXIT), (reference_s, reference, 0)]
            for times, argv, expected in runs if round_number % 2 == 0 else runs[::-1]:
                times.append(run_child(argv, expected).wall_s)
        ratio = statistics.median(ours_s) / statistics.median(reference_s)
        missed = missed or ratio > TARGET_RATIO
        print(f"{label}: refused in {statistics.median(ours_s):.2f} s, import torch "
              f"{statistics.median(reference_s):.2f} s -> {ratio:.2f}x (target {TARGET_RATIO}x) "
              f"{'ok' if ratio <= TARGET_RATIO else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
