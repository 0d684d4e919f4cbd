"""Two sweep workers share one study on a real PostgreSQL server that the test starts.

The server is Debian's postgresql (initdb + pg_ctl) in a temp folder, listening only on a
unix socket there. initdb refuses to run as root, so as root the server runs as the
postgres user. .ci/run installs it and sets MIXSEP_REQUIRE_POSTGRES, which turns a
missing server into a failure instead of a skip.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import json
from pathlib import Path

import pytest
import conftest
from conftest import make_data_root

from mixsep.cli import build_parser
from mixsep.sweep import counts, load_study, plan

TINY = ["--model", "tiny", "--checkpoint-seconds", "0", "--no-pretrained", "--device", "cpu", "--batch-size", "16", "--train-size", "32",
        "--val-size", "16", "--report-every", "1", "--checkpoint-every", "1"]


def postgres_bindir() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "pg_ctl").is_file():
        return Path(found).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                    key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(debian[-1]).parent if debian else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SERVER: dict = {}  # how the module's server is stopped and started again (a test that loses it)


def pg_ctl(action: str) -> None:
    cmd = [*_SERVER["as_postgres"], str(_SERVER["bindir"] / "pg_ctl"), "-D", str(_SERVER["data"]), "-w", "-t", "60"]
    if action == "start":
        cmd += ["-l", str(_SERVER["log"]), "-o", _SERVER["options"], "start"]
    else:
        cmd += ["-m", "immediate", "stop"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server; yields its SQLAlchemy URL (over a unix socket)."""
    bindir = postgres_bindir()
    if bindir is None:
        why = "PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)"
        if os.environ.get("MIXSEP_REQUIRE_POSTGRES"):
            pytest.fail(why + ", and MIXSEP_REQUIRE_POSTGRES is set")
        pytest.skip(why + "; set MIXSEP_REQUIRE_POSTGRES=1 to make this a failure")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="mixsep-pg-"))  # short: a socket path must fit in 107 bytes
    base.chmod(0o755)  # the postgres user must reach the folders below
    data, sock = base / "data", base / "sock"
    for folder in (data, sock):
        folder.mkdir()
        if as_postgres:
            shutil.chown(folder, "postgres")
    port = free_port()  # with listen_addresses='' it only names the socket file, but keep it unique
    run = lambda *cmd: subprocess.run([*as_postgres, *map(str, cmd)], check=True, capture_output=True, text=True)
    _SERVER.update(as_postgres=as_postgres, bindir=bindir, data=data, log=sock / "server.log",
                   options=f"-k {sock} -c listen_addresses='' -p {port} -c fsync=off")
    try:
        run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        pg_ctl("start")
        yield f"postgresql://postgres@/postgres?host={sock}&port={port}"  # the database initdb makes
    except subprocess.CalledProcessError as e:
        pytest.fail(f"could not start PostgreSQL: {e.cmd}: {e.stderr}")
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.heavy(40)
def test_two_workers_share_a_study_and_one_finishes_it_when_the_other_is_killed(postgres, tmp_path):
    from optuna.trial import TrialState

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    args = ["sweep", "--study", "pg", "--data-root", str(data), "--runs-dir", str(runs), "--trials", "5",
            "--heartbeat", "2", "--space", "lr=1e-4:1e-2:log,beta1=0.5:0.99", *TINY,
            "--epochs", "40"]  # 80 steps a trial: long enough to catch a worker mid-trial on a busy machine
    env = dict(os.environ, MIXSEP_SWEEP_STORAGE=postgres)  # the URL reaches the workers as the CLI documents
    start = lambda seed: conftest.WarmProcess([*args, "--sampler-seed", seed], env=env)
    a, b = start("0"), start("1")  # together, as two machines would: both race to create the study
    try:
        p = plan(build_parser().parse_args([*args, "--storage", postgres]))  # reads only: the workers create it
        study = None

        def created() -> bool:
            nonlocal study
            try:
                study = load_study(p)
                return True
            except KeyError:
                return False

        # loaded while both workers run: a worker frozen inside the transaction that creates Optuna's tables
        # blocked every other connection, this test's own too, for good
        conftest.wait_for(created, 240, "the workers to create the study", interval=0.1)

        def a_trials():
            if a.poll() is not None:
                raise AssertionError(f"worker a ended early: {a.communicate()[1][-2000:]}")
            mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("pid") == a.pid]
            return ([t for t in mine if t.state in (TrialState.COMPLETE, TrialState.PRUNED)],
                    [t for t in mine if t.state == TrialState.RUNNING])

        def a_is_mid_second_trial() -> bool:
            finished, running = a_trials()
            return bool(finished and running and (runs / running[0].user_attrs["run"] / "checkpoints").is_dir())

        # worker a runs at b's pace through its first trial: frozen in slices from the start, it ran a
        # fraction of the time, and on a slow machine b took every other trial before a finished its
        # first, so a never started a second
        conftest.wait_for(lambda: a_trials()[0], 400, "worker a to finish a trial", interval=0.1)
        # then checked while worker a is stopped (SIGSTOP between 0.05 s slices), so the trial is still
        # running when the kill lands, however fast this machine runs a tiny trial; once a holds a trial,
        # the study cannot end before a finishes it
        conftest.frozen_when(a, a_is_mid_second_trial, 400, "worker a to start another trial", slice_s=0.05)
        killed = next(t for t in study.get_trials(deepcopy=False)
                      if t.user_attrs.get("pid") == a.pid and t.state == TrialState.RUNNING)
        a.send_signal(signal.SIGKILL)
        a.wait()
        out, err = b.communicate(timeout=600)
        assert b.returncode == 0, err[-3000:]
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    trials = load_study(p).trials
    assert len({t.number for t in trials}) == len(trials)
    assert counts(load_study(p)) == {"done": 5, "running": 0, "waiting": 0}  # nothing left "running" forever
    by_number = {t.number: t for t in trials}
    assert by_number[killed.number].state == TrialState.FAIL  # failed by the heartbeat, not left running
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retried[0].params == killed.params and retried[0].user_attrs["run"] == killed.user_attrs["run"]
    assert retried[0].user_attrs["pid"] == b.pid  # the survivor finished the dead worker's trial
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert {t.user_attrs["pid"] for t in finished} == {a.pid, b.pid}  # both contributed
    runs_used = [t.user_attrs["run"] for t in finished]
    assert len(set(runs_used)) == len(runs_used) and all((runs / r / "config.json").is_file() for r in runs_used)
    resumed = runs / killed.user_attrs["run"]
    steps = [int(line.split(",")[0]) for line in (resumed / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, len(steps) + 1))  # resumed from its checkpoint, every step once
    best = Path(out.strip().splitlines()[-1])
    assert best.parent == runs / "pg" and (best / "checkpoints" / "last.pt").is_file()


@pytest.mark.heavy(30)
def test_a_database_lost_mid_trial_is_one_sentence_and_the_study_resumes_when_it_is_back(postgres, tmp_path):
    from optuna.trial import TrialState

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    args = ["sweep", "--study", "lost", "--data-root", str(data), "--runs-dir", str(runs), "--trials", "1",
            "--heartbeat", "1", "--pruner", "none", *TINY, "--epochs", "60"]
    env = dict(os.environ, MIXSEP_SWEEP_STORAGE=postgres)
    p = plan(build_parser().parse_args([*args, "--storage", postgres]))
    worker, waiting = conftest.WarmProcess(args, env=env), None
    try:
        def mid_trial() -> bool:
            if worker.poll() is not None:
                raise AssertionError(f"the sweep ended early: {worker.communicate()[1][-2000:]}")
            try:
                return any(t.state == TrialState.RUNNING and len(t.intermediate_values) >= 3
                           for t in load_study(p).get_trials(deepcopy=False))
            except KeyError:
                return False

        conftest.wait_for(mid_trial, 240, "trial 0 to report three steps", interval=0.2)
        # a second command of the study, waiting for the first one's trial: a lost database was a traceback there
        waiting = conftest.WarmProcess(args, env=env)
        conftest.wait_for(lambda: "waiting for 1 running trial(s)" in Path(waiting._err).read_text(), 120,
                          "the second command to wait", interval=0.2)
        pg_ctl("stop")
        try:
            out, err = worker.communicate(timeout=240)
            _, err_waiting = waiting.communicate(timeout=240)
        finally:
            pg_ctl("start")
    finally:
        for proc in (worker, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    for code, said, then in ((worker.returncode, err, "the trial that was running resumes"),
                             (waiting.returncode, err_waiting, "the study goes on from there")):
        assert code == 2, said
        assert "Traceback" not in said and said.count("error: ") == 1, said
        last = said.strip().splitlines()[-1]
        assert last.startswith("error: The sweep lost its database postgresql://postgres@/postgres") and \
            f"run the same command: {then}" in last, said
    assert json.loads((runs / "lost" / "sweep.json").read_text())["state"] == "stopped"  # not "failed"

    again = conftest.WarmProcess(args, env=env)
    out, err = again.communicate(timeout=400)
    assert again.returncode == 0, err
    # its worker stopped it cleanly: not "its worker is gone", as a killed worker's trial reads
    assert "trial 0: stopped, and its worker ended before the study could record it (as when its database was " \
           "lost); queued again to resume" in err and "worker is gone" not in err, err
    assert counts(load_study(p)) == {"done": 1, "running": 0, "waiting": 0}
    from mixsep.sweep import crashes

    again_0 = [t for t in load_study(p).trials if t.system_attrs.get("failed_trial") == 0]
    assert len(again_0) == 1 and crashes(again_0[0]) == 0  # a lost database is a stop, not a dead worker's retry
    resumed = runs / "lost" / "trial-0000"
    steps = [int(line.split(",")[0]) for line in (resumed / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 120  # resumed from its checkpoint, every step once
