"""Benchmark: `summary`, `rf`, `fit` and `time` on a 10-billion-parameter model defined in a user file (40 GB of
weights in float32) stay under 1 GiB peak RSS, against a bare `import torch`.

The model (`big_models.py:ten_billion`) reads drop-path rates from a tensor in its constructor, as timm's models
do, so the meta device alone could not build it. `summary`, `rf` and `fit` must analyse it without allocating its
weights; `time` must refuse it (exit code 2) from its meta-built estimate before it allocates anything. Every run
is a fresh process; ours and the reference alternate, the order flipping every round. Prints every round, the
medians and each peak; exits 1 when a peak reaches 1 GiB or an output does not show the work it claims.

    python benchmarks/bench_meta_build.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from _child import load_average, resnet_inspect_command, run_child

MODEL = f"{Path(__file__).resolve().parent / 'big_models.py'}:ten_billion"
PARAMS = 4 * 4 * 3 * 64 + 64 + (64 * 100_000 + 100_000) + (100_000**2 + 100_000) + (100_000 * 1000 + 1000)
TARGET_PEAK_BYTES = 1 << 30
REFUSED = 2


def _summary_counts_every_parameter(stdout: str) -> bool:
    return json.loads(stdout)["totals"]["params"] == PARAMS


def _rf_gives_the_stems_field(stdout: str) -> bool:
    output = json.loads(stdout)["output"]  # the encoder's output: the 4x4 stride-4 stem, before global pooling
    return output["size"] == [4, 4] and output["stride"] == [4, 4]


def _fit_holds_every_weight(stdout: str) -> bool:
    return json.loads(stdout)["breakdown"]["weights"] == 4 * PARAMS  # float32


# label -> (arguments, expected exit code, what its output must show)
CASES: dict[str, tuple[list[str], int, Callable[[str], bool] | None]] = {
    "summary": (["summary", MODEL, "-f", "json"], 0, _summary_counts_every_parameter),
    "rf": (["rf", MODEL, "-f", "json"], 0, _rf_gives_the_stems_field),
    "fit --memory 80GiB": (["fit", MODEL, "--memory", "80GiB", "-f", "json"], 0, _fit_holds_every_weight),
    "time (refused)": (["time", MODEL, "--warmup", "0", "--repeat", "1"], REFUSED, None),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {load_average()}; {args.rounds} rounds per case; model {MODEL} ({PARAMS:,} parameters)")
    reference = [sys.executable, "-c", "import torch"]
    missed = False
    for label, (case, expected_exit, shows) in CASES.items():
        ours_s: list[float] = []
        peaks: list[int] = []
        reference_s: list[float] = []
        for round_number in range(args.rounds):
            runs = [("ours", resnet_inspect_command(*case), expected_exit), ("reference", reference, 0)]
            for who, argv, expected in runs if round_number % 2 == 0 else runs[::-1]:
                child = run_child(argv, expected)
                if who == "reference":
                    reference_s.append(child.wall_s)
                    continue
                ours_s.append(child.wall_s)
                peaks.append(child.peak_rss_bytes)
                if shows is not None and not shows(child.stdout):
                    print(f"{label}: the output does not show the work it claims")
                    missed = True
                print(f"  round {round_number + 1}: {child.wall_s:.2f} s, peak {child.peak_rss_bytes / 2**20:.0f} MiB")
        peak = max(peaks)
        missed = missed or peak >= TARGET_PEAK_BYTES
        print(f"{label}: {statistics.median(ours_s):.2f} s (import torch {statistics.median(reference_s):.2f} s), "
              f"highest peak {peak / 2**20:.0f} MiB (target < {TARGET_PEAK_BYTES / 2**20:.0f} MiB) "
              f"{'ok' if peak < TARGET_PEAK_BYTES else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
