"""Benchmark: `summary resnet152 --format html` stays under 2 MB and costs under 1 s beyond the summary itself.

Each round runs, in fresh processes and in alternating order, ``summary resnet152 --format json -o FILE`` (the
summary itself: capture, analyses, one renderer) and ``summary resnet152 --format html -o FILE`` (the same plus
the page: layer tree, receptive-field SVG, stage chart). The cost of the page is the difference of the medians,
in CPU time (user + system, from ``os.wait4``: steadier than wall time on a shared machine; the summary runs on
one thread) and in wall time. A third child builds the report in-process and times ``report.to_html()`` alone.
Every output is checked (the JSON's MACs, the page's rows), so no run skips work. Exits 1 when a target is
missed (the page under 2 MiB; the CPU-time difference and ``to_html()`` each under 1 s).

    python benchmarks/bench_html.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from _child import Child, load_average, resnet_inspect_command, run_child

RESNET152_MACS = 11_513_626_624
TARGET_BYTES = 2 * 1024 * 1024
TARGET_EXTRA_S = 1.0


def child() -> None:
    """In a fresh interpreter: build resnet152's summary, then time ``to_html()`` alone."""
    from resnet_inspect.capture.loader import load_model
    from resnet_inspect.pipeline.build import capture_model, summary_from_capture

    network, name = load_model("resnet152")
    report = summary_from_capture(capture_model(network, (224, 224), 1, 3, name), model=network)
    started = time.perf_counter()
    page = report.to_html()
    print(json.dumps({"seconds": time.perf_counter() - started, "bytes": len(page.encode())}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return 0
    print(f"summary resnet152: json vs html; {os.cpu_count()} CPUs; load average {load_average()}")
    with tempfile.TemporaryDirectory() as directory:
        json_path, html_path = os.path.join(directory, "r.json"), os.path.join(directory, "r.html")
        json_command = resnet_inspect_command("summary", "resnet152", "--format", "json", "-o", json_path)
        html_command = resnet_inspect_command("summary", "resnet152", "--format", "html", "-o", html_path)
        runs: dict[str, list[Child]] = {"json": [], "html": []}
        render_times = []
        for round_index in range(args.rounds):
            order = ["json", "html"] if round_index % 2 == 0 else ["html", "json"]
            for kind in order:
                runs[kind].append(run_child(json_command if kind == "json" else html_command))
            measured = json.loads(run_child([sys.executable, __file__, "--child"]).stdout)
            render_times.append(measured["seconds"])
            json_run, html_run = runs["json"][-1], runs["html"][-1]
            print(f"round {round_index + 1}: json {json_run.wall_s:.3f} s (CPU {json_run.cpu_s:.3f} s)   "
                  f"html {html_run.wall_s:.3f} s (CPU {html_run.cpu_s:.3f} s)   "
                  f"to_html() alone {measured['seconds']:.3f} s")
        with open(json_path, encoding="utf-8") as handle:
            report = json.load(handle)
        with open(html_path, encoding="utf-8") as handle:
            page = handle.read()
    if report["totals"]["macs"] != RESNET152_MACS or page.count('<tr class="layer') != len(report["layers"]):
        print("an output is wrong: the MACs or the page's rows do not match")
        return 1
    size = len(page.encode())

    def median(kind: str, cost: str) -> float:
        return statistics.median(getattr(run, cost) for run in runs[kind])

    extra_cpu = median("html", "cpu_s") - median("json", "cpu_s")
    extra_wall = median("html", "wall_s") - median("json", "wall_s")
    render = statistics.median(render_times)
    ok = size < TARGET_BYTES and extra_cpu < TARGET_EXTRA_S and render < TARGET_EXTRA_S
    print(f"page {size / 1024**2:.2f} MiB (target under 2 MiB); median html - json: CPU {extra_cpu:.3f} s, wall "
          f"{extra_wall:.3f} s; to_html() {render:.3f} s (target under {TARGET_EXTRA_S:.0f} s): "
          f"{'ok' if ok else 'OVER TARGET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
