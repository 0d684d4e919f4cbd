"""What watching costs: training samples/s with the Train page open in a real browser, against none.

    python bench/dashboard_bench.py --data-root ../shared/data [--rounds 2] [--history 10000] [--refresh "15 s"]

One Streamlit server (`streamlit run dashboard.py`) serves a fresh runs folder for the whole
bench. Each round trains a real `python -m mixsep train` child into that folder; rounds
alternate A B A B ... A: A with no browser (the server idles, no session), B with the Train page
open in headless Chromium, which adopts the running child as the page would after a reload.
The overhead is the median over watched rounds of 1 - B / (mean of the A rounds either side).
samples/s of a round come from the child's own metrics.csv (steps after a warm-up, wall clock
between rows), so starting the process, loading data and the final checkpoint are not counted.

--history H starts each round as a resume of a run whose metrics.csv already holds H rows (and
a checkpoint at step H): the page then shows a run of H + the round's steps, which is what a
long run costs to watch. The rows stand in for a long run's history; only their count matters.

--blank opens an empty tab (about:blank) in the watched rounds instead of the Train page: the
overhead of a browser that is merely open, the floor under any page.

--wait-policy spin --wait-policy passive runs each A B pair once per OpenMP wait policy of the
trainer (bench/contention.py), in turn, and prints each policy's medians.

--refresh picks the Train page's "Live updates" choice (2 s, 5 s, 15 s or Paused) as a user
would click it; without it the page's default holds.

Over each round's timed window the bench reads CPU seconds from /proc/<pid>/stat for the
trainer, the server and every Chromium process, so the breakdown says who takes the cores.

The line before the last gives the watched rounds' mean overhead, its 95% interval (Student's t)
and whether the issue's 0.03 target lies inside it, under it or above it.

The last line: dashboard: overhead=.. sps_without=.. sps_with=.. server_cores=.. browser_cores=..
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixsep import MixsepError, TrainConfig  # noqa: E402
from mixsep.config import default_data_root  # noqa: E402
from mixsep.data import require_split  # noqa: E402
from mixsep.run import MetricsTail, read_status  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from benchlib import (add_json_flags, at_least, data_root as checked_root, json_output, one_sentence,  # noqa: E402
                      write_output)
from contention import POLICIES, child_env  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- processes and CPU time


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK  # ppid, utime + stime


def descendants(root: int) -> set[int]:
    """root and every process below it (one /proc scan)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (s := _stat(int(entry.name))) is not None:
            children.setdefault(s[0], []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: set[int]) -> float:
    return sum(s[1] for pid in pids if (s := _stat(pid)) is not None)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def browser_pids() -> set[int]:
    """Chromium processes started by this bench (Playwright's driver runs them below us)."""
    return {p for p in descendants(os.getpid()) if "chrom" in _comm(p).lower()}


# --------------------------------------------------------------------------- the server and the browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_root: Path, runs_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, MIXSEP_DATA_ROOT=str(data_root), MIXSEP_RUNS_DIR=str(runs_dir))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.headless", "true",
         "--server.port", str(port)],
        cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if direct.open(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.3)
    stop_process_group(proc)
    raise MixsepError(f"The Streamlit server did not start; its output is in {log}.")


def stop_process_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def check_browser() -> None:
    if not Path(CHROMIUM).exists():
        raise MixsepError(f"{CHROMIUM} is missing, so the page cannot be watched; install it (apt-get install chromium).")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise MixsepError("Playwright for Python is missing; pip install playwright (it drives the system Chromium).") \
            from None


class Watcher:
    """The Train page (or, with blank=True, an empty tab) open in headless Chromium for one round."""

    def __init__(self, url: str, refresh: str | None = None, blank: bool = False):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = None
        try:
            self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            self.page = self.browser.new_page(viewport={"width": 1280, "height": 900})
            self.page.set_default_timeout(120_000)
            self.blank = blank
            if blank:  # what an open browser costs by itself: the floor under any page
                self.page.goto("about:blank")
                return
            self.page.goto(f"{url}/Train")
            # the live fragment has drawn once: a run's heading or the "no run yet" hint
            self.page.locator("[data-testid=stHeading], [data-testid=stAlert]").first.wait_for()
            if refresh:  # the page's "Live updates" choice, as a user would click it
                self.page.get_by_test_id("stRadio").get_by_text(refresh, exact=True).click()
        except Exception as e:  # Playwright's Error: Chromium did not start, or the page did not come
            self.close()  # no browser or Playwright driver left behind
            said = next((line.strip() for line in str(e).splitlines() if line.strip()), e.__class__.__name__)
            raise MixsepError(f"Headless Chromium could not show the Train page ({said}); nothing was measured "
                              "with it.") from None

    def points(self) -> int:
        """Points in the loss chart's last trace as plotly.js holds them (0 before the first draw)."""
        if self.blank:
            return 0
        return self.page.evaluate("""() => {
          const g = document.querySelector('.js-plotly-plot');
          const t = g && g._fullData && g._fullData[g._fullData.length - 1];
          return t && t.x ? t.x.length : 0; }""")

    def close(self) -> None:
        if self.browser is not None:
            self.browser.close()
        self._pw.stop()


# --------------------------------------------------------------------------- one training round


def seed_history(run_dir: Path, config: TrainConfig, steps: int, template: Path) -> None:
    """A run folder resumable at step ``steps``, its metrics.csv holding rows 1..steps.

    The checkpoint (weights of a fresh model) is made once in ``template`` and hard-linked:
    the trainer replaces checkpoint files atomically, so the shared copy is never written.
    """
    from mixsep.run import CHECKPOINTS, METRIC_FIELDS, epoch_checkpoint, last_checkpoint, save_checkpoint

    spe = -(-(config.train_size) // config.batch_size) if config.train_size else None
    if spe is None:
        raise MixsepError("--history needs a fixed --train-size, so the run's steps per epoch are known.")
    epoch = steps // spe
    if not (template / "last.pt").is_file():
        from mixsep.model import build_model

        template.mkdir(parents=True, exist_ok=True)
        save_checkpoint(template / "last.pt", build_model(config.model, pretrained=False), config, steps, epoch)
    (run_dir / CHECKPOINTS).mkdir(parents=True)
    os.link(template / "last.pt", last_checkpoint(run_dir))
    if steps % spe == 0:  # else the resume would write this epoch's checkpoint first
        os.link(template / "last.pt", epoch_checkpoint(run_dir, epoch))
    lines = [",".join(METRIC_FIELDS)]
    for s in range(1, steps + 1):  # a loss that falls like a real run's; its values do not matter here
        loss = 0.02 + 0.1 / (1 + s / 50)
        lines.append(f"{s},{(s - 1) // spe},{loss * 0.3:.6f},{loss * 0.7:.6f},{loss:.6f},{config.lr},"
                     f"100.0,{s * 1.28:.3f}")
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def train_round(name: str, runs_dir: Path, config: TrainConfig, warmup: int, history: int, template: Path,
                watcher_url: str | None, server_pid: int, log, refresh: str | None = None,
                blank: bool = False, env: dict | None = None) -> dict:
    """Train one run (watched or not) and time it from its own metrics; CPU seconds per process group."""
    run_dir = runs_dir / name
    if history:
        spe = -(-config.train_size // config.batch_size)  # the round trains at least its own epochs after the history
        config = TrainConfig(**{**config.to_dict(), "epochs": -(-history // spe) + config.epochs})
        seed_history(run_dir, config, history, template)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")
    watcher = Watcher(watcher_url, refresh, blank) if watcher_url else None
    child = None
    try:
        cmd = [sys.executable, "-m", "mixsep", "train", "--config", str(run_dir / "config.json"),
               "--run-dir", str(run_dir), "--quiet"]
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=open(run_dir / "bench.log", "wb"), stderr=subprocess.STDOUT,
                                 env=env)
        tail, rows, window = MetricsTail(run_dir), [], {}
        server = descendants(server_pid)
        while True:
            done = child.poll() is not None
            new = tail.poll()
            rows = [] if new.restarted else rows
            rows += [r for r in new.rows if r["step"] > history]
            now = time.monotonic()
            procs = {"trainer": {child.pid}, "server": server, "browser": browser_pids() if watcher else set()}
            cpu = {k: cpu_seconds(v) for k, v in procs.items()}
            if "start" not in window and len(rows) > warmup:
                window["start"] = (now, cpu, rows[warmup])
            if "start" in window and rows and not done:
                window["end"] = (now, cpu, rows[-1])
            if done:
                break
            time.sleep(0.25)
        if child.returncode != 0:  # the child's own sentence: its log goes with the bench's temporary folder
            said = read_status(run_dir).get("message") or (
                (run_dir / "bench.log").read_text(errors="replace").strip().splitlines() or ["no message"])[-1]
            said = said.removeprefix("error: ").rstrip(".")
            raise MixsepError(f"The training child of round {name} failed (exit {child.returncode}): {said}.")
        points = watcher.points() if watcher else None
    finally:
        if child is not None and child.poll() is None:  # interrupted: leave no trainer behind
            child.kill()
            child.wait()
        if watcher:
            watcher.close()
    if "end" not in window or window["end"][2]["step"] <= window["start"][2]["step"]:
        raise MixsepError(f"Round {name} trained too few steps to time; raise --train-size or --epochs.")
    (t0, c0, r0), (t1, c1, r1) = window["start"], window["end"]
    sps = config.batch_size * (r1["step"] - r0["step"]) / (r1["elapsed_s"] - r0["elapsed_s"])
    cores = {k: (c1[k] - c0[k]) / (t1 - t0) for k in c0}
    out = {"round": name, "watched": watcher_url is not None, "samples_per_s": sps,
           "steps_timed": r1["step"] - r0["step"], "seconds": t1 - t0, "cores": cores, "chart_points": points}
    log(f"  {name:12s} {'browser' if out['watched'] else 'none':8s} {sps:7.1f} samples/s over "
        f"{out['steps_timed']} steps ({out['seconds']:.0f} s); cores: trainer {cores['trainer']:.2f}, "
        f"server {cores['server']:.2f}, browser {cores['browser']:.2f}"
        + (f"; chart shows {points} points" if points is not None else ""))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # 100+ MB each: keep the disk free
    return out


# --------------------------------------------------------------------------- the measurement

# Student's t, two-sided 95% (the 0.975 quantile) for 1..30 degrees of freedom: a handful of
# watched rounds is too few for the normal's 1.96 (with 3 rounds the interval is 2.2 times wider)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the watched rounds' overheads and its 95% t interval.

    The rounds' overheads scatter by several hundredths on a 2-core machine; the interval says
    whether the target lies inside that scatter (nan bounds for fewer than two rounds).
    """
    n = len(values)
    mean = statistics.fmean(values) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    df, z = n - 1, 1.959964
    # past the table, the Cornish-Fisher expansion of t around the normal (exact to 1e-4 there)
    t = _T975[df - 1] if df <= len(_T975) else z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    half = t * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def verdict(low: float, high: float, target: float = 0.03) -> str:
    """What the interval says about the target, in words."""
    if math.isnan(low):
        return "one watched round gives no interval; run --rounds 2 or more"
    if high <= target:
        return f"the whole interval lies at or under the {target} target"
    if low > target:
        return f"the whole interval lies above the {target} target"
    return f"the interval holds the {target} target: these rounds cannot tell; run more rounds"



def measure(data_root: Path, *, model: str = "faithful", train_size: int = 2560, batch_size: int = 128,
            epochs: int = 1, rounds: int = 2, warmup: int = 3, history: int = 0, refresh: str | None = None,
            blank: bool = False, wait_policies: tuple[str, ...] = (), log=print) -> dict:
    """Alternating rounds A (no browser) and B (the Train page open); every figure of the comparison.

    ``wait_policies`` ("spin", "passive"): each A B pair is run once per policy in turn, the
    trainer child's OpenMP wait set as bench/contention.py sets it; the result then also holds
    each policy's medians.
    """
    check_browser()
    require_split(Path(data_root), "train")  # before a server and a trainer start, not in the first round's child
    config = TrainConfig(data_root=str(Path(data_root).resolve()), model=model, train_size=train_size,
                         batch_size=batch_size, epochs=epochs, pretrained=False, device="cpu",
                         checkpoint_every=10**9).validate()
    with tempfile.TemporaryDirectory(prefix="mixsep-dash-") as tmp:
        work = Path(tmp)
        runs_dir = work / "runs"
        runs_dir.mkdir()
        server, url = start_server(Path(data_root), runs_dir, work / "streamlit.log")
        try:
            results = []
            policies = list(wait_policies) or [None]
            cells = [(w, p) for _ in range(rounds) for p in policies for w in (False, True)] + [(False, policies[0])]
            for i, (watched, policy) in enumerate(cells):  # A B A B ... A: every watched round between unwatched ones
                name = f"r{i // 2 + 1}-{'watched' if watched else 'alone'}" + (f"-{policy}" if policy else "")
                env = child_env(policy) if policy else None
                results.append(train_round(name, runs_dir, config, warmup, history, work / "template",
                                           url if watched else None, server.pid, log, refresh, blank, env))
                results[-1]["policy"] = policy
        finally:
            stop_process_group(server)
    alone = [r["samples_per_s"] for r in results if not r["watched"]]
    watched = [r["samples_per_s"] for r in results if r["watched"]]

    def mean_cores(who, w):
        return statistics.mean(r["cores"][who] for r in results if r["watched"] == w)

    # each watched round against the mean of the rounds either side: a machine whose load drifts
    # (other jobs starting or ending) moves both alike
    overheads = [1 - b / ((a0 + a1) / 2) for b, a0, a1 in zip(watched, alone, alone[1:])]
    without, with_ = statistics.median(alone), statistics.median(watched)
    by_policy = {}
    for policy in wait_policies:
        a = statistics.median(r["samples_per_s"] for r in results if r["policy"] == policy and not r["watched"])
        b = statistics.median(r["samples_per_s"] for r in results if r["policy"] == policy and r["watched"])
        by_policy[policy] = {"sps_without": a, "sps_with": b, "overhead": 1 - b / a}
    mean, low, high = mean_interval(overheads)
    return {"overhead": statistics.median(overheads), "overheads": overheads, "sps_without": without,
            "overhead_mean": mean, "overhead_ci95": [low, high],
            "by_wait_policy": by_policy,
            "sps_with": with_, "rounds": results,
            "server_cores": mean_cores("server", True), "browser_cores": mean_cores("browser", True),
            "trainer_cores_with": mean_cores("trainer", True), "trainer_cores_without": mean_cores("trainer", False),
            "config": {"model": model, "train_size": train_size, "batch_size": batch_size, "epochs": epochs,
                       "rounds": rounds, "warmup": warmup, "history": history, "refresh": refresh or "page default",
                       "watched": "an empty tab" if blank else "the Train page"}}


def dashboard_overhead(data_root: Path, **kwargs) -> float:
    """1 - samples/s with the Train page watching / samples/s without (see measure for the keywords)."""
    return measure(data_root, **kwargs)["overhead"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=default_data_root(), help="folder with MNIST/ and CIFAR-10 (default ./data)")
    p.add_argument("--model", default="faithful", help="separator to train (default faithful)")
    p.add_argument("--train-size", type=int, default=2560, help="training pairs per round (default 2560)")
    p.add_argument("--batch-size", type=int, default=128, help="pairs per step (default 128)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per round (default 1)")
    p.add_argument("--rounds", type=int, default=2,
                   help="watched rounds, each between two unwatched ones: A B A B A (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="steps of each round left out of its timing (default 3)")
    p.add_argument("--history", type=int, default=0,
                   help="rows the run already holds when a round starts: the page shows a long run (default 0)")
    p.add_argument("--refresh", default=None,
                   help="the Train page's Live updates choice to watch with, e.g. '2 s' or Paused (default: the page's)")
    p.add_argument("--blank", action="store_true",
                   help="watched rounds open an empty tab instead: what an open browser costs by itself")
    p.add_argument("--wait-policy", action="append", choices=sorted(POLICIES), default=[],
                   help="give both (spin, passive) to alternate the trainer's OpenMP wait policy round by round "
                        "(bench/contention.py); default: mixsep's own")
    add_json_flags(p)
    return p


@one_sentence
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # a SIGTERM (timeout, a CI limit) unwinds like Ctrl-C: the server, browser and trainer are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    at_least("--rounds", args.rounds)  # none crashed after a whole unwatched round
    at_least("--warmup", args.warmup, 0, "0 or more")
    at_least("--history", args.history, 0, "0 or more")
    checked_root(args.data_root)
    json_out = json_output(args.json, args.overwrite, args.data_root)  # checked before the rounds, not after them
    print(f"{'An empty tab' if args.blank else 'Train page'} watched in headless Chromium vs no browser; "
          f"{args.model}, {args.train_size} pairs, batch {args.batch_size}, history {args.history} rows, "
          f"live updates {args.refresh or 'as the page sets'}, {args.rounds} watched rounds"
          + (f" of each wait policy ({', '.join(args.wait_policy)}), each after an unwatched one:"
             if args.wait_policy else f" between {args.rounds + 1} unwatched:"), flush=True)
    out = measure(Path(args.data_root), model=args.model, train_size=args.train_size, batch_size=args.batch_size,
                  epochs=args.epochs, rounds=args.rounds, warmup=args.warmup, history=args.history,
                  refresh=args.refresh, blank=args.blank, wait_policies=tuple(args.wait_policy),
                  log=lambda s: print(s, flush=True))
    print(f"trainer cores alone {out['trainer_cores_without']:.2f}, watched {out['trainer_cores_with']:.2f}; "
          f"overhead of each watched round against the rounds either side: "
          + ", ".join(f"{o:.3f}" for o in out["overheads"]))
    mean, (low, high) = out["overhead_mean"], out["overhead_ci95"]
    print(f"mean overhead {mean:.3f}, 95% interval {low:.3f} to {high:.3f} over {len(out['overheads'])} watched "
          f"rounds: {verdict(low, high)}")
    for policy, f in out["by_wait_policy"].items():
        print(f"wait policy {policy}: {f['sps_without']:.1f} samples/s alone, {f['sps_with']:.1f} watched, "
              f"overhead {f['overhead']:.3f}")
    print(f"dashboard: overhead={out['overhead']:.3f} sps_without={out['sps_without']:.1f} "
          f"sps_with={out['sps_with']:.1f} server_cores={out['server_cores']:.2f} "
          f"browser_cores={out['browser_cores']:.2f}")
    if json_out:  # after the figures are printed: a write that fails now loses none of them
        write_output(json_out, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
