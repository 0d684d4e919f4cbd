"""Train a separator within a time budget through mixsep's own generator, then score it.

    python bench/quality.py --data-root ../shared/data --model unet --minutes 15

Training runs through ``mixsep.train.Training.steps`` (the generator the CLI uses) into a
normal run folder, so ``python -m mixsep evaluate RUN`` scores it again later. Scores are
on the test pairs (CIFAR test images with MNIST test digits) unless --mnist-test /
--cifar-test name other files; --holdout N also keeps the last N CIFAR training images
out of training and scores them. The last line is

    quality: mnist_psnr=.. mnist_ssim=.. cifar_psnr=.. cifar_ssim=.. minutes=..

with the best recovery mode per source and the training wall time in minutes. Its SSIM is
torchmetrics' (the headline); the tables and the JSON summary also give SSIM_valid,
scikit-image's valid-window figure, which drops the 5-pixel border (half of a 32x32 image).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

from benchlib import (add_json_flags, command_line, data_root, given, json_output, one_sentence, refuse_with,
                      set_threads, summary, summary_line, table, write_output)

from mixsep import MixsepError, TrainConfig
from mixsep.config import RECIPES, default_runs_dir
from mixsep.data import PairData, load_pairs, load_split
from mixsep.data import calibration_pairs as data_calibration_pairs
from mixsep.metrics import evaluate
from mixsep.runs import read_metrics
from mixsep.train import Training, load_run_model, new_run_dir

# Per-model settings: mixsep.config.RECIPES (what `train --recipe` uses), the faithful model at
# the report's (one epoch, constant 1e-3), the U-Nets with a one-cycle schedule as long as the
# budget allows ("auto": see fit_epochs), one setting for all of them but unet_narrow's larger lr.
PRESETS = {name: r if name == "faithful" else r | {"epochs": "auto"} for name, r in RECIPES.items()}
CALIBRATION_PAIRS = 512
DRY_PAIRS = 64  # --dry-run trains one epoch of these (4 steps of 16)
BUDGET_USE = 0.9  # of the budget the schedule is sized for: load on a shared machine moves the speed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder with MNIST/ and CIFAR-10 (see `python -m mixsep info`)")
    p.add_argument("--model", default="unet", help=f"one of the presets: {', '.join(PRESETS)} (default unet)")
    p.add_argument("--minutes", type=float, default=15.0, help="training wall-time budget; 0 = none (default 15)")
    p.add_argument("--mnist-test", default=None, help="score on these MNIST images (idx or npz) instead of the test split")
    p.add_argument("--cifar-test", default=None, help="score on these CIFAR images (batch or npz) instead of the test split")
    p.add_argument("--holdout", type=int, default=0,
                   help="keep the last N CIFAR training images out of training and also score them (paired with MNIST test digits)")
    p.add_argument("--epochs", type=int, default=None,
                   help="override the preset's epochs (the unet's default sizes them to fill the budget)")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--lr", type=float, default=None, help="override the preset's peak learning rate")
    p.add_argument("--beta2", type=float, default=None, help="override the preset's Adam beta2 (0.999)")
    p.add_argument("--loss", choices=["mse", "log_mse"], default=None, help="override the preset's training objective")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-bf16", action="store_true",
                   help="train with bfloat16 autocast on the CPU (faster on CPUs with AMX; TrainConfig.cpu_bf16)")
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile (TrainConfig.compile); the probe's warm-up steps compile, "
                        "and the run itself finds the kernels in inductor's cache")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="on CUDA, train without replaying the step from a CUDA graph (TrainConfig.cuda_graphs), "
                        "as runs before it did")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    p.add_argument("--runs-dir", default=default_runs_dir(), help="where the run folder goes (default ./runs)")
    add_json_flags(p, "the results")
    p.add_argument("--dry-run", action="store_true",
                   help=f"one epoch of {DRY_PAIRS} pairs at batch 16, scored on 32 pairs: checks the plumbing only")
    p.add_argument("--score", default=None, metavar="RUN",
                   help="score this run's latest checkpoint instead of training one (with --holdout N, the run "
                        "must have kept the same last N CIFAR training images out)")
    p.add_argument("--as-model", default=None, metavar="MODEL",
                   help="with --score: score the weights as another model that holds them (unet_fraction as unet_digit)")
    return p


def make_config(args) -> TrainConfig:
    if args.model not in PRESETS:
        raise MixsepError(f"No preset for model '{args.model}'; choose one of: {', '.join(PRESETS)}.")
    preset = dict(PRESETS[args.model])
    for name in ("epochs", "batch_size", "lr", "beta2", "loss"):
        if getattr(args, name) is not None:
            preset[name] = getattr(args, name)
    if args.dry_run:
        preset.update(epochs=1, batch_size=16)
    if not math.isfinite(args.minutes) or args.minutes < 0:  # TrainConfig's message names its own default, 0
        raise MixsepError(f"--minutes must be a finite number, 0 (no budget) or more (got {args.minutes}); "
                          "leave it out for 15.")
    if preset["epochs"] == "auto" and args.minutes <= 0:
        raise MixsepError("With no time budget (--minutes 0) give --epochs: the preset sizes them to the budget.")
    epochs = 1 if preset["epochs"] == "auto" else preset["epochs"]  # sized in main once the data is known
    return TrainConfig(data_root=str(Path(args.data_root).resolve()), model=args.model, pretrained=False, seed=args.seed,
                       device=args.device, cpu_bf16=args.cpu_bf16, compile=args.compile, cuda_graphs=args.cuda_graphs, max_minutes=args.minutes, checkpoint_every=10_000,
                       **(preset | {"epochs": epochs})).validate()


def fit_epochs(cfg: TrainConfig, probe_steps: int = 12, warmup: int = 3, probe_s: float = 2.0) -> tuple[int, float]:
    """(epochs whose one-cycle schedule ends inside the budget, samples/s of this model's training loop).

    The probe runs ``Training.steps``, the generator the real run uses, in a throwaway run
    folder: the step and everything around it (the batch gather, the metrics row, the stop
    checks, the epoch-end checkpoints it crosses). The real run is seeded afresh, so the probe
    changes nothing in it. The first ``warmup`` steps are not timed (oneDNN or cuDNN picks its
    kernels, the allocator fills its pools); then it times at least ``probe_steps`` steps and
    ``probe_s`` seconds, and the speed is their mean.

    Timing ``train_step`` alone was enough on a CPU, where the step is nearly all of it; on an
    H200 a step of the U-Net takes about 7 ms and the loop around it a quarter more: a probe of
    the step alone read 9,646 samples/s for a run that then trained at 7,352, and ran out of its
    5 minutes at step 34,464 of 40,600 with the learning rate still high.
    """
    need = warmup + probe_steps
    probe_cfg = dataclasses.replace(cfg, epochs=need + 1, max_minutes=0.0)  # every epoch has at least one step
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = Training(probe_cfg, Path(tmp) / "probe")
        gen = probe.steps()
        try:
            first = probe.step  # 0: with no warm-up, timing starts at the first step
            for _ in range(warmup):
                first = next(gen).step
            t0, last = time.perf_counter(), first
            for r in gen:  # steps read, not launched: on a GPU a step's loss is read one step late
                last = r.step
                if last - first >= probe_steps and time.perf_counter() - t0 >= probe_s:
                    break
            sps = (last - first) * cfg.batch_size / (time.perf_counter() - t0)
        finally:
            gen.close()
        pairs_per_epoch = probe.steps_per_epoch * cfg.batch_size
    return max(1, int(BUDGET_USE * cfg.max_minutes * 60 * sps / pairs_per_epoch)), sps


def holdout_pairs(root: Path, n: int) -> tuple[int, PairData]:
    """(training size that leaves the last n CIFAR training images out, those n paired with MNIST test digits)."""
    mnist, mnist_labels = load_split(root, "mnist", "test")
    cifar, cifar_labels = load_split(root, "cifar", "train")
    if not 0 < n < len(cifar) or n > len(mnist):
        raise MixsepError(f"--holdout must lie between 1 and {min(len(cifar) - 1, len(mnist))} (got {n}).")
    return len(cifar) - n, PairData(mnist[:n], mnist_labels[:n], cifar[-n:], cifar_labels[-n:])


def calibration_pairs(training: Training) -> PairData:
    """The last training pairs in use: they fit the optimal projection weight without touching scored images."""
    d, k = training.data, min(CALIBRATION_PAIRS, len(training.data))
    return PairData(d.mnist[len(d) - k: len(d)].cpu(), d.mnist_labels[len(d) - k: len(d)],
                    d.cifar[len(d) - k: len(d)].cpu(), d.cifar_labels[len(d) - k: len(d)])


def train(cfg: TrainConfig, run_dir: Path) -> tuple[Training, float, str]:
    """Run the generator to the end or the budget; (training, minutes, how it ended)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no ImageNet weights offline: the presets train from scratch anyway
        training = Training(cfg, run_dir)
    r, every = None, max(1, training.total_steps // 20)
    for r in training.steps():
        if r.step % every == 0 or r.step == training.total_steps:
            print(f"  step {r.step}/{r.total_steps} epoch {r.epoch} loss {r.loss:.5f} lr {r.lr:.2e} "
                  f"{r.samples_per_s:.0f} samples/s {r.elapsed_s / 60:.1f} min", file=sys.stderr, flush=True)
    if r is None:
        raise MixsepError(f"{run_dir} had already finished training; pass a fresh --runs-dir.")
    ended = "schedule finished" if r.step == r.total_steps else (
        f"time budget reached at step {r.step} of {r.total_steps}: the schedule did not finish, lower --epochs")
    return training, r.elapsed_s / 60, ended


# what only a training run reads: with --score they would be dropped without a word
TRAINING_FLAGS = {"model", "minutes", "epochs", "batch_size", "lr", "beta2", "loss", "seed", "cpu_bf16", "compile",
                  "cuda_graphs", "device", "runs_dir"}


@one_sentence
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    named = given(parser, argv)
    if args.score:
        refuse_with(parser, named & TRAINING_FLAGS, f"--score {args.score}", "trains nothing")
    if args.dry_run:
        refuse_with(parser, named & {"epochs", "batch_size"}, "--dry-run", "trains one epoch at batch 16")
    threads = set_threads(args.threads)
    data_root(args.data_root)
    # checked before a 15-minute run, not after it
    json_out = json_output(args.json, args.overwrite, args.data_root, args.score,
                           (args.mnist_test, args.cifar_test, args.score))
    if args.as_model and not args.score:
        raise MixsepError("--as-model needs --score RUN: it scores a trained run's weights as another model.")
    scored = load_run_model(Path(args.score), as_model=args.as_model) if args.score else None
    cfg = scored[1] if scored else make_config(args)
    held, held_from = None, None
    if args.holdout:
        held_from, held = holdout_pairs(Path(args.data_root), args.holdout)
        if scored and not 0 < cfg.train_size <= held_from:  # it trained on the first train_size images
            raise MixsepError(f"{args.score} trained on {cfg.train_size or 'all'} CIFAR training images, which "
                              f"reach past the first {held_from}: --holdout {args.holdout} would score images it saw.")
        if not scored:
            cfg.train_size = held_from
    if args.dry_run and not scored:  # the plumbing only: one epoch of DRY_PAIRS, not of the whole set
        cfg.train_size = min(cfg.train_size or DRY_PAIRS, DRY_PAIRS)
    # the files it is scored on are read first: a wrong path stops here, not after a 15-minute run
    test = load_pairs(Path(args.data_root), "test", mnist_path=args.mnist_test, cifar_path=args.cifar_test)
    print(f"command: {command_line()}")
    t0 = time.perf_counter()
    if scored:
        model, _, info = scored
        run_dir = Path(args.score)
        metrics = read_metrics(run_dir)
        # the checkpoint's training time counts every resume; metrics.csv's elapsed_s restarts with each one
        steps, minutes = info["step"], (info["trained_s"] / 60 if info.get("trained_s") else
                                        float(metrics["elapsed_s"].iloc[-1]) / 60 if len(metrics) else float("nan"))
        ended = f"scored {info['path']} (step {steps})" + (f" as {args.as_model}" if args.as_model else "")
        calib = data_calibration_pairs(Path(args.data_root), end=held_from)  # none of the held-out images
    else:
        if PRESETS[cfg.model]["epochs"] == "auto" and args.epochs is None and not args.dry_run:
            cfg.epochs, sps = fit_epochs(cfg)
            print(f"probe: {sps:.0f} samples/s, so {cfg.epochs} epochs fill {BUDGET_USE:.0%} of {cfg.max_minutes:g} min")
        run_dir = new_run_dir(Path(args.runs_dir), cfg)
        print(f"run folder: {run_dir} ({threads} threads, device {cfg.device})")
        print(f"config: {json.dumps(cfg.to_dict())}")
        training, minutes, ended = train(cfg, run_dir)
        model, steps = training.model, training.step
        calib = calibration_pairs(training)
    print(f"trained {steps} steps ({steps * cfg.batch_size} samples) in {minutes:.2f} min: {ended}")
    count = 32 if args.dry_run else 0
    results = {"command": command_line(), "run_dir": str(run_dir), "config": cfg.to_dict(),
               "steps": steps, "train_minutes": minutes, "ended": ended, "threads": threads,
               "scored_as": args.as_model or cfg.model}
    lines = []
    for name, pairs in (("holdout", held), ("quality", test)):
        if pairs is None:
            continue
        ev = evaluate(model, pairs, count=count, calibration=calib)
        what = (f"held-out CIFAR training images {held_from}..{held_from + len(pairs) - 1} with MNIST test digits"
                if name == "holdout" else f"test pairs ({args.cifar_test or 'CIFAR test split'} with {args.mnist_test or 'MNIST test split'})")
        w = ev.weights["mnist"]
        # a mixture-consistent model leaves no residual, and the fitted weight is 0/0 noise
        w_text = f"{w:.3f}" if -1 <= w <= 2 else "meaningless (no residual to split)"
        print(f"\n{ev.n} {what}, data_range=1.0; optimal projection weight mnist {w_text}")
        print(table(ev))
        print("SSIM: torchmetrics, the headline (border windows reflect-padded); "
              "SSIM_valid: scikit-image's valid windows only (the 5-pixel border dropped)")
        s = summary(ev)
        results[name] = {"summary": s, "rows": ev.rows, "n": ev.n, "pairs": what, "weights": ev.weights}
        lines.append(summary_line(name, s, minutes))
    results["total_minutes"] = (time.perf_counter() - t0) / 60
    if json_out:
        write_output(json_out, json.dumps(results, indent=2))
        print(f"wrote {json_out}")
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
