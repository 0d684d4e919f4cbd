"""Metrics against independent references, and the algebra of the recovery modes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d
from skimage.metrics import structural_similarity

from mixsep import metrics as M
from mixsep.data import load_pairs, to_float


def _pair(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 3, 32, 32, generator=g)
    pred = (target + 0.1 * torch.randn(b, 3, 32, 32, generator=g)).clamp(0, 1)
    return pred, target


def test_psnr_matches_numpy_formula():
    pred, target = _pair()
    mse = ((pred - target).double() ** 2).mean(dim=(1, 2, 3)).numpy()
    ref = 10 * np.log10(1.0 / mse)
    assert np.allclose(M.psnr(pred, target).numpy(), ref, atol=1e-4)


def _ssim_numpy(x, y):
    """Wang et al. (2004) with an 11-tap Gaussian (sigma 1.5), mirror (whole-sample reflect) padding, mean over the whole map."""
    taps = np.arange(11) - 5
    k = np.exp(-taps ** 2 / (2 * 1.5 ** 2))
    k /= k.sum()

    def blur(a):
        return correlate1d(correlate1d(a, k, axis=0, mode="mirror"), k, axis=1, mode="mirror")
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    maps = []
    for xc, yc in zip(x, y):
        mx, my = blur(xc), blur(yc)
        sxx, syy, sxy = blur(xc * xc) - mx ** 2, blur(yc * yc) - my ** 2, blur(xc * yc) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2)))
    return np.mean(maps)


def test_ssim_matches_numpy_formula_and_scikit_image():
    pred, target = _pair(1)
    ours = M.ssim(pred, target).numpy()
    exact = [_ssim_numpy(p.double().numpy(), t.double().numpy()) for p, t in zip(pred, target)]
    assert np.allclose(ours, exact, atol=1e-5)
    # scikit-image drops the 5-pixel border windows that torchmetrics keeps (reflect-padded): close, not equal
    ref = [structural_similarity(t.numpy(), p.numpy(), data_range=1.0, channel_axis=0, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False) for p, t in zip(pred, target)]
    assert np.allclose(ours, ref, atol=5e-3)


def _realish_pairs(data_root):
    """Targets from the tiny real-format files (digits with black background, smooth colour images),
    and predictions degraded the way a separator errs: blurred, a little noise, clipped."""
    pairs = load_pairs(data_root, "test")
    mnist, cifar, _ = to_float(pairs.mnist[:6], pairs.cifar[:6])
    g = torch.Generator().manual_seed(5)
    out = []
    for target in (mnist.contiguous(), cifar):
        blurred = torch.nn.functional.avg_pool2d(target, 3, stride=1, padding=1, count_include_pad=False)
        out.append(((0.7 * target + 0.3 * blurred + 0.03 * torch.randn(target.shape, generator=g)).clamp(0, 1), target))
    return out


def test_valid_window_ssim_matches_scikit_image(data_root):
    for pred, target in _realish_pairs(data_root):
        ref = np.array([structural_similarity(t.double().numpy(), p.double().numpy(), data_range=1.0, channel_axis=0,
                                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                        for p, t in zip(pred, target)])
        valid = M.ssim_valid(pred, target).numpy()
        assert np.allclose(valid, ref, atol=1e-4)
        # the headline keeps torchmetrics' whole-image mean, which is a different number at 32x32
        assert np.abs(M.ssim(pred, target).numpy() - ref).max() > 1e-3


def test_report_error_is_a_constant_offset_of_48_dB():
    pred, target = _pair(2)
    diff = M.psnr(pred, target, data_range=255.0) - M.psnr(pred, target)
    assert torch.allclose(diff, torch.full_like(diff, 20 * math.log10(255)), atol=1e-3)


def test_subtraction_error_is_minus_the_mnist_head_error_before_clipping():
    g = torch.Generator().manual_seed(3)
    mnist, cifar = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    mean = (mnist + cifar) / 2
    mnist_hat = mnist + 0.2 * torch.randn(2, 3, 32, 32, generator=g)
    cifar_hat = torch.rand(2, 3, 32, 32, generator=g)
    _, cifar_sub = M.recover(mean, mnist_hat, cifar_hat, "subtraction", clip=False)
    assert torch.allclose(cifar_sub - cifar, -(mnist_hat - mnist), atol=1e-6)
    mnist_sub, _ = M.recover(mean, mnist_hat, cifar_hat, "subtraction", clip=False)
    assert torch.allclose(mnist_sub - mnist, -(cifar_hat - cifar), atol=1e-6)


@pytest.mark.parametrize("mode", ["projection_uniform", "projection_optimal"])
def test_projections_are_mixture_consistent(mode):
    g = torch.Generator().manual_seed(4)
    mean, mh, ch = (torch.rand(2, 3, 8, 8, generator=g) for _ in range(3))
    m, c = M.recover(mean, mh, ch, mode, w_mnist=0.8, clip=False)
    assert torch.allclose(m + c, 2 * mean, atol=1e-6)


def test_modes_clip_to_valid_images():
    mean = torch.full((1, 3, 4, 4), 0.9)
    m, c = M.recover(mean, torch.zeros_like(mean), torch.zeros_like(mean), "subtraction")
    assert m.max() <= 1 and c.max() <= 1


def test_mean_ci():
    m, ci = M.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and ci == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert math.isnan(M.mean_ci([5.0])[1])


class _PerfectMnistHead(torch.nn.Module):
    """Knows the true digits of a fixed batch; its CIFAR head outputs grey. Used to check the modes."""

    def __init__(self, mnist_by_mean):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.lookup = mnist_by_mean

    def forward(self, mean):
        mnist = self.lookup(mean)
        return mnist, torch.full_like(mean, 0.5)


def test_evaluate_rows_and_the_optimal_weight_on_a_known_case(data_root):
    pairs = load_pairs(data_root, "test")
    mnist_all = pairs.mnist.float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    cifar_all = pairs.cifar.float() / 255
    means = (mnist_all + cifar_all) / 2

    def lookup(mean):  # find each mixture's true digit: an oracle MNIST head
        d = ((mean.unsqueeze(1) - means.unsqueeze(0)) ** 2).flatten(2).sum(-1)
        return mnist_all[d.argmin(1)]

    model = _PerfectMnistHead(lookup)
    # the MNIST head has no error, so all of the residual belongs to the CIFAR head: w_mnist = 0
    w = M.fit_projection_weight(model, pairs, count=32)
    assert w == pytest.approx(0.0, abs=1e-6)
    ev = M.evaluate(model, pairs, count=20, w_mnist=w)
    table = ev.table().set_index(["source", "mode"])
    assert len(table) == 10 and (table["n"] == 20).all()
    assert table.loc[("mnist", "direct"), "psnr_mean"] > 90  # exact up to float error
    assert table.loc[("cifar", "subtraction"), "psnr_mean"] > 90  # 2*mean - perfect mnist = cifar
    assert table.loc[("cifar", "projection_optimal"), "psnr_mean"] > 90
    mix_psnr = M.psnr(means[:20], cifar_all[:20]).mean().item()
    assert table.loc[("cifar", "mixture"), "psnr_mean"] == pytest.approx(mix_psnr, rel=1e-5)
    assert ev.best("cifar")["mode"] in ("subtraction", "projection_optimal")
    audit = {a["source"]: a for a in ev.audit}
    direct_cifar = table.loc[("cifar", "direct"), "psnr_mean"]
    assert audit["cifar"]["psnr_data_range_255"] == pytest.approx(direct_cifar + 20 * math.log10(255), abs=1e-3)
    assert set(ev.to_json()) >= {"rows", "audit", "weights", "n", "metrics"}
    # both SSIM conventions, per image and in the table, each the mean of its own per-image column
    rows = ev.to_json()["rows"]
    assert all({"ssim_mean", "ssim_valid_mean", "ssim_valid_ci95"} <= set(r) for r in rows)
    g = ev.per_image[(ev.per_image["source"] == "cifar") & (ev.per_image["mode"] == "direct")]
    assert table.loc[("cifar", "direct"), "ssim_valid_mean"] == pytest.approx(g["ssim_valid"].mean())
    cifar, mean = cifar_all[:20], means[:20]
    assert np.allclose(g["ssim_valid"], M.ssim_valid(torch.full_like(mean, 0.5), cifar).numpy(), atol=1e-6)
    assert "SSIM (valid windows)" in ev.to_markdown()


def test_evaluate_reports_progress_and_respects_count(data_root):
    from mixsep.model import build_model

    model = build_model("faithful", pretrained=False)
    seen = []
    ev = M.evaluate(model, load_pairs(data_root, "test"), count=30, batch_size=16, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(16, 30), (30, 30)] and ev.n == 30
    assert set(ev.per_image["mode"]) == set(M.MODES) and len(ev.per_image) == 30 * 10


class _ConsistentModel(torch.nn.Module):
    """Estimates that always average to the mixture: no residual for a projection to split."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, mean):
        m = (mean.mean(1, keepdim=True) * 0.7).expand(-1, 3, -1, -1)
        return m, 2 * mean - m


def test_projection_weight_of_a_consistent_model_is_one_half_not_noise(data_root):
    assert M.fit_projection_weight(_ConsistentModel(), load_pairs(data_root, "test"), count=32) == 0.5


def test_best_mode_is_never_the_do_nothing_mixture():
    """One definition of 'best' (Compare, the benchmarks): the mixture baseline is excluded even when it wins."""
    import importlib
    import sys
    from pathlib import Path

    from mixsep.metrics import Evaluation

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        benchlib = importlib.import_module("benchlib")
    finally:
        sys.path.pop(0)

    rows = [{"source": "mnist", "mode": m, "psnr_mean": v, "ssim_mean": 0.5}
            for m, v in (("direct", 10.0), ("subtraction", 11.0), ("projection_uniform", 9.0),
                         ("projection_optimal", 9.5), ("mixture", 40.0))]
    ev = Evaluation(rows=rows, per_image=None, audit=[])
    assert ev.best("mnist")["mode"] == "subtraction"
    assert benchlib.best(ev, "mnist")["mode"] == "subtraction"
    assert ev.best_mode("mnist") == "subtraction"
    equal = [dict(r, psnr_mean=31.5 if r["mode"] != "mixture" else 20.0) for r in rows]  # an interval model
    assert Evaluation(rows=equal, per_image=None, audit=[]).best_mode("mnist") == "all equal"
    # a pair it predicts exactly (a constant mixture pins the digit): every mode's mean is inf, and it read "direct"
    perfect = [dict(r, psnr_mean=math.inf) for r in rows]
    assert Evaluation(rows=perfect, per_image=None, audit=[]).best_mode("mnist") == "all equal"
    perfect[1]["psnr_mean"] = 30.0
    assert Evaluation(rows=perfect, per_image=None, audit=[]).best_mode("mnist") == "direct"
