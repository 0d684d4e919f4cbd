"""One sweep worker using every core against K workers sharing them, timed side by side.

    python bench/sweep_workers.py --data-root ../shared/data [--trials 4] [--rounds 2] [--workers 2]

Each round runs the same small study (the unet, --train-size pairs, batch 64, one epoch, no
pruning, the journal storage in a fresh runs folder) once with one worker and once with K,
in alternating order (1, K, K, 1, ...), as real `python -m mixsep sweep` commands. It prints
each run's wall time and CPU seconds, and the last line gives the median ratio of wall times
(one worker's over K workers': above 1 means K workers finished the study sooner).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import command_line, data_root, machine, machine_line, set_threads

from mixsep import MixsepError
from mixsep.data import require_split

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds_of_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_study(args, workers: int, runs: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one whole study run by `workers` worker processes."""
    cmd = [sys.executable, "-m", "mixsep", "sweep", "--study", f"w{workers}", "--runs-dir", str(runs),
           "--data-root", args.data_root, "--trials", str(args.trials), "--workers", str(workers),
           "--pruner", "none", "--model", "unet", "--no-pretrained", "--device", "cpu",
           "--train-size", str(args.train_size), "--val-size", str(args.val_size), "--batch-size", "64",
           "--epochs", "1", "--space", "lr=1e-4:1e-2:log"]
    cpu, t = cpu_seconds_of_children(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:  # exit 2 passed on: the sweep refused an input of the user's
        print(f"error: the {workers}-worker study failed (exit {done.returncode}): "
              f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no message'}", file=sys.stderr)
        sys.exit(2 if done.returncode == 2 else 1)
    return wall, cpu_seconds_of_children() - cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="K, the workers compared with one (default 2)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--train-size", type=int, default=512)
    p.add_argument("--val-size", type=int, default=256)
    args = p.parse_args(argv)
    if args.workers < 2 or args.trials < 1 or args.rounds < 1:
        p.error("--workers must be at least 2, --trials and --rounds at least 1")
    if args.train_size < 0 or args.val_size < 1:  # found now, not once a 1-worker study has started
        p.error("--train-size must be 0 (all pairs) or more and --val-size at least 1")
    try:
        require_split(data_root(args.data_root), "train")  # the sweep's own sentence, before a study starts
    except MixsepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(command_line())
    print(machine_line(machine(set_threads(0))))  # torch's default: what one worker uses
    times: dict[int, list[tuple[float, float]]] = {1: [], args.workers: []}
    for r in range(args.rounds):
        order = (1, args.workers) if r % 2 == 0 else (args.workers, 1)
        for k in order:
            with tempfile.TemporaryDirectory() as tmp:
                wall, cpu = one_study(args, k, Path(tmp))
            times[k].append((wall, cpu))
            print(f"round {r + 1}: {k} worker(s): {wall:.1f} s wall, {cpu:.1f} CPU-seconds", flush=True)
    print()
    print("| workers | wall s (median) | CPU s (median) |")
    print("|---|---|---|")
    for k, rows in times.items():
        print(f"| {k} | {statistics.median(w for w, _ in rows):.1f} | {statistics.median(c for _, c in rows):.1f} |")
    ratio = statistics.median(w1 / wk for (w1, _), (wk, _) in zip(times[1], times[args.workers]))
    print(f"sweep_workers: trials={args.trials} rounds={args.rounds} one_over_{args.workers}_wall={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
