"""What each "Live updates" choice of the Train page costs, in cores of the browser and the server.

    python bench/watch_cores.py --data-root ../shared/data [--rounds 2] [--window 40] [--choice "5 s" ...]

bench/dashboard_bench.py measures watching as the trainer feels it (samples/s with and without the page),
which scatters by several hundredths between rounds on 2 cores. This bench reads the steady figure behind
it: the CPU the watching itself takes. One `python -m mixsep train` child (the `tiny` model, one thread, so
it leaves the page a core) trains throughout, and one Streamlit server serves its runs folder. For each
choice in turn (2 s, 5 s, 15 s, Paused, Auto by default; the order reversed every other round) a fresh
headless Chromium opens the Train page, which follows the running trainer, clicks the choice, waits --settle
seconds, then reads the CPU seconds of every Chromium process and of the server from /proc over --window
seconds, raised to whole periods of the chart's redraws (every 10, 25 and 75 s at 2, 5 and 15 s). Auto, the
page's default, is the 5 s pace for a trainer's first 5 minutes and the 15 s pace after: it is measured after,
the bench waiting for the trainer to pass 5 minutes of training if it has not. The figure per choice is the
median over rounds of (browser + server) cores.

The last line: watch_cores: 2s=.. 5s=.. 15s=.. paused=.. auto=..   (browser + server cores, medians)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixsep import MixsepError  # noqa: E402
from mixsep.config import default_data_root  # noqa: E402
from mixsep.data import require_split  # noqa: E402
from mixsep.run import MetricsTail  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from benchlib import (add_json_flags, at_least, data_root as checked_root, json_output, one_sentence,  # noqa: E402
                      write_output)
from mixsep_ui import AUTO_SLOWS_AFTER_S, CHART_EVERY, LIVE_UPDATES, is_auto, live_pace  # noqa: E402
from dashboard_bench import (Watcher, browser_pids, check_browser, cpu_seconds, descendants,  # noqa: E402
                             start_server, stop_process_group)

# the labels a user clicks on the Train page; Auto last, as it is measured once the trainer is past its first minutes
CHOICES = tuple(sorted(LIVE_UPDATES, key=is_auto))
LATE = float("inf")  # Auto's pace once the trainer has trained AUTO_SLOWS_AFTER_S seconds


def window_for(choice: str, window: float) -> float:
    """``window`` seconds, raised to a whole number of the choice's chart periods (the chart redraws at a
    CHART_EVERY-th of the status's pace: a 40 s window at 15 s, a chart every 75 s, held a redraw or none by chance)."""
    every = live_pace(choice, LATE)
    if every is None:
        return window
    period = every * CHART_EVERY
    return max(1, math.ceil(window / period - 1e-9)) * period


def start_trainer(runs_dir: Path, data_root: Path, minutes: float, log: Path) -> subprocess.Popen:
    """A real trainer that runs longer than the bench: the tiny model on one thread, no checkpoint until it ends."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "mixsep", "train", "--model", "tiny", "--no-pretrained", "--batch-size", "8",
         "--train-size", "0", "--epochs", "100000", "--max-minutes", f"{minutes:.2f}", "--checkpoint-every",
         "1000000000", "--checkpoint-seconds", "0", "--runs-dir", str(runs_dir), "--data-root", str(data_root),
         "--quiet"], cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_steps(runs_dir: Path, trainer: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if trainer.poll() is not None:
            said = (log.read_text(errors="replace").strip().splitlines() or ["no message"])[-1]
            raise MixsepError(f"The training child ended before the bench began (exit {trainer.returncode}): "
                              f"{said.removeprefix('error: ').rstrip('.')}.")
        runs = [p for p in runs_dir.iterdir() if p.is_dir()]
        if runs and MetricsTail(runs[0]).poll().rows:
            return
        time.sleep(0.5)
    raise MixsepError(f"The training child logged no step in {timeout:.0f} s; its output is in {log}.")


def wait_until_trained(runs_dir: Path, trainer: subprocess.Popen, seconds: float, log) -> None:
    """Auto is measured at its slower pace: wait until the trainer has trained ``seconds`` (the elapsed_s of the
    newest row of its metrics.csv, read as it grows)."""
    tail, trained, said = MetricsTail(next(p for p in runs_dir.iterdir() if p.is_dir())), 0.0, False
    while True:
        rows = tail.poll().rows
        trained = float(rows[-1]["elapsed_s"]) if rows else trained
        if trained >= seconds:
            return
        if not said:
            log(f"  waiting {seconds - trained:.0f} s for the trainer to pass {seconds:.0f} s of training "
                "(Auto's slower pace)")
            said = True
        if trainer.poll() is not None:
            raise MixsepError(f"The training child ended while the bench waited for it (exit {trainer.returncode}).")
        time.sleep(1)


def watch_once(url: str, choice: str, server_pid: int, settle: float, window: float) -> dict:
    """(browser, server) cores while the Train page, set to ``choice``, follows the trainer for ``window`` s."""
    watcher = Watcher(url, choice)
    try:
        time.sleep(settle)  # the click's rerun and the first chart are drawn: the page is in its steady state
        server = descendants(server_pid)
        b0, s0, t0 = cpu_seconds(browser_pids()), cpu_seconds(server), time.monotonic()
        time.sleep(window)
        # processes that ended in the window take their seconds with them: Chromium keeps its renderer for the
        # page's life, so the sum over the processes alive at both ends is what the page cost
        b1, s1, t1 = cpu_seconds(browser_pids()), cpu_seconds(server), time.monotonic()
    finally:
        watcher.close()
    return {"browser": (b1 - b0) / (t1 - t0), "server": (s1 - s0) / (t1 - t0), "seconds": t1 - t0}


def measure(data_root: Path, *, choices=CHOICES, rounds: int = 2, window: float = 40.0, settle: float = 12.0,
            log=print) -> dict:
    check_browser()
    require_split(Path(data_root), "train")  # before a server and a trainer start
    per_round = max(window_for(c, window) for c in choices) + settle + 25  # and a browser's start and close
    with tempfile.TemporaryDirectory(prefix="mixsep-watch-") as tmp:
        work = Path(tmp)
        runs_dir = work / "runs"
        runs_dir.mkdir()
        auto = any(map(is_auto, choices))
        trainer = start_trainer(runs_dir, Path(data_root).resolve(),
                                (rounds * len(choices) * per_round + 120 + AUTO_SLOWS_AFTER_S * auto) / 60,
                                work / "trainer.log")
        server = None
        try:
            wait_for_steps(runs_dir, trainer, work / "trainer.log")
            server, url = start_server(Path(data_root), runs_dir, work / "streamlit.log")
            figures = {c: [] for c in choices}
            for r in range(rounds):
                for choice in (choices if r % 2 == 0 else choices[::-1]):  # a drifting machine moves every choice
                    if trainer.poll() is not None:
                        raise MixsepError("The training child ended while the page watched it; its output is in "
                                          f"{work / 'trainer.log'}.")
                    if is_auto(choice):  # the page has taken the slower pace when the
                        wait_until_trained(runs_dir, trainer, AUTO_SLOWS_AFTER_S + 1, log)  # click reruns it
                    f = watch_once(url, choice, server.pid, settle, window_for(choice, window))
                    figures[choice].append(f)
                    log(f"  round {r + 1} {choice:7s} browser {f['browser']:.4f} cores, server {f['server']:.4f} "
                        f"cores ({f['seconds']:.0f} s)")
        finally:
            if server is not None:
                stop_process_group(server)
            stop_process_group(trainer)
    summary = {c: {"browser": statistics.median(f["browser"] for f in v), "server": statistics.median(f["server"] for f in v),
                   "total": statistics.median(f["browser"] + f["server"] for f in v), "status_every_s": live_pace(c, LATE),
                   "rounds": v}
               for c, v in figures.items()}
    return {"choices": summary, "config": {"rounds": rounds, "window_s": window, "settle_s": settle,
                                           "trainer": "tiny, batch 8, one thread"}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=default_data_root(), help="folder with MNIST/ and CIFAR-10 (default ./data)")
    p.add_argument("--choice", action="append", choices=CHOICES, default=[],
                   help="a Live updates choice to measure; give it again for more (default: all five; Auto is "
                        f"measured at its slower pace, once the trainer has trained {AUTO_SLOWS_AFTER_S} s)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every choice (default 2)")
    p.add_argument("--window", type=float, default=40.0, help="seconds of each measurement (default 40)")
    p.add_argument("--settle", type=float, default=12.0, help="seconds after the click before it (default 12)")
    add_json_flags(p)
    return p


@one_sentence
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the server, browser and trainer stop
    at_least("--rounds", args.rounds)
    if not (0 < args.window <= 3600 and 0 <= args.settle <= 600):  # (inf and nan fail too)
        raise MixsepError(f"--window must lie in (0, 3600] seconds and --settle in [0, 600] (got {args.window:g} "
                          f"and {args.settle:g}).")
    require_split(checked_root(args.data_root), "train")  # before the line that says what is measured
    json_out = json_output(args.json, args.overwrite, args.data_root)
    choices = tuple(dict.fromkeys(args.choice)) or CHOICES
    print(f"The Train page watching a one-thread tiny trainer in headless Chromium: {', '.join(choices)}; "
          f"{args.rounds} rounds of {args.window:g} s each:", flush=True)
    out = measure(Path(args.data_root), choices=choices, rounds=args.rounds, window=args.window,
                  settle=args.settle, log=lambda s: print(s, flush=True))
    for c, f in out["choices"].items():
        print(f"{c:7s} browser {f['browser']:.4f} + server {f['server']:.4f} = {f['total']:.4f} cores (median)")
    print("watch_cores: " + " ".join(f"{c.replace(' ', '').lower()}={f['total']:.4f}"
                                     for c, f in out["choices"].items()))
    if json_out:
        write_output(json_out, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
