"""The dashboard's training worker: one child process at a time per runs folder.

Why a child process running ``python -m mixsep train --config ... --run-dir ...``
rather than a thread in the Streamlit server:

- Isolation. A crash, an out-of-memory kill or a CUDA error ends the child, never
  the server; the registry notices the dead child and writes why into the run folder.
- Responsiveness. On a 2-core machine a training thread would share the server's
  interpreter (and its GIL between torch calls) with the script threads that draw
  the pages; a separate process is scheduled apart, so pages stay quick.
- One code path. The child *is* the CLI: the dashboard trains, resumes
  (``checkpoints/last.pt``) and stops (SIGTERM or the ``STOP`` file: finish the
  step, checkpoint, state "stopped") exactly as ``python -m mixsep train`` does.
- The run folder is the source of truth. The child writes config.json,
  metrics.csv and status.json; the registry keeps only the ``Popen`` handle, to
  know whether the child still lives. A page reload, a second tab or a restarted
  server reads the same folder, and a restarted server finds a child that still
  trains through status.json's pid (it "adopts" it).

The registry is a plain object guarded by a lock, because every browser tab's
script thread may call it at once. The dashboard keeps one per runs folder in
``st.cache_resource``, so all sessions of a server share it. This module never
imports streamlit. A child started here shares the server's process group, so a
Ctrl-C in the server's terminal also reaches the child, which then stops cleanly
after its current step with a checkpoint that can be resumed.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .errors import MixsepError
from .run import LOG as LOG_NAME  # the child's stdout and stderr, inside its run folder
from .run import CONFIG, STOP, RunWriteError, State, check_layout, check_runs_dir, delete_run, describe_os_error, \
    last_error, last_logged_step, live_status, lock_holder, read_status, remove_unstarted, request_stop, run_name, \
    trainer_alive, write_json, write_status
from .runs import live_runs


@dataclass
class JobState:
    """What a page shows about the current (or last) job."""

    run_dir: Path | None = None
    state: str = "idle"        # idle, starting, running, finished, stopped, failed
    message: str = ""
    step: int = 0
    total_steps: int = 0
    alive: bool = False        # the child process still runs
    warnings: list[str] = field(default_factory=list)  # the child's warnings, from status.json
    stopping: bool = False     # alive, and asked to stop (from any tab): it ends after its current step
    removed: bool = False      # a new run refused before its first step (bad data, say): its folder was removed,
                               # as train's is, and ``message`` is its trainer's sentence

    @property
    def name(self) -> str:
        return self.run_dir.name if self.run_dir else ""


def child_env(base: dict | None = None) -> dict:
    """The environment of a ``python -m mixsep`` child of the dashboard: it imports the mixsep this process runs.

    Streamlit puts the app's folder first on the server's import path, so the server runs the checkout beside
    dashboard.py; a child started in another folder found another copy first (an installed wheel), and trained
    with code the pages did not show. The folder holding this package goes first on the child's PYTHONPATH.
    """
    env = dict(os.environ if base is None else base, PYTHONUNBUFFERED="1")
    here = Path(__file__).resolve().parents[1]
    if here.name not in ("site-packages", "dist-packages"):  # an installed mixsep is found there anyway, and the
        # folder ahead of the standard library would put every package in it there too
        env["PYTHONPATH"] = os.pathsep.join([str(here), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    return env


class JobRegistry:
    """Start, stop and poll the one training child of a runs folder."""

    def __init__(self, runs_dir: Path, python: str = sys.executable, env: dict | None = None):
        self.runs_dir = Path(runs_dir).resolve()
        self.python = python
        self.env = env
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._pid: int | None = None       # the live child's pid, ours or adopted
        self._identity: dict | None = None # an adopted child's {"pid", "pid_start"}: re-checked before any signal
        self._run_dir: Path | None = None  # the current or last job's folder
        self._made: Path | None = None     # the current job's folder when start() made it for a new run
        self._removed: JobState | None = None  # the last job, refused before its first step, its folder removed
        self._stop_requested = False

    # ------------------------------------------------------------------ queries

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._identity is not None and trainer_alive(self._run_dir, self._identity)

    def _adopt(self) -> None:
        """After a server restart: take over a child that still trains in this runs folder."""
        if self._alive():
            return
        for run_dir, status in live_runs(self.runs_dir):
            if int(status["pid"]) == os.getpid():
                continue  # a run trained in this very process (a notebook, a test) is not a child to manage
            if "/" in run_name(self.runs_dir, run_dir):
                continue  # a sweep's trial belongs to its sweep process, not to the Train page
            self._proc, self._pid, self._run_dir = None, int(status["pid"]), run_dir
            self._identity = {"pid": status["pid"], "pid_start": status.get("pid_start")}
            self._stop_requested, self._made, self._removed = False, None, None
            return

    def running(self) -> JobState | None:
        """The live job, or None."""
        with self._lock:
            self._adopt()
            if self._alive():
                return self.poll()
            if self._made is not None:  # a new run just ended: one refused before its first step goes now,
                self.poll()             # before any page lists it
            return None

    def poll(self) -> JobState:
        """The current or last job's state, read from its run folder.

        When the child has died without saying so in status.json (killed, crashed,
        or failed before training began), this records why there, once.
        """
        with self._lock:
            self._adopt()
            if self._run_dir is None:
                return JobState()
            owned = self._proc is not None or self._pid is not None  # not a run merely selected for display
            return self._state(self._run_dir, owned, self._alive())

    def view(self, run_dir: Path) -> JobState:
        """The state of any run of this runs folder, for a page showing it: this registry's own job as
        ``poll`` gives it, another run as read from its folder (without making it the current job, so a
        tab looking at an older run does not change what the other tabs show)."""
        with self._lock:
            self._adopt()
            run_dir = Path(run_dir).resolve()
            if run_dir == self._run_dir:
                return self.poll()
            return self._state(run_dir, False, None)

    def _state(self, run_dir: Path, owned: bool, alive: bool | None) -> JobState:
        """``alive`` None: another run than this registry's, alive while live_status reads it running."""
        if owned and self._removed is not None and self._removed.run_dir == run_dir:
            return self._removed
        if not run_dir.is_dir():
            if alive:  # not "failed" yet: its trainer runs on until its next write finds the folder gone
                return JobState(run_dir, "running", f"The run folder {run_dir} was deleted while it trained; its "
                                "trainer stops at its next checkpoint, or now with Stop.", alive=True,
                                stopping=owned and self._stop_requested)
            return JobState(run_dir, "failed", f"The run folder {run_dir} was deleted.")
        # a run merely selected whose trainer died with the server (a crash, an OOM kill) reads "interrupted", and
        # so does an adopted one (a terminal's train, or the child of a server since restarted): only a child this
        # server started has its death recorded here, in its worker.log's words; an adopted one is not this
        # server's to write for (a terminal's has no worker.log, and its state hung on whether a page looked)
        child = owned and self._proc is not None
        status = read_status(run_dir) if child else live_status(run_dir)
        # a resume its trainer refused before it touched the run (its data root gone, say): exit 2 and a status.json
        # not its own. The run stays as it was ("stopped", or "interrupted" after a kill, which is no death of this
        # child's to record), and why the click did nothing is said from the trainer's last line, in worker.log
        refused = (child and not alive and self._made != run_dir and self._proc.returncode == 2
                   and status.get("pid") != self._pid)
        if refused:
            status = live_status(run_dir)
        if alive is None:  # trained by another process (a terminal's train, when this registry has a child)
            alive = status.get("state") == State.RUNNING
        if owned and not alive and self._made == run_dir:
            self._made = None  # its end is settled once
            if self._remove_refused(run_dir, status):
                return self._removed
        if child and not alive and not refused and status.get("state") in (State.UNKNOWN, State.RUNNING, None):
            self._record_death(run_dir, status)
            status = read_status(run_dir)
        state = status.get("state", "unknown")
        if owned and alive and (state == "unknown" or status.get("pid") != self._pid):
            state = "starting"  # a resumed run's status.json is its last trainer's until this one writes
        msg = status.get("message", "") if state not in ("starting", "running") else ""
        if refused:
            said = last_error(run_dir / LOG_NAME)
            msg = f"Resume refused: {said}" if said else msg
        step = _step(run_dir, status)
        warns = status.get("warnings") if isinstance(status.get("warnings"), list) else []
        return JobState(run_dir, state, msg, step, int(status.get("total_steps") or 0), alive,
                        [str(w) for w in warns], stopping=owned and alive and self._stop_requested)

    def _remove_refused(self, run_dir: Path, status: dict) -> bool:
        """A new run whose trainer refused it before its first step and said why: its folder goes, as ``train``
        removes the folder it made (the same code), and the sentence is kept here for the page. The trainer says
        why in status.json (its data damaged, say) or, refused before it opened the folder (a runs folder inside
        another run's, say), which it then never writes, only in its last line, ``error: ...``, with exit code 2.
        A crash (a traceback in worker.log), a kill or a stop keeps it."""
        if status.get("state") == State.FAILED and status.get("pid") == self._pid:
            said = str(status.get("message") or "")
        elif (status.get("state") == State.UNKNOWN and not self._stop_requested and self._proc is not None
              and self._proc.returncode == 2):
            said = last_error(run_dir / LOG_NAME)
        else:
            return False
        if (said is None or _step(run_dir, status) or lock_holder(run_dir) is not None
                or not remove_unstarted(run_dir, run_dir)):
            return False
        self._removed = JobState(run_dir, State.FAILED.value, said, removed=True)
        return True

    def _record_death(self, run_dir: Path, status: dict) -> None:
        code = self._proc.returncode if self._proc is not None else None
        step = _step(run_dir, status)
        # status.json's step is its newest checkpoint's (the trainer records it with each one), where a resume
        # continues; it stays that, as the trainer's own failures keep it: steps logged since are done again
        saved = int(status.get("step") or 0)
        # a child that failed with a sentence recorded it in status.json itself: this is for the others
        if self._stop_requested:
            write_status(run_dir, State.STOPPED, "stopped by request before training began" if step == 0
                         else "stopped by request", step=saved, total_steps=status.get("total_steps", 0))
            return
        how = (f"was killed by signal {-code}" if code is not None and code < 0
               else f"exited with code {code}" if code is not None else "is gone")
        resume = (f"Resume the run from its last checkpoint (step {saved}) or start a new one." if saved else
                  "It wrote no checkpoint, so a resume starts from step 0; or start a new run.")
        error = f"The training process {how} at step {step}; its output is in {run_dir / LOG_NAME}. {resume}"
        write_status(run_dir, State.FAILED, error, step=saved, total_steps=status.get("total_steps", 0), error=error)

    # ------------------------------------------------------------------ actions

    def start(self, config: TrainConfig | None = None, run_dir: Path | None = None,
              data_root: Path | None = None) -> Path:
        """Start training ``config`` into a new run folder, or resume ``run_dir``.

        ``data_root``: the server's, which a resumed run reads where its own data root is not a folder on this
        machine (a run copied from another), as `train --run-dir` reads MIXSEP_DATA_ROOT then.
        Raises MixsepError when a job already runs (from any tab), or when the config
        or run folder is unusable; nothing is started then.
        """
        with self._lock:
            live = self.running()
            if live is not None:
                raise MixsepError(f"A training run is already in progress ({live.name}, step {live.step}/"
                                  f"{live.total_steps or '?'}); one run at a time: stop it or wait for it to finish.")
            from .sweep import live_sweeps
            from .train import check_fits, new_run_dir, read_resume_point  # torch: a page that lists runs needs none

            sweeps = live_sweeps(self.runs_dir)
            if sweeps:
                raise MixsepError(f"Sweep '{Path(sweeps[0]['folder']).name}' is running in this runs folder; one sweep "
                                  "or training at a time: stop it on the Sweep page or wait for it to finish.")
            made = None  # the run folder this start makes (removed again if the start fails)
            if run_dir is not None:
                run_dir = Path(run_dir).resolve()
                try:
                    run_name(self.runs_dir, run_dir)
                except ValueError:
                    raise MixsepError(f"{run_dir} is not a run in {self.runs_dir}.") from None
                holder = lock_holder(run_dir)  # a terminal's resume still loading: its status.json says nothing yet
                if holder is not None:  # (its child was refused in worker.log only, and STOP, meant for it, was lost)
                    raise MixsepError(f"Run {run_dir.name} is already being trained by process {holder.get('pid', '?')} "
                                      "(a command started elsewhere); wait for it to end or stop it first.")
                config = TrainConfig.load(run_dir / "config.json", of_run=True).validate()
                # a damaged last.pt: said on the page, not only in worker.log (a look: the child reads it whole)
                state = read_resume_point(run_dir, peek=True)
                if state is not None:
                    check_fits(run_dir, state, config.model)
                # what the child would be refused for, said here (QA: a folder named STOP, or a read-only run
                # folder, raised out of the unlink below: a traceback on the page, then no word at all)
                check_layout(run_dir)
                if not os.access(run_dir, os.W_OK | os.X_OK):
                    raise MixsepError(f"Run {run_dir.name} is not writable (a read-only folder or disk), so it "
                                      "cannot train on; make it writable to resume it.")
                try:
                    (run_dir / STOP).unlink(missing_ok=True)
                except OSError as e:
                    raise MixsepError(f"Run {run_dir.name} cannot resume: its {STOP} file cannot be removed "
                                      f"({e.strerror}).") from None
            else:
                if config is None:
                    raise MixsepError("Nothing to start: give a config or a run folder to resume.")
                # an absolute data root makes the run folder reproducible from any working directory
                config = dataclasses.replace(config, data_root=str(Path(config.data_root).resolve())).validate()
                from .data import require_split

                require_split(Path(config.data_root), "train")  # no run folder for a run that cannot load its data
                check_runs_dir(self.runs_dir)  # not in a run's or a study's folder
                made = run_dir = new_run_dir(self.runs_dir, config)
            cmd = [self.python, "-m", "mixsep", "train", "--config", str(run_dir / "config.json"),
                   "--run-dir", str(run_dir), "--quiet"]
            env = child_env(self.env)
            if data_root is not None:
                env["MIXSEP_DATA_ROOT"] = str(Path(data_root).resolve())
            try:  # a full or read-only disk: one sentence, and no half-made run folder left to list
                if made is not None:
                    write_json(run_dir / CONFIG, config.to_dict())
                with open(run_dir / LOG_NAME, "ab") as log:
                    self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, env=env)
            except (OSError, RunWriteError) as e:
                if made is not None:
                    shutil.rmtree(made, ignore_errors=True)
                why = str(e).rstrip(".") if isinstance(e, RunWriteError) else describe_os_error(e, run_dir / LOG_NAME)
                raise MixsepError(f"{why}; nothing was started.") from None
            self._pid, self._run_dir, self._stop_requested = self._proc.pid, run_dir, False
            self._identity, self._made, self._removed = None, made, None
            return run_dir

    def stop(self) -> bool:
        """Ask the live job to stop after its current step; False when none runs."""
        with self._lock:
            if self.running() is None:
                return False
            self._stop_requested = True
            try:
                request_stop(self._run_dir)  # works for an adopted child too
            except OSError:  # its folder was deleted (or went read-only) under it: the signal below still reaches it
                pass
            # also reaches a child still loading data; an adopted pid is signalled only while it is
            # still the very process that wrote status.json (pid and start time) and holds the run's lock
            if self._proc is not None or self._alive():
                try:
                    os.kill(self._pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            return True

    def wait(self, timeout: float = 60.0, interval: float = 0.1) -> JobState:
        """Block until the job ends (for tests and scripts; pages poll instead)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running() is None:
                return self.poll()
            time.sleep(interval)
        raise TimeoutError(f"training job still running after {timeout} s")

    def delete(self, name: str) -> Path:
        """Delete run ``name`` (or a group of runs) as ``run.delete_run`` does, also refusing the run this
        registry has just started or resumed: its child holds no lock yet while Python and torch load."""
        with self._lock:
            target = (self.runs_dir / name).resolve()
            if self._alive() and self._run_dir is not None and self._run_dir.is_relative_to(target):
                raise MixsepError(f"Run '{run_name(self.runs_dir, self._run_dir)}' is training now (or starting); "
                                  "stop it before deleting it.")
            return delete_run(self.runs_dir, name)

    def select(self, run_dir: Path) -> None:
        """Show this run as the 'last job' when nothing runs (e.g. after a server restart)."""
        with self._lock:
            if not self._alive():
                self._proc, self._pid, self._identity, self._run_dir = None, None, None, Path(run_dir).resolve()
                self._made = self._removed = None


def _step(run_dir: Path, status: dict) -> int:
    """The latest step: the checkpoint's (status.json) or a logged one past it (metrics.csv's tail only:
    pages poll this every few seconds)."""
    return max(int(status.get("step") or 0), last_logged_step(run_dir))


