"""`download` against a real local server, in real processes: it fetches only what is missing, never changes
or removes a file that was there, and leaves nothing behind when it fails or is stopped.

The server stands in for MNIST's and CIFAR-10's hosts with small archives made here; each child process points
torchvision at it (the mirror, the archive names and their md5) before it runs `main`, and every other address
goes to a closed port: no test can reach the internet.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, fake_cifar, fake_digits, wait_for, write_cifar_batch, write_idx
from mixsep import data as D

MNIST_NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
CIFAR_TGZ = "cifar-10-python.tar.gz"

CHILD = r"""
import json, sys
from torchvision import datasets
spec = json.loads(sys.argv[1])
datasets.MNIST.mirrors = [spec["url"] + "/"]
datasets.MNIST.resources = [tuple(r) for r in spec["mnist"]]
datasets.CIFAR10.url = spec["url"] + "/cifar-10-python.tar.gz"
datasets.CIFAR10.tgz_md5 = spec["tgz_md5"]
datasets.CIFAR10.train_list = spec["train_list"]
datasets.CIFAR10.test_list = spec["test_list"]
datasets.CIFAR10.meta = dict(datasets.CIFAR10.meta, md5=spec["meta_md5"])
from mixsep.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def _gz(array: np.ndarray) -> bytes:
    """An IDX file gzipped as the official MNIST archives are."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes(), mtime=0)


def _official() -> tuple[dict, dict]:
    """The served "official" archives (name: bytes) and the md5s the child gives torchvision."""
    rng = np.random.default_rng(7)
    files = {}
    for pre, n in (("train", 24), ("t10k", 12)):
        images, labels = fake_digits(n, rng)
        files[f"{pre}-images-idx3-ubyte.gz"], files[f"{pre}-labels-idx1-ubyte.gz"] = _gz(images), _gz(labels)
    members = {"batches.meta": pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}, protocol=2)}
    for name, n in [(f"data_batch_{i}", 8) for i in range(1, 6)] + [("test_batch", 8)]:
        images, labels = fake_cifar(n, rng)  # str keys, as the official batches (torchvision reads them so)
        members[name] = pickle.dumps({"data": images.transpose(0, 3, 1, 2).reshape(n, -1),
                                      "labels": [int(v) for v in labels]}, protocol=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    files[CIFAR_TGZ] = buf.getvalue()
    spec = {"mnist": [[name, _md5(files[name])] for name in MNIST_NAMES], "tgz_md5": _md5(files[CIFAR_TGZ]),
            "train_list": [[f"data_batch_{i}", _md5(members[f"data_batch_{i}"])] for i in range(1, 6)],
            "test_list": [["test_batch", _md5(members["test_batch"])]], "meta_md5": _md5(members["batches.meta"])}
    return files, spec


class FileServer:
    """A real HTTP server (a thread of this process): each file is served whole, or ``stall``ed (half sent,
    then nothing until the test ends), or ``cut`` (half sent, then the connection closed)."""

    def __init__(self):
        self.files, self.spec = _official()
        self.stall, self.cut, self.requested, self.stalled = set(), set(), [], threading.Event()
        self._release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requested.append(name)
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.stall or name in server.cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if name in server.stall:
                        server.stalled.set()
                        server._release.wait(120)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self, root: Path, timeout: float = 30) -> subprocess.Popen:
        """`download --data-root ROOT` in a child process that fetches from this server only."""
        closed = "http://127.0.0.1:9"  # the discard port: nothing listens, so any other address fails at once
        env = dict(os.environ, http_proxy=closed, https_proxy=closed, HTTP_PROXY=closed, HTTPS_PROXY=closed,
                   no_proxy="127.0.0.1", NO_PROXY="127.0.0.1", MIXSEP_NETWORK_TIMEOUT=str(timeout),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(dict(self.spec, url=self.url)),
                                 "download", "--data-root", str(root)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, root: Path, timeout: float = 30) -> tuple[int, str, str]:
        proc = self.start(root, timeout)
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err

    def close(self):
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


def _files(path: Path) -> dict:
    """Every file and link under path (links not followed into), with its bytes: the state a download must keep."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p))
            for p in sorted(path.rglob("*")) if p.is_file() or p.is_symlink()}


def _own_digits(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    return fake_digits(n, np.random.default_rng(seed))


@pytest.mark.heavy(8)  # cold child processes (torchvision is patched in each)
def test_download_fetches_only_what_is_missing_and_changes_nothing_that_was_there(tmp_path, server):
    """torchvision's MNIST walks all four archives whatever the split and unpacks each over the files beside it,
    and its CIFAR-10 unpacks all six batches: `download` said "mnist train: found", then the user's own unpacked
    train files became the official set, and the user's own CIFAR test_batch the official one."""
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    images, labels = _own_digits(1, 5)  # the user's own 5 digits, unpacked, beside the official archives
    write_idx(raw / "train-images-idx3-ubyte", images, gz=False)
    write_idx(raw / "train-labels-idx1-ubyte", labels, gz=False)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (raw / name).write_bytes(server.files[name])
    write_idx(raw / "t10k-images-idx3-ubyte", _own_digits(6, 12)[0], gz=False)  # their own test images; no labels
    cimg, clab = fake_cifar(6, np.random.default_rng(2))
    write_cifar_batch(root / "cifar-10-batches-py" / "test_batch", cimg, clab)  # the user's own; train is missing
    before = _files(root)

    code, out, err = server.run(root)
    after = _files(root)
    assert {k: after.get(k) for k in before} == before  # not one byte of what was there changed
    assert code == 0, err
    assert "mnist train: found" in out and "cifar test: found" in out
    assert "mnist test: downloaded" in out and "cifar train: downloaded" in out
    assert "(kept the files that were there: t10k-images-idx3-ubyte)" in out
    assert sorted(set(after) - set(before)) == sorted(
        ["MNIST/raw/t10k-labels-idx1-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte.gz", CIFAR_TGZ,
         "cifar-10-batches-py/batches.meta"] + [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)])
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # the staging folder is gone
    assert [p.name for p in D.find_source(root, "mnist", "train")] == ["train-images-idx3-ubyte",
                                                                        "train-labels-idx1-ubyte"]
    assert len(D.load_split(root, "mnist", "train")[0]) == 5  # still the user's own digits
    assert D.find_source(root, "mnist", "test")[0] == raw / "t10k-images-idx3-ubyte"  # theirs, not the official
    assert len(D.load_split(root, "mnist", "test")[0]) == 12
    assert len(D.load_split(root, "cifar", "test")[0]) == 6
    assert len(D.load_split(root, "cifar", "train")[0]) == 40


@pytest.mark.heavy(8)  # cold child processes (torchvision is patched in each)
def test_sigterm_while_a_download_stalls_changes_nothing_and_leaves_nothing(tmp_path, server):
    """With a server that stopped answering, the user's own readable train-images .gz (train "found") was fetched
    again over itself and cut off halfway; stopped there, it stayed cut."""
    root = tmp_path / "data"
    images, labels = _own_digits(3, 5)
    write_idx(root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz", images)
    write_idx(root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz", labels)
    cimg, clab = fake_cifar(6, np.random.default_rng(4))
    for name in ("data_batch_1", "test_batch"):
        write_cifar_batch(root / "cifar-10-batches-py" / name, cimg, clab)
    before = _files(root)
    server.stall = set(server.files)  # every file: half of it, then nothing

    proc = server.start(root, timeout=600)
    wait_for(lambda: server.stalled.is_set() or proc.poll() is not None, 120, "the download to stall")
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)  # the half it was sent is on disk
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: download interrupted by SIGTERM."
    assert _files(root) == before  # nothing changed, nothing left (the hidden folder it downloaded into is gone)
    assert sorted(p.name for p in root.iterdir()) == ["MNIST", "cifar-10-batches-py"]


@pytest.mark.heavy(14)  # cold child processes (torchvision is patched in each)
def test_a_failed_download_into_a_linked_mnist_folder_leaves_no_part_file_there(tmp_path, server):
    """DATA/MNIST a link to a folder elsewhere: the walk that found the new files did not enter it, so a failed
    download left its cut-off archive there. Whole archives stay (the next download starts from them)."""
    root, elsewhere = tmp_path / "data", tmp_path / "disk" / "MNIST"
    (elsewhere / "raw").mkdir(parents=True)
    (elsewhere / "notes.txt").write_text("mine")
    root.mkdir()
    (root / "MNIST").symlink_to(elsewhere, target_is_directory=True)
    for name in ("train", "test"):
        np.savez(root / f"cifar10_{name}.npz", images=fake_cifar(4, np.random.default_rng(5))[0],
                 labels=np.arange(4))
    server.cut = {"train-labels-idx1-ubyte.gz"}  # the images come whole, the labels are cut off halfway

    code, out, err = server.run(root)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("error: Could not download mnist train into ")
    assert ": the download failed (" in err  # a server that answered: not called offline
    assert "Traceback" not in err
    assert not (elsewhere / "raw" / "train-labels-idx1-ubyte.gz").exists()  # the part file (it was left there)
    assert _files(elsewhere) == {"notes.txt": b"mine",  # only the whole archive; no part file, nothing unpacked
                                 "raw/train-images-idx3-ubyte.gz": server.files["train-images-idx3-ubyte.gz"]}
    assert sorted(p.name for p in root.iterdir()) == ["MNIST", "cifar10_test.npz", "cifar10_train.npz"]

    server.cut, server.requested[:] = set(), []
    code, out, err = server.run(root)  # then the network is back: the rest goes into the linked folder
    assert code == 0, err
    assert (root / "MNIST").is_symlink()
    assert "train-images-idx3-ubyte.gz" not in server.requested  # the archive kept was not fetched again
    assert sorted(_files(elsewhere)) == sorted(["notes.txt"] + [f"raw/{n}" for n in MNIST_NAMES] +
                                               [f"raw/{n[:-3]}" for n in MNIST_NAMES])
    assert len(D.load_split(root, "mnist", "train")[0]) == 24


@pytest.mark.heavy(8)  # cold child processes (torchvision is patched in each)
def test_a_download_into_a_mnist_folder_linked_to_another_disk_copies_whole_files(tmp_path, server):
    """The hidden folder torchvision downloads into is on the data root's disk; a folder linked to another disk
    gets each file copied beside its place and renamed into it (a rename cannot cross disks): whole, no .part."""
    from conftest import tmpfs

    root = tmp_path / "data"
    with tmpfs(tmp_path / "disk", "16m") as disk:
        (disk / "MNIST").mkdir()
        root.mkdir()
        (root / "MNIST").symlink_to(disk / "MNIST", target_is_directory=True)
        for name in ("train", "test"):
            np.savez(root / f"cifar10_{name}.npz", images=fake_cifar(4, np.random.default_rng(5))[0],
                     labels=np.arange(4))
        assert os.stat(disk).st_dev != os.stat(root).st_dev

        code, out, err = server.run(root)
        assert code == 0, err
        assert _files(disk / "MNIST") == {f"raw/{n}": server.files[n] for n in MNIST_NAMES} | {
            f"raw/{n[:-3]}": gzip.decompress(server.files[n]) for n in MNIST_NAMES}
        assert sorted(p.name for p in root.iterdir()) == ["MNIST", "cifar10_test.npz", "cifar10_train.npz"]
        assert len(D.load_split(root, "mnist", "test")[0]) == 12


@pytest.mark.heavy(8)  # two cold child processes
def test_a_hidden_folder_left_by_a_killed_download_is_removed_by_the_next_but_never_a_running_ones(tmp_path, server,
                                                                                                   capsys):
    """SIGKILL gives a download no chance to remove the hidden folder it fetches into: half an archive stayed in
    the data root for good. The next download removes it; a folder that a running download holds stays."""
    root = tmp_path / "data"
    root.mkdir()
    hidden = lambda: sorted(p for p in root.iterdir() if p.name.startswith("."))  # noqa: E731
    server.stall = set(server.files)

    first = server.start(root, timeout=600)
    wait_for(lambda: any(p.is_file() for p in root.glob(".*/**/*")) or first.poll() is not None, 120,
             "the first download to open its archive")
    assert first.poll() is None, first.communicate()
    first.kill()
    first.communicate(timeout=60)
    [left] = hidden()  # killed outright: its folder, and the archive begun in it, stay
    assert any(p.is_file() for p in left.rglob("*"))
    hour_ago = time.time() - 3600
    os.utime(left, (hour_ago, hour_ago))

    server.stalled.clear()
    second = server.start(root, timeout=600)  # removes what the first left, then stalls in a folder of its own
    wait_for(lambda: server.stalled.is_set() or second.poll() is not None, 120, "the second download to stall")
    [running] = hidden()
    assert running != left
    os.utime(running, (hour_ago, hour_ago))  # as old as the killed one was: only its lock says it is in use

    D._remove_stale_staging(root)  # what a third download does first, while the second still runs
    assert "Removed" not in capsys.readouterr().out
    assert hidden() == [running]  # the running download's folder is left alone

    second.send_signal(signal.SIGTERM)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 130, err
    assert f"Removed {left.name} from {root}: what a download stopped before it could clean up left there." in out
    assert hidden() == []


@pytest.mark.heavy(4)  # cold child processes (torchvision is patched in each)
@pytest.mark.parametrize("options, says", [
    ("64k,ro", "it is not writable (Read-only file system); choose a writable --data-root"),
    ("4k", "the disk holding it is full; free some space"),
])
def test_a_data_root_on_a_read_only_or_full_disk_is_said_so_not_blamed_on_the_internet(tmp_path, server, options,
                                                                                       says):
    """QA: a download into a read-only data root said "the download failed (OSError: [Errno 30] Read-only file
    system ...). Run the same download where the internet is reachable"."""
    from conftest import tmpfs

    with tmpfs(tmp_path / "disk", options) as root:
        before = _files(root)
        code, out, err = server.run(root)
        assert code == 2 and err.strip().splitlines()[-1] == f"error: Could not download mnist train into {root}: " \
                                                             f"{says} and run the download again.", err
        assert list(root.rglob(".*")) == []  # no staging folder or part file left
        if "ro" in options:
            assert _files(root) == before
