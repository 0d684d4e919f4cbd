"""The report's sample grid: one column per sample, one labelled row per image kind."""
from __future__ import annotations

import operator

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from .data import PairData
from .errors import MixsepError
from .metrics import predict, recover


def sample_indices(total: int, n: int = 20, seed: int | None = None, page: int = 0) -> list[int]:
    """Page ``page`` of ``n`` indices: in order, or a seeded shuffle of all ``total``. The last page holds
    what is left (it showed the first samples again after them)."""
    order = torch.arange(total) if seed is None else torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    start = (page * n) % max(total, 1)
    return order[start: start + n].tolist()


def _index(i) -> int | None:
    """A whole number as an index (Python's, numpy's, a 0-d integer tensor), or None (a bool, a float, anything else)."""
    if isinstance(i, bool):
        return None
    try:
        return operator.index(i)
    except TypeError:
        return None


def grid_rows(model: torch.nn.Module, pairs: PairData, indices: list[int], show_direct: bool = True,
              show_errors: bool = False) -> list[tuple[str, torch.Tensor]]:
    """(label, (N, 3, 32, 32) images in [0, 1]) rows, in the report's order."""
    given = list(indices)  # a list, a tuple, a range, a generator, a tensor or an array of them
    idx = [_index(i) for i in given]
    if not idx or not all(i is not None and 0 <= i < len(pairs) for i in idx):
        raise MixsepError(f"Give the grid one or more pair indices from 0 to {len(pairs) - 1} "
                          f"(got {given[:5]!r}{'…' if len(given) > 5 else ''}).")
    idx = torch.as_tensor(idx)
    partner = pairs.partners(0)[idx]
    mnist, cifar, mean, mh, ch = predict(model, pairs.mnist[partner.to(pairs.mnist.device)], pairs.cifar[idx.to(pairs.cifar.device)])
    mnist_rec, _ = recover(mean, mh, ch, "direct")
    _, cifar_sub = recover(mean, mh, ch, "subtraction")
    rows = [("MNIST", mnist), ("CIFAR-10", cifar), ("mean (input)", mean),
            ("MNIST reconstructed", mnist_rec), ("CIFAR by subtraction", cifar_sub)]
    if show_direct:
        rows.append(("CIFAR direct", ch.clamp(0, 1)))
    if show_errors:
        # x4 so that a 0.25 error is full white: typical errors are small and would look black
        rows.append(("|error| MNIST x4", ((mnist_rec - mnist).abs().mean(1, keepdim=True) * 4).clamp(0, 1).expand(-1, 3, -1, -1)))
        rows.append(("|error| CIFAR sub. x4", ((cifar_sub - cifar).abs().mean(1, keepdim=True) * 4).clamp(0, 1).expand(-1, 3, -1, -1)))
    return [(label, x.cpu()) for label, x in rows]


def render_grid(rows: list[tuple[str, torch.Tensor]], indices: list[int], scale: int = 2,
                title: str = "") -> Image.Image:
    """Lay the rows out with labels on the left and sample indices on top."""
    pad, label_w, head_h = 2, 150, 18 + (18 if title else 0)
    font = ImageFont.load_default(size=12)
    strips = []
    for _, x in rows:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")  # crisp pixels, no blur
        strips.append(make_grid(x, nrow=len(x), padding=pad, pad_value=1.0))
    w = strips[0].shape[2]
    h_row = strips[0].shape[1]
    canvas = Image.new("RGB", (label_w + w, head_h + h_row * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    cell = 32 * scale + pad
    for j, i in enumerate(indices):
        draw.text((label_w + pad + j * cell + 2, head_h - 15), f"#{i}", fill="dimgray", font=font)
    for r, ((label, _), strip) in enumerate(zip(rows, strips)):
        img = Image.fromarray((strip.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        y = head_h + r * h_row
        canvas.paste(img, (label_w, y))
        draw.text((4, y + h_row // 2 - 7), label, fill="black", font=font)
    return canvas


def grid_image(model: torch.nn.Module, pairs: PairData, indices: list[int], show_direct: bool = True,
               show_errors: bool = False, scale: int = 2, title: str = "") -> Image.Image:
    return render_grid(grid_rows(model, pairs, indices, show_direct, show_errors), indices, scale, title)
