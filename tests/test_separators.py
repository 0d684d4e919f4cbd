"""mixsep.separators: every variant stays mixture-consistent, keeps the digit in its interval, learns and reloads."""
from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fake_cifar, fake_digits

from mixsep.cli import main
from mixsep.data import mix
from mixsep.model import build_model, count_parameters, feasible_interval, flops_per_sample
from mixsep.train import load_run_model, train_steps
from mixsep.separators import DigitSpace, SeparatorNet, high_frequency, to_interval, upsample_matrix

TINY = dict(widths=(8, 16, 32))  # the real widths cost seconds per test; the wiring is the same
VARIANTS = {
    "clamp": dict(),
    "fraction": dict(head="fraction"),
    "rich": dict(features="rich"),
    "residual": dict(residual=True),
    "deep-decoder": dict(decoder_depth=2),
    "refine": dict(refine_widths=(8, 16)),
    "refine-fraction-rich": dict(refine_widths=(8, 16), head="fraction", features="rich", residual=True),
    "digit-space": dict(head="fraction", digit_space=True),
    "hf": dict(head="fraction", features="hf", digit_space=True),
}


def build(kind: str, seed: int = 0) -> SeparatorNet:
    torch.manual_seed(seed)
    return SeparatorNet(**(TINY | VARIANTS[kind]))


def mixture(batch: int, seed: int = 0):
    """A grey digit-like source (strokes at 0 and 1, soft values between) and a colour source."""
    g = torch.Generator().manual_seed(seed)
    grey = torch.rand(batch, 1, 32, 32, generator=g)
    digit = torch.where(grey > 0.8, torch.ones_like(grey), torch.where(grey > 0.6, grey, torch.zeros_like(grey)))
    mnist = digit.expand(-1, 3, -1, -1)
    cifar = torch.rand(batch, 3, 32, 32, generator=g)
    return mnist, cifar, mix(mnist, cifar)


@pytest.mark.parametrize("kind", VARIANTS)
@pytest.mark.parametrize("training", [True, False])
def test_estimates_are_valid_images_that_average_to_the_mixture(kind, training):
    model = build(kind).train(training)
    _, _, mean = mixture(4)
    with torch.no_grad():
        mnist_hat, cifar_hat = model(mean)
    assert mnist_hat.shape == cifar_hat.shape == (4, 3, 32, 32)
    torch.testing.assert_close(mnist_hat + cifar_hat, 2 * mean, atol=1e-6, rtol=0)
    assert torch.equal(mnist_hat[:, 0], mnist_hat[:, 1]) and torch.equal(mnist_hat[:, 1], mnist_hat[:, 2])  # grey
    lo, hi = feasible_interval(mean)
    assert (mnist_hat[:, :1] >= lo).all() and (mnist_hat[:, :1] <= hi).all()
    assert cifar_hat.min() >= -1e-6 and cifar_hat.max() <= 1 + 1e-6


@pytest.mark.parametrize("head", ["clamp", "fraction"])
def test_heads_reach_the_bounds_exactly_and_pass_gradients_through(head):
    _, _, mean = mixture(2)
    lo, hi = feasible_interval(mean)
    z = torch.full_like(lo, -5.0, requires_grad=True)
    digit = to_interval(z, lo, hi, head, training=True)
    assert torch.equal(digit.detach(), lo)  # the black background comes out exactly 0 where lo is 0
    digit.sum().backward()
    assert (z.grad != 0).any()  # straight-through: pixels pinned at a bound still learn
    assert torch.equal(to_interval(torch.full_like(lo, 5.0), lo, hi, head, training=False), hi)


def test_fraction_head_maps_the_true_position_to_the_true_digit():
    mnist, _, mean = mixture(3)
    lo, hi = feasible_interval(mean)
    digit = mnist[:, :1]
    t = torch.where(hi > lo, (digit - lo) / (hi - lo).clamp(min=1e-12), torch.zeros_like(digit))
    torch.testing.assert_close(to_interval(t, lo, hi, "fraction", training=False), digit, atol=1e-6, rtol=0)


def test_rejects_an_unknown_head():
    with pytest.raises(ValueError, match="head must be one of"):
        SeparatorNet(head="sigmoid")


@pytest.mark.parametrize("kind", VARIANTS)
def test_every_parameter_gets_a_gradient(kind):
    model = build(kind).train()
    mnist, cifar, mean = mixture(4)
    mnist_hat, cifar_hat = model(mean)
    ((mnist_hat - mnist).pow(2).mean() + (cifar_hat - cifar).pow(2).mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("out.weight"))


@pytest.mark.parametrize("kind", ["clamp", "refine-fraction-rich"])
def test_state_dict_round_trip_gives_the_same_outputs(kind):
    model = build(kind, seed=1).train()
    _, _, mean = mixture(4)
    model(mean)  # one training forward moves the BatchNorm statistics away from their initial values
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = build(kind, seed=2)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval(), other.eval()
    with torch.no_grad():
        for a, b in zip(model(mean), other(mean)):
            assert torch.equal(a, b)


def test_a_few_steps_lower_the_error_through_both_passes():
    model = build("refine").train()
    mnist, cifar, mean = mixture(4, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def error():
        return (model(mean)[0] - mnist).pow(2).mean()

    first = error().item()
    for _ in range(20):
        opt.zero_grad()
        error().backward()
        opt.step()
    assert error().item() < 0.5 * first


def test_unet_fraction_is_the_unet_with_another_head():
    with_fraction, unet = build_model("unet_fraction"), build_model("unet")
    assert count_parameters(with_fraction) == count_parameters(unet)
    assert with_fraction.head == "fraction" and flops_per_sample(with_fraction) == flops_per_sample(unet)


@pytest.mark.heavy(10)
def test_unet_fraction_trains_and_reloads_from_its_run_folder(tiny_config, tmp_path, capsys):
    cfg = dataclasses.replace(tiny_config, model="unet_fraction", loss="log_mse", epochs=2)
    results = list(train_steps(cfg, tmp_path / "run"))
    assert results[-1].step == 12 and all(math.isfinite(r.loss) for r in results)
    model, loaded_cfg, info = load_run_model(tmp_path / "run")
    assert loaded_cfg.model == "unet_fraction" and info["step"] == 12
    _, _, mean = mixture(2)
    with torch.no_grad():
        mnist_hat, cifar_hat = model(mean)
    torch.testing.assert_close(mnist_hat + cifar_hat, 2 * mean, atol=1e-6, rtol=0)

    # the same weights scored as unet_digit: the CLI's evaluate --as-model, and its refusals
    as_digit, _, _ = load_run_model(tmp_path / "run", as_model="unet_digit")
    lo, hi = feasible_interval(mean)
    with torch.no_grad():
        torch.testing.assert_close(as_digit(mean)[0][:, :1], DigitSpace()(mnist_hat[:, :1], lo, hi))
    out = tmp_path / "scores.json"
    run, data = str(tmp_path / "run"), tiny_config.data_root
    assert main(["evaluate", run, "--data-root", data, "--as-model", "unet_digit", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["scored_as"] == "unet_digit"
    assert "scored as unet_digit" in capsys.readouterr().out
    # QA: it said "saved by another model or another version of mixsep" where the run's config names its model
    for name, says in (("faithful", "does not fit the 'faithful' architecture ("), ("nope", "Unknown model 'nope'")):
        assert main(["evaluate", run, "--data-root", data, "--as-model", name]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
        assert name == "nope" or err.endswith("); it holds the weights of a 'unet_fraction' model, as its config says.\n")


def resized_pairs(n: int, seed: int = 0):
    """(digit (n, 1, 32, 32), mean) as mixsep makes them: 28x28 digits through data.resize_mnist."""
    from mixsep.data import resize_mnist, to_float

    rng = np.random.default_rng(seed)
    digits, _ = fake_digits(n, rng)
    cifar, _ = fake_cifar(n, rng)
    mnist, _, mean = to_float(resize_mnist(digits), torch.from_numpy(cifar).permute(0, 3, 1, 2).contiguous())
    return mnist[:, :1], mean


def test_digit_space_is_mixseps_resize_and_gives_back_a_true_digit():
    a = upsample_matrix()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(a @ x @ a.T, F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))
    digit, mean = resized_pairs(16)
    lo, hi = feasible_interval(mean)
    back = DigitSpace()(digit, lo, hi)
    assert (back - digit).abs().max() < 1 / 255  # only resize_mnist's rounding to uint8 is lost
    assert DigitSpace().state_dict() == {}  # nothing to save: checkpoints are unchanged


def test_digit_space_removes_what_no_resized_digit_can_hold():
    """An error no 28x28 digit can make after the resize is removed entirely; white noise loses a
    quarter of its energy (240 of 1,024 dimensions) and more where x leaves [0, 1]."""
    digit, mean = resized_pairs(32)
    lo, hi = feasible_interval(mean)
    a = upsample_matrix()
    proj = a @ torch.linalg.pinv(a)                                 # onto what a resize can make, one axis
    g = torch.Generator().manual_seed(0)
    noise = 0.05 * torch.randn(digit.shape, generator=g, dtype=torch.float64)
    outside = (noise - proj @ noise @ proj.T).float()              # invisible to the resize
    back = DigitSpace()(digit + outside, lo, hi)
    assert (outside ** 2).mean() > 4e-4                             # about 34 dB of error to remove
    assert (back - digit).abs().max() < 1 / 255                     # all of it removed (resize rounding aside)
    assert (back >= lo).all() and (back <= hi + 1e-6).all()         # lo may pass hi by a float rounding
    white = digit + noise.float()
    zero, one = torch.zeros_like(digit), torch.ones_like(digit)
    assert ((DigitSpace()(white, zero, one) - digit) ** 2).mean() < 0.8 * ((white - digit) ** 2).mean()


def test_unet_digit_trains_as_unet_fraction_and_differs_only_at_inference():
    torch.manual_seed(0)
    fraction, digit_net = build_model("unet_fraction"), build_model("unet_digit")
    digit_net.load_state_dict(fraction.state_dict())  # strict: a unet_fraction checkpoint loads as is
    _, mean = resized_pairs(4)
    with torch.no_grad():
        for model in (fraction, digit_net):
            model.train()
        torch.testing.assert_close(digit_net(mean), fraction(mean), rtol=0, atol=0)  # training: the same function
        for model in (fraction, digit_net):
            model.eval()
        lo, hi = feasible_interval(mean)
        expected = DigitSpace()(fraction(mean)[0][:, :1], lo, hi)
        mnist_hat, cifar_hat = digit_net(mean)
    torch.testing.assert_close(mnist_hat[:, :1], expected)
    assert not torch.equal(mnist_hat, fraction(mean)[0])
    torch.testing.assert_close(mnist_hat + cifar_hat, 2 * mean, atol=1e-6, rtol=0)


def assert_consistent_and_feasible(model) -> None:
    """In eval mode: the two estimates average to the mixture and the digit lies in its interval."""
    _, mean = resized_pairs(2)
    with torch.no_grad():
        mnist_hat, cifar_hat = model.eval()(mean)
    lo, hi = feasible_interval(mean)
    torch.testing.assert_close(mnist_hat + cifar_hat, 2 * mean, atol=1e-6, rtol=0)
    assert (mnist_hat[:, :1] >= lo).all() and (mnist_hat[:, :1] <= hi + 1e-6).all()


def test_unet_digit_rich_is_unet_digit_with_the_rich_inputs():
    rich, digit = build_model("unet_digit_rich"), build_model("unet_digit")
    assert (rich.head, rich.features, type(rich.digit_space)) == ("fraction", "rich", DigitSpace)
    assert count_parameters(rich) - count_parameters(digit) == 5 * 32 * 3 * 3  # 5 more inputs to the first conv
    assert_consistent_and_feasible(rich)


def level_widths(model) -> list[int]:
    """The encoder's widths: the first of each level's two convolutions."""
    return [m.out_channels for m in model.net.encoder.modules() if isinstance(m, torch.nn.Conv2d)][::2]


def test_unet_narrow_is_unet_digit_rich_at_half_the_width():
    narrow, rich = build_model("unet_narrow"), build_model("unet_digit_rich")
    assert (narrow.head, narrow.features, type(narrow.digit_space)) == ("fraction", "rich", DigitSpace)
    assert level_widths(narrow) == [16, 32, 64, 128] and level_widths(rich) == [32, 64, 128, 256]
    assert count_parameters(rich) > 3.9 * count_parameters(narrow)
    assert_consistent_and_feasible(narrow)


def test_high_frequency_is_cifars_alone_whatever_the_digit():
    """Every digit is A x A.T (A the 32x28 resize): what the mixture holds outside that range is CIFAR's."""
    g = torch.Generator().manual_seed(0)
    a = upsample_matrix().float()
    cifar = torch.rand(2, 3, 32, 32, generator=g)
    digits = [(a @ torch.rand(2, 1, 28, 28, generator=g) @ a.T).expand(-1, 3, -1, -1) for _ in range(2)]
    first, second = (high_frequency(mix(d, cifar)) for d in digits)
    torch.testing.assert_close(first, second, atol=1e-5, rtol=0)  # the digit leaves no trace in it
    p = a @ torch.linalg.pinv(a)
    torch.testing.assert_close(first, (cifar - p @ cifar @ p.T) / 2, atol=1e-5, rtol=0)
    assert first.abs().mean() > 0.02  # and CIFAR's noise-like detail is there: it is no zero channel
    assert high_frequency(mix(digits[0], torch.zeros_like(cifar))).abs().max() < 1e-5  # a digit alone holds none


def test_unet_hf_is_unet_narrow_with_three_more_inputs():
    hf, narrow = build_model("unet_hf"), build_model("unet_narrow")
    assert (hf.head, hf.features, type(hf.digit_space)) == ("fraction", "hf", DigitSpace)
    assert level_widths(hf) == level_widths(narrow)
    assert count_parameters(hf) - count_parameters(narrow) == 3 * 16 * 3 * 3  # 3 more inputs to the first conv
    assert_consistent_and_feasible(hf)


def test_unet_hf_silu_is_unet_hf_with_silu_where_it_has_relu():
    torch.manual_seed(0)
    silu, hf = build_model("unet_hf_silu"), build_model("unet_hf")
    acts = [type(m) for m in silu.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.SiLU))]
    assert acts == [torch.nn.SiLU] * sum(isinstance(m, torch.nn.ReLU) for m in hf.modules()) and len(acts) == 11
    assert {k: v.shape for k, v in silu.state_dict().items()} == {k: v.shape for k, v in hf.state_dict().items()}
    assert (silu.head, silu.features, type(silu.digit_space)) == ("fraction", "hf", DigitSpace)
    silu.load_state_dict(hf.state_dict())  # the same weights compute another function: the activation is all
    mean = torch.rand(4, 3, 32, 32)
    hf.train(), silu.train()  # no DigitSpace after the net: the raw estimates differ
    assert not torch.allclose(silu(mean)[0], hf(mean)[0])
    assert_consistent_and_feasible(silu)
    with pytest.raises(ValueError, match="act one of \\('relu', 'silu'\\)"):
        SeparatorNet(act="tanh")
