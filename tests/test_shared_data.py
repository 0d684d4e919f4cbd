"""The real data in ../shared/data, when present: exact reads and a few real training steps."""
from __future__ import annotations


import numpy as np
import pytest

from conftest import SHARED_DATA
from mixsep import TrainConfig
from mixsep.data import load_pairs, load_split
from mixsep.train import train_steps

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="../shared/data is not present")


def test_real_files_decode_exactly():
    m, ml = load_split(SHARED_DATA, "mnist", "test")
    assert m.shape == (10000, 32, 32)
    assert np.bincount(ml.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    c, cl = load_split(SHARED_DATA, "cifar", "test")  # the pickle batch (1,000 images)
    assert c.shape == (1000, 3, 32, 32)
    assert cl[:8].tolist() == [3, 8, 8, 0, 6, 6, 1, 6]
    assert c[0, 0, 0, :10].tolist() == [158, 159, 165, 166, 160, 156, 162, 159, 158, 159]  # red, row 0
    ct, ctl = load_split(SHARED_DATA, "cifar", "train")  # the npz (10,000 images)
    assert ct.shape == (10000, 3, 32, 32)
    assert np.bincount(ctl.numpy()).tolist() == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]


@pytest.mark.heavy(8)
def test_a_few_real_training_steps_lower_the_loss(tmp_path):
    # the unet (about 4x cheaper a step than ResNet-18; tests/test_model.py trains the faithful model)
    cfg = TrainConfig(data_root=str(SHARED_DATA), model="unet", train_size=256, batch_size=32, epochs=2, pretrained=False,
                      device="cpu", lr=2e-3, checkpoint_every=100)
    losses = [r.loss for r in train_steps(cfg, tmp_path / "run")]
    assert len(losses) == 16 and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert len(load_pairs(SHARED_DATA, "test")) == 1000  # 1,000 CIFAR test images pair with the first 1,000 digits
