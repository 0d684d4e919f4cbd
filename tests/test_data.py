"""Readers, cache, and pair data, exercised on tiny files in the real formats."""
from __future__ import annotations

import gzip
import os
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fake_cifar, fake_digits, make_data_root, write_cifar_batch, write_idx
from mixsep import MixsepError
from mixsep import data as D


def test_idx_round_trip_gzipped_and_raw(tmp_path):
    imgs, labels = fake_digits(5, np.random.default_rng(1))
    write_idx(tmp_path / "a.gz", imgs)
    write_idx(tmp_path / "b", labels, gz=False)
    assert np.array_equal(D.read_idx(tmp_path / "a.gz"), imgs)
    assert np.array_equal(D.read_idx(tmp_path / "b"), labels)


def test_truncated_gzip_says_so(tmp_path):
    imgs, _ = fake_digits(50, np.random.default_rng(1))
    write_idx(tmp_path / "x.gz", imgs)
    raw = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MixsepError, match="truncated or corrupt"):
        D.read_idx(tmp_path / "x.gz")


def test_idx_shorter_than_header_promises(tmp_path):
    imgs, _ = fake_digits(4, np.random.default_rng(1))
    write_idx(tmp_path / "x", imgs, gz=False)
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-10])
    with pytest.raises(MixsepError, match="header promises"):
        D.read_idx(tmp_path / "x")


def test_idx_wrong_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)
    with pytest.raises(MixsepError, match="not an unsigned-byte IDX"):
        D.read_idx(tmp_path / "x")


def test_cifar_batch_layout_chw_to_hwc(tmp_path):
    imgs, labels = fake_cifar(3, np.random.default_rng(2))
    write_cifar_batch(tmp_path / "b", imgs, labels)
    got, lab = D.read_cifar_batches([tmp_path / "b"])
    assert got.shape == (3, 32, 32, 3) and np.array_equal(got, imgs) and np.array_equal(lab, labels)


def test_cifar_garbage_file(tmp_path):
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(MixsepError, match="not a readable CIFAR-10 batch"):
        D.read_cifar_batches([tmp_path / "test_batch"])


@pytest.mark.parametrize("shape,source,ok", [
    ((4, 32, 32, 3), "cifar", True), ((4, 28, 28), "mnist", True), ((4, 32, 32), "mnist", True),
    ((4, 28, 28), "cifar", False), ((4, 32, 32, 4), "cifar", False), ((0, 32, 32, 3), "cifar", False),
])
def test_npz_shapes(tmp_path, shape, source, ok):
    p = tmp_path / "x.npz"
    np.savez(p, images=np.zeros(shape, np.uint8), labels=np.zeros(shape[0], np.uint8))
    if ok:
        images, labels = D.read_npz(p, source)
        assert images.shape == shape
    else:
        with pytest.raises(MixsepError, match="expected"):
            D.read_npz(p, source)


def test_npz_wrong_dtype_and_missing_key(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 32, 32, 3), np.float32), labels=np.zeros(2))
    with pytest.raises(MixsepError, match="must be uint8"):
        D.read_npz(tmp_path / "f.npz", "cifar")
    np.savez(tmp_path / "k.npz", pictures=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(MixsepError, match="no 'images' array"):
        D.read_npz(tmp_path / "k.npz", "cifar")
    (tmp_path / "t.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(MixsepError, match="not a readable .npz"):
        D.read_npz(tmp_path / "t.npz", "cifar")


def test_pickle_batches_win_over_npz_and_npz_is_found_alone(tmp_path):
    root = make_data_root(tmp_path / "d", n_train=20, n_test=10)
    imgs, labels = fake_cifar(7, np.random.default_rng(3))
    (root / "cifar10").mkdir()
    np.savez(root / "cifar10" / "cifar10_train_first7.npz", images=imgs, labels=labels)
    assert D.find_source(root, "cifar", "train")[0].name == "data_batch_1"
    (root / "cifar-10-batches-py" / "data_batch_1").unlink()
    found = D.find_source(root, "cifar", "train")
    assert found[0].name.endswith(".npz")
    c, _ = D.load_split(root, "cifar", "train")
    assert c.shape == (7, 3, 32, 32) and torch.equal(c, torch.from_numpy(imgs).permute(0, 3, 1, 2))


def test_missing_data_names_the_files_and_the_fix(tmp_path):
    with pytest.raises(MixsepError) as e:
        D.load_split(tmp_path, "mnist", "test")
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "python -m mixsep download" in msg and str(tmp_path) in msg
    assert "\n" not in msg


def test_mnist_resize_matches_pil_bilinear(tmp_path):
    """Our whole-tensor resize agrees with PIL's bilinear Resize (what the report used) to 1 grey level."""
    imgs, _ = fake_digits(6, np.random.default_rng(4))
    ours = D.resize_mnist(imgs).numpy().astype(int)
    pil = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in imgs]).astype(int)
    assert ours.shape == (6, 32, 32)
    assert np.abs(ours - pil).max() <= 1


def test_a_cache_entry_leaves_room_on_its_disk_and_no_temp_file_behind(tmp_path, monkeypatch):
    """The cache shares its disk with the runs (~/.cache, ./runs): an entry written to the disk's last bytes made a
    training there stop with "disk is full". A Ctrl-C mid-write left the temp file for good (33 MB of CIFAR-10's
    entry), and nothing removed those of writes killed outright."""
    from conftest import tmpfs

    root = make_data_root(tmp_path / "d", n_train=12, n_test=6)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        monkeypatch.setenv("MIXSEP_CACHE_DIR", str(disk / "cache"))
        monkeypatch.setattr(D, "CACHE_ROOM", 4 * 2**20)
        (disk / "filler").write_bytes(b"x" * (5 * 2**20))  # 3 MB free: an entry would leave less than 4 MB
        D.load_split(root, "mnist", "test")
        assert not list((disk / "cache").iterdir())  # no entry, no temp file: the disk keeps its room
        (disk / "filler").unlink()
        old = disk / "cache" / "tmpkilled.tmp"  # a write killed an hour ago, and one under way now
        old.write_bytes(b"x" * 1000)
        os.utime(old, (time.time() - 7200,) * 2)
        (disk / "cache" / "tmpnow.tmp").write_bytes(b"x")
        D.load_split(root, "mnist", "test")
        assert sorted(p.name for p in (disk / "cache").iterdir() if not p.name.startswith("mnist-")) == ["tmpnow.tmp"]
        assert len(list((disk / "cache").glob("mnist-*.npz"))) == 1  # room again: the entry is written

        def interrupted(f, **arrays):  # the user's Ctrl-C, a real SIGINT, halfway through the entry
            f.write(b"half an entry")
            f.flush()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        monkeypatch.setattr(D.np, "savez", interrupted)
        with pytest.raises(KeyboardInterrupt):
            D.load_split(root, "cifar", "test")
        assert [p.name for p in (disk / "cache").glob("tmp*.tmp")] == ["tmpnow.tmp"]  # the part-written one went
        assert not list((disk / "cache").glob("cifar-*"))


def test_the_calibration_pairs_hold_no_more_than_themselves(tmp_path):
    """They were slices of the whole training split, which a cached copy then kept in memory (215 MB of the full
    CIFAR-10 and MNIST for 1.5 MB of pairs)."""
    root = make_data_root(tmp_path / "d", n_train=96, n_test=6)
    pairs = D.calibration_pairs(root, count=8)
    assert pairs.cifar.untyped_storage().nbytes() == 8 * 3 * 32 * 32
    assert pairs.mnist.untyped_storage().nbytes() == 8 * 32 * 32


def test_cache_is_used_and_invalidated(tmp_path, monkeypatch, roomy_cache):
    root = make_data_root(tmp_path / "d", n_train=12, n_test=6)
    first, _ = D.load_split(root, "mnist", "test")
    assert list(D.cache_dir().glob("mnist-*.npz"))

    def boom(*a, **k):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(D, "decode_files", boom)
    again, _ = D.load_split(root, "mnist", "test")
    assert torch.equal(first, again)
    # changing the file changes the key: the cache must not serve stale pixels
    imgs, labels = fake_digits(6, np.random.default_rng(99))
    write_idx(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", imgs)
    os.utime(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        D.load_split(root, "mnist", "test")


def test_pairs_mean_channels_and_range(data_root):
    pairs = D.load_pairs(data_root, "test")
    assert len(pairs) == 48
    m, c, avg, ml, cl = pairs[3]
    assert m.shape == c.shape == avg.shape == (3, 32, 32)
    assert torch.equal(m[0], m[1]) and torch.equal(m[1], m[2])  # grey replicated
    assert torch.allclose(avg, (m + c) / 2)
    assert 0 <= avg.min() and avg.max() <= 1
    assert torch.allclose(m[0], pairs.mnist[3].float() / 255)


def test_length_is_the_shorter_source_and_size_checks(tmp_path):
    root = make_data_root(tmp_path / "d", n_train=30, n_test=10)
    imgs, labels = fake_cifar(12, np.random.default_rng(0))
    write_cifar_batch(root / "cifar-10-batches-py" / "data_batch_1", imgs, labels)
    assert len(D.load_pairs(root, "train")) == 12
    assert len(D.load_pairs(root, "train", size=5)) == 5
    with pytest.raises(MixsepError, match="only 12 are available"):
        D.load_pairs(root, "train", size=13)


def test_batches_are_full_shuffled_and_seeded(data_root):
    pairs = D.load_pairs(data_root, "train")  # 96 pairs
    batches = list(pairs.batches(0, 40))
    assert [len(m) for m, _ in batches] == [40, 40]
    again = list(D.load_pairs(data_root, "train").batches(0, 40))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    other_epoch = list(pairs.batches(1, 40))
    assert not torch.equal(batches[0][1], other_epoch[0][1])
    with pytest.raises(MixsepError, match="larger than the 96"):
        next(pairs.batches(0, 97))


def test_repair_draws_new_partners_each_epoch_reproducibly(data_root):
    fixed = D.load_pairs(data_root, "train", size=50)
    assert torch.equal(fixed.partners(0), torch.arange(50)) and torch.equal(fixed.partners(3), torch.arange(50))
    r = D.load_pairs(data_root, "train", size=50, repair=True, seed=1)
    p0, p1 = r.partners(0), r.partners(1)
    assert not torch.equal(p0, p1) and len(set(p0.tolist())) == 50  # a permutation prefix: no repeats
    assert torch.equal(p0, D.load_pairs(data_root, "train", size=50, repair=True, seed=1).partners(0))
    assert p0.max() < 96  # draws from all digits, not only the first 50


def test_load_path_for_user_named_files(tmp_path, data_root):
    mn = D.load_path(data_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", "mnist")
    assert mn[0].shape == (48, 32, 32) and mn[1].min() >= 0  # labels found beside the images
    with pytest.raises(MixsepError, match="does not exist"):
        D.load_path(tmp_path / "nope.npz", "cifar")
    with pytest.raises(MixsepError, match="is a folder"):
        D.load_path(tmp_path, "cifar")


def test_download_offline_is_one_clear_sentence(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise OSError("Name or service not known")
    for name in ("MNIST", "CIFAR10"):  # classes, as torchvision's are: download fetches with a subclass of MNIST
        monkeypatch.setattr(tvd, name, type(name, (getattr(tvd, name),), {"__init__": offline}))
    with pytest.raises(MixsepError, match=r"Could not download mnist train .*: no download server could be reached, "
                                          r"as on a machine without internet \(OSError: Name or service not known\)"
                                          r".*copy the files there by hand"):
        D.download(tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_download_skips_what_is_present(data_root, monkeypatch, capsys):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "MNIST", lambda *a, **k: pytest.fail("tried to download present data"))
    monkeypatch.setattr(tvd, "CIFAR10", lambda *a, **k: pytest.fail("tried to download present data"))
    D.download(data_root)
    assert capsys.readouterr().out.count("found") == 4


def test_torchvision_mnist_layout_uncompressed(tmp_path):
    """torchvision unpacks the .gz files next to them; the uncompressed files read the same."""
    root = make_data_root(tmp_path / "d", n_train=8, n_test=8)
    raw = root / "MNIST" / "raw"
    for gz in raw.glob("*.gz"):
        (raw / gz.stem).write_bytes(gzip.open(gz).read())
        gz.unlink()
    m, labels = D.load_split(root, "mnist", "train")
    assert m.shape == (8, 32, 32) and len(labels) == 8
