"""Separators: a mixture (B, 3, 32, 32) in, an (mnist, cifar) pair of estimates out.

``faithful`` is the report's network: a ResNet-18 encoder whose 512 features are
reshaped to (2, 16, 16) and fed to two decoders of four ConvTranspose2d layers.
Other separators register in ``MODELS`` with the same constructor and forward.
"""
from __future__ import annotations

import contextlib
import sys
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import MixsepError, network_timeout

# ImageNet statistics: the pretrained stem expects inputs normalised this way.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# The faithful model's two decoders one after the other by default: the grouped pass (decode_pair)
# computes the same function but was no faster on the 2-core AMD EPYC measured (bench/run.py times both)
GROUPED_DECODERS = False
# The encoder's 3x3 convolutions skip the taps that only ever meet zero padding (SmallMapConv2d):
# the same outputs and gradients, 1.42x the faithful bare step on the 2-core AMD EPYC (bench/run.py)
SKIP_PADDING_TAPS = True


class PretrainedWeightsUnavailable(UserWarning):
    """ImageNet weights could not be loaded; the encoder starts from random init."""


def resnet18_backbone(pretrained: bool) -> tuple[nn.Module, bool]:
    """torchvision's ResNet-18, ImageNet weights when they can be had (cached by torch.hub).

    torchvision is imported here, not with the module: importing it costs seconds (it pulls in
    torch._dynamo), which every command and test that never builds the faithful model saved.
    """
    from torchvision.models import ResNet18_Weights, resnet18

    if pretrained:
        try:  # torch.hub says "Downloading: ..." on stdout, where `train` prints only the run folder
            with contextlib.redirect_stdout(sys.stderr), network_timeout():
                # read as data only (weights_only), as every checkpoint is: torch.hub unpickles its cached file
                # whole by default, and checks its hash only as it downloads it, so a resnet18-f37072fd.pth
                # copied into ~/.cache/torch/hub/checkpoints from someone else ran its code at every start
                weights = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True,
                                                                        weights_only=True)
            model = resnet18(weights=None)
            model.load_state_dict(weights)
            return model, True
        except MixsepError:  # MIXSEP_NETWORK_TIMEOUT set to what is not a timeout: said, not a fallback
            raise
        except Exception as e:  # offline, proxy, a server that stopped answering, corrupt cache: all end the same way
            warnings.warn(
                f"ImageNet weights for ResNet-18 could not be loaded ({e.__class__.__name__}); "
                "the encoder starts from random initialisation. Switch the pretrained setting off "
                "(--no-pretrained, or the Train page's 'ImageNet-pretrained encoder') to skip the attempt.",
                PretrainedWeightsUnavailable, stacklevel=2)
    return resnet18(weights=None), False


class SmallMapConv2d(nn.Conv2d):
    """nn.Conv2d that, on a map too small for its kernel, multiplies only the taps that meet the map.

    On a 32x32 input ResNet-18's layer4 runs on 1x1 maps: a 3x3 convolution with padding 1
    there multiplies 8 of its 9 taps by the zero padding, and on the 2x2 -> 1x1 stride-2 entry
    5 of 9. Those products are exactly zero, in the output and in the weight gradient, so
    computing the centre tap as a 1x1 convolution (the four meeting taps as a 2x2 one) gives
    the same outputs, the same gradients (the skipped taps' are zero either way) and so the
    same training, from the same parameters under the same names: checkpoints load both ways.
    Every other shape, and ``skip_padding = False``, runs the plain convolution.
    """

    skip_padding = True

    def forward(self, x):
        if self.skip_padding and self.kernel_size == (3, 3) and self.padding == (1, 1) \
                and self.dilation == (1, 1) and self.padding_mode == "zeros":
            size = tuple(x.shape[-2:])
            if size == (1, 1):       # any stride: the one output sits on the one input, the centre tap
                return F.conv2d(x, self.weight[:, :, 1:2, 1:2], self.bias, groups=self.groups)
            if size == (2, 2) and self.stride == (2, 2):  # one output, centred on input (0, 0)
                return F.conv2d(x, self.weight[:, :, 1:, 1:], self.bias, groups=self.groups)
        return super().forward(x)


def skip_padding_taps(module: nn.Module, on: bool) -> None:
    """Make every plain Conv2d in ``module`` a SmallMapConv2d (in place: parameters and names kept)."""
    for m in module.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = SmallMapConv2d
        if isinstance(m, SmallMapConv2d):
            m.skip_padding = on


class Encoder(nn.Module):
    """ResNet-18 with its classifier removed: (B, 3, 32, 32) -> (B, 512).

    ``skip_padding``: its convolutions skip the taps that meet only zero padding
    (SmallMapConv2d), the same function computed with a ninth of layer4's multiply-adds.
    """

    def __init__(self, pretrained: bool = True, skip_padding: bool = SKIP_PADDING_TAPS):
        super().__init__()
        self.net, self.pretrained_loaded = resnet18_backbone(pretrained)
        self.net.fc = nn.Identity()
        skip_padding_taps(self.net, skip_padding)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return self.net((x - self.mean) / self.std)  # (B, 512)


class Decoder(nn.Module):
    """(B, 2, 16, 16) -> (B, 3, 32, 32): four transposed convolutions, ReLU between.

    Widths 64 -> 128 -> 64: the widest layer sits at 16x16 where it is cheap, and
    the stride-2 layer halves the width before the 32x32 maps, which cost 4x per
    channel. Kernel 4 with stride 2 (not 3) upsamples without checkerboard overlap.
    The output is a sigmoid: every estimate is a valid [0, 1] image, as the targets are.
    """

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.ConvTranspose2d(2, 64, kernel_size=3, padding=1), nn.ReLU(inplace=True),     # (B, 64, 16, 16)
            nn.ConvTranspose2d(64, 128, kernel_size=3, padding=1), nn.ReLU(inplace=True),   # (B, 128, 16, 16)
            nn.ConvTranspose2d(128, 64, kernel_size=4, stride=2, padding=1), nn.ReLU(inplace=True),  # (B, 64, 32, 32)
            nn.ConvTranspose2d(64, 3, kernel_size=3, padding=1), nn.Sigmoid(),              # (B, 3, 32, 32)
        )

    def forward(self, z):
        return self.layers(z)


def decode_pair(z: torch.Tensor, a: Decoder, b: Decoder) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a(z), b(z))`` in one pass: the same function, a quarter of the kernel launches, wider GEMMs.

    Both decoders read the same map, so their first layers become one transposed conv
    with twice the output channels; the middle layers become convs with groups=2 (group
    0 is ``a``, group 1 is ``b``); the thin output layer (3 channels per head) becomes
    one dense conv with a block-diagonal weight, which is what groups=2 computes: oneDNN's
    grouped kernel with 3 channels per group was the slowest choice in isolation. On the
    whole training step this form measured 0.76x-0.97x of the decoders apart on a 2-core
    AMD EPYC (AVX2), so it is opt-in (``FaithfulSeparator(grouped=True)``); bench/run.py
    times both forms, with --profile per op, on any machine.

    The weights are put together from the two decoders' own parameters at each call
    rather than stored: the state dict, the optimiser's per-parameter state and so every
    checkpoint keep the two-decoder layout in both directions, and the gradient of a
    concatenation is its slices, so each parameter learns exactly as it would apart.
    The copy is about 1.1 M floats a step, next to 14 GFLOPs of decoder work at batch 64.
    """
    y = z                                                                     # (B, 2, 16, 16)
    convs = list(zip(a.layers[0::2], a.layers[1::2], b.layers[0::2]))         # (conv, activation, conv)
    for i, (ca, act, cb) in enumerate(convs):
        wa, wb = ca.weight, cb.weight                                         # (in, out, k, k) each
        if i == 0:
            weight, groups = torch.cat([wa, wb], 1), 1                        # (in, 2 out, k, k): shared input
        elif i < len(convs) - 1:
            weight, groups = torch.cat([wa, wb], 0), 2                        # (2 in, out, k, k)
        else:
            za, zb = torch.zeros_like(wa), torch.zeros_like(wb)
            weight, groups = torch.cat([torch.cat([wa, za], 1), torch.cat([zb, wb], 1)], 0), 1  # (2 in, 2 out, k, k)
        y = act(F.conv_transpose2d(y, weight, torch.cat([ca.bias, cb.bias]), ca.stride, ca.padding,
                                   ca.output_padding, groups, ca.dilation))
    out = a.layers[-2].out_channels
    return y[:, :out], y[:, out:]                                             # (B, 3, 32, 32) each


class FaithfulSeparator(nn.Module):
    """The report's model: shared ResNet-18 encoder, one decoder per source.

    ``grouped`` computes the two decoders in one grouped pass (``decode_pair``), the
    same function with the same parameters; False runs them one after the other.
    ``skip_padding`` (a property) switches the encoder's SmallMapConv2d shortcut, likewise.
    """

    RESNET_ENCODER = True  # its encoder is ResNet-18, with ImageNet weights to load (config: pretrained)

    def __init__(self, pretrained: bool = True, grouped: bool = GROUPED_DECODERS,
                 skip_padding: bool = SKIP_PADDING_TAPS):
        super().__init__()
        self.encoder = Encoder(pretrained, skip_padding)
        self.mnist_head = Decoder()
        self.cifar_head = Decoder()
        self.grouped = grouped

    @property
    def skip_padding(self) -> bool:
        return all(m.skip_padding for m in self.encoder.modules() if isinstance(m, SmallMapConv2d))

    @skip_padding.setter
    def skip_padding(self, on: bool) -> None:
        skip_padding_taps(self.encoder, on)

    def forward(self, mean):
        z = self.encoder(mean).view(-1, 2, 16, 16)  # 512 features as a 2-channel 16x16 map
        if self.grouped:
            return decode_pair(z, self.mnist_head, self.cifar_head)
        return self.mnist_head(z), self.cifar_head(z)


# --------------------------------------------------------------------------- U-Net


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def feasible_interval(mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds (B, 1, 32, 32) that the grey digit must lie in, read off the mixture alone.

    mnist = 2 * mean - cifar per channel with cifar in [0, 1], so every channel bounds the
    digit: 2 * mean_c - 1 <= mnist <= 2 * mean_c; mnist is in [0, 1] too. Clamping an
    estimate into these bounds keeps both estimates valid images and never moves it away
    from the truth.
    """
    two = 2 * mean
    lo = (two - 1).amax(1, keepdim=True).clamp(min=0)
    hi = two.amin(1, keepdim=True).clamp(max=1)
    return lo, hi


class UNetEncoder(nn.Module):
    """Four stages, 32x32 down to 4x4, two conv-BN-ReLU each; returns every stage's map for the skips."""

    def __init__(self, c_in: int, widths: tuple[int, ...]):
        super().__init__()
        stages, prev = [], c_in
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(conv_bn_relu(prev, w, stride=1 if i == 0 else 2), conv_bn_relu(w, w)))
            prev = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats  # (B, 32, 32, 32), (B, 64, 16, 16), (B, 128, 8, 8), (B, 256, 4, 4)


class UNetDecoder(nn.Module):
    """Upsample by 2 (transposed conv, kernel 2: no overlap, no checkerboard), add the skip, one conv-BN-ReLU.

    Adding rather than concatenating skips halves the decoder's FLOPs for the same quality here.
    """

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        pairs = list(zip(widths[:0:-1], widths[-2::-1]))  # (256, 128), (128, 64), (64, 32)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in pairs)
        self.convs = nn.ModuleList(conv_bn_relu(b, b) for _, b in pairs)
        self.out = nn.Conv2d(widths[0], 1, 1)

    def forward(self, feats):
        y = feats[-1]
        for up, conv, skip in zip(self.ups, self.convs, feats[-2::-1]):
            y = conv(up(y) + skip)
        return self.out(y)  # (B, 1, 32, 32)


class UNetSeparator(nn.Module):
    """A U-Net that predicts the grey digit; the CIFAR estimate is what the mixture leaves.

    The input is the mixture plus the digit's feasible interval (5 channels). The digit
    estimate is clamped into that interval, so cifar_hat = 2 * mean - mnist_hat is a valid
    image and the two estimates always average to the mixture (mixture-consistent by
    construction; every recovery mode gives the same answer). The clamp is straight-through
    in training so that clamped pixels still learn; it also gives exact zeros on the digit's
    black background, which SSIM rewards. Widths are multiples of 32, which oneDNN's
    AVX-512 kernels need to run near the matmul peak (with channels_last weights, as
    ``build_model`` makes them). Trained from scratch: there are no
    pretrained weights, and ``pretrained`` is accepted for the common constructor only.
    """

    widths = (32, 64, 128, 256)

    def __init__(self, pretrained: bool = False):
        super().__init__()
        self.pretrained_loaded = False
        self.encoder = UNetEncoder(5, self.widths)
        self.decoder = UNetDecoder(self.widths)

    def forward(self, mean):
        lo, hi = feasible_interval(mean)                                   # (B, 1, 32, 32) each
        x = torch.cat([mean, lo, hi], 1)                                   # (B, 5, 32, 32)
        z = self.decoder(self.encoder(x)).float()                          # (B, 1, 32, 32)
        clamped = torch.maximum(torch.minimum(z, hi), lo)
        # straight-through: the clamp's exact values forward, the identity's gradient backward
        digit = clamped.detach() + (z - z.detach()) if self.training else clamped
        mnist_hat = digit.expand(-1, 3, -1, -1)                            # grey to RGB without a copy
        return mnist_hat, 2 * mean - mnist_hat


class TinySeparator(nn.Module):
    """The smallest separator that still runs the whole loop (BatchNorm, two heads, Adam state).

    For the tests of the loop, resume, jobs and faults, which must not spend the CPU on
    ResNet-18; it separates poorly and is not offered as a result.
    """

    def __init__(self, pretrained: bool = False):
        super().__init__()
        self.pretrained_loaded = False
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 4, 3, padding=1))

    def forward(self, mean):
        y = torch.sigmoid(self.body(mean))                                 # (B, 4, 32, 32)
        return y[:, :1].expand(-1, 3, -1, -1), y[:, 1:]                     # grey digit as RGB, CIFAR


MODELS: dict[str, type[nn.Module]] = {
    "faithful": FaithfulSeparator,
    "unet": UNetSeparator,
    "tiny": TinySeparator,
}


def known_model(name: str) -> str:
    """``name`` if it names a model, else one sentence that lists them."""
    if name not in MODELS:
        raise MixsepError(f"Unknown model {name!r}; choose one of: {', '.join(MODELS)}.")  # a NUL or ESC reads \x00, \x1b
    return name


def build_model(name: str, pretrained: bool = True) -> nn.Module:
    known_model(name)
    # NHWC weights: oneDNN (CPU) and cuDNN run these convolutions faster, the faithful
    # training step by 15-25% on a 2-core AVX-512 CPU (bench/run.py); .to(device) and
    # load_state_dict keep the layout, so trained and reloaded models compute alike
    return MODELS[name](pretrained=pretrained).to(memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(model: nn.Module, executed: bool = False) -> int:
    """Forward FLOPs for one 32x32 mixture (a multiply-add counts 2), by torch's own counter.

    Counted on the plain form of the faithful network (its decoders one after the other, every
    tap of every convolution, as torchvision computes it): the network's FLOPs, the figure MFU
    has always used. The grouped pass also multiplies the output layer's zero blocks, and the
    SmallMapConv2d shortcut skips products with zero padding; neither changes this count.
    ``executed=True`` counts what the model's current form multiplies instead.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training, grouped = model.training, getattr(model, "grouped", None)
    skip = getattr(model, "skip_padding", None)
    model.eval()
    if grouped is not None and not executed:
        model.grouped = False
    if skip is not None and not executed:
        model.skip_padding = False
    batch = 2  # BatchNorm is in eval mode, but keep B > 1 so no layer sees a degenerate batch
    x = torch.zeros(batch, 3, 32, 32, device=next(model.parameters()).device)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        if grouped is not None:
            model.grouped = grouped
        if skip is not None:
            model.skip_padding = skip
    return counter.get_total_flops() // batch


from . import separators  # noqa: E402,F401  (last: it builds on the U-Net above and registers its models in MODELS)
