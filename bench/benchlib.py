"""Helpers the bench scripts share: scoring lines, tables and settings."""
from __future__ import annotations

import shlex
import sys

import torch

from mixsep.metrics import RECOVERY_MODES, Evaluation  # noqa: F401  (one definition of the recovery modes)


def set_threads(threads: int) -> int:
    """Pin torch's intra-op threads (0 keeps torch's default); returns the count in use."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def command_line() -> str:
    """The command that reproduces this run, for the tables in docs/benchmarks.md."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def best(ev: Evaluation, source: str) -> dict:
    """The recovery mode with the highest mean PSNR for a source: Evaluation.best, the one definition."""
    return ev.best(source)


def summary(ev: Evaluation) -> dict:
    m, c = best(ev, "mnist"), best(ev, "cifar")
    return {"mnist_psnr": m["psnr_mean"], "mnist_ssim": m["ssim_mean"], "mnist_ssim_valid": m["ssim_valid_mean"],
            "mnist_mode": m["mode"], "cifar_psnr": c["psnr_mean"], "cifar_ssim": c["ssim_mean"],
            "cifar_ssim_valid": c["ssim_valid_mean"], "cifar_mode": c["mode"]}


def summary_line(prefix: str, s: dict, minutes: float) -> str:
    return (f"{prefix}: mnist_psnr={s['mnist_psnr']:.2f} mnist_ssim={s['mnist_ssim']:.4f} "
            f"cifar_psnr={s['cifar_psnr']:.2f} cifar_ssim={s['cifar_ssim']:.4f} minutes={minutes:.2f}")


def table(ev: Evaluation) -> str:
    """Every mode's means and CIs; SSIM is torchmetrics' (the headline), SSIM_valid scikit-image's valid windows."""
    lines = [f"{'source':6s} {'mode':19s} {'PSNR dB':>8s} {'+-95%':>6s} {'SSIM':>7s} {'+-95%':>7s} "
             f"{'SSIM_valid':>10s} {'+-95%':>7s}"]
    for r in ev.rows:
        lines.append(f"{r['source']:6s} {r['mode']:19s} {r['psnr_mean']:8.2f} {r['psnr_ci95']:6.2f} "
                     f"{r['ssim_mean']:7.4f} {r['ssim_ci95']:7.4f} {r['ssim_valid_mean']:10.4f} {r['ssim_valid_ci95']:7.4f}")
    return "\n".join(lines)
