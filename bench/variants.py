"""Separator variants at equal steps, scored on a validation split carved from the training data.

    python bench/variants.py --data-root ../shared/data --variant unet_fraction --variant unet_digit
    python bench/variants.py --data-root ../shared/data --run runs/RUN   # a trained run's weights
    python bench/variants.py --data-root ../shared/data --run runs/RUN --flips   # and test-time flips
    python bench/variants.py --data-root ../shared/data --run runs/RUN --diagnose   # where its error is

Each variant trains through mixsep's own generator (``Training.steps``): ``--epochs`` epochs of
``--train-size`` CIFAR training images (3 x 8,000 / 64 = 375 steps by default), fresh MNIST
partners each epoch, one-cycle to 3e-3, per-image log-MSE, seed ``--seed``. The validation
pairs are the CIFAR training images past ``--train-size`` (never trained on) with the MNIST *test*
digits that no test pair holds: test pair i is digit i with CIFAR test image i, so they start at
the CIFAR test split's size (1,000 with the shared partial set). Where the test pairs hold every
MNIST test digit (the full CIFAR-10 test set, 10,000 images) they are the last MNIST *training*
digits instead, which the trainings also draw as partners of other images, and the script says so.
Nothing here touches a test pair. Each line printed is a JSON object: the PSNR over both sources (a digit
estimate inside the mixture's interval makes the two equal), as is and with ``DigitSpace``
applied after the network (what ``unet_digit`` does at inference).

Variants: any name in ``mixsep.model.MODELS``, plus ``rich`` (the fraction head with
``features="rich"``), its widths (``rich-narrow`` is ``unet_narrow`` in training,
``rich-narrow-hf`` ``unet_hf``) and two that train *through* the digit-space projection, which
``unet_digit`` does not: ``through-st`` (clamps straight-through) and ``through`` (true
gradients).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mixsep  # noqa: F401  first, before torch: how its threads wait (mixsep.config.THREAD_WAIT)
import torch
from benchlib import command_line, data_root, given, one_sentence, refuse_with, set_threads

from mixsep import MixsepError, TrainConfig
from mixsep.data import find_source, load_split, to_float
from mixsep.metrics import psnr
from mixsep.model import MODELS, feasible_interval
from mixsep.separators import (CHANNELS, DigitSpace, SeparatorNet, UNet, _digit_projector, mixture_features,
                               straight_through, to_interval, use_activation)
from mixsep.train import Training, load_run_model


class _Through(DigitSpace):
    """DigitSpace applied in training too; ``st``: its clamps pass gradients straight through."""

    def __init__(self, st: bool):
        super().__init__()
        self.st = st

    def forward(self, digit, lo, hi):
        z = self.down @ digit.float() @ self.down.T
        x = straight_through(z.clamp(0, 1), z) if self.st else z.clamp(0, 1)
        y = self.up @ x @ self.up.T
        out = torch.maximum(torch.minimum(y, hi), lo)
        return straight_through(out, y) if self.st else out


class _ThroughNet(SeparatorNet):
    def __init__(self, st: bool):
        super().__init__(head="fraction")
        self.through = _Through(st)

    def forward(self, mean):
        lo, hi = feasible_interval(mean)
        z = self.net(mixture_features(mean, lo, hi, self.features)).float()
        digit = self.through(to_interval(z, lo, hi, self.head, self.training), lo, hi)
        mnist_hat = digit.expand(-1, 3, -1, -1)
        return mnist_hat, 2 * mean - mnist_hat


class _ProjectedNet(SeparatorNet):
    """The fraction head's digit, before its clamp, projected into the resized digits' subspace (``P d P.T``,
    linear: exact gradients), then clamped into the interval (straight-through in training)."""

    def forward(self, mean):
        lo, hi = feasible_interval(mean)
        z = self.net(mixture_features(mean, lo, hi, self.features)).float()
        p = _digit_projector(mean.device)
        d = p @ (lo + (hi - lo) * z) @ p.T
        digit = to_interval(d, lo, hi, "clamp", self.training)
        if self.digit_space is not None and not self.training:
            digit = self.digit_space(digit, lo, hi)
        mnist_hat = digit.expand(-1, 3, -1, -1)
        return mnist_hat, 2 * mean - mnist_hat


class _PriorNet(SeparatorNet):
    """Three more inputs no convolution can form: ``DigitSpace`` (a non-local map with clamps) of the
    interval's bounds and of its midpoint, each a resized digit that fits the mixture as best it can."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.net = use_activation(UNet(CHANNELS[self.features] + 3, tuple(kw["widths"]), False, 1),
                                  kw.get("act", "relu"))
        self.prior = DigitSpace()

    def forward(self, mean):
        lo, hi = feasible_interval(mean)
        with torch.autocast(mean.device.type, enabled=False):
            lo32, hi32 = lo.float(), hi.float()
            prior = torch.cat([self.prior(b, lo32, hi32) for b in (lo32, hi32, (lo32 + hi32) / 2)], 1)
        x = torch.cat([mixture_features(mean, lo, hi, self.features), prior.to(mean.dtype)], 1)
        z = self.net(x).float()
        digit = to_interval(z, lo, hi, self.head, self.training)
        mnist_hat = digit.expand(-1, 3, -1, -1)
        return mnist_hat, 2 * mean - mnist_hat


def _rich(widths=(32, 64, 128, 256), features="rich", **more):
    """The fraction head with the rich inputs (unet_digit_rich in training) at these level widths."""
    return lambda pretrained=False: SeparatorNet(widths=widths, head="fraction", features=features, **more)


def _without_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Each conv-BN-activation without its BN: the convolution gets a bias and He initialisation."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, name, torch.nn.Identity())
        if isinstance(module, torch.nn.Conv2d) and module.bias is None:
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            module.bias = torch.nn.Parameter(torch.zeros(module.out_channels))
    return model


EXTRA = {
    "rich": _rich(),
    "through-st": lambda pretrained=False: _ThroughNet(st=True),
    "through": lambda pretrained=False: _ThroughNet(st=False),
    # width against steps: a 512-wide bottom level (4x4 maps), or a fifth level (2x2 maps)
    "rich-wide-bottom": _rich((32, 64, 128, 512)),
    "rich-5stage": _rich((32, 64, 128, 256, 512)),
    # and the other way: narrower levels, more steps in the same time
    "rich-mid": _rich((24, 48, 96, 192)),
    "rich-narrow": _rich((16, 32, 64, 128)),
    "rich-12": _rich((12, 24, 48, 96)),
    "rich-8": _rich((8, 16, 32, 64)),
    "rich-16-deep": _rich((16, 32, 64, 128, 256)),
    "rich-narrow-wide-bottom": _rich((16, 32, 64, 256)),
    # and what no resized digit can hold, as three more inputs (unet_hf in training)
    "rich-narrow-hf": _rich((16, 32, 64, 128), features="hf"),
    # and on it: two convolutions per decoder level, or residual encoder stages
    "rich-narrow-hf-deep": _rich((16, 32, 64, 128), features="hf", decoder_depth=2),
    "rich-narrow-hf-res": _rich((16, 32, 64, 128), features="hf", residual=True),
    # and a smooth activation (unet_hf_silu in training)
    "rich-narrow-hf-silu": _rich((16, 32, 64, 128), features="hf", act="silu"),
    # and on it: the digit projected into the resized digits' subspace in training too, before its clamp
    "rich-narrow-hf-silu-proj": lambda pretrained=False: _ProjectedNet(
        widths=(16, 32, 64, 128), head="fraction", features="hf", act="silu"),
    # and on it: DigitSpace of the interval's bounds and midpoint as three more inputs
    "rich-narrow-hf-silu-prior": lambda pretrained=False: _PriorNet(
        widths=(16, 32, 64, 128), head="fraction", features="hf", act="silu"),
    # and on it: two convolutions per decoder level (0.89x the bf16 step's speed)
    "rich-narrow-hf-silu-deep": _rich((16, 32, 64, 128), features="hf", act="silu", decoder_depth=2),
    # and on it: no BatchNorm (1.25x the bf16 step's speed)
    "rich-narrow-hf-silu-nobn": lambda pretrained=False: _without_batchnorm(
        _rich((16, 32, 64, 128), features="hf", act="silu")()),
}


def validation(root: Path, train_size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(MNIST digits, CIFAR images) of the validation pairs, which share no image with a test pair."""
    mnist, _ = load_split(root, "mnist", "test")
    cifar, _ = load_split(root, "cifar", "train")
    # test pair i is MNIST test digit i with CIFAR test image i, for i below the shorter test split
    in_test = min(len(mnist), len(load_split(root, "cifar", "test")[0])) if find_source(root, "cifar", "test") else 0
    if train_size == 0:  # TrainConfig's "all": cifar[0:n] would be the very images it trained on
        raise MixsepError(f"--train-size 0 trains on all {len(cifar):,} CIFAR training images, which leaves none to "
                          f"validate on; give a size below {len(cifar):,}.")
    if len(cifar) <= train_size:
        raise MixsepError(f"No CIFAR training images are left past --train-size {train_size} to validate on.")
    if count < 1:
        raise MixsepError(f"--val-pairs must be at least 1 (got {count}).")
    n = min(count, len(cifar) - train_size)
    if len(mnist) - in_test >= n:
        digits, which = mnist[in_test: in_test + n], f"MNIST test digits {in_test:,}-{in_test + n - 1:,}"
    else:  # every MNIST test digit is in a test pair: the last training digits, which no test pair holds
        train_digits, _ = load_split(root, "mnist", "train")
        n = min(n, len(train_digits))
        digits = train_digits[len(train_digits) - n:]
        which = (f"MNIST training digits {len(train_digits) - n:,}-{len(train_digits) - 1:,} (the test pairs hold "
                 f"MNIST test digits 0-{in_test - 1:,}, too many to leave {n:,} out; training draws these digits "
                 "as partners of other images)")
    print(f"validation pairs: CIFAR training images {train_size:,}-{train_size + n - 1:,} with {which}", flush=True)
    return digits, cifar[train_size: train_size + n]


@torch.inference_mode()
def score(model: torch.nn.Module, mnist_u8, cifar_u8, batch: int = 250) -> dict:
    """Mean per-image PSNR of the digit (equal to CIFAR's for interval models), without and with DigitSpace.

    val_psnr_8bit_mixture: the model as it is, given each mixture rounded to 8 bits, as an image
    file holds it (`python -m mixsep separate`); the mean of two 8-bit images has 9.
    """
    model.eval()
    project = DigitSpace()
    plain, projected, rounded = [], [], []
    for i in range(0, len(mnist_u8), batch):
        mnist, _, mean = to_float(mnist_u8[i: i + batch], cifar_u8[i: i + batch])
        digit = model(mean)[0][:, :1].float()
        lo, hi = feasible_interval(mean)
        for out, est in ((plain, digit), (projected, project(digit, lo, hi)),
                         (rounded, model((mean * 255).round() / 255)[0][:, :1].float())):
            out.append(psnr(est, mnist[:, :1]))
    return {"val_psnr": round(torch.cat(plain).mean().item(), 3),
            "val_psnr_digit_space": round(torch.cat(projected).mean().item(), 3),
            "val_psnr_8bit_mixture": round(torch.cat(rounded).mean().item(), 3), "val_pairs": len(mnist_u8)}


BANDS = {"digit 0": lambda d: d == 0, "digit in (0, 0.2)": lambda d: (d > 0) & (d < 0.2),  # the true digit's value
         "digit in [0.2, 0.8]": lambda d: (d >= 0.2) & (d <= 0.8), "digit in (0.8, 1]": lambda d: d > 0.8}


@torch.inference_mode()
def diagnose(model: torch.nn.Module, mnist_u8, cifar_u8, trained_cifar_u8, batch: int = 250) -> dict:
    """Where a run's error is, on the validation pairs: the share of the squared error (and the pixels) in each band
    of the true digit's value; and the fit gap, the same digits over CIFAR images the run trained on."""
    model.eval()
    digits, errors = [], []
    for i in range(0, len(mnist_u8), batch):
        mnist, _, mean = to_float(mnist_u8[i: i + batch], cifar_u8[i: i + batch])
        digits.append(mnist[:, 0])
        errors.append((model(mean)[0][:, 0].float() - mnist[:, 0]).pow(2))
    digit, err = torch.cat(digits), torch.cat(errors)
    out = {}
    for name, where in BANDS.items():
        band = where(digit)
        out[name] = {"pixels": round(band.float().mean().item(), 4),
                     "error_share": round((err[band].sum() / err.sum()).item(), 4),
                     "rmse": round(err[band].mean().sqrt().item(), 4) if band.any() else None}
    def per_image(cifar):
        return torch.cat([psnr(model(to_float(mnist_u8[i: i + batch], cifar[i: i + batch])[2])[0][:, :1].float(),
                               to_float(mnist_u8[i: i + batch], cifar[i: i + batch])[0][:, :1])
                          for i in range(0, len(mnist_u8), batch)])

    seen, unseen = per_image(trained_cifar_u8), per_image(cifar_u8)
    # two sets of images, not one: the gap carries their difference in difficulty, hence its 95% interval
    ci = 1.96 * (seen.var() / len(seen) + unseen.var() / len(unseen)).sqrt().item()
    return {"bands": out, "psnr_unseen_cifar": round(unseen.mean().item(), 3),
            "psnr_trained_cifar": round(seen.mean().item(), 3),
            "fit_gap_db": round((seen.mean() - unseen.mean()).item(), 3), "fit_gap_ci95": round(ci, 3)}


WAYS = {"h": (-1,), "v": (-2,), "hv": (-2, -1), "t": "t"}  # mirrored left-right, up-down, both (a 180° turn), transposed
FLIPS = {"flip_h": ("h",), "flip_hv": ("h", "v", "hv"), "flip_hv_t": ("h", "v", "hv", "t")}


def _flipped(t: torch.Tensor, how) -> torch.Tensor:
    return t.transpose(-1, -2) if how == "t" else t.flip(how)


@torch.inference_mode()
def score_flips(model: torch.nn.Module, mnist_u8, cifar_u8, batch: int = 250) -> dict:
    """Test-time averaging: the digit estimated from flipped (or transposed) mixtures, flipped back,
    averaged with the plain estimate before the model's DigitSpace (the average stays in the interval).
    Each way is one forward pass, made once and shared by the keys that average it; none of it is in
    mixsep's models."""
    if getattr(model, "digit_space", None) is None:
        raise MixsepError("--flips averages digit estimates before DigitSpace; this run's model has none.")
    model.eval()
    project, model.digit_space = model.digit_space, None
    try:
        out = {k: [] for k in FLIPS}
        for i in range(0, len(mnist_u8), batch):
            mnist, _, mean = to_float(mnist_u8[i: i + batch], cifar_u8[i: i + batch])
            lo, hi = feasible_interval(mean)
            plain = model(mean)[0][:, :1].float()
            back = {w: _flipped(model(_flipped(mean, how))[0][:, :1].float(), how) for w, how in WAYS.items()}
            for key, ways in FLIPS.items():
                est = torch.stack([plain, *(back[w] for w in ways)]).mean(0)
                out[key].append(psnr(project(est, lo, hi), mnist[:, :1]))
    finally:
        model.digit_space = project
    return {f"val_psnr_{k}": round(torch.cat(v).mean().item(), 3) for k, v in out.items()}


@one_sentence
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--variant", action="append", default=[], help="repeat for several, trained one after another")
    p.add_argument("--run", default=None, help="score this run's weights instead of training (its train_size sets the split)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=8000)
    p.add_argument("--val-pairs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step (default 64, the presets')")
    p.add_argument("--lr", type=float, default=3e-3, help="the one-cycle schedule's peak (default 3e-3, the presets')")
    p.add_argument("--beta2", type=float, default=0.999, help="Adam's beta2 (default 0.999, the presets')")
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam's L2 penalty (default 0, the presets')")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpu-bf16", action="store_true", help="train with bfloat16 autocast on the CPU (TrainConfig.cpu_bf16)")
    p.add_argument("--flips", action="store_true", help="with --run: also score test-time flip averaging")
    p.add_argument("--diagnose", action="store_true",
                   help="with --run: the error's share in bands of the digit's value, and the fit gap (the same "
                        "digits over CIFAR images the run trained on; positive: it fits them better than new ones)")
    args = p.parse_args(argv)
    named = given(p, argv)
    if args.run:  # what only training reads: dropped without a word before
        refuse_with(p, named & {"variant", "epochs", "train_size", "seed", "batch_size", "lr", "beta2",
                                "weight_decay", "cpu_bf16"}, f"--run {args.run}", "trains nothing")
    elif args.flips or args.diagnose:
        flags = " and ".join(f for f, on in (("--flips", args.flips), ("--diagnose", args.diagnose)) if on)
        raise MixsepError(f"{flags} {'score' if ' and ' in flags else 'scores'} a trained run's weights, which "
                          "only --run names; give --run RUN, or leave them out to train the variants.")
    set_threads(args.threads)
    root = data_root(args.data_root)
    print("command:", command_line(), flush=True)
    if args.run:
        model, cfg, info = load_run_model(Path(args.run))
        if cfg.train_size == 0:  # validation's own sentence names --train-size, which --run does not take
            raise MixsepError(f"{args.run} trained on every CIFAR training image (train_size 0), so none is left "
                              "to validate on; score a run trained with --train-size below the data root's count.")
        val = validation(root, cfg.train_size, args.val_pairs)
        flips = score_flips(model, *val) if args.flips else {}
        print(json.dumps({"run": args.run, "model": cfg.model, "step": info["step"], **score(model, *val), **flips}))
        if args.diagnose:
            cifar, _ = load_split(root, "cifar", "train")
            trained = cifar[: min(len(val[1]), cfg.train_size or len(cifar))]
            print(json.dumps({"run": args.run, "diagnose": diagnose(model, val[0][: len(trained)],
                                                                     val[1][: len(trained)], trained)}))
        return 0
    unknown = [v for v in args.variant if v not in MODELS and v not in EXTRA]
    if unknown or not args.variant:
        raise MixsepError(f"Name one or more --variant from: {', '.join([*MODELS, *EXTRA])}.")
    val = validation(root, args.train_size, args.val_pairs)
    for name in args.variant:
        MODELS.setdefault(name, EXTRA.get(name))
        cfg = TrainConfig(data_root=str(root), train_size=args.train_size, repair=True, model=name, pretrained=False,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta2=args.beta2,
                          weight_decay=args.weight_decay, schedule="onecycle",
                          loss="log_mse", seed=args.seed, device="cpu", cpu_bf16=args.cpu_bf16,
                          checkpoint_every=10 ** 9).validate()
        run = Path(tempfile.mkdtemp(prefix="variant-"))
        try:
            training = Training(cfg, run / "run")
            start = time.perf_counter()
            for _ in training.steps():
                pass
            seconds = time.perf_counter() - start
            print(json.dumps({"variant": name, "seed": args.seed, "batch_size": cfg.batch_size, "lr": cfg.lr,
                              "beta2": cfg.beta2, "weight_decay": cfg.weight_decay,
                              "cpu_bf16": cfg.cpu_bf16, "steps": training.step,
                              "train_s": round(seconds, 1), **score(training.model, *val)}), flush=True)
        finally:
            shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
