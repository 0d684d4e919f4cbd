"""Hostile and odd data files: each is refused with one sentence, nothing in them runs, nothing is served stale."""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, fake_cifar, fake_digits, make_data_root, write_cifar_batch, write_idx
from mixsep import MixsepError
from mixsep import data as D


def refused(call, *args, match: str) -> str:
    """Run call(*args), expect a MixsepError of one sentence matching ``match``, return its text."""
    with pytest.raises(MixsepError, match=match) as e:
        call(*args)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith((".", "?")), msg
    return msg


# --------------------------------------------------------------------------- CIFAR pickles


class _Payload:
    """Pickles as a call of ``func(*args)``: what a crafted batch file would run on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.open": _Payload(open, str(marker), "w"),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
    }


def _hostile_batch(path, payload, protocol: int, first: bool) -> None:
    """A real-looking CIFAR batch with the payload before or after the pixel array."""
    imgs, labels = fake_cifar(4, np.random.default_rng(0))
    d = {b"data": imgs.transpose(0, 3, 1, 2).reshape(4, -1), b"labels": [int(v) for v in labels]}
    d = {b"batch_label": payload, **d} if first else {**d, b"filenames": [payload]}
    path.write_bytes(pickle.dumps(d, protocol=protocol))


@pytest.mark.parametrize("name", ["os.system", "builtins.open", "subprocess.call"])
@pytest.mark.parametrize("protocol,first", [(2, True), (2, False), (4, False), (5, True)])
def test_pickle_payload_in_a_cifar_batch_runs_nothing(tmp_path, name, protocol, first):
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.parent.mkdir()
    _hostile_batch(batch, _payloads(marker)[name], protocol, first)
    msg = refused(D.load_split, tmp_path, "cifar", "test", match="not a plain CIFAR-10 batch")
    forbidden = {"os.system": "system", "builtins.open": "open", "subprocess.call": "subprocess.call"}[name]
    assert forbidden in msg and str(batch) in msg
    assert not marker.exists()
    assert not list(D.cache_dir().glob("*.npz"))  # nothing half-decoded was cached either


def test_the_payload_is_live_under_plain_pickle(tmp_path):
    """The crafted file really runs its command under pickle.load, so the refusal above is what stops it."""
    marker = tmp_path / "pwned"
    _hostile_batch(tmp_path / "b", _payloads(marker)["os.system"], 2, True)
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(tmp_path / 'b')!r}, 'rb'))"],
                   check=True)
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_honest_batches_of_every_protocol_load(tmp_path, protocol):
    imgs, labels = fake_cifar(3, np.random.default_rng(protocol))
    d = {b"batch_label": b"", "labels": [int(v) for v in labels], b"data": imgs.transpose(0, 3, 1, 2).reshape(3, -1),
         b"filenames": [b"a.png", b"b.png", b""], b"extra": {1, 2}}
    (tmp_path / "b").write_bytes(pickle.dumps(d, protocol=protocol))
    got, lab = D.read_cifar_batches([tmp_path / "b"])
    assert np.array_equal(got, imgs) and np.array_equal(lab, labels)


def test_conftest_batches_and_the_real_python2_batch_load(tmp_path):
    imgs, labels = fake_cifar(5, np.random.default_rng(1))
    write_cifar_batch(tmp_path / "b", imgs, labels)
    got, lab = D.read_cifar_batches([tmp_path / "b"])
    assert np.array_equal(got, imgs) and np.array_equal(lab, labels)
    real = SHARED_DATA / "cifar-10-batches-py" / "test_batch"
    if not real.is_file():
        pytest.skip("../shared/data is not present")
    got, lab = D.read_cifar_batches([real])  # Python-2 pickle: str keys, pixels as latin-1 str
    assert got.shape == (1000, 32, 32, 3) and lab[:4].tolist() == [3, 8, 8, 0]
    assert got[0, 0, :10, 0].tolist() == [158, 159, 165, 166, 160, 156, 162, 159, 158, 159]


@pytest.mark.parametrize("bad,match", [(300, "from 0 to 300"), (-1, "from -1 to")])
def test_cifar_pixels_outside_0_255_are_refused_not_wrapped(tmp_path, bad, match):
    imgs, labels = fake_cifar(2, np.random.default_rng(0))
    data = imgs.transpose(0, 3, 1, 2).reshape(2, -1).astype(np.int64)
    data[1, 7] = bad
    (tmp_path / "b").write_bytes(pickle.dumps({"data": data, "labels": labels.tolist()}, protocol=2))
    refused(D.read_cifar_batches, [tmp_path / "b"], match=match)


def test_cifar_pixels_as_wide_integers_in_range_load(tmp_path):
    imgs, labels = fake_cifar(2, np.random.default_rng(0))
    rows = imgs.transpose(0, 3, 1, 2).reshape(2, -1)
    (tmp_path / "b").write_bytes(pickle.dumps({"data": rows.tolist(), "labels": labels.tolist()}))
    got, _ = D.read_cifar_batches([tmp_path / "b"])
    assert got.dtype == np.uint8 and np.array_equal(got, imgs)


@pytest.mark.parametrize("content,match", [
    ([1, 2, 3], "holds a list, not a CIFAR-10 batch"),
    ({"labels": [1]}, "has no 'data' and 'labels'"),
    ({"data": np.zeros((2, 1000), np.uint8), "labels": [1, 2]}, r"shape \(2, 1000\), expected N x 3072"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2, 3]}, "2 images but 3 labels"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": 7}, "labels are a single number"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 12]}, "labels run from 1 to 12, but the classes are 0-9"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [1, 2]}, "must be uint8 pixels"),
    ({"data": [[1, 2], [3]], "labels": [1, 2]}, "not a regular array"),
])
def test_cifar_batches_of_the_wrong_shape_or_kind(tmp_path, content, match):
    (tmp_path / "b").write_bytes(pickle.dumps(content, protocol=2))
    refused(D.read_cifar_batches, [tmp_path / "b"], match=match)


def test_cifar100_fine_labels_allow_100_classes(tmp_path):
    (tmp_path / "b").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [3, 99]}))
    assert D.read_cifar_batches([tmp_path / "b"])[1].tolist() == [3, 99]


# --------------------------------------------------------------------------- npz


def test_npz_object_arrays_get_their_own_sentence(tmp_path):
    np.savez(tmp_path / "o.npz", images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.array([1, "x"], dtype=object))
    msg = refused(D.read_npz, tmp_path / "o.npz", "cifar", match="stores 'labels' as Python objects")
    assert "truncated" not in msg
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"images": 1}))  # a pickle wearing an .npz name
    assert "truncated" not in refused(D.read_npz, tmp_path / "p.npz", "cifar", match="as Python objects")


@pytest.mark.parametrize("labels,match", [
    (np.array(3), "labels are a single number"),
    (np.zeros((2, 2), np.int64), r"shape \(2, 2\)"),
    (np.zeros(3, np.int64), "2 images but 3 labels"),
    (np.array([0.5, 1.0]), "type float64"),
    (np.array([1, 10]), "run from 1 to 10, but the classes are 0-9"),
])
def test_npz_labels_of_the_wrong_kind(tmp_path, labels, match):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 32, 32, 3), np.uint8), labels=labels)
    refused(D.read_npz, tmp_path / "x.npz", "cifar", match=match)


def test_npz_labels_in_a_column_as_keras_gives_them_are_read(tmp_path):
    """keras.datasets.cifar10.load_data() gives labels of shape (N, 1): an .npz saved from it was refused whole
    (and `info` advised removing the user's file), though nothing but the images is used."""
    np.savez(tmp_path / "k.npz", images=np.zeros((3, 32, 32, 3), np.uint8), labels=np.array([[4], [0], [9]], np.uint8))
    images, labels = D.read_npz(tmp_path / "k.npz", "cifar")
    assert images.shape == (3, 32, 32, 3) and labels.tolist() == [4, 0, 9] and labels.dtype == np.int64
    np.savez(tmp_path / "f.npz", images=np.zeros((3, 32, 32, 3), np.uint8), labels=np.zeros((3, 1), np.float32))
    refused(D.read_npz, tmp_path / "f.npz", "cifar", match=r"shape \(3, 1\) and type float32")  # as it is stored


def test_colour_images_given_as_mnist_are_refused_and_grey_rgb_digits_load(tmp_path):
    """An N x 32 x 32 x 3 .npz for MNIST: grey digits stored as RGB load; colour images (a CIFAR file
    given as --mnist-test) were taken as digits by their red channel, without a word."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", images=np.repeat(grey[..., None], 3, axis=-1), labels=np.arange(4))
    images, _ = D.decode_files([tmp_path / "grey.npz"], "mnist")
    assert images.shape == (4, 32, 32)
    colour = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "colour.npz", images=colour, labels=np.arange(4))
    with pytest.raises(MixsepError, match="holds colour images, where MNIST digits are grey"):
        D.decode_files([tmp_path / "colour.npz"], "mnist")


@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.uint16])
def test_npz_wide_pixels_load_in_range_and_are_refused_outside(tmp_path, dtype):
    imgs, labels = fake_cifar(2, np.random.default_rng(0))
    np.savez(tmp_path / "ok.npz", images=imgs.astype(dtype), labels=labels)
    got, _ = D.read_npz(tmp_path / "ok.npz", "cifar")
    assert got.dtype == np.uint8 and np.array_equal(got, imgs)
    wide = imgs.astype(dtype)
    wide[0, 0, 0, 0] = 300
    np.savez(tmp_path / "bad.npz", images=wide, labels=labels)
    refused(D.read_npz, tmp_path / "bad.npz", "cifar", match="from 0 to 300, outside the 0-255")


# --------------------------------------------------------------------------- IDX


def _idx_header(dims) -> bytes:
    return (0x0800 | len(dims)).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_whose_dimensions_overflow(tmp_path, gz):
    p = tmp_path / ("x.gz" if gz else "x")
    raw = _idx_header([2**31, 2**31, 2**31]) + bytes(64)
    p.write_bytes(gzip.compress(raw) if gz else raw)
    refused(D.read_idx, p, match="header promises 9903520314283042199192993792 bytes")


def test_idx_gzip_bomb_is_read_only_as_far_as_the_header_promises(tmp_path):
    """A .gz whose data runs far past its header is refused without inflating it all."""
    p = tmp_path / "bomb.gz"
    with gzip.open(p, "wb", compresslevel=1) as f:
        f.write(_idx_header([2, 28, 28]))
        for _ in range(96):
            f.write(bytes(1 << 20))  # 96 MiB of zeros, about 100 KB compressed
    tracemalloc.start()
    try:
        refused(D.read_idx, p, match="holds more")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak >> 20} MiB while reading a 1,568-byte promise"


def _swap_in(root, name, array):
    write_idx(root / "MNIST" / "raw" / name, array)


def test_a_labels_file_that_is_really_an_image_file(tmp_path):
    root = make_data_root(tmp_path / "d", n_train=8, n_test=8)
    imgs, _ = fake_digits(8, np.random.default_rng(0))
    _swap_in(root, "t10k-labels-idx1-ubyte.gz", imgs)
    refused(D.load_split, root, "mnist", "test", match=r"labels-idx1-ubyte.gz is an image file of shape \(8, 28, 28\)")
    refused(D.load_path, root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", "mnist", match="is an image file")


def test_an_images_file_that_is_really_a_labels_file(tmp_path):
    root = make_data_root(tmp_path / "d", n_train=8, n_test=8)
    _swap_in(root, "t10k-images-idx3-ubyte.gz", np.arange(8, dtype=np.uint8))
    refused(D.load_split, root, "mnist", "test", match="images-idx3-ubyte.gz is a labels file, not MNIST images")
    refused(D.load_path, root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", "mnist", match="is a labels file")


def test_mnist_labels_outside_0_9_are_refused(tmp_path):
    root = make_data_root(tmp_path / "d", n_train=8, n_test=8)
    _swap_in(root, "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 5, 6, 200], np.uint8))
    refused(D.load_split, root, "mnist", "test", match="labels run from 0 to 200, but the classes are 0-9")


def test_mnist_label_count_must_match(tmp_path):
    root = make_data_root(tmp_path / "d", n_train=8, n_test=8)
    _swap_in(root, "t10k-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    refused(D.load_split, root, "mnist", "test", match="there are 8 images but 7 labels")


# --------------------------------------------------------------------------- the cache is keyed by content


def _same_size_pair(tmp_path, kind):
    """Two different files of one format and one size, and the name the loader reads."""
    rng = np.random.default_rng(7)
    a, b = tmp_path / "a", tmp_path / "b"
    if kind == "cifar-batch":
        for p in (a, b):  # protocol 4 stores the pixels as raw bytes, so equal shapes give equal sizes
            imgs, labels = fake_cifar(6, rng)
            rows = imgs.transpose(0, 3, 1, 2).reshape(6, -1)
            p.write_bytes(pickle.dumps({b"data": rows, b"labels": labels.tolist()}, protocol=4))
        return a, b, ("cifar", "cifar-10-batches-py/test_batch")
    if kind == "cifar-npz":
        for p in (a, b):
            np.savez(p.with_suffix(".npz"), **dict(zip(("images", "labels"), fake_cifar(6, rng))))
        return a.with_suffix(".npz"), b.with_suffix(".npz"), ("cifar", "cifar10/cifar10_test.npz")
    for p in (a, b):
        write_idx(p, fake_digits(6, rng)[0], gz=False)
    return a, b, ("mnist", "MNIST/raw/t10k-images-idx3-ubyte")


@pytest.mark.parametrize("kind", ["cifar-batch", "cifar-npz", "mnist-idx"])
def test_a_same_size_file_with_its_mtime_kept_is_decoded_again(tmp_path, kind):
    first, second, (source, name) = _same_size_pair(tmp_path, kind)
    assert first.stat().st_size == second.stat().st_size and first.read_bytes() != second.read_bytes()
    root = make_data_root(tmp_path / "d", n_train=6, n_test=6)
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source == "mnist":
        (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").unlink()
        write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(6, np.uint8), gz=False)
    if kind == "cifar-npz":
        shutil.rmtree(root / "cifar-10-batches-py")
    shutil.copyfile(first, target)
    before, _ = D.load_split(root, source, "test")
    st = target.stat()

    shutil.copyfile(second, target)  # rewritten in place (same inode), then its old times put back
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = target.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)

    after, _ = D.load_split(root, source, "test")
    fresh, _ = D.load_files(D.find_source(root, source, "test"), source, use_cache=False)
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)


def test_the_same_bytes_under_another_path_come_from_the_cache(tmp_path, monkeypatch, roomy_cache):
    root = make_data_root(tmp_path / "d", n_train=6, n_test=6)
    first, _ = D.load_split(root, "cifar", "test")
    moved = shutil.copytree(root, tmp_path / "elsewhere")

    def boom(*a, **k):
        raise AssertionError("decoded again although the bytes are the same")
    monkeypatch.setattr(D, "decode_files", boom)
    again, _ = D.load_split(moved, "cifar", "test")
    assert torch.equal(first, again)


# --------------------------------------------------------------------------- empty files, empty settings, full caches


@pytest.mark.parametrize("shape", [(0, 28, 28), (5, 0, 0), (3, 7, 7)])
def test_idx_images_of_no_pixels_or_the_wrong_size(tmp_path, shape):
    root = make_data_root(tmp_path / "d", n_train=8, n_test=8)
    _swap_in(root, "t10k-images-idx3-ubyte.gz", np.zeros(shape, np.uint8))
    _swap_in(root, "t10k-labels-idx1-ubyte.gz", np.zeros(shape[0], np.uint8))
    refused(D.load_split, root, "mnist", "test", match=rf"holds images of shape \({shape[0]}, {shape[1]}, {shape[2]}\), "
                                                       r"expected N x 28 x 28 \(or N x 32 x 32\) with N >= 1")


def test_settings_set_but_empty_mean_their_defaults(monkeypatch):
    from mixsep.config import default_data_root, default_runs_dir

    for name in ("MIXSEP_CACHE_DIR", "MIXSEP_DATA_ROOT", "MIXSEP_RUNS_DIR"):
        monkeypatch.setenv(name, "")
    # an empty MIXSEP_CACHE_DIR once put 105 MB of decoded tensors in the working folder
    assert D.cache_dir() == Path.home() / ".cache" / "mixsep"
    assert (default_data_root(), default_runs_dir()) == ("./data", "./runs")


def test_download_into_a_data_root_that_is_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("hi")
    refused(D.download, afile, match="is a file, not a folder")
    # train and evaluate said "No MNIST train data under …/afile … run download" of the same file
    refused(D.require_split, afile, "train", match=f"The data root {afile} is a file, not a folder; name the folder")
    refused(D.load_split, afile, "cifar", "test", match="is a file, not a folder")
    assert afile.read_text() == "hi"


def test_info_check_of_a_data_root_that_is_a_file_says_so(tmp_path):
    """`info --check` called the four sets missing and said to run `download`, which then said the root is a file."""
    from conftest import warm_run

    afile = tmp_path / "afile"
    afile.write_text("hi")
    proc = warm_run(["info", "--check", "--model", "tiny", "--data-root", str(afile)], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: The data root {afile} is a file, not a folder; name the "
                                                    "folder that holds MNIST/ and CIFAR-10.")
    assert afile.read_text() == "hi"
    listed = warm_run(["info", "--model", "tiny", "--data-root", str(afile)], timeout=120)  # without --check: a list
    assert listed.returncode == 0 and f"  note: The data root {afile} is a file, not a folder" in listed.stdout, \
        listed.stdout + listed.stderr


def test_a_full_cache_disk_leaves_no_temp_files(tmp_path, monkeypatch):
    from conftest import tmpfs

    with tmpfs(tmp_path / "cache", "64k") as disk:
        monkeypatch.setenv("MIXSEP_CACHE_DIR", str(disk))
        root = make_data_root(tmp_path / "d", n_train=96, n_test=8)
        for _ in range(2):  # the cache write fails both times: the data still loads, nothing is left behind
            images, _ = D.load_split(root, "cifar", "train")
            assert len(images) == 96
        assert sorted(p.name for p in disk.iterdir()) == []


# --------------------------------------------------------------------------- a network that stops answering


@pytest.fixture
def stalled_proxy():
    """A real server that accepts connections and never answers: the proxy every download goes through."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held, done = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    yield dict(os.environ, http_proxy=url, https_proxy=url, HTTP_PROXY=url, HTTPS_PROXY=url, no_proxy="",
               MIXSEP_NETWORK_TIMEOUT="2"), held
    done.set()
    thread.join(5)
    for c in held:
        c.close()
    server.close()


@pytest.fixture
def cutting_proxy():
    """A real proxy that refuses https and cuts every http file off after its first 5,000 bytes."""
    import http.server
    import threading

    class Cut(http.server.BaseHTTPRequestHandler):
        def do_CONNECT(self):
            self.send_error(502)

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"\0" * 4998)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Cut)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield dict(os.environ, http_proxy=url, https_proxy=url, HTTP_PROXY=url, HTTPS_PROXY=url, no_proxy="",
               MIXSEP_NETWORK_TIMEOUT="5")
    server.shutdown()
    server.server_close()


def test_a_download_cut_off_mid_file_leaves_nothing_behind(tmp_path, cutting_proxy):
    """A refused download left the folders it made and the file it cut off, which the next train called a
    damaged MNIST file instead of missing data."""
    fresh = tmp_path / "new" / "root"  # made by the command, parents and all
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    from conftest import warm_run

    for root in (fresh, kept):  # real processes, forked warm
        proc = warm_run(["download", "--data-root", str(root)], env=cutting_proxy, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: Could not download mnist train into ")
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists()
    assert [p.name for p in kept.rglob("*")] == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine"


def test_a_download_from_a_server_that_stops_answering_gives_up_in_one_sentence(tmp_path, stalled_proxy):
    """urllib waits for ever by default: `download` hung until killed (and a trainer in torch.hub with it)."""
    proc = subprocess.run([sys.executable, "-m", "mixsep", "download", "--data-root", str(tmp_path / "root")],
                          capture_output=True, text=True, env=stalled_proxy[0], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Could not download mnist train into ")
    assert "timed out" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_while_the_weights_download_stalls_stops_the_trainer_at_once(tmp_path, stalled_proxy, data_root):
    """SIGTERM (the page's Stop) only asked for a stop after a step that a trainer stuck in torch.hub never
    reached: still hung 11 minutes later."""
    import signal
    import time

    env, held = stalled_proxy
    env = dict(env, MIXSEP_NETWORK_TIMEOUT="600", TORCH_HOME=str(tmp_path / "hub"))  # no cached weights
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "mixsep", "train", "--data-root", str(data_root), "--runs-dir",
                             str(runs), "--model", "faithful", "--train-size", "32", "--batch-size", "16", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not held and time.monotonic() < deadline and proc.poll() is None:  # it asks the proxy for the weights
        time.sleep(0.1)
    assert held, proc.communicate(timeout=10)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("error: train stopped before training began (Ctrl-C or SIGTERM); "
                                            "nothing was trained.")
    assert not runs.exists() or not any(runs.iterdir())  # the run folder it made is gone again


def test_a_checkpoint_that_would_run_code_is_refused_unrun_and_said_so(tmp_path):
    """Loaded as data only (weights_only): the payload never runs, and the sentence says why the file was refused
    (it read "may be truncated or corrupt")."""
    import torch

    from mixsep import MixsepError
    from mixsep.run import read_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "last.pt"
    torch.save({"version": 1, "config": {"model": "tiny"}, "step": 1, "model": {}, "x": _payloads(marker)["os.system"]},
               path)
    with pytest.raises(MixsepError, match="holds Python objects other than weights, which mixsep refuses to load"):
        read_checkpoint(path)
    assert not marker.exists()
    path.write_bytes(path.read_bytes()[:200])  # a truncated one is still called that
    with pytest.raises(MixsepError, match="it may be truncated or corrupt"):
        read_checkpoint(path)


def test_a_bare_pickle_as_a_checkpoint_is_named_one_in_one_sentence_and_never_run(tmp_path, capsys):
    """A plain pickle.dump (not torch.save's zip file) was called "truncated or corrupt", and one of protocol 4
    or 5 made torch print two lines of its own warning above the sentence, in every command that read it."""
    import warnings

    from mixsep.cli import main

    marker = tmp_path / "ran"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for protocol in (2, 4, 5):
        (run / "checkpoints" / "last.pt").write_bytes(pickle.dumps(_payloads(marker)["os.system"], protocol=protocol))
        with warnings.catch_warnings(record=True) as caught:  # what torch printed on stderr, outside pytest
            warnings.simplefilter("always")
            assert main(["evaluate", str(run), "--data-root", str(tmp_path)]) == 2
        assert not caught, [str(w.message) for w in caught]
        says = ("holds Python objects other than weights, which mixsep refuses to load (a checkpoint is loaded as "
                "data only)" if protocol == 2 else  # torch's loader names the function it was asked to call
                "is a bare Python pickle, not a PyTorch file as mixsep writes its checkpoints, and mixsep loads a "
                "checkpoint as data only")  # it stops at an opcode of protocol 4 before reaching the call
        assert capsys.readouterr().err == (f"error: {run / 'checkpoints' / 'last.pt'} {says}; it was not written by "
                                           "mixsep. Pick another checkpoint or retrain.\n"), protocol
        assert not marker.exists()
    for protocol in range(6):  # plain data: protocols 1 to 3 failed on torch's magic number, "truncated or corrupt"
        (run / "checkpoints" / "last.pt").write_bytes(pickle.dumps({"model": {"w": [1.0]}, "step": 3}, protocol))
        assert main(["evaluate", str(run), "--data-root", str(tmp_path)]) == 2
        assert "last.pt is a bare Python pickle, not a PyTorch file" in capsys.readouterr().err, protocol
