"""Reading run folders for people: listing, summaries and metrics frames (through mixsep.run)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import TrainConfig
from .errors import MixsepError
from .run import (METRICS, TAIL_LIMIT, State, disk_usage, last_metric_row, list_checkpoints, open_regular,
                  read_metric_frame, read_status, run_folders, trainer_alive)


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.csv's rows as a frame (run.metric_frame's rule: a row that cannot be a step is skipped); empty, with
    the right columns, when absent, half written or not a regular file."""
    return read_metric_frame(Path(run_dir) / METRICS)


def run_summary(run_dir: Path, name: str | None = None) -> dict:
    """One row describing a run; never raises for a damaged folder, it says so instead."""
    run_dir = Path(run_dir)
    row = {"run": name or run_dir.name, "path": str(run_dir), "state": "unknown", "message": "", "step": 0,
           "total_steps": 0, "model": "", "lr": None, "beta1": None, "beta2": None, "batch_size": None,
           "epochs": None, "checkpoints": len(list_checkpoints(run_dir)), "last_loss": None}
    try:
        cfg = TrainConfig.load(run_dir / "config.json", of_run=True)
        row.update(model=cfg.model, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, batch_size=cfg.batch_size,
                   epochs=cfg.epochs, train_size=cfg.train_size, seed=cfg.seed, pretrained=cfg.pretrained,
                   cpu_bf16=cfg.cpu_bf16)
    except MixsepError as e:
        row["message"] = getattr(e, "fact", str(e))  # a page's note: no command-line advice
    status = read_status(run_dir)
    saved = status.get("step")  # the trainer writes its newest checkpoint's step with each one: where a resume starts
    row["saved_step"] = saved if type(saved) is int and saved >= 0 else None
    row.update(state=status.get("state", "unknown"), step=status.get("step", 0),
               total_steps=status.get("total_steps", 0), updated=status.get("updated"),
               # what loaded (None: a run from before mixsep recorded it, or one not started yet)
               pretrained_loaded=status.get("pretrained_loaded"), disk_mb=disk_usage(run_dir) / 1e6)
    row["message"] = "; ".join(filter(None, [status.get("message"), row["message"]]))  # a stopped run's bad config too
    last = last_metric_row(run_dir)  # its end only: every page lists every run on every rerun
    if last is not None:
        row["last_loss"] = float(last["loss"])
        row["step"] = max(row["step"] or 0, int(last["step"]))
    else:  # no row to show: say why the run has no curve, if it is not just young
        row["message"] = "; ".join(filter(None, [row["message"], no_rows_note(run_dir / METRICS)]))
    return row


def no_rows_note(path: Path) -> str:
    """Why metrics.csv gives no row, when the reason is not that none was written yet."""
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, say)"
        return f"metrics.csv is {kind}, so its rows are not read"
    if not _lines_past_header(path):
        return ""
    try:  # the run list reads a long file's end only: rows before it may be fine (the Metrics page reads them all)
        if path.stat().st_size > TAIL_LIMIT:
            return f"metrics.csv's last {TAIL_LIMIT >> 20} MB hold no readable row"
    except OSError:
        pass
    return "metrics.csv holds no readable row"


def _lines_past_header(path: Path) -> bool:
    try:
        with open_regular(path) as f:
            return len(f.read(65536).strip().splitlines()) > 1
    except OSError:
        return False


def list_runs(runs_dir: Path) -> list[dict]:
    """Summaries of every run folder (and of runs one group deep, e.g. a sweep's trials), newest first."""
    root = Path(runs_dir)
    return [run_summary(p, p.relative_to(root).as_posix()) for p in run_folders(root)]


# --------------------------------------------------------------------------- live runs


def live_runs(runs_dir: Path) -> list[tuple[Path, dict]]:
    """(folder, status) of every run in runs_dir whose trainer is alive (pid and start time match)."""
    found = []
    for p in run_folders(runs_dir):
        status = read_status(p)
        if status.get("state") == State.RUNNING and trainer_alive(p, status):
            found.append((p.resolve(), status))
    return found


def progress(metrics: pd.DataFrame, total_steps: int, window: int = 20, taken: int = 0, seconds: float = 10.0) -> dict:
    """Step, fraction done, recent samples/s and ETA (seconds) from a run's metrics; ``taken``: the steps its
    status.json counts, so a metrics.csv cut short does not read as a run back at step 0.

    Recent: the last ``window`` rows, or more where they are fewer than the last ``seconds`` of training. A small
    model logs a row every 8 ms, so 20 rows were 0.15 s and one slow moment of the machine swung both figures 3 to
    4 times between refreshes (2,293 samples/s and ETA 4m 54s, then 820 and 12m 02s: QA)."""
    step = max(int(metrics["step"].iloc[-1]) if len(metrics) else 0, int(taken or 0))
    total = max(int(total_steps or 0), step)
    tail = metrics["elapsed_s"].tail(20_000).to_numpy(dtype=float)  # 10 s of the fastest run (2 ms a row), at most
    since = len(tail) - 1 - np.flatnonzero(np.diff(tail) < 0)[-1:]  # rows since a resume restarted elapsed_s
    later = tail[len(tail) - int(since[0]) if len(since) else 0:]
    recent = metrics.tail(max(window, int(np.sum(later >= later[-1] - seconds)) if len(later) else 0))
    # seconds per step from the wall clock, so checkpoints and logging count; a resume restarts
    # elapsed_s, hence only the positive differences
    dt = recent["elapsed_s"].diff()
    dt = dt[dt > 0]
    per_step = float(dt.median()) if len(dt) else None
    return {"step": step, "total_steps": total, "fraction": step / total if total else 0.0,
            "samples_per_s": float(recent["samples_per_s"].median()) if len(recent) else None,
            "eta_s": per_step * (total - step) if per_step is not None else None}


def display_rows(values, keep: int = 500, cap: int = 1500) -> np.ndarray:
    """The rows of one curve to draw, at most ``cap`` of them, in order; the file keeps every row.

    The first row and the last ``keep`` are all shown; the rows between are cut into buckets, and each bucket's
    lowest and highest rows are shown, as written (whole steps; an EMA computed before this is exact there). So a
    pixel's column of the chart spans what the rows it stands for span, sampled or not: one row in 64 (a bucket's
    middle row) drew the faint raw trace of a 64,000-step run calm, and its last ``keep`` rows, 50 to a pixel, as a
    burst of noise at the end, as if training had turned unstable there (QA); averaged buckets did it too. Buckets
    are a power of two in size and aligned to fixed row numbers, so a growing run re-buckets only when the size
    doubles and a live chart does not shimmer between polls.
    """
    y = np.asarray(values, dtype=float)
    n = len(y)
    if n <= cap:
        return np.arange(n)
    old = y[1:n - keep]
    size = 1 << max(0, int(np.ceil(np.log2(len(old) / max(1, (cap - keep - 1) // 2)))))
    pad = -len(old) % size  # the last bucket, part full, padded with rows that are never the lowest nor the highest
    low = np.concatenate([np.where(np.isnan(old), np.inf, old), np.full(pad, np.inf)]).reshape(-1, size)
    high = np.concatenate([np.where(np.isnan(old), -np.inf, old), np.full(pad, -np.inf)]).reshape(-1, size)
    starts = np.arange(0, len(old), size)
    picked = np.concatenate([starts + low.argmin(axis=1), starts + high.argmax(axis=1)])
    picked = np.minimum(picked, len(old) - 1)  # a bucket of NaN alone: its first row
    return np.concatenate([[0], np.unique(picked) + 1, np.arange(n - keep, n)])


def downsample(metrics: pd.DataFrame, by: str, keep: int = 500, cap: int = 1500) -> pd.DataFrame:
    """At most ``cap`` rows of a metrics frame for display, the rows ``display_rows`` picks for its column ``by``."""
    return metrics.iloc[display_rows(metrics[by].to_numpy(), keep, cap)].reset_index(drop=True)
