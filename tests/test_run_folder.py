"""The run folder under kills, concurrency, full disks, reused pids and odd names.

Real processes (`python -m mixsep train`), real signals, real files; the smallest model
that still runs the whole loop. Most trainers are forked warm (conftest.WarmProcess: torch
already imported); kills during the interpreter's start-up, and the Ctrl-C test that reads
stderr as it comes, start cold ones.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import conftest
import pytest
import torch

from mixsep import MixsepError, TrainConfig
from mixsep import run as R
from mixsep import train as T
from mixsep.jobs import JobRegistry
from mixsep.model import MODELS

MODEL = "tiny" if "tiny" in MODELS else "unet"  # the smallest separator that exercises the loop
KNOWN_STATES = {s.value for s in R.State}


@pytest.fixture
def small_config(tiny_config) -> TrainConfig:
    return dataclasses.replace(tiny_config, model=MODEL, batch_size=8, checkpoint_every=2)


def cli(*args, cold: bool = False):
    """`python -m mixsep train ARGS`, forked warm, or started cold (a fresh interpreter)."""
    if not cold:
        return conftest.WarmProcess(["train", *args])
    return subprocess.Popen([sys.executable, "-m", "mixsep", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def steps_in(run: Path) -> list[int]:
    return [r["step"] for r in R._csv_rows(run / R.METRICS)]


def temps_in(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if p.name.endswith(R.TMP_SUFFIX)]


def wait_for(cond, timeout=60.0, what="condition", interval=0.02):
    conftest.wait_for(cond, timeout, what, interval=interval)


# --------------------------------------------------------------------------- kills


@pytest.mark.heavy(35)
def test_sigkill_at_random_moments_loses_and_repeats_nothing(small_config, tmp_path):
    """At least 20 SIGKILLs of a real trainer (before its first checkpoint, while a checkpoint is
    written, mid-steps, during a resume); each time the folder is consistent, and the resumed
    run ends with exactly the weights of an uninterrupted one."""
    cfg = dataclasses.replace(small_config, epochs=12)  # 96 pairs / 8 = 12 steps an epoch, 144 steps
    reference = tmp_path / "reference"
    list(T.train_steps(cfg, reference))
    run, cfg_file = tmp_path / "killed", tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    rng = random.Random(0)
    kills, moments = 0, []
    while True:
        moment = rng.choice(["early", "steps", "checkpoint", "resume"]) if kills < 20 else "none"
        proc = cli("--config", str(cfg_file), "--run-dir", str(run), "--quiet", cold=moment == "early")
        before = len(steps_in(run))
        if moment == "early":  # anywhere from interpreter start (a cold process) to the first steps
            time.sleep(rng.uniform(0.0, 2.5))
        elif moment == "steps":
            try:
                wait_for(lambda: len(steps_in(run)) > before or proc.poll() is not None, 60, "a new step")
            except AssertionError:
                pass
            time.sleep(rng.uniform(0, 0.05))
        elif moment == "checkpoint":  # the moment a checkpoint's temp file exists
            try:
                wait_for(lambda: any((run / "checkpoints").glob("*.tmp")) or any((run / "checkpoints").glob(".*.tmp"))
                         or proc.poll() is not None, 60, "a checkpoint being written",
                         interval=0.002)  # fine-grained: a checkpoint's temp file lives ms
            except AssertionError:
                pass
        elif moment == "resume":  # just after the lock is taken: the metrics rewrite is near
            try:
                wait_for(lambda: R.lock_holder(run) is not None or proc.poll() is not None, 60, "the lock")
            except AssertionError:
                pass
            time.sleep(rng.uniform(0, 0.3))
        if moment != "none" and proc.poll() is None:
            proc.kill()
            kills += 1
            moments.append(moment)
        out, err = proc.communicate(timeout=300)
        status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else None
        assert status is None or status["state"] in KNOWN_STATES
        s = steps_in(run)
        assert s == list(range(1, len(s) + 1)), f"after a kill at {moment}: steps {s}"
        if moment == "none":
            assert proc.returncode == 0, err
            break
    assert kills >= 20 and {"early", "checkpoint", "steps", "resume"} <= set(moments)
    assert steps_in(run) == list(range(1, 145))
    assert R.read_status(run)["state"] == "finished"
    assert temps_in(run) == []
    assert [p.name for p in R.list_checkpoints(run)] == ["last.pt"] + [f"epoch-{e}.pt" for e in range(12, 0, -1)]
    a = R.read_checkpoint(R.last_checkpoint(reference))["model"]
    b = R.read_checkpoint(R.last_checkpoint(run))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_loss = [r["loss"] for r in R._csv_rows(reference / R.METRICS)]
    assert [r["loss"] for r in R._csv_rows(run / R.METRICS)] == pytest.approx(ref_loss, rel=1e-5)


def test_kill_before_the_first_checkpoint_leaves_no_rows_to_repeat(small_config, tmp_path):
    run = tmp_path / "run"
    list(T.train_steps(dataclasses.replace(small_config, checkpoint_every=1000, epochs=1), run))
    (run / "checkpoints" / "last.pt").unlink()  # as if killed before last.pt: rows 1..12 exist, no checkpoint
    for p in (run / "checkpoints").glob("epoch-*.pt"):
        p.unlink()
    (run / "checkpoints" / ".last.pt.123.tmp").write_bytes(b"x" * 1000)  # a write cut short
    rows = list(T.train_steps(dataclasses.replace(small_config, checkpoint_every=1000, epochs=1), run))
    assert rows[0].step == 1 and steps_in(run) == list(range(1, 13))
    assert temps_in(run) == []


def test_kill_between_last_and_epoch_checkpoint_still_writes_the_epoch(small_config, tmp_path):
    run = tmp_path / "run"
    cfg = dataclasses.replace(small_config, epochs=2)
    for r in T.train_steps(cfg, run):
        if r.step == 12:
            R.request_stop(run)  # stops at the end of epoch 1 with last.pt at step 12
    (run / "checkpoints" / "epoch-1.pt").unlink(missing_ok=True)  # the kill fell between the two files
    assert R.read_checkpoint(R.last_checkpoint(run))["step"] == 12
    list(T.train_steps(cfg, run))
    assert [p.name for p in R.list_checkpoints(run)] == ["last.pt", "epoch-2.pt", "epoch-1.pt"]
    assert R.read_checkpoint(run / "checkpoints" / "epoch-1.pt")["step"] == 12


def test_a_run_folder_deleted_mid_run_stops_the_run_and_is_not_made_again(small_config, tmp_path):
    """rm -rf of a training run's folder: the trainer made it again with only checkpoints/ and status.json,
    a folder no page lists, and trained on into it."""
    import shutil

    run = tmp_path / "run"
    config = dataclasses.replace(small_config, checkpoint_every=2, epochs=3)
    said = (f"The folder {run / 'checkpoints'} was moved or deleted, so last.pt could not be written: training "
            "stopped at step {}; if the run folder was moved, train --run-dir with its new place resumes it from its "
            "last checkpoint; if deleted, start a new run.")
    steps = T.train_steps(config, run)
    assert next(steps).step == 1
    shutil.rmtree(run)
    with pytest.raises(R.RunWriteError) as e:
        for _ in steps:
            pass
    assert str(e.value) == said.format(2)
    assert not run.exists()
    # moved (mv) while it trains: it said "the run folder is gone with its checkpoints: start a new run", and the
    # run resumes from its new place, every step once
    steps = T.train_steps(config, run)
    for _ in range(3):
        next(steps)
    run.rename(tmp_path / "moved")
    with pytest.raises(R.RunWriteError) as e:
        for _ in steps:
            pass
    assert str(e.value) == said.format(4)
    assert [r.step for r in T.train_steps(config, tmp_path / "moved")][0] == 3  # from its checkpoint at step 2
    total = R.read_status(tmp_path / "moved")["total_steps"]
    assert R.read_metric_frame(tmp_path / "moved" / "metrics.csv")["step"].tolist() == list(range(1, total + 1))


def test_metrics_rewrite_is_atomic(tmp_path):
    """A resume's truncation replaces metrics.csv in one rename: a reader sees old or new, never empty."""
    run = tmp_path / "run"
    run.mkdir()
    rows = "".join(f"{i},0,0.1,0.2,0.3,0.001,10,{i}\n" for i in range(1, 8))
    (run / "metrics.csv").write_text(",".join(R.METRIC_FIELDS) + "\n" + rows + "8,0,0.1")  # last row cut
    inode = (run / "metrics.csv").stat().st_ino
    log = R.MetricsLog(run).open(keep_through_step=5)
    log.close()
    assert steps_in(run) == [1, 2, 3, 4, 5] and (run / "metrics.csv").stat().st_ino != inode


@pytest.mark.heavy(10)
def test_second_ctrl_c_quits_at_once(small_config, tmp_path):
    # the faithful model: its step and its 139 MB checkpoint leave time for a second Ctrl-C
    cfg = dataclasses.replace(small_config, model="faithful", batch_size=16, epochs=400, checkpoint_every=10_000)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    run = tmp_path / "run"
    proc = cli("--config", str(cfg_file), "--run-dir", str(run), "--quiet", cold=True)
    wait_for(lambda: len(steps_in(run)) >= 2, 120, "two steps")
    proc.send_signal(signal.SIGINT)
    while "stopping after this step" not in proc.stderr.readline():  # the first one was heard
        assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "quit at once" in err
    status = R.read_status(run)
    assert status["state"] == "stopped" and "force-quit" in status["message"]
    assert temps_in(run) == []  # a checkpoint cut short leaves nothing behind


def test_second_ctrl_c_between_steps_is_recorded_as_a_force_quit(small_config, tmp_path):
    # the CLI's handler raises KeyboardInterrupt wherever the main thread is; here it lands in the
    # CLI's own code between two steps, outside the training loop
    from mixsep.cli import follow

    run = tmp_path / "run"
    training = T.Training(dataclasses.replace(small_config, epochs=400, checkpoint_every=2), run)

    def each(r):
        if r.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        follow(training.steps(), each)
    status = R.read_status(run)
    assert status["state"] == "stopped" and "force-quit" in status["message"] and status["step"] == 2
    assert R.read_checkpoint(R.last_checkpoint(run))["step"] == 2 and temps_in(run) == []


def test_one_ctrl_c_finishes_the_step_and_checkpoints(small_config, tmp_path):
    """It is recorded as a Ctrl-C: one in the terminal of the dashboard that started a run reaches it too (one
    process group), and every page read "stopped by request", where no one had pressed Stop (QA)."""
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(dataclasses.replace(small_config, epochs=400, checkpoint_every=10_000).to_dict()))
    run = tmp_path / "run"
    proc = cli("--config", str(cfg_file), "--run-dir", str(run), "--quiet")
    wait_for(lambda: len(steps_in(run)) >= 2, 120, "two steps")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    status = R.read_status(run)
    assert (status["state"], status["message"]) == ("stopped", "stopped by Ctrl-C (SIGINT)")
    assert R.read_checkpoint(R.last_checkpoint(run))["step"] == steps_in(run)[-1] == status["step"]
    proc = cli("--run-dir", str(run), "--quiet")  # the page's Stop, or `kill`: a request
    wait_for(lambda: len(steps_in(run)) >= status["step"] + 2, 120, "two more steps")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert R.read_status(run)["message"] == "stopped by request"


@pytest.mark.heavy(12)
@pytest.mark.parametrize("when, signum", [
    # train's own handler is in place (it is no longer the start-up one): the page's Stop
    ("callable(h) and h is not getattr(sys.modules['mixsep.cli'], '_early_signal', None)", "SIGTERM"),
    # torch is being imported, long before: a Ctrl-C
    ("'torch' in sys.modules", "SIGINT"),
])
def test_a_signal_whose_exception_python_drops_while_a_resume_loads_still_stops_it(small_config, tmp_path, when,
                                                                                    signum):
    """Python drops an exception raised inside a callback it cannot pass it out of (an import lock's weakref
    callback was the one seen: 2 resumes in about 50 went on to train, and a Ctrl-C while torch loaded trained a
    new run to its end). Here the signal is raised inside a gc callback of a real, cold trainer, so what its
    handler raises is dropped."""
    run = tmp_path / "run"
    cfg = dataclasses.replace(small_config, epochs=3)
    training = T.Training(cfg, run, should_stop=lambda: True)  # stopped after its first step
    for _ in training.steps():
        pass
    before = conftest.tree(run, skip=(R.LOCK, R.STATUS))
    land = textwrap.dedent(f"""
        import gc, signal, sys
        fired = []
        def land_inside_a_callback(phase, info):
            h = signal.getsignal(signal.SIGTERM)
            if not fired and {when}:
                fired.append(phase)
                print("landed in a callback", file=sys.stderr, flush=True)
                signal.raise_signal(signal.{signum})
                for _ in range(1000):  # the handler runs here, and Python drops what it raises
                    pass
        gc.callbacks.append(land_inside_a_callback)
        from mixsep.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", land, "train", "--run-dir", str(run), "--quiet"],
                          capture_output=True, text=True, timeout=180, cwd=conftest.ROOT)
    # it landed where Python drops what the handler raises: no longer printed as "Exception ignored" with a
    # traceback, but asked again with a real signal (mixsep.errors.interrupts_never_dropped)
    assert "landed in a callback" in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("error: train stopped before training began (Ctrl-C or "
                                                    "SIGTERM); nothing was trained.")
    assert conftest.tree(run, skip=(R.LOCK, R.STATUS)) == before  # no step trained, no file written
    assert R.read_status(run)["state"] == "stopped" and R.read_status(run)["step"] == 1


@pytest.mark.heavy(10)
def test_ctrl_c_after_the_last_step_ends_quietly(small_config, tmp_path):
    """Ctrl-Cs that landed after the loop had ended and saved everything raised KeyboardInterrupt inside torch's or
    tqdm's exit callbacks: a traceback, and exit 0 (5 in 5 in a QA pass); or read as a force-quit."""
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(dataclasses.replace(small_config, epochs=1).to_dict()))
    run = tmp_path / "run"
    proc = cli("--config", str(cfg_file), "--run-dir", str(run), "--quiet", cold=True)
    lines = []
    while not (lines and lines[-1].startswith("final step")):
        lines.append(proc.stderr.readline())
        assert lines[-1], lines  # it ended without a final step
    while proc.poll() is None:  # Ctrl-Cs until it has gone: in the CLI's last lines and in the interpreter's exit
        proc.send_signal(signal.SIGINT)
        time.sleep(0.002)
    err = "".join(lines) + proc.stderr.read()
    assert proc.returncode in (0, -signal.SIGINT), err
    assert "Traceback" not in err and "Exception ignored" not in err and "quit at once" not in err, err
    assert R.read_status(run)["state"] == "finished"


# --------------------------------------------------------------------------- concurrency and identity


@pytest.mark.heavy(17)
def test_two_trainers_on_one_run(small_config, tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(dataclasses.replace(small_config, epochs=400).to_dict()))
    run = tmp_path / "run"
    first = cli("--config", str(cfg_file), "--run-dir", str(run), "--quiet")
    wait_for(lambda: len(steps_in(run)) >= 1, 120, "the first trainer's steps")
    second = cli("--config", str(cfg_file), "--run-dir", str(run), "--quiet")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert err.count("\n") == 1 and f"process {first.pid}" in err and "already being trained" in err
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    s = steps_in(run)
    assert s == list(range(1, len(s) + 1))  # no interleaved rows
    assert R.read_status(run)["pid"] == first.pid


def test_lock_is_refused_in_process_too(small_config, tmp_path):
    gen = T.train_steps(small_config, tmp_path / "run")
    next(gen)
    with pytest.raises(MixsepError, match="already being trained by process"):
        T.Training(small_config, tmp_path / "run")
    gen.close()  # the generator's end releases the lock
    T.Training(small_config, tmp_path / "run").run.close()


def test_a_reused_pid_is_not_the_trainer(small_config, tmp_path):
    """A finished run whose status still says running, with its pid now reused by another process."""
    runs = tmp_path / "runs"
    run = runs / "old"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(small_config.to_dict()))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        # written by the old trainer: the pid matches the sleeper but the start time is the old process's
        (run / "status.json").write_text(json.dumps({"state": "running", "pid": sleeper.pid, "pid_start": "1",
                                                     "step": 3, "total_steps": 12}))
        assert R.live_status(run)["state"] == "interrupted"
        jobs = JobRegistry(runs)
        assert jobs.running() is None
        assert jobs.stop() is False
        assert sleeper.poll() is None  # alive: never signalled
        # "?" (what a machine without /proc records) names no process where /proc gives start times: a run
        # copied from a Mac while it trained, or a hand-written file, once made Stop SIGTERM whatever had the pid
        R.write_json(run / "status.json", {"state": "running", "pid": sleeper.pid, "pid_start": "?", "step": 3})
        assert R.live_status(run)["state"] == "interrupted"
        assert JobRegistry(runs).running() is None and JobRegistry(runs).stop() is False
        assert sleeper.poll() is None
        # so with a study's sweep.json, which names its command and the others it found running
        from mixsep.sweep import SweepRegistry

        other = subprocess.Popen(["sleep", "60"])
        try:
            (runs / "study").mkdir()
            (runs / "study" / "sweep.json").write_text(json.dumps({
                "state": "running", "host": socket.gethostname(), "pid": sleeper.pid, "pid_start": "?",
                "others": [{"pid": other.pid, "pid_start": "?"}]}))
            assert SweepRegistry(runs).running() is None and SweepRegistry(runs).stop() is False
            assert sleeper.poll() is None and other.poll() is None
        finally:
            other.kill()
            other.wait()
        # and the real process with its real identity is the trainer, once it holds the run's lock as a trainer does
        R.write_json(run / "status.json", {"state": "running", **R.identity(sleeper.pid), "step": 3})
        assert R.live_status(run)["state"] == "interrupted"  # any live process is not the trainer
        holder = conftest.holding(run / ".lock")
        try:
            R.write_json(run / "status.json", {"state": "running", **R.identity(holder.pid), "step": 3})
            assert R.live_status(run)["state"] == "running"
        finally:
            holder.kill()
            holder.wait()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_huge_json_files_and_numbers_in_a_run_or_study_read_as_damaged(tmp_path):
    """A 1 GB status.json (sparse: no disk used) in one run folder made every page that lists it read it whole at
    each poll (2.8 GB for the server, a Train page that never settled); a total_steps of 400 digits failed the
    Train page's progress bar with a traceback."""
    from mixsep.sweep import _read_sweep

    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(data_root=str(tmp_path)).save(run / "config.json")
    for name in ("status.json", "sweep.json"):
        with open(run / name, "wb") as f:
            f.truncate(1 << 30)
    assert R.read_status(run) == {"state": "unknown", "message": "status.json is damaged (larger than 1 MB; a "
                                                                 "trainer writes a few hundred bytes)"}
    assert _read_sweep(run) == {}
    with open(run / "config.json", "r+b") as f:
        f.truncate(1 << 30)
    with pytest.raises(MixsepError, match="is not a readable mixsep config \\(larger than 1 MB, where a "
                                          "config.json holds about 1 KB\\)"):
        TrainConfig.load(run / "config.json")
    for field, value, said in (("total_steps", 10**400, "total_steps is not a count"),
                               ("step", 2**53, "step is not a count"), ("updated", 10**400, "updated is not a time")):
        (run / "status.json").write_text(json.dumps({"state": "running", "step": 1, "total_steps": 4, field: value}))
        assert R.read_status(run) == {"state": "unknown", "message": f"status.json is damaged ({said})"}
    (run / "status.json").write_text(json.dumps({"state": "finished", "step": 2**53 - 1, "total_steps": 2**53 - 1}))
    assert R.read_status(run)["state"] == "finished"  # the largest count a float holds is still one


def test_status_without_identity_is_not_trusted(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    assert R.live_status(run)["state"] == "interrupted"


def test_an_interrupted_run_says_where_a_resume_starts(small_config, tmp_path):
    """An interrupted run read "resume it from its last checkpoint" also when it had none (killed before its
    first): the pages then offered to resume what a resume would start from step 0."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": 1, "pid_start": "1", "step": 0}))
    assert R.live_status(run)["message"].endswith("it wrote no checkpoint, so a resume starts from step 0; or "
                                                  "start a new run.")
    list(T.train_steps(small_config, run))
    R.write_json(run / "status.json", {"state": "running", "pid": 1, "pid_start": "1", "step": 3})
    assert R.live_status(run)["message"].endswith("resume it from its last checkpoint (step 3) or start a new run.")


def test_stop_and_time_budget_in_one_step_say_stopped(small_config, tmp_path):
    run = tmp_path / "run"
    cfg = dataclasses.replace(small_config, max_minutes=1e-9)  # over time after the first step
    gen = T.Training(cfg, run, should_stop=lambda: True).steps()
    list(gen)
    status = R.read_status(run)
    assert (status["state"], status["message"]) == ("stopped", "stopped by request")
    list(T.train_steps(cfg, tmp_path / "timed"))
    status = R.read_status(tmp_path / "timed")
    assert (status["state"], status["message"]) == ("finished", "time budget reached at step 1 of 12 (--max-minutes 1e-09); "
                                                    "resume it with a larger time limit to train on")


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path):
    with conftest.tmpfs(tmp_path / "disk", "64m") as disk:
        yield disk


def test_disk_full_fails_clearly_and_resumes_after_space_is_freed(small_config, tmp_path, small_disk):
    run = small_disk / "run"
    cfg = dataclasses.replace(small_config, epochs=2)
    gen = T.train_steps(cfg, run)
    filler = small_disk / "filler"
    with pytest.raises(MixsepError) as caught:
        for r in gen:
            if r.step == 3 and not filler.exists():  # after the first checkpoint (step 2): fill the disk to 2 pages
                assert R.last_checkpoint(run).stat().st_size > 12 * 1024  # so the next checkpoint cannot fit
                free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
                with open(filler, "wb") as f:
                    f.write(b"\0" * (free - 8 * 1024))
    msg = str(caught.value)
    assert msg == (f"The disk holding {run / 'checkpoints'} is full, so last.pt could not be written: training stopped "
                   "at step 4; the last checkpoint (step 2) is kept: free some space and resume.")
    status = R.read_status(run)
    assert status["state"] == "failed" and status["message"] == msg
    assert temps_in(run) == []  # the partial checkpoint is gone, it does not keep the disk full
    assert R.read_checkpoint(R.last_checkpoint(run))["step"] == 2  # the previous checkpoint loads
    filler.unlink()
    rest = list(T.train_steps(cfg, run))
    assert rest[0].step == 3 and rest[-1].step == 24
    assert steps_in(run) == list(range(1, 25)) and R.read_status(run)["state"] == "finished"


def test_a_finished_run_resumed_on_a_full_disk_stays_finished_and_untouched(small_config, small_disk, capsys):
    """Its resume rewrote metrics.csv and status.json, which a full disk refused: the finished run read "failed"."""
    from mixsep.cli import main

    run = small_disk / "run"
    list(T.train_steps(small_config, run))
    before, inode = conftest.tree(run, skip=(R.LOCK,)), (run / R.METRICS).stat().st_ino
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 8 * 1024))  # room for .lock, none to spare
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 0, capsys.readouterr().err
    assert conftest.tree(run, skip=(R.LOCK,)) == before and (run / R.METRICS).stat().st_ino == inode
    assert R.read_status(run)["state"] == "finished"


def test_disk_full_before_the_first_checkpoint_says_there_is_none(small_config, small_disk):
    """A failure before the first checkpoint said 'the last checkpoint (step 0) is kept' of a file that never was."""
    run = small_disk / "run"
    filler = small_disk / "filler"
    with pytest.raises(MixsepError) as caught:
        for r in T.train_steps(small_config, run):
            if r.step == 1:  # the first checkpoint comes at step 2
                free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
                filler.write_bytes(b"\0" * free)
    msg = str(caught.value)
    assert "full" in msg and "no checkpoint was written yet" in msg and "step 0" not in msg, msg
    assert not R.last_checkpoint(run).exists() and R.read_status(run)["message"] == msg


def test_disk_full_inside_torch_save_is_a_full_disk(small_disk):
    """torch.save meets a full disk with OSError, then its zip writer's __exit__ raises RuntimeError
    ("unexpected pos") over it: a multi-MB checkpoint cut short came out as a traceback, exit 1."""
    path = small_disk / "last.pt"
    R.atomic_write(path, lambda f: torch.save({"w": torch.zeros(10)}, f))
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 1024 * 1024))  # 1 MB left for a 4 MB state
    with pytest.raises(RuntimeError) as bare:  # what torch does on its own: the OSError only as the context
        with open(small_disk / "bare.pt", "wb") as f:
            torch.save({"w": torch.zeros(1024 * 1024)}, f)
    assert isinstance(bare.value.__context__, OSError)
    (small_disk / "bare.pt").unlink()
    with pytest.raises(R.RunWriteError) as caught:
        R.atomic_write(path, lambda f: torch.save({"w": torch.zeros(1024 * 1024)}, f))
    assert caught.value.errno == errno.ENOSPC and "full" in str(caught.value) and "previous version is kept" in str(caught.value)
    assert temps_in(small_disk) == [] and torch.load(path, weights_only=True)["w"].shape == (10,)


def test_disk_full_through_the_cli_exits_2_with_one_sentence(small_config, tmp_path, small_disk):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(small_config.to_dict()))
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 8 * 1024))
    proc = cli("--config", str(cfg_file), "--run-dir", str(small_disk / "run"), "--quiet")
    out, err = proc.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: ") and "full" in last, err
    assert "Traceback" not in err
    assert R.read_status(small_disk / "run")["state"] in ("failed", "unknown")  # never a stale "running"


def test_a_disk_full_before_the_lock_is_written_is_one_sentence_and_leaves_no_folder(small_config, tmp_path,
                                                                                     small_disk):
    """Writing the lock holder's name into .lock raised ENOSPC: a traceback, exit 1, and a folder left with
    an empty .lock (in a sweep, the baseline trial failed for good)."""
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(small_config.to_dict()))
    with open(small_disk / "filler", "wb", buffering=0) as f:  # not one page left
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    proc = cli("--config", str(cfg_file), "--run-dir", str(small_disk / "run"), "--quiet")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == f"error: The disk holding {small_disk / 'run'} is full, so config.json " \
                                           "could not be written."
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    with R.RunLock(small_disk):  # the lock holds all the same; a second one says someone holds it
        with pytest.raises(MixsepError, match="is already being trained by another process"):
            R.RunLock(small_disk).acquire()


# --------------------------------------------------------------------------- odd folders and names


@pytest.mark.heavy(12)
def test_run_dir_that_is_a_file_and_unwritable_runs_folder(small_config, tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(small_config.to_dict()))
    (tmp_path / "afile").write_text("x")
    for args in (["--run-dir", str(tmp_path / "afile")], ["--runs-dir", str(tmp_path / "afile" / "runs")],
                 ["--run-dir", str(tmp_path / "afile" / "run")]):
        proc = cli("--config", str(cfg_file), *args, "--quiet")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert (tmp_path / "afile").read_text() == "x"


def test_names_with_spaces_groups_and_links(tmp_path, small_config):
    runs = tmp_path / "runs"
    for name in ("plain", "with space", "study/trial-0001"):
        (runs / name).mkdir(parents=True)
        (runs / name / "config.json").write_text(json.dumps(small_config.to_dict()))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps(small_config.to_dict()))
    (runs / "escape").symlink_to(outside)
    (runs / "alias").symlink_to(runs / "plain")
    names = sorted(p.relative_to(runs).as_posix() for p in R.run_folders(runs))
    assert names == ["plain", "study/trial-0001", "with space"]
    assert R.resolve_run(runs, "with space") == (runs / "with space").resolve()
    assert R.resolve_run(runs, "study/trial-0001") == (runs / "study" / "trial-0001").resolve()
    for bad in ("escape", "alias", "../outside", "/etc", "a/b/c", "", " lead", "x\ny"):
        with pytest.raises(MixsepError):
            R.resolve_run(runs, bad)


def test_checkpoint_whose_config_is_not_a_dict(tmp_path, data_root):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "config": ["not", "a", "dict"], "step": 1}, run / "checkpoints" / "last.pt")
    with pytest.raises(MixsepError, match="not a mixsep checkpoint"):
        T.load_run_model(run)
    proc = subprocess.run([sys.executable, "-m", "mixsep", "evaluate", str(run), "--data-root", str(data_root)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a mixsep checkpoint" in proc.stderr


@pytest.mark.parametrize("keep, kept", [(1, [4, 3, 2, 1]), (2, [4, 2]), (0, [4])])
def test_retention_keeps_the_latest_and_every_kth_epoch(small_config, tmp_path, keep, kept):
    run = tmp_path / "run"
    list(T.train_steps(dataclasses.replace(small_config, epochs=4, keep_epochs=keep), run))
    assert [p.name for p in R.list_checkpoints(run)] == ["last.pt"] + [f"epoch-{e}.pt" for e in kept]
    assert "optimizer" in R.read_checkpoint(R.last_checkpoint(run))
    assert all("optimizer" not in R.read_checkpoint(p) for p in R.list_checkpoints(run)[1:])


def test_delete_runs_inside_the_runs_folder_only_and_never_a_training_one(small_config, tmp_path):
    runs = tmp_path / "runs"
    list(T.train_steps(small_config, runs / "done"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (runs / "link").symlink_to(outside)
    assert R.disk_usage(runs / "done") > 0
    for bad in ("link", "../outside", "nope"):
        with pytest.raises(MixsepError):
            R.delete_run(runs, bad)
    assert (outside / "config.json").exists()
    gen = T.train_steps(dataclasses.replace(small_config, epochs=50), runs / "busy")
    next(gen)  # holds the lock
    with pytest.raises(MixsepError, match="training now"):
        R.delete_run(runs, "busy")
    gen.close()
    R.delete_run(runs, "busy")
    R.delete_run(runs, "done")
    assert sorted(p.name for p in runs.iterdir()) == ["link"]



def _proc_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
        return f"state {stat}, command {Path(f'/proc/{pid}/cmdline').read_bytes()!r}"
    except OSError as e:
        return f"gone ({e.strerror})"


def test_delete_refuses_a_run_whose_trainer_is_starting_and_names_its_process(small_config, tmp_path):
    """A trainer takes the run's lock once Python has loaded mixsep: until then (another dashboard's Resume, or a
    terminal's) nothing in the folder said it was about to train, and a second server's Delete took the run from
    under it. Its command line says so: --run-dir as given, relative to its folder, or abbreviated."""
    runs = tmp_path / "runs"
    list(T.train_steps(small_config, runs / "mine"))
    before = conftest.tree(runs)
    for argv, cwd in ((["--run-dir", str(runs / "mine")], tmp_path), (["--run-d=runs/mine"], tmp_path),
                      (["--run-", "mine"], runs), (["--run-dir", "~/runs/mine"], "/")):  # ~: its HOME, not ours
        child = subprocess.Popen([sys.executable, "-m", "mixsep", "train", *argv, "--quiet"], cwd=cwd,
                                 env=dict(os.environ, HOME=str(tmp_path)),
                                 start_new_session=True)  # (no signal to the suite's process group reaches it)
        os.kill(child.pid, signal.SIGSTOP)  # Python is still starting: far from mixsep's import and the lock
        try:  # stopped once back from the exec: until then the kernel may still be writing its command line
            wait_for(lambda: _proc_state(child.pid).startswith("state T"), timeout=30, what="the child to stop")
            try:
                R.delete_run(runs, "mine")
                said = f"nothing; the child: exit {child.poll()}, {_proc_state(child.pid)}"
            except MixsepError as e:
                said = str(e)
            assert re.fullmatch(rf"Run 'mine' is starting to train, in process {child.pid} \(.*-m mixsep train .*\); "
                                r"stop it before deleting it\.", said), (argv, said)
        finally:
            child.kill()
            child.wait()
    assert conftest.tree(runs) == before  # nothing deleted, nothing written
    other = subprocess.Popen([sys.executable, "-m", "mixsep", "train", "--run-dir", str(runs / "mine2")],
                             start_new_session=True)
    os.kill(other.pid, signal.SIGSTOP)  # another run's trainer is no reason
    try:
        wait_for(lambda: _proc_state(other.pid).startswith("state T"), timeout=30, what="the child to stop")
        R.delete_run(runs, "mine")
    finally:
        other.kill()
        other.wait()
    assert not (runs / "mine").exists()


def test_delete_never_takes_a_folder_with_a_training_run_or_a_running_sweep_anywhere_inside(small_config, tmp_path):
    """A run nested in another run's folder (made by hand, or by a train that was not refused then) trained on
    while Delete took the outer run and all in it; a study's folder went while its sweep ran between trials."""
    from mixsep.cli import build_parser
    from mixsep.sweep import _hold_sweep_lock, plan, write_sweep_status

    runs = tmp_path / "runs"
    list(T.train_steps(small_config, runs / "outer"))
    gen = T.train_steps(dataclasses.replace(small_config, epochs=50), runs / "outer" / "deeper" / "inner")
    next(gen)  # trains on, holding its lock
    with pytest.raises(MixsepError, match=rf"^Run 'outer/deeper/inner' is training now, in process {os.getpid()} \(.+\); "
                                          r"stop it before deleting the folder outer it is in\.$"):  # whose it is
        R.delete_run(runs, "outer")
    gen.close()
    os.symlink(runs / "other", runs / "outer" / "link")  # a link to a run training elsewhere: rmtree takes the link
    gen = T.train_steps(dataclasses.replace(small_config, epochs=50), runs / "other")
    next(gen)
    R.delete_run(runs, "outer")
    assert (runs / "other" / "config.json").is_file()
    gen.close()
    R.delete_run(runs, "other")

    p = plan(build_parser().parse_args(["sweep", "--study", "demo", "--runs-dir", str(runs),
                                        "--data-root", small_config.data_root, "--val-size", "16", "--batch-size", "8"]))
    list(T.train_steps(small_config, p.folder / "trial-0000"))  # its first trial, done
    lock = _hold_sweep_lock(p.folder)  # as a sweep command holds it while it runs
    write_sweep_status(p, "running")  # this process is the sweep: alive, on this machine, between two trials
    with pytest.raises(MixsepError, match=r"^Sweep 'demo' is running in 'demo'; stop it on the Sweep page"):
        R.delete_run(runs, "demo")
    write_sweep_status(p, "stopped")
    os.close(lock)
    R.delete_run(runs, "demo")
    assert list(runs.iterdir()) == []



def test_a_run_dir_inside_a_run_holding_runs_or_a_studys_own_is_refused_untouched(small_config, tmp_path, capsys):
    """`train --run-dir` inside another run's folder trained a run that no page lists and that deleting the outer run
    took with it; into a study's folder it trained beside sweep.json, and the study could no longer resume or
    name its best trial; into the runs folder itself it made every run a run inside a run."""
    from mixsep.cli import build_parser, main
    from mixsep.sweep import plan, write_sweep_status

    run = _finished_run(small_config, tmp_path)
    new = ["--data-root", small_config.data_root, "--model", small_config.model, "--batch-size", "8", "--no-pretrained",
           "--quiet"]
    p = plan(build_parser().parse_args(["sweep", "--study", "demo", "--runs-dir", str(tmp_path / "runs"),
                                        "--data-root", small_config.data_root, "--val-size", "16", "--batch-size", "8"]))
    list(T.train_steps(small_config, p.folder / "trial-0000"))  # its first trial
    write_sweep_status(p, "finished")
    deep = tmp_path / "group" / "g" / "b"  # a run three levels down is held too
    list(T.train_steps(small_config, deep))
    shutil.copytree(deep, tmp_path / "far" / "a" / "b" / "c" / "d")  # and five (QA: the look stopped at three)
    before = conftest.tree(tmp_path)
    for run_dir, says in (
            (run / "inner", f"{run / 'inner'} is inside the run folder {run}, and a run holds no other run (the "
                            "dashboard would not list it, and deleting that run would take this one); name a folder "
                            "outside it."),
            (tmp_path / "group", f"{tmp_path / 'group'} holds the run or study g/b, and a run folder holds no other "
                                 "run (is it the runs folder?); name a new folder, or a run's own folder to resume it."),
            (tmp_path / "far", f"{tmp_path / 'far'} holds the run or study a/b/c/d, and a run folder holds no other "
                               "run (is it the runs folder?); name a new folder, or a run's own folder to resume it."),
            (p.folder / "trial-0001", f"{p.folder / 'trial-0001'} is inside the folder of the sweep study 'demo', where "
                                      "the sweep makes its trials' folders (a run there would stop the study from "
                                      "resuming); name a folder outside it, or a trial's own folder to resume that "
                                      "trial."),
            (tmp_path, f"{tmp_path} holds the run or study run, and a run folder holds no other run (is it the runs "
                       "folder?); name a new folder, or a run's own folder to resume it."),
            (p.folder, f"{p.folder} is the folder of the sweep study 'demo', which keeps its trials in it (a run there "
                       "would stop the study from resuming); name another folder, or one of its trial folders to "
                       "resume that trial.")):
        assert main(["train", "--run-dir", str(run_dir), *new]) == 2
        assert capsys.readouterr().err == f"error: {says}\n"
        assert conftest.tree(tmp_path) == before
    # a trial's own folder still resumes by hand; a project folder's own config.json and status.json are no run
    assert main(["train", "--run-dir", str(p.folder / "trial-0000"), "--quiet"]) == 0
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"name": "mine"}')
    (project / "status.json").write_text("{}")
    assert main(["train", "--run-dir", str(project / "runs" / "new"), *new]) == 0
    assert main(["train", "--run-dir", str(project / "runs" / "new"), "--quiet"]) == 0  # and resumes


def test_of_two_trainers_started_at_once_in_a_folder_and_inside_it_one_is_refused(small_config, tmp_path):
    """`train --run-dir A` and `train --run-dir A/B` started together both passed the nesting look (neither folder
    was a run yet: the look came before either took its lock) and both trained, a run inside a run. Each trainer,
    frozen once it holds its lock and before it has written a thing, is the race's widest window; the other,
    started then, is refused in one sentence and leaves nothing it made."""
    args = ["--data-root", small_config.data_root, "--model", small_config.model, "--batch-size", "8",
            "--no-pretrained", "--device", "cpu", "--quiet"]

    def frozen_holding_its_lock(run: Path):
        proc = cli("--run-dir", str(run), *args)
        conftest.frozen_when(proc, lambda: R.lock_holder(run) is not None and not R.is_mixsep_run(run),
                             what="its lock taken, nothing written")
        return proc

    def outside(run: Path, files: dict) -> dict:
        return {name: data for name, data in files.items() if not (tmp_path / name).is_relative_to(run)}

    for first, second, says in (
            ("a", "a/b", "{second} is inside the run folder {first}, and a run holds no other run (the dashboard "
                         "would not list it, and deleting that run would take this one); name a folder outside it."),
            ("c/d", "c", "{second} holds the run or study d, and a run folder holds no other run (is it the runs "
                         "folder?); name a new folder, or a run's own folder to resume it.")):
        first, second = tmp_path / first, tmp_path / second
        proc = frozen_holding_its_lock(first)
        before = conftest.tree(tmp_path, skip=(R.LOCK,))
        try:
            late = conftest.warm_run(["train", "--run-dir", str(second), *args], timeout=120)
        finally:
            proc.send_signal(signal.SIGCONT)
        assert late.returncode == 2, late.stderr
        assert late.stderr == "error: " + says.format(first=first, second=second) + "\n"
        proc.communicate(timeout=120)
        assert proc.returncode == 0 and R.read_status(first)["state"] == "finished"
        # the refused one's .lock and the folder it made are gone: the winner's run is all that changed
        assert not (second / R.LOCK).exists() and not (tmp_path / "a" / "b").exists()
        assert outside(first, conftest.tree(tmp_path, skip=(R.LOCK,))) == outside(first, before)


# --------------------------------------------------------------------------- damaged run folders, refused before anything changes


def _finished_run(small_config, tmp_path) -> Path:
    run = tmp_path / "run"
    list(T.train_steps(small_config, run))
    return run


def test_a_config_json_edited_after_the_run_began_is_refused_not_trained_with(small_config, tmp_path, capsys):
    """A resume took config.json's hand-edited lr and seed mid-run without a word, then wrote them into last.pt
    as if the whole run had trained with them; an edited epochs was blamed on the data root."""
    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    saved = json.loads((run / R.CONFIG).read_text())
    for edit, says in (({"lr": 0.5, "seed": 7}, f"lr 0.5 (its checkpoint trained with {saved['lr']}), seed 7 (its "
                                                f"checkpoint trained with {saved['seed']})"),
                       ({"epochs": saved["epochs"] + 2}, f"epochs {saved['epochs'] + 2} (its checkpoint trained with "
                                                         f"{saved['epochs']})")):
        (run / R.CONFIG).write_text(json.dumps({**saved, **edit}))
        before = conftest.tree(run)
        assert main(["train", "--run-dir", str(run), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {run / R.CONFIG} says {says}: it was edited after the run began, so the run is left " \
                      "as it was; put those values back to resume it, or start a new run with the new ones.\n", err
        assert conftest.tree(run) == before
    # a setting given twice (the dashboard's Resume reads the run's own file as --config): JSON took the last
    twice = json.dumps({**saved, "max_minutes": 1.0})[:-1] + ', "max_minutes": 0.0}'
    (run / R.CONFIG).write_text(twice)
    before = conftest.tree(run)
    assert main(["train", "--config", str(run / R.CONFIG), "--run-dir", str(run), "--quiet"]) == 2
    assert capsys.readouterr().err == f"error: {run / R.CONFIG} gives 'max_minutes' more than once; keep one of " \
                                      "each (JSON would silently take the last).\n"
    assert conftest.tree(run) == before
    (run / R.CONFIG).write_text(json.dumps({**saved, "checkpoint_every": 1}))  # a setting a resume may change
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 0


def test_resume_without_config_json_keeps_the_checkpoints_settings(small_config, tmp_path, capsys):
    from mixsep.cli import main

    run = _finished_run(dataclasses.replace(small_config, epochs=2), tmp_path)
    (run / R.CONFIG).unlink()
    before = conftest.tree(run, skip=(R.LOCK,))
    # flags that would retrain it as another run: a lost config.json once let them win over the checkpoint's;
    # they are refused against the checkpoint's settings as against config.json's, and nothing is written
    assert main(["train", "--run-dir", str(run), "--lr", "0.5", "--batch-size", "4", "--epochs", "3", "--quiet"]) == 2
    assert "--lr 0.5 (the run's: 0.001)" in capsys.readouterr().err
    assert conftest.tree(run, skip=(R.LOCK,)) == before
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 0
    assert "with the config saved in its checkpoint (config.json is missing)" in capsys.readouterr().err
    saved = TrainConfig.load(run / R.CONFIG)
    assert (saved.lr, saved.batch_size, saved.epochs) == (small_config.lr, small_config.batch_size, 2)
    assert conftest.tree(run, skip=(R.LOCK,)) == before | {R.CONFIG: (run / R.CONFIG).read_bytes(), R.STATUS: (run / R.STATUS).read_bytes()}


@pytest.mark.parametrize("name,make,match", [
    (R.CHECKPOINTS, "file", "checkpoints should be a folder but is a file"),
    (R.METRICS, "folder", "metrics.csv should be a file but is a folder"),
    (R.CONFIG, "dangling", "config.json is a link to nothing"),
    (f"{R.CHECKPOINTS}/{R.LAST}", "folder", "last.pt should be a file but is a folder"),
    (R.LOCK, "folder", r"\.lock cannot be opened \(Is a directory\)"),
    (R.STOP, "folder", "STOP should be a file but is a folder"),  # a traceback, and a finished run read "failed"
    # a FIFO: the resume waited for ever, and a Ctrl-C or SIGTERM did not end it
    (R.STATUS, "fifo", r"status\.json should be a file but is not a regular file \(a FIFO, say\); move it away"),
    (R.METRICS, "fifo", r"metrics\.csv should be a file but is not a regular file"),
    (R.CONFIG, "fifo", r"config\.json should be a file but is not a regular file"),
])
def test_a_run_folder_holding_the_wrong_kinds_of_things_is_refused_untouched(small_config, tmp_path, capsys,
                                                                           name, make, match):
    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    path = run / name
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    {"file": lambda: path.write_text("x"), "folder": path.mkdir, "dangling": lambda: path.symlink_to(tmp_path / "gone"),
     "loop": lambda: path.symlink_to(path), "fifo": lambda: os.mkfifo(path), "link": lambda: path.symlink_to(mine)}[make]()
    before = conftest.tree(run, skip=(R.LOCK,))
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err
    assert mine.read_text() == "mine"
    assert conftest.tree(run, skip=(R.LOCK,)) == before  # a file named checkpoints once sent it back to step 0, cutting metrics.csv


@pytest.mark.parametrize("make", ["link", "dangling", "loop"])
def test_a_lock_file_that_is_a_link_is_replaced_by_the_runs_own_and_never_written_through(small_config, tmp_path,
                                                                                          capsys, make):
    """A run copied with `cp -rs` holds a .lock that is a link to the first run's, and the copy was refused
    (".lock cannot be opened (a link...)") though the README says such a copy trains. The link is replaced by the
    run's own lock file; what it leads to is never written (a user's file: the trainer's line went over it once);
    a command refused after taking the lock puts the link back."""
    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    path = run / R.LOCK
    path.unlink()
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    {"link": lambda: path.symlink_to(mine), "dangling": lambda: path.symlink_to(tmp_path / "gone"),
     "loop": lambda: path.symlink_to(path)}[make]()
    target = os.readlink(path)
    before = conftest.tree(run, skip=(R.LOCK,))
    assert main(["train", "--run-dir", str(run), "--lr", "0.5", "--quiet"]) == 2  # a flag that would change the run
    assert "--lr" in capsys.readouterr().err
    assert path.is_symlink() and os.readlink(path) == target and conftest.tree(run, skip=(R.LOCK,)) == before
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 0, capsys.readouterr().err
    assert path.is_file() and not path.is_symlink() and mine.read_text() == "mine"
    assert not (tmp_path / "gone").exists()


def test_a_run_copied_as_links_trains_into_its_own_files_and_never_writes_through_them(small_config, tmp_path,
                                                                                       capsys):
    """A copy made with `cp -rs` holds links to the first run's files. Resumed, its rows were appended
    through the metrics.csv link to the first run's file; and a checkpoints folder that is a link to another
    run's had that run's last.pt replaced. A checkpoints folder linked elsewhere (another disk) is followed."""
    import shutil

    from mixsep.cli import main

    a = tmp_path / "a"
    cfg = dataclasses.replace(small_config, epochs=2)
    for r in T.train_steps(cfg, a):
        if r.step == 4:
            R.request_stop(a)  # stopped at step 4, with last.pt there
    before = conftest.tree(a)
    total = R.read_status(a)["total_steps"]

    b = tmp_path / "b"
    subprocess.run(["cp", "-rs", str(a), str(b)], check=True)
    assert (b / R.METRICS).is_symlink() and (b / R.CHECKPOINTS / R.LAST).is_symlink()
    assert (b / R.LOCK).is_symlink()  # a's lock, kept after a's trainer ended: b's replaces it (tested above)
    assert main(["train", "--run-dir", str(b), "--quiet"]) == 0
    capsys.readouterr()
    assert conftest.tree(a) == before  # not a row, a checkpoint or the lock's line of b's reached a
    assert not (b / R.METRICS).is_symlink() and steps_in(b) == list(range(1, total + 1))
    assert R.read_checkpoint(R.last_checkpoint(b))["step"] == total

    c = tmp_path / "c"  # its checkpoints folder: a link to a's
    shutil.copytree(a, c, ignore=shutil.ignore_patterns(R.CHECKPOINTS))
    (c / R.CHECKPOINTS).symlink_to(a / R.CHECKPOINTS)
    mine = conftest.tree(c)
    assert main(["train", "--run-dir", str(c), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {c / R.CHECKPOINTS} is a link to {a / R.CHECKPOINTS}, inside another run: training would "
                   "write over that run's files; make it a folder of this run's own (copy the checkpoints into it to "
                   "resume from them).\n"), err
    assert conftest.tree(a) == before and conftest.tree(c) == mine
    (c / R.CHECKPOINTS).unlink()  # to the other run's folder itself: its last.pt would land beside its config.json
    (c / R.CHECKPOINTS).symlink_to(a)
    assert main(["train", "--run-dir", str(c), "--quiet"]) == 2
    assert f"is a link to {a}, inside another run" in capsys.readouterr().err
    assert conftest.tree(a) == before and conftest.tree(c) == mine

    (c / R.CHECKPOINTS).unlink()  # checkpoints on another disk: a plain folder outside any run, followed
    disk = tmp_path / "disk" / "c-checkpoints"
    shutil.copytree(a / R.CHECKPOINTS, disk)
    (c / R.CHECKPOINTS).symlink_to(disk)
    assert main(["train", "--run-dir", str(c), "--quiet"]) == 0, capsys.readouterr().err
    assert R.read_checkpoint(disk / R.LAST)["step"] == total and conftest.tree(a) == before


def test_readers_of_a_run_folder_do_not_wait_on_a_fifo(small_config, tmp_path):
    """The dashboard lists every run's status.json and follows its metrics.csv: a FIFO there blocked the read."""
    import threading

    run = _finished_run(small_config, tmp_path)
    for name in (R.STATUS, R.METRICS):
        (run / name).unlink()
        os.mkfifo(run / name)
    got = {}
    reader = threading.Thread(target=lambda: got.update(
        status=R.read_status(run), rows=R._csv_rows(run / R.METRICS), last=R.last_logged_step(run),
        tail=R.MetricsTail(run / R.METRICS).poll()), daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "a reader waits on the FIFO"
    assert got["status"]["state"] == "unknown" and got["rows"] == [] and got["last"] == 0 and got["tail"].rows == []


@pytest.mark.parametrize("make", ["devzero", "fifo", "folder", "dangling"])
def test_a_last_checkpoint_that_is_not_a_file_is_named_by_every_reader(small_config, tmp_path, capsys, make):
    """Alone in its folder, a last.pt that is a link to /dev/zero, a FIFO, a folder or a link to nothing was
    "holds no checkpoint: its checkpoints were removed, or never written" to evaluate, grid and separate."""
    from PIL import Image

    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    for p in R.list_checkpoints(run):
        p.unlink()
    last = R.last_checkpoint(run)
    {"devzero": lambda: last.symlink_to("/dev/zero"), "fifo": lambda: os.mkfifo(last), "folder": last.mkdir,
     "dangling": lambda: last.symlink_to(tmp_path / "gone.pt")}[make]()
    png = tmp_path / "mix.png"
    Image.new("RGB", (32, 32), (90, 60, 30)).save(png)
    for argv in (["evaluate", str(run)], ["grid", str(run), "--out", str(tmp_path / "g.png")],
                 ["separate", str(run), str(png), "--out", str(tmp_path / "sep")]):
        assert main(argv) == 2
        assert capsys.readouterr().err == (f"error: {last} is not a checkpoint file (a FIFO, a device, a folder or a "
                                           "link to nothing); move it away.\n"), argv


def test_metrics_rows_whose_step_is_not_a_number_are_skipped(small_config, tmp_path):
    run = _finished_run(small_config, tmp_path)
    lines = (run / R.METRICS).read_text().splitlines(keepends=True)
    good = R._csv_rows(run / R.METRICS)
    for bad in ("inf", "nan", "1e400", "-inf"):
        (run / R.METRICS).write_text("".join(lines[:3] + [f"{bad},0,0.1,0.1,0.2,0.001,1,1\n"] + lines[3:]))
        assert R._csv_rows(run / R.METRICS) == good
        list(T.train_steps(small_config, run))  # a resume reads them too (OverflowError before)


@pytest.mark.parametrize("change,match", [
    (lambda s: s["config"].update(model=["tiny"]), "its config names no model"),
    (lambda s: s.update(model=[1, 2]), "its weights are not a dict of tensors"),
    (lambda s: s.update(step="abc"), "its step is 'abc', not a whole number"),
    (lambda s: s.update(optimizer={}), "its optimizer state is not Adam's"),
    (lambda s: s["config"].update(batch_size="x"), "holds damaged saved settings (Setting 'batch_size' must be a whole"),
    (lambda s: s["config"].update(lr=True), "holds damaged saved settings (Setting 'lr'"),
    (lambda s: s["config"].update(lr=10 ** 400), "holds damaged saved settings (Setting 'lr' is a whole number of"),
])
def test_hand_made_checkpoints_get_one_sentence(small_config, tmp_path, capsys, change, match):
    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    state = torch.load(R.last_checkpoint(run), weights_only=True)
    change(state)
    torch.save(state, R.last_checkpoint(run))
    with pytest.raises(MixsepError, match=re.escape(match)):
        R.read_checkpoint(R.last_checkpoint(run))
    for argv in (["evaluate", str(run), "--data-root", small_config.data_root], ["train", "--run-dir", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()  # train says first that it resumes with the saved config
        assert err[-1].startswith("error: ") and match in err[-1] and sum(line.startswith("error") for line in err) == 1


def test_a_damaged_last_checkpoint_leaves_a_finished_run_as_it_was_and_names_one_that_reads(small_config, tmp_path,
                                                                                             capsys):
    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    last = R.last_checkpoint(run)
    last.write_bytes(last.read_bytes()[:1000])  # cut short, as an interrupted copy leaves it
    before = conftest.tree(run)  # .lock included: a refusal puts its holder line back
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    epoch = R.epoch_checkpoint(run, small_config.epochs)
    assert err.startswith(f"error: {last} is not a readable mixsep checkpoint") and "left as it was" in err, err
    assert f"its newest readable checkpoint is {epoch} (step " in err and "evaluate --checkpoint" in err
    assert conftest.tree(run) == before and R.read_status(run)["state"] == "finished"  # it read "failed" before
    assert main(["evaluate", str(run), "--data-root", small_config.data_root, "--samples", "4"]) == 2
    steps = R.read_status(run)["step"]  # the epoch checkpoint is the run's last step: it ended at an epoch's end
    assert f"its newest readable checkpoint is {epoch} (step {steps}), which --checkpoint reads." \
        in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data-root", small_config.data_root, "--samples", "4",
                 "--checkpoint", str(epoch)]) == 0
    # a run copied without its hidden files has no .lock: a refusal leaves none (it left an empty one)
    (run / R.LOCK).unlink()
    before = conftest.tree(run)
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 2
    assert "is not a readable mixsep checkpoint" in capsys.readouterr().err
    assert conftest.tree(run) == before and not (run / R.LOCK).exists()



@pytest.mark.parametrize("damage,says", [
    (lambda last: last.write_bytes(last.read_bytes()[:1000]), "is not a readable mixsep checkpoint"),
    (lambda last: last.unlink(), "is missing, though the run holds epoch checkpoints (a resume would train it again"),
    (lambda last: (last.unlink(), os.mkfifo(last)), "is not a checkpoint file"),
    (lambda last: torch.save({**torch.load(last, weights_only=True), "model": {}}, last), "does not fit the 'tiny'"),
    (lambda last: torch.save({**(s := torch.load(last, weights_only=True)), "config": {**s["config"], "model": "unet"}},
                             last), "holds a 'unet' model, not the run's 'tiny'"),
    (lambda last: torch.save({**(s := torch.load(last, weights_only=True)), "optimizer": {**s["optimizer"], "state": {
        **s["optimizer"]["state"], 0: {**s["optimizer"]["state"][0], "exp_avg": torch.zeros(7, 7, 7)}}}}, last),
     "optimizer state does not fit the 'tiny' model"),
])
def test_a_resume_refused_for_its_checkpoint_writes_nothing_even_with_flags_it_may_change(small_config, tmp_path,
                                                                                         capsys, damage, says):
    """--data-root and --max-minutes were saved to config.json before last.pt was read; a missing last.pt (or a
    FIFO there) trained a finished run again from step 0 over its metrics; a last.pt of another model read "failed",
    and so did Adam moments of the wrong shape, at the first step."""
    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    damage(R.last_checkpoint(run))
    before = conftest.tree(run)
    assert main(["train", "--run-dir", str(run), "--quiet", "--data-root", small_config.data_root,
                 "--max-minutes", "5"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert says in err[-1] and "so the run cannot resume and is left as it was" in err[-1], err
    assert ".," not in err[-1] and "its newest readable checkpoint is" in err[-1]
    assert conftest.tree(run) == before and R.read_status(run)["state"] == "finished"


def test_a_finished_run_whose_data_is_gone_stays_finished(small_config, tmp_path, capsys):
    """Its resume loads the data before it finds nothing left to train: that refusal read "failed"."""
    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    before = conftest.tree(run)
    Path(small_config.data_root).rename(tmp_path / "elsewhere")
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 2
    assert "holds no training data either; resume it with --data-root DIR" in capsys.readouterr().err  # nor ./data
    assert conftest.tree(run) == before and R.read_status(run)["state"] == "finished"


def test_a_runs_checkpoints_folder_as_run_dir_names_the_run(small_config, tmp_path, capsys):
    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    before = conftest.tree(run)
    assert main(["train", "--run-dir", str(run / R.CHECKPOINTS), "--quiet"]) == 2  # it trained a new run in there
    assert f"give --run-dir {run} to resume it" in capsys.readouterr().err
    assert conftest.tree(run) == before
    (run / R.CONFIG).unlink()  # a run without config.json, named through a link or a folder inside
    (tmp_path / "link").symlink_to(run / R.CHECKPOINTS)
    before = conftest.tree(run)
    for given in (tmp_path / "link", run / R.CHECKPOINTS / "sub"):
        assert main(["train", "--run-dir", str(given), "--quiet"]) == 2
        assert f"is inside the checkpoints folder of the run {run}; give --run-dir {run}" in capsys.readouterr().err
    assert conftest.tree(run) == before


def test_a_resume_on_data_of_another_size_is_refused(small_config, tmp_path, capsys):
    """--data-root on a resume may move a run's data, not change it: a smaller set finished it at once."""
    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    before = conftest.tree(run)
    other = conftest.make_data_root(tmp_path / "other", n_train=64)
    assert main(["train", "--run-dir", str(run), "--quiet", "--data-root", str(other)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert f"and the data under {other} make " in err and "so the run cannot resume on them and is left as it was" in err
    assert conftest.tree(run) == before


def test_a_checkpoint_folder_named_where_a_file_or_run_is_meant(small_config, tmp_path, capsys):
    from mixsep.cli import main

    run = _finished_run(small_config, tmp_path)
    assert main(["evaluate", str(run), "--checkpoint", str(run), "--data-root", small_config.data_root]) == 2
    assert "is a folder; name a .pt file" in capsys.readouterr().err
    model, _, info = T.load_run_model(run / R.CHECKPOINTS)  # RUN/checkpoints: the run it belongs to
    assert info["path"] == str(R.last_checkpoint(run))


def test_a_failed_write_advises_what_fits_the_failure(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.json").mkdir()  # a folder where the file goes: not a full disk
    with pytest.raises(R.RunWriteError) as e:
        R.write_json(folder / "x.json", {})
    assert "previous version is kept" not in str(e.value) and e.value.advice == "resume once the cause is mended"


# --------------------------------------------------------------------------- secrets on a command line


@pytest.mark.parametrize("argv, masked", [
    (["sweep", "--storage", "postgresql://u:pw@h/db", "--study", "s"], ["sweep", "--storage", "***", "--study", "s"]),
    (["--storage=sqlite:///s.db"], ["--storage=***"]),
    (["postgresql://u:p@ss@h:5432/db"], ["postgresql://u:***@h:5432/db"]),  # an '@' in the password
    (["postgresql://u:p@ss:w/rd@h/db"], ["postgresql://u:***@h/db"]),  # and a '/' after it
    (["postgresql://u@h/db", "http://h:8080/a"], ["postgresql://u@h/db", "http://h:8080/a"]),  # no password
    # 'h:8080/a@b' cannot be told from a user 'h' whose password '8080/a' holds a '/': masked, to be safe
    (["http://h:8080/a@b"], ["http://h:***@b"]),
    (["host=h password=pw dbname=d"], ["host=h password=*** dbname=d"]),
    (["host=h PASSWORD = 'p w\\' x' dbname=d"], ["host=h PASSWORD = *** dbname=d"]),
    (['password="p w"', "db?password=pw&sslmode=require"], ["password=***", "db?password=***&sslmode=require"]),
])
def test_mask_secrets_hides_the_storage_url_passwords_and_password_keywords(argv, masked):
    assert R.mask_secrets(argv) == masked


def test_a_lock_held_by_a_command_with_a_password_names_it_without_the_password(tmp_path):
    """`sweep --storage postgresql://user:password@...` wrote the password into every trial's .lock,
    and a second trainer's refusal quoted it."""
    run = tmp_path / "run"
    run.mkdir()
    url = "postgresql://postgres:s3cr3tPW@127.0.0.1:55432/mixsep"
    hold = "import sys, time; from mixsep.run import RunLock; RunLock(sys.argv[1]).acquire(); " \
           "print('held', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run), "--storage", url, f"--other={url}",
                               "password='pw two'"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(MixsepError) as refused:
            R.RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = (run / R.LOCK).read_text()  # what the folder keeps after its trainer is gone
    for text in (str(refused.value), lock):
        assert "s3cr3tPW" not in text and "pw two" not in text, text
    assert f"already being trained by process {holder.pid} (" in str(refused.value)
    assert "--storage *** --other=postgresql://postgres:***@127.0.0.1:55432/mixsep password=***" in str(refused.value)
    assert json.loads(lock)["pid"] == holder.pid


def test_a_lock_an_older_mixsep_wrote_is_quoted_without_its_password(tmp_path):
    old = {"pid": 4242, "cmd": "mixsep sweep --storage postgresql://u:s3cr3t@h/db"}  # as typed, password and all
    (tmp_path / R.LOCK).write_text(json.dumps(old))
    hold = "import fcntl, os, sys, time; fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX); " \
           "print('held', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / R.LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(MixsepError, match=re.escape("by process 4242 (mixsep sweep --storage ***);")):
            R.RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_stray_file_name_with_unicode_digits_is_ignored_not_a_traceback(tmp_path):
    """str.isdigit() takes '²' and '①', int() does not: one 'epoch-².pt' took down every page and command."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("epoch-2.pt", "epoch-10.pt", "epoch-².pt", "epoch-①.pt", "epoch-٣.pt", "last.pt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    assert [p.name for p in R.list_checkpoints(run)] == ["last.pt", "epoch-10.pt", "epoch-2.pt"]
    (run / "metrics.csv").write_text(",".join(R.METRIC_FIELDS) + "\n7" + ",0" * (len(R.METRIC_FIELDS) - 1) + "\n²,x\n")
    assert R.last_logged_step(run) == 7


def test_a_file_swapped_for_a_fifo_while_it_is_read_never_blocks_the_reader(tmp_path):
    """The readers checked that status.json was a regular file, then opened it by its name: a FIFO put there
    between the two blocked the reader (the dashboard's run list) until a writer came, for ever."""
    import threading

    run = tmp_path / "run"
    run.mkdir()
    status = run / R.STATUS
    good = json.dumps({"state": "running", "step": 1, "total_steps": 2, "pid": 1}).encode()
    status.write_bytes(good)
    stop, blocked = threading.Event(), []

    def swap():  # a regular file and a FIFO take turns under the name, each put there by a rename
        while not stop.is_set():
            os.mkfifo(run / "f.tmp")
            os.replace(run / "f.tmp", status)
            (run / "r.tmp").write_bytes(good)
            os.replace(run / "r.tmp", status)

    def read():
        while not stop.is_set():
            R.read_status(run)
            R.read_metric_frame(status)

    swapper, reader = threading.Thread(target=swap, daemon=True), threading.Thread(target=read, daemon=True)
    swapper.start()
    reader.start()
    time.sleep(3)
    stop.set()
    swapper.join(10)
    reader.join(5)  # the round it was in
    if reader.is_alive():  # stuck opening a FIFO: give it a writer so that the thread ends
        blocked.append(1)
        deadline = time.monotonic() + 10
        while reader.is_alive() and time.monotonic() < deadline:
            for p in run.iterdir():
                with contextlib.suppress(OSError):
                    os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
            time.sleep(0.01)
    assert not blocked, "a reader opened a FIFO put in place of the file it had checked"
