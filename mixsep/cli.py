"""`python -m mixsep {train,evaluate,grid,info,download}`: thin wrappers over the library."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from pathlib import Path

from .config import TrainConfig, add_train_flags, config_from_args, default_data_root, default_runs_dir
from .errors import MixsepError

def _add_data_root(p):
    p.add_argument("--data-root", default=default_data_root(),
                   help="folder with MNIST/ and cifar-10-batches-py/ or cifar10/*.npz (env MIXSEP_DATA_ROOT; default ./data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mixsep", description="Separate MNIST digits from CIFAR-10 images in their pixel-wise mean.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a separator; prints the run folder as its last line")
    t.add_argument("--runs-dir", default=default_runs_dir(), help="where run folders go (env MIXSEP_RUNS_DIR; default ./runs)")
    t.add_argument("--run-dir", default=None, help="train into (or resume) this exact folder instead of a new one")
    add_train_flags(t)  # one flag per TrainConfig field, from its metadata
    t.add_argument("--config", default=None,
                   help="read every training setting from this config.json (a run's own, or one the dashboard wrote); "
                        "the flags above are then ignored")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="PSNR/SSIM of every recovery mode, honest and audited")
    e.add_argument("run_dir", help="a run folder (or a checkpoint file inside one)")
    _add_data_root(e)
    e.add_argument("--samples", type=int, default=0, help="test pairs to score; 0 = the whole test split")
    e.add_argument("--mnist-test", default=None, help="score these MNIST images instead (idx or npz)")
    e.add_argument("--cifar-test", default=None, help="score these CIFAR images instead (batch or npz)")
    e.add_argument("--checkpoint", default=None, help="a checkpoint file; default: the run's latest")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--json", default=None, help="also write the results to this JSON file")
    e.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")

    g = sub.add_parser("grid", help="the report's labelled sample grid as a PNG")
    g.add_argument("run_dir", help="a run folder (or a checkpoint file inside one)")
    _add_data_root(g)
    g.add_argument("--n", type=int, default=20, help="samples (columns)")
    g.add_argument("--out", default="grid.png", help="PNG to write")
    g.add_argument("--seed", type=int, default=None, help="shuffle the samples with this seed; default: the first n")
    g.add_argument("--split", choices=["test", "train"], default="test")
    g.add_argument("--checkpoint", default=None)
    g.add_argument("--errors", action="store_true", help="add rows of absolute error maps")
    g.add_argument("--no-direct", action="store_true", help="omit the row of direct CIFAR estimates")

    i = sub.add_parser("info", help="parameters, FLOPs per sample, device and data found")
    _add_data_root(i)
    i.add_argument("--model", default=None, help="one model; default: all")

    dl = sub.add_parser("download", help="fetch MNIST and CIFAR-10 with torchvision's downloaders")
    _add_data_root(dl)
    return parser


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .train import Training, new_run_dir

    if not args.config and args.run_dir and (Path(args.run_dir) / "config.json").is_file():
        args.config = str(Path(args.run_dir) / "config.json")  # resuming: the run's own settings win
        print(f"resuming {args.run_dir} with its saved config", file=sys.stderr)
    cfg = config_from_args(args)
    stop = {"flag": False}

    def on_signal(signum, frame):  # first Ctrl-C / SIGTERM: finish this step, checkpoint, exit cleanly
        stop["flag"] = True
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(Path(args.runs_dir), cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training = Training(cfg, run_dir, should_stop=lambda: stop["flag"])
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"run folder: {run_dir}", file=sys.stderr)
    bar = tqdm(total=training.total_steps, initial=training.step, disable=args.quiet, unit="step", file=sys.stderr)
    r = None
    for r in training.steps():
        bar.update(1)
        bar.set_postfix(loss=f"{r.loss:.4f}", mnist=f"{r.loss_mnist:.4f}", cifar=f"{r.loss_cifar:.4f}",
                        sps=f"{r.samples_per_s:.0f}")
    bar.close()
    if r is not None:
        print(f"final step {r.step}/{r.total_steps}: loss {r.loss:.4f} (mnist {r.loss_mnist:.4f}, cifar {r.loss_cifar:.4f})",
              file=sys.stderr)
    print(run_dir)
    return 0


def _load_model(args):
    from .train import load_run_model, pick_device

    return load_run_model(Path(args.run_dir), Path(args.checkpoint) if args.checkpoint else None, pick_device("auto"))


def cmd_evaluate(args) -> int:
    import pandas as pd

    from .data import calibration_pairs, load_pairs
    from .metrics import evaluate
    model, cfg, info = _load_model(args)
    pairs = load_pairs(Path(args.data_root), "test", mnist_path=args.mnist_test, cifar_path=args.cifar_test)
    if args.samples < 0:
        raise MixsepError(f"--samples must be 0 (all) or positive (got {args.samples}).")
    result = evaluate(model, pairs, count=args.samples, batch_size=args.batch_size,
                      calibration=calibration_pairs(Path(args.data_root)))
    pd.set_option("display.width", 140)
    print(f"checkpoint {info['path']} (step {info['step']}), {result.n} test pairs, data_range=1.0")
    print(result.table().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"optimal projection weights: mnist {result.weights['mnist']:.3f}, cifar {result.weights['cifar']:.3f} "
          f"(fitted on {result.weights['fitted_on']})")
    print("audit, the report's error (data_range=255 on [0, 1] images), direct mode:")
    for a in result.audit:
        print(f"  {a['source']}: PSNR {a['psnr_data_range_255']:.2f} dB, SSIM {a['ssim_data_range_255']:.4f}  (not a real score)")
    if args.json:
        out = result.to_json() | {"checkpoint": info, "config": cfg.to_dict()}
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(result.to_markdown())
        print(f"wrote {args.markdown}")
    return 0


def cmd_grid(args) -> int:
    from .data import load_pairs
    from .grid import grid_image, sample_indices
    model, cfg, info = _load_model(args)
    pairs = load_pairs(Path(args.data_root), args.split)
    if args.n < 1:
        raise MixsepError(f"--n must be at least 1 (got {args.n}).")
    idx = sample_indices(len(pairs), args.n, args.seed)
    img = grid_image(model, pairs, idx, show_direct=not args.no_direct, show_errors=args.errors,
                     title=f"{Path(info['path']).parent.parent.name}  step {info['step']}  ({args.split} split)")
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise MixsepError(f"Folder {out.parent} does not exist; create it or choose another --out.")
    img.save(out)
    print(out)
    return 0


def cmd_info(args) -> int:
    import torch

    from .data import data_status
    from .model import MODELS, build_model, count_parameters, flops_per_sample

    print(f"torch {torch.__version__}; device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if torch.cuda.is_available() else 'cpu'}"
          f", {torch.get_num_threads()} threads")
    for name in ([args.model] if args.model else MODELS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = build_model(name, pretrained=False)
        print(f"model {name}: {count_parameters(m) / 1e6:.2f} M parameters, "
              f"{flops_per_sample(m) / 1e6:.0f} MFLOPs per sample forward (about 3x that per training sample)")
    print(f"data root {Path(args.data_root).resolve()}:")
    for row in data_status(Path(args.data_root)):
        where = ", ".join(row["files"]) if row["found"] else f"missing (expected {row['expected']})"
        print(f"  {row['source']:5s} {row['split']:5s} {where}")
    return 0


def cmd_download(args) -> int:
    from .data import download

    download(Path(args.data_root))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "grid": cmd_grid, "info": cmd_info, "download": cmd_download}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MixsepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
