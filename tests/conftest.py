"""Shared fixtures: tiny data roots written in the real on-disk formats."""
from __future__ import annotations

import contextlib
import gzip
import importlib
import json
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pytest

# The tests press Ctrl-C as a user at a terminal would, so every process they start must begin with a terminal's
# dispositions. A suite started in the background by a shell without job control (`(pytest ... &)`, some CI
# runners) inherits SIGINT and SIGQUIT ignored, and passes that on: Python keeps an ignored SIGINT ignored, so a
# `separate` whose Ctrl-C was held over its renames re-raised it into SIG_IGN and exited 0 (every full run
# started so, never in the foreground). Caught here, the default comes back in every exec'd child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)

# each pytest worker, and every process its tests start, takes its share of the cores (as a sweep's workers
# do): two workers of two torch threads each on two cores made every barrier wait for a descheduled thread
# (tests/test_sweep.py, test_run_folder.py, test_cli.py and test_app_pages.py side by side: 155 and 164 s
# against 166 and 174 s). Set before torch loads libgomp, which reads it once; a value set outside stays. Only
# in a worker: the controller, which imports this file first and runs no test, would pass its own to them all.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(
        os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import mixsep  # noqa: E402, F401  before torch, as in every mixsep process: its OpenMP threads sleep while they wait

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """The heavy tests first, the heaviest first, the rest in file order.

    pytest-xdist hands tests out in order; a long test left for the end keeps one worker busy
    while the other has nothing to do. Sent first, the long ones share the two workers and the
    many short ones even out the end.
    """
    def cpu_s(item):
        mark = item.get_closest_marker("heavy")
        return mark.args[0] if mark else 0

    items.sort(key=cpu_s, reverse=True)  # stable: equal weights (the short tests) keep their order


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real small disk: a tmpfs of ``size`` mounted at ``path`` (made if missing), unmounted after.

    Mounting needs root; without it the test is skipped, or fails where MIXSEP_REQUIRE_TMPFS is set
    (CI runs as root, and must run the full-disk tests)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode:
        if os.environ.get("MIXSEP_REQUIRE_TMPFS"):
            pytest.fail("cannot mount a tmpfs (CI runs as root and must)")
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def seen(markdown: str) -> str:
    """What a reader sees of markdown whose markup is escaped: the escapes dropped (word joiners kept)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


HOLD_LOCKS = """import fcntl, os, sys, time
for path in sys.argv[1:]:
    fcntl.flock(os.open(path, os.O_RDWR | os.O_CREAT), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def holding(*locks) -> subprocess.Popen:
    """A live process that holds a flock on each of ``locks`` (a run's .lock, as its trainer does; a study's
    .sweep.lock, as its sweep commands do), to name in a status.json or sweep.json written by a test: the
    pages and registries take only a lock's holder for a run's trainer or a sweep. Kill it when done."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCKS, *map(str, locks)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"locked\n"
    return proc


@contextlib.contextmanager
def held(*locks):
    """``holding(*locks)`` for a with block: the process is killed and reaped when the block ends."""
    proc = holding(*locks)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def unblock_fifo(fifo: Path, seconds: float = 2.0) -> None:
    """Move ``fifo`` aside and, for ``seconds``, give every reader blocked opening it its end of file: a test that
    failed by waiting on a FIFO then ends, and nothing opens it again by its name."""
    aside = fifo.with_name(f"{fifo.name}.aside")
    os.rename(fifo, aside)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.close(os.open(aside, os.O_WRONLY | os.O_NONBLOCK))  # refused (ENXIO) while no reader waits
        except OSError:
            pass
        time.sleep(0.02)


def not_waiting_on(fifo: Path, call, timeout: float = 20.0):
    """``call()``'s result, run in a thread beside ``fifo``; fails "a reader waits on the FIFO" when it is still
    blocked after ``timeout`` seconds (the FIFO is then given an end of file, so that the thread ends)."""
    import threading

    got = {}
    reader = threading.Thread(target=lambda: got.update(result=call()), daemon=True)
    reader.start()
    reader.join(timeout)
    waited = reader.is_alive()
    if waited:
        unblock_fifo(fifo)
    assert not waited, "a reader waits on the FIFO"
    return got["result"]


def cut_last_record(journal: Path, op_code: int) -> None:
    """Drop a sweep journal's last record, checking that it is of the kind named (4: a trial created)."""
    records = journal.read_bytes().splitlines(keepends=True)
    assert json.loads(records[-1])["op_code"] == op_code, records[-1]
    journal.write_bytes(b"".join(records[:-1]))


def stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait until every thread of ``pid`` is stopped (or the process is gone): kill() returns once SIGSTOP is
    sent, not once it has landed: a thread that takes the stop must first be scheduled, and on a busy machine
    the process may run on meanwhile (a rename, a step) while the condition is checked."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = [(Path(f"/proc/{pid}/task") / t / "stat").read_text().rsplit(") ", 1)[1][:1]
                      for t in os.listdir(f"/proc/{pid}/task")]
        except (OSError, IndexError):  # a thread that ended between the listing and its read: look again
            if not os.path.exists(f"/proc/{pid}"):
                return  # the process ended
            states = []
        if states and all(s in "TtZX" for s in states):
            return
        time.sleep(0.0005)
    raise AssertionError(f"process {pid} did not stop within {timeout} s of SIGSTOP")


def frozen_when(proc, cond, timeout: float = 240.0, what: str = "condition", slice_s: float = 0.005) -> None:
    """Run ``proc`` in short slices (SIGCONT, sleep, SIGSTOP) until ``cond`` holds while it is stopped.

    A tiny trial can finish between a poll and a kill; checked while the process is stopped, the
    condition still holds when the kill lands, on a fast machine as on a slow one.
    """
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            proc.send_signal(signal.SIGSTOP)
            stopped(proc.pid)
            if cond():
                return
            assert proc.poll() is None, f"the process ended before {what}"
            proc.send_signal(signal.SIGCONT)
            time.sleep(slice_s)
        raise AssertionError(f"timed out waiting for {what}")
    except BaseException:
        proc.send_signal(signal.SIGCONT)
        raise


# --------------------------------------------------------------------------- warm CLI processes

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# what every `python -m mixsep` spends its first ~6 CPU-seconds importing (torch._dynamo comes with
# the first optimizer step, torchmetrics with a sweep trial's first score: seconds more for each worker);
# the fork server imports them once per pytest worker
WARM_IMPORTS = ["torch", "torch._dynamo", "mixsep.cli", "mixsep.train", "mixsep.sweep", "mixsep.metrics", "torchmetrics",
                "optuna", "conftest"]
_warm_context = None


def _run_warm(argv: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    """The forked child: become `python -m mixsep ARGV` run in ``cwd`` with ``env``."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = [str(ROOT / "mixsep" / "__main__.py"), *argv]
    from mixsep.cli import main

    sys.exit(main(argv, restore_signals=False))  # as __main__ calls it


class WarmProcess:
    """`python -m mixsep ARGV` as a real process (its own pid, real signals, its own exit code),
    forked from a server that has already imported torch, mixsep and Optuna.

    It behaves as a cold start would from the first line of ``main``: the same arguments, working
    folder, environment (read when it starts, so a test's settings reach it), stdout and stderr.
    What it skips is the ~6 CPU-seconds of imports, which the fault tests would otherwise pay for
    each of their dozens of processes. Tests of the interpreter's own start-up use cold processes.
    The interface is the part of ``subprocess.Popen`` the tests use; output is text.
    """

    def __init__(self, argv, cwd=ROOT, env=None):
        global _warm_context
        if _warm_context is None:
            _warm_context = multiprocessing.get_context("forkserver")
            _warm_context.set_forkserver_preload(WARM_IMPORTS)
        self.args = ["mixsep", *map(str, argv)]
        fd, self._out = tempfile.mkstemp(prefix="warm-out-")
        os.close(fd)
        fd, self._err = tempfile.mkstemp(prefix="warm-err-")
        os.close(fd)
        self._proc = _warm_context.Process(
            target=_run_warm, args=(self.args[1:], str(cwd), dict(env if env is not None else os.environ),
                                    self._out, self._err))
        # multiprocessing re-runs the parent's __main__ file in the child; under AppTest that is a
        # Streamlit script. The child needs nothing from it: start with no main file to re-run.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            self._proc.start()
        finally:
            sys.modules["__main__"] = main
        self.pid = self._proc.pid
        self.returncode = None

    def poll(self):
        self.returncode = self._proc.exitcode
        return self.returncode

    def wait(self, timeout=None):
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def communicate(self, timeout=None):
        self.wait(timeout)
        return Path(self._out).read_text(errors="replace"), Path(self._err).read_text(errors="replace")

    def __del__(self):  # the output files go with the object, read or not
        for p in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if p:
                Path(p).unlink(missing_ok=True)


def warm_run(argv, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    """``subprocess.run([python, -m, mixsep, *argv], capture_output=True, text=True)`` on a WarmProcess."""
    proc = WarmProcess(argv, cwd, env)
    try:
        out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    """Write an unsigned-byte IDX file (MNIST's format), gzipped like the official archives."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_cifar_batch(path: Path, images_nhwc: np.ndarray, labels: np.ndarray) -> None:
    """Write a CIFAR-10 python batch: protocol-2 pickle, byte-string keys, CHW rows."""
    data = images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), -1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", b"labels": [int(v) for v in labels], b"data": data}, f, protocol=2)


def fake_digits(n: int, rng: np.random.Generator) -> np.ndarray:
    """28x28 images with a bright bar whose position depends on the label: learnable, not noise."""
    imgs = np.zeros((n, 28, 28), np.uint8)
    labels = rng.integers(0, 10, n)
    for i, lab in enumerate(labels):
        r = 4 + 2 * lab
        imgs[i, r:r + 3, 6:22] = 255
        imgs[i, 6:22, 4 + lab: 7 + lab] = 200
    return imgs, labels.astype(np.uint8)


def fake_cifar(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth colour images (low-frequency gradients plus a little noise)."""
    y, x = np.mgrid[0:32, 0:32] / 31.0
    base = rng.random((n, 1, 1, 3))
    slope = rng.random((n, 1, 1, 3)) - 0.5
    img = base + slope * (x[None, :, :, None] + y[None, :, :, None]) + 0.05 * rng.standard_normal((n, 32, 32, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def mixture_pngs(data_root: Path, folder: Path, n: int, stem: str = "mix") -> tuple[list[Path], np.ndarray]:
    """The first n test pairs of a data root saved as 8-bit PNG mixtures, as a user would have them:
    (the files FOLDER/<stem><i>.png, their (n, 32, 32, 3) uint8 pixels)."""
    from PIL import Image

    from mixsep.data import load_pairs
    pairs = load_pairs(data_root, "test")
    digits = pairs.mnist[:n].numpy().astype(np.float64)                       # (n, 32, 32)
    images = pairs.cifar[:n].permute(0, 2, 3, 1).numpy().astype(np.float64)   # (n, 32, 32, 3)
    mixed = np.round((digits[..., None] + images) / 2).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, px in enumerate(mixed):
        paths.append(folder / f"{stem}{i}.png")
        Image.fromarray(px).save(paths[-1])
    return paths, mixed


def tree(path: Path, skip: tuple[str, ...] = ()) -> dict:
    """Every file under path (but those named in ``skip``) with its bytes: 'nothing written' is this not changing."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name not in skip} if path.exists() else {}


def make_data_root(root: Path, n_train: int = 96, n_test: int = 48, seed: int = 0) -> Path:
    """A data root in torchvision's layouts: MNIST/raw/*.gz and cifar-10-batches-py/."""
    rng = np.random.default_rng(seed)
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        imgs, labels = fake_digits(n, rng)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte.gz", imgs)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte.gz", labels)
    cimg, clab = fake_cifar(n_train, rng)
    write_cifar_batch(root / "cifar-10-batches-py" / "data_batch_1", cimg, clab)
    timg, tlab = fake_cifar(n_test, rng)
    write_cifar_batch(root / "cifar-10-batches-py" / "test_batch", timg, tlab)
    return root


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Every test gets its own decode cache and no stray MIXSEP_* settings."""
    monkeypatch.setenv("MIXSEP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("MIXSEP_DATA_ROOT", raising=False)
    monkeypatch.delenv("MIXSEP_RUNS_DIR", raising=False)


@pytest.fixture
def roomy_cache(tmp_path, monkeypatch):
    """A decode cache on a disk of its own with room (a 1 GB tmpfs, as root): the cache writes no entry where it
    would leave less than 5% of its disk free, so on the host's disk a test that expects an entry failed whenever
    that disk was 95% full. Without root, the test's own folder on the host's disk."""
    path = tmp_path / "roomy-cache"
    path.mkdir()
    mounted = os.geteuid() == 0 and not subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(path)], capture_output=True).returncode
    monkeypatch.setenv("MIXSEP_CACHE_DIR", str(path))
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def data_root(tmp_path) -> Path:
    return make_data_root(tmp_path / "data")


@pytest.fixture
def tiny_config(data_root):
    """A config that trains in well under a second on the CPU: the loop, resume, job and fault
    tests exercise the machinery, not ResNet-18 (tests/test_model.py covers the real models)."""
    from mixsep import TrainConfig

    return TrainConfig(data_root=str(data_root), model="tiny", batch_size=16, epochs=1, pretrained=False,
                       device="cpu", checkpoint_every=2, checkpoint_seconds=0)


@pytest.fixture
def bench(monkeypatch):
    """Import a script from bench/ as its own folder would (it imports benchlib beside it)."""
    monkeypatch.syspath_prepend(str(BENCH))

    def load(name):
        sys.modules.pop(name, None)
        return importlib.import_module(name)
    return load
