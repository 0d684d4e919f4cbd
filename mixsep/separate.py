"""Separate a user's own mixtures: 32x32 images in, a digit and a CIFAR-like image out for each.

A mixture is what every pair in training is, the pixel-wise mean of a grey digit and a colour
image, saved as an ordinary image file (PNG, or any format Pillow reads; 8-bit, as an image
file holds it). Files are read as pixels only, their size checked from the header before any
decoding, and every input is checked before anything is written, so one bad file writes nothing.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import SEPARATE_MODES as MODES
from .errors import MixsepError, check_count
from .run import CHECKPOINTS, in_checkpoints, temp_path, write_all

SIZE = (32, 32)
# an icon whose directory gives one size and whose image holds another: refused by that size below, not warned of
warnings.filterwarnings("ignore", message="Image was not the expected size", category=UserWarning)
# a damaged EXIF block: Pillow's EXIF reader warns in two lines naming its own source file (the image is read,
# unturned). Set once here: a filter set per read (warnings.catch_warnings) is not safe across the server's threads
warnings.filterwarnings("ignore", category=UserWarning, module="PIL.TiffImagePlugin")
# The formats a mixture may come in (Pillow's names). Pillow picks a decoder by a file's content, not its name,
# and some would run a program (EPS goes to Ghostscript, a PostScript interpreter): a file is read only by these,
# whatever it is called (the Separate page's uploader takes any name too).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "ICO")
SUFFIXES = {"mnist": ".mnist.png", "cifar": ".cifar.png"}
# Pillow's layouts of 16 bits a pixel, not a channel: RGB565 (a 16-bit BMP's bit fields F800/07E0/001F), which it
# scales to 8-bit RGB, as it does its twin RGB555 ("BGR;15")
PACKED_16 = {"BGR;16", "RGB;16"}


def read_mixture(source: Path | str | bytes, name: str | None = None) -> np.ndarray:
    """(32, 32, 3) uint8 pixels of an image file (a path, or its bytes as uploaded), or MixsepError with one sentence."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, fp = name or "the upload", io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise MixsepError(f"{path} is a folder, not an image file." if path.is_dir() else
                              f"{path} is not a regular file (a FIFO or a device, say), so it is not read as an image."
                              if path.exists() else f"{path} does not exist.")
        name, fp = str(path), path
    try:
        if isinstance(fp, Path):
            with open(fp, "rb") as f:
                return _read_pixels(f, name)
        return _read_pixels(fp, name)
    except OSError as e:
        raise MixsepError(f"{name} could not be read ({e.strerror or e.__class__.__name__}).") from None


def _icon_too_large(f, name: str) -> None:
    """Refuse an icon holding an image larger than icons are (256x256), from that image's own header.

    Pillow decodes an icon's largest image inside Image.open, sized by what the image says, not by
    the icon's directory: a 700 KB icon holding a 13000x13000 PNG took 646 MB before any size check.
    """
    head = f.read(6)
    if head[:4] == b"\0\0\1\0":
        count = int.from_bytes(head[4:6], "little")
        directory = f.read(16 * count)
        for i in range(len(directory) // 16):
            offset = int.from_bytes(directory[16 * i + 12:16 * i + 16], "little")
            f.seek(offset)
            image = f.read(24)
            if image[:8] == b"\x89PNG\r\n\x1a\n":
                w, h = int.from_bytes(image[16:20], "big"), int.from_bytes(image[20:24], "big")
            elif len(image) >= 12:  # a DIB: its height counts the image and its mask
                w = abs(int.from_bytes(image[4:8], "little", signed=True))
                h = abs(int.from_bytes(image[8:12], "little", signed=True)) // 2
            else:
                continue
            if w > 256 or h > 256:
                raise MixsepError(f"{name} is an icon holding a {w}x{h} image; a mixture must be 32x32, the size "
                                  "mixsep separates.")
    f.seek(0)


def _read_pixels(fp, name: str) -> np.ndarray:
    _icon_too_large(fp, name)
    try:
        with Image.open(fp, formats=list(FORMATS)) as im:
            if im.size != SIZE:  # from the header: a large or hostile file is never decoded
                raise MixsepError(f"{name} is {im.size[0]}x{im.size[1]} pixels; a mixture must be 32x32, "
                                  "the size mixsep separates (resize it first).")
            if im.mode.startswith(("I", "F")):  # 16- or 32-bit: converting would clip, not scale
                raise MixsepError(f"{name} has {im.mode} pixels; save it with 8 bits per channel, as mixtures are.")
            if any(";16" in raw and raw not in PACKED_16 for raw in map(_rawmode, im.tile)):  # Pillow keeps the high bytes
                raise MixsepError(f"{name} has 16 bits per channel; save it with 8 bits per channel, as mixtures are.")
            if getattr(im, "n_frames", 1) > 1:
                raise MixsepError(f"{name} holds {im.n_frames} frames; give one image per file.")
            if "A" in im.getbands() or "transparency" in im.info:  # RGBA, LA, PA, or a palette/colour key
                if im.convert("RGBA").getchannel("A").getextrema()[0] < 255:
                    raise MixsepError(f"{name} has transparent pixels, which a mixture never has; save it without "
                                      "transparency (flattened onto the background it is shown on).")
            im = ImageOps.exif_transpose(im)  # the pixels as the image is shown, as a JPEG's EXIF turns them
            if isinstance(im.info.get("transparency"), bytes):  # a palette's alpha per entry (tRNS), opaque where used:
                im = im.convert("RGBA")  # straight to RGB, Pillow warns that only RGBA holds it (pngquant writes these)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Image.DecompressionBombError:  # Pillow refuses, from the header, sizes that would fill the memory
        raise MixsepError(f"{name} claims a size far beyond 32x32 pixels; a mixture must be 32x32.") from None
    except UnidentifiedImageError:
        raise MixsepError(f"{name} is not an image file of a format mixsep reads ({', '.join(FORMATS)}).") from None
    except MixsepError:
        raise
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt after a valid header
        raise MixsepError(f"{name} could not be read as an image ({str(e) or e.__class__.__name__}).") from None
    except Exception as e:  # Pillow's decoders meet a damaged file with IndexError, TypeError, KeyError... too
        raise MixsepError(f"{name} could not be read as an image (it is damaged: {e.__class__.__name__}).") from None


def _rawmode(tile) -> str:
    """The pixel layout of a tile of an opened image, as its decoder reads it (e.g. 'RGB;16B')."""
    args = tile[3]
    return args if isinstance(args, str) else args[0] if args and isinstance(args[0], str) else ""


def output_paths(inputs: list[Path], out_dir: Path) -> list[dict[str, Path]]:
    """{source: path} per input: OUT/<stem>.mnist.png and OUT/<stem>.cifar.png."""
    seen: dict[str, Path] = {}
    for p in inputs:
        if p.stem in seen and seen[p.stem] != p:
            raise MixsepError(f"{seen[p.stem]} and {p} would both write {p.stem}.*.png; rename one or separate them apart.")
        seen[p.stem] = p
    return [{s: out_dir / f"{p.stem}{suffix}" for s, suffix in SUFFIXES.items()} for p in inputs]


def check_outputs(paths: list[dict[str, Path]], out_dir: Path, overwrite: bool, inputs: list[Path] = (),
                  this_run: Path | None = None, reads=()) -> None:
    """Refuse, before any work, an output that is a folder, one of the inputs (even with --overwrite: `separate
    *.png --out .` run twice reads a.mnist.png and would write it), another file read (``reads``: the
    checkpoint), a file in a run's checkpoints folder (``this_run``'s too, also when its config.json is lost),
    or a file that exists, unless --overwrite."""
    read = {p.resolve() for p in inputs}
    others = {Path(p).resolve() for p in reads}
    if out_dir.exists() and not out_dir.is_dir():
        raise MixsepError(f"{out_dir} is a file, not a folder; choose another --out.")
    if not out_dir.exists() and not out_dir.parent.is_dir():
        raise MixsepError(f"Folder {out_dir.parent} does not exist; create it or choose another --out.")
    if in_checkpoints(out_dir.resolve(), this_run):
        raise MixsepError(f"--out {out_dir} is in a run's {CHECKPOINTS} folder, which only training writes; "
                          "choose another --out.")
    folder = out_dir if out_dir.is_dir() else out_dir.parent  # where a file or the --out folder will be made
    if not os.access(folder, os.W_OK | os.X_OK):  # a read-only disk or folder, found now and not after the model ran
        why = ("its disk is mounted read-only" if os.statvfs(folder).f_flag & os.ST_RDONLY
               else "you may not write in it")
        raise MixsepError(f"Folder {folder} cannot be written ({why}); choose another --out.")
    longest = _name_max(folder)
    for p in (p for d in paths for p in d.values()):
        if len(os.fsencode(temp_path(p).name)) > longest:  # found now, not after the whole batch is separated
            raise MixsepError(f"{p.name} is too long a name here: mixsep writes it under a longer hidden name first; "
                              "give the image a shorter name.")
        if (p.exists() or p.is_symlink()) and not p.is_file():  # --overwrite replaces files, never a folder
            raise MixsepError(f"{p} exists and is not a file; move it away or choose another --out.")
        where = p.resolve()
        if where in read:
            raise MixsepError(f"{p} would be written over one of the images being separated; choose another --out "
                              "(or leave that image out).")
        if where in others:
            raise MixsepError(f"{p} would be written over the checkpoint that separates them; choose another --out.")
        if p.exists() and not overwrite:
            raise MixsepError(f"{p} exists already; pass --overwrite to replace it, or choose another --out.")


def _name_max(folder: Path) -> int:
    """The longest file name (in bytes) the folder's file system takes; 255 where it will not say."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


@torch.inference_mode()
def separate(model: torch.nn.Module, mixtures: np.ndarray, mode: str = MODES[0],
             batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 mixtures -> (digits (N, 32, 32) uint8, images (N, 32, 32, 3) uint8)."""
    from .metrics import recover  # torchmetrics takes seconds to import: bad files are refused before it

    if mode not in MODES:
        raise MixsepError(f"Unknown mode '{mode}'; choose one of: {', '.join(MODES)}.")
    mixtures = check_mixtures(mixtures)
    check_count("batch_size", batch_size, 1)
    model.eval()
    device = next(model.parameters()).device
    digits, images = [], []
    for i in range(0, len(mixtures), batch_size):
        mean = torch.from_numpy(mixtures[i: i + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255
        mnist_hat, cifar_hat = model(mean)
        m, c = recover(mean, mnist_hat.float(), cifar_hat.float(), mode)  # clipped to [0, 1]
        digits.append(to_u8(m.mean(1)))            # the digit is grey: the channels' mean
        images.append(to_u8(c.permute(0, 2, 3, 1)))
    return np.concatenate(digits), np.concatenate(images)


def check_mixtures(mixtures) -> np.ndarray:
    """The (N, 32, 32, 3) uint8 array ``separate`` takes, or MixsepError with one sentence. Pixels are 0-255 as an
    image file holds them: an array of floats in [0, 1] (torch's convention) would be read as a near-black
    mixture and separated into wrong images without a word, so any dtype but uint8 is refused, not guessed at."""
    if not isinstance(mixtures, np.ndarray):
        raise MixsepError(f"Mixtures must be a numpy array of shape (N, 32, 32, 3) and type uint8 (got "
                          f"{type(mixtures).__name__}); np.asarray(x, np.uint8) makes one of a list, x.cpu().numpy() of a torch tensor.")
    if mixtures.dtype != np.uint8:
        raise MixsepError(f"Mixtures must be uint8 pixels, 0 to 255 as image files hold them (got {mixtures.dtype}); "
                          "floats in [0, 1] are (x * 255).round().astype(np.uint8).")
    if mixtures.ndim != 4 or mixtures.shape[1:] != (*SIZE, 3) or not len(mixtures):
        raise MixsepError(f"Mixtures must be an array of shape (N, 32, 32, 3), N >= 1 images of 32x32 pixels in RGB "
                          f"(got shape {mixtures.shape}); one image x is x[None].")
    return np.ascontiguousarray(mixtures)  # a flipped or strided view: torch.from_numpy takes no negative strides


def to_u8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def prepare(inputs: list[Path], out_dir: Path | str, overwrite: bool = False, this_run: Path | None = None,
            reads=()) -> tuple[np.ndarray, list[dict[str, Path]]]:
    """Read and check every input and every output path before anything is computed or written.

    An input named twice (the same file by resolved path) is separated once: two writes of one
    output would share one temporary name."""
    if isinstance(out_dir, str) and not out_dir.strip():  # Path("") is Path("."): the current folder, silently
        raise MixsepError("--out is empty; name the folder for the outputs (default ./separated).")
    out_dir = Path(out_dir)
    named: dict[Path, Path] = {}
    for p in map(Path, inputs):
        named.setdefault(p.resolve(), p)  # the first naming of each file
    inputs = list(named.values())
    if not inputs:
        raise MixsepError("Give at least one mixture image to separate.")
    pixels = np.stack([read_mixture(p) for p in inputs])
    paths = output_paths(inputs, out_dir)
    check_outputs(paths, out_dir, overwrite, inputs, this_run, reads)
    return pixels, paths


def write_outputs(paths: list[dict[str, Path]], digits: np.ndarray, images: np.ndarray, overwrite: bool = False) -> None:
    """Every output or, with one sentence, none; a --out folder made here is removed again then. Without
    ``overwrite`` an output that another command wrote meanwhile is not replaced (run.write_all)."""
    out_dir = next(iter(paths[0].values())).parent
    made = not out_dir.exists()
    try:
        out_dir.mkdir(exist_ok=True)
    except OSError as e:
        raise MixsepError(f"Could not create {out_dir} ({e.strerror or e.__class__.__name__}).") from None
    write_all(((d[source], png_bytes(px)) for d, digit, image in zip(paths, digits, images)
               for source, px in (("mnist", digit), ("cifar", image))), out_dir if made else None, overwrite=overwrite)


