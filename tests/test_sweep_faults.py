"""Sweeps meeting damaged or unusable storage and bad --space values: one `error: ...` sentence and
exit code 2, nothing written where nothing should be, and a journal cut off mid-record repaired
(its cut bytes kept beside it) so the study resumes."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import conftest
from conftest import make_data_root, tree

from mixsep.cli import main
from mixsep.sweep import JOURNAL, open_storage

ROOT = Path(__file__).resolve().parents[1]
# the tiny model on 2 steps of 16 pairs: a trial takes a second or two
TINY = ["--model", "tiny", "--checkpoint-seconds", "0", "--no-pretrained", "--device", "cpu", "--batch-size", "16", "--train-size", "32",
        "--val-size", "16", "--epochs", "1", "--trials", "1"]
# a record as Optuna writes it: the creation of a study
RECORD = b'{"op_code":0,"worker_id":"w-0","study_name":"other","directions":[2]}\n'


def sweep_args(data_root, runs, *extra) -> list[str]:
    return ["sweep", "--data-root", str(data_root), "--runs-dir", str(runs), "--study", "s", *TINY, *extra]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


# --------------------------------------------------------------------------- a journal that is not one


@pytest.mark.parametrize("content, line, why", [
    (b"\xff\xfe\x00\x01", 1, "is not an Optuna journal record"),                 # binary, no newline
    (b"hello, journal\n" + RECORD, 1, "is not JSON text"),                         # a garbage first line
    (RECORD + b'{"op_code":99}\n', 2, "has no operation Optuna knows (op_code 99)"),
    (RECORD + b"[1,2]\n", 2, "is not a JSON object"),
    (RECORD + b"[" * 100_000 + b"]" * 100_000 + b"\n", 2, "is JSON nested too deeply to read"),  # a RecursionError
    (RECORD + b'{"op_code":"0"}\n' + RECORD, 2, 'has no operation Optuna knows (op_code "0")'),
    (RECORD + b"\x00\x00\x00", 2, "is not an Optuna journal record"),             # a NUL tail is no cut record
    (b'{"op_code":0}\n', 1, "is a record Optuna cannot replay"),                  # no study name
])
@pytest.mark.parametrize("best", [False, True])
def test_a_journal_that_is_not_one_is_refused_before_anything_is_appended(capsys, tmp_path, content, line, why, best):
    runs = tmp_path / "runs"
    runs.mkdir()
    journal = runs / JOURNAL
    journal.write_bytes(content)
    before, digest = tree(tmp_path), sha(journal)
    assert main(sweep_args(tmp_path / "data", runs, *(["--best"] if best else []))) == 2
    assert one_error(capsys) == (f"error: The sweep journal {journal} is damaged: line {line} {why}; move the file "
                                 "away (or restore it from a backup) and run the sweep again.")
    assert sha(journal) == digest and tree(tmp_path) == before  # not a byte appended, no lock file left


@pytest.mark.parametrize("best", [False, True])
def test_a_journal_that_is_a_folder_is_one_sentence(capsys, tmp_path, best):
    runs = tmp_path / "runs"
    (runs / JOURNAL).mkdir(parents=True)
    (runs / JOURNAL / "keep").write_text("mine")
    data = make_data_root(tmp_path / "data")
    before = tree(tmp_path)
    assert main(sweep_args(data, runs, *(["--best"] if best else []))) == 2
    assert one_error(capsys) == (f"error: {runs / JOURNAL} is a folder, but a sweep keeps its journal file there; "
                                 "move the folder away or choose another --runs-dir.")
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- other storage


def test_a_sqlite_storage_that_is_a_text_file_is_one_sentence(capsys, tmp_path, monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a database\n")
    monkeypatch.setenv("MIXSEP_SWEEP_STORAGE", f"sqlite:///{notes}")
    data = make_data_root(tmp_path / "data")
    before = tree(tmp_path)
    assert main(sweep_args(data, tmp_path / "runs")) == 2
    assert one_error(capsys) == (f"error: {notes} is not an SQLite database, so sqlite:///{notes} cannot hold a "
                                 "study; name a new file or the database of an earlier sweep.")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("size, room", [("64k", 0), ("64k", 24_576), ("128k", 131_072)])
def test_a_sqlite_storage_on_a_full_disk_leaves_no_file_and_says_the_disk_is_full(capsys, tmp_path, monkeypatch, size,
                                                                                  room):
    """SQLite had made a 0-byte x.db before its first write failed, or (with some room) a 48 KB part of Optuna's
    tables, and the sentence blamed the URL ("check the storage URL"); with room for the tables and not for the
    study's first rows (128 KB), a traceback, exit 1, and a 112 KB file left."""
    from conftest import tmpfs

    data = make_data_root(tmp_path / "data")
    with tmpfs(tmp_path / "full", size) as full:
        try:
            with open(full / "filler", "wb") as f:
                for _ in range((int(size[:-1]) * 1024 - room) // 4096 if room else 10**6):
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:  # the disk is full now
            pass
        monkeypatch.setenv("MIXSEP_SWEEP_STORAGE", f"sqlite:///{full / 'x.db'}")
        assert main(sweep_args(data, tmp_path / "runs")) == 2
        assert one_error(capsys) == (f"error: The disk holding {full} is full, so the sweep's database sqlite:///"
                                     f"{full / 'x.db'} could not be made; free some space and run the command again.")
        assert sorted(p.name for p in full.iterdir()) == ["filler"]


def test_an_sqlite_storage_that_exists_on_a_full_disk_is_kept_and_the_disk_named(capsys, tmp_path, monkeypatch):
    """A database of an earlier study on a disk that has filled since: "The disk holding the database is full, so
    the sweep's database ... could not be made" (it was there, and its folder not named). QA."""
    import optuna
    from conftest import tmpfs

    data = make_data_root(tmp_path / "data")
    with tmpfs(tmp_path / "full", "400k") as full:
        url = f"sqlite:///{full / 'x.db'}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.create_study(study_name="earlier", storage=url)  # Optuna's tables and one study
        before = sha(full / "x.db")
        try:
            with open(full / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:  # the disk is full now
            pass
        monkeypatch.setenv("MIXSEP_SWEEP_STORAGE", url)
        assert main(sweep_args(data, tmp_path / "runs")) == 2
        assert one_error(capsys) == (f"error: The disk holding {full} is full, so the sweep's database {url} could "
                                     "not take the study's rows; free some space and run the command again.")
        assert sha(full / "x.db") == before


@pytest.fixture
def read_only_disk(tmp_path):
    """A tmpfs mounted at tmp_path/disk (conftest.tmpfs); remount(ro=True) makes it read-only."""
    from conftest import tmpfs

    def remount(ro: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", str(disk)], check=True)

    with tmpfs(tmp_path / "disk", "2m") as disk:
        yield disk, remount


@pytest.mark.parametrize("sub", ["", "sub"])
def test_a_read_only_runs_folder_is_one_sentence(capsys, tmp_path, monkeypatch, read_only_disk, sub):
    disk, remount = read_only_disk
    data = make_data_root(tmp_path / "data")
    remount(ro=True)
    runs = disk / sub if sub else disk
    monkeypatch.setenv("MIXSEP_RUNS_DIR", str(runs))  # as the report gave it
    assert main(["sweep", "--data-root", str(data), "--study", "s", *TINY]) == 2
    assert one_error(capsys) == (f"error: Cannot write the sweep journal {runs / JOURNAL} (Read-only file system); "
                                 "choose a writable --runs-dir (or MIXSEP_RUNS_DIR).")


def test_a_study_on_a_read_only_disk_is_read_but_not_resumed(capsys, tmp_path, read_only_disk):
    from mixsep.cli import build_parser
    from mixsep.sweep import create_study, plan

    disk, remount = read_only_disk
    data = make_data_root(tmp_path / "data")
    create_study(plan(build_parser().parse_args(sweep_args(data, disk))))  # the study, no trial run yet
    remount(ro=True)
    assert main(sweep_args(data, disk)) == 2
    assert one_error(capsys) == (f"error: Cannot write the sweep journal {disk / JOURNAL} (Read-only file system); "
                                 "choose a writable --runs-dir (or MIXSEP_RUNS_DIR).")
    assert main(sweep_args(data, disk, "--best")) == 2  # --best only reads: it gets as far as the study
    assert one_error(capsys) == "error: No trial of study 's' has completed yet; run the sweep (longer) first."


# --------------------------------------------------------------------------- --space


@pytest.mark.parametrize("space, says", [
    ("lr=", "--space gives 'lr=' with nothing after '='; write lr=1e-05:0.1, or lr alone for its default sweep."),
    ("beta1=0.8:0.99,model=", "--space gives 'model=' with nothing after '='; write model=faithful|unet|tiny, or "
                              "model alone for its default sweep."),
    ("lr=1:0", "The range lr=1:0 is inverted: its low end is above its high end; give the low end first and make "
               "it smaller than the high end."),
])
def test_an_empty_or_inverted_space_value_is_one_sentence(capsys, tmp_path, space, says):
    data = make_data_root(tmp_path / "data")
    before = tree(tmp_path)
    assert main(sweep_args(data, tmp_path / "runs", "--space", space)) == 2
    assert one_error(capsys) == f"error: {says}"
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- a journal cut off mid-record


def cli(*args) -> subprocess.CompletedProcess:
    """`python -m mixsep ARGS` as a real process, forked warm (conftest.WarmProcess)."""
    return conftest.warm_run(args, ROOT, None, timeout=300)


@pytest.mark.heavy(8)
def test_a_journal_cut_mid_record_is_repaired_once_and_the_study_resumes(tmp_path):
    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    args = sweep_args(data, runs, "--space", "lr=1e-4:1e-2")
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    journal = runs / JOURNAL
    whole = journal.read_bytes()
    lines = whole.splitlines(keepends=True)
    # the record that completed trial 0, cut in its middle as a kill or a full disk leaves it
    done = max(i for i, line in enumerate(lines) if json.loads(line)["op_code"] == 6
               and json.loads(line)["state"] == 1)
    kept = b"".join(lines[:done])
    tail = lines[done][:len(lines[done]) // 2]
    journal.write_bytes(kept + tail)

    digest = sha(journal)
    best = cli(*sweep_args(data, runs, "--best"))  # reads the complete records only, writes nothing
    assert best.returncode == 2 and best.stderr == \
        "error: No trial of study 's' has completed yet; run the sweep (longer) first.\n"
    assert sha(journal) == digest

    again = cli(*args)
    assert again.returncode == 0, again.stderr
    sides = sorted(runs.glob(JOURNAL + ".cut-*"))
    assert len(sides) == 1 and sides[0].read_bytes() == tail  # the dropped bytes are kept
    notes = [line for line in again.stderr.splitlines() if line.startswith("note:")]
    assert notes == [f"note: dropped a cut-off last record ({len(tail)} bytes) from {journal}, left by a killed or "
                     f"full-disk write; kept in {sides[0].name}."]
    assert "trial 0: its worker is gone; marked failed and queued again to resume" in again.stderr
    repaired = journal.read_bytes()
    assert repaired.startswith(kept) and repaired.endswith(b"\n")
    assert all(isinstance(json.loads(line), dict) for line in repaired.splitlines())
    best = cli(*sweep_args(data, runs, "--best"))
    assert best.returncode == 0, best.stderr
    assert best.stdout.strip() == str(runs / "s" / "trial-0000")  # the retry resumed trial 0's run folder


def test_the_repair_waits_for_the_journal_lock_and_never_cuts_a_live_append(tmp_path, capsys):
    from optuna.storages.journal import JournalFileOpenLock

    runs = tmp_path / "runs"
    runs.mkdir()
    journal = runs / JOURNAL
    journal.write_bytes(RECORD)
    storage = open_storage(None, runs)
    live = RECORD.replace(b"other", b"live!")
    lock = JournalFileOpenLock(str(journal))
    lock.acquire()  # a live worker in the middle of its append: half of its record is on disk
    journal.write_bytes(RECORD + live[:20])
    appender = threading.Thread(target=storage._backend.append_logs, args=([{"op_code": 1, "study_id": 5}],))
    appender.start()
    time.sleep(0.3)
    assert appender.is_alive() and journal.read_bytes() == RECORD + live[:20]  # waits for the lock
    journal.write_bytes(RECORD + live)  # the live worker finishes its record, then lets go
    lock.release()
    appender.join(10)
    assert journal.read_bytes() == RECORD + live + b'{"op_code":1,"study_id":5}\n'
    assert not list(runs.glob(JOURNAL + ".cut-*")) and capsys.readouterr().err == ""

    journal.write_bytes(RECORD + live[:20])  # a dead worker's half record: nobody holds the lock
    storage._backend.append_logs([{"op_code": 1, "study_id": 6}])
    assert journal.read_bytes() == RECORD + b'{"op_code":1,"study_id":6}\n'
    side, = runs.glob(JOURNAL + ".cut-*")
    assert side.read_bytes() == live[:20]
    assert capsys.readouterr().err == (f"note: dropped a cut-off last record (20 bytes) from {journal}, left by a "
                                       f"killed or full-disk write; kept in {side.name}.\n")


# --------------------------------------------------------------------------- a disk that fills mid-trial


def fill_mid_trial(worker, first: Path, disk: Path, chunk: int) -> None:
    """Freeze the sweep ``worker`` once trial 0 (run folder ``first``) is past its first checkpoints, fill ``disk``
    with writes of ``chunk`` bytes, and let the worker go on."""
    def mid_trial() -> bool:
        try:
            return (first / "checkpoints" / "last.pt").is_file() and len((first / "metrics.csv").read_text()
                                                                        .splitlines()) > 3
        except OSError:
            return False

    conftest.frozen_when(worker, mid_trial, what="trial 0 past its first checkpoints", slice_s=0.3)
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk while the trainer is frozen
    try:  # unbuffered: nothing is left to flush (and fail) when the file is closed
        while True:
            os.write(fd, b"\0" * chunk)
    except OSError:
        pass
    finally:
        os.close(fd)
    worker.send_signal(signal.SIGCONT)


def test_a_disk_that_fills_mid_trial_stops_the_sweep_and_the_trial_resumes_once_there_is_room(tmp_path):
    """The study's folder (its trials' run folders) on a small real disk, filled while trial 0 trains:
    one sentence and exit 2, no traceback, no further trial started on the full disk, and trial 0
    queued to resume; after room is made, the same command resumes it from its checkpoint."""
    from optuna.trial import TrialState

    from mixsep.cli import build_parser
    from mixsep.sweep import counts, load_study, plan

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    args = ["sweep", "--data-root", str(data), "--runs-dir", str(runs), "--study", "s", *TINY[:-4], "--epochs", "100",
            "--trials", "2", "--checkpoint-every", "1", "--report-every", "100"]
    with conftest.tmpfs(runs / "s", "8m") as disk:
        worker = conftest.WarmProcess(args)
        first = disk / "trial-0000"

        fill_mid_trial(worker, first, disk, 65536)
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 2, err
        assert "Traceback" not in err and err.count("error: ") == 1, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: The disk holding ") and line.endswith(  # one sentence (QA: two, at odds)
            ": trial 0 is queued to resume where it stopped; free some space and run the same command."), err
        assert not (disk / "trial-0001").exists()  # no new trial on a full disk
        p = plan(build_parser().parse_args([*args]))
        trials = load_study(p).trials
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
        assert "full" in trials[0].user_attrs["halted"]  # marked, in case the journal had lost the requeue
        assert trials[1].user_attrs["run"] == "s/trial-0000"

        (disk / "filler").unlink()
        done = conftest.WarmProcess(args)
        out, err = done.communicate(timeout=240)
        assert done.returncode == 0, err
        assert counts(load_study(p)) == {"done": 2, "running": 0, "waiting": 0}
        steps = [int(row.split(",")[0]) for row in (first / "metrics.csv").read_text().splitlines()[1:]]
        assert steps == list(range(1, 201))  # resumed from its checkpoint, every step once


@pytest.mark.heavy(10)
def test_a_disk_that_fills_under_the_journal_mid_trial_is_one_sentence_and_the_study_resumes(tmp_path):
    """QA: with the journal on the disk that filled, recording the trial's end failed inside Optuna, which asserted
    over mixsep's sentence: a traceback ending in "AssertionError: Should not reach." and exit 1, a stop's code."""
    from mixsep.cli import build_parser
    from mixsep.sweep import counts, load_study, plan

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    args = ["sweep", "--data-root", str(data), "--runs-dir", str(runs), "--study", "s", *TINY[:-4], "--epochs", "100",
            "--trials", "1", "--checkpoint-every", "1", "--report-every", "100"]
    # the journal's disk fills, not the trial's: the next record, at the trial's end, is the first write refused
    with conftest.tmpfs(runs, "1m") as disk, conftest.tmpfs(runs / "s", "8m"):
        worker = conftest.WarmProcess(args)
        first = disk / "s" / "trial-0000"

        fill_mid_trial(worker, first, disk, 4096)
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 2 and "Traceback" not in err and err.count("error: ") == 1, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: ") and "No space left on device" in line, err
        (disk / "filler").unlink()
        done = conftest.WarmProcess(args)
        out, err = done.communicate(timeout=240)
        assert done.returncode == 0, err
        assert counts(load_study(plan(build_parser().parse_args([*args]))))["done"] == 1


# --------------------------------------------------------------------------- a worker that stalls


def holds_a_lock_on(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds a POSIX lock on ``path`` (SQLite's, mid-transaction): frozen there, it would
    keep the other worker out of the database."""
    inode = os.stat(path).st_ino
    return any(f[4] == str(pid) and f[5].rsplit(":", 1)[-1] == str(inode)
               for f in (line.split() for line in Path("/proc/locks").read_text().splitlines()) if len(f) > 5)


@pytest.mark.heavy(25)
def test_a_stalled_worker_whose_trial_was_taken_over_leaves_it_and_goes_on(tmp_path):
    """Worker a stalls (SIGSTOP) past its heartbeat; worker b, on another machine (its own runs folder), fails
    a's trial and trains the copy. Woken, a crashed at its next trial.report with Optuna's
    UpdateFinishedTrialError (a traceback, exit 1); it must say so in one line, leave the copy and its
    folder to b, stop training its own copy of the trial, and wait for the study to finish."""
    from optuna.trial import TrialState

    from mixsep.cli import build_parser
    from mixsep.run import read_status
    from mixsep.sweep import load_study, plan

    data = make_data_root(tmp_path / "data")
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    env = dict(os.environ, MIXSEP_SWEEP_STORAGE=url)
    args = lambda runs: ["sweep", "--study", "s", "--data-root", str(data), "--runs-dir", str(runs),  # noqa: E731
                         "--heartbeat", "2", "--pruner", "none", *TINY[:-4], "--epochs", "60", "--trials", "1",
                         "--report-every", "1", "--checkpoint-every", "1"]
    runs_a, runs_b = tmp_path / "a", tmp_path / "b"
    a = conftest.WarmProcess(args(runs_a), env=env)
    b = None
    try:
        mine = runs_a / "s" / "trial-0000"
        conftest.frozen_when(a, lambda: (mine / "checkpoints" / "last.pt").is_file() and db.is_file()
                             and not holds_a_lock_on(a.pid, db), what="worker a mid-trial, outside a transaction")
        time.sleep(8)  # past the heartbeat's grace period (3 heartbeats): a's trial is stale
        b = conftest.WarmProcess(args(runs_b), env=env)
        p = plan(build_parser().parse_args([*args(runs_b), "--storage", url]))
        copy = lambda: next((t for t in load_study(p).get_trials(deepcopy=False)  # noqa: E731
                             if t.system_attrs.get("failed_trial") == 0), None)
        theirs = runs_b / "s" / "trial-0000"
        conftest.wait_for(lambda: (theirs / "checkpoints" / "last.pt").is_file() and copy().state == TrialState.RUNNING,
                          120, "worker b training the copy")
        a.send_signal(signal.SIGCONT)
        said = "trial 0: another worker took it over while this one stalled past its heartbeat (it continues as " \
               "trial 1); this worker leaves it to that one and goes on"
        conftest.wait_for(lambda: said in Path(a._err).read_text() or a.poll() is not None, 120, "worker a's line")
        assert said in Path(a._err).read_text(), Path(a._err).read_text()[-3000:]
        if b.poll() is None:  # b still at it: its copy untouched, still b's
            assert copy().state == TrialState.RUNNING and copy().user_attrs["pid"] == b.pid
        out_b, err_b = b.communicate(timeout=300)
        out_a, err_a = a.communicate(timeout=300)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
    assert b.returncode == 0, err_b
    assert a.returncode == 0 and "Traceback" not in err_a and "error" not in err_a, err_a
    trials = load_study(p).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]  # one copy, trained by b
    assert trials[1].user_attrs["pid"] == b.pid and trials[1].user_attrs["run"] == "s/trial-0000"
    status = read_status(mine)
    assert status["state"] == "stopped" and "another worker took trial 0 of sweep 's' over" in status["message"]
    assert "validation" not in status  # a's folder does not claim the trial's result
    assert read_status(theirs)["state"] == "finished" and read_status(theirs)["validation"]["trial"] == 1


# --------------------------------------------------------------------------- successive halving and requeued trials


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_requeued_trial_counts_once_at_the_halving_rungs(data_root, tmp_path):
    """A trial whose worker died is failed and continued by its copy; the failed original kept its
    completed_rung_* values, so at each rung it counted twice (original and copy) against the others, and a
    trial in the top 2 of 8 was pruned as if it were third of 9."""
    from optuna.trial import TrialState

    from mixsep.cli import build_parser
    from mixsep.sweep import create_study, load_study, plan, requeue

    p = plan(build_parser().parse_args(sweep_args(data_root, tmp_path / "runs", "--storage",
                                                  f"sqlite:///{tmp_path / 'study.db'}", "--pruner", "halving",
                                                  "--space", "lr=1e-4:1e-2", "--trials", "20")))
    create_study(p)
    study = load_study(p)  # a real study on SQLite, with the sweep's pruner: rung 0 at step 1, rung 1 at step 4

    def trial(value: float, step: int = 1, prune: bool = True):
        t = study.ask()
        t.report(value, step)
        return t, prune and t.should_prune()

    done, _ = trial(5.0, prune=False)
    study.tell(done, 5.0)  # a complete trial: the pruner's resource unit comes from it
    for value in (10.0, 11.0, 12.0, 13.0, 14.0, 15.0):  # six trials at rung 0, each promoted in turn
        t, pruned = trial(value)
        assert not pruned
        study.tell(t, value)
    dying, pruned = trial(20.0)  # the best at rung 0 ...
    assert not pruned
    study._storage.set_trial_state_values(dying._trial_id, TrialState.FAIL)  # ... when its worker dies
    assert requeue(study, study._storage.get_trial(dying._trial_id))
    copy = study.ask()  # the copy resumes: it reports the steps after its checkpoint
    assert copy.number == dying.number + 1
    copy.report(20.5, 2)
    assert not copy.should_prune()
    assert study._storage.get_trial(copy._trial_id).system_attrs["completed_rung_0"] == 20.0  # carried on
    last = study.ask()
    last.report(19.0, 1)
    reads = []
    get_all_trials = study._storage.get_all_trials
    study._storage.get_all_trials = lambda *a, **k: reads.append(1) or get_all_trials(*a, **k)
    assert not last.should_prune()  # 8 at rung 0 (the copy once): the top 2 go on, and 19 is second
    assert len(reads) == 1  # the pruner reads the trials once, to leave out the continued ones too (twice before)


# --------------------------------------------------------------------------- a trial refused


def test_a_trial_refused_for_its_folder_is_queued_again_not_spent(tmp_path):
    """Trial 1's folder held a config.json that does not read: the trial was failed for good (Optuna's
    traceback on stderr), the sweep ended "finished" with exit 0 and the next runs counted it done. Refused,
    it stops the sweep with one sentence and exit 2, and trains once the folder is fixed."""
    from optuna.trial import TrialState

    from mixsep.cli import build_parser
    from mixsep.sweep import counts, load_study, plan

    data = make_data_root(tmp_path / "data")
    runs = tmp_path / "runs"
    args = sweep_args(data, runs, "--pruner", "none")
    assert cli(*args).returncode == 0  # trial 0
    bad = runs / "s" / "trial-0001"
    bad.mkdir()
    (bad / "config.json").write_text('{"lr": ')  # a half-written config, as a full disk leaves one
    before = tree(runs / "s", skip=("sweep.json",))
    more = [*args, "--trials", "2"]  # the last --trials wins
    refused = cli(*more)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"error: {bad / 'config.json'} is not a readable mixsep config (") and \
        refused.stderr.endswith(". Trial 1 is queued to train again: once that is fixed, run the same command.\n") \
        and refused.stderr.count("\n") == 1, refused.stderr
    assert tree(runs / "s", skip=("sweep.json",)) == before  # the folder left as it was
    p = plan(build_parser().parse_args(more))
    trials = load_study(p).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert "error" not in trials[2].user_attrs and trials[2].user_attrs["run"] == "s/trial-0001"
    assert counts(load_study(p))["done"] == 1  # not spent
    # marked before Optuna's FAIL, so that the copy queued after it may be lost (a kill between the two, the
    # journal's disk full) and the trial still comes back: here the copy's record is cut off
    assert trials[1].user_attrs["halted"] == "stopped"
    conftest.cut_last_record(runs / JOURNAL, op_code=4)
    assert [t.state for t in load_study(p).trials] == [TrialState.COMPLETE, TrialState.FAIL]

    (bad / "config.json").unlink()  # fixed: the same command trains it
    again = cli(*more)
    assert again.returncode == 0, again.stderr
    assert "trial 1: stopped, and its place in the queue was lost with the journal's last record; queued again " \
        "to resume" in again.stderr, again.stderr
    assert counts(load_study(p)) == {"done": 2, "running": 0, "waiting": 0}
    assert load_study(p).trials[-1].state == TrialState.COMPLETE and (bad / "checkpoints" / "last.pt").is_file()


# --------------------------------------------------------------------------- a read-only sqlite storage


def test_a_read_only_sqlite_storage_is_read_by_best_and_refused_by_a_sweep(capsys, tmp_path, monkeypatch):
    """`sqlite:///x.db?mode=ro` ran the sweep read-write: SQLite's driver dropped the query (with a warning
    on stderr) and the study was written. A sweep, which writes, is refused; --best reads it read-only."""
    data = make_data_root(tmp_path / "data")
    runs, db = tmp_path / "runs", tmp_path / "study.db"
    monkeypatch.setenv("MIXSEP_SWEEP_STORAGE", f"sqlite:///{db}")
    assert main(sweep_args(data, runs, "--pruner", "none")) == 0  # a study of one trial
    capsys.readouterr()
    monkeypatch.setenv("MIXSEP_SWEEP_STORAGE", f"sqlite:///{db}?mode=ro")
    before, digest = tree(tmp_path), sha(db)
    assert main(sweep_args(data, runs, "--trials", "2")) == 2
    assert one_error(capsys) == (f"error: sqlite:///{db}?mode=ro opens the database read-only (mode=ro), and a sweep "
                                 "writes its study there; drop '?mode=ro' to run it (--best, which only reads, takes "
                                 "it).")
    assert tree(tmp_path) == before
    assert main(sweep_args(data, runs, "--best")) == 0
    out, err = capsys.readouterr()
    assert out == f"{runs / 's' / 'trial-0000'}\n" and err.startswith("best: trial 0, ") and err.count("\n") == 1, err
    assert sha(db) == digest and tree(tmp_path) == before


@pytest.mark.parametrize("query, says", [
    ("?journal_mode=wal", "has the query option 'journal_mode', which a SQLite storage does not take (its driver "
                          "would ignore it); drop it: one takes mode=ro|rw|rwc and timeout=SECONDS."),
    ("?mode=ro&uri=true", "has the query option 'uri', which a SQLite storage does not take"),  # a file 'x.db?mode=ro'
    ("?mode=memory", "has mode=memory; a SQLite storage takes mode=ro (read-only), rw or rwc (read-write)."),
    ("?timeout=soon", "has timeout=soon; give the seconds a worker waits for another's write, such as timeout=30."),
])
def test_a_sqlite_query_option_that_would_not_take_effect_is_one_sentence(capsys, tmp_path, monkeypatch, query, says):
    data = make_data_root(tmp_path / "data")
    monkeypatch.setenv("MIXSEP_SWEEP_STORAGE", f"sqlite:///{tmp_path / 'study.db'}{query}")
    before = tree(tmp_path)
    assert main(sweep_args(data, tmp_path / "runs")) == 2
    assert one_error(capsys).startswith(f"error: sqlite:///{tmp_path / 'study.db'}{query} {says}")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("mode, best", [("rw", False), ("rw", True), ("ro", True)])
def test_a_sqlite_storage_that_opens_only_an_existing_file_names_the_missing_file(capsys, tmp_path, monkeypatch,
                                                                                 mode, best):
    """`?mode=rw` (or ro) on a file that is not there: the sweep said only "unable to open database file", and
    --best "There is no study", of a database that does not exist."""
    data = make_data_root(tmp_path / "data")
    db = tmp_path / "study.db"
    monkeypatch.setenv("MIXSEP_SWEEP_STORAGE", f"sqlite:///{db}?mode={mode}")
    before = tree(tmp_path)
    assert main(sweep_args(data, tmp_path / "runs", *(["--best"] if best else []))) == 2
    fix = "" if best else f", or drop '?mode={mode}' to make a new one"
    assert one_error(capsys) == (f"error: There is no database file {db}, and sqlite:///{db}?mode={mode} opens only "
                                 f"one that is there (mode={mode}); name the database of an earlier sweep{fix}.")
    assert tree(tmp_path) == before


def test_a_fifo_named_sweep_json_is_unreadable_not_waited_on(tmp_path):
    """A FIFO named sweep.json in a study folder blocked live_sweeps for good, inside the Sweep registry's lock:
    every later Sweep page, the Train page's Start and Compare's Delete hung until the server restarted."""
    from mixsep.run import delete_run
    from mixsep.sweep import SweepRegistry

    runs = tmp_path / "runs"
    (runs / "evil").mkdir(parents=True)
    os.mkfifo(runs / "evil" / "sweep.json")
    (runs / "gone").mkdir()
    got = conftest.not_waiting_on(runs / "evil" / "sweep.json",
                                  lambda: dict(live=SweepRegistry(runs).running(), deleted=delete_run(runs, "gone")))
    assert got == {"live": None, "deleted": (runs / "gone").resolve()}
