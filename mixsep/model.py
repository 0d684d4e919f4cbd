"""Separators: a mixture (B, 3, 32, 32) in, an (mnist, cifar) pair of estimates out.

``faithful`` is the report's network: a ResNet-18 encoder whose 512 features are
reshaped to (2, 16, 16) and fed to two decoders of four ConvTranspose2d layers.
Other separators register in ``MODELS`` with the same constructor and forward.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torchvision.models import ResNet18_Weights, resnet18

from .errors import MixsepError

# ImageNet statistics: the pretrained stem expects inputs normalised this way.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsUnavailable(UserWarning):
    """ImageNet weights could not be loaded; the encoder starts from random init."""


def resnet18_backbone(pretrained: bool) -> tuple[nn.Module, bool]:
    """torchvision's ResNet-18, ImageNet weights when they can be had (cached by torch.hub)."""
    if pretrained:
        try:
            return resnet18(weights=ResNet18_Weights.IMAGENET1K_V1), True
        except Exception as e:  # offline, proxy, corrupt cache: all end the same way
            warnings.warn(
                f"ImageNet weights for ResNet-18 could not be loaded ({e.__class__.__name__}); "
                "the encoder starts from random initialisation. Pass --no-pretrained to silence this.",
                PretrainedWeightsUnavailable, stacklevel=2)
    return resnet18(weights=None), False


class Encoder(nn.Module):
    """ResNet-18 with its classifier removed: (B, 3, 32, 32) -> (B, 512)."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.net, self.pretrained_loaded = resnet18_backbone(pretrained)
        self.net.fc = nn.Identity()
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


class FaithfulSeparator(nn.Module):
    """The report's model: shared ResNet-18 encoder, one decoder per source."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.encoder = Encoder(pretrained)
        self.mnist_head = Decoder()
        self.cifar_head = Decoder()

    def forward(self, mean):
        z = self.encoder(mean).view(-1, 2, 16, 16)  # 512 features as a 2-channel 16x16 map
        return self.mnist_head(z), self.cifar_head(z)


MODELS: dict[str, type[nn.Module]] = {
    "faithful": FaithfulSeparator,
}


def build_model(name: str, pretrained: bool = True) -> nn.Module:
    if name not in MODELS:
        raise MixsepError(f"Unknown model '{name}'; choose one of: {', '.join(MODELS)}.")
    return MODELS[name](pretrained=pretrained)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(model: nn.Module) -> int:
    """Forward FLOPs for one 32x32 mixture (a multiply-add counts 2), by torch's own counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    batch = 2  # BatchNorm is in eval mode, but keep B > 1 so no layer sees a degenerate batch
    x = torch.zeros(batch, 3, 32, 32, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // batch
