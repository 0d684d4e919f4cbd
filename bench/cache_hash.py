"""What keying the decode cache by content costs, measured side by side in one run.

    python bench/cache_hash.py --data-root ../shared/data [--repeats 5]

For every source/split found under the data root (MNIST .gz IDX files, CIFAR-10 npz or
pickle batches), each repetition times, in turn:
  key      read the files and hash their bytes (what a load now does before it looks in the cache)
  entry    np.load of the cache entry alone (about what a hit cost when the key was path/size/mtime)
  hit      load_files through a warm cache: key + entry
  decode   load_files without the cache: read, decode, resize the digits
The files sit in the page cache after the first read, as they do when a user loads them again.
Then the same bytes go through the hash functions at hand, to show why SHA-256 was chosen.
Figures are min and median milliseconds over the repetitions; ratios are of medians.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import at_least, data_root

from mixsep import MixsepError
from mixsep.config import default_data_root
from mixsep.data import SOURCES, SPLITS, _cache_key, _file_bytes, cache_dir, find_source, load_files, missing_message

STEPS = ("key", "entry", "hit", "decode")


def hashers() -> dict:
    """Hash functions to compare; xxhash only if it happens to be installed (mixsep does not need it)."""
    found = {"sha256": hashlib.sha256, "blake2b": hashlib.blake2b, "sha1": hashlib.sha1, "md5": hashlib.md5}
    try:
        import xxhash
        found["xxh3_128 (PyPI xxhash)"] = xxhash.xxh3_128
    except ImportError:
        pass
    return found


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def steps(files: list[Path], source: str) -> dict:
    """The four timed steps of one source/split, as zero-argument callables."""
    load_files(files, source)  # fills the cache and the page cache
    entry = next(cache_dir().glob(f"{source}-{_cache_key(files, source, [_file_bytes(f) for f in files])}.npz"))

    def read_entry():
        with np.load(entry, allow_pickle=False) as z:
            z["images"], z["labels"]

    return {
        "key": lambda: _cache_key(files, source, [_file_bytes(f) for f in files]),
        "entry": read_entry,
        "hit": lambda: load_files(files, source),
        "decode": lambda: load_files(files, source, use_cache=False),
    }


def summary(times: list[float]) -> str:
    return f"{min(times) * 1e3:8.1f} {statistics.median(times) * 1e3:8.1f}"


def ratios(times: dict) -> str:
    med = {s: statistics.median(times[s]) for s in STEPS}
    return f"   {med['key'] / med['hit']:7.2f} {med['key'] / med['decode']:10.3f} {med['hit'] / med['decode']:10.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=default_data_root(), help="folder holding MNIST and CIFAR-10")
    p.add_argument("--repeats", type=int, default=5, help="repetitions of each step (min and median are shown)")
    args = p.parse_args(argv)
    try:
        at_least("--repeats", args.repeats)  # none left nothing to take a minimum of, after decoding everything
        args.data_root = data_root(args.data_root)
        sets = [(f"{s} {sp}", files, s) for s in SOURCES for sp in SPLITS
                if (files := find_source(args.data_root, s, sp))]
        if not sets:  # a data root that is a file, or one holding nothing: the readers' own sentence
            raise MixsepError(missing_message(args.data_root, "mnist", "train"))
    except MixsepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    saved = os.environ.get("MIXSEP_CACHE_DIR")
    cache = tempfile.mkdtemp(prefix="mixsep-bench-cache-")  # never touch the user's cache; ~100 MB, removed after
    os.environ["MIXSEP_CACHE_DIR"] = cache
    try:
        return measure(args, sets)
    except MixsepError as e:  # a data file that does not decode
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if saved is None:
            os.environ.pop("MIXSEP_CACHE_DIR", None)
        else:
            os.environ["MIXSEP_CACHE_DIR"] = saved


def measure(args, sets: list) -> int:
    calls = {name: steps(files, source) for name, files, source in sets}
    times = {name: {s: [] for s in STEPS} for name in calls}
    for _ in range(args.repeats):  # alternate, so drift in machine load falls on every step alike
        for name, fns in calls.items():
            for s in STEPS:
                times[name][s].append(timed(fns[s]))

    print(f"data root {args.data_root}, {args.repeats} repetitions, ms as min / median")
    print(f"{'set':12s} {'MB':>6s} " + " ".join(f"{s:>17s}" for s in STEPS) + "   key/hit key/decode hit/decode")
    totals = {s: [0.0] * args.repeats for s in STEPS}
    for name, files, _ in sets:
        mb = sum(f.stat().st_size for f in files) / 1e6
        t = times[name]
        for s in STEPS:
            totals[s] = [a + b for a, b in zip(totals[s], t[s])]
        print(f"{name:12s} {mb:6.1f} " + " ".join(summary(t[s]) for s in STEPS) + ratios(t))
    mb = sum(f.stat().st_size for _, files, _ in sets for f in files) / 1e6
    print(f"{'all':12s} {mb:6.1f} " + " ".join(summary(totals[s]) for s in STEPS) + ratios(totals))

    blob = b"".join(_file_bytes(f) for _, files, _ in sets for f in files)
    print(f"\nhash functions on the same {len(blob) / 1e6:.1f} MB, ms as min / median, and MB/s at the median")
    for name, h in hashers().items():
        t = [timed(lambda: h(blob).digest()) for _ in range(args.repeats)]
        print(f"  {name:24s} {summary(t)} {len(blob) / 1e6 / statistics.median(t):8.0f}")
    med = {s: statistics.median(totals[s]) * 1e3 for s in STEPS}
    print(f"\ncache_hash: key_ms={med['key']:.0f} hit_ms={med['hit']:.0f} decode_ms={med['decode']:.0f} "
          f"key/hit={med['key'] / med['hit']:.2f} key/decode={med['key'] / med['decode']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
