"""The GPU's way of reading losses one step late, exercised on the CPU.

On CUDA ``Training.read_late`` is on so that the host never waits for the step it just
queued; the generator's contract (rows, checkpoints, stop, non-finite losses) must not change. A non-finite
loss read late is one parameter of tests/test_train.py's test of non-finite losses.
"""
from __future__ import annotations

import dataclasses

from mixsep import run as R
from mixsep import train as T
from mixsep.runs import read_metrics


def late(cfg, run):
    training = T.Training(cfg, run)
    training.read_late = True
    return training


def test_reading_late_gives_the_same_steps_rows_and_checkpoints(tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, train_size=64, epochs=2, checkpoint_every=3)
    sync = [r.loss for r in T.train_steps(cfg, tmp_path / "sync")]
    results = list(late(cfg, tmp_path / "late").steps())
    assert [r.step for r in results] == list(range(1, 9))
    assert [r.loss for r in results] == sync  # the same maths, only read later
    assert all(r.samples_per_s > 0 for r in results)
    # a step read right after another (checkpoints at steps 3 and 6, the end at 8) is timed from its
    # own launch, not from that read: it was 25x the median, now a step's own speed
    sps = sorted(r.samples_per_s for r in results)
    assert sps[-1] < 5 * sps[len(sps) // 2], sps
    assert read_metrics(tmp_path / "late")["step"].tolist() == list(range(1, 9))
    assert [p.name for p in R.list_checkpoints(tmp_path / "late")] == ["last.pt", "epoch-2.pt", "epoch-1.pt"]
    assert R.read_checkpoint(tmp_path / "late" / "checkpoints" / "last.pt")["step"] == 8


def test_reading_late_stops_one_step_later_and_checkpoints_it(tiny_config, tmp_path):
    run = tmp_path / "run"
    cfg = dataclasses.replace(tiny_config, checkpoint_every=100)
    seen = []
    for r in late(cfg, run).steps():
        seen.append(r.step)
        if r.step == 2:
            R.request_stop(run)  # step 3 is already queued when step 2 is read
    assert seen == [1, 2, 3]
    assert R.read_status(run)["state"] == "stopped"
    assert R.read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3

