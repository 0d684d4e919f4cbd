"""Sweeps: the search space from the settings' metadata, the validation split, bad input, and real
studies on tiny data (the journal storage, a killed worker, a stop, the Sweep page)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import conftest
from conftest import make_data_root, tree, write_cifar_batch, write_idx

from mixsep import MixsepError, TrainConfig
from mixsep.cli import build_parser, main
from mixsep.config import settings
from mixsep.sweep import (JOURNAL, SWEEP_LOG, Dimension, SweepRegistry, counts, create_study, format_space, load_study, open_storage, parse_space,
                          plan, trials_frame, validation_pairs)

ROOT = Path(__file__).resolve().parents[1]
# the tiny model on 2 steps of 16 pairs, a validation report after each step: a trial takes seconds
TINY = ["--model", "tiny", "--checkpoint-seconds", "0", "--no-pretrained", "--device", "cpu", "--batch-size", "16", "--train-size", "32",
        "--val-size", "16", "--report-every", "1", "--checkpoint-every", "1"]


def sweep_args(data_root, runs, *extra) -> list[str]:
    return ["sweep", "--data-root", str(data_root), "--runs-dir", str(runs), *extra]


def cli(*args, env=None) -> subprocess.CompletedProcess:
    """`python -m mixsep ARGS` run to its end, forked warm (conftest.WarmProcess)."""
    return conftest.warm_run(args, ROOT, env, timeout=600)


# --------------------------------------------------------------------------- the search space


def test_default_space_is_the_sliders_declared_in_settings():
    space = parse_space(None)
    declared = {s.name: s for s in settings() if s.sweep is not None and not s.categorical}
    assert list(space) == list(declared) == ["lr", "beta1", "beta2"]
    for name, dim in space.items():
        assert (dim.low, dim.high, dim.log) == (*declared[name].sweep, declared[name].log)
    assert format_space(space) == "lr=1e-05:0.1:log,beta1=0.5:0.999,beta2=0.9:0.9999"  # the ranges


def test_space_parsing():
    space = parse_space("lr=1e-4:1e-2:log, beta1=0.8:0.99, model=faithful|unet, batch-size=32|64, loss, "
                        "beta2=0.9:0.99:linear")
    assert space["lr"] == Dimension("lr", 1e-4, 1e-2, True)
    assert space["beta1"] == Dimension("beta1", 0.8, 0.99, False)
    assert space["beta2"].log is False
    assert space["model"].choices == ("faithful", "unet")
    assert space["batch_size"].choices == (32, 64)  # ints, as the setting's type
    assert space["loss"].choices == ("mse", "log_mse")  # a bare name takes the declared sweep
    assert parse_space(format_space(space)) == space
    assert parse_space("lr=1e-4:1e-2")["lr"].log is True  # lr is declared log-scaled


@pytest.mark.parametrize("text", [
    "lr=1.0000001e-3:1.0000002e-3",  # written as 'lr=0.001:0.001' (6 digits), read back as an empty range
    "beta1=0.81234567:0.9",  # read back narrower: a resume with the same --space was refused
    "lr=1e-5:1e-1:linear",  # written without ':linear', read back log-scaled: a resume raised in Optuna
])
def test_a_space_as_the_study_stores_it_reads_back_as_the_same_space(text):
    space = parse_space(text)
    assert parse_space(format_space(space)) == space


@pytest.mark.parametrize("text, says", [
    ("lr=1e-2:1e-4", "is inverted"),
    ("beta1=0.9:0.9", "is empty"),
    ("epochs=1:3", "cannot be swept"),
    ("colour=1:2", "no such setting"),
    ("model=unet", "over 1 value is no sweep"),
    ("batch_size=16:64", "list of values"),
    ("lr=1e-9:1e-2", "Learning rate must"),
    ("beta1=0:0.5:log", "positive low end"),
    ("lr=1e-4:1e-2,lr=1e-3:1e-1", "twice"),
    ("lr=1e-4", "takes a range"),
    ("model=unet|resnet", "Unknown model"),
    (" , ", "is empty"),
])
def test_space_errors_are_one_sentence(text, says):
    with pytest.raises(MixsepError) as e:
        parse_space(text)
    assert says in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- the validation split


def numbered_data_root(root: Path, n: int) -> Path:
    """Constant images whose value is their index (MNIST 1.., CIFAR 101..): every pair is recognisable."""
    values = np.arange(n)
    write_idx(root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz", np.repeat(values + 1, 28 * 28).reshape(n, 28, 28))
    write_idx(root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz", values % 10)
    write_cifar_batch(root / "cifar-10-batches-py" / "data_batch_1",
                      np.repeat(values + 101, 32 * 32 * 3).reshape(n, 32, 32, 3), values % 10)
    return root


def test_validation_split_is_disjoint_from_every_trial_pair(tmp_path):
    from mixsep.train import Training

    data = numbered_data_root(tmp_path / "data", 90)
    p = plan(build_parser().parse_args(sweep_args(data, tmp_path / "runs", "--study", "v", "--val-size", "20",
                                                  "--batch-size", "8",
                                                  "--model", "unet", "--no-pretrained", "--device", "cpu")))
    assert p.config.train_size == 70 and p.val_size == 20
    val = validation_pairs(data, p.val_size)
    val_ids = {int(v) - 1 for v in val.mnist[:, 0, 0]} | {int(v) - 101 for v in val.cifar[:, 0, 0, 0]}
    assert val_ids == set(range(70, 90))
    training = Training(p.config, tmp_path / "trial")  # what a trial trains on, from its config alone
    seen = set()
    for epoch in range(3):
        for m, c in training.data.batches(epoch, 8):
            seen |= {int(v) - 1 for v in m[:, 0, 0]} | {int(v) - 101 for v in c[:, 0, 0, 0]}
    assert seen and seen <= set(range(70)) and not seen & val_ids
    training.run.close()


def test_a_sweep_refuses_repair_and_train_sizes_that_reach_the_validation_pairs(tmp_path, data_root):
    parse = build_parser().parse_args
    with pytest.raises(MixsepError, match="--repair"):
        plan(parse(sweep_args(data_root, tmp_path / "runs", "--study", "r", *TINY, "--repair")))
    with pytest.raises(MixsepError, match="would train on validation pairs"):
        plan(parse(sweep_args(data_root, tmp_path / "runs", "--study", "r", *TINY[:-8], "--train-size", "90",
                              "--val-size", "16")))
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- bad input


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("extra, says", [
    (["--storage", "mongodb://localhost/x"], "Unknown storage URL scheme 'mongodb'"),
    (["--storage", "postgresql://mixsep:secret@127.0.0.1:{port}/db"], "Cannot reach the database"),
    (["--storage", "postgresql://mixsep:secret@127.0.0.1:notaport/db"], "its host or port does not parse"),
    (["--storage", "mixsep:secret@127.0.0.1/db"], "The storage 'mixsep:***@127.0.0.1/db' is not a database URL"),
    (["--storage", "host=127.0.0.1 user=mixsep password=secret dbname=db"],  # libpq's keyword form
     "The storage 'host=127.0.0.1 user=mixsep password=*** dbname=db' is not a database URL"),
    (["--storage", "host=h password='sec ret' dbname=db"], "password=*** dbname=db' is not a database URL"),
    (["--storage", "postgresql://mixsep@127.0.0.1:{port}/db?password=secret"], "db?password=*** ("),  # libpq's way
    (["--storage", "postgresql://mixsep:sec@ret@127.0.0.1/db"],  # SQLAlchemy would take 'ret@127.0.0.1' for the host
     "The storage 'postgresql://mixsep:***@127.0.0.1/db' has more than one '@' before its host; write an '@' in"),
    # a '/' or '?' in the password ended the part masked: its tail ('w/rd', 'ef') was shown
    (["--storage", "postgresql://mixsep:s@cr:w/rd@127.0.0.1:5432/db"],
     "The storage 'postgresql://mixsep:***@127.0.0.1:5432/db' has more than one '@'"),
    (["--storage", "postgresql://mixsep:ab@cd?ef@dbhost/db"], "The storage 'postgresql://mixsep:***@dbhost/db' has"),
    (["--storage", "postgresql://mixsep:top/secret@127.0.0.1:{port}/db"], "postgresql://mixsep:***@127.0.0.1:"),
    (["--space", "lr=1e-2:1e-3"], "inverted"),
    (["--space", "beta2=0.99:0.99"], "empty"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--lr", "0.01", "--space", "lr"], "both fixed and swept"),
    (["--val-size", "96"], "leaves no training pairs"),
    (["--batch-size", "64"], "Batch size 64 is larger than the 32"),
    (["--best"], "There is no study 'bad'"),
    (["--best", "--val-size", "96"], "There is no study 'bad'"),  # not a complaint about a new study's settings
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "100000"], "--workers 100000 is more than this machine can run side by side"),
    (["--heartbeat", "100000"], "--heartbeat must be from 1 second to 86400 (a day)"),  # Optuna's thread overflowed
    # numpy's seeds stop at 2**32 - 1: a traceback after the study was written
    (["--sampler-seed", "-1"], "--sampler-seed must be from 0 to 4294967295 (got -1)."),
    (["--sampler-seed", "4294967295", "--workers", "2"], "--sampler-seed must be from 0 to 4294967294 with 2 workers"),
    # libpq's sslpassword was shown in clear
    (["--storage", "postgresql://mixsep@127.0.0.1:{port}/db?sslpassword=secret&sslmode=disable"], "sslpassword=***"),
    (["--space", "batch_size=16|1e4300"], "1e4300"),  # the number was too long for any message: a traceback
])
def test_bad_input_is_one_sentence_exit_2_and_writes_nothing(capsys, data_root, tmp_path, extra, says):
    extra = [e.format(port=free_port()) for e in extra]
    runs = tmp_path / "runs"
    before = tree(tmp_path)
    assert main(sweep_args(data_root, runs, "--study", "bad", *TINY, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and "\n" not in err and "secret" not in err and "ret@" not in err
    assert not any(tail in err for tail in ("w/rd", "cr:", "cd?", "ef@")), err
    assert tree(tmp_path) == before and not runs.exists()


def test_a_swept_batch_size_is_checked_by_its_values_not_by_the_default(tmp_path, data_root):
    small = ["--model", "tiny", "--no-pretrained", "--train-size", "32", "--val-size", "16"]  # default batch: 128
    p = plan(build_parser().parse_args(sweep_args(data_root, tmp_path / "runs", "--study", "b", *small,
                                                  "--space", "batch_size=8|16,lr=1e-4:1e-2:log")))
    assert p.space["batch_size"].choices == (8, 16) and not (tmp_path / "runs").exists()
    with pytest.raises(MixsepError, match="Batch size 64 is larger than the 32 training pairs"):
        plan(build_parser().parse_args(sweep_args(data_root, tmp_path / "runs", "--study", "b", *small,
                                                  "--space", "batch_size=16|64")))


@pytest.mark.parametrize("name, says", [
    ("notes", "runs/notes is a file, and a study keeps its trials in a folder of its name; choose another"),
    ("optuna.journal", "'optuna.journal' is the name of the runs folder's sweep journal; choose another study name."),
    ("optuna.journal.lock", "is the name of the runs folder's sweep journal"),
])
def test_a_study_name_taken_by_a_file_of_the_runs_folder_is_one_sentence(capsys, data_root, tmp_path, name, says):
    """It gave FileExistsError's traceback, after the study was made in the journal."""
    runs = tmp_path / "runs"
    assert main(sweep_args(data_root, runs, "--study", "s", *TINY, "--trials", "1")) == 0  # a journal to keep
    (runs / "notes").write_text("mine")
    capsys.readouterr()
    before = tree(tmp_path)
    assert main(sweep_args(data_root, runs, "--study", name, *TINY)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and "\n" not in err, err
    assert tree(tmp_path) == before


def test_a_runs_folder_that_is_a_file_is_one_sentence(capsys, data_root, tmp_path):
    runs = tmp_path / "runs"
    runs.write_text("a file")
    assert main(sweep_args(data_root, runs, "--study", "s", *TINY)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: The runs folder {runs} is a file; choose another --runs-dir."
    assert runs.read_text() == "a file"


def test_a_study_that_exists_with_another_space_is_refused(capsys, data_root, tmp_path):
    runs = tmp_path / "runs"
    create_study(plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "s", *TINY))))
    before = tree(runs)
    assert main(sweep_args(data_root, runs, "--study", "s", *TINY, "--space", "lr=1e-4:1e-2")) == 2
    err = capsys.readouterr().err
    assert "exists with the space lr=1e-05:0.1:log,beta1=0.5:0.999,beta2=0.9:0.9999" in err
    same = "beta2=0.9:0.9999,lr=1e-5:0.1:log,beta1=0.5:0.999"  # the study's own ranges, in another order
    assert plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "s", "--space", same))).exists
    create_study(plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "c", *TINY[2:],
                                                           "--space", "model=tiny|unet_narrow"))))
    before = tree(runs)
    resumed = plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "c",
                                                        "--space", "model=unet_narrow|tiny")))  # its choices, reordered
    assert resumed.exists and resumed.space["model"].choices == ("tiny", "unet_narrow")  # Optuna's own order kept
    assert main(sweep_args(data_root, runs, "--study", "c", "--space", "model=tiny|faithful")) == 2
    assert "exists with the space model=tiny|unet_narrow, not model=tiny|faithful" in capsys.readouterr().err
    assert main(sweep_args(data_root, runs, "--study", "s", "--epochs", "3")) == 2
    assert "was made with epochs=1, not 3" in capsys.readouterr().err
    # QA: a swept setting given was said to be one the study "was made with" (the default), and --best, which
    # resumes nothing, was told to "resume it without" the flag
    space = "lr=1e-05:0.1:log,beta1=0.5:0.999,beta2=0.9:0.9999"
    assert main(sweep_args(data_root, runs, "--study", "s", "--lr", "0.01", "--beta1", "0.8")) == 2
    assert capsys.readouterr().err == (f"error: Study 's' sweeps lr, beta1 (its space is {space}); resume it without "
                                       "--lr, --beta1, or choose another study name.\n")
    assert main(sweep_args(data_root, runs, "--study", "s", "--best", "--epochs", "3")) == 2
    assert capsys.readouterr().err == ("error: Study 's' was made with epochs=1, not 3; ask for its best trial "
                                       "without --epochs.\n")
    assert tree(runs) == before
    # how a machine computes is its own choice: a machine with AMX joins in bf16, one with a GPU without amp
    joined = plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "s", "--cpu-bf16", "--no-amp")))
    assert joined.exists and joined.config.cpu_bf16 is True and joined.config.amp is False
    assert joined.config.model == "tiny" and not {"cpu_bf16", "amp"} & set(joined.fixed)


def test_a_target_below_the_trials_done_is_refused_and_changes_nothing(capsys, tmp_path):
    """A study of 2 trials done, resumed with --trials 1, ended "finished" saying "2 of 1 trials done", stored
    1 as its target, and left a trial a stop had queued waiting for good."""
    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    assert main(sweep_args(data, runs, "--study", "s", "--trials", "2", *TINY, "--epochs", "1")) == 0
    capsys.readouterr()
    before = tree(runs)
    assert main(sweep_args(data, runs, "--study", "s", "--trials", "1")) == 2
    err = capsys.readouterr().err
    assert err == "error: Study 's' has 2 trials done, more than --trials 1; give --trials 2 or more (--best names " \
        "its best trial).\n", err
    assert tree(runs) == before  # its stored target (2) too: the journal is unchanged
    assert main(sweep_args(data, runs, "--study", "s", "--trials", "2")) == 0  # the same target: nothing to do
    assert "2 of 2 trials done" in (runs / "s" / "sweep.json").read_text()
    # a target of 3, and a trial queued to resume (as a stop queues one): --trials 2 would strand it
    assert main(sweep_args(data, runs, "--study", "s", "--trials", "3")) == 0
    from mixsep.sweep import requeue
    study = study_of(runs, "s")
    requeue(study, study.trials[-1], stopped=True)
    capsys.readouterr()
    assert main(sweep_args(data, runs, "--study", "s", "--trials", "2")) == 2
    assert capsys.readouterr().err == "error: Study 's' has 3 trials done and 1 queued to resume, more than --trials " \
        "2; give --trials 4 or more (--best names its best trial).\n"


# Optuna keeps the first value reported at a step: the retrained trial's steps 1 and 2 keep the earlier attempt's
# (a warning under pytest; the CLI shows none), which is why the line says what happened
@pytest.mark.filterwarnings("ignore:The reported value is ignored because this `step")
def test_a_queued_trial_whose_folder_is_gone_says_so_and_trains_from_step_0(capsys, tmp_path):
    """A trial queued to resume (as a stop queues it) whose run folder was deleted by hand trained again from
    step 0 without a word, its earlier attempt's intermediate values still in the study."""
    import shutil

    from mixsep.sweep import requeue

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    assert main(sweep_args(data, runs, "--study", "s", "--trials", "1", *TINY, "--epochs", "1")) == 0
    assert json.loads((runs / "s" / "sweep.json").read_text())["message"] == "1 of 1 trial done"  # not "trials"
    study = study_of(runs, "s")
    first = study.trials[-1]
    requeue(study, first, stopped=True)
    shutil.rmtree(runs / first.user_attrs["run"])
    capsys.readouterr()
    assert main(sweep_args(data, runs, "--study", "s", "--trials", "2")) == 0
    err = capsys.readouterr().err
    assert f"trial 1: its run folder {first.user_attrs['run']} is gone (moved or deleted), so it trains again " \
           "from step 0\n" in err, err
    again = study_of(runs, "s").trials[-1]
    assert again.state.name == "COMPLETE" and again.user_attrs["run"] == first.user_attrs["run"]
    steps = [line.split(",")[0] for line in (runs / first.user_attrs["run"] / "metrics.csv").read_text().splitlines()[1:]]
    assert steps[0] == "1" and len(steps) == len(set(steps))
    # a file or a link where its folder was: named as what it is, and the trial waits for it to move
    first_run = runs / first.user_attrs["run"]
    for target, put in (("3", lambda: first_run.write_text("x")), ("4", lambda: first_run.symlink_to(tmp_path / "nowhere"))):
        shutil.move(first_run, tmp_path / "kept")
        put()
        study = study_of(runs, "s")
        requeue(study, study.trials[-1], stopped=True)
        waiting = next(t.number for t in study_of(runs, "s").trials if t.state.name == "WAITING")
        assert main(sweep_args(data, runs, "--study", "s", "--trials", target)) == 2
        err = capsys.readouterr().err.splitlines()[-1]
        what = "a file" if first_run.is_file() else f"a link to {tmp_path / 'nowhere'}"
        assert err == f"error: Trial {waiting}'s run folder {first_run} is {what}, not a folder; move it " \
                      "away, then run the same command: the trial is queued to train again.", err
        first_run.unlink()
        shutil.move(tmp_path / "kept", first_run)
        assert main(sweep_args(data, runs, "--study", "s", "--trials", target)) == 0  # and trains once it has moved
        capsys.readouterr()
    # a queued trial whose folder is there resumes as before, without the line
    study = study_of(runs, "s")
    requeue(study, study.trials[-1], stopped=True)
    assert main(sweep_args(data, runs, "--study", "s", "--trials", "5")) == 0
    assert "is gone" not in capsys.readouterr().err


def test_two_commands_that_start_one_new_study_together_join_only_when_they_plan_the_same(data_root, tmp_path):
    """Both planned before either had made it: the second one's other model, space or validation set went into
    the first one's study, its trials scored against another problem."""
    runs = tmp_path / "runs"
    planned = lambda *extra: plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "race", *extra)))  # noqa: E731
    first, same, other_model, other_space, other_val = (
        planned(*TINY), planned(*TINY, "--trials", "5"), planned(*TINY[2:], "--model", "faithful"),
        planned(*TINY, "--space", "lr=1e-4:1e-2"), planned(*TINY[:-6], "--val-size", "20", *TINY[-4:]))
    assert not any(p.exists for p in (first, same, other_model, other_space, other_val))
    create_study(first)
    for late, what in ((other_model, "another fixed settings"), (other_space, "another space"),
                       (other_val, "another validation pairs")):
        with pytest.raises(MixsepError, match=f"Study 'race' was just made by another command with {what}; run "
                                              "the same command as that one to join it"):
            create_study(late)
    study = create_study(same)  # the same command joins (its own target of trials is kept, as on a resume)
    assert study.user_attrs["mixsep"]["trials"] == 5 and study.user_attrs["mixsep"]["config"]["model"] == "tiny"
    assert len(study.get_trials()) == 1  # the baseline, queued once


def test_best_of_a_study_whose_best_trial_was_added_by_hand_is_one_sentence(capsys, data_root, tmp_path):
    """--best indexed the trial's attributes: KeyError's traceback for a trial another script added."""
    import optuna

    runs = tmp_path / "runs"
    study = create_study(plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "s", *TINY))))
    lr = optuna.distributions.FloatDistribution(1e-5, 0.1, log=True)
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions={"lr": lr}, value=20.0))
    assert main(sweep_args(data_root, runs, "--study", "s", "--best")) == 2
    assert capsys.readouterr().err.strip() == ("error: The best trial of study 's', trial 1, names no run folder: it "
                                               "was not trained by `python -m mixsep sweep`.")
    study.add_trial(optuna.trial.create_trial(params={"lr": 2e-3}, distributions={"lr": lr}, value=21.0,
                                              user_attrs={"run": "s/trial-0002"}))
    assert main(sweep_args(data_root, runs, "--study", "s", "--best")) == 0  # no figures per head: none shown
    out, err = capsys.readouterr()
    assert "best: trial 2, validation PSNR 21.00 dB, lr=0.002" in err and out.strip() == str(runs.resolve() / "s" / "trial-0002")


def test_best_reads_the_study_without_importing_torch(capsys, data_root, tmp_path):
    """`sweep --best` took 2 s, 1.3 of them importing torch to check a trial's settings it trains with, and the
    models' names for a stored space that names no model. A cold process, as a user's."""
    import optuna

    runs = tmp_path / "runs"
    study = create_study(plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "s", *TINY))))
    lr = optuna.distributions.FloatDistribution(1e-5, 0.1, log=True)
    study.add_trial(optuna.trial.create_trial(params={"lr": 2e-3}, distributions={"lr": lr}, value=21.0,
                                              user_attrs={"run": "s/trial-0000"}))
    (runs / "s" / "trial-0000").mkdir()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "mixsep", *sweep_args(data_root, runs, "--study", "s",
                                                                                          "--best")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == f"{runs.resolve() / 's' / 'trial-0000'}\n", done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "optuna" in imported and not {"torch", "mixsep.model"} & imported
    assert main(sweep_args(data_root, runs, "--study", "s", "--best", "--workers", "999")) == 2  # refused, as before
    assert "--workers 999 is more than this machine can run side by side" in capsys.readouterr().err
    with pytest.raises(MixsepError) as e:  # a setting that cannot be swept still hears every one that can
        parse_space("lr=1e-4:1e-2,colour=1:2")
    assert str(e.value).endswith("settings that can be swept: " + ", ".join(
        s.name for s in settings() if s.sweep is not None) + ".") and "model" in str(e.value)


def test_a_study_made_meanwhile_is_waited_for_until_its_maker_describes_it(data_root, tmp_path):
    import threading

    import optuna

    runs = tmp_path / "runs"
    p = plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "late", *TINY)))
    runs.mkdir()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(runs / JOURNAL)))
    made = optuna.create_study(study_name="late", storage=storage, direction="maximize")  # described 1 s later
    threading.Timer(1.0, lambda: made.set_user_attr("mixsep", p.attrs())).start()
    assert create_study(p).user_attrs["mixsep"]["space"] == p.attrs()["space"]


def test_a_new_study_refuses_trial_folders_left_by_an_earlier_study_of_its_name(capsys, data_root, tmp_path):
    """The journal deleted (or the same name on another storage): trial 0 adopted the old trial-0000 and
    printed its results, trained with the old settings."""
    runs = tmp_path / "runs"
    old = runs / "s" / "trial-0000"
    old.mkdir(parents=True)
    TrainConfig(data_root=str(data_root), model="tiny", train_size=32, batch_size=8).save(old / "config.json")
    before = tree(tmp_path)
    assert main(sweep_args(data_root, runs, "--study", "s", *TINY)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {runs.resolve() / 's'} holds trial-0000 from an earlier study named 's' that "
                   f"{runs.resolve() / 'optuna.journal'} does not know; move that folder away or choose another "
                   "study name.")
    assert tree(tmp_path) == before


def test_a_resumed_study_keeps_its_pruner_and_reports_and_each_command_its_seed(capsys, data_root, tmp_path):
    runs = tmp_path / "runs"
    made = ["--pruner", "halving", "--sampler-seed", "7", "--heartbeat", "5"]  # TINY reports every step
    create_study(plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "s", *TINY, *made))))
    before = tree(runs)
    resumed = plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "s")))
    assert resumed.exists and (resumed.pruner, resumed.report_every) == ("halving", 1)
    assert (resumed.sampler_seed, resumed.heartbeat) == (0, 30)  # another machine joining gives its own seed
    assert main(sweep_args(data_root, runs, "--study", "s", "--pruner", "median")) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: Study 's' was made with --pruner halving, not median; resume it without --pruner, "
                   "or choose another study name.")
    assert main(sweep_args(data_root, runs, "--study", "s", "--report-every", "0")) == 2
    assert "was made with --report-every 1, not 0" in capsys.readouterr().err
    assert plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "s", "--sampler-seed", "3"))).exists
    assert tree(runs) == before
    fresh = plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "t", *TINY[:-4])))
    assert (fresh.pruner, fresh.report_every) == ("median", 0)


# --------------------------------------------------------------------------- requeues


def test_stops_never_use_up_the_retries_of_a_trial_whose_worker_dies(tmp_path):
    """Each stop (Ctrl-C, SIGTERM, a full disk) requeues the trial; a dead worker only MAX_RETRY
    times, and then the worker says the trial failed for good rather than "queued again"."""
    import optuna
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState, create_trial

    from mixsep.sweep import MAX_RETRY, fail_dead_trials, requeue

    study = optuna.create_study(storage=optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j"))))
    study.add_trial(create_trial(state=TrialState.WAITING, params={"lr": 1e-3}, user_attrs={"run": "s/trial-0000"},
                                 distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 0.1, log=True)}))

    def fail_the_waiting_one(pid: int | None = None):
        t = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[-1]
        study._storage.set_trial_state_values(t._trial_id, TrialState.RUNNING)
        if pid is None:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        else:  # a worker of this machine that is gone: a real process that has ended
            for k, v in {"host": socket.gethostname(), "pid": pid, "pid_start": 0}.items():
                study._storage.set_trial_user_attr(t._trial_id, k, v)
        return study._storage.get_trial(t._trial_id)

    for _ in range(MAX_RETRY + 2):  # stopped more often than a dead worker is retried
        assert requeue(study, fail_the_waiting_one(), stopped=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    for n in range(MAX_RETRY + 1):
        running = fail_the_waiting_one(pid=dead.pid)
        assert fail_dead_trials(study, journal=True) == [(running.number, n < MAX_RETRY, False)]
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL] * len(trials) and len(trials) == MAX_RETRY + 2 + MAX_RETRY + 1
    assert {t.user_attrs["run"] for t in trials} == {"s/trial-0000"} and {t.params["lr"] for t in trials} == {1e-3}
    assert counts(study) == {"done": 1, "running": 0, "waiting": 0}  # the chain counts once, as failed for good
    from mixsep.sweep import trials_frame

    frame = trials_frame(study)  # failed trials have no figures: blank cells on the page, not "None"
    assert frame["val PSNR"].dtype.kind == "f" and frame["val PSNR"].isna().all()


def test_a_halted_or_stopped_trial_whose_requeue_record_was_cut_off_is_queued_again(tmp_path):
    """The journal's own disk full: Optuna's FAIL of the halted trial fits, the copy that requeues it is
    cut off (and dropped at the next start). The next worker queues it again, once."""
    import optuna
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState, create_trial

    from mixsep.sweep import requeue_halted

    study = optuna.create_study(storage=optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j"))))
    dist = {"lr": optuna.distributions.FloatDistribution(1e-5, 0.1, log=True)}
    study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 1e-3}, distributions=dist,
                                 user_attrs={"run": "s/trial-0000", "halted": "The disk holding ... is full"}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 1e-2}, distributions=dist,
                                 user_attrs={"run": "s/trial-0001", "error": "a real failure"}))
    assert counts(study)["done"] == 2
    assert requeue_halted(study) == [(0, False)] and requeue_halted(study) == []
    again = study.get_trials(deepcopy=False)[-1]
    assert again.state == TrialState.WAITING and again.user_attrs["run"] == "s/trial-0000"
    assert "halted" not in again.user_attrs and counts(study) == {"done": 1, "running": 0, "waiting": 1}
    # a trial stopped by Ctrl-C or the page's Stop is marked the same way (a QA pass cut the journal 20 bytes
    # into its requeue record: the study then read "3 of 3 trials done" without it)
    study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 1e-4}, distributions=dist,
                                 user_attrs={"run": "s/trial-0003", "halted": "stopped"}))
    assert requeue_halted(study) == [(3, True)] and counts(study)["waiting"] == 2


@pytest.mark.heavy(12)
def test_a_ctrl_c_whose_exception_python_drops_while_the_sweep_loads_still_stops_it(tmp_path):
    """As for train (tests/test_run_folder.py): Python drops a KeyboardInterrupt raised inside a callback, here a gc
    callback of a real, cold sweep while Optuna and torch load, and the sweep then ran its whole study."""
    import textwrap

    data, runs = conftest.make_data_root(tmp_path / "data"), tmp_path / "runs"
    land = textwrap.dedent("""
        import gc, signal, sys
        fired = []
        def land_inside_a_callback(phase, info):
            if not fired and "optuna" in sys.modules:
                fired.append(phase)
                print("landed in a callback", file=sys.stderr, flush=True)
                signal.raise_signal(signal.SIGINT)
                for _ in range(1000):  # the handler runs here, and Python drops what it raises
                    pass
        gc.callbacks.append(land_inside_a_callback)
        from mixsep.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", land, *sweep_args(data, runs, "--study", "s", "--trials", "2", *TINY)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    # it landed where Python drops what the handler raises: no longer printed as "Exception ignored" with a
    # traceback, but asked again with a real signal (mixsep.errors.interrupts_never_dropped)
    assert "landed in a callback" in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: sweep interrupted by Ctrl-C before training began."
    assert not list(runs.glob("s/trial-*"))  # no trial trained


# --------------------------------------------------------------------------- a real study


def study_of(runs: Path, name: str):
    return load_study(plan(build_parser().parse_args(sweep_args(runs.parent / "data", runs, "--study", name))))


def wait_for(cond, timeout: float = 240.0, what: str = "condition"):
    conftest.wait_for(cond, timeout, what, interval=0.2)


def metric_rows(run: Path) -> int:
    try:
        return max(0, len((run / "metrics.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def test_a_trial_that_trained_every_step_completes_however_it_trails(tmp_path):
    """With one report a trial (the defaults: one epoch, a report each epoch) the pruner's only look came at the
    last step: a trial that trailed there was recorded pruned and its folder "stopped", though it had trained its
    whole budget and pruning saved nothing; --best and the Sweep page's Best passed it over."""
    from optuna.trial import TrialState

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    done = cli(*sweep_args(data, runs, "--study", "p", "--trials", "5", *TINY[:-4], "--epochs", "1"))  # 2 steps
    assert done.returncode == 0, done.stderr
    trials = study_of(runs, "p").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5, done.stderr
    for t in trials:
        assert list(t.intermediate_values) == [2]  # one report each, at the last step
        status = json.loads((runs / t.user_attrs["run"] / "status.json").read_text())
        assert status["state"] == "finished" and status["step"] == 2


def test_a_trials_line_never_rounds_a_parameter_out_of_its_range(tmp_path):
    """Each trial's line gave 3 significant digits: beta2 0.99976 read "beta2=1", outside its range and
    meaningless for Adam."""
    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    done = cli(*sweep_args(data, runs, "--study", "b", "--trials", "1", "--space", "beta2=0.9991:0.99999", *TINY,
                           "--epochs", "1"))
    assert done.returncode == 0, done.stderr
    beta2 = study_of(runs, "b").trials[0].params["beta2"]
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("trial 0 complete: "))
    shown = re.search(r" beta2=(\S+) ", line).group(1)
    assert 0.9991 <= float(shown) < 1 and abs(float(shown) - beta2) < 5e-4 * beta2, line


@pytest.mark.heavy(40)
def test_study_on_the_journal_survives_a_killed_worker_prunes_and_its_best_trial_evaluates(tmp_path):
    from optuna.trial import TrialState

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    args = sweep_args(data, runs, "--study", "demo", "--trials", "6", "--space", "lr=1e-5:1e-1:log", *TINY,
                      "--epochs", "3")
    worker = conftest.WarmProcess(args)
    first = runs / "demo" / "trial-0000"

    def mid_trial() -> bool:
        try:
            return (first / "checkpoints" / "last.pt").is_file() and \
                json.loads((first / "status.json").read_text())["state"] == "running"
        except (OSError, ValueError, KeyError):
            return False

    conftest.frozen_when(worker, mid_trial, what="trial 0 between its first checkpoint and its end")
    worker.kill()  # SIGKILL mid-trial (it is frozen there): no chance to clean up
    worker.communicate()
    assert (runs / JOURNAL).is_file() and json.loads((first / "status.json").read_text())["state"] == "running"
    assert study_of(runs, "demo").trials[0].state == TrialState.RUNNING  # what a dead worker leaves behind
    # the Sweep page's table and count read it "interrupted" (QA: "1 running · sweep not running", where Home said
    # interrupted), and say what happens next
    from mixsep.sweep import worker_gone

    frame = trials_frame(study_of(runs, "demo")).set_index("trial")
    assert frame.loc[0, "state"] == "interrupted" and frame.loc[0, "note"].startswith(
        "its worker is gone; it resumes from its last checkpoint when the sweep runs again")
    assert [worker_gone(t) for t in study_of(runs, "demo").trials] == [True]

    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "trial 0: its worker is gone; marked failed and queued again" in done.stderr
    trials = study_of(runs, "demo").trials
    assert trials[0].state == TrialState.FAIL
    assert trials[0].params == {"lr": 1e-3} and trials[0].user_attrs["baseline"]  # the report's defaults go first
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry[0].user_attrs["run"] == "demo/trial-0000" and retry[0].params == trials[0].params
    steps = [int(line.split(",")[0]) for line in (first / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, len(steps) + 1))  # resumed from its checkpoint: every step once
    assert counts(study_of(runs, "demo")) == {"done": 6, "running": 0, "waiting": 0}
    assert len({t.number for t in trials}) == len(trials)
    states = [t.state for t in trials if t.number != 0]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states  # the pruner stopped some early
    for t in trials:
        if t.state == TrialState.COMPLETE:
            a = t.user_attrs
            assert t.value == pytest.approx((a["val_psnr_mnist"] + a["val_psnr_cifar"]) / 2)
            assert -1 <= a["val_ssim_mnist"] <= 1 and -1 <= a["val_ssim_cifar"] <= 1 and a["val_psnr"] == t.value
            cfg = json.loads((runs / a["run"] / "config.json").read_text())
            assert cfg["train_size"] == 32 and cfg["lr"] == t.params["lr"] and cfg["repair"] is False
            status = json.loads((runs / a["run"] / "status.json").read_text())  # the run folder keeps its scores
            assert status["state"] == "finished" and status["validation"]["psnr"] == t.value
            assert status["validation"]["best_psnr"] == a["val_best_psnr"] >= t.value
        if t.state == TrialState.PRUNED and "error" not in t.user_attrs:
            status = json.loads((runs / t.user_attrs["run"] / "status.json").read_text())
            assert status["state"] == "stopped" and "pruned" in status["message"]
            assert status["step"] < status["total_steps"]  # pruned before its end: at it, a trial is complete
    best = Path(done.stdout.strip().splitlines()[-1])
    assert best.parent == runs / "demo" and (best / "checkpoints" / "last.pt").is_file()
    assert cli(*sweep_args(data, runs, "--study", "demo", "--best")).stdout.strip() == str(best)
    gone = cli(*sweep_args(tmp_path / "no-data", runs, "--study", "demo", "--best"))  # it trains nothing:
    assert gone.returncode == 0 and gone.stdout.strip() == str(best), gone.stderr       # no data needed
    scored = cli("evaluate", str(best), "--data-root", str(data))
    assert scored.returncode == 0 and "48 test pairs" in scored.stdout  # the test split, untouched by the study
    assert json.loads((runs / "demo" / "sweep.json").read_text())["state"] == "finished"


def test_a_sweep_whose_space_leaves_out_a_default_says_it_has_no_baseline(data_root, tmp_path):
    """A default outside --space made trial 0 a sampler draw like the others, and nothing said so."""
    runs = tmp_path / "runs"
    far = cli(*sweep_args(data_root, runs, "--study", "far", "--trials", "1", "--space", "lr=1e-2:1e-1,beta1=0.8:0.99",
                          *TINY))
    assert far.returncode == 0, far.stderr
    notes = [line for line in far.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: no baseline trial: the default lr 0.001 lies outside --space lr=0.01:0.1:log, so trial 0 "
                     "is a draw like the others (widen the space to hold the defaults for one)"], far.stderr
    trial = study_of(runs, "far").trials[0]
    assert "baseline" not in trial.user_attrs and 1e-2 <= trial.params["lr"] <= 1e-1
    near = cli(*sweep_args(data_root, runs, "--study", "near", "--trials", "1", "--space", "lr=1e-4:1e-2", *TINY))
    assert near.returncode == 0 and "baseline" not in near.stderr, near.stderr
    assert study_of(runs, "near").trials[0].user_attrs["baseline"]  # the defaults inside: queued, not a word


@pytest.mark.heavy(25)
def test_two_workers_of_one_command_share_the_journal(tmp_path):
    from optuna.trial import TrialState

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    made = cli(*sweep_args(data, runs, "--study", "two", "--trials", "1", "--pruner", "none", *TINY, "--epochs", "3",
                           "--cpu-bf16"))
    assert made.returncode == 0, made.stderr
    # this machine's own choice (a LOCAL setting) reaches both workers: they took the study's stored value
    done = cli(*sweep_args(data, runs, "--study", "two", "--trials", "3", "--workers", "2", "--no-cpu-bf16"))
    assert done.returncode == 0, done.stderr  # (trials long enough that neither worker takes both)
    trials = study_of(runs, "two").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len({t.user_attrs["pid"] for t in trials[1:]}) == 2  # one trial each, in two child processes
    assert {t.user_attrs["run"] for t in trials} == {"two/trial-0000", "two/trial-0001", "two/trial-0002"}
    assert Path(done.stdout.strip().splitlines()[-1]).parent == runs / "two"
    bf16 = [json.loads((runs / t.user_attrs["run"] / "config.json").read_text())["cpu_bf16"] for t in trials]
    assert bf16 == [True, False, False]


def test_a_study_resumed_without_data_root_reads_the_data_it_was_made_on(tmp_path, monkeypatch, capsys):
    """As a run's resume does: a resume without --data-root read ./data and told the user to download 180 MB there
    (QA). A data root that is gone is said, and the usual default read."""
    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    assert cli(*sweep_args(data, runs, "--study", "s", "--trials", "1", *TINY)).returncode == 0
    monkeypatch.chdir(tmp_path / "runs")  # no ./data here
    monkeypatch.delenv("MIXSEP_DATA_ROOT", raising=False)
    resume = ["sweep", "--study", "s", "--runs-dir", str(runs), "--trials", "2"]
    assert plan(build_parser().parse_args(resume)).config.data_root == str(data.resolve())
    assert capsys.readouterr().err == f"data root {data.resolve()} (the study's; --data-root chooses another)\n"
    assert plan(build_parser().parse_args(resume + ["--best"])).config.data_root  # --best reads no data: no word
    assert capsys.readouterr().err == ""
    data.rename(tmp_path / "moved")
    with pytest.raises(MixsepError, match=r"^No MNIST train data under " + re.escape(str(tmp_path / "runs" / "data"))):
        plan(build_parser().parse_args(resume))
    assert capsys.readouterr().err == (f"note: the study's data root {data.resolve()} is not a folder here; reading "
                                       "./data (--data-root chooses another)\n")
    assert plan(build_parser().parse_args(resume + ["--data-root", str(tmp_path / "moved")])).config.data_root == \
        str(tmp_path / "moved")  # a flag given: no word


def test_a_journal_restored_from_a_copy_never_credits_an_old_folder_to_new_parameters(tmp_path):
    """The trials after the copy came again under the same numbers, with other parameters: the new trial 2
    reopened the old trial-0002 (finished), trained nothing and was recorded with the old folder's score."""
    from optuna.trial import TrialState

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    assert cli(*sweep_args(data, runs, "--study", "s", "--trials", "2", *TINY)).returncode == 0
    copy = (runs / JOURNAL).read_bytes()
    assert cli(*sweep_args(data, runs, "--study", "s", "--trials", "3")).returncode == 0
    old = tree(runs / "s" / "trial-0002")
    (runs / JOURNAL).write_bytes(copy)  # what the damaged-journal message advises
    refused = cli(*sweep_args(data, runs, "--study", "s", "--trials", "3", "--sampler-seed", "9"))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().endswith(
        f"error: {runs.resolve() / 's' / 'trial-0002'} holds a run with other settings (beta1, beta2, lr) than "
        "trial 2 of this study, whose journal no longer knows it (restored from a copy, or replaced?); move that "
        "folder away, then run the same command: the trial is queued to resume."), refused.stderr
    assert "Traceback" not in refused.stderr and tree(runs / "s" / "trial-0002") == old  # the old run, untouched
    assert all(t.state != TrialState.COMPLETE for t in study_of(runs, "s").trials[2:])
    (runs / "s" / "trial-0002").rename(tmp_path / "old-trial-0002")
    assert cli(*sweep_args(data, runs, "--study", "s", "--trials", "3", "--sampler-seed", "9")).returncode == 0
    done = [t for t in study_of(runs, "s").trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and done[-1].user_attrs["run"] == "s/trial-0002"
    trained = json.loads((runs / "s" / "trial-0002" / "config.json").read_text())
    assert {k: trained[k] for k in done[-1].params} == pytest.approx(done[-1].params)  # its own parameters


@pytest.mark.heavy(25)
def test_a_worker_killed_while_the_other_finishes_the_study_ends_it_finished(tmp_path):
    """The study is what the command is for: a worker that died is a note, not a failed sweep."""
    from optuna.trial import TrialState

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    parent = subprocess.Popen([sys.executable, "-m", "mixsep", *sweep_args(
        data, runs, "--study", "w", "--trials", "3", "--workers", "2", "--pruner", "none", *TINY, "--epochs", "20")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = []

        def running_pids() -> list[int]:
            try:
                return [t.user_attrs["pid"] for t in study_of(runs, "w").trials
                        if t.state == TrialState.RUNNING and "pid" in t.user_attrs]
            except (KeyError, MixsepError):
                return []

        def a_worker_trains() -> bool:
            """A worker seen mid-trial, and still mid-trial once stopped (SIGSTOP): a tiny trial could end, and
            the worker with it once the study was done, between a look and the kill."""
            for pid in running_pids():
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    continue
                conftest.stopped(pid)
                if pid in running_pids():
                    victim[:] = [pid]
                    return True
                os.kill(pid, signal.SIGCONT)
            return False

        wait_for(a_worker_trains, what="a worker's first trial")
        os.kill(victim[0], signal.SIGKILL)
        out, err = parent.communicate(timeout=300)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate()
    assert parent.returncode == 0, err
    assert "1 of 2 sweep workers ended early (exit codes" in err and "-9" in err, err
    assert counts(study_of(runs, "w")) == {"done": 3, "running": 0, "waiting": 0}
    assert json.loads((runs / "w" / "sweep.json").read_text())["state"] == "finished"
    assert Path(out.strip().splitlines()[-1]).parent == runs / "w"


def test_two_commands_that_write_sweep_json_at_once_both_stay_recorded(data_root, tmp_path):
    """sweep.json is read, changed and written: two commands starting in the same instant each recorded only
    itself, and the other was then invisible to the pages and their Stop (QA: 4 of 8 tries)."""
    import multiprocessing

    from mixsep.sweep import SWEEP_FILE, _hold_sweep_lock, write_sweep_status

    p = plan(build_parser().parse_args(sweep_args(data_root, tmp_path / "runs", "--study", "r", *TINY)))
    p.folder.mkdir(parents=True)
    ctx = multiprocessing.get_context("fork")
    for _ in range(8):
        (p.folder / SWEEP_FILE).unlink(missing_ok=True)
        start, written, done = ctx.Barrier(3), ctx.Barrier(3), ctx.Event()

        def command():
            _hold_sweep_lock(p.folder)  # as a sweep command holds it, for its life
            start.wait(10)
            write_sweep_status(p, "running")
            written.wait(10)
            done.wait(30)  # alive while the test looks

        procs = [ctx.Process(target=command) for _ in range(2)]
        for proc in procs:
            proc.start()
        try:
            start.wait(10)
            written.wait(10)
            d = json.loads((p.folder / SWEEP_FILE).read_text())
            assert {d["pid"], *(o["pid"] for o in d["others"])} == {proc.pid for proc in procs}, d
        finally:
            done.set()
            for proc in procs:
                proc.join(10)


@pytest.mark.heavy(20)
def test_the_workers_of_a_command_killed_by_sigkill_stop_and_requeue_their_trials(tmp_path):
    """kill -9 of a `--workers 2` command sends its workers nothing: they trained on, orphans no page could see
    or stop (sweep.json names the dead parent), and a training could start beside them."""
    from optuna.trial import TrialState

    from mixsep.run import is_alive

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    parent = subprocess.Popen([sys.executable, "-m", "mixsep", *sweep_args(
        data, runs, "--study", "k", "--trials", "4", "--workers", "2", "--pruner", "none", *TINY, "--epochs", "200")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        _wait_both_workers_train(runs, "k", workers)
        parent.kill()
        parent.wait()
        wait_for(lambda: not any(is_alive(w) for w in workers), timeout=60, what="the workers to stop")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for w in workers:
            if is_alive(w):
                os.kill(w["pid"], signal.SIGKILL)
    trials = study_of(runs, "k").trials  # each stopped as a Stop stops it: checkpointed, and queued to resume
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert len(stopped) == 2 and all(t.user_attrs["halted"] == "stopped" for t in stopped)
    assert counts(study_of(runs, "k"))["waiting"] == 2 and counts(study_of(runs, "k"))["running"] == 0


def _wait_both_workers_train(runs, study: str, workers: list) -> None:
    """Until a --workers 2 command's two workers both train a trial; ``workers`` holds their trials' user attrs
    (pid and start time), kept for the caller's clean-up even when the wait fails. Three cold processes import
    torch: slow when the machine is loaded."""
    from optuna.trial import TrialState

    def both_train() -> bool:
        try:
            workers[:] = [t.user_attrs for t in study_of(runs, study).trials
                          if t.state == TrialState.RUNNING and "pid" in t.user_attrs]
        except (KeyError, MixsepError):
            return False
        return len(workers) == 2

    wait_for(both_train, 180, "both workers' first trials")


@pytest.mark.heavy(20)
@pytest.mark.parametrize("how", ["the page's Stop", "two Ctrl-Cs"])
def test_a_terminals_two_worker_sweep_stops_whole(tmp_path, how):
    """Each worker child wrote sweep.json with its own pid, so the page's Stop signalled one child and the
    other worker and the parent trained on; a second Ctrl-C printed its sentence once per process."""
    from mixsep.run import is_alive

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    parent = subprocess.Popen([sys.executable, "-m", "mixsep", *sweep_args(
        data, runs, "--study", "w", "--trials", "6", "--workers", "2", "--pruner", "none", *TINY, "--epochs", "200")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers = []
    try:
        _wait_both_workers_train(runs, "w", workers)
        assert json.loads((runs / "w" / "sweep.json").read_text())["pid"] == parent.pid  # the parent speaks
        if how == "the page's Stop":
            assert SweepRegistry(runs).stop()  # a server that did not start it: it adopts it through sweep.json
        else:
            os.killpg(parent.pid, signal.SIGINT)
            time.sleep(0.5)
            os.killpg(parent.pid, signal.SIGINT)
        out, err = parent.communicate(timeout=120)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.communicate()
    wait_for(lambda: not any(is_alive(w) for w in workers), timeout=30, what="the workers to end")
    assert parent.returncode == (1 if how == "the page's Stop" else 130), err  # stopped, not finished: not 0
    assert json.loads((runs / "w" / "sweep.json").read_text())["state"] == "stopped"
    assert counts(study_of(runs, "w"))["running"] == 0
    if how == "two Ctrl-Cs":
        assert err.count("quit at once by a second Ctrl-C") == 1 and "Traceback" not in err, err


def _running_sweep(tmp_path, trials: int):
    """A page's sweep "s" of long tiny trials, its first trial two steps in: (data, runs, registry, trial folder)."""
    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    sweeps = SweepRegistry(runs)
    sweeps.start(["--study", "s", "--data-root", str(data), "--trials", str(trials), *TINY[:-2], "--checkpoint-every",
                  "1", "--epochs", "200"])
    first = runs / "s" / "trial-0000"
    wait_for(lambda: metric_rows(first) >= 2 or sweeps.running() is None, what="two steps")
    return data, runs, sweeps, first


@pytest.mark.heavy(20)
def test_two_commands_of_one_study_stay_seen_and_stopped_whichever_ends_first(tmp_path):
    """Two commands on one study share its sweep.json, which named the one started last. When that one ended
    (a Ctrl-C: "stopped") or died (kill -9: a dead pid), the other trained on unseen: the Sweep page said "not
    running", its Stop was greyed, and a training could start beside it in the same runs folder."""
    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    args = sweep_args(data, runs, "--study", "two", "--trials", "6", *TINY, "--epochs", "200")
    status = lambda: json.loads((runs / "two" / "sweep.json").read_text())  # noqa: E731
    named = lambda proc: lambda: (runs / "two" / "sweep.json").is_file() and status().get("pid") == proc.pid  # noqa: E731
    registry = SweepRegistry(runs)
    a = conftest.WarmProcess(args)
    procs = [a]
    try:
        wait_for(named(a), what="command a's sweep.json")
        b = conftest.WarmProcess([*args, "--trials", "7", "--sampler-seed", "7"])  # a target of its own (the last wins)
        procs.append(b)
        wait_for(named(b), what="command b's sweep.json")
        assert [o["pid"] for o in status()["others"]] == [a.pid] and status()["trials"] == 7
        b.send_signal(signal.SIGTERM)  # b stops, and ends: a is named again, and the study still runs
        b.communicate(timeout=120)
        assert status()["state"] == "running" and status()["pid"] == a.pid and a.poll() is None, status()
        assert status()["trials"] == 6 and status()["workers"] == 1  # a's own, not b's
        assert registry.running()["pid"] == a.pid
        c = conftest.WarmProcess([*args, "--sampler-seed", "8"])
        procs.append(c)
        wait_for(named(c), what="command c's sweep.json")
        c.kill()  # dies without a word: sweep.json names a dead pid, and a runs on
        c.communicate()
        assert registry.running()["pid"] == a.pid  # seen: the page's Stop is there, and a training is refused
        from mixsep.jobs import JobRegistry
        with pytest.raises(MixsepError, match="Sweep 'two' is running"):
            JobRegistry(runs).start(TrainConfig(data_root=str(data), model="tiny", pretrained=False, device="cpu"))
        assert registry.stop()  # reaches a
        a.communicate(timeout=120)
        assert a.returncode == 1 and registry.running() is None
        assert status()["state"] == "stopped" and status()["pid"] == a.pid and status()["others"] == []
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.mark.heavy(12)
def test_stop_requeues_the_running_trial(tmp_path):
    from optuna.trial import TrialState

    data, runs, sweeps, first = _running_sweep(tmp_path, trials=3)
    assert sweeps.running()["study"] == "s"
    with pytest.raises(MixsepError, match="already running"):
        sweeps.start(["--study", "t", "--data-root", str(data), *TINY])
    assert sweeps.stop()
    sweeps.wait(120)
    trials = study_of(runs, "s").trials
    assert trials[0].state == TrialState.FAIL and trials[-1].state == TrialState.WAITING
    assert trials[-1].user_attrs["run"] == "s/trial-0000" and trials[-1].params == trials[0].params
    # marked before Optuna's FAIL: had the requeue record after it been lost, the next start queues it again
    assert trials[0].user_attrs["halted"] == "stopped" and "halted" not in trials[-1].user_attrs
    frame = trials_frame(study_of(runs, "s")).set_index("trial")  # "fail" beside a blank note read as a crash
    assert frame.loc[0, "note"] == f"stopped; continues as trial {trials[-1].number}; the report's defaults"
    assert frame.loc[0, "state"] == "stopped"  # as its run reads on Compare: the table said Optuna's "fail"
    # the copy's number is not its run folder's (trial-0000): it names the trial it continues
    assert frame.loc[trials[-1].number, "note"] == "continues trial 0; the report's defaults"
    assert pd.isna(frame.loc[0, "duration_s"])  # counted in the trial that continues it
    assert json.loads((first / "status.json").read_text())["state"] == "stopped"
    assert json.loads((runs / "s" / "sweep.json").read_text())["state"] == "stopped"
    assert sweeps.error() is None
    log = (runs / "s" / SWEEP_LOG).read_text()  # the stop in one line, not Optuna's traceback of it
    assert "trial 0: stopped; it resumes from its last checkpoint" in log and "Traceback" not in log, log
    assert "failed with value None" not in log, log
    # resumed by a command with its own --cpu-bf16 (each machine's choice): the trial's folder records it,
    # as `train --run-dir` records a setting a resume may change
    assert json.loads((first / "config.json").read_text())["cpu_bf16"] is False
    sweeps.start(["--study", "s", "--data-root", str(data), "--cpu-bf16"])
    wait_for(lambda: json.loads((first / "config.json").read_text())["cpu_bf16"] or sweeps.running() is None,
             what="the resumed trial's config")
    assert sweeps.stop()
    sweeps.wait(120)
    saved = json.loads((first / "config.json").read_text())
    assert saved["cpu_bf16"] is True and saved["lr"] == trials[0].params["lr"] and sweeps.error() is None


def test_a_trial_whose_resume_is_refused_keeps_its_config(tmp_path):
    """A trial resumed with this machine's own --cpu-bf16 saved it to config.json, then found its last.pt cut short."""
    from optuna.trial import TrialState

    data, runs, sweeps, first = _running_sweep(tmp_path, trials=1)
    assert sweeps.stop()
    sweeps.wait(120)
    last = first / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    before = conftest.tree(first, skip=(".lock",))
    sweeps.start(["--study", "s", "--data-root", str(data), "--cpu-bf16"])
    sweeps.wait(120)
    assert conftest.tree(first, skip=(".lock",)) == before  # config.json too: cpu_bf16 still false
    trials = study_of(runs, "s").trials  # refused, not spent: queued again, it trains once last.pt is dealt with
    assert "so the run cannot resume and is left as it was" in trials[-2].user_attrs["error"]
    assert trials[-1].state == TrialState.WAITING and trials[-1].user_attrs["run"] == "s/trial-0000"
    said = sweeps.error()
    assert "so the run cannot resume and is left as it was" in said and said.endswith(
        f"Trial {trials[-2].number} is queued to train again: once that is fixed, run the same command."), said


@pytest.mark.heavy(12)
def test_a_second_ctrl_c_quits_at_once_and_the_trial_still_resumes(tmp_path):
    from optuna.trial import TrialState

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    args = sweep_args(data, runs, "--study", "q", "--trials", "1", *TINY, "--epochs", "60")
    worker = conftest.WarmProcess(args)
    first = runs / "q" / "trial-0000"
    said = lambda: "Ctrl-C again to quit at once" in Path(worker._err).read_text()
    conftest.frozen_when(worker, lambda: metric_rows(first) >= 2, what="two steps of trial 0")
    worker.send_signal(signal.SIGINT)  # delivered when it runs again: it finishes its step...
    conftest.frozen_when(worker, said, what="the first Ctrl-C's line", slice_s=0.001)
    worker.send_signal(signal.SIGINT)  # ...and a second one, while it still does, quits at once
    worker.send_signal(signal.SIGCONT)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 130, err
    assert "Traceback" not in err and "quit at once by a second Ctrl-C" in err, err
    trials = study_of(runs, "q").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["run"] == "q/trial-0000"
    # marked before Optuna's FAIL: the copy queued after it, lost (a kill between the two, the journal's disk
    # full; here its record is cut off), comes back all the same
    assert trials[0].user_attrs["halted"] == "stopped"
    conftest.cut_last_record(runs / JOURNAL, op_code=4)
    assert json.loads((runs / "q" / "sweep.json").read_text())["state"] == "stopped"
    done = cli(*args)  # the same command finishes it, from its checkpoint
    assert done.returncode == 0, done.stderr
    steps = [int(line.split(",")[0]) for line in (first / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 121))
    first.rename(tmp_path / "elsewhere")  # moved away: it trained here, so "copy it from this machine" misled
    best = cli(*sweep_args(data, runs, "--study", "q", "--best"))
    assert best.returncode == 0 and best.stdout.strip() == str(first), best.stderr
    assert (f"note: {first} is not there: it trained on this machine ({socket.gethostname()}), so its folder was "
            "moved or deleted; put it back to evaluate it") in best.stderr


# --------------------------------------------------------------------------- the Sweep page


@pytest.fixture
def page_env(tmp_path, monkeypatch):
    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(data))
    monkeypatch.setenv("MIXSEP_RUNS_DIR", str(runs))
    monkeypatch.delenv("MIXSEP_SWEEP_STORAGE", raising=False)
    monkeypatch.syspath_prepend(str(ROOT))
    yield data, runs
    import sweep_ui

    sweeps = sweep_ui.registry(runs)
    if sweeps._proc is not None and sweeps._proc.poll() is None:
        sweeps._proc.send_signal(signal.SIGKILL)
        sweeps._proc.wait(10)


def app_page(name: str, timeout: int):
    """A page of the dashboard under AppTest, opened as a user does: through dashboard.py's navigation
    (a page run on its own has no navigation for the sidebar's links)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=timeout).run()
    return at.switch_page(f"app_pages/{name}").run()


@pytest.mark.heavy(12)
def test_sweep_page_launches_a_study_and_shows_its_trials(page_env):
    data, runs = page_env
    at = app_page("5_Sweep.py", 120)
    assert not at.exception, [e.value for e in at.exception]
    assert "No study yet" in " ".join(i.value for i in at.info)
    labels = [s.label for s in at.select_slider] + [s.label for s in at.slider]
    assert any(label.startswith("Learning rate") for label in labels) and "Adam beta1" in labels

    at.text_input(key="sweep_name").set_value("../escape")
    at.button[0].click().run()  # Start with a name that would leave the runs folder
    assert "not a usable study name" in " ".join(e.value for e in at.error) and not runs.exists()

    create_study(plan(build_parser().parse_args(sweep_args(data, runs, "--study", "older", *TINY))))
    at.run()
    assert at.selectbox(key="sweep_pick").value == "older"  # the study there is, until one starts
    at.text_input(key="sweep_name").set_value("page")
    at.multiselect(key="sweep_model").set_value(["tiny"])
    at.select_slider(key="sweep_batch_size").set_value((16, 16))
    at.toggle(key="sweep_pretrained").set_value(False)  # no download attempt per trial
    at.toggle(key="sweep_cpu_bf16").set_value(True)  # the Train page's precision toggle, here too
    at.number_input(key="sweep_trials").set_value(2)
    at.number_input(key="sweep_val").set_value(16)
    at.number_input(key="sweep_every").set_value(1)
    at.button[0].click().run()
    assert not at.error, [e.value for e in at.error]
    assert (runs / "page" / "sweep.log").is_file()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(1)
        at.run()
        if at.dataframe and len(at.dataframe[0].value) == 2 and "2 of 2 trials done" in at.get("progress")[0].proto.text:
            break
    assert at.selectbox(key="sweep_pick").value == "page"  # the started study, not the one shown before
    table = at.dataframe[0].value
    assert list(table["trial"]) == [0, 1] and set(table["run"]) == {"page/trial-0000", "page/trial-0001"}
    assert {"lr", "beta1", "beta2", "val PSNR", "MNIST SSIM", "state"} <= set(table.columns)
    assert (table["lr"][0], table["beta1"][0], table["beta2"][0]) == (1e-3, 0.9, 0.999)  # the baseline
    assert table["note"][0] == "the report's defaults"
    assert len(at.get("plotly_chart")) >= 2  # optimisation history and parallel coordinates
    assert "Best so far" in " ".join(s.value for s in at.success)
    cfg = json.loads((runs / "page" / "trial-0000" / "config.json").read_text())
    assert (cfg["model"], cfg["batch_size"], cfg["train_size"], cfg["pretrained"]) == ("tiny", 16, 80, False)
    assert cfg["cpu_bf16"] is True

    (runs / "solo").mkdir()  # a run of its own beside the study: the filter leaves it out
    for f in ("config.json", "metrics.csv", "status.json"):
        (runs / "solo" / f).write_bytes((runs / "page" / "trial-0000" / f).read_bytes())
    compare = app_page("4_Compare.py", 120)
    assert not compare.exception, [e.value for e in compare.exception]
    assert "solo" in compare.multiselect[0].options  # listed by name
    assert compare.selectbox[0].options == ["all runs", "page"]
    compare.selectbox[0].set_value("page").run()
    shown = compare.dataframe[0].value.set_index("run")
    assert set(shown.index) == {"page/trial-0000", "page/trial-0001"} and shown["best_loss"].notna().all()
    for _, row in table.iterrows():  # the best of a trial's validation reports, never below its final figure
        assert shown.loc[row["run"], "val_psnr"] >= row["val PSNR"] - 1e-9
    # named apart from the Sweep table's "val PSNR" (the final report, which "Best so far" and --best rank by)
    assert json.loads(compare.dataframe[0].proto.columns)["val_psnr"]["label"] == "best val PSNR"


def test_sweep_page_hides_the_servers_database_password_and_still_uses_it(page_env, monkeypatch):
    """The server's MIXSEP_SWEEP_STORAGE reaches the page as postgresql://user:***@...; the page
    connects with the real URL (here to a closed port, so it says it cannot reach it)."""
    port = free_port()
    monkeypatch.setenv("MIXSEP_SWEEP_STORAGE", f"postgresql://mixsep:S3cret!pw@127.0.0.1:{port}/db")
    at = app_page("5_Sweep.py", 60)
    assert not at.exception, [e.value for e in at.exception]
    box = at.text_input(key="sweep_storage")
    assert box.value == f"postgresql://mixsep:***@127.0.0.1:{port}/db"
    seen = lambda markdown: conftest.seen(markdown).replace("\u2060", "")  # escaped as text: as a reader sees it
    assert f"Cannot reach the database postgresql://mixsep:***@127.0.0.1:{port}/db" in seen(at.error[0].value)
    assert "S3cret" not in str(at._tree), "the password reached the page"
    box.set_value(f"postgresql://mixsep@127.0.0.1:{free_port()}/other").run()  # a URL the user types is used as typed
    assert "/other" in seen(at.error[0].value) and "S3cret" not in str(at._tree)
    # the page goes on below the sentence: its Start and Stop (Stop ends a sweep running here whatever the
    # box names) were gone with the rest of the page, and nothing said a sweep of this runs folder was running
    assert {"Start", "Stop"} <= {b.label for b in at.button}
    assert next(b for b in at.button if b.label == "Start").disabled  # the storage cannot take a study either
    assert not any("No study yet" in i.value for i in at.info)
    for typo in ("postgresq://mixsep@127.0.0.1/db", "mixsep:pw@127.0.0.1/db"):  # the page has a box, not --storage
        box.set_value(typo).run()
        assert "or empty the Storage box for the journal file" in seen(at.error[0].value), typo
        assert "--storage" not in seen(at.error[0].value) and "pw@" not in str(at._tree)


def test_a_study_resumed_on_data_of_another_size_is_refused_not_scored_on_other_pairs(tmp_path):
    """The validation pairs are the data root's last val_size: resumed on a data root of 64 pairs, a study made
    on 96 scored its next trials on other pairs, and ranked them with the first ones."""
    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    assert cli(*sweep_args(data, runs, "--study", "s", "--trials", "1", *TINY)).returncode == 0
    small = make_data_root(tmp_path / "small", n_train=64)
    before = tree(runs)
    refused = cli(*sweep_args(small, runs, "--study", "s", "--trials", "2"))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: Study 's' validates on the last 16 of the 96 training pairs of the data it was made on, and "
        f"{small.resolve()} holds 64, so its trials would be scored on other pairs; give --data-root naming the "
        "study's data (or a copy of it).")
    assert tree(runs) == before
    import shutil

    shutil.copytree(data, tmp_path / "copy")  # the same data elsewhere (another machine's copy) is the study's data
    assert cli(*sweep_args(tmp_path / "copy", runs, "--study", "s", "--trials", "2")).returncode == 0


def test_a_trial_folder_resumed_by_train_with_another_checkpoint_cadence_is_still_the_trials(tmp_path, data_root):
    """`train --run-dir TRIAL --checkpoint-seconds 0` (a setting a resume may change) made the sweep refuse
    the folder as another run's, "whose journal no longer knows it": moving it away lost its training."""
    from mixsep.run import CONFIG
    from mixsep.sweep import FolderTaken, _check_own_folder

    study = TrainConfig(data_root=str(data_root), model="tiny", pretrained=False, batch_size=16, train_size=32)
    folder = tmp_path / "trial-0000"
    folder.mkdir()
    for changed in ({"checkpoint_seconds": 0.0}, {"checkpoint_every": 1, "keep_epochs": 0, "max_minutes": 3.0}):
        (folder / CONFIG).write_text(json.dumps({**study.to_dict(), **changed}))
        _check_own_folder(folder, study, 0)  # the trial's own folder: resumed, its cadence the study's again
    (folder / CONFIG).write_text(json.dumps({**study.to_dict(), "lr": 0.5}))  # another run's: refused as before
    with pytest.raises(FolderTaken, match=r"holds a run with other settings \(lr\)"):
        _check_own_folder(folder, study, 0)


def test_a_trial_whose_folder_is_being_trained_is_queued_again_not_failed_for_good(capsys, data_root, tmp_path):
    """`train --run-dir` on a stopped trial's folder while the sweep resumed: the trial was FAIL for good,
    with Optuna's traceback, and later runs counted it done."""
    from optuna.trial import TrialState

    from mixsep.run import Run

    runs = tmp_path / "runs"
    args = sweep_args(data_root, runs, "--study", "busy", *TINY, "--trials", "1", "--epochs", "1")
    held = Run(runs / "busy" / "trial-0000").open()  # as a `train --run-dir` of it would
    try:
        assert main(args) == 2
    finally:
        held.close()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: Run ") and "is already being trained by" in err, err
    assert "Trial 0 is queued to resume from its last checkpoint: once that is over, run the same command." in err
    study = load_study(plan(build_parser().parse_args(args)))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert main(args) == 0  # once it is over: the same command trains it
    assert [t.state for t in load_study(plan(build_parser().parse_args(args))).trials][-1] == TrialState.COMPLETE


def test_a_command_spelling_out_a_default_joins_a_study_made_a_moment_before(data_root, tmp_path):
    """Two commands starting one study at once, one giving `--keep-epochs 1` (the default): the
    second was refused as "another fixed settings", though the same command a moment later joined it."""
    import optuna

    from mixsep.sweep import ATTR, _made_meanwhile

    runs = tmp_path / "runs"
    made = plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "m", *TINY)))
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(ATTR, made.attrs())
    spelled = plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "m", *TINY,
                                                        "--keep-epochs", "1")))
    assert _made_meanwhile(study, spelled) == made.attrs()
    other = plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "m", *TINY, "--keep-epochs", "2")))
    with pytest.raises(MixsepError, match="another fixed settings"):
        _made_meanwhile(study, other)
    # other pruning rules: it joined, and its trials were reported every 4 steps and never pruned beside the
    # maker's pruned ones (and the study then recorded the joiner's rules as its own)
    for flags in (["--pruner", "none"], ["--report-every", "4"]):
        other = plan(build_parser().parse_args(sweep_args(data_root, runs, "--study", "m", *TINY, *flags)))
        with pytest.raises(MixsepError, match="with another --pruner or --report-every; run the same command"):
            _made_meanwhile(study, other)


def test_a_resumed_study_draws_new_points_and_a_new_study_draws_as_before(tmp_path):
    """Every command seeded its sampler with --sampler-seed (+ the worker's index): a study resumed after a Ctrl-C,
    a Stop, a full disk or a lost database drew its first trials' parameters again, one by one, and re-trained
    points it had scored. Each command here asks the study as a worker does (the sampler load_study gives it)."""
    data = make_data_root(tmp_path / "data")
    p = plan(build_parser().parse_args(sweep_args(data, tmp_path / "runs", "--study", "s", "--trials", "30", *TINY)))
    create_study(p)

    def command(asks: int) -> list[tuple]:
        study, drawn = load_study(p, 0), []
        for _ in range(asks):
            trial = study.ask()
            params = tuple(d.suggest(trial) for d in p.space.values())
            study.tell(trial, float(len(study.trials)))
            if not trial.user_attrs.get("baseline"):
                drawn.append(params)
        return drawn

    first = command(4)  # the report's defaults (queued), then three drawn
    again = command(3)  # the same command again: a resume
    assert len(first) == 3 and len(again) == 3 and not set(first) & set(again), (first, again)
    # a new study's first command still draws what --sampler-seed drew before: runs stay reproducible
    import optuna

    fresh = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=p.sampler_seed, n_startup_trials=10))
    fresh.enqueue_trial(dict(zip(p.space, first[0])))  # stands for the defaults, which draw nothing
    fresh.tell(fresh.ask(), 0.0)
    trial = fresh.ask()
    assert tuple(d.suggest(trial) for d in p.space.values()) == first[0]
    # a worker child seeds from its command's count (--trials-held), taken before any worker started: the second of
    # two workers loaded the study after the first had taken the queued defaults, and seeded as if resuming
    child = plan(build_parser().parse_args(sweep_args(data, tmp_path / "runs", "--study", "s", "--trials", "30", *TINY,
                                                      "--worker-index", "1", "--trials-held", "0")))
    assert child.trials_held == 0 and len(load_study(p).trials) == 7
    drawn = load_study(child, 1).ask()
    alone = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=p.sampler_seed + 1, n_startup_trials=10)).ask()
    assert [d.suggest(drawn) for d in p.space.values()] == [d.suggest(alone) for d in p.space.values()]


@pytest.mark.parametrize("name,said", [
    ("L" * 200, "so keep it to 128 characters (it has 200)."),  # quoted cut to 128 (QA: printed whole)
    ("a..b", "so no '..' inside it."),
    ("x ", "so no space at its end."),
    ("a:b", "starting with a letter or digit (':' is not among them)."),
    ("Über-数", "use ASCII letters (a-z, A-Z), digits, spaces, '.', '_' and '-', starting with a letter or digit "
               "('Ü' '数' are not among them)."),  # they are letters, but not ASCII ones: said which letters
    ("lnk", "lnk is a link that leads out of the runs folder or to another folder in it; move it away or choose "
            "another name."),
])
def test_a_study_name_refused_says_why(tmp_path, capsys, name, said):
    """Each of these was refused as holding characters outside letters, digits, spaces, '.', '_' and '-', which
    all but one of them do not: too long, '..' inside, a space at the end, a link out of the runs folder."""
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    runs.mkdir()
    elsewhere.mkdir()
    (runs / "lnk").symlink_to(elsewhere)
    assert main(sweep_args(make_data_root(tmp_path / "data"), runs, "--study", name, *TINY)) == 2
    err = capsys.readouterr().err
    quoted = name if len(name) <= 128 else f"{name[:128]}… (200 characters)"
    assert err.startswith(f"error: '{quoted}' is not a usable study name") and err.rstrip().endswith(said), err
    assert err.count("\n") == 1 and [p.name for p in runs.iterdir()] == ["lnk"] and not any(elsewhere.iterdir())


def test_a_queued_trial_whose_folder_is_in_another_runs_folder_names_that_folder(capsys, tmp_path):
    """A shared database, and a stopped trial resumed by a command with another runs folder: its folder is not
    gone, it is where the first command trained it, and the line says where."""
    from mixsep.sweep import requeue

    data = make_data_root(tmp_path / "data")
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first_runs, other_runs = tmp_path / "a" / "runs", tmp_path / "b" / "runs"
    assert main(sweep_args(data, first_runs, "--study", "s", "--storage", url, "--trials", "1", *TINY)) == 0
    import optuna

    study = optuna.load_study(study_name="s", storage=url)
    requeue(study, study.trials[-1], stopped=True)
    capsys.readouterr()
    assert main(sweep_args(data, other_runs, "--study", "s", "--storage", url, "--trials", "2")) == 0
    err = capsys.readouterr().err
    assert "trial 1: its run folder s/trial-0000 is in another runs folder, " \
           f"{first_runs.resolve()}, so it trains again from step 0\n" in err, err
    assert (other_runs / "s" / "trial-0000" / "metrics.csv").is_file()


def test_a_requeued_trial_whose_worker_never_made_its_folder_is_not_said_gone(capsys, tmp_path):
    """A worker killed after its trial was named but before it made the folder: the next command said the folder
    "is gone (moved or deleted)", though nothing was ever there."""
    import optuna

    from mixsep.sweep import requeue

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    assert main(sweep_args(data, runs, "--study", "s", "--trials", "1", *TINY, "--epochs", "1")) == 0
    study = study_of(runs, "s")
    done = study.trials[-1]
    study.add_trial(optuna.trial.create_trial(  # named by its worker, which died before making the folder
        params=done.params, distributions=done.distributions, state=optuna.trial.TrialState.FAIL,
        user_attrs={"run": "s/trial-0001"}))
    requeue(study, study.trials[-1], stopped=True)
    capsys.readouterr()
    assert main(sweep_args(data, runs, "--study", "s", "--trials", "2")) == 0
    err = capsys.readouterr().err
    assert "is gone" not in err and (runs / "s" / "trial-0001" / "metrics.csv").is_file(), err
    assert study_of(runs, "s").trials[-1].user_attrs["folder_made"] is True


def test_a_missing_database_driver_is_named_with_the_way_to_install_it(monkeypatch):
    """With psycopg2 missing, postgresql:// was told "install it, or use postgresql:// (psycopg2 comes with mixsep)":
    the URL it had given, and a driver a plain pip install of mixsep did not bring."""
    from mixsep.sweep import check_storage

    with pytest.raises(MixsepError) as e:
        check_storage("mysql://u@localhost/db")
    assert str(e.value) == ("mysql://u@localhost/db needs the Python database driver 'MySQLdb', which is not "
                            "installed; install it, or use postgresql://, whose driver mixsep installs.")
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as where it is not installed
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MixsepError) as e:
        check_storage("postgresql://u@localhost/db")
    assert str(e.value) == ("postgresql://u@localhost/db needs PostgreSQL's Python driver psycopg2, which is not "
                            "installed; `pip install psycopg2-binary` installs it (mixsep's requirements hold it).")


def test_a_tilde_in_a_sqlite_storage_is_the_home_folder(tmp_path, capsys, monkeypatch):
    """'sqlite:///~/s.db' was checked as the home folder's file and then opened as a folder named ~ (SQLite
    could not open it), as was MIXSEP_SWEEP_STORAGE with it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert main(sweep_args(make_data_root(tmp_path / "data"), tmp_path / "runs", "--study", "s", "--trials", "1",
                           "--storage", "sqlite:///~/s.db", *TINY)) == 0, capsys.readouterr().err
    assert (home / "s.db").is_file() and not (tmp_path / "~").exists()


def test_a_sweep_json_naming_another_process_is_no_sweep_and_that_process_gets_no_signal(tmp_path):
    """A sweep.json written by hand may name any live process here (pid and start time, this host): the Sweep
    page's Stop sent it SIGTERM. Only a process that holds the study's lock, as every sweep command does, is one."""
    from mixsep.run import process_start
    from mixsep.sweep import live_sweeps

    runs = tmp_path / "runs"
    (runs / "st").mkdir(parents=True)
    other = subprocess.Popen(["sleep", "60"])
    try:
        record = {"state": "running", "host": socket.gethostname(), "pid": other.pid,
                  "pid_start": process_start(other.pid), "study": "st", "others": []}
        (runs / "st" / "sweep.json").write_text(json.dumps(record))
        assert live_sweeps(runs) == [] and SweepRegistry(runs).stop() is False
        time.sleep(0.5)
        assert other.poll() is None  # no signal reached it
        # nor one holding what a .sweep.lock put there as a link leads to
        with conftest.held(tmp_path / "victim.lock") as victim:
            (runs / "st" / ".sweep.lock").symlink_to(tmp_path / "victim.lock")
            record.update(pid=victim.pid, pid_start=process_start(victim.pid))
            (runs / "st" / "sweep.json").write_text(json.dumps(record))
            assert live_sweeps(runs) == [] and SweepRegistry(runs).stop() is False
            time.sleep(0.5)
            assert victim.poll() is None
        # a real sweep command of another runs folder, its study folder linked here: listed there, not here (here
        # it blocked training, and this folder's Stop ended it)
        elsewhere = tmp_path / "elsewhere"
        (elsewhere / "st").mkdir(parents=True)
        with conftest.held(elsewhere / "st" / ".sweep.lock") as command:
            record.update(pid=command.pid, pid_start=process_start(command.pid))
            (elsewhere / "st" / "sweep.json").write_text(json.dumps(record))
            (runs / "linked").symlink_to(elsewhere / "st")
            assert [s["pid"] for s in live_sweeps(elsewhere)] == [command.pid]
            assert live_sweeps(runs) == [] and SweepRegistry(runs).stop() is False
            time.sleep(0.5)
            assert command.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_database_of_another_program_is_not_written_by_a_sweep_nor_by_a_page_that_reads_it(tmp_path, capsys):
    """A database with a table named "studies" that is not Optuna's: the Sweep page, which only reads a storage,
    added Optuna's 23 tables and indexes beside the owner's and then showed a traceback."""
    import sqlite3

    db = tmp_path / "other.db"
    with sqlite3.connect(db) as c:
        c.execute("create table studies(id integer primary key, note text)")
        c.execute("insert into studies(note) values ('the owner''s row')")
    before = db.read_bytes()
    url = f"sqlite:///{db}"
    said = f"The database {url} holds a table named 'studies' that is not Optuna's"
    for create in (False, True):  # the page's read, a sweep's start
        with pytest.raises(MixsepError, match=re.escape(said)):
            open_storage(url, tmp_path / "runs", create=create)
    assert main(["sweep", "--study", "s", "--runs-dir", str(tmp_path / "runs"), "--storage", url,
                 "--data-root", str(tmp_path)]) == 2
    assert said in capsys.readouterr().err
    assert db.read_bytes() == before  # nothing written


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the heartbeat, with ask and tell
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_another_worker_completes_while_the_heartbeat_looks_is_not_said_to_be_requeued(tmp_path,
                                                                                               monkeypatch):
    """On a database, a trial that left RUNNING between the two looks around Optuna's heartbeat check (another
    worker completed it) was said to be a dead worker's, "marked failed and queued again", though neither was."""
    import optuna

    from mixsep.sweep import fail_dead_trials

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="race", storage=storage, direction="maximize")
    trial = study.ask()
    real = optuna.storages.fail_stale_trials

    def meanwhile(s):  # the other worker's tell lands inside the check
        study.tell(trial, 1.0)
        return real(s)

    monkeypatch.setattr(optuna.storages, "fail_stale_trials", meanwhile)
    assert fail_dead_trials(study, journal=False, runs_dir=tmp_path) == []
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_a_ctrl_c_while_a_worker_child_starts_prints_no_python_error(data_root, tmp_path, capfd):
    """A terminal's Ctrl-C reaches the whole process group: one that landed while a worker child's interpreter
    started printed "Fatal Python error: init_import_site" or a KeyboardInterrupt traceback. The child ignores it
    until its handler is in place, and its parent's SIGTERM (how the parent forwards a stop) still ends it."""
    from mixsep.sweep import _spawn

    p = plan(build_parser().parse_args(sweep_args(data_root, tmp_path / "runs", "--study", "c", "--workers", "2",
                                                  *TINY)))
    child = _spawn(p, 0)
    try:
        child.send_signal(signal.SIGINT)  # at once: its interpreter is starting (importing torch takes a second)
        time.sleep(0.3)
        assert child.poll() is None  # ignored
        child.send_signal(signal.SIGTERM)
        child.wait(30)
    finally:
        child.kill()
        child.wait()
    err = capfd.readouterr().err
    assert "Fatal Python error" not in err and "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_best_from_another_runs_folder_names_the_folder_the_trial_trained_in(capsys, tmp_path):
    """QA: `sweep --best` on a database study without its --runs-dir printed a path that was not there, exit 0, and
    said the folder "was moved or deleted"; `evaluate "$(sweep --best)"` then failed. The trial records its runs
    folder: --best names the folder there, which evaluates."""
    data = make_data_root(tmp_path / "data")
    runs, url = tmp_path / "runs", f"sqlite:///{tmp_path / 's.db'}"
    assert main(sweep_args(data, runs, "--study", "k", "--trials", "1", "--storage", url, *TINY)) == 0
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    assert main(["sweep", "--study", "k", "--best", "--storage", url, "--runs-dir", str(elsewhere)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{runs / 'k' / 'trial-0000'}\n"
    assert err.splitlines()[-1] == (f"note: trial 0 trained in the runs folder {runs}, not {elsewhere} (--runs-dir or "
                                    "MIXSEP_RUNS_DIR); its folder is named from there")
    assert main(["evaluate", out.strip(), "--data-root", str(data), "--samples", "8"]) == 0
