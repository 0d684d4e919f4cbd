"""The separators: registry, shapes, the U-Net's mixture consistency, learning, checkpoints."""
from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F

from mixsep import MixsepError, TrainConfig
from mixsep import run as R
from mixsep import train as T
from mixsep.data import mix
from mixsep.model import MODELS, FaithfulSeparator, SmallMapConv2d, build_model, feasible_interval, flops_per_sample


def quiet_build(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # offline: no ImageNet weights for the faithful encoder
        return build_model(name, pretrained=False)


def real_mixture(batch: int, seed: int = 0):
    """A grey digit-like source and a colour source in [0, 1], and their mean."""
    g = torch.Generator().manual_seed(seed)
    mnist = (torch.rand(batch, 1, 32, 32, generator=g) > 0.8).float().expand(-1, 3, -1, -1)
    cifar = torch.rand(batch, 3, 32, 32, generator=g)
    return mnist, cifar, mix(mnist, cifar)


def test_registry_keeps_faithful_the_default():
    assert TrainConfig().model == "faithful"
    assert {"faithful", "unet"} <= set(MODELS)
    with pytest.raises(MixsepError, match="Unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(MixsepError) as e:  # a config.json written by hand: its control characters shown as escapes
        build_model("tiny\x00\x1b[2J")
    assert str(e.value).startswith("Unknown model 'tiny\\x00\\x1b[2J';")


@pytest.mark.parametrize("name", ["faithful", "unet", "tiny"])
def test_shapes_and_range(name):
    model = quiet_build(name).eval()
    *_, mean = real_mixture(3)
    with torch.no_grad():
        mnist_hat, cifar_hat = model(mean)
    assert mnist_hat.shape == cifar_hat.shape == (3, 3, 32, 32)
    for x in (mnist_hat, cifar_hat):
        assert x.min() >= 0 and x.max() <= 1  # valid images either way: sigmoid or the feasible clamp


def test_feasible_interval_holds_the_truth():
    mnist, cifar, mean = real_mixture(8)
    lo, hi = feasible_interval(mean)
    assert lo.shape == hi.shape == (8, 1, 32, 32)
    assert (lo <= mnist[:, :1] + 1e-6).all() and (mnist[:, :1] <= hi + 1e-6).all()


@pytest.mark.parametrize("training", [True, False])
def test_unet_is_mixture_consistent_by_construction(training):
    model = quiet_build("unet").train(training)
    _, _, mean = real_mixture(4)
    mnist_hat, cifar_hat = model(mean)
    assert torch.allclose((mnist_hat + cifar_hat) / 2, mean, atol=1e-6)
    assert torch.equal(mnist_hat[:, 0], mnist_hat[:, 1]) and torch.equal(mnist_hat[:, 0], mnist_hat[:, 2])  # grey
    assert cifar_hat.min() >= -1e-6 and cifar_hat.max() <= 1 + 1e-6


def test_straight_through_clamp_lets_clamped_pixels_learn():
    """A pixel clamped to its bound still gets a gradient that points back into the interval."""
    model = quiet_build("unet").train()
    _, _, mean = real_mixture(2)
    with torch.no_grad():  # push every raw output far below the interval
        model.decoder.out.bias.fill_(-10.0)
    mnist_hat, _ = model(mean)
    lo, _ = feasible_interval(mean)
    assert torch.equal(mnist_hat[:, :1], lo)
    (mnist_hat - 1).pow(2).mean().backward()  # targets above the bound
    assert model.decoder.out.bias.grad.item() < 0  # gradient descent raises the output


@pytest.mark.parametrize("name", ["faithful", "unet", "tiny"])
def test_a_few_steps_on_one_batch_lower_the_loss(name):
    torch.manual_seed(0)
    model = quiet_build(name).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    mnist, cifar, mean = real_mixture(4)
    losses = []
    for _ in range(8):
        mnist_hat, cifar_hat = model(mean)
        loss = F.mse_loss(mnist_hat, mnist) + F.mse_loss(cifar_hat, cifar)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_unet_checkpoint_round_trips(tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, model="unet")
    training = T.Training(cfg, tmp_path / "run")
    list(training.steps())
    model, loaded_cfg, info = T.load_run_model(tmp_path / "run")
    assert loaded_cfg.model == "unet" and info["step"] == 6
    training.model.eval()
    _, _, mean = real_mixture(2)
    with torch.no_grad():
        for a, b in zip(training.model(mean), model(mean)):
            assert torch.equal(a, b)


def test_log_mse_objective_trains_and_still_logs_mses(tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, model="unet", loss="log_mse", train_size=16, epochs=10, lr=2e-3)
    results = list(T.train_steps(cfg, tmp_path / "run"))
    assert all(r.loss_mnist > 0 and r.loss == pytest.approx(r.loss_mnist + r.loss_cifar) for r in results)
    assert results[-1].loss < 0.8 * results[0].loss
    with pytest.raises(MixsepError, match="Unknown loss 'l1'"):
        dataclasses.replace(tiny_config, loss="l1").validate()


def faithful_pair(seed: int = 0):
    """The faithful model with random weights twice: decoders apart (today's checkpoints' form) and grouped."""
    torch.manual_seed(seed)
    plain = quiet_build("faithful")
    with torch.no_grad():  # random biases too: the default init leaves them small
        for p in plain.parameters():
            if p.ndim == 1:
                p.uniform_(-0.5, 0.5)
    plain.grouped = False
    grouped = copy.deepcopy(plain)
    grouped.grouped = True
    return plain, grouped


@pytest.mark.heavy(12)
def test_grouped_decoders_are_the_same_function_outputs_gradients_and_optimiser_state():
    plain, grouped = faithful_pair()
    mnist, cifar, mean = real_mixture(4, seed=1)
    calls = []
    grouped.mnist_head.register_forward_hook(lambda *_: calls.append("mnist_head"))
    outs, grads, opts = [], [], []
    for model in (plain, grouped):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        mnist_hat, cifar_hat = model(mean)
        loss = F.mse_loss(mnist_hat, mnist) + 2 * F.mse_loss(cifar_hat, cifar)  # unequal weights: heads not swappable
        loss.backward()
        outs.append((mnist_hat.detach(), cifar_hat.detach()))
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
        opt.step()
        opts.append(opt)
    assert calls == []  # the grouped form never ran a decoder on its own
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6), k
    assert any(g.abs().max() > 0 for k, g in grads[1].items() if k.startswith("cifar_head"))  # both heads learn
    # the optimiser's state has one entry per parameter in the same order, so either form resumes the other's
    state = opts[0].state_dict()
    assert [s["exp_avg"].shape for s in state["state"].values()] == [p.shape for p in grouped.parameters()]
    opts[1].load_state_dict(state)


@pytest.mark.parametrize("size,stride,groups", [(1, 1, 1), (1, 2, 1), (2, 2, 1), (1, 1, 4), (2, 2, 4),
                                                (2, 1, 1), (4, 1, 1), (3, 2, 1)])
def test_a_small_map_conv_is_the_plain_conv_and_skips_only_products_with_padding(size, stride, groups):
    torch.manual_seed(size * 10 + stride + groups)
    conv = SmallMapConv2d(8, 12, 3, stride=stride, padding=1, groups=groups)
    x = torch.randn(5, 8, size, size, requires_grad=True)
    want = F.conv2d(x, conv.weight, conv.bias, stride, 1, 1, groups)
    got = conv(x)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
    (g_x, g_w), (w_x, w_w) = (torch.autograd.grad((y * torch.arange(y.numel()).view_as(y)).sum(), (x, conv.weight))
                              for y in (got, want))
    assert torch.allclose(g_x, w_x, atol=1e-5) and torch.allclose(g_w, w_w, atol=1e-5)
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        conv(x)
    taps = {1: 1, 2: 4}[size] if (size == 1 or (size, stride) == (2, 2)) else 9  # the taps it multiplies
    assert counter.get_total_flops() == 2 * 5 * 12 * (8 // groups) * taps * want.shape[-1] * want.shape[-2]


@pytest.mark.heavy(8)
def test_skipping_padding_taps_is_the_same_network_outputs_gradients_training_and_checkpoints():
    skip, _ = faithful_pair(seed=4)
    plain = copy.deepcopy(skip)
    plain.skip_padding = False
    assert skip.skip_padding and not plain.skip_padding
    # torchvision's names and shapes: checkpoints of either form, and of the code before it, load into both
    from torchvision.models import resnet18
    assert skip.encoder.net.state_dict().keys() == resnet18().state_dict().keys() - {"fc.weight", "fc.bias"}
    assert skip.state_dict().keys() == plain.state_dict().keys()
    mnist, cifar, mean = real_mixture(4, seed=5)
    outs, grads, weights = [], [], []
    for model in (skip, plain):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for step in range(2):  # two Adam steps: equal gradients move equal weights, the skipped taps' included
            mnist_hat, cifar_hat = model(mean)
            opt.zero_grad()
            (F.mse_loss(mnist_hat, mnist) + 2 * F.mse_loss(cifar_hat, cifar)).backward()
            if step == 0:
                grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
        outs.append([t.detach() for t in model(mean)])
        weights.append([p.detach() for p in model.parameters()])
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(*grads):  # the same to float rounding, relative to each tensor's largest
        assert torch.allclose(a, b, rtol=0, atol=1e-4 * float(b.abs().max()) + 1e-12)
    # Adam's step is lr * m / sqrt(v): the rounding of a near-zero gradient can move a weight by a good part
    # of lr (up to 6e-5 here with one thread, on 1 to 63 weights of a layer), so the weights agree to lr / 10
    for a, b in zip(*weights):
        assert torch.allclose(a, b, rtol=0, atol=1e-4)
    # the network's FLOPs are counted the same in both forms; what the shortcut multiplies is less
    assert flops_per_sample(skip) == flops_per_sample(plain) == flops_per_sample(plain, executed=True)
    assert flops_per_sample(skip, executed=True) < 0.96 * flops_per_sample(skip)
    assert skip.skip_padding and not plain.skip_padding  # counting put each form back


def test_a_checkpoint_of_the_two_decoder_layout_loads_and_gives_the_same_outputs(tmp_path):
    plain, _ = faithful_pair(seed=2)
    plain.skip_padding = False  # and every tap computed, as before SmallMapConv2d
    state = plain.state_dict()
    # today's layout, written out so that a change to it fails here and not in a user's old run
    assert state["mnist_head.layers.0.weight"].shape == (2, 64, 3, 3)
    assert state["cifar_head.layers.4.weight"].shape == (128, 64, 4, 4)
    assert state["cifar_head.layers.6.bias"].shape == (3,)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    R.save_checkpoint(path, plain, TrainConfig(model="faithful"), step=5, epoch=0)
    loaded, _, info = T.load_run_model(tmp_path / "run")  # the default form, whichever it is
    assert isinstance(loaded, FaithfulSeparator) and info["step"] == 5
    grouped = FaithfulSeparator(pretrained=False, grouped=True)
    T.load_model_state(grouped, R.read_checkpoint(path)["model"], path, "faithful")
    assert loaded.state_dict().keys() == grouped.state_dict().keys() == state.keys()
    _, _, mean = real_mixture(3, seed=3)
    with torch.no_grad():
        want = plain.eval()(mean)
        for model in (loaded, grouped.eval()):
            for a, b in zip(want, model(mean)):
                assert torch.allclose(a, b, atol=1e-5)


def test_tiny_model_trains_through_the_generator(tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, model="tiny", epochs=8, lr=1e-2)
    losses = [r.loss for r in T.train_steps(cfg, tmp_path / "run")]
    assert len(losses) == 48
    assert sum(losses[-6:]) < 0.8 * sum(losses[:6])
    model, loaded_cfg, _ = T.load_run_model(tmp_path / "run")
    assert loaded_cfg.model == "tiny" and sum(p.numel() for p in model.parameters()) < 10_000
