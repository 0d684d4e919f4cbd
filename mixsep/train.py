"""Training: one generator that the CLI, the dashboard worker and the benchmarks consume.

A run is one folder:
  config.json            the TrainConfig, enough to reproduce the run
  metrics.csv            one row per step
  status.json            state (running/finished/stopped/failed), message, step, total_steps
  checkpoints/last.pt    model + optimiser + progress, for resume (rewritten atomically)
  checkpoints/epoch-E.pt model + config after each epoch
  STOP                   written by anyone who wants the run to stop after its current step
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TrainConfig
from .data import PairData, load_pairs, to_float
from .errors import MixsepError
from .model import MODELS, build_model

CHECKPOINT_VERSION = 1
LOG_MSE_FLOOR = 1e-5  # added to per-image MSEs under config.loss = "log_mse"; 1e-5 is 50 dB PSNR
METRIC_FIELDS = ["step", "epoch", "loss_mnist", "loss_cifar", "loss", "lr", "samples_per_s", "elapsed_s"]


@dataclass
class StepResult:
    step: int             # 1-based global step
    epoch: int            # 0-based epoch
    loss_mnist: float     # MSE of the MNIST head on this batch
    loss_cifar: float     # MSE of the CIFAR head on this batch
    loss: float           # their sum (with config.loss = "log_mse" the optimiser sees per-image log MSEs instead)
    lr: float
    samples_per_s: float  # this step's throughput, data gather included
    elapsed_s: float      # wall time since this (possibly resumed) process started training
    total_steps: int


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MixsepError("CUDA was requested but no GPU is visible to PyTorch; use --device cpu or auto.")
    return torch.device(name)


# --------------------------------------------------------------------------- run folders


def new_run_dir(runs_dir: Path, config: TrainConfig) -> Path:
    """A fresh folder named by time and model; never reuses an existing one."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S") + f"-{config.model}"
    for i in range(1000):
        path = runs_dir / (stem if i == 0 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise MixsepError(f"Could not create a new run folder in {runs_dir}.")


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(obj, f, indent=2)
    os.replace(f.name, path)


def write_status(run_dir: Path, state: str, message: str = "", **extra) -> None:
    write_json_atomic(Path(run_dir) / "status.json",
                      {"state": state, "message": message, "updated": time.time(), "pid": os.getpid(), **extra})


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {"state": "unknown", "message": "status.json is missing or half written"}


def request_stop(run_dir: Path) -> None:
    (Path(run_dir) / "STOP").touch()


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: nn.Module, config: TrainConfig, step: int, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"version": CHECKPOINT_VERSION, "config": config.to_dict(), "step": step, "epoch": epoch,
             "model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        torch.save(state, f)
    os.replace(f.name, path)


def read_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise MixsepError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise MixsepError(f"{path} is not a readable mixsep checkpoint ({e.__class__.__name__}); "
                          "it may be truncated or corrupt. Pick another checkpoint or retrain.") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise MixsepError(f"{path} is a PyTorch file but not a mixsep checkpoint (no model/config inside).")
    return state


def load_model_state(model: nn.Module, state_dict: dict, path: Path, name: str) -> None:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)[:200]
        raise MixsepError(f"{path} does not fit the '{name}' architecture ({first}); "
                          "it was saved by another model or another version of mixsep.") from None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Newest first: last.pt, then epoch checkpoints from the latest."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    last = [folder / "last.pt"] if (folder / "last.pt").is_file() else []
    epochs = sorted(folder.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit() else -1, reverse=True)
    return last + epochs


def load_run_model(run_dir: Path, checkpoint: Path | None = None, device="cpu") -> tuple[nn.Module, TrainConfig, dict]:
    """(model in eval mode, its config, checkpoint info) from a run folder or a checkpoint file."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MixsepError(f"Run folder {run_dir} does not exist; `python -m mixsep train` prints the folder it made.")
    if run_dir.is_file():
        checkpoint, run_dir = run_dir, run_dir.parent.parent
    if checkpoint is None:
        found = list_checkpoints(run_dir)
        if not found:
            raise MixsepError(f"{run_dir} holds no checkpoint yet; train it first (or wait for its first checkpoint).")
        checkpoint = found[0]
    state = read_checkpoint(checkpoint)
    config = TrainConfig.from_dict(state["config"])
    if config.model not in MODELS:
        raise MixsepError(f"{checkpoint} was saved by model '{config.model}', which this version of mixsep does not know.")
    model = build_model(config.model, pretrained=False)  # the checkpoint holds all the weights
    load_model_state(model, state["model"], checkpoint, config.model)
    model.to(device).eval()
    return model, config, {"path": str(checkpoint), "step": state.get("step", 0), "epoch": state.get("epoch", 0)}


# --------------------------------------------------------------------------- training


def lr_at(config: TrainConfig, step: int, total: int) -> float:
    """Learning rate for a 0-based step: constant, or one-cycle (5% linear warm-up, cosine to 0)."""
    if config.schedule == "constant":
        return config.lr
    warm = max(1, int(0.05 * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


class Training:
    """Owns the model, optimiser, data and run folder; ``steps()`` is the generator.

    The benchmarks use the object to reach the model mid-run; everyone else calls
    ``train_steps``.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, data: PairData | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self.config = config.validate()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(config.device)
        torch.manual_seed(config.seed)
        self.data = data if data is not None else load_pairs(
            Path(config.data_root), "train", size=config.train_size, repair=config.repair, seed=config.seed)
        if config.batch_size > len(self.data):
            raise MixsepError(f"Batch size {config.batch_size} is larger than the {len(self.data)} training pairs; lower it.")
        self.data.to(self.device)
        self.steps_per_epoch = self.data.steps_per_epoch(config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.model = build_model(config.model, config.pretrained).to(self.device)  # channels_last, see build_model
        cuda = self.device.type == "cuda"
        # fused Adam is one kernel for all parameters on the GPU; the CPU keeps the default for exact results
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                          weight_decay=config.weight_decay, fused=True if cuda else None)
        # Reading a loss waits for its step. On the GPU each step's loss is read one step
        # late, after the next step is queued, so the GPU never idles while the host waits.
        self.read_late = cuda
        self.should_stop = should_stop or (lambda: False)
        self.step = 0
        self._resume()

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def _resume(self) -> None:
        saved = self.run_dir / "config.json"
        if self.last_path.is_file():
            state = read_checkpoint(self.last_path, map_location=self.device)
            old = TrainConfig.from_dict(state["config"])
            if old.model != self.config.model:
                raise MixsepError(f"{self.run_dir} holds a '{old.model}' run; it cannot resume as '{self.config.model}'.")
            load_model_state(self.model, state["model"], self.last_path, old.model)
            if "optimizer" in state:
                self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            self._truncate_metrics(self.step)
        if not saved.exists():
            self.config.save(saved)

    def _truncate_metrics(self, step: int) -> None:
        """Drop rows logged after the checkpoint we resume from: they will be redone."""
        path = self.run_dir / "metrics.csv"
        if not path.is_file():
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def checkpoint(self, epoch: int) -> None:
        save_checkpoint(self.last_path, self.model, self.config, self.step, epoch, self.optimizer)

    def train_step(self, mnist_u8, cifar_u8, lr: float) -> torch.Tensor:
        """One Adam step on the summed loss of the two sources; returns the detached (mnist, cifar) MSEs."""
        mnist, cifar, mean = to_float(mnist_u8, cifar_u8)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        use_amp = self.config.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            mnist_hat, cifar_hat = self.model(mean)
        if self.config.loss == "log_mse":
            err_m = (mnist_hat.float() - mnist).pow(2).mean((1, 2, 3))  # (B,) per-image MSE
            err_c = (cifar_hat.float() - cifar).pow(2).mean((1, 2, 3))
            # mean PSNR averages -10 log10(MSE) over images: a batch MSE lets a few hard images
            # dominate, the log weighs every image alike; LOG_MSE_FLOOR caps the reward at 50 dB
            objective = torch.log(err_m + LOG_MSE_FLOOR).mean() + torch.log(err_c + LOG_MSE_FLOOR).mean()
            loss_mnist, loss_cifar = err_m.mean(), err_c.mean()
        else:
            loss_mnist = F.mse_loss(mnist_hat.float(), mnist)
            loss_cifar = F.mse_loss(cifar_hat.float(), cifar)
            objective = loss_mnist + loss_cifar
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        return torch.stack([loss_mnist.detach(), loss_cifar.detach()])

    def _resolve(self, step: int, epoch: int, lr: float, losses: torch.Tensor, since: float,
                 start: float, last_good: int) -> StepResult:
        """Read one step's losses (the host sync), refuse non-finite ones, make its result."""
        loss_m, loss_c = losses.tolist()
        if not (math.isfinite(loss_m) and math.isfinite(loss_c)):
            msg = (f"The loss became non-finite at step {step} (lr={lr:g}); training stopped. "
                   f"The last good checkpoint (step {last_good}) is kept. Lower the learning rate and start again.")
            write_status(self.run_dir, "failed", msg, step=last_good, total_steps=self.total_steps)
            raise MixsepError(msg)
        now = time.perf_counter()
        return StepResult(step, epoch, loss_m, loss_c, loss_m + loss_c, lr,
                          self.config.batch_size / max(now - since, 1e-9), now - start, self.total_steps)

    def steps(self) -> Iterator[StepResult]:
        cfg, spe = self.config, self.steps_per_epoch
        metrics_path = self.run_dir / "metrics.csv"
        new_file = not metrics_path.exists()
        (self.run_dir / "STOP").unlink(missing_ok=True)
        write_status(self.run_dir, "running", step=self.step, total_steps=self.total_steps)
        self.model.train()
        start = time.perf_counter()
        last_good = self.step
        pending: list[tuple] = []  # (step, epoch, lr, losses, launched) of steps whose losses are not read yet
        last_read = start
        with open(metrics_path, "a", newline="") as f:
            writer = csv.DictWriter(f, METRIC_FIELDS)
            if new_file:
                writer.writeheader()
            epoch = self.step // spe
            while self.step < self.total_steps:
                skip = self.step - epoch * spe  # resume mid-epoch: the order is a function of (seed, epoch)
                for b, (m_u8, c_u8) in enumerate(self.data.batches(epoch, cfg.batch_size)):
                    if b < skip:
                        continue
                    launched = time.perf_counter()
                    lr = lr_at(cfg, self.step, self.total_steps)
                    losses = self.train_step(m_u8, c_u8, lr)
                    self.step += 1
                    pending.append((self.step, epoch, lr, losses, launched))
                    # a checkpoint must hold only steps whose losses were seen to be finite
                    boundary = self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps or b == spe - 1
                    stop = False
                    while pending and (len(pending) > 1 or boundary or not self.read_late or stop):
                        step, ep, step_lr, losses, launched = pending.pop(0)
                        # read late, a step is timed from the previous read: the steady-state throughput
                        r = self._resolve(step, ep, step_lr, losses, max(launched, last_read), start, last_good)
                        last_read = time.perf_counter()
                        writer.writerow({k: v for k, v in asdict(r).items() if k in METRIC_FIELDS})
                        f.flush()
                        yield r
                        over_time = cfg.max_minutes > 0 and time.perf_counter() - start > cfg.max_minutes * 60
                        stop = self.should_stop() or (self.run_dir / "STOP").exists() or over_time
                    if boundary or stop:
                        self.checkpoint(epoch)
                        last_good = self.step
                        write_status(self.run_dir, "running", step=self.step, total_steps=self.total_steps)
                    if stop:
                        why = "time budget reached" if over_time and not self.should_stop() else "stopped by request"
                        write_status(self.run_dir, "stopped" if not over_time else "finished", why,
                                     step=self.step, total_steps=self.total_steps)
                        (self.run_dir / "STOP").unlink(missing_ok=True)
                        return
                save_checkpoint(self.run_dir / "checkpoints" / f"epoch-{epoch + 1}.pt", self.model, cfg, self.step, epoch + 1)
                epoch += 1
        write_status(self.run_dir, "finished", step=self.step, total_steps=self.total_steps)


def train_steps(config: TrainConfig, run_dir: Path, **kwargs) -> Iterator[StepResult]:
    """Train ``config`` into ``run_dir`` (resuming if it holds a checkpoint), yielding each step."""
    return Training(config, run_dir, **kwargs).steps()
