"""The one configuration dataclass, saved with every run and checkpoint."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MixsepError


def default_data_root() -> str:
    return os.environ.get("MIXSEP_DATA_ROOT", "./data")


def default_runs_dir() -> str:
    return os.environ.get("MIXSEP_RUNS_DIR", "./runs")


@dataclass
class TrainConfig:
    # data
    data_root: str = field(default_factory=default_data_root)  # holds MNIST/ and cifar-10-batches-py/ or cifar10/*.npz
    train_size: int = 0          # pairs per epoch; 0 = all (the shorter of the two training sets)
    repair: bool = False         # draw fresh MNIST partners for the CIFAR images every epoch (seeded)
    # model
    model: str = "faithful"      # a key of mixsep.model.MODELS
    pretrained: bool = True      # ImageNet weights for the ResNet-18 encoder when they can be had
    # optimisation: the report's settings are the defaults
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    schedule: str = "constant"   # "constant" or "onecycle" (warm-up then cosine decay to zero)
    loss: str = "mse"            # "mse" (the report's) or "log_mse": mean over images of log MSE, what mean PSNR averages
    # run mechanics
    seed: int = 0
    device: str = "auto"         # "auto" picks CUDA when present, else CPU
    amp: bool = True             # bfloat16 autocast on CUDA only; CPU stays fp32 for exact results
    checkpoint_every: int = 200  # steps between checkpoints (one is always written at the end)
    max_minutes: float = 0.0     # stop cleanly after this wall time; 0 = no limit (used by the benchmarks)

    def validate(self) -> "TrainConfig":
        """Raise MixsepError with one clear sentence for any value a user could mistype."""
        from .model import MODELS  # late import: model imports torch, config must stay light

        if not (self.lr > 0 and self.lr < 10):
            raise MixsepError(f"Learning rate must be a positive number below 10 (got {self.lr}); the report used 1e-3.")
        for name in ("beta1", "beta2"):
            b = getattr(self, name)
            if not (0.0 <= b < 1.0):
                raise MixsepError(f"{name} must lie in [0, 1) (got {b}); Adam's defaults are beta1=0.9, beta2=0.999.")
        if self.epochs < 1:
            raise MixsepError(f"Epochs must be at least 1 (got {self.epochs}).")
        if self.batch_size < 1:
            raise MixsepError(f"Batch size must be at least 1 (got {self.batch_size}).")
        if self.train_size < 0:
            raise MixsepError(f"Training size must be 0 (all) or a positive number of pairs (got {self.train_size}).")
        if self.model not in MODELS:
            raise MixsepError(f"Unknown model '{self.model}'; choose one of: {', '.join(MODELS)}.")
        if self.schedule not in ("constant", "onecycle"):
            raise MixsepError(f"Unknown schedule '{self.schedule}'; choose 'constant' or 'onecycle'.")
        if self.loss not in ("mse", "log_mse"):
            raise MixsepError(f"Unknown loss '{self.loss}'; choose 'mse' or 'log_mse'.")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise MixsepError(f"Unknown device '{self.device}'; choose auto, cpu or cuda.")
        if self.checkpoint_every < 1:
            raise MixsepError("checkpoint_every must be at least 1.")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        # Unknown keys come from other versions: drop them rather than fail, so old
        # runs stay readable; missing keys take today's defaults.
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise MixsepError(f"No config.json in {Path(path).parent}: this is not a mixsep run folder.") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise MixsepError(f"{path} is not a readable mixsep config ({e}); the run folder may be half written.") from None
