"""Benchmark: `summary`, `rf`, `fit` and `time` on a 10-billion-parameter model defined in a user file (40 GB of
weights in float32) stay under 1 GiB peak RSS, against a bare `import torch`.

The model comes in two forms: a factory (`big_models.py:ten_billion`) and a module instance made when its file is
imported (`big_instance.py:net`, `net = ten_billion()` at the top level). Its constructor reads drop-path rates from
a tensor, as timm's models do, so the meta device alone could not build it. `summary`, `rf` and `fit` must analyse
it without allocating its weights; `time` must refuse it (exit code 2) before it allocates anything: the factory
from its meta-built estimate, the instance from the memory guard of its file's real import. Every run is a fresh
process; ours and the reference alternate, the order flipping every round. Prints every round, the medians and
each peak; exits 1 when a peak reaches 1 GiB or an output does not show the work it claims.

    python benchmarks/bench_meta_build.py --rounds 3
    python benchmarks/bench_meta_build.py --rounds 1 --only instance
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from _child import load_average, resnet_inspect_command, run_child

HERE = Path(__file__).resolve().parent
MODELS = {"factory": f"{HERE / 'big_models.py'}:ten_billion", "instance": f"{HERE / 'big_instance.py'}:net"}
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


def cases(model: str) -> dict[str, tuple[list[str], int, Callable[[str], bool] | None]]:
    """What each command on ``model`` must do: label -> (arguments, expected exit code, what its output must show)."""
    return {
        "summary": (["summary", model, "-f", "json"], 0, _summary_counts_every_parameter),
        "rf": (["rf", model, "-f", "json"], 0, _rf_gives_the_stems_field),
        "fit --memory 80GiB": (["fit", model, "--memory", "80GiB", "-f", "json"], 0, _fit_holds_every_weight),
        "time (refused)": (["time", model, "--warmup", "0", "--repeat", "1"], REFUSED, None),
    }


CASES = {f"{label} ({form})": case for form, model in MODELS.items() for label, case in cases(model).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="run only the cases whose label contains this text")
    args = parser.parse_args()
    print(f"load average {load_average()}; {args.rounds} rounds per case; models {', '.join(MODELS.values())} "
          f"({PARAMS:,} parameters)")
    reference = [sys.executable, "-c", "import torch"]
    missed = False
    for label, (case, expected_exit, shows) in CASES.items():
        if args.only not in label:
            continue
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
