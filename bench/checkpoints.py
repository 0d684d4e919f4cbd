"""What checkpoints cost a run whose epochs are short, as they are on a GPU:

    python bench/checkpoints.py --data-root ../shared/data [--model unet_digit_rich] [--rounds 3]

On an H200 an epoch of `unet_digit_rich` at batch 256 took a quarter of a second, and writing
last.pt (the weights and Adam's state, 18.6 MB, fsync'd) and epoch-E.pt at each epoch's end took
40 of the run's 180 seconds (docs/benchmarks.md, "On a GPU"). `checkpoint_seconds` (default 10)
writes them at most once in that many seconds. This script trains one short run both ways, in
alternating rounds on this machine, through mixsep's own training generator:

- `every epoch`: checkpoint_seconds=0, what every run did before;
- `floor`: the default.

Small batches on a small training set make the CPU's epochs short (a fraction of a second), as a
GPU's are; it prints each form's median wall seconds, the checkpoints each wrote, and the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import at_least, command_line, data_root, one_sentence, set_threads  # noqa: E402

from mixsep import TrainConfig  # noqa: E402
from mixsep.train import Training  # noqa: E402


def one_run(cfg: TrainConfig, folder: Path) -> tuple[float, int]:
    """(wall seconds from the first step to the run's end, its last checkpoint included; checkpoints written)."""
    training = Training(cfg, folder)
    written = 0
    save = training._checkpoint

    def counted(epoch):
        nonlocal written
        written += 1
        save(epoch)

    training._checkpoint = counted
    t0 = None
    for _ in training.steps():  # timed from the first step: loading the data is the same for both
        t0 = t0 or time.perf_counter()
    return time.perf_counter() - t0, written


@one_sentence
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--model", default="unet_digit_rich")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--train-size", type=int, default=16, help="training pairs: train_size / batch_size steps an epoch")
    p.add_argument("--epochs", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    return measure(args)


def measure(args) -> int:
    for flag in ("batch_size", "rounds"):  # zero divided by, or left nothing to take a median of, after the work
        at_least(f"--{flag.replace('_', '-')}", getattr(args, flag))
    data_root(args.data_root)
    threads = set_threads(args.threads)
    forms = {"every epoch": 0.0, "floor": TrainConfig().checkpoint_seconds}

    def config(seconds: float) -> TrainConfig:
        return TrainConfig(data_root=args.data_root, model=args.model, pretrained=False, device="cpu",
                           batch_size=args.batch_size, train_size=args.train_size, epochs=args.epochs,
                           checkpoint_every=10**9, checkpoint_seconds=seconds).validate()

    config(0.0)  # a bad --epochs or --model is refused before the header, not inside the first round
    print(f"command: {command_line()}")
    print(f"{args.model}, batch {args.batch_size}, {args.train_size // args.batch_size} steps an epoch, "
          f"{args.epochs} epochs, {threads} threads, {args.rounds} alternating rounds")
    got: dict[str, list[tuple[float, int]]] = {k: [] for k in forms}
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            for name, seconds in forms.items():
                got[name].append(one_run(config(seconds), Path(work) / f"{r}-{len(got[name])}-{seconds:g}"))
    med = {k: statistics.median(t for t, _ in v) for k, v in got.items()}
    for name in forms:
        print(f"  {name:12s} checkpoint_seconds={forms[name]:g}: {med[name]:6.2f} s median "
              f"({', '.join(f'{t:.2f}' for t, _ in got[name])}), {got[name][0][1]} checkpoints written")
    print(f"checkpoints: every_epoch_over_floor={med['every epoch'] / med['floor']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
