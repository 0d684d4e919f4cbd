"""MNIST and CIFAR-10 readers, the on-disk cache, and the pair data of the report.

Files are decoded once with numpy (so partial sets, such as the first 1,000
CIFAR test images, work and no PIL runs per item), kept as uint8 tensors, and
cached on disk. Training batches are index gathers on those tensors, mixed as
whole batches.

Layouts read under a data root (the first that exists wins, per source/split):
  MNIST:    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]   (torchvision)
            mnist/*{train,test}*.npz, MNIST/*{train,test}*.npz, mnist_{train,test}*.npz
  CIFAR-10: cifar-10-batches-py/{data_batch_1..5,test_batch}             (torchvision)
            cifar10/*{train,test}*.npz, cifar10_{train,test}*.npz
An .npz holds ``images`` (uint8, N x 32 x 32 x 3, N x 28 x 28 or N x 32 x 32) and ``labels``.

Data files are data, never code: CIFAR batches are unpickled by an unpickler that
builds only containers and numpy arrays, npz files load with allow_pickle=False,
and pixels outside 0..255 or labels of the wrong kind are refused, never wrapped.
The cache is keyed by the bytes of the files, so a changed file is never served stale.

torch is imported where tensors are made, not with the module: what finds, reports and downloads the
files (the dashboard's Home) starts without its seconds of imports.
"""
from __future__ import annotations

import _compat_pickle
import contextlib
import errno
import fcntl
import gzip
import hashlib
import importlib
import io
import math
import os
import pickle
import shlex
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .errors import MixsepError, check_count, make_folder, network_timeout, network_timeout_seconds, os_error_in
from .run import signals_held

if TYPE_CHECKING:
    import torch

SOURCES = ("mnist", "cifar")
SOURCE_NAMES = {"mnist": "MNIST", "cifar": "CIFAR-10"}  # as messages and pages name them
# what `download` fetches for a source, whichever of its splits is missing: MNIST's four archives, CIFAR-10's one
DOWNLOAD_MB = {"mnist": 12, "cifar": 170}
SPLITS = ("train", "test")
_CACHE_VERSION = 2  # bump when the decoded format or the key changes


# --------------------------------------------------------------------------- readers


def _file_bytes(path: Path) -> bytes:
    """The file as stored on disk: the cache key and the decoders read these same bytes."""
    if Path(path).exists() and not Path(path).is_file():  # a FIFO would block the read forever
        raise MixsepError(f"{path} is not a regular file; put the data file itself there.")
    try:
        return Path(path).read_bytes()
    except OSError as e:
        why = e.strerror or e.__class__.__name__
        raise MixsepError(f"Could not read {path} ({why}); check that it is a readable file.") from None


_DEFLATE_MAX_RATIO = 1032  # deflate never expands more than this, so a .gz cannot hold more than 1032x its size


def read_idx(path: Path, raw: bytes | None = None) -> np.ndarray:
    """Decode an IDX file (MNIST's format, gzipped or not) into a uint8 array.

    The header is checked against what the file can hold before the data is read,
    so a corrupt or hostile header costs one sentence, never a giant allocation.
    """
    path = Path(path)
    raw = _file_bytes(path) if raw is None else raw
    gz = path.suffix == ".gz"
    stream = gzip.GzipFile(fileobj=io.BytesIO(raw)) if gz else io.BytesIO(raw)
    try:
        first = stream.read(4)
        if len(first) < 4:
            raise MixsepError(f"{path} is too short to be an IDX file ({len(raw)} bytes); download it again.")
        magic = int.from_bytes(first, "big")
        if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
            raise MixsepError(f"{path} is not an unsigned-byte IDX file (magic number {magic}); "
                              f"is it really an MNIST file?")
        ndim = magic & 0xFF
        head = stream.read(4 * ndim)
        if len(head) < 4 * ndim:
            raise MixsepError(f"{path} is too short to be an IDX file (its header stops early); download it again.")
        dims = tuple(int.from_bytes(head[4 * i: 4 * i + 4], "big") for i in range(ndim))
        expected = math.prod(dims)  # Python ints: dimensions of 2**31 cannot overflow here
        room = len(raw) * _DEFLATE_MAX_RATIO if gz else len(raw) - 4 - 4 * ndim
        if expected > room:
            raise MixsepError(
                f"{path} is truncated or corrupt: its header promises {expected} bytes of data for shape {dims}, "
                f"more than its {len(raw)} bytes can hold; delete it and download it again."
            )
        body = stream.read(expected + 1)
    except (EOFError, OSError, zlib.error) as e:
        # (no command: `download` without this file's --data-root would fetch into ./data; info --check names it)
        raise MixsepError(f"{path} is truncated or corrupt ({e.__class__.__name__}); delete it and download it "
                          "again.") from None
    if len(body) != expected:
        raise MixsepError(
            f"{path} is truncated or corrupt: its header promises {expected} bytes of data for shape {dims} "
            f"but it holds {'more' if len(body) > expected else len(body)}; delete it and download it again."
        )
    return np.frombuffer(body, np.uint8).reshape(dims)


def _pixels(path: Path, array: np.ndarray, name: str) -> np.ndarray:
    """Integer pixels in 0..255 as uint8; anything else is refused, never wrapped."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iu":
        raise MixsepError(f"{path}: {name!r} must be uint8 pixels (whole numbers 0-255), not {array.dtype}.")
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if lo < 0 or hi > 255:
        raise MixsepError(f"{path}: {name!r} holds values from {lo} to {hi}, outside the 0-255 of 8-bit pixels; "
                          f"rescale it to uint8 and save it again.")
    return array.astype(np.uint8)


def _labels(path: Path, labels: np.ndarray, count: int, classes: int = 10) -> np.ndarray:
    """Class numbers 0..classes-1, one per image, as int64. A column of them, (N, 1), is read as (N,): Keras'
    cifar10.load_data() gives its labels so, and an .npz saved from it is a user's own good file."""
    if labels.ndim == 2 and labels.shape[1:] == (1,) and labels.dtype.kind in "iu":
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        shape = "a single number" if labels.ndim == 0 else f"an array of shape {labels.shape} and type {labels.dtype}"
        raise MixsepError(f"{path}: the labels are {shape}, not a list of whole numbers, one per image; "
                          f"is it really a labels file?")
    if len(labels) != count:
        raise MixsepError(f"{path}: there are {count} images but {len(labels)} labels; "
                          f"the files are corrupt or do not belong together.")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise MixsepError(f"{path}: the labels run from {labels.min()} to {labels.max()}, but the classes are "
                          f"0-{classes - 1}; is it really a labels file?")
    return labels.astype(np.int64)


def read_mnist_idx(images_path: Path, labels_path: Path | None,
                   raws: tuple[bytes | None, bytes | None] = (None, None)) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N, H, W) and labels from IDX files; without a labels file every label is -1."""
    images = read_idx(images_path, raws[0])
    if images.ndim != 3:
        what = "a labels file" if images.ndim == 1 else f"an array of shape {images.shape}"
        raise MixsepError(f"{images_path} is {what}, not MNIST images (N x 28 x 28); "
                          f"name the images-idx3 file.")
    if len(images) == 0 or images.shape[1:] not in ((28, 28), (32, 32)):
        raise MixsepError(f"{images_path} holds images of shape {images.shape}, expected N x 28 x 28 (or N x 32 x 32) "
                          f"with N >= 1.")
    if labels_path is None:
        return images, np.full(len(images), -1, np.int64)
    labels = read_idx(labels_path, raws[1])
    if labels.ndim != 1:
        what = "an image file" if labels.ndim == 3 else "an array"
        raise MixsepError(f"{labels_path} is {what} of shape {labels.shape}, not a list of labels; "
                          f"name the labels-idx1 file.")
    return images, _labels(labels_path, labels, len(images))


def _reconstruct_numpy(module: str, name: str):
    for prefix in ("numpy._core", "numpy.core"):  # numpy 2 spelling first: the old one warns there
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    return None


def _latin1_bytes(kind):
    """bytes/bytearray as Python 3 writes them in protocols 0-2: from latin-1 text, nothing else."""
    def build(text: str = "", encoding: str = "latin1", errors: str = "strict"):
        if not isinstance(text, str) or encoding.replace("-", "") != "latin1":
            raise pickle.UnpicklingError(f"{kind.__name__} from {type(text).__name__} with {encoding!r}")
        return kind(text, "latin1")
    return build


# Everything a CIFAR batch pickle can need, as written by Python 2 or 3 and numpy 1 or 2 (any protocol).
_BATCH_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"{p}.multiarray", n): _reconstruct_numpy("multiarray", n)
       for p in ("numpy.core", "numpy._core") for n in ("_reconstruct", "scalar")},
    **{(f"{p}.numeric", "_frombuffer"): _reconstruct_numpy("numeric", "_frombuffer")  # protocol 5
       for p in ("numpy.core", "numpy._core")},
    ("_codecs", "encode"): _latin1_bytes(bytes),
    ("builtins", "bytes"): _latin1_bytes(bytes),
    ("builtins", "bytearray"): _latin1_bytes(bytearray),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """The global a Python 2 name stands for (commands.call is subprocess.call), as pickle itself maps it."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers and numpy arrays.

    ``find_class`` runs when the pickle names a global, before anything is called,
    so a file that asks for anything else (os.system, open, ...) is refused before
    any of it runs.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # Python 2 batches hold str, decoded byte for byte
        self.path = path

    def find_class(self, module: str, name: str):
        module, name = _python3_name(module, name)
        found = _BATCH_GLOBALS.get((module, name))
        if found is None:
            raise MixsepError(
                f"{self.path} is not a plain CIFAR-10 batch: it asks to run {module}.{name}, which a data file "
                f"never needs, so it was refused before anything in it ran; delete it and download it again."
            )
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not data")


def _unpickle_batch(path: Path, raw: bytes) -> dict:
    try:
        d = _BatchUnpickler(io.BytesIO(raw), path).load()
    except MixsepError:
        raise
    except Exception as e:  # pickle errors come in many classes; all mean the same to a user
        raise MixsepError(
            f"{path} is not a readable CIFAR-10 batch ({e.__class__.__name__}: {e}): another kind of file, or a "
            "damaged batch (then delete it and download it again)."
        ) from None
    if not isinstance(d, dict):
        raise MixsepError(f"{path} holds a {type(d).__name__}, not a CIFAR-10 batch (a dict with 'data' and "
                          f"'labels'); delete it and download it again.")
    # Python 2 pickles load with str keys, files written from Python 3 with bytes keys
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _as_array(path: Path, value, name: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise MixsepError(f"{path}: {name!r} is not a regular array (rows of different lengths or mixed "
                          f"types); delete it and download it again.") from None


def read_cifar_batches(paths: list[Path], raws: list[bytes] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode CIFAR-10 python pickle batches into (N, 32, 32, 3) uint8 images and labels."""
    images, labels = [], []
    for p, raw in zip(paths, raws or [None] * len(paths)):
        d = _unpickle_batch(p, _file_bytes(p) if raw is None else raw)
        key, classes = ("labels", 10) if "labels" in d else ("fine_labels", 100)  # fine_labels: CIFAR-100
        if "data" not in d or key not in d:
            raise MixsepError(f"{p} has no 'data' and 'labels' (it has: {', '.join(map(str, d)) or 'nothing'}); "
                              f"it is not a CIFAR-10 batch.")
        data = _pixels(p, _as_array(p, d["data"], "data"), "data")
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) == 0:
            raise MixsepError(f"{p}: 'data' has shape {data.shape}, expected N x 3072 (one 32 x 32 RGB image "
                              f"per row) with N >= 1.")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(_labels(p, _as_array(p, d[key], key), len(data), classes))
    return np.concatenate(images), np.concatenate(labels)


def read_npz(path: Path, source: str, raw: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an .npz with ``images`` and ``labels``; check the shape fits the source."""
    path = Path(path)
    key = "images"
    try:
        with np.load(io.BytesIO(raw) if raw is not None else path, allow_pickle=False) as z:
            if "images" not in z:
                raise MixsepError(f"{path} has no 'images' array (it has: {', '.join(z.files) or 'nothing'}).")
            images = z["images"]
            key = "labels"
            labels = z["labels"] if "labels" in z else None
    except MixsepError:
        raise
    except ValueError as e:
        if "allow_pickle" not in str(e):  # numpy's words for pickled objects, which we never load
            raise MixsepError(f"{path} is not a readable .npz file (ValueError); is it truncated?") from None
        raise MixsepError(f"{path} stores {key!r} as Python objects, which are never loaded from a data file "
                          f"(they can run code); save it as a plain integer array.") from None
    except Exception as e:
        raise MixsepError(f"{path} is not a readable .npz file ({e.__class__.__name__}); is it truncated?") from None
    images = _pixels(path, images, "images")
    ok = images.ndim == 4 and images.shape[1:] == (32, 32, 3)
    if source == "mnist":
        ok = ok or (images.ndim == 3 and images.shape[1:] in ((28, 28), (32, 32)))
    if not ok or len(images) == 0:
        want = "N x 28 x 28, N x 32 x 32 or N x 32 x 32 x 3" if source == "mnist" else "N x 32 x 32 x 3"
        raise MixsepError(f"{path}: 'images' has shape {images.shape}, expected {want} with N >= 1.")
    if labels is None:
        return images, np.full(len(images), -1, np.int64)
    return images, _labels(path, labels, len(images))


# --------------------------------------------------------------------------- finding files


_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def _there(path: Path) -> bool:
    """Something is at the path: a file, or what the reader refuses in one sentence naming it (a FIFO, a
    folder, a link to nothing), rather than calling the data missing."""
    return path.exists() or path.is_symlink()


def _first_existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None) or next((c for c in candidates if _there(c)), None)


_MNIST_RAW, _CIFAR_PY = ("MNIST", "raw"), "cifar-10-batches-py"  # the downloaders' folders, under the data root


def _npz_globs(source: str, split: str) -> list[str]:
    """The names, relative to the data root, under which an .npz of one source/split is read (the first found)."""
    if source == "mnist":
        return [f"mnist/*{split}*.npz", f"MNIST/*{split}*.npz", f"mnist_{split}*.npz"]
    return [f"cifar10/*{split}*.npz", f"cifar10_{split}*.npz"]


def _npz_candidates(root: Path, source: str, split: str) -> list[Path]:
    return [p for g in _npz_globs(source, split) for p in sorted(root.glob(g))]


def is_data_path(root: Path, path: Path) -> bool:
    """Whether ``path`` is, or would be read as, one of the data root's files: a data file there (also where a
    link among them leads), any name the .npz readers would take, or anything in the downloaders' folders."""
    import fnmatch

    root = Path(root)
    where = Path(path).parent.resolve() / Path(path).name  # where a write lands, through any symlinked folder
    if any(where == f.resolve() for source in SOURCES for split in SPLITS
           for f in [*(find_source(root, source, split) or ()), *_npz_candidates(root, source, split)]):
        return True
    try:
        rel = where.relative_to(root.resolve())
    except ValueError:
        return False
    return (rel.parts[:2] == _MNIST_RAW or rel.parts[:1] == (_CIFAR_PY,)
            or any(fnmatch.fnmatchcase(rel.as_posix(), g) for source in SOURCES for split in SPLITS
                   for g in _npz_globs(source, split)))


def find_source(root: Path, source: str, split: str) -> list[Path] | None:
    """The files that hold one source/split under root, or None if there are none."""
    root = Path(root)
    if source == "mnist":
        raw = root.joinpath(*_MNIST_RAW)
        pre = _MNIST_PREFIX[split]
        img = _first_existing(raw / f"{pre}-images-idx3-ubyte", raw / f"{pre}-images-idx3-ubyte.gz")
        lab = _first_existing(raw / f"{pre}-labels-idx1-ubyte", raw / f"{pre}-labels-idx1-ubyte.gz")
        if img and lab:
            return [img, lab]
    else:
        folder = root / _CIFAR_PY
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        found = [folder / n for n in names if _there(folder / n)]
        if found:
            return found
    npz = _npz_candidates(root, source, split)
    return npz[:1] or None


def expected_files(root: Path, source: str, split: str) -> str:
    root = Path(root)
    if source == "mnist":
        pre = _MNIST_PREFIX[split]
        return (f"{root}/MNIST/raw/{pre}-images-idx3-ubyte[.gz] and {pre}-labels-idx1-ubyte[.gz] "
                f"(or {root}/mnist/mnist_{split}.npz)")
    names = "data_batch_1 .. data_batch_5" if split == "train" else "test_batch"
    return f"{root}/cifar-10-batches-py/{names} (or {root}/cifar10/cifar10_{split}.npz)"


def root_is_a_file(root: Path) -> str | None:
    """The sentence for a data root that is a file, not a folder (download says so too); None otherwise."""
    if Path(root).exists() and not Path(root).is_dir():
        return f"The data root {root} is a file, not a folder; name the folder that holds MNIST/ and CIFAR-10."
    return None


def missing_message(root: Path, source: str, split: str) -> str:
    return root_is_a_file(root) or (f"No {SOURCE_NAMES[source]} {split} data under {root}: expected "
                                    f"{expected_files(root, source, split)}. Run `python -m mixsep download "
                                    f"--data-root {shlex.quote(str(root))}` where the internet is reachable, or copy "
                                    "the files there.")


def data_status(root: Path) -> list[dict]:
    """What is found under root, one row per source/split (for `info` and the dashboard)."""
    rows = []
    for source in SOURCES:
        for split in SPLITS:
            files = find_source(Path(root), source, split)
            rows.append({"source": source, "split": split, "found": bool(files),
                         "files": [str(f) for f in files] if files else [],
                         "expected": expected_files(Path(root), source, split)})
    return rows


# --------------------------------------------------------------------------- decoding + cache


def resize_mnist(images: np.ndarray) -> torch.Tensor:
    """28x28 digits -> 32x32 uint8, bilinear.

    Bilinear with half-pixel centres, in floating point, rounded half to even: the method of torchvision's
    Resize on PIL images (what the report used), not its pixels, which PIL computes in fixed point (one grey
    level apart in about 4% of them). It keeps strokes smooth where nearest would make blocky 8/7-pixel steps.
    Done once on the whole array, never per item.
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))  # frombuffer arrays are read-only
    if x.shape[-1] == 32:
        return x.clone()
    out = torch.empty(len(x), 32, 32, dtype=torch.uint8)
    for i in range(0, len(x), 8192):  # chunks keep the float copy small
        chunk = x[i: i + 8192].unsqueeze(1).float()
        up = F.interpolate(chunk, size=(32, 32), mode="bilinear", align_corners=False)
        out[i: i + 8192] = up.squeeze(1).round().clamp_(0, 255).to(torch.uint8)
    return out


def decode_files(files: list[Path], source: str, raws: list[bytes] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Files (or their bytes, already read) -> (images, labels).

    MNIST images come out (N, 32, 32); CIFAR (N, 3, 32, 32).
    """
    import torch

    files = [Path(f) for f in files]
    raws = raws or [None] * len(files)
    if files[0].suffix == ".npz":
        images, labels = read_npz(files[0], source, raws[0])
    elif source == "mnist":
        images, labels = read_mnist_idx(files[0], files[1], (raws[0], raws[1]))
    else:
        images, labels = read_cifar_batches(files, raws)
    if source == "mnist":
        if images.ndim == 4:  # RGB digits: they are grey, keep one channel
            if not (np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])):
                raise MixsepError(f"{files[0]} holds colour images, where MNIST digits are grey (their three "
                                  "channels equal); is it a CIFAR file given as MNIST?")
            images = images[..., 0]
        return resize_mnist(images), torch.from_numpy(labels)
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), torch.from_numpy(labels)


def cache_dir() -> Path:
    return Path(os.environ.get("MIXSEP_CACHE_DIR") or Path.home() / ".cache" / "mixsep").expanduser()  # set but empty: the default


def _cache_key(files: list[Path], source: str, raws: list[bytes]) -> str:
    """A digest of the files' bytes: a file replaced by another of the same size and mtime gets a new key.

    SHA-256 rather than a faster non-cryptographic hash: it is in the standard library, runs at
    about 1.5 GB/s on CPUs with SHA extensions, and no crafted file can collide with another
    (bench/cache_hash.py measures it against decoding and loading).
    """
    h = hashlib.sha256(f"v{_CACHE_VERSION}:{source}:{len(files)}".encode())
    for f, raw in zip(files, raws):
        h.update(f"{Path(f).suffix}:{len(raw)}:".encode())  # the length keeps file boundaries unambiguous
        h.update(raw)
    return h.hexdigest()[:32]


def load_files(files: list[Path], source: str, use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode files, through the on-disk cache (keyed by the files' content).

    Each file is read once: the key is the digest of the very bytes a miss decodes, so an
    entry can never hold the tensors of another version of the file.
    """
    import torch

    files = [Path(f) for f in files]
    raws = [_file_bytes(f) for f in files]
    path = cache_dir() / f"{source}-{_cache_key(files, source, raws)}.npz"
    try:  # a cache folder whose name cannot be (too long, say) is no cache: it only costs speed
        cached = use_cache and path.is_file()
    except (OSError, ValueError):
        cached = use_cache = False
    if cached:
        try:
            with np.load(path, allow_pickle=False) as z:
                return torch.from_numpy(z["images"]), torch.from_numpy(z["labels"])
        except Exception:
            pass  # a damaged cache entry is rebuilt below, never shown to the user
    images, labels = decode_files(files, source, raws)
    del raws
    if use_cache:
        _write_cache(path, images, labels)
    return images, labels


CACHE_ROOM = 100 * 2**20  # free space a cache entry leaves on its disk at least (and 5% of the disk)
_STALE_TMP_S = 3600  # a cache temp file this old belongs to a write that was killed (SIGKILL, a power cut)


def _write_cache(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Write a cache entry atomically, where it leaves room on its disk; an unwritable cache only costs speed.

    The cache shares its disk with the runs folder (~/.cache and ./runs, say): an entry written to the disk's last
    bytes made a training there stop with "disk is full" (the full CIFAR-10 entry is 154 MB), so an entry that
    would leave less than CACHE_ROOM (or 5% of the disk) free is not written. The temp file goes however the
    write ends, a Ctrl-C or SIGTERM included (one interrupted write left 33 MB behind, for good), and the temp
    files of writes killed outright go once they are an hour old.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(path.parent)
        if usage.free - (images.numel() * images.element_size() + labels.numel() * labels.element_size()) < \
                max(CACHE_ROOM, usage.total // 20):
            return
        for old in path.parent.glob("tmp*.tmp"):
            with contextlib.suppress(OSError):
                if time.time() - old.stat().st_mtime > _STALE_TMP_S:
                    old.unlink()
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            tmp = f.name
            np.savez(f, images=images.numpy(), labels=labels.numpy())
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # a full disk, a read-only folder: no cache this time
    finally:
        if tmp is not None:  # cut off (a full disk, a Ctrl-C): the part-written temp file goes
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def require_split(root: Path, split: str) -> None:
    """Refuse, with missing_message's sentence, a data root without both sources of ``split``
    (the CLI and the dashboard ask before they make a run folder for a run that could not load)."""
    for source in SOURCES:
        if not find_source(Path(root), source, split):
            raise MixsepError(missing_message(Path(root), source, split))


def load_split(root: Path, source: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split not in SPLITS or source not in SOURCES:
        raise MixsepError(f"Unknown {'split' if source in SOURCES else 'source'} "
                          f"'{split if source in SOURCES else source}'; choose one of: "
                          f"{', '.join(SPLITS if source in SOURCES else SOURCES)}.")
    files = find_source(Path(root), source, split)
    if not files:
        raise MixsepError(missing_message(Path(root), source, split))
    return load_files(files, source)


def load_path(path: Path, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One user-named file: an .npz, an IDX image file (labels beside it if present), or a CIFAR batch."""
    import torch

    path = Path(path)
    if not path.exists():
        raise MixsepError(f"{path} does not exist.")
    if path.is_dir():
        raise MixsepError(f"{path} is a folder; name an .npz, an IDX file or a CIFAR-10 batch file.")
    if path.suffix == ".npz":
        return load_files([path], source)
    if source == "mnist":
        lab_path = labels_beside(path)
        images, labels = read_mnist_idx(path, lab_path)
        return resize_mnist(images), torch.from_numpy(labels)
    return load_files([path], source)


def labels_beside(path: Path) -> Path | None:
    """The IDX labels file that ``load_path`` reads beside MNIST images given by the user, if there is one."""
    path = Path(path)
    if path.suffix == ".npz":
        return None
    lab_path = Path(str(path).replace("images-idx3", "labels-idx1"))
    return lab_path if lab_path != path and lab_path.is_file() else None


# --------------------------------------------------------------------------- download


def download(root: Path, splits=SPLITS) -> None:
    """Fetch what is missing with torchvision's own downloaders (they show progress bars).

    torchvision writes into a hidden folder inside the data root (the same file system), and only the files
    that are missing are moved into place from there: its MNIST walks all four archives whatever the split,
    fetches again any .gz that is not the official one and unpacks every archive over the files beside it, and
    its CIFAR-10 unpacks all six batches, so run on the data root itself it overwrote the user's own files.
    """
    from torchvision import datasets

    network_timeout_seconds()  # a bad MIXSEP_NETWORK_TIMEOUT is refused before anything is made
    root = Path(root)
    made = [] if root.is_dir() else [p for p in (root, *root.parents) if not p.exists()]
    root = make_folder(root, "the data root",
                       f"The data root {root} is a file, not a folder; name a folder to download into.")
    _remove_stale_staging(root)
    for split in splits:
        for source in SOURCES:
            if find_source(root, source, split):
                print(f"{source} {split}: found under {root}")
                continue
            try:
                kept = _fetch(datasets, root, source, split)
            except BaseException as e:  # URLError, HTTPError, a timeout, md5 mismatch, Ctrl-C, SIGTERM...
                for folder in made:  # deepest first: root, then the parents this call made for it
                    try:
                        folder.rmdir()
                    except OSError:
                        break  # not empty (an earlier split, or a whole archive kept), or not made here
                if not isinstance(e, Exception) or isinstance(e, MixsepError):
                    raise
                disk = os_error_in(e, DISK_ERRNOS)  # the data root's disk, not the network (said to want the internet)
                if disk is not None:
                    raise MixsepError(
                        f"Could not download {source} {split} into {root}: "
                        + ("the disk holding it is full; free some space" if disk.errno in (errno.ENOSPC, errno.EDQUOT)
                           else f"it is not writable ({disk.strerror}); choose a writable --data-root")
                        + " and run the download again.") from None
                why = " ".join(str(e).split())  # torchvision lists every mirror it tried on its own line
                why = why if len(why) <= 160 else why[:157] + "..."
                raise MixsepError(
                    f"Could not download {source} {split} into {root}: "
                    + ("no download server could be reached, as on a machine without internet" if _unreachable(e)
                       else "the download failed") + f" ({e.__class__.__name__}: {why}). Run the same download where "
                    f"the internet is reachable, or copy the files there by hand: {expected_files(root, source, split)}."
                ) from None
            note = f" (kept the files that were there: {', '.join(p.name for p in kept)})" if kept else ""
            print(f"{source} {split}: downloaded into {root}{note}")


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)  # a full or read-only disk

_OFFLINE = ("urlopen error", "Name or service not known", "Temporary failure in name resolution",
            "Network is unreachable", "No route to host", "Connection refused", "timed out")


def _unreachable(e: BaseException) -> bool:
    """Whether a download failed for want of a network (no name, no route, a refused or timed-out connection),
    not for what a server answered (an HTTP error, a checksum). torchvision wraps the URLError of each mirror it
    tried in a RuntimeError that quotes it, so the chain and the text are both read."""
    import socket
    import urllib.error

    seen = e
    while seen is not None:
        if isinstance(seen, urllib.error.HTTPError):
            return False
        if isinstance(seen, (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror)):
            return True
        seen = seen.__cause__ or seen.__context__
    return any(marker in str(e) for marker in _OFFLINE)


_STAGING = ".mixsep-download-"


def _remove_stale_staging(root: Path, min_age_s: float = 60.0) -> None:
    """Remove the hidden folders that downloads killed outright (SIGKILL, a power cut) left in root: each
    download holds a lock on its own folder while it lives, so a folder whose lock is free is one nobody
    owns. One younger than ``min_age_s`` is left alone: its download may not have locked it yet."""
    try:
        entries = [p for p in root.iterdir() if p.name.startswith(_STAGING)]
    except OSError:
        return
    for folder in entries:
        try:
            if folder.is_symlink() or not folder.is_dir() or time.time() - folder.stat().st_mtime < min_age_s:
                continue
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a download that is running holds it
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder)
            print(f"Removed {folder.name} from {root}: what a download stopped before it could clean up left there.")
        except OSError:
            pass
        finally:
            os.close(fd)


def _fetcher(datasets, source: str, split: str):
    """torchvision's dataset class for one source/split. MNIST's own fetches the archives of both splits:
    this one fetches the split's two (its class name is the folder it writes to, MNIST/raw)."""
    if source == "cifar":
        return datasets.CIFAR10
    pre = f"{_MNIST_PREFIX[split]}-"
    resources = [r for r in datasets.MNIST.resources if r[0].startswith(pre)]
    return type("MNIST", (datasets.MNIST,), {"resources": resources})


def _download_files(cls, source: str, split: str) -> tuple[dict, list]:
    """What a download of source/split puts in place, as paths under the data root: its archives with their
    md5, and its files in groups. A group is put in place only where none of its files is there but the
    official archive: an unpacked MNIST file and its .gz hold the same data, so a user's own one of either
    stays what is read."""
    if source == "mnist":
        raw = Path("MNIST", "raw")
        archives = {raw / name: md5 for name, md5 in cls.resources}
        return archives, [(raw / os.path.splitext(name)[0], raw / name) for name, _ in cls.resources]
    folder = Path(cls.base_folder)
    batches = cls.train_list if split == "train" else cls.test_list
    return ({Path(cls.filename): cls.tgz_md5},
            [(Path(cls.filename),)] + [(folder / name,) for name, _ in batches] + [(folder / cls.meta["filename"],)])


def _fetch(datasets, root: Path, source: str, split: str) -> list[Path]:
    """Download one source/split into a hidden folder in root and move into root the files that are missing
    there; the folder goes whatever happens. Returns the files of the download that were there and stay.

    After a failure only the archives that passed their checksum are moved (the next download starts from
    them): a file cut off mid-transfer, or one unpacked from an archive when Ctrl-C came, never reaches root.
    """
    from torchvision.datasets.utils import check_integrity

    cls = _fetcher(datasets, source, split)
    archives, groups = _download_files(cls, source, split)
    staging, lock, seeded = None, None, set()
    try:
        with signals_held():  # made and known as one step: a Ctrl-C between them would leave it behind
            staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=root))
            lock = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)  # held while this process lives: the folder
            fcntl.flock(lock, fcntl.LOCK_EX)                        # of one killed outright is known by its free lock
        for rel, md5 in archives.items():  # an official archive that is here is copied in, not fetched again
            with contextlib.suppress(OSError):  # unreadable, or not a regular file (a FIFO would block)
                if (root / rel).is_file() and check_integrity(str(root / rel), md5):
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(root / rel, staging / rel)
                    seeded.add(rel)
        with network_timeout():
            cls(str(staging), train=split == "train", download=True)
    except BaseException:
        with signals_held():
            if staging is not None:
                with contextlib.suppress(OSError, MixsepError):  # best effort: the download's own error is said
                    whole = {rel for rel, md5 in archives.items() if check_integrity(str(staging / rel), md5)}
                    _put_in_place(staging, root, groups, seeded, whole)
                shutil.rmtree(staging, ignore_errors=True)
            if lock is not None:
                os.close(lock)
        raise
    with signals_held():  # renames, quickly done: never left half done by a Ctrl-C
        try:
            kept = _put_in_place(staging, root, groups, seeded)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            os.close(lock)
    return [root / rel for rel in kept if rel not in seeded]


def _put_in_place(staging: Path, root: Path, groups: list, official: set, only: set | None = None) -> list[Path]:
    """Move each group of downloaded files (those in ``only``, if given) from staging to the same place under
    root, where none of the group is there but ``official`` archives; the files that are there stay as they
    are, and those of groups left out are returned."""
    kept = []
    for group in groups:
        there = [rel for rel in group if _there(root / rel)]
        if set(there) - official:
            kept += there
            continue
        for rel in group:
            if rel not in there and (staging / rel).is_file() and (only is None or rel in only):
                _move(staging / rel, root / rel)
    return kept


def _move(src: Path, dst: Path) -> None:
    """Rename src to dst, or copy it there (then rename) across file systems: a folder of the data root
    linked elsewhere. Never a file cut off halfway at dst."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, dst)
            return
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
        try:
            with open(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out)
            os.replace(tmp, dst)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except OSError as e:
        raise MixsepError(f"Downloaded {dst.name}, but could not put it in {dst.parent} "
                          f"({e.strerror or e.__class__.__name__}); make that a writable folder and download "
                          f"again.") from None


# --------------------------------------------------------------------------- pairs


def mix(mnist: torch.Tensor, cifar: torch.Tensor) -> torch.Tensor:
    """The report's mixture: the pixel-wise mean of the two sources."""
    return (mnist + cifar) * 0.5


def to_float(mnist_u8: torch.Tensor, cifar_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 batches -> float (B, 3, 32, 32) mnist, cifar and mean in [0, 1]."""
    mnist = (mnist_u8.unsqueeze(1).float() / 255).expand(-1, 3, -1, -1)  # grey -> RGB without a copy
    cifar = cifar_u8.float() / 255
    return mnist, cifar, mix(mnist, cifar)


@dataclass
class PairData:
    """Item i pairs mnist[i] with cifar[i]; length is the shorter of the two (or ``size``).

    With ``repair`` every epoch draws fresh MNIST partners for the CIFAR images
    (seeded by seed and epoch), so all 60,000 digits are used against 50,000 images.
    """

    mnist: torch.Tensor          # (N, 32, 32) uint8
    mnist_labels: torch.Tensor
    cifar: torch.Tensor          # (M, 3, 32, 32) uint8
    cifar_labels: torch.Tensor
    size: int = 0
    repair: bool = False
    seed: int = 0

    def __post_init__(self):
        available = min(len(self.mnist), len(self.cifar))
        if self.size > available:
            raise MixsepError(
                f"Asked for {self.size} pairs but only {available} are available "
                f"({len(self.mnist)} MNIST digits, {len(self.cifar)} CIFAR images); lower the training size or use 0 for all."
            )
        self.n = self.size or available

    def __len__(self) -> int:
        return self.n

    def partners(self, epoch: int) -> torch.Tensor:
        """MNIST index paired with CIFAR image i, for i < n."""
        import torch

        if not self.repair:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)  # any valid seed
        return torch.randperm(len(self.mnist), generator=g)[: self.n]

    def __getitem__(self, i: int):
        """The report's item: (mnist, cifar, mean, mnist_label, cifar_label) for the first epoch's pairing."""
        j = int(self.partners(0)[i]) if self.repair else i
        m, c, avg = to_float(self.mnist[j: j + 1], self.cifar[i: i + 1])
        return m[0], c[0], avg[0], int(self.mnist_labels[j]), int(self.cifar_labels[i])

    def to(self, device) -> "PairData":
        """Keep the uint8 tensors on the training device so batches never cross the bus."""
        self.mnist, self.cifar = self.mnist.to(device), self.cifar.to(device)
        return self

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.n // batch_size

    def batches(self, epoch: int, batch_size: int, shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield uint8 (mnist, cifar) batches by index gather.

        Only full batches: a ragged last batch would make BatchNorm statistics and the
        step time jump, and its samples are reshuffled into the next epoch anyway.
        """
        import torch

        if batch_size > self.n:
            raise MixsepError(f"Batch size {batch_size} is larger than the {self.n} training pairs; lower it.")
        g = torch.Generator().manual_seed((self.seed * 7919 + epoch) % 2**63)
        order = torch.randperm(self.n, generator=g) if shuffle else torch.arange(self.n)
        # indices go to the device once per epoch: a per-batch copy from the host would sync with the GPU every step
        dev = self.mnist.device
        order, partner = order.to(dev), self.partners(epoch).to(dev)
        for s in range(self.steps_per_epoch(batch_size)):
            idx = order[s * batch_size: (s + 1) * batch_size]
            yield self.mnist[partner[idx]], self.cifar[idx]

    def eval_batches(self, batch_size: int, count: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """In order, the first ``count`` pairs (all if 0), last batch included."""
        n = min(count or self.n, self.n)
        for s in range(0, n, batch_size):
            e = min(s + batch_size, n)
            yield self.mnist[s:e], self.cifar[s:e]


def load_pairs(root: Path, split: str, size: int = 0, repair: bool = False, seed: int = 0,
               mnist_path: Path | None = None, cifar_path: Path | None = None) -> PairData:
    """Pairs for a split; explicit files override what the root holds."""
    check_count("size", size, 0)
    m, ml = load_path(mnist_path, "mnist") if mnist_path else load_split(root, "mnist", split)
    c, cl = load_path(cifar_path, "cifar") if cifar_path else load_split(root, "cifar", split)
    return PairData(m, ml, c, cl, size=size, repair=repair, seed=seed)


CALIBRATION_PAIRS = 512  # training pairs that fit the optimal projection weight


def calibration_pairs(root: Path, count: int = CALIBRATION_PAIRS, end: int | None = None) -> PairData | None:
    """The last ``count`` training pairs (before pair ``end``, if given), for fitting the projection weight;
    None without training data.

    The tail of the training split is held out whenever a run trains on a subset
    (``train_size`` smaller than the split); a single scalar fitted on 512 pairs
    cannot overfit them either way. ``end`` keeps images scored as held out (pairs from
    ``end`` on) out of the fit.
    """
    if find_source(root, "mnist", "train") is None or find_source(root, "cifar", "train") is None:
        return None  # no training split: the weight stays 1/2; one that is there but damaged is said so
    m, ml = load_split(root, "mnist", "train")
    c, cl = load_split(root, "cifar", "train")
    end = min(len(m), len(c), len(c) if end is None else end)
    n = min(end, count)  # copies: slices would keep the whole training split in memory (215 MB of CIFAR-10's)
    return PairData(m[end - n:end].clone(), ml[end - n:end].clone(), c[end - n:end].clone(), cl[end - n:end].clone())
