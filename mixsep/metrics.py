"""Honest image metrics and the recovery modes that turn two head outputs into two sources.

Every metric is a pure function of [0, 1] tensors with ``data_range=1.0`` stated.
SSIM comes in two conventions, both named: ``ssim`` (torchmetrics, the headline) averages
the SSIM map over every pixel, reflect-padding the border windows; ``ssim_valid``
(scikit-image, Wang et al.'s reference code) averages only the windows that lie wholly
inside the image. At 32x32 the 5-pixel border is half the image, so the two differ.
The report's mistake (data_range=255 on [0, 1] images, hence its 62.79 dB) is
reproduced only in ``audit`` figures, labelled as such.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .data import PairData, mix, to_float
from .errors import MixsepError, check_count

MODES = ("direct", "subtraction", "projection_uniform", "projection_optimal", "mixture")
RECOVERY_MODES = MODES[:-1]  # "mixture" is the do-nothing baseline: shown, never the best recovery
MODE_HELP = {
    "direct": "each head's own output",
    "subtraction": "the other head's output subtracted from twice the mixture: cifar = 2*mean - mnist_hat",
    "projection_uniform": "mixture-consistency projection, residual split 1/2 : 1/2 (Wisdom et al. 2019)",
    "projection_optimal": "mixture-consistency projection, residual split by weights fitted on training pairs",
    "mixture": "the mixture itself, a do-nothing baseline",
}
SOURCES = ("mnist", "cifar")
METRIC_HELP = {
    "psnr": "PSNR in dB, data_range=1.0",
    "ssim": "SSIM, torchmetrics: Gaussian window 11, sigma 1.5, mean over every pixel with reflect-padded borders (the headline)",
    "ssim_valid": "SSIM over valid windows only (the 22x22 interior at 32x32), as scikit-image and Wang et al.'s code compute it",
}
# The report's mistake, reproduced only for the labelled audit figures: a 0-255 range on [0, 1] images.
AUDIT_DATA_RANGE = 255.0


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) batches."""
    # imported where it is used: torchmetrics brings torchvision's models, torch._dynamo and scipy.signal (seconds
    # of a cold start), which `separate`, `grid` and the pages that use only recover() and predict() never need
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(pred, target, data_range=data_range, reduction="none", dim=(1, 2, 3))


def _nhwc(*images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``images`` in the channels-last layout, in which torchmetrics' SSIM (an 11x11 convolution per channel) ran 3.5
    times as fast on a 2-core CPU (the same values to float32 rounding: 1e-9 in a mean over 1,000 pairs); a model's
    outputs come in it, the test images did not, and a mix of the two took the slow path."""
    return tuple(i.contiguous(memory_format=torch.channels_last) for i in images)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, as in Wang et al. 2004), torchmetrics' whole-image mean."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(*_nhwc(pred, target), data_range=data_range, reduction="none")


SSIM_BORDER = 5  # half of the 11-pixel window: border pixels whose window reaches past the image


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """torchmetrics' SSIM map (B, C, H, W); its mean is ``ssim``, its interior's mean ``ssim_valid``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(*_nhwc(pred, target), data_range=data_range, reduction="none",
                                               return_full_image=True)[1]


def valid_mean(ssim_full: torch.Tensor) -> torch.Tensor:
    """Per-image mean of an SSIM map over the windows wholly inside the image."""
    b = SSIM_BORDER
    return ssim_full[..., b:-b, b:-b].mean((1, 2, 3))


def ssim_valid(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM over valid windows only, as scikit-image (gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False) and Wang et al.'s reference code compute it."""
    return valid_mean(ssim_map(pred, target, data_range))


def recover(mean: torch.Tensor, mnist_hat: torch.Tensor, cifar_hat: torch.Tensor, mode: str,
            w_mnist: float = 0.5, clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(mnist, cifar) estimates under one recovery mode."""
    if mode == "direct":
        m, c = mnist_hat, cifar_hat
    elif mode == "subtraction":
        m, c = 2 * mean - cifar_hat, 2 * mean - mnist_hat
    elif mode in ("projection_uniform", "projection_optimal"):
        w = 0.5 if mode == "projection_uniform" else w_mnist
        residual = 2 * mean - mnist_hat - cifar_hat  # what the two estimates fail to explain of the mixture
        m, c = mnist_hat + w * residual, cifar_hat + (1 - w) * residual
    elif mode == "mixture":
        m, c = mean, mean
    else:
        raise ValueError(f"unknown recovery mode {mode!r}; one of {MODES}")
    if clip:
        m, c = m.clamp(0, 1), c.clamp(0, 1)
    return m, c


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (normal approximation)."""
    t = np.asarray(values, dtype=np.float64)
    n = len(t)
    if n == 0:
        return float("nan"), float("nan")
    if n == 1:
        return float(t[0]), float("nan")
    if not np.isfinite(t).all():  # a pixel-perfect image has infinite PSNR: the mean is inf, the spread undefined
        return float(t.mean()), float("nan")
    return float(t.mean()), float(1.96 * t.std(ddof=1) / math.sqrt(n))


@torch.inference_mode()
def predict(model: torch.nn.Module, mnist_u8: torch.Tensor, cifar_u8: torch.Tensor):
    """uint8 batches -> float (mnist, cifar, mean, mnist_hat, cifar_hat), all (B, 3, 32, 32) on CPU-or-device."""
    device = next(model.parameters()).device
    mnist, cifar, mean = to_float(mnist_u8.to(device), cifar_u8.to(device))
    mnist_hat, cifar_hat = model(mean)
    return mnist, cifar, mean, mnist_hat.float(), cifar_hat.float()


@torch.inference_mode()
def fit_projection_weight(model: torch.nn.Module, pairs: PairData, count: int = 512, batch_size: int = 256) -> float:
    """Least-squares weight of the MNIST head in the consistency projection.

    With head errors e_m, e_c the residual is -(e_m + e_c), so the MNIST error after
    projection is e_m - w (e_m + e_c); its mean square is smallest at
    w = <e_m, e_m + e_c> / |e_m + e_c|^2 (the variance ratio of Wisdom et al. when the
    errors are uncorrelated). The CIFAR head gets 1 - w, which keeps the sum consistent.
    """
    num = den = 0.0
    elements = 0
    for m_u8, c_u8 in pairs.eval_batches(batch_size, count):
        mnist, cifar, _, mh, ch = predict(model, m_u8, c_u8)
        e_m, e_c = mh - mnist, ch - cifar
        s = e_m + e_c
        num += float((e_m * s).sum())
        den += float((s * s).sum())
        elements += s.numel()
    # A mixture-consistent model leaves no residual (only float rounding): any weight is
    # then as good as any other, and the ratio of two roundings would be noise.
    if den <= 1e-10 * max(elements, 1):
        return 0.5
    return num / den


@dataclass
class Evaluation:
    rows: list[dict]               # one per (source, mode): psnr/ssim/ssim_valid mean and 95% CI, n
    per_image: pd.DataFrame        # index, source, mode, psnr, ssim, ssim_valid
    audit: list[dict]              # the report's data_range=255 figures, direct mode
    weights: dict = field(default_factory=dict)
    n: int = 0

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def best(self, source: str) -> dict:
        """The recovery mode with the highest mean PSNR for a source (the do-nothing baseline excluded)."""
        return max((r for r in self.rows if r["source"] == source and r["mode"] in RECOVERY_MODES),
                   key=lambda r: r["psnr_mean"])

    def best_mode(self, source: str) -> str:
        """best()'s mode, or "all equal" where every recovery mode scores the same: an interval model's
        estimates average back to the mixture, so direct, subtraction and projection coincide."""
        scores = [r["psnr_mean"] for r in self.rows if r["source"] == source and r["mode"] in RECOVERY_MODES]
        # every mode infinite too (a pair predicted exactly: inf - inf is NaN, and it read "direct": QA)
        same = all(s == scores[0] for s in scores) or max(scores) - min(scores) < 1e-6
        return "all equal" if same else self.best(source)["mode"]

    def to_markdown(self) -> str:
        """The table as Markdown: one row per recovery mode, both sources side by side."""
        head = [f"{S} {what}" for S in ("MNIST", "CIFAR") for what in ("PSNR (dB)", "SSIM", "SSIM (valid windows)")]
        lines = ["| recovery mode | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        by = {(r["source"], r["mode"]): r for r in self.rows}
        for mode in MODES:
            cells = []
            for source in SOURCES:
                r = by[(source, mode)]
                cells += [_mean_ci(r["psnr_mean"], r["psnr_ci95"], 2), _mean_ci(r["ssim_mean"], r["ssim_ci95"], 3),
                          _mean_ci(r["ssim_valid_mean"], r["ssim_valid_ci95"], 3)]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        for a in self.audit:
            cells = [f"*{a['psnr_data_range_255']:.2f}*", f"*{a['ssim_data_range_255']:.3f}*", ""]
            cells = cells + [""] * 3 if a["source"] == "mnist" else [""] * 3 + cells
            lines.append(f"| *audit: the report's data_range=255 error, direct, {a['source']}* | " + " | ".join(cells) + " |")
        spread = ("1 test pair, so no confidence interval" if self.n == 1 else
                  f"{self.n} test pairs; ± is the half-width of the 95% confidence interval")
        return "\n".join(lines) + (f"\n\n{spread}. "
                                   "SSIM is torchmetrics' (reflect-padded borders); SSIM (valid windows) is "
                                   "scikit-image's, which drops the 5-pixel border.\n")

    def to_json(self) -> dict:
        return {"rows": self.rows, "audit": self.audit, "weights": self.weights, "n": self.n,
                "data_range": 1.0, "modes": MODE_HELP, "metrics": METRIC_HELP}


def _mean_ci(mean: float, ci: float, digits: int) -> str:
    """A table cell: the mean ± its interval's half-width; the mean alone where there is no interval (one pair: it
    read "11.82 ± nan": QA)."""
    return f"{mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if math.isfinite(ci) else "")


@torch.inference_mode()
def evaluate(model: torch.nn.Module, pairs: PairData, count: int = 0, batch_size: int = 256,
             w_mnist: float | None = None, calibration: PairData | None = None,
             progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Score every recovery mode for both sources over the first ``count`` pairs (all if 0).

    ``w_mnist`` for the optimal projection comes from ``calibration`` pairs (held-out
    training pairs) when not given; with neither it falls back to 1/2 and says so.
    """
    check_count("count", count, 0)
    check_count("batch_size", batch_size, 1)
    if not len(pairs):
        raise MixsepError("There are no pairs to score.")
    model.eval()
    if w_mnist is None:
        w_mnist = fit_projection_weight(model, calibration) if calibration is not None else 0.5
    total = min(count or len(pairs), len(pairs))
    records, audit_records, done = [], [], 0
    for m_u8, c_u8 in pairs.eval_batches(batch_size, total):
        mnist, cifar, mean, mh, ch = predict(model, m_u8, c_u8)
        index = torch.arange(done, done + len(mnist))
        for mode in MODES:
            est = recover(mean, mh, ch, mode, w_mnist)
            for source, pred, target in zip(SOURCES, est, (mnist, cifar)):
                full = ssim_map(pred, target)  # one SSIM pass gives both conventions
                records.append(pd.DataFrame({"index": index, "source": source, "mode": mode,
                                             "psnr": psnr(pred, target).cpu(), "ssim": full.mean((1, 2, 3)).cpu(),
                                             "ssim_valid": valid_mean(full).cpu()}))
                if mode == "direct":
                    audit_records.append(pd.DataFrame({
                        "source": source,
                        "psnr": psnr(pred, target, data_range=AUDIT_DATA_RANGE).cpu(),
                        "ssim": ssim(pred, target, data_range=AUDIT_DATA_RANGE).cpu()}))
        done += len(mnist)
        if progress:
            progress(done, total)
    per_image = pd.concat(records, ignore_index=True)
    rows = []
    for (source, mode), g in per_image.groupby(["source", "mode"], sort=False):
        pm, pc = mean_ci(g["psnr"].to_numpy())
        sm, sc = mean_ci(g["ssim"].to_numpy())
        vm, vc = mean_ci(g["ssim_valid"].to_numpy())
        rows.append({"source": source, "mode": mode, "psnr_mean": pm, "psnr_ci95": pc,
                     "ssim_mean": sm, "ssim_ci95": sc, "ssim_valid_mean": vm, "ssim_valid_ci95": vc, "n": len(g)})
    audit_df = pd.concat(audit_records, ignore_index=True)
    audit = [{"source": s, "mode": "direct", "psnr_data_range_255": float(g["psnr"].mean()),
              "ssim_data_range_255": float(g["ssim"].mean()), "n": len(g),
              "note": "the report's error: data_range=255 on [0, 1] images adds 20*log10(255) = 48.13 dB"}
             for s, g in audit_df.groupby("source", sort=False)]
    weights = {"mnist": w_mnist, "cifar": 1 - w_mnist,
               "fitted_on": "training pairs" if calibration is not None else "none (fell back to 1/2)"}
    return Evaluation(rows, per_image, audit, weights, total)


__all__ = ["MODES", "MODE_HELP", "METRIC_HELP", "psnr", "ssim", "ssim_valid", "ssim_map", "recover", "mean_ci", "predict", "fit_projection_weight",
           "evaluate", "Evaluation", "mix"]
