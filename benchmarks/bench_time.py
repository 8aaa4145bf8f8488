"""Benchmark: `resnet-inspect time` measures what a bare torch.utils.benchmark measurement does.

Ours is ``time_model`` (the function the `time` command calls for each batch size, with its warm-up and
blocked autorange); the reference is a plain ``Timer("model(x)").blocked_autorange()`` on the same model,
input shape and threads. The two alternate over many short rounds in one process, each with its own
warm-up (nothing is cached between runs), so that a drift in machine speed hits both alike. Prints every
round and the median ratio ours / reference; exits 1 when it is more than the tolerance (5%) away from 1.

    python benchmarks/bench_time.py --model resnet18 --input-size 224 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def reference_ms(model: object, shape: tuple[int, ...], device: str, threads: int, warmup: int,
                 min_run_time_s: float) -> float:
    """The bare measurement: warm up, then Timer.blocked_autorange; the median per forward pass in ms."""
    import torch
    from torch.utils import benchmark

    x = torch.randn(shape, device=device)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)  # type: ignore[operator]
            timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads)
            return timer.blocked_autorange(min_run_time=min_run_time_s).median * 1e3
    finally:
        torch.set_num_threads(previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's current thread count")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--reference-seconds", type=float, default=0.3, help="min_run_time of the reference")
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()

    import torch

    from resnet_inspect.analysis.timing import prepare_model, resolve_device, time_model
    from resnet_inspect.capture.loader import load_model

    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.manual_seed(0)
    model, name = load_model(args.model, device=device)
    model = prepare_model(model, device)
    shape = (args.batch_size, 3, args.input_size, args.input_size)
    print(f"{name} on {device}, input {'x'.join(map(str, shape))}, {threads} threads, torch {torch.__version__}")

    ratios = []
    for round_index in range(args.rounds):
        started = time.perf_counter()
        # Alternate which goes first so that a drift in machine speed does not favour either.
        if round_index % 2 == 0:
            ours = time_model(model, shape, device, warmup=args.warmup, repeat=args.repeat, threads=threads)
            reference = reference_ms(model, shape, device, threads, args.warmup, args.reference_seconds)
        else:
            reference = reference_ms(model, shape, device, threads, args.warmup, args.reference_seconds)
            ours = time_model(model, shape, device, warmup=args.warmup, repeat=args.repeat, threads=threads)
        ratio = ours.median_ms / reference
        ratios.append(ratio)
        print(f"round {round_index + 1}: ours {ours.median_ms:8.3f} ms (IQR {ours.iqr_ms:.3f}, {ours.runs} runs)   "
              f"reference {reference:8.3f} ms   ratio {ratio:.4f}   ({time.perf_counter() - started:.1f} s)")
    median_ratio = statistics.median(ratios)
    within = abs(median_ratio - 1) <= args.tolerance
    print(f"median ratio ours / reference: {median_ratio:.4f} "
          f"({'within' if within else 'OUTSIDE'} {100 * args.tolerance:.0f}%)")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
