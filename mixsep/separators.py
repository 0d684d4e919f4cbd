"""U-Net separators beyond ``unet``: other heads, inputs, depths and a refining second pass.

Every separator here predicts only the grey digit inside the interval the mixture allows
(``feasible_interval``) and returns ``cifar_hat = 2 * mean - mnist_hat``, so both estimates
are valid images that average exactly to the mixture. ``SeparatorNet`` takes the design
choices as arguments; the classes at the bottom fix them under a name in
``mixsep.model.MODELS`` (a model is rebuilt from its name alone). They register
themselves, because this module builds on model.py's U-Net parts: model.py imports it
last, so either module may be imported first.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import MODELS, UNetDecoder, UNetEncoder, conv_bn_relu, feasible_interval

HEADS = ("clamp", "fraction")
FEATURES = ("bounds", "rich", "hf")
CHANNELS = {"bounds": 5, "rich": 10, "hf": 13}  # the network's input channels for each kind of features


def straight_through(value: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``value`` forward, the gradient of ``z`` backward: clamped pixels keep learning."""
    return value.detach() + (z - z.detach())


def to_interval(z: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, head: str, training: bool) -> torch.Tensor:
    """The digit inside [lo, hi] from the network's raw output z (B, 1, 32, 32).

    ``clamp`` reads z as the digit itself; ``fraction`` reads it as the position inside the
    interval, ``lo + (hi - lo) * t`` with t clamped to [0, 1]. Both reach the bounds exactly
    (a sigmoid never does, which costs MNIST SSIM on the black background), and both are
    straight-through in training.
    """
    if head == "clamp":
        digit = torch.maximum(torch.minimum(z, hi), lo)
        return straight_through(digit, z) if training else digit
    t = z.clamp(0, 1)
    t = straight_through(t, z) if training else t
    return lo + (hi - lo) * t


def mixture_features(mean: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, kind: str) -> torch.Tensor:
    """What the network sees: the mixture and the digit's bounds, and for ``rich`` more of the same facts.

    ``rich`` adds the mixture's grey level, CIFAR's exact chroma (``2 * (mean - grey)``: the
    digit is grey, so the channel differences are CIFAR's alone) and its spread across
    channels, which a first 3x3 convolution cannot form (a max minus a min). ``hf`` adds to
    ``rich`` the mixture's part that no resized digit holds (``high_frequency``).
    """
    if kind == "bounds":
        return torch.cat([mean, lo, hi], 1)                                 # (B, 5, 32, 32)
    grey = mean.mean(1, keepdim=True)
    chroma = 2 * (mean - grey)
    spread = chroma.amax(1, keepdim=True) - chroma.amin(1, keepdim=True)
    rich = [mean, lo, hi, grey, chroma, spread]                             # 10 channels
    if kind == "hf":
        rich.append(high_frequency(mean))                                   # 13 channels
    return torch.cat(rich, 1)


def upsample_matrix(n_in: int = 28, n_out: int = 32) -> torch.Tensor:
    """(n_out, n_in): one axis of data.resize_mnist's bilinear resize (align_corners=False)."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)
    return F.interpolate(eye, size=(1, n_out), mode="bilinear", align_corners=False).reshape(n_in, n_out).T


@functools.lru_cache(maxsize=8)
def _digit_projector(device: torch.device) -> torch.Tensor:
    """(32, 32): P = A A+, one axis's orthogonal projector onto the resized 28-pixel rows."""
    a = upsample_matrix()
    return (a @ torch.linalg.pinv(a)).float().to(device)


def high_frequency(mean: torch.Tensor) -> torch.Tensor:
    """The mixture's part that no resized digit can hold: ``mean - P mean P.T`` (B, 3, 32, 32).

    Every digit is ``A x A.T`` (``DigitSpace``), so ``P digit P.T`` is the digit itself and this
    is ``(cifar - P cifar P.T) / 2``: CIFAR's alone, exactly, whatever the digit. It is a quarter
    of each image's dimensions (1,024 - 784) and the finest detail. A 3x3 convolution cannot
    form it (A+ is not local), so ``unet_hf`` is given it.
    """
    p = _digit_projector(mean.device)
    with torch.autocast(mean.device.type, enabled=False):  # a bf16 matmul would blur a small signal
        m = mean.float()
        return (m - p @ m @ p.T).to(mean.dtype)


class DigitSpace(nn.Module):
    """Put a 32x32 digit estimate back among the images the data can hold, then into [lo, hi].

    Every digit is a 28x28 MNIST image resized to 32x32 by ``data.resize_mnist`` (bilinear,
    separable: ``digit = A @ x @ A.T`` with A 32x28). An estimate is mapped to its
    least-squares 28x28 source ``x = A+ @ digit @ A+.T``; x is clamped into [0, 1] (where an
    MNIST pixel lies) and values under ``FLOOR`` (10/255) are set to 0: 81% of MNIST's
    training pixels are exactly 0 and only 0.67% lie between 0 and 10/255, so a faint
    source pixel is almost always the network's haze on a black background, which costs
    SSIM. ``A @ x @ A.T`` is then clamped into the mixture's interval again. A true digit
    comes back as itself, but for resize_mnist's rounding to uint8 and its rare faint
    pixels. Two small matrix products per image; no parameters, nothing in the state dict.
    The floor was chosen on the validation split (bench/variants.py): 0, 0.005, 0.01,
    0.02, 0.04, 0.06, 0.08, 0.1 gave 31.64 to 31.68 dB, 0.04 the best PSNR with MNIST SSIM
    0.9889 against 0.9862 without it (docs/benchmarks.md).

    It holds for digits resized from 28x28 as mixsep does it (torchvision's Resize on PIL
    images, the report's pipeline, is the same bilinear map); 32x32 digits made another way
    break the premise.
    """

    FLOOR = 10 / 255

    def __init__(self):
        super().__init__()
        a = upsample_matrix()
        self.register_buffer("up", a.float(), persistent=False)                      # (32, 28)
        self.register_buffer("down", torch.linalg.pinv(a).float(), persistent=False)  # (28, 32)

    def forward(self, digit: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        x = (self.down @ digit.float() @ self.down.T).clamp(0, 1)                   # (B, 1, 28, 28)
        x = torch.where(x < self.FLOOR, torch.zeros_like(x), x)
        return torch.maximum(torch.minimum(self.up @ x @ self.up.T, hi), lo)        # (B, 1, 32, 32)


class ResidualEncoder(UNetEncoder):
    """``UNetEncoder`` whose second conv of each stage is a residual update (same FLOPs, easier to train)."""

    def forward(self, x):
        feats = []
        for first, second in self.stages:
            x = first(x)
            x = x + second(x)
            feats.append(x)
        return feats


class DeepDecoder(UNetDecoder):
    """``UNetDecoder`` with ``depth`` conv-BN-ReLU per stage instead of one."""

    def __init__(self, widths: tuple[int, ...], depth: int = 2):
        super().__init__(widths)
        pairs = list(zip(widths[:0:-1], widths[-2::-1]))
        self.convs = nn.ModuleList(nn.Sequential(*(conv_bn_relu(b, b) for _ in range(depth))) for _, b in pairs)


ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "silu": lambda: nn.SiLU(inplace=True)}


def use_activation(net: nn.Module, act: str) -> nn.Module:
    """Each ReLU in ``net`` replaced by ``act``: an activation holds no parameters, so the state dict stays
    the ReLU net's."""
    if act != "relu":
        for module in list(net.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.ReLU):
                    setattr(module, name, ACTIVATIONS[act]())
    return net


class UNet(nn.Module):
    """Features (B, C, 32, 32) -> raw output (B, 1, 32, 32)."""

    def __init__(self, c_in: int, widths: tuple[int, ...], residual: bool = False, decoder_depth: int = 1):
        super().__init__()
        self.encoder = (ResidualEncoder if residual else UNetEncoder)(c_in, widths)
        self.decoder = DeepDecoder(widths, decoder_depth) if decoder_depth > 1 else UNetDecoder(widths)

    def forward(self, x):
        return self.decoder(self.encoder(x))


class SeparatorNet(nn.Module):
    """A U-Net digit estimate, optionally refined by a second U-Net that also sees the first estimate.

    The refiner reads the features and the first (in-interval) digit and adds a correction to
    the first raw output; the head then puts the sum into the interval again. Only the final
    estimate is trained (train.py's loss sees one pair), through both passes.
    """

    def __init__(self, widths=(32, 64, 128, 256), head: str = "clamp", features: str = "bounds",
                 residual: bool = False, decoder_depth: int = 1, refine_widths: tuple[int, ...] | None = None,
                 digit_space: bool = False, act: str = "relu"):
        super().__init__()
        if head not in HEADS or features not in FEATURES or act not in ACTIVATIONS:
            raise ValueError(f"head must be one of {HEADS}, features one of {FEATURES} and act one of "
                             f"{tuple(ACTIVATIONS)}")
        self.pretrained_loaded = False
        self.head, self.features = head, features
        c_in = CHANNELS[features]
        self.net = UNet(c_in, tuple(widths), residual, decoder_depth)
        self.refiner = UNet(c_in + 1, tuple(refine_widths), residual) if refine_widths else None
        self.digit_space = DigitSpace() if digit_space else None
        use_activation(self, act)

    def forward(self, mean):
        lo, hi = feasible_interval(mean)                                    # (B, 1, 32, 32) each
        x = mixture_features(mean, lo, hi, self.features)                   # (B, C, 32, 32)
        z = self.net(x).float()                                             # (B, 1, 32, 32)
        if self.refiner is not None:
            first = to_interval(z, lo, hi, self.head, self.training)
            z = z + self.refiner(torch.cat([x, first.to(x.dtype)], 1)).float()
        digit = to_interval(z, lo, hi, self.head, self.training)
        if self.digit_space is not None and not self.training:  # trained through, it cost 1.6 to 3.5 dB
            digit = self.digit_space(digit, lo, hi)
        mnist_hat = digit.expand(-1, 3, -1, -1)                             # grey to RGB without a copy
        return mnist_hat, 2 * mean - mnist_hat


class FractionUNet(SeparatorNet):
    """``unet`` with the fraction head: the network places the digit inside its feasible interval.

    Same layers, parameters and FLOPs as ``unet``; only the head differs. On a validation
    split (CIFAR training images kept out of training) it scored 0.18 dB above ``unet`` at
    the same 375 steps, over two seeds (docs/benchmarks.md, "Beyond 32 dB").
    """

    def __init__(self, pretrained: bool = False):
        super().__init__(head="fraction")


class DigitUNet(SeparatorNet):
    """``unet_fraction`` whose estimates are put back among resized 28x28 digits (``DigitSpace``).

    Trains exactly as ``unet_fraction`` (same layers, parameters, loss and steps; its
    checkpoints load either way); only inference differs. On the validation split at 375
    steps it scored 30.07 dB against 29.69 dB (+0.38 over two seeds), and applied to a
    15-minute ``unet_fraction`` run 31.68 dB against 31.38 dB (docs/benchmarks.md, "Beyond 32 dB").
    Trained through the projection (straight-through or true gradients) it scored 28.0 and
    26.2 dB at 375 steps, so training leaves it out.
    """

    def __init__(self, pretrained: bool = False):
        super().__init__(head="fraction", digit_space=True)


class RichDigitUNet(SeparatorNet):
    """``unet_digit`` that also sees the richer inputs of ``mixture_features(kind="rich")``.

    The mixture's grey level, CIFAR's exact chroma and its spread across channels: five more
    input channels, the same U-Net after the first convolution. On the validation split it
    scored +0.06 to +0.12 dB over the bounds alone at 375 steps (two seeds) and +0.15 dB at
    1,540 steps, with ``DigitSpace`` after both (docs/benchmarks.md, "Beyond 32 dB").
    """

    def __init__(self, pretrained: bool = False):
        super().__init__(head="fraction", features="rich", digit_space=True)


class NarrowDigitUNet(SeparatorNet):
    """``unet_digit_rich`` at half the width: 16, 32, 64 and 128 channels instead of 32 to 256.

    A quarter of the parameters and FLOPs, and three times the steps per second on a 2-core
    CPU, so a time budget buys three times the steps. On the validation split, in the time
    ``unet_digit_rich`` takes for 375 steps, it made 1,125 and scored 30.69 dB against 30.20
    (lr 3e-3), 30.88 at lr 6e-3; narrower still (8 to 64 channels) or a fifth level scored
    less (docs/benchmarks.md, "Beyond 32 dB": width against steps).
    """

    WIDTHS = (16, 32, 64, 128)

    def __init__(self, pretrained: bool = False):
        super().__init__(widths=self.WIDTHS, head="fraction", features="rich", digit_space=True)


class HighFrequencyUNet(SeparatorNet):
    """``unet_narrow`` that also sees the mixture's part no resized digit holds (``high_frequency``).

    Three more input channels, formed by two 32x32 matrix products per channel; the rest is
    ``unet_narrow``. On the validation split at 1,125 steps (lr 1.2e-2) it scored 31.26 dB
    against 30.96 (seed 0) and 31.10 against 30.92 (seed 1), with ``DigitSpace`` after both
    (docs/benchmarks.md, "Beyond 32 dB": what no digit can hold).
    """

    def __init__(self, pretrained: bool = False):
        super().__init__(widths=NarrowDigitUNet.WIDTHS, head="fraction", features="hf", digit_space=True)


class SiLUHighFrequencyUNet(SeparatorNet):
    """``unet_hf`` with SiLU (x * sigmoid(x)) where it has ReLU: the same layers and parameters, a smooth
    activation. On the validation split at 1,125 steps (lr 1.2e-2, bf16) it scored 31.44 dB against
    ``unet_hf``'s 31.26 (seed 0) and 31.39 against 31.04 (seed 1), for 0.90 times the samples per second
    (docs/benchmarks.md, "A smooth activation: unet_hf_silu").
    """

    def __init__(self, pretrained: bool = False):
        super().__init__(widths=NarrowDigitUNet.WIDTHS, head="fraction", features="hf", digit_space=True, act="silu")


MODELS["unet_fraction"] = FractionUNet
MODELS["unet_digit"] = DigitUNet
MODELS["unet_digit_rich"] = RichDigitUNet
MODELS["unet_narrow"] = NarrowDigitUNet
MODELS["unet_hf"] = HighFrequencyUNet
MODELS["unet_hf_silu"] = SiLUHighFrequencyUNet
