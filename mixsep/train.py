"""Training: one generator that the CLI, the dashboard worker and the benchmarks consume.

The run folder it writes (layout, states, lock, atomic writes) belongs to mixsep.run;
this module keeps the loop: one Adam step, the late-read queue of losses, the epochs.
"""
from __future__ import annotations

import logging
import math
import re
import shlex
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TrainConfig
from .data import PairData, load_pairs, to_float
from .errors import MixsepError, ResumeRefused, unreachable
from .model import MODELS, build_model
from .run import (CHECKPOINTS, CONFIG, NewerCheckpoint, Run, RunWriteError, State, UnreadableCheckpoint, clear_stop,
                  epoch_checkpoint, last_checkpoint, list_checkpoints, live_status, newest_readable, prune_epoch_checkpoints,
                  read_checkpoint, read_status, save_checkpoint, stop_requested, write_json)
from .run import new_run_dir as _new_folder

LOG_MSE_FLOOR = 1e-5  # added to per-image MSEs under config.loss = "log_mse"; 1e-5 is 50 dB PSNR
GRAPH_WARMUP = 3  # eager steps before a CUDA graph records one (config.cuda_graphs): PyTorch's recipe warms up on a side stream


def new_run_dir(runs_dir: Path, config: TrainConfig) -> Path:
    """A fresh run folder named by time and model."""
    return _new_folder(Path(runs_dir), time.strftime("%Y%m%d-%H%M%S") + f"-{config.model}")


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


# --------------------------------------------------------------------------- checkpoints


def load_model_state(model: nn.Module, state_dict: dict, path: Path, name: str, saved_by: str | None = None) -> None:
    """The checkpoint's weights into ``model``, or one sentence: weights of another architecture, weights that are
    not real floating-point numbers where the model's are (load_state_dict casts integers silently and drops a
    complex number's imaginary part with a warning), or weights that are not finite (a run that diverged before it
    was saved: its outputs would be black images, said nowhere)."""
    wrong = weights_wrong(model.state_dict(), state_dict)
    if wrong:
        raise MixsepError(f"{path} holds {wrong}; pick another checkpoint or retrain.")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        first = first if len(first) <= 200 else first[:197] + "..."  # torch lists every missing key
        why = (f"it holds the weights of a '{saved_by}' model, as its config says" if saved_by and saved_by != name
               else "it was saved by another model or another version of mixsep")  # --as-model names another
        raise MixsepError(f"{path} does not fit the '{name}' architecture ({first}); {why}.") from None


def weights_wrong(own: dict, state_dict: dict) -> str:
    """Why a checkpoint's weights cannot go into a model whose state dict is ``own`` (on any device, meta too), in a
    clause ("weights that are not finite (...)"), or ''."""
    for key, value in state_dict.items():
        mine = own.get(key)
        if mine is None or not mine.is_floating_point() or not torch.is_tensor(value):
            continue
        if value.is_complex() or not value.is_floating_point():
            return f"weights that are not real floating-point numbers ({key} is {str(value.dtype).replace('torch.', '')})"
        if value.device.type != "meta" and not torch.isfinite(value).all():
            return f"weights that are not finite ({key} has NaN or infinite values), as a run that diverged leaves them"
    return ""


def _without_advice(e: Exception) -> str:
    """A checkpoint error without its closing advice, for a sentence that gives better advice."""
    return re.sub(r"[;.] [Pp]ick another checkpoint or retrain\.$", "", str(e)).rstrip(".")


def _cannot_resume(run_dir: Path, why: str) -> UnreadableCheckpoint:
    other = newest_readable(run_dir, last_checkpoint(run_dir))
    return UnreadableCheckpoint(f"{why}, so the run cannot resume and is left as it was"
                                + (f"; {other}: evaluate --checkpoint and the Metrics page score it, and copying it "
                                   f"over {last_checkpoint(run_dir)} resumes the run from there (with a fresh "
                                   "optimizer state)." if other else "."))


def check_fits(run_dir: Path, state: dict, model: str, built: nn.Module | None = None) -> None:
    """Refuse (as a damaged last.pt) a resume point of another model, or whose weights do not fit ``model``.
    ``built``: the model already made (a trainer's); else it is built on the meta device, so asking costs no
    memory and no time (the dashboard asks before a Resume)."""
    last = last_checkpoint(run_dir)
    if state["config"].get("model") != model:
        raise _cannot_resume(run_dir, f"{last} holds a '{state['config'].get('model')}' model, not the run's '{model}'")
    if built is None:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = build_model(model, pretrained=False)
    shapes = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    if {k: tuple(v.shape) for k, v in state["model"].items()} != shapes:
        raise _cannot_resume(run_dir, f"{last} does not fit the '{model}' architecture (its weights' names or "
                                      "shapes differ)")
    wrong = weights_wrong(built.state_dict(), state["model"])
    if wrong:
        raise _cannot_resume(run_dir, f"{last} holds {wrong}")
    if not _moments_fit(state.get("optimizer"), [tuple(p.shape) for p in built.parameters()]):
        raise _cannot_resume(run_dir, f"{last}'s optimizer state does not fit the '{model}' model (Adam's running "
                                      "moments are not of their weights' shapes)")


def _moments_fit(optimizer: object, shapes: list[tuple]) -> bool:
    """Adam's running moments have their parameter's shape (the state's keys index ``model.parameters()``):
    load_state_dict takes any tensors, and a crafted or damaged state failed the run at its first step."""
    if optimizer is None:  # a checkpoint without one resumes with a fresh optimizer
        return True
    try:
        for index, moments in optimizer["state"].items():
            if type(index) is not int or not 0 <= index < len(shapes):  # -1 would read the last weight's shape
                return False
            for key in ("exp_avg", "exp_avg_sq"):
                if key in moments and (not torch.is_tensor(moments[key]) or tuple(moments[key].shape) != shapes[index]):
                    return False
    except (TypeError, KeyError, IndexError, AttributeError):
        return False
    return True


# The last.pt a resume read, and the file it was: the CLI reads it before it writes anything, and the run reads it
# again as it starts (a faithful run's is 139 MB). Kept only while the file is the same one, unchanged.
_resume_read: list = [None, None]


def _file_identity(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def forget_resume_point() -> None:
    _resume_read[:] = [None, None]


def read_resume_point(run_dir: Path, map_location="cpu", peek: bool = False) -> dict | None:
    """The run's last.pt, which a resume continues from (None: the run has no checkpoint yet, and starts at
    step 0). Refused before anything is written, naming the newest checkpoint that still reads: a damaged
    last.pt, one that is not a file, or none beside epoch checkpoints (a resume would train the run again from
    step 0, over its metrics). The CLI and the dashboard ask before they change or start anything.

    ``peek``: the dashboard's look before its child resumes: the tensors are mapped, not read, and nothing is
    kept (the server lives on, and the child reads the file whole)."""
    last = last_checkpoint(run_dir)
    if last.is_file():
        try:
            if peek:
                try:
                    return read_checkpoint(last, map_location=map_location, mmap=True)
                except UnreadableCheckpoint:  # torch maps only its zip format: an old torch.save's is read whole,
                    return read_checkpoint(last, map_location=map_location)  # as the child will, or refused
            seen = _file_identity(last)
            if _resume_read[0] == seen:  # read moments ago, and unchanged since
                return _resume_read[1]
            state = read_checkpoint(last, map_location=map_location)
            _resume_read[:] = [seen, state]
            return state
        except NewerCheckpoint as e:  # a good file: no advice to copy an older checkpoint over it
            raise ResumeRefused(f"{e.what}, so the run cannot resume here and is left as it was; {e.upgrade} to "
                                "resume it.") from None
        except UnreadableCheckpoint as e:
            raise _cannot_resume(run_dir, _without_advice(e)) from None
    if last.exists() or last.is_symlink():  # a FIFO, a folder, a dangling link
        raise _cannot_resume(run_dir, f"{last} is not a checkpoint file")
    if any(p != last for p in list_checkpoints(run_dir)):  # last.pt is written first: it was removed
        raise _cannot_resume(run_dir, f"{last} is missing, though the run holds epoch checkpoints (a resume would "
                                      "train it again from step 0, over its metrics)")
    return None


def require_run_path(run_dir: Path) -> Path:
    """A run folder or checkpoint path that exists (commands check it before their other arguments)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        why = unreachable(run_dir)  # a link that leads back to itself is not "missing"
        if why:
            raise MixsepError(f"{run_dir} {why}; name a run folder (or a checkpoint file inside one).")
        raise MixsepError(f"Run folder {run_dir} does not exist; `python -m mixsep train` prints the folder it made.")
    return run_dir


def load_run_model(run_dir: Path, checkpoint: Path | None = None, device="cpu",
                   as_model: str | None = None) -> tuple[nn.Module, TrainConfig, dict]:
    """(model in eval mode, its config, checkpoint info) from a run folder or a checkpoint file.

    ``as_model`` builds another model that holds the same weights (a ``unet_fraction`` run
    scored as ``unet_digit``, say); weights that do not fit it are refused.
    """
    run_dir = require_run_path(run_dir)
    if run_dir.is_file():
        checkpoint, run_dir = run_dir, run_dir.parent.parent
    elif run_dir.name == CHECKPOINTS and (run_dir.parent / CONFIG).exists():  # RUN/checkpoints: the run it belongs to
        run_dir = run_dir.parent
    if checkpoint is None:
        found = list_checkpoints(run_dir)
        if not found and not (run_dir / CONFIG).is_file():
            raise MixsepError(f"{run_dir} is not a mixsep run folder (no {CONFIG}); give the folder "
                              "`python -m mixsep train` made, or a checkpoint file.")
        last = last_checkpoint(run_dir)
        if not found and (last.exists() or last.is_symlink()):  # a FIFO, a device, a folder, a dangling link
            raise MixsepError(f"{last} is not a checkpoint file (a FIFO, a device, a folder or a link to nothing); "
                              "move it away.")
        if not found:
            if live_status(run_dir).get("state") == State.RUNNING:
                raise MixsepError(f"{run_dir} holds no checkpoint yet; wait for its first (it is training).")
            raise MixsepError(f"{run_dir} holds no checkpoint: its checkpoints were removed, or never written "
                              f"(the run ended before its first); `python -m mixsep train --run-dir {shlex.quote(str(run_dir))}` "
                              "trains it from step 0, "
                              "or pick another run.")
        checkpoint = found[0]
        try:
            state = read_checkpoint(checkpoint)
        except UnreadableCheckpoint as e:  # a damaged last.pt: say which checkpoint still reads
            other = newest_readable(run_dir, checkpoint)
            raise UnreadableCheckpoint(f"{_without_advice(e)}; {other}, which --checkpoint reads." if other
                                       else str(e)) from None
    else:
        state = read_checkpoint(checkpoint)
    config = TrainConfig.from_dict(state["config"], saved=True)
    if config.model not in MODELS:
        raise MixsepError(f"{checkpoint} was saved by model '{config.model}', which this version of mixsep does not know.")
    name = as_model or config.model
    model = build_model(name, pretrained=False)  # the checkpoint holds all the weights
    load_model_state(model, state["model"], checkpoint, name, config.model)
    model.to(device).eval()
    return model, config, {"path": str(checkpoint), "step": state.get("step", 0), "epoch": state.get("epoch", 0),
                           "trained_s": _seconds(state.get("trained_s")) or None}  # None: not kept (older mixsep)


# --------------------------------------------------------------------------- training


def _seconds(value) -> float:
    """A checkpoint's ``trained_s`` as seconds, 0 for one that is missing or not a finite, positive number (a
    checkpoint from before mixsep kept it, or edited by hand: 10**400 overflowed a float)."""
    try:
        seconds = float(value) if type(value) in (int, float) else 0.0
    except OverflowError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def lr_at(config: TrainConfig, step: int, total: int) -> float:
    """Learning rate for a 0-based step: constant, or one-cycle (5% linear warm-up, cosine to 0)."""
    if config.schedule == "constant":
        return config.lr
    warm = max(1, int(0.05 * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))



@dataclass
class _Pending:
    """A step whose losses are still on the device."""

    step: int
    epoch: int
    lr: float
    losses: torch.Tensor
    launched: float


class Training:
    """Owns the model, optimiser and data of a run; ``steps()`` is the generator.

    The run folder is opened (locked) here, so a second trainer on the same folder is
    refused before any data is loaded. The benchmarks use the object to reach the model
    mid-run; everyone else calls ``train_steps``.
    """

    def __init__(self, config: TrainConfig, run_dir: Path | Run, data: PairData | None = None,
                 should_stop: Callable[[], bool | str] | None = None):
        self.run = run_dir if isinstance(run_dir, Run) else Run(Path(run_dir))
        self._owns_run = not self.run.lock.held
        if self._owns_run:
            self.run.open()
        try:
            self._setup(config, data, should_stop)
        except BaseException:
            if self._owns_run:
                self.run.close()
            raise

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def last_path(self) -> Path:
        return last_checkpoint(self.run_dir)

    def _setup(self, config, data, should_stop) -> None:
        self.config = config.validate()
        self.device = pick_device(config.device)
        torch.manual_seed(config.seed)
        self.data = data if data is not None else load_pairs(
            Path(config.data_root), "train", size=config.train_size, repair=config.repair, seed=config.seed)
        if config.batch_size > len(self.data):
            raise MixsepError(f"Batch size {config.batch_size} is larger than the {len(self.data)} training pairs; lower it.")
        self.data.to(self.device)
        self.steps_per_epoch = self.data.steps_per_epoch(config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        # A resume takes every weight from its checkpoint: ImageNet's are not fetched again (a minute's wait
        # offline, and a warning that the encoder starts from random weights, which it does not), and what the
        # run's first start loaded stays said (a download that worked now once turned it True for a run that
        # had trained from random weights; Compare shows it)
        resuming = last_checkpoint(self.run_dir).is_file()
        with warnings.catch_warnings(record=True) as caught:  # e.g. no ImageNet weights: recorded in status.json
            warnings.simplefilter("always")
            self.model = build_model(config.model, config.pretrained and not resuming).to(self.device)  # channels_last
        self.run.warnings = list(dict.fromkeys(str(w.message) for w in caught))
        # what loaded, not what was asked for
        loaded = read_status(self.run_dir).get("pretrained_loaded") if resuming else \
            any(getattr(m, "pretrained_loaded", False) for m in self.model.modules())
        if isinstance(loaded, bool):  # a run's status.json from before this was recorded: not known, not said
            self.run.facts["pretrained_loaded"] = loaded
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        cuda = self.device.type == "cuda"
        # fused Adam is one kernel for all parameters on the GPU; the CPU keeps the default for exact results
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                          weight_decay=config.weight_decay, fused=True if cuda else None)
        # Reading a loss waits for its step. On the GPU each step's loss is read one step
        # late, after the next step is queued, so the GPU never idles while the host waits.
        self.read_late = cuda
        # torch.compile wraps the same modules (the checkpoints, evaluation and validation use self.model): the
        # first training step compiles, and a compile that fails there falls back to eager (_compiled_step)
        self._forward = torch.compile(self.model) if config.compile else self.model
        self._compiling = config.compile
        # On CUDA the step's forward and backward are recorded once as a CUDA graph and replayed (_graphed_step):
        # a U-Net's step is hundreds of small kernels, and launching them is what bounds it there
        self._graphs = cuda and config.cuda_graphs and not config.compile
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_io: tuple = ()  # the recorded step's inputs (uint8 batches) and its (mnist, cifar) losses
        self._warm_steps = 0
        self.should_stop = should_stop or (lambda: False)
        self.step = 0
        # seconds trained before this process, as its checkpoint says (0 for checkpoints made before mixsep kept
        # them): max_minutes budgets the run's whole training, so a stopped or killed run, a sweep's trial above
        # all, does not get the full budget again on each resume
        self.trained_before = 0.0
        self._resume()
        self.last_good = self.step  # the step of the newest checkpoint on disk

    def _resume(self) -> None:
        state = read_resume_point(self.run_dir, self.device)
        forget_resume_point()  # the run holds its weights now: 139 MB of a faithful checkpoint need not stay
        if state is not None:  # what does not fit the run is refused as a damaged last.pt: the run stays as it was
            old = TrainConfig.from_dict(state["config"], saved=True)
            check_fits(self.run_dir, state, self.config.model, self.model)
            total = read_status(self.run_dir).get("total_steps")
            if type(total) is int and total > 0 and total != self.total_steps and int(state["step"]) > 0:
                raise ResumeRefused(  # --data-root on a resume names a folder with other data
                    f"{self.run_dir} trained {total:,} steps in all on its data, and the data under "
                    f"{self.config.data_root} make {self.total_steps:,} ({len(self.data):,} pairs, "
                    f"{self.steps_per_epoch:,} steps an epoch), so the run cannot resume on them and is left as "
                    "it was; resume it with --data-root naming the data it trained on.")
            try:
                load_model_state(self.model, state["model"], self.last_path, old.model)
                if "optimizer" in state:
                    self.optimizer.load_state_dict(state["optimizer"])
            except (MixsepError, ValueError, KeyError, RuntimeError) as e:
                why = _without_advice(e) if isinstance(e, MixsepError) else \
                    f"{self.last_path}'s optimizer state does not fit the '{old.model}' model ({e.__class__.__name__})"
                raise _cannot_resume(self.run_dir, why.split("; it was saved by")[0]) from None
            self.step = int(state["step"])
            self.trained_before = _seconds(state.get("trained_s"))
        if not (self.run_dir / CONFIG).exists():
            write_json(self.run_dir / CONFIG, self.config.to_dict())

    # ------------------------------------------------------------------ one step

    def train_step(self, mnist_u8, cifar_u8, lr: float) -> torch.Tensor:
        """One Adam step on the summed loss of the two sources; returns the detached (mnist, cifar) MSEs."""
        if self._compiling:
            return self._compiled_step(mnist_u8, cifar_u8, lr)
        if self._graphs:  # on the model's GPU: a graph records only work on its capture stream's device (cuda:1)
            with torch.cuda.device(self.device):
                return self._graphed_step(mnist_u8, cifar_u8, lr)
        return self._step(mnist_u8, cifar_u8, lr)

    def _graphed_step(self, mnist_u8, cifar_u8, lr: float) -> torch.Tensor:
        """The same step with its forward and backward replayed from a CUDA graph (PyTorch's "whole network
        capture" recipe). The first GRAPH_WARMUP steps run eagerly on a side stream (cuDNN picks its kernels, Adam
        makes its state), the next is recorded, and every later one copies its batch into the recorded inputs and
        replays. The gradients stay the graph's own tensors, overwritten at each replay, so they are never set to
        None again; Adam steps outside the graph, with the learning rate of the step as before. Batches are all the
        same size (PairData.batches gives full ones only)."""
        if self._graph is not None:
            inputs, losses = self._graph_io[:2], self._graph_io[2]
            inputs[0].copy_(mnist_u8)
            inputs[1].copy_(cifar_u8)
            self._graph.replay()
            return self._adam_step(lr, losses)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        if self._warm_steps < GRAPH_WARMUP:
            self._warm_steps += 1
            with torch.cuda.stream(side):
                out = self._step(mnist_u8, cifar_u8, lr)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        graph, inputs = torch.cuda.CUDAGraph(), (mnist_u8.clone(), cifar_u8.clone())
        self.optimizer.zero_grad(set_to_none=True)  # the backward recorded allocates them in the graph's memory
        failed = None
        try:
            with torch.cuda.graph(graph):
                losses = self._forward_backward(*inputs)
        except torch.OutOfMemoryError:
            raise  # not a step that cannot be recorded: the eager step would not fit either
        except Exception as e:  # an operation that cannot be recorded (a host sync): train as before, and say so
            failed = f"{e.__class__.__name__}: {' '.join(str(e).split())[:300]}"
        if failed is not None:  # out of the handler: its traceback held the failed recording's tensors
            del graph, inputs
            self.optimizer.zero_grad(set_to_none=True)  # gradients the failed recording began, in its memory
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            self.run.warnings.append(f"CUDA graphs could not record this model's step, so the run trains without "
                                     f"them ({failed})")
            self._graphs = False
            return self._step(mnist_u8, cifar_u8, lr)
        self._graph, self._graph_io = graph, (*inputs, losses)
        graph.replay()
        return self._adam_step(lr, losses)

    def _adam_step(self, lr: float, losses: torch.Tensor) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return losses.clone()  # the next replay overwrites the recorded losses; this step's are read later

    def _compiled_step(self, mnist_u8, cifar_u8, lr: float) -> torch.Tensor:
        """The first step with ``compile``: it compiles forward and backward. Where that fails (no C++ compiler, an
        operation inductor cannot lower) the run trains without compiling, and its status says so."""
        quiet = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found" on every CPU compile
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():  # dynamo traces through the cached projector of unet_hf's inputs
                warnings.filterwarnings("ignore", "Dynamo detected a call to a `functools.lru_cache`")
                out = self._step(mnist_u8, cifar_u8, lr)
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as e:  # nothing stepped (Adam steps last); BatchNorm saw the batch once more
            why = " ".join(str(e).split()).split(" Set TORCHDYNAMO_VERBOSE")[0][:300]  # less torch's advice
            self.run.warnings.append(f"torch.compile failed on this machine, so the run trains without it "
                                     f"({e.__class__.__name__}: {why})")
            self._forward = self.model
            out = self._step(mnist_u8, cifar_u8, lr)
        finally:
            quiet.setLevel(level)
        self._compiling = False
        return out

    def _step(self, mnist_u8, cifar_u8, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        losses = self._forward_backward(mnist_u8, cifar_u8)
        self.optimizer.step()
        return losses

    def _forward_backward(self, mnist_u8, cifar_u8) -> torch.Tensor:
        """Forward, the objective and its backward into the parameters' gradients; the detached (mnist, cifar) MSEs."""
        mnist, cifar, mean = to_float(mnist_u8, cifar_u8)
        use_amp = self.config.amp if self.device.type == "cuda" else self.config.cpu_bf16
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            mnist_hat, cifar_hat = self._forward(mean)
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
        objective.backward()
        return torch.stack([loss_mnist.detach(), loss_cifar.detach()])

    # ------------------------------------------------------------------ the loop

    def steps(self) -> Iterator[StepResult]:
        """Train to the end (or a stop), yielding each step once its losses are read."""
        try:
            # a finished run resumed stays as it is: nothing is rewritten (which a full disk would refuse,
            # turning it "failed")
            finished = self.step >= self.total_steps and read_status(self.run_dir).get("state") == State.FINISHED.value
            if not finished:
                self.run.touched = True
                self.run.metrics.open(self.step)  # rows past the checkpoint we resume from will be redone
            self.run.clear_old_stop()  # one written since the lock was taken stops the run after its next step
            self._write_missing_epoch_checkpoint()
            if finished:
                return
            self.run.status(State.RUNNING, step=self.step, total_steps=self.total_steps)
            self.model.train()
            self._start = self._last_read = self._last_checkpoint = time.perf_counter()
            self._pending: list[_Pending] = []
            spent = self.config.max_minutes > 0 and self.trained_before > self.config.max_minutes * 60
            self._stop_reason: str | None = "time" if spent else None  # the budget was spent before this resume
            self._stop_message = "stopped by request"  # or what asked (_why_stop)
            self._spent_note = (f"time budget reached before this resume: it trained {self.trained_before / 60:.2f} of "
                                f"its {self.config.max_minutes:g} minutes; resume it with a larger time limit "
                                "(--max-minutes) to train on") if spent else ""
            epoch = self.step // self.steps_per_epoch
            while self.step < self.total_steps and self._stop_reason is None:
                yield from self._epoch(epoch)
                epoch += 1
            if self._stop_reason == "request":
                self.run.status(State.STOPPED, self._stop_message, step=self.step,
                                total_steps=self.total_steps)
            elif self._stop_reason == "time":
                self.run.status(State.FINISHED, self._spent_note or (
                    f"time budget reached at step {self.step} of {self.total_steps} (--max-minutes "
                    f"{self.config.max_minutes:g}); resume it with a larger time limit to train on"), step=self.step,
                                total_steps=self.total_steps)
            else:
                self.run.status(State.FINISHED, step=self.step, total_steps=self.total_steps)
            clear_stop(self.run_dir)
        except GeneratorExit:  # the consumer stopped iterating (a notebook, a benchmark): not running any more
            self.run.status(State.STOPPED, f"stopped by its caller at step {self.step}; {self._resume_point()}",
                            step=self.last_good, total_steps=self.total_steps)
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: quit now, the last checkpoint stays the resume point
            self.run.status(State.STOPPED, f"force-quit by a second interrupt at step {self.step}; "
                                           f"{self._resume_point()}",
                            step=self.last_good, total_steps=self.total_steps)
            raise
        except RunWriteError as e:
            # one sentence, and what it keeps said once: the write's own "the previous version is kept" was false
            # of a status.json that the failure's record then rewrote
            head = f"{e.cause}: training stopped at step {self.step}; {self._kept()}" if self.run_dir.is_dir() \
                else None
            msg = (f"{e.cause}: training stopped at step {self.step}; if the run folder was moved, train --run-dir "
                   "with its new place resumes it from its last checkpoint; if deleted, start a new run."
                   if head is None else f"{head}: {e.advice}.")
            self.run.fail(msg, step=self.last_good, total_steps=self.total_steps)
            raise RunWriteError(msg, e.errno, head, e.cause) from None  # a sweep halts on it (other errors fail a trial)
        except MixsepError:
            raise  # its status is written where it was raised
        except Exception as e:  # a bug, or arithmetic no setting should allow: status.json must not stay "running"
            self.run.fail(f"Training failed at step {self.step} ({e.__class__.__name__}: {str(e)[:200]}); "
                          f"{self._kept()}.", step=self.last_good, total_steps=self.total_steps)
            raise
        finally:
            self.run.metrics.close()
            if self._owns_run:
                self.run.close()

    def _epoch(self, epoch: int) -> Iterator[StepResult]:
        """The rest of one epoch (a resume may start mid-epoch: the order is a function of seed and epoch)."""
        cfg, spe = self.config, self.steps_per_epoch
        skip = self.step - epoch * spe
        for b, (m_u8, c_u8) in enumerate(self.data.batches(epoch, cfg.batch_size)):
            if b < skip:
                continue
            launched = time.perf_counter()
            lr = lr_at(cfg, self.step, self.total_steps)
            losses = self.train_step(m_u8, c_u8, lr)
            self.step += 1
            self._pending.append(_Pending(self.step, epoch, lr, losses, launched))
            # a checkpoint must hold only steps whose losses were seen to be finite; checkpoints are due
            # every checkpoint_every steps and at an epoch's end, at most once in checkpoint_seconds, and
            # always at the end of an epoch that keep_epochs (K >= 2: every K-th) asks to keep
            kept_epoch = b == spe - 1 and cfg.keep_epochs > 1 and (epoch + 1) % cfg.keep_epochs == 0
            due = kept_epoch or (self.step % cfg.checkpoint_every == 0 or b == spe - 1) and \
                time.perf_counter() - self._last_checkpoint >= cfg.checkpoint_seconds
            boundary = due or self.step == self.total_steps
            yield from self._read(keep=0 if boundary or not self.read_late else 1)
            if self.step == self.total_steps:
                self._stop_reason = None  # a stop that lands on the last step finds the run complete: finished
            if boundary or self._stop_reason:
                self._checkpoint()
            if self._stop_reason:
                return
        if self.last_good == self.step:  # last.pt holds this epoch's end: so does its epoch checkpoint
            self._save_epoch_checkpoint(epoch + 1)

    def _read(self, keep: int) -> Iterator[StepResult]:
        """Read queued steps' losses (the host sync) until ``keep`` remain; a stop reads them all."""
        drained = False
        while len(self._pending) > keep:
            p = self._pending.pop(0)
            # read late, a step is timed from the previous read: the steady-state throughput. A step
            # read right after another in one drain (a checkpoint, an epoch's end, a stop) is timed
            # from its own launch: the time since that read is nothing (it read 40,000 samples/s
            # beside 1,700 on the CPU, and 371,348 for the last row of a run on an H200)
            r = self._resolve(p, p.launched if drained else max(p.launched, self._last_read))
            drained = True
            self._last_read = time.perf_counter()
            self.run.metrics.write(asdict(r))
            yield r
            if self._stop_reason is None:
                self._stop_reason = self._why_stop()
            if self._stop_reason:
                keep = 0

    def _why_stop(self) -> str | None:
        """A user's request wins over the time budget: the state must match the message. ``should_stop`` may say
        what asked, as the stopped run's message ("stopped by Ctrl-C (SIGINT)")."""
        asked = self.should_stop()
        if asked or stop_requested(self.run_dir):
            self._stop_message = asked if isinstance(asked, str) else "stopped by request"
            return "request"
        return "time" if self.config.max_minutes > 0 and self.trained_s() > self.config.max_minutes * 60 else None

    def trained_s(self) -> float:
        """Seconds of training in all: before this process (its checkpoint's) and in it."""
        return self.trained_before + time.perf_counter() - self._start

    def _kept(self, good: bool = False) -> str:
        """What a failure leaves to resume from (a run that failed before its first checkpoint has none)."""
        return (f"the last {'good ' if good else ''}checkpoint (step {self.last_good}) is kept" if self.last_good
                else "no checkpoint was written yet")

    def _resume_point(self) -> str:
        return (f"a resume continues from the last checkpoint (step {self.last_good})" if self.last_good
                else "no checkpoint was written yet, so a resume starts from step 0")

    def _resolve(self, p: _Pending, since: float) -> StepResult:
        """One step's result; a non-finite loss fails the run, keeping the last good checkpoint."""
        loss_m, loss_c = p.losses.tolist()
        if not (math.isfinite(loss_m) and math.isfinite(loss_c)):
            kept = self._kept(good=True)
            msg = (f"The loss became non-finite at step {p.step} (lr={p.lr:g}); training stopped. "
                   f"{kept[0].upper()}{kept[1:]}. Lower the learning rate and start again.")
            self.run.fail(msg, step=self.last_good, total_steps=self.total_steps)
            raise MixsepError(msg)
        now = time.perf_counter()
        return StepResult(p.step, p.epoch, loss_m, loss_c, loss_m + loss_c, p.lr,
                          self.config.batch_size / max(now - since, 1e-9), now - self._start, self.total_steps)

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self) -> None:
        # "epoch": the epochs completed, as epoch-N.pt says them (it said the 0-based epoch under way: last.pt at the
        # end of a 3-epoch run said 2, its epoch-3.pt 3)
        save_checkpoint(self.last_path, self.model, self.config, self.step, self.step // self.steps_per_epoch,
                        self.optimizer, parents=False, trained_s=self.trained_s())
        self.last_good = self.step
        self._last_checkpoint = time.perf_counter()
        self.run.status(State.RUNNING, step=self.step, total_steps=self.total_steps)

    def _save_epoch_checkpoint(self, epoch: int) -> None:
        save_checkpoint(epoch_checkpoint(self.run_dir, epoch), self.model, self.config, self.step, epoch, parents=False)
        prune_epoch_checkpoints(self.run_dir, self.config.keep_epochs)

    def _write_missing_epoch_checkpoint(self) -> None:
        """A kill between last.pt and epoch-E.pt at an epoch's end: the weights are last.pt's, write it now."""
        if self.step > 0 and self.step % self.steps_per_epoch == 0:
            epoch = self.step // self.steps_per_epoch
            if not epoch_checkpoint(self.run_dir, epoch).is_file():
                self._save_epoch_checkpoint(epoch)


def train_steps(config: TrainConfig, run_dir: Path, **kwargs) -> Iterator[StepResult]:
    """Train ``config`` into ``run_dir`` (resuming if it holds a checkpoint), yielding each step."""
    return Training(config, run_dir, **kwargs).steps()
