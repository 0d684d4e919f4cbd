"""Reading run folders: listing, metrics, and names that cannot escape the runs folder."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from .config import TrainConfig
from .errors import MixsepError
from .train import METRIC_FIELDS, list_checkpoints, read_status

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def resolve_run(runs_dir: Path, name: str) -> Path:
    """The folder of run ``name`` inside runs_dir; refuses names that would leave it."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise MixsepError(f"'{name}' is not a valid run name: use letters, digits, '.', '_' and '-' only.")
    root = Path(runs_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise MixsepError(f"'{name}' points outside the runs folder {root}.")
    return path


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.csv as a frame; empty (with the right columns) when absent or half written."""
    path = Path(run_dir) / "metrics.csv"
    try:
        df = pd.read_csv(path, on_bad_lines="skip")
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=METRIC_FIELDS)
    if not set(METRIC_FIELDS) <= set(df.columns):
        return pd.DataFrame(columns=METRIC_FIELDS)
    # a row being written while we read may be cut short: coerce and drop it
    df = df[METRIC_FIELDS].apply(pd.to_numeric, errors="coerce").dropna(subset=["step", "loss"])
    return df.astype({"step": int, "epoch": int}).reset_index(drop=True)


def run_summary(run_dir: Path) -> dict:
    """One row describing a run; never raises for a damaged folder, it says so instead."""
    run_dir = Path(run_dir)
    row = {"run": run_dir.name, "path": str(run_dir), "state": "unknown", "message": "", "step": 0,
           "total_steps": 0, "model": "", "lr": None, "beta1": None, "beta2": None, "batch_size": None,
           "epochs": None, "checkpoints": len(list_checkpoints(run_dir)), "last_loss": None}
    try:
        cfg = TrainConfig.load(run_dir / "config.json")
        row.update(model=cfg.model, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, batch_size=cfg.batch_size,
                   epochs=cfg.epochs, train_size=cfg.train_size, seed=cfg.seed, pretrained=cfg.pretrained)
    except MixsepError as e:
        row["message"] = str(e)
    status = read_status(run_dir)
    row.update(state=status.get("state", "unknown"), step=status.get("step", 0),
               total_steps=status.get("total_steps", 0), updated=status.get("updated"))
    row["message"] = status.get("message") or row["message"]
    m = read_metrics(run_dir)
    if len(m):
        row["last_loss"] = float(m["loss"].iloc[-1])
        row["step"] = max(row["step"] or 0, int(m["step"].iloc[-1]))
    return row


def list_runs(runs_dir: Path) -> list[dict]:
    """Summaries of every run folder, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and (p / "config.json").exists()]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [run_summary(p) for p in folders]


# --------------------------------------------------------------------------- live runs


def pid_alive(pid) -> bool:
    """Whether a process with this pid runs on this machine (a zombie counts as gone)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, but someone else's
        return True
    try:  # Linux: an exited child nobody has reaped yet still answers kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def live_state(run_dir: Path) -> dict:
    """read_status, but a "running" run whose process is gone reads as "interrupted"."""
    status = read_status(run_dir)
    if status.get("state") == "running" and not pid_alive(status.get("pid")):
        status = dict(status, state="interrupted",
                      message="Its training process is gone (the server or machine stopped); "
                              "resume it from the Train page or start a new run.")
    return status


def live_runs(runs_dir: Path) -> list[tuple[Path, dict]]:
    """(folder, status) of every run in runs_dir whose training process still runs."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and (p / "status.json").is_file():
            status = read_status(p)
            if status.get("state") == "running" and pid_alive(status.get("pid")):
                found.append((p.resolve(), status))
    return found


def progress(metrics: pd.DataFrame, total_steps: int, window: int = 20) -> dict:
    """Step, fraction done, recent samples/s and ETA (seconds) from a run's metrics."""
    step = int(metrics["step"].iloc[-1]) if len(metrics) else 0
    total = max(int(total_steps or 0), step)
    recent = metrics.tail(window)
    # seconds per step from the wall clock, so checkpoints and logging count; a resume restarts
    # elapsed_s, hence only the positive differences
    dt = recent["elapsed_s"].diff()
    dt = dt[dt > 0]
    per_step = float(dt.median()) if len(dt) else None
    return {"step": step, "total_steps": total, "fraction": step / total if total else 0.0,
            "samples_per_s": float(recent["samples_per_s"].median()) if len(recent) else None,
            "eta_s": per_step * (total - step) if per_step is not None else None}
