"""Benchmark: `resnet-inspect --help` and `resnet-inspect arith ...` start fast and never import torch.

Each command runs as a user runs it (the console script, a fresh process each time), alternating round by
round with a bare ``python -c pass`` (the interpreter's own start-up, the floor). Prints every round, the
medians and the median ratio to the bare interpreter, in wall time and in the child's CPU time (user +
system, from ``os.wait4``): on a shared machine the CPU time is close to what the start-up would take on an
idle core. Then each command runs once more under ``python -X importtime`` to list what it imported: torch,
torchinfo, fvcore or numpy there is a failure. Exits 1 when a command imports one of them or its median wall
time is 0.3 s or more.

    python benchmarks/bench_startup.py --rounds 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from _child import load_average, resnet_inspect_command, run_child

TARGET_SECONDS = 0.3
HEAVY = ("torch", "torchinfo", "fvcore", "numpy")
COMMANDS = {
    "--help": ["--help"],
    "arith": ["arith", "-i", "56", "-k", "3", "-s", "2", "-p", "1"],
}


def heavy_imports(args: list[str]) -> list[str]:
    """The heavy top-level packages the command imports, from ``python -X importtime``."""
    finished = subprocess.run([sys.executable, "-X", "importtime", "-m", "resnet_inspect", *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in finished.stderr.splitlines()
                if line.startswith("import time:")}
    return sorted(imported & set(HEAVY))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    runs = {"python -c pass": [sys.executable, "-c", "pass"]}
    runs |= {f"resnet-inspect {name}": resnet_inspect_command(*argv) for name, argv in COMMANDS.items()}
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    print(f"{os.cpu_count()} CPUs, load average {load_average()} at the start; python {sys.version.split()[0]}")
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            child = run_child(runs[name])
            times[name].append(child.wall_s)
            cpu_times[name].append(child.cpu_s)
        print(f"round {round_index + 1:2d}: " + "   ".join(
            f"{name} {times[name][-1]:.3f} s (CPU {cpu_times[name][-1]:.3f} s)" for name in names))

    print(f"\nmedians over {args.rounds} rounds (load average {load_average()} at the end):")
    failed = False
    for name in names:
        median, cpu = statistics.median(times[name]), statistics.median(cpu_times[name])
        ratio = statistics.median(t / bare for t, bare in zip(times[name], times["python -c pass"], strict=True))
        verdict = ""
        if name != "python -c pass":
            command_args = COMMANDS[name.removeprefix("resnet-inspect ")]
            heavy = heavy_imports(command_args)
            fast = median < TARGET_SECONDS
            failed |= bool(heavy) or not fast
            verdict = (f"   {'under' if fast else 'NOT under'} {TARGET_SECONDS} s; "
                       f"{'imports ' + ', '.join(heavy) if heavy else 'imports none of ' + ', '.join(HEAVY)}")
        print(f"  {name:32s} wall {median:.3f} s ({ratio:5.2f}x python -c pass)   CPU {cpu:.3f} s{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
