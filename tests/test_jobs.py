"""The dashboard's worker registry: one child at a time, stop, failures, reloads and restarts.

Most tests drive a fake trainer (a few lines of Python that speak the run-folder
protocol and start in milliseconds); two drive the real `python -m mixsep train`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import conftest
import pytest

from mixsep import MixsepError, TrainConfig
from mixsep.jobs import JobRegistry
from mixsep.run import last_logged_step, list_checkpoints, live_status, read_status
from mixsep.runs import read_metrics
from mixsep.train import train_steps

FAKE_TRAINER = r'''
import json, os, signal, sys, time
from pathlib import Path
run = Path(sys.argv[sys.argv.index("--run-dir") + 1])
mode = os.environ.get("FAKE_MODE", "train")
start = open("/proc/self/stat").read().rsplit(") ", 1)[1].split()[19]  # the identity mixsep.run records
def status(state, msg="", step=0):
    (run / "s.tmp").write_text(json.dumps({"state": state, "message": msg, "pid": os.getpid(), "pid_start": start,
                                           "step": step, "total_steps": 1000}))
    os.replace(run / "s.tmp", run / "status.json")
if mode != "refused":  # as the real trainer does: it holds the run's lock for its life (a page signals only that)
    import fcntl
    lock = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
if mode == "error":  # as the real CLI does: the sentence goes into status.json, and to stderr for people
    status("failed", "No MNIST train data under /nowhere: expected files. Copy the files there.")
    print("error: No MNIST train data under /nowhere: expected files. Copy the files there.", flush=True)
    sys.exit(2)
if mode == "refused":  # as the real CLI refuses a run before it opens (and locks) its folder: no status.json
    print("error: The run was refused before it began: a sentence saying why.", flush=True)
    sys.exit(2)
if mode == "crash":
    print("Traceback (most recent call last):\nSegfault-ish", flush=True)
    sys.exit(1)
if mode == "nonfinite":
    status("failed", "The loss became non-finite at step 3 (lr=5); training stopped. "
                     "Lower the learning rate and start again.", 2)
    print("error: The loss became non-finite at step 3", flush=True)
    sys.exit(2)
if mode == "slowstart":  # like importing torch: SIGTERM's default action still applies
    time.sleep(30)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
status("running")
with open(run / "metrics.csv", "w") as f:
    f.write("step,epoch,loss_mnist,loss_cifar,loss,lr,samples_per_s,elapsed_s\n")
    for step in range(1, 1001):
        f.write(f"{step},0,0.1,0.2,0.3,0.001,100,{step * 0.02}\n"); f.flush()
        if stop or (run / "STOP").exists():
            if mode == "slowstop":  # a long last step
                time.sleep(3)
            status("stopped", "stopped by request", step); sys.exit(0)
        time.sleep(0.02)
status("finished", "", 1000)
'''


@pytest.fixture
def fake_python(tmp_path) -> str:
    """An 'interpreter' that runs the fake trainer whatever module it is asked for."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    exe = tmp_path / "fake-python"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


@pytest.fixture
def jobs_of():
    """Registries made by a test; their children are stopped or killed at the end."""
    made = []

    def make(runs_dir, **kw):
        made.append(JobRegistry(runs_dir, **kw))
        return made[-1]
    yield make
    for reg in made:
        if reg._alive():
            os.kill(reg._pid, signal.SIGKILL)
            if reg._proc is not None:
                reg._proc.wait(10)


def fake_env(mode: str) -> dict:
    return dict(os.environ, FAKE_MODE=mode)


from conftest import wait_for  # noqa: E402


def test_two_starts_at_once_one_wins(tmp_path, tiny_config, fake_python, jobs_of):
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    results, barrier = [], threading.Barrier(2)

    def start():
        barrier.wait()
        try:
            results.append(jobs.start(tiny_config))
        except MixsepError as e:
            results.append(e)
    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if isinstance(r, MixsepError)]
    assert len(errors) == 1 and "already in progress" in str(errors[0]) and "one run at a time" in str(errors[0])
    # the refused start made no folder
    assert len([p for p in (tmp_path / "runs").iterdir() if p.is_dir()]) == 1
    with pytest.raises(MixsepError, match="already in progress"):  # and a third start, later, is refused too
        jobs.start(tiny_config)


def test_stop_then_start_again(tmp_path, tiny_config, fake_python, jobs_of):
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    assert jobs.poll().state == "idle" and jobs.stop() is False
    run = jobs.start(tiny_config)
    assert TrainConfig.load(run / "config.json").data_root == str(Path(tiny_config.data_root).resolve())
    wait_for(lambda: len(read_metrics(run)) >= 3, what="metrics rows")
    assert jobs.poll().state == "running" and jobs.poll().alive
    assert jobs.stop() is True
    state = jobs.wait(10)
    assert state.state == "stopped" and not state.alive and 3 <= state.step < 1000
    # a new run may start once the first has ended
    jobs.start(tiny_config)


def test_worker_that_fails_says_why(tmp_path, tiny_config, fake_python, jobs_of):
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("error"))
    run = jobs.start(tiny_config)
    state = jobs.wait(10)
    assert state.state == "failed" and state.message.startswith("No MNIST train data")
    # refused before its first step: the folder made for it goes, as train's does, and the sentence stays
    assert state.removed and not run.exists() and not list((tmp_path / "runs").iterdir())
    assert jobs.poll() == state and jobs.view(run) == state and jobs.running() is None


def test_worker_crash_and_nonfinite(tmp_path, tiny_config, fake_python, jobs_of):
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("crash"))
    run = jobs.start(tiny_config)
    state = jobs.wait(10)
    assert state.state == "failed" and "exited with code 1" in state.message and "worker.log" in state.message
    assert "Traceback" in (run / "worker.log").read_text()

    jobs = jobs_of(tmp_path / "runs2", python=fake_python, env=fake_env("nonfinite"))
    run = jobs.start(tiny_config)
    state = jobs.wait(10)
    assert state.state == "failed" and "Lower the learning rate" in state.message  # the trainer's own words kept
    assert read_status(run)["state"] == "failed" and not state.removed  # in the folder, the source of truth


def test_stop_while_starting(tmp_path, tiny_config, fake_python, jobs_of):
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("slowstart"))
    jobs.start(tiny_config)
    assert jobs.poll().state == "starting"
    time.sleep(0.3)
    assert jobs.stop()
    state = jobs.wait(10)
    assert state.state == "stopped" and "before training began" in state.message


def test_reload_and_server_restart_find_the_running_job(tmp_path, tiny_config, fake_python, jobs_of):
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    run = jobs.start(tiny_config)
    wait_for(lambda: read_status(run).get("state") == "running", what="running status")
    # a page reload reads the same registry: same run, later step
    first = jobs.poll().step
    wait_for(lambda: jobs.poll().step > first, what="progress")
    # a restarted server has a new registry: it adopts the child, refuses a second start, and can stop it
    again = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    assert again.running().run_dir == run
    with pytest.raises(MixsepError, match="already in progress"):
        again.start(tiny_config)
    assert again.stop()
    assert jobs.wait(10).state == "stopped"


def test_killed_worker_is_noticed(tmp_path, tiny_config, fake_python, jobs_of):
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    run = jobs.start(tiny_config)
    wait_for(lambda: len(read_metrics(run)) >= 2, what="metrics rows")
    os.kill(jobs._pid, signal.SIGKILL)
    state = jobs.wait(10)
    assert state.state == "failed" and "killed by signal 9" in state.message
    assert live_status(run)["state"] == "failed"


def test_a_terminals_run_the_page_adopted_and_then_killed_reads_interrupted_and_its_files_stay_its_own(
        tmp_path, tiny_config, fake_python, jobs_of):
    """The Train page adopts a run trained from a terminal; killed, it was recorded in its status.json as
    "failed ... its output is in worker.log" (a file a terminal's run has not), by a server that never held its
    lock: a run's recorded state hung on whether a page was looking. It reads "interrupted", as unwatched."""
    import subprocess

    run = tmp_path / "runs" / "terminal"
    run.mkdir(parents=True)
    tiny_config.save(run / "config.json")
    trainer = subprocess.Popen([fake_python, "-m", "mixsep", "train", "--run-dir", str(run)], env=fake_env("train"))
    try:
        wait_for(lambda: read_status(run).get("state") == "running", what="running status")
        jobs = jobs_of(tmp_path / "runs", python=fake_python)
        assert jobs.poll().run_dir == run and jobs.poll().state == "running"  # adopted
    finally:
        trainer.kill()
        trainer.wait()
    written = (run / "status.json").read_bytes()
    state = jobs.poll()
    assert (state.state, state.alive) == ("interrupted", False) and "worker.log" not in state.message, state
    assert (run / "status.json").read_bytes() == written and not (run / "worker.log").exists()


def test_a_status_json_naming_another_process_is_no_trainer_and_that_process_gets_no_signal(tmp_path, tiny_config,
                                                                                            jobs_of):
    """A status.json written by hand, or copied with a run, may name any live process here by its pid and start
    time (pid 1's is easy to guess): the Train page took the run for its job, showed it training, refused to
    delete it, and its Stop sent that process SIGTERM. Only the holder of the run's lock is its trainer."""
    import subprocess

    from mixsep.run import process_start

    run = tmp_path / "runs" / "forged"
    run.mkdir(parents=True)
    tiny_config.save(run / "config.json")
    other = subprocess.Popen(["sleep", "60"])
    try:
        (run / "status.json").write_text(json.dumps({"state": "running", "pid": other.pid, "step": 2,
                                                     "pid_start": process_start(other.pid), "total_steps": 10}))
        jobs = jobs_of(tmp_path / "runs")
        assert jobs.running() is None and jobs.stop() is False
        assert live_status(run)["state"] == "interrupted"
        # nor one that merely has the run's .lock open, without the trainer's lock on it (`sleep < .lock`), nor one
        # that holds a lock on a file named ".lock (deleted)" (how /proc names a removed lock file), nor one that
        # holds a lock the run's .lock leads to, a link (a trainer's lock file is never one)
        (run / ".lock").touch()
        reader = subprocess.Popen(["sleep", "60"], stdin=open(run / ".lock"))
        named = conftest.holding(run / ".lock (deleted)")
        victim = conftest.holding(tmp_path / "victim.lock")
        try:
            for proc, lock in ((reader, None), (named, "remove"), (victim, "link")):
                if lock == "remove":
                    (run / ".lock").unlink()
                elif lock == "link":
                    (run / ".lock").symlink_to(tmp_path / "victim.lock")
                (run / "status.json").write_text(json.dumps({"state": "running", "pid": proc.pid, "step": 2,
                                                             "pid_start": process_start(proc.pid), "total_steps": 10}))
                assert jobs.running() is None and jobs.stop() is False, lock
                assert live_status(run)["state"] == "interrupted", lock
            jobs.delete("forged")  # not refused as "training now"
            assert not run.exists()
            time.sleep(0.5)
            assert all(p.poll() is None for p in (other, reader, named, victim))  # no signal reached any
        finally:
            for proc in (reader, named, victim):
                proc.kill()
                proc.wait()
    finally:
        other.kill()
        other.wait()


def test_an_adopted_trainer_stays_its_run_s_trainer_when_its_lock_file_or_its_folder_is_removed(tmp_path, tiny_config,
                                                                                              jobs_of):
    """The trainer holds its lock file open for its life. Removing the file made it read "interrupted": the page
    offered Resume (two trainers in one folder) and Delete took the folder while it trained; deleting the folder
    made the page forget it, and Stop could no longer reach it; through a bind mount it read dead too."""
    import subprocess

    from mixsep.run import delete_run, identity

    runs = tmp_path / "runs"
    run = runs / "live"
    run.mkdir(parents=True)
    tiny_config.save(run / "config.json")
    trainer = conftest.holding(run / ".lock")  # a trainer from a terminal, as the page finds it after a restart
    try:
        (run / "status.json").write_text(json.dumps({"state": "running", **identity(trainer.pid), "step": 2,
                                                     "total_steps": 10}))
        jobs = jobs_of(runs)
        assert jobs.running() is not None  # adopted
        if os.geteuid() == 0:  # the same runs folder through a bind mount (the trainer opened the file by the other)
            other = tmp_path / "other"
            other.mkdir()
            subprocess.run(["mount", "--bind", str(runs), str(other)], check=True)
            try:
                assert jobs_of(other).running() is not None
            finally:
                subprocess.run(["umount", str(other)], check=True)
        (run / ".lock").unlink()
        assert live_status(run)["state"] == "running"
        with pytest.raises(MixsepError, match="is training now"):
            delete_run(runs, "live")
        assert jobs.running() is not None
        shutil.rmtree(run)
        assert jobs.running() is not None and jobs.stop() is True
        assert trainer.wait(10) == -signal.SIGTERM  # Stop reached it
    finally:
        trainer.kill()
        trainer.wait()


@pytest.mark.heavy(6)
def test_a_run_moved_while_the_dashboards_child_trains_it_says_what_its_trainer_said(tmp_path, tiny_config, jobs_of):
    """`mv` of a run folder while the dashboard's child trains it: the trainer stops with a sentence (the folder was
    moved; train --run-dir with its new place resumes it) in its worker.log, which moves with the folder, and every
    page read "killed, or the server or machine stopped" of the moved run (QA)."""
    runs = tmp_path / "runs"
    jobs = jobs_of(runs)
    run = jobs.start(dataclasses.replace(tiny_config, epochs=500))
    wait_for(lambda: last_logged_step(run) >= 2, timeout=120, what="two steps")
    moved = run.with_name("moved")
    run.rename(moved)
    jobs._proc.wait(120)
    message = live_status(moved)["message"]
    # its next write finds the folder gone: a checkpoint's (run/checkpoints) or status.json's (run), whichever came
    assert any(message.startswith(f"Its training process is gone; it last said: The folder {folder} was moved or "
                                  "deleted, so ") for folder in (run / "checkpoints", run)), message
    assert message.endswith("train --run-dir with its new place resumes it from its last checkpoint; if deleted, "
                            "start a new run."), message  # its advice once, not followed by the generic one (QA)
    assert "killed" not in message and message.count("start a new run") == 1
    os.utime(moved / "worker.log", (1, 1))  # a refusal older than the trainer's last word is not its last word
    assert "killed, or the server or machine stopped" in live_status(moved)["message"]


def test_interrupted_run_reads_interrupted(tmp_path, tiny_config, fake_python, jobs_of):
    """A 'running' folder whose process is gone (machine rebooted) is shown as interrupted, not running."""
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    tiny_config.save(run / "config.json")
    (run / "status.json").write_text('{"state": "running", "pid": 999999999, "step": 4, "total_steps": 6}')
    assert live_status(run)["state"] == "interrupted"
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    assert jobs.running() is None  # not adopted
    jobs.start(tiny_config)


def test_bad_config_and_bad_resume_start_nothing(tmp_path, tiny_config, fake_python, jobs_of):
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    tiny_config.lr = -1
    with pytest.raises(MixsepError, match="Learning rate"):
        jobs.start(tiny_config)
    with pytest.raises(MixsepError, match="not a run in"):
        jobs.start(run_dir=tmp_path / "elsewhere")
    (tmp_path / "runs" / "half").mkdir(parents=True)
    with pytest.raises(MixsepError, match="No config.json"):
        jobs.start(run_dir=tmp_path / "runs" / "half")
    damaged = tmp_path / "runs" / "damaged"  # Resume on a run whose last.pt is cut short: the page says why
    (damaged / "checkpoints").mkdir(parents=True)
    (damaged / "config.json").write_text(json.dumps(tiny_config.to_dict() | {"lr": 1e-3}))
    (damaged / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 cut short")
    before = conftest.tree(damaged)
    with pytest.raises(MixsepError, match="is not a readable mixsep checkpoint .*, so the run cannot resume and is "
                                          "left as it was\\.$"):
        jobs.start(run_dir=damaged)
    assert conftest.tree(damaged) == before  # no worker.log, STOP kept or not: nothing was started
    from mixsep.run import save_checkpoint
    from mixsep.model import build_model
    for model, says in (("unet", "holds a 'unet' model, not the run's 'tiny'"),
                        ("tiny", "does not fit the 'tiny' architecture")):  # the worker found these, the page did not
        weights = build_model("unet_narrow") if model == "tiny" else build_model("unet")
        save_checkpoint(damaged / "checkpoints" / "last.pt", weights, dataclasses.replace(tiny_config, model=model),
                        step=3, epoch=0)
        before = conftest.tree(damaged)
        with pytest.raises(MixsepError, match=says):
            jobs.start(run_dir=damaged)
        assert conftest.tree(damaged) == before
    # QA: a folder named STOP, or a read-only run folder, raised out of the page's Resume (a traceback, then no word)
    stop_folder = tmp_path / "runs" / "stopdir"
    (stop_folder / "STOP").mkdir(parents=True)
    (stop_folder / "config.json").write_text(json.dumps(tiny_config.to_dict() | {"lr": 1e-3}))
    with pytest.raises(MixsepError, match="^.*STOP should be a file but is a folder; move it away before training "
                                          "this run\\.$"):
        jobs.start(run_dir=stop_folder)
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name not in ("half", "damaged", "stopdir")]
    assert jobs.poll().state == "idle"
    with conftest.tmpfs(tmp_path / "disk", "1m") as disk:
        run = disk / "frozen"
        run.mkdir()
        (run / "config.json").write_text(json.dumps(tiny_config.to_dict() | {"lr": 1e-3}))
        (run / "STOP").touch()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(MixsepError, match="^Run frozen is not writable \\(a read-only folder or disk\\), so it "
                                              "cannot train on; make it writable to resume it\\.$"):
            jobs_of(disk, python=fake_python, env=fake_env("train")).start(run_dir=run)


def test_resume_restarts_the_same_folder(tmp_path, tiny_config, fake_python, jobs_of):
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    run = jobs.start(tiny_config)
    wait_for(lambda: len(read_metrics(run)) >= 2, what="metrics rows")
    jobs.stop()
    assert jobs.wait(10).state == "stopped"
    (run / "STOP").touch()  # a stale STOP must not end the resumed run at once
    assert jobs.start(run_dir=run) == run.resolve()
    wait_for(lambda: jobs.poll().state == "running", what="the resumed run")
    assert "--run-dir" in (cmd := jobs._proc.args) and cmd[cmd.index("--run-dir") + 1] == str(run.resolve())


def test_a_resume_while_another_process_holds_the_run_is_refused_and_leaves_its_stop_file(tmp_path, tiny_config,
                                                                                        fake_python, jobs_of):
    """A terminal's resume holds the run's lock while it loads, before its status.json says running: the page's
    Resume then started a child that the lock refused, said so only in worker.log, and first removed the STOP file
    written to stop the terminal's trainer."""
    from mixsep.run import RunLock

    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    run = jobs.start(tiny_config)
    wait_for(lambda: len(read_metrics(run)) >= 2, what="metrics rows")
    jobs.stop()
    assert jobs.wait(10).state == "stopped"
    held = RunLock(run).acquire()  # this process: the terminal's trainer, still loading
    try:
        (run / "STOP").write_text("")  # the user stops it during its start-up
        with pytest.raises(MixsepError, match=f"Run {run.name} is already being trained by process {os.getpid()} "):
            jobs.start(run_dir=run)
        assert (run / "STOP").exists() and jobs.poll().state == "stopped"
    finally:
        held.release()


def test_a_resumed_run_reads_starting_until_its_new_trainer_writes(tmp_path, tiny_config, fake_python, jobs_of):
    """status.json still holds the last trainer's "stopped" while the new one starts (imports torch):
    the Train page showed "Run stopped at step N" above a live progress bar."""
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    run = jobs.start(tiny_config)
    wait_for(lambda: len(read_metrics(run)) >= 2, what="metrics rows")
    jobs.stop()
    assert jobs.wait(10).state == "stopped"
    jobs.env = fake_env("slowstart")  # 30 s before it writes a status
    jobs.start(run_dir=run)
    job = jobs.poll()
    assert read_status(run)["state"] == "stopped" and job.alive
    assert (job.state, job.message) == ("starting", "") and job.step >= 2


# --------------------------------------------------------------------------- the real trainer


def test_real_cli_child_refuses_a_second_start_and_stops_within_a_step(tmp_path, tiny_config, jobs_of):
    tiny_config.epochs, tiny_config.batch_size = 50, 4  # 1200 small steps: far more than the test waits for
    jobs = jobs_of(tmp_path / "runs")
    run = jobs.start(tiny_config)
    with pytest.raises(MixsepError, match="already in progress"):
        jobs.start(tiny_config)
    wait_for(lambda: len(read_metrics(run)) >= 1, timeout=120, what="the first step")
    assert jobs.poll().state == "running"
    assert jobs.stop()
    state = jobs.wait(60)
    assert state.state == "stopped", (run / "worker.log").read_text()
    import torch

    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    rows = len(read_metrics(run))
    assert saved == rows == state.step and rows < 1200  # the checkpoint holds every logged step
    assert not (run / "STOP").exists()
    assert [p.name for p in list_checkpoints(run)] == ["last.pt"]


def test_the_child_trains_with_the_mixsep_the_server_runs(tmp_path, tiny_config, jobs_of, monkeypatch):
    """Streamlit runs the checkout beside dashboard.py; the child `python -m mixsep`, started in another folder,
    imported whatever mixsep came first on its path there (an installed wheel; here a decoy that says so)."""
    decoy = tmp_path / "elsewhere" / "mixsep"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    (decoy / "__main__.py").write_text("print('the decoy mixsep'); raise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)  # the server's folder: not the checkout
    jobs = jobs_of(tmp_path / "runs", env=dict(os.environ, PYTHONPATH=str(decoy.parent)))
    tiny_config.train_size = 32
    run = jobs.start(tiny_config)
    state = jobs.wait(120)
    log = (run / "worker.log").read_text()
    assert state.state == "finished" and "decoy" not in log, log


def test_a_killed_child_names_the_checkpoint_a_resume_starts_from(tmp_path, tiny_config, jobs_of):
    """SIGKILL between checkpoints: status.json took the last logged step, and its sentence said to resume from
    the last checkpoint, which is older: the step a resume continues from was said nowhere."""
    import torch

    tiny_config.epochs, tiny_config.batch_size, tiny_config.checkpoint_every = 50, 4, 5  # 1200 small steps
    jobs = jobs_of(tmp_path / "runs")
    run = jobs.start(tiny_config)

    def checkpoint_step() -> int:
        last = run / "checkpoints" / "last.pt"
        return torch.load(last, weights_only=True)["step"] if last.is_file() else 0

    def past_a_checkpoint() -> bool:  # checked while the child is stopped: still true when the kill lands
        recorded = read_status(run).get("step") or 0
        return 0 < recorded == checkpoint_step() < last_logged_step(run)
    conftest.frozen_when(jobs._proc, past_a_checkpoint, what="steps logged past a checkpoint")
    logged, saved = last_logged_step(run), checkpoint_step()
    os.kill(jobs._pid, signal.SIGKILL)
    state = jobs.wait(30)
    assert state.state == "failed" and "killed by signal 9" in state.message, state.message
    assert read_status(run)["step"] == saved  # the step a resume continues from, not the last logged one
    assert f"at step {logged};" in state.message and f"last checkpoint (step {saved})" in state.message
    assert state.step == logged  # the page's progress still counts the logged steps


def test_a_running_sweep_blocks_training_and_its_trials_are_not_adopted(tmp_path, tiny_config, fake_python, jobs_of):
    import json
    import socket
    import subprocess

    from mixsep import run as R

    runs = tmp_path / "runs"
    trial = runs / "study" / "trial-0000"
    trial.mkdir(parents=True)
    (trial / "config.json").write_text(json.dumps(tiny_config.to_dict()))
    # stands in for the sweep process and its trial's trainer, holding their locks
    sweep = conftest.holding(trial / ".lock", runs / "study" / ".sweep.lock")
    try:
        ident = R.identity(sweep.pid)
        R.write_json(trial / "status.json", {"state": "running", **ident, "step": 1, "total_steps": 9})
        R.write_json(runs / "study" / "sweep.json", {"state": "running", "host": socket.gethostname(), **ident})
        jobs = jobs_of(runs, python=fake_python, env=fake_env("train"))
        assert jobs.running() is None  # the trial is the sweep's, not the Train page's job
        with pytest.raises(MixsepError, match="Sweep 'study' is running"):
            jobs.start(tiny_config)
        assert sorted(p.name for p in runs.iterdir()) == ["study"]  # nothing started, nothing written
    finally:
        sweep.kill()
        sweep.wait()


# --------------------------------------------------------------------------- faults around a start


def test_a_start_on_a_full_disk_is_one_sentence_and_leaves_no_folder(tmp_path, tiny_config, fake_python, jobs_of):
    """The Train page showed an OSError traceback and left a run folder with an empty config.json."""
    from conftest import tmpfs

    with tmpfs(tmp_path / "runs", "64k") as runs:
        with open(runs / "filler", "wb", buffering=0) as f:  # the disk is full before Start is pressed
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError:
                pass
        jobs = jobs_of(runs, python=fake_python, env=fake_env("train"))
        with pytest.raises(MixsepError) as e:
            jobs.start(tiny_config)
        assert str(e.value).startswith(f"The disk holding {runs}") and "is full" in str(e.value)
        assert str(e.value).endswith("; nothing was started.") and "\n" not in str(e.value)
        assert sorted(p.name for p in runs.iterdir()) == ["filler"]
        assert jobs.poll().state == "idle"
        (runs / "filler").unlink()  # room again: the same Start works
        run = jobs.start(tiny_config)
        wait_for(lambda: len(read_metrics(run)) >= 2, what="the run's first steps")
        assert jobs.stop() and jobs.wait(10).state == "stopped"


def test_a_selected_run_whose_trainer_died_with_the_server_reads_interrupted(tmp_path, tiny_config, fake_python,
                                                                             jobs_of):
    """Server and trainer killed together (a crash): the restarted Train page showed a dead run as running."""
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    run = jobs.start(tiny_config)
    wait_for(lambda: read_status(run).get("state") == "running", what="running status")
    os.kill(jobs._pid, signal.SIGKILL)
    jobs._proc.wait(10)
    again = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))  # the restarted server
    assert again.running() is None
    again.select(run)  # what the Train page does with the last run
    job = again.poll()
    assert (job.state, job.alive) == ("interrupted", False) and "so a resume starts from step 0" in job.message  # no checkpoint
    assert read_status(run)["state"] == "running"  # only read: the folder is not rewritten by a mere viewer


def test_a_run_that_is_starting_cannot_be_deleted(tmp_path, tiny_config, fake_python, jobs_of):
    """Resume in one tab, Delete in another while the trainer still loads (it holds no lock yet): the folder
    was deleted under it."""
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    run = jobs.start(tiny_config)
    wait_for(lambda: len(read_metrics(run)) >= 2, what="metrics rows")
    jobs.stop()
    assert jobs.wait(10).state == "stopped"
    jobs.env = fake_env("slowstart")  # loads for 30 s, as torch does for a few
    jobs.start(run_dir=run)
    assert jobs.poll().state == "starting"
    with pytest.raises(MixsepError, match=f"Run '{run.name}' is training now \\(or starting\\); stop it before"):
        jobs.delete(run.name)
    assert run.is_dir()
    jobs.stop()
    wait_for(lambda: jobs.running() is None, what="the stopped start")
    assert jobs.delete(run.name) == run.resolve() and not run.exists()


def slow_torch(tmp_path: Path, seconds: float) -> dict:
    """An environment whose Python processes take ``seconds`` more to import torch, as on a loaded machine."""
    slow = tmp_path / "slow"
    slow.mkdir(exist_ok=True)
    (slow / "sitecustomize.py").write_text(
        "import sys, time\n"
        "class SlowTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        f"            time.sleep({seconds})\n"
        "sys.meta_path.insert(0, SlowTorch())\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")])))


@pytest.mark.heavy(8)
def test_a_terminals_resume_holds_its_run_before_it_loads_and_a_stop_file_then_stops_it(tmp_path, tiny_config):
    """`train --run-dir RUN` imported torch (seconds) before it took RUN's lock: a Delete on the dashboard in that
    window saw no trainer and removed RUN, and the "resume" then began a new run with default settings in its
    place. And the trainer removed STOP once it had loaded, so a STOP written while it loaded was removed unread
    and the run trained to its end. A STOP there before the trainer took the lock is an earlier stop's, removed
    as before. Here torch takes 3 s more to import, as on a loaded machine."""
    import subprocess

    from mixsep.run import lock_holder

    config = dataclasses.replace(tiny_config, epochs=4)
    runs = tmp_path / "runs"
    run = runs / "mine"
    steps = train_steps(config, run)
    for _ in range(3):  # 3 of 24 steps, then stopped: its checkpoint is step 2's
        next(steps)
    steps.close()
    (runs / "old").mkdir()
    (run / "STOP").touch()  # an earlier stop's STOP, left there: the resume removes it and trains on to the end
    shutil.copytree(run, runs / "old", dirs_exist_ok=True)
    assert len(list(train_steps(config, runs / "old"))) == 24 - 2
    assert read_status(runs / "old")["state"] == "finished" and not (runs / "old" / "STOP").exists()
    (run / "STOP").unlink()
    child = subprocess.Popen([sys.executable, "-m", "mixsep", "train", "--run-dir", str(run), "--quiet"],
                             env=slow_torch(tmp_path, 3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (lock_holder(run) or {}).get("pid") == child.pid, timeout=60, what="the resume's lock")
        assert "torch" not in Path(f"/proc/{child.pid}/maps").read_text()  # still before torch's libraries
        with pytest.raises(MixsepError, match="Run 'mine' is training now"):
            JobRegistry(runs).delete("mine")
        (run / "STOP").touch()  # while it loads
        out, err = child.communicate(timeout=300)
    finally:
        child.kill()
        child.wait()
    status = read_status(run)
    assert child.returncode == 0, err
    assert (status["state"], status["message"], status["step"]) == ("stopped", "stopped by request", 3), status
    assert not (run / "STOP").exists() and read_metrics(run)["step"].tolist() == [1, 2, 3]


def test_every_tab_sees_a_run_stopping_until_it_has_stopped(tmp_path, tiny_config, fake_python, jobs_of):
    """Only the tab that pressed Stop said "Stopping"; another kept its own stale words."""
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("slowstop"))
    run = jobs.start(tiny_config)
    wait_for(lambda: len(read_metrics(run)) >= 2, what="metrics rows")
    assert not jobs.poll().stopping
    assert jobs.stop()
    job = jobs.poll()  # what any tab of this server reads: the registry is shared
    assert job.alive and job.stopping and job.state == "running"
    done = jobs.wait(10)
    assert done.state == "stopped" and not done.stopping
    jobs.env = fake_env("train")
    jobs.start(run_dir=run)  # a resume is not stopping
    assert not jobs.poll().stopping


def test_a_resume_on_the_page_maps_last_pt_and_keeps_none_of_it(tmp_path, tiny_config, fake_python, jobs_of):
    """The page's check before a Resume read the whole last.pt (139 MB for a faithful run) and the server kept it
    in memory until the next resume; its child then read it again. Now the page maps it: it reads the settings
    and the shapes, and keeps nothing."""
    from mixsep import train
    from mixsep.model import build_model
    from mixsep.run import save_checkpoint

    config = dataclasses.replace(tiny_config, model="faithful", pretrained=False)
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("train"))
    run = jobs.start(config)
    wait_for(lambda: len(read_metrics(run)) >= 2, what="metrics rows")
    jobs.stop()
    assert jobs.wait(10).state == "stopped"
    last = run / "checkpoints" / "last.pt"
    save_checkpoint(last, build_model("faithful", pretrained=False), config, step=2, epoch=0)
    size = last.stat().st_size
    assert size > 40e6

    def bytes_read() -> int:  # read() calls of this process: a mapped file's pages do not count
        return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                        if line.startswith("rchar:")).split()[1])

    train.forget_resume_point()
    before = bytes_read()
    assert jobs.start(run_dir=run) == run.resolve()
    assert bytes_read() - before < size / 20  # a few kilobytes of settings and shapes, not the weights
    assert train._resume_read == [None, None]  # and nothing of it stays in the server
    jobs.stop()
    assert jobs.wait(10).state == "stopped"
    import torch

    torch.save(torch.load(last, weights_only=True), last, _use_new_zipfile_serialization=False)  # torch's old format,
    assert jobs.start(run_dir=run) == run.resolve()  # which it cannot map: read whole, as the CLI reads it


def test_a_child_refused_before_it_opens_the_run_folder_leaves_no_run_and_says_why(tmp_path, tiny_config, jobs_of,
                                                                                     fake_python):
    """A trainer refused before it opens (and locks) the folder the page made for it writes no status.json and says
    why only in worker.log. The page recorded the exit as a death of its own, kept the empty failed run for every
    page to list, and said only that the process "exited with code 2". (A runs folder inside another run's folder
    was how; Start now refuses that itself, before it makes a folder: the real case first.)"""
    from mixsep.train import train_steps

    outer = tmp_path / "outer"
    list(train_steps(tiny_config, outer))  # a run, finished
    with pytest.raises(MixsepError, match=f"The runs folder {outer / 'runs'} is inside the run folder {outer}"):
        jobs_of(outer / "runs").start(tiny_config)
    assert not (outer / "runs").exists()
    jobs = jobs_of(tmp_path / "runs", python=fake_python, env=fake_env("refused"))
    run = jobs.start(tiny_config)
    state = jobs.wait(60)
    assert state.state == "failed" and state.removed, state.message
    assert state.message == "The run was refused before it began: a sentence saying why."
    assert not run.exists() and list((tmp_path / "runs").iterdir()) == []  # no failed run left to list
    assert jobs.poll() == state and jobs.view(run) == state and jobs.running() is None


@pytest.mark.heavy(6)
def test_a_resume_refused_for_where_it_runs_leaves_the_run_stopped_and_says_why(tmp_path, tiny_config, jobs_of):
    """The real trainer refuses a resume whose data root is gone before it touches the run, which stays "stopped"
    (QA: it was recorded "failed", in the refusal's words, and every page listed a healthy run as failed). The page
    still says why its Resume did nothing, from the trainer's last line."""
    from mixsep.run import write_status

    data = tmp_path / "moving"
    shutil.copytree(tiny_config.data_root, data)
    runs = tmp_path / "runs"
    run = runs / "r"
    list(train_steps(dataclasses.replace(tiny_config, data_root=str(data)), run))
    done = read_status(run)
    write_status(run, "stopped", "stopped by request", step=done["step"], total_steps=done["total_steps"])
    shutil.rmtree(data)  # moved away since
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    jobs = jobs_of(runs, env=dict(os.environ, MIXSEP_DATA_ROOT=str(tmp_path / "none")))  # nor the default there
    jobs.start(run_dir=run)
    state = jobs.wait(120)
    assert state.state == "stopped", state
    # the run's own data root is gone, and the server's (here MIXSEP_DATA_ROOT) holds none either: both named
    assert state.message == f"Resume refused: {run} trained on the data root {data}, which is not a folder on this " \
        f"machine, and {tmp_path / 'none'} holds no training data either; resume it with --data-root DIR naming a " \
        "folder that holds MNIST and CIFAR-10.", state.message
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "worker.log"}
    assert after == {p: b for p, b in before.items() if p.name != "worker.log"}
    assert read_status(run)["message"] == "stopped by request"
    # a run interrupted (its trainer killed: status.json says "running", of a process gone) stays so too (QA: this
    # registry recorded the refused child's exit as a death, "failed: exited with code 2")
    subprocess.run([sys.executable, "-c", "import sys; from mixsep.run import write_status; "
                    f"write_status(sys.argv[1], 'running', step={done['step']}, total_steps={done['total_steps']})",
                    str(run)], check=True)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "worker.log"}
    jobs.start(run_dir=run)
    state = jobs.wait(120)
    assert state.state == "interrupted" and state.message.startswith(f"Resume refused: {run} trained on the data "), \
        state
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "worker.log"} == before
