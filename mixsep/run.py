"""The run folder: the one module that knows its layout, its states, its lock and its writes.

A run is one folder (the contract between the trainer, the CLI, the dashboard and the
benchmarks):

  config.json            the TrainConfig, enough to reproduce the run
  status.json            state, message, step, total_steps, the trainer's identity, warnings
  metrics.csv            one row per step, each step exactly once and in order
  checkpoints/last.pt    model + optimiser + progress, for resume
  checkpoints/epoch-E.pt model + config after each epoch
  STOP                   written by anyone who wants the run to stop after its current step
  .lock                  flock()ed by the trainer for its whole life
  worker.log             the dashboard child's output (for people; nobody parses it)

Rules (SQLite's and Git's write-new-then-rename discipline):
- Every rewrite is atomic: a temp file in the same folder, flush + fsync, os.replace, so a
  reader sees the old file or the new one, never half of one. A failed write (a full disk,
  a kill) removes its temp file, or the next trainer removes it under the lock.
- Only the holder of ``.lock`` writes status, metrics and checkpoints; a second trainer on
  the same folder is refused with the holder's name.
- Readers never crash on a damaged folder: they report "unknown" or skip the row.
- A "running" status names its trainer by pid AND the process's start time: a pid reused
  by another process after a crash is never taken for the trainer, never signalled.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import enum
import errno
import fcntl
import functools
import io
import json
import math
import os
import re
import stat
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .config import JSON_LIMIT
from .errors import MissingCheckpoint, MixsepError, ResumeRefused, make_folder, os_error_in

CONFIG, STATUS, METRICS, STOP, LOCK, LOG = "config.json", "status.json", "metrics.csv", "STOP", ".lock", "worker.log"
CHECKPOINTS, LAST = "checkpoints", "last.pt"
TMP_SUFFIX = ".tmp"
CHECKPOINT_VERSION = 1
METRIC_FIELDS = ["step", "epoch", "loss_mnist", "loss_cifar", "loss", "lr", "samples_per_s", "elapsed_s"]


class State(enum.StrEnum):
    """A run's state as status.json records it (plus the two that readers derive)."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # derived: "running" on disk, but its trainer is gone
    UNKNOWN = "unknown"          # derived: status.json missing or unreadable

    @property
    def ended(self) -> bool:
        return self in (State.FINISHED, State.STOPPED, State.FAILED, State.INTERRUPTED)


WRITTEN_STATES = (State.RUNNING, State.FINISHED, State.STOPPED, State.FAILED)  # those a trainer writes in status.json


class RunWriteError(MixsepError):
    """A write into the run folder failed (disk full, permissions); the previous file is intact."""

    def __init__(self, message: str, errno_: int | None = None, head: str | None = None, cause: str | None = None):
        super().__init__(message)
        self.errno = errno_
        self.head = head  # the message before its closing advice (a trainer's: "...; rows up to step N are kept")
        self.cause = cause or message.rstrip(".")  # what failed, without what the write kept ("the disk is full...")

    @property
    def advice(self) -> str:
        """What a user does before resuming."""
        return self.advice_to("resume")

    def advice_to(self, then: str) -> str:
        """What a user does before ``then`` (resuming; running the command again, where the run was removed)."""
        if self.errno == errno.ENOSPC:
            return f"free some space and {then}"
        if self.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"make the run folder writable and {then}"
        return f"{then} once the cause is mended"


# --------------------------------------------------------------------------- atomic writes


def describe_os_error(e: OSError, path: Path) -> str:
    if e.errno == errno.ENOSPC:
        return f"The disk holding {path.parent} is full, so {path.name} could not be written"
    if e.errno == errno.ENOENT and not path.parent.exists():
        return f"The folder {path.parent} was moved or deleted, so {path.name} could not be written"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path.parent} is not writable, so {path.name} could not be written"
    return f"Could not write {path} ({e.strerror or e.__class__.__name__})"


def temp_path(path: Path) -> Path:
    """Where a write of ``path`` goes before its rename: hidden beside it, named by this process."""
    return path.parent / f".{path.name}.{os.getpid()}{TMP_SUFFIX}"


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(binary_file)`` so readers see the old or the new file only.

    Raises RunWriteError with one sentence on any OSError (also one that another error hid); the temp file is removed then
    (and after a KeyboardInterrupt), so a failed write leaves nothing behind.
    """
    path = Path(path)
    tmp = temp_path(path)
    existed = path.is_file()
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        cause = os_error_in(e)  # torch.save's zip writer raises RuntimeError over a full disk's OSError
        if cause is not None:
            said = describe_os_error(cause, path)
            raise RunWriteError(said + ("; the previous version is kept." if existed else "."), cause.errno,
                                cause=said) from None
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` survive a power cut (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_all(files, made: Path | None = None, overwrite: bool = True) -> None:
    """Write every ``(path, bytes)`` of ``files`` or, with one sentence, none (separate's images,
    evaluate's JSON and Markdown, grid's PNG): each is written whole under a temporary name beside it, and all
    are renamed only once every one is written (a full disk halfway once left 10 of 40). A failure removes
    the temporary files, and the folder ``made`` for the outputs if it is empty then. ``files`` may be
    a generator: each file's bytes are made only when it is written.

    Without ``overwrite`` a name that exists by then is not replaced: each file is put in place by a hard
    link, which the kernel refuses over an existing name. The commands check their outputs before any work,
    but two commands run at once with the same outputs both passed that check, and the later one's renames
    replaced the other's files, both saying they wrote them. Then the names this call put in place are
    removed again and it says why: all written, or none."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            staged.append((temp_path(path), path))
            with open(staged[-1][0], "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException as e:
        _discard([tmp for tmp, _ in staged], made)
        if isinstance(e, OSError) and staged:
            raise MixsepError(describe_os_error(e, staged[-1][1]) + "; nothing was written.") from None
        raise
    placed: list[tuple[Path, int]] = []  # without overwrite: the names put in place, by their files' inodes
    with signals_held():  # a Ctrl-C or SIGTERM here waits until every name is in place: all written, or none
        for n, (tmp, path) in enumerate(staged):
            try:
                if overwrite or not _put_new(tmp, path, placed):
                    os.replace(tmp, path)
            except FileExistsError:  # another command wrote it since this one checked: take back what was put
                for put, inode in placed:
                    with contextlib.suppress(OSError):
                        if os.lstat(put).st_ino == inode:  # still ours (not a later --overwrite's)
                            os.unlink(put)
                _discard([left for left, _ in staged[n:]], made)
                raise MixsepError(f"{path} exists already: something wrote it while this command ran, so nothing "
                                  "was written; pass --overwrite to replace it, or choose another output.") from None
            except BaseException as e:
                _discard([left for left, _ in staged[n:]], made if n == 0 else None)
                if not isinstance(e, OSError):
                    raise
                said = "; nothing was written." if n == 0 else "; the outputs named before it were written."
                raise MixsepError(describe_os_error(e, path) + said) from None
    for folder in {path.parent for _, path in staged}:
        sync_folder(folder)


@contextlib.contextmanager
def signals_held():
    """Hold a Ctrl-C or SIGTERM back for the block (a few renames): it is raised again, once, after it. In the
    main thread only, where Python runs signal handlers; elsewhere the block's own clean-up has to do."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in before.items():
        if handler is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for s, handler in before.items():
            if handler is not None:
                signal.signal(s, handler)
        if got:
            signal.raise_signal(got[0])


def _put_new(tmp: Path, path: Path, placed: list[tuple[Path, int]]) -> bool:
    """Give ``tmp``'s file the name ``path`` only if no file has it (FileExistsError if one has), and drop the
    temporary name; False where the file system makes no hard links (the caller renames, as with overwrite:
    the check made before any work stands alone there)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            return False
        raise
    placed.append((path, os.lstat(path).st_ino))
    os.unlink(tmp)
    return True


def _discard(temps: list[Path], made: Path | None) -> None:
    """Remove what a failed write left: its temporary files, and the folder ``made`` for it if that is
    empty now. Never raises: the disk that failed the write (read-only, gone) may fail these too, and the
    sentence saying why the write failed is the one to show."""
    unlink_all(temps)
    if made is not None:
        try:
            made.rmdir()  # only if empty: a file someone put there meanwhile stays, with the folder
        except OSError:
            pass


def write_json(path: Path, obj) -> None:
    """Standard JSON (json_bytes), atomically."""
    atomic_write(path, lambda f: f.write(json_bytes(obj)))


def json_bytes(obj) -> bytes:
    """Standard JSON: a non-finite number (the PSNR of two equal images, the interval of one image) is
    written as null, where Python's NaN and Infinity are not JSON that other readers accept."""
    return json.dumps(_finite(obj), indent=2, allow_nan=False).encode()


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Temp files of writers that died (call only while holding the run's lock)."""
    run_dir = Path(run_dir)
    found = [*run_dir.glob(f"*{TMP_SUFFIX}"), *run_dir.glob(f".*{TMP_SUFFIX}"),
             *(run_dir / CHECKPOINTS).glob(f"*{TMP_SUFFIX}"), *(run_dir / CHECKPOINTS).glob(f".*{TMP_SUFFIX}")]
    return unlink_all(dict.fromkeys(found))


def unlink_all(paths) -> list[Path]:
    """Remove what can be removed; returns what was."""
    removed = []
    for p in paths:
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------- names and folders

NAME_CHARS = "ASCII letters (a-z, A-Z), digits, spaces, '.', '_' and '-'"  # what a run or study name is made of
NAME_MAX = 128  # characters in a run's name (a part of it: GROUP/NAME)


def name_fault(part: str) -> str:
    """What keeps ``part`` from naming one folder of the runs folder (a run, a study, a group), as advice for the
    sentence that refuses it ("no '..' inside it"), or '' for a good name. The one rule of run and study names."""
    allowed = f"use {NAME_CHARS}, starting with a letter or digit"
    odd = sorted({c for c in part if not (c.isascii() and (c.isalnum() or c in " ._-"))})
    if odd:
        return f"{allowed} ({' '.join(repr(c) for c in odd[:5])} {'is' if len(odd) == 1 else 'are'} not among them)"
    if not part or not (part[0].isascii() and part[0].isalnum()):
        return allowed
    if len(part) > NAME_MAX:
        return f"keep it to {NAME_MAX} characters (it has {len(part)})"
    if ".." in part:
        return "no '..' inside it"
    if part != part.strip():
        return "no space at its end"
    return ""


def shown_name(name: str, most: int = NAME_MAX) -> str:
    """A name as a sentence quotes it, cut to ``most`` characters (a valid name is never cut): a link's ?run= of
    5,000 characters filled the page's error box with a hundred lines."""
    return name if len(name) <= most else f"{name[:most]}… ({len(name)} characters)"


def resolve_run(runs_dir: Path, name: str) -> Path:
    """The folder of run ``name`` inside runs_dir ("NAME" or "GROUP/NAME", e.g. a sweep's trial).

    Refuses names that would leave the runs folder, also through a symlink.
    """
    parts = name.split("/") if isinstance(name, str) else []
    fault = next(filter(None, map(name_fault, parts)), "") if 1 <= len(parts) <= 2 else \
        f"use {NAME_CHARS}, and one '/' for a run inside a group"
    if fault:  # its own fault: "-dash" was told to use characters it used, not to start with a letter (QA)
        raise MixsepError(f"'{shown_name(name) if isinstance(name, str) else name}' is not a valid run name: "
                          f"{fault}.")
    root = Path(runs_dir).resolve()
    path = (root / name).resolve()
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise MixsepError(f"'{shown_name(name)}' points outside the runs folder {root}; it is not shown.") from None
    if rel.parts != tuple(parts):
        raise MixsepError(f"'{name}' is a link to another place in the runs folder; open that run by its own name.")
    return path


def run_name(runs_dir: Path, run_dir: Path) -> str:
    """The inverse of resolve_run: the name of a folder inside runs_dir."""
    return Path(run_dir).resolve().relative_to(Path(runs_dir).resolve()).as_posix()


def is_run(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def is_mixsep_run(path: Path) -> bool:
    """A folder mixsep trained in: a config.json, and a status.json in a state mixsep writes (a project's own
    config.json and status.json are not a run)."""
    return is_run(path) and read_status(path).get("state") in WRITTEN_STATES


def in_checkpoints(path: Path, this_run: Path | None = None) -> bool:
    """Whether ``path`` (a resolved file or folder) lies in a run's checkpoints folder, which only training
    writes: of a run folder, or of ``this_run`` (a command's own run, also when its config.json is lost)."""
    return any(f.name == CHECKPOINTS and (f.parent == this_run or is_run(f.parent)) for f in (path, *path.parents))


def run_folders(runs_dir: Path) -> list[Path]:
    """Every run folder in runs_dir, one group level deep, that resolve_run accepts (newest first)."""
    return _scan(runs_dir)[0]


class Unlisted(NamedTuple):
    """The run folders (config.json inside) that run_folders leaves out, by name, and why."""

    names: list[str]    # names the pages cannot use (x:y, .hidden): a rename lists them
    outside: list[str]  # behind a link, the run's own or its group's, that leads out of the runs folder
    deep: list[str]     # more than one group folder down (grp/sub/run), DEEP_LOOK folders down at most


def unlisted_runs(runs_dir: Path) -> Unlisted:
    """The run folders that run_folders leaves out, by name and why (a link to a run inside the runs folder
    is none: that run is listed by its own name)."""
    return Unlisted(*_scan(runs_dir, look_deep=True)[1:])


DEEP_LOOK = 3  # how many folders below the runs folder the look for unlisted runs goes (the Home page polls it)


def _scan(runs_dir: Path, look_deep: bool = False) -> tuple[list[Path], list[str], list[str], list[str]]:
    """(the runs listed, the names the pages cannot use, those behind a link out, and with ``look_deep`` those more
    than one group folder down: only Home names them, and the run list is polled every few seconds)."""
    root = Path(runs_dir)
    found, odd, outside, deep = [], [], [], []
    try:
        children = list(root.iterdir()) if root.is_dir() else []
        real_root = root.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, before Python 3.13
        return [], [], [], []
    for child in children:
        candidates = [child]
        try:
            if child.is_dir() and not is_run(child):
                candidates = [g for g in child.iterdir()]
        except OSError:
            continue
        for p in candidates:
            name = p.relative_to(root).as_posix()
            try:
                if not (p.is_dir() and is_run(p)):
                    if look_deep and p is not child and not (child.is_symlink() or p.is_symlink()
                                                             or _other_runs_dir(child)):
                        deep += _deeper_runs(root, p, DEEP_LOOK - 2)  # a group's: runs further down?
                    continue
                resolve_run(root, name)
            except (OSError, MixsepError, ValueError, RuntimeError):  # odd names and links: not shown, said why
                try:
                    where = p.resolve().relative_to(real_root).parts
                except ValueError:
                    outside.append(name)
                except (OSError, RuntimeError):
                    pass
                else:  # a link to a run inside is listed by that run's own name; a real folder by no name
                    if where == tuple(name.split("/")):
                        odd.append(name)
                continue
            try:
                found.append((p.stat().st_mtime, p))
            except OSError:  # deleted meanwhile
                pass
    found.sort(key=lambda t: t[0], reverse=True)
    return [p for _, p in found], sorted(odd), sorted(outside), sorted(deep)


def _other_runs_dir(folder: Path) -> bool:
    """A folder a sweep used as its runs folder (its journal inside): its trials belong to that journal, which names
    them from there, so moving one up (the deep runs' mend) would take it from its study."""
    from .sweep import JOURNAL

    return (folder / JOURNAL).exists()


def _deeper_runs(root: Path, folder: Path, depth: int) -> list[str]:
    """The names of the run folders in ``folder`` (no run itself), up to ``depth`` folders down. Links are not
    followed (a link to a run inside is listed by that run's name), and no run or checkpoints folder is entered:
    the look stays cheap, and a run inside a run is no run (train refuses one)."""
    if depth < 1 or folder.name == CHECKPOINTS or _other_runs_dir(folder):
        return []
    try:
        subs = [f for f in folder.iterdir() if f.is_dir() and not f.is_symlink()]
        runs = {f for f in subs if is_run(f)}
    except OSError:  # unreadable, or deleted meanwhile: nothing to name
        return []
    names = [f.relative_to(root).as_posix() for f in runs]
    for f in subs:
        if f not in runs:
            names += _deeper_runs(root, f, depth - 1)
    return names


def _runs_dir_is_a_file(runs_dir: Path) -> MixsepError:
    return MixsepError(f"The runs folder {runs_dir} is a file; choose another --runs-dir.")


def run_lives_in(folder: Path) -> bool:
    """Whether a run lives in ``folder``, for the checks of a runs folder and of a --run-dir's parents: its lock is
    held, or its config.json (naming a mixsep setting, or damaged) sits beside a file whose content only mixsep
    writes: a status.json in a state mixsep writes, a metrics.csv with mixsep's header, a checkpoint (last.pt,
    epoch-E.pt). A project's own config.json (naming no mixsep setting) is no run whatever lies beside it, nor is a
    user's settings file named config.json beside a folder named checkpoints, a metrics.csv of its own or a log."""
    if lock_holder(folder) is not None:
        return True
    if not is_run(folder):
        return False
    from .config import TrainConfig

    try:
        d = json.loads(read_regular(folder / CONFIG, JSON_LIMIT))
    except (OSError, ValueError, RecursionError, MixsepError):
        d = None  # damaged: what lies beside it decides
    if d is not None and not (isinstance(d, dict) and any(f.name in d for f in dataclasses.fields(TrainConfig))):
        return False
    if is_mixsep_run(folder):
        return True
    try:
        with open_regular(folder / METRICS) as f:
            if f.readline(4096).decode("utf-8", "replace").strip() == ",".join(METRIC_FIELDS):
                return True
    except OSError:
        pass
    return bool(list_checkpoints(folder))


def users_own_files(folder: Path) -> list[str]:
    """The names a run writes (metrics.csv, status.json, STOP) that a folder holding no run's config.json
    has as files of its own: a new run there wrote over them (and removed STOP) without a word. What a mixsep run
    that never got its config.json leaves (a status.json in a state mixsep writes, a metrics.csv of mixsep's header
    alone, an empty STOP) is no one's else. A folder with a config.json or a checkpoints folder of any kind is left
    to the run's own checks (a run whose config.json was lost resumes from its checkpoint's settings)."""
    folder = Path(folder)
    if os.path.lexists(folder / CONFIG) or os.path.lexists(folder / CHECKPOINTS):
        return []

    def left_by_mixsep(name: str) -> bool:
        path = folder / name
        try:
            if name == STATUS:  # as write_status writes it (QA: {"state": "running", "job": "x"} of a user's was taken)
                status = read_status(folder)
                return status.get("state") in WRITTEN_STATES and {"updated", "pid"} <= status.keys()
            if name == METRICS:
                return read_regular(path, 4096).decode("utf-8", "replace").strip() in ("", ",".join(METRIC_FIELDS))
            return path.is_file() and not path.is_symlink() and path.stat().st_size == 0  # STOP
        except (OSError, MixsepError):  # a folder named so, a FIFO, a file too large: not mixsep's
            return False

    # (worker.log: only the dashboard writes it, appending, in folders it made)
    return [n for n in (METRICS, STATUS, STOP) if os.path.lexists(folder / n) and not left_by_mixsep(n)]


def check_runs_dir(runs_dir: Path) -> None:
    """Refuse, before any work, a runs folder that is a file (new_run_dir would, when it first writes), or that is
    or lies in a run's folder (its checkpoints folder too) or a sweep study's: a run made there was in the way of
    the outer run's resume and went with it when it was deleted, and a sweep wrote its journal into a run."""
    from .sweep import SWEEP_FILE

    if runs_dir.exists() and not runs_dir.is_dir():
        raise _runs_dir_is_a_file(runs_dir)
    try:  # links resolved as the kernel follows them: LINK/.. is the link's target's parent, not the link's
        given = Path(runs_dir).resolve()
    except (OSError, RuntimeError):  # a loop of links: new_run_dir says what is wrong when it writes
        return
    for folder in (given, *given.parents):
        where = "is" if folder == given else "is inside"
        if run_lives_in(folder):
            raise MixsepError(f"The runs folder {runs_dir} {where} the run folder {folder}, and a run holds no other "
                              "run (its resume would be refused, and deleting it would take the new run); name the "
                              "folder that holds your runs (--runs-dir or MIXSEP_RUNS_DIR).")
        if (folder / SWEEP_FILE).is_file():
            raise MixsepError(f"The runs folder {runs_dir} {where} the folder of the sweep study '{folder.name}', "
                              "which keeps its trials in it (a run there would stop the study from resuming); name "
                              "the folder that holds your runs (--runs-dir or MIXSEP_RUNS_DIR).")


def new_run_dir(runs_dir: Path, stem: str) -> Path:
    """A fresh folder named ``stem`` (with -1, -2... if taken); never reuses an existing one."""
    runs_dir = Path(runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            path = runs_dir / (stem if i == 0 else f"{stem}-{i}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except FileExistsError:
        raise _runs_dir_is_a_file(runs_dir) from None
    except OSError as e:
        raise MixsepError(f"Cannot create a run folder in {runs_dir} ({e.strerror}); "
                          "choose a writable --runs-dir (or MIXSEP_RUNS_DIR).") from None
    raise MixsepError(f"Could not create a new run folder in {runs_dir}.")


def check_run_dir(run_dir: Path) -> Path:
    """A folder a trainer can write into: created if missing, refused with one sentence otherwise."""
    run_dir = make_folder(run_dir, "the run folder",
                          f"--run-dir {run_dir} is a file, not a folder; name a run folder or a new path.")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        if (run_dir / CONFIG).is_file() or (run_dir / CHECKPOINTS).is_dir():  # a run to resume: no other place (QA)
            raise MixsepError(f"The run folder {run_dir} is not writable (a read-only folder or disk), so it cannot "
                              "train on; make it writable, or copy it to a writable folder and resume the copy.")
        raise MixsepError(f"The run folder {run_dir} is not writable; choose a writable place.")
    return run_dir


def check_layout(run_dir: Path) -> None:
    """Refuse a run folder whose own names hold the wrong kind of thing, before a trainer reads or rewrites it.

    A file named ``checkpoints`` (or a folder named last.pt) would make a resume start again from step 0
    and cut metrics.csv to the new rows before the first checkpoint failed; a folder named metrics.csv
    could only fail later.
    """
    for name, folder in ((CHECKPOINTS, True), (METRICS, False), (STATUS, False), (CONFIG, False), (STOP, False),
                         (f"{CHECKPOINTS}/{LAST}", False)):
        path = Path(run_dir) / name
        if path.is_symlink() and not path.exists():
            raise MixsepError(f"{path} is a link to nothing; remove it or restore what it pointed to.")
        if name == CHECKPOINTS and path.is_symlink() and path.is_dir():  # on another disk, say: followed, unless
            # it leads into another run (its checkpoints, or the run folder itself), which this run would write over
            target, own = path.resolve(), Path(run_dir).resolve()
            if any(is_run(f) and f != own for f in (target, *target.parents)):
                raise MixsepError(f"{path} is a link to {target}, inside another run: training would write over that "
                                  "run's files; make it a folder of this run's own (copy the checkpoints into it to "
                                  "resume from them).")
        if path.exists() and path.is_dir() != folder:
            raise MixsepError(f"{path} should be a {'folder' if folder else 'file'} but is "
                              f"{'a file' if folder else 'a folder'}; move it away before training this run.")
        # a FIFO: reading or writing it would wait for ever (last.pt has its own sentence, naming a checkpoint)
        if name != f"{CHECKPOINTS}/{LAST}" and path.exists() and not folder and not path.is_file():
            raise MixsepError(f"{path} should be a file but is not a regular file (a FIFO, say); move it away "
                              "before training this run.")


# --------------------------------------------------------------------------- process identity


def process_start(pid) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), or None if it does not exist.

    With the pid it names one process for the machine's uptime: a pid reused later has
    another start time. Zombies count as gone.
    """
    try:
        pid = int(pid)
        if pid <= 0:
            return None
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    except OSError:
        return None if Path("/proc/self/stat").exists() else _start_without_proc(pid)
    if fields[0] == "Z":
        return None
    return fields[19]  # field 22 of stat, counted from the state (field 3)


def _start_without_proc(pid: int) -> str | None:
    """No /proc (macOS): the pid alone is all we can check."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?"


def process_age(pid_start) -> float | None:
    """Seconds since a process started, from its start time as ``identity`` records it (clock ticks since boot);
    None where /proc cannot say (macOS records "?")."""
    try:
        return float(Path("/proc/uptime").read_text().split()[0]) - int(pid_start) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, TypeError, IndexError):
        return None


def identity(pid: int | None = None) -> dict:
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "pid_start": process_start(pid)}


def is_alive(status: dict) -> bool:
    """Whether the process that status.json names is still that very process."""
    pid, start = status.get("pid"), status.get("pid_start")
    now = process_start(pid)
    if now is None:
        return False
    if start is None:  # written by an older mixsep: no identity recorded, so never trusted
        return False
    # "?" is what a machine without /proc records (macOS: the pid alone). Two "?" match, on such a machine;
    # a "?" read where /proc gives a real start time names no process here (a run copied from a Mac while
    # it trained, or a hand-written file), and a pid that merely exists is no proof: never signal it
    return now == start


# --------------------------------------------------------------------------- the lock


class RunLock:
    """The trainer's exclusive lock on a run folder, held for the trainer's life.

    fcntl.flock on ``.lock``: the kernel drops it when the process dies, however it dies,
    so a stale lock cannot outlive its trainer. The holder writes its identity into the
    file so the refusal can name it.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None
        self._previous: bytes | None = None  # the last holder's line, for release(restore=True)
        self._created = False  # .lock was made by this acquire: release(restore=True) removes it
        self._link: str | None = None  # the link this acquire replaced: release(restore=True) puts it back

    def _replace_link(self) -> int | None:
        """A .lock that is a link (a run copied with `cp -rs` holds one to the first run's .lock) is replaced by
        the run's own, never written through: the new file's descriptor, already flocked, or None. All of it under a
        flock of the run folder itself: of two trainers that both saw the link, the second finds the first's lock
        file, held, not the link (it never removes a lock file, nor takes one another made)."""
        try:
            folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            if not self.path.is_symlink():
                return None
            target = os.readlink(self.path)
            os.unlink(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: no one else holds it
            if self._link is None:  # the first link this lock replaced is the one to put back
                self._link = target
            return fd
        except OSError:
            return None
        finally:
            os.close(folder)  # drops the folder's flock

    def _open(self) -> tuple[int, bool]:
        """The lock file's descriptor, and whether this call made the file."""
        why = "it keeps changing"
        if self.path.is_symlink():
            fd = self._replace_link()
            if fd is not None:
                return fd, True
        for _ in range(20):  # made or removed by another process between two calls: ask again
            for flags in (os.O_RDWR, os.O_RDWR | os.O_CREAT | os.O_EXCL):
                try:  # never through a link: the holder's line would be written over the file it leads to
                    return os.open(self.path, flags | os.O_NOFOLLOW, 0o644), bool(flags & os.O_CREAT)
                except (FileNotFoundError, FileExistsError) as e:
                    why = e.strerror
                except OSError as e:  # a folder or a link where the lock file goes
                    why = (e.strerror if e.errno != errno.ELOOP or not self.path.is_symlink() else
                           "a link to nothing" if not self.path.exists() else
                           "a link, and the trainer would write over what it leads to")
                    break
            else:
                if not self.path.is_symlink():
                    continue
                why = "a link to nothing"
            break
        raise MixsepError(f"Cannot lock the run folder {self.path.parent}: {self.path.name} cannot be opened "
                          f"({why}); move it away.")

    def acquire(self) -> "RunLock":
        while True:
            fd, created = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise MixsepError(f"Run {self.path.parent} is already being trained by {holder}; "
                                  "wait for it to end or stop it first.") from None
            except OSError as e:
                os.close(fd)
                raise MixsepError(f"Cannot lock the run folder {self.path.parent} ({e.strerror}).") from None
            try:  # a refused command that made .lock removes it again (below): a lock taken on the file it
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))  # unlinked is no lock, so look again
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        self._created = created
        info = json.dumps({**identity(), "cmd": " ".join(mask_secrets(_cmdline(os.getpid())))[:500],
                           "since": time.time()})
        try:  # who holds it, for a second trainer's message; the flock is the lock, so a full disk is no
            self._previous = os.pread(fd, 1 << 16, 0)
            os.ftruncate(fd, 0)  # reason to fail here (the run's first real write says so in one sentence)
            os.pwrite(fd, info.encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self, restore: bool = False) -> None:
        """Drop the lock; ``restore``: first put back the previous holder's line (a command refused before it
        wrote anything leaves the folder's files as they were, .lock included)."""
        if self._fd is not None:
            if restore and self._created:  # the folder had no .lock before: it has none after
                try:
                    os.unlink(self.path)
                    if self._link is not None:  # or the link it had
                        os.symlink(self._link, self.path)
                except OSError:
                    pass
            elif restore and self._previous is not None:
                try:
                    os.ftruncate(self._fd, 0)
                    os.pwrite(self._fd, self._previous, 0)
                except OSError:
                    pass  # the line only names a holder; the flock is the lock
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        cmd = " ".join(mask_secrets(str(info.get("cmd") or "").split(" ")))  # a lock an older mixsep wrote
        return f"process {info['pid']} ({cmd or 'unknown command'})"
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return "another process"


# A command line may carry a database password (`sweep --storage postgresql://user:pw@host/db`), and
# .lock is readable by whoever can read the runs folder and quoted in a second trainer's refusal.
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*):\S*@")  # up to the last '@' (a password may hold '/', '?', '@')
PASSWORD_KEYWORD = re.compile(r"(?i)(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&]+)")


def mask_secrets(argv: list[str]) -> list[str]:
    """``argv`` with ``***`` for the value of --storage, a URL's password and a password=... keyword."""
    masked, after_storage = [], False
    for word in argv:
        if after_storage:
            word = "***"
        elif word.startswith("--storage="):
            word = "--storage=***"
        after_storage = word == "--storage"
        masked.append(PASSWORD_KEYWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", word)))
    return masked


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def lock_holder(run_dir: Path) -> dict | None:
    """Who holds the run's lock now (from /proc/locks), or None: a query that takes no lock. A link names no holder:
    a lock file is never one (RunLock opens it with O_NOFOLLOW), and one copied in could lead to any process's lock."""
    try:
        st = (Path(run_dir) / LOCK).lstat()
        lines = Path("/proc/locks").read_text().splitlines() if stat.S_ISREG(st.st_mode) else []
    except OSError:  # no lock file, or no /proc (macOS)
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = [int(parts[4]) for parts in map(str.split, lines)
               if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == want and parts[4].isdigit()]
    return identity(min(holders)) if holders else None


def holder_text(run_dir: Path) -> str:
    """The holder of the run's lock as its refusals name it: "process N (its command)", from the line it wrote."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return "another process"
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _train_commands() -> list[tuple[int, list[str]]]:
    """(pid, command) of every live `mixsep train` process but this one; [] where no /proc can say (macOS)."""
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return []
    found = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="surrogateescape").split("\0")[:-1]
        except OSError:  # ended since the listing, or another user's
            continue
        at = next((i for i, w in enumerate(argv) if w == "train"), None)
        if at is not None and any(w == "mixsep" or w.endswith(("/mixsep", "/mixsep/__main__.py")) for w in argv[:at]):
            found.append((pid, argv))
    return found


def _names_run_dir(argv: list[str], pid: int, run_dir: Path) -> bool:
    """Whether ``argv``, process ``pid``'s `mixsep train` command, has a --run-dir (or an abbreviation argparse
    takes) that is ``run_dir``: a relative path from the process's folder, ``~`` from its HOME, as the CLI reads
    them."""
    for i, word in enumerate(argv[argv.index("train") + 1:], argv.index("train") + 1):
        flag, eq, value = word.partition("=")
        if len(flag) >= len("--run-") and "--run-dir".startswith(flag):
            value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                if value == "~" or value.startswith("~/"):  # its own HOME (the CLI expands it, with no shell too)
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    home = next((e[5:].decode(errors="surrogateescape") for e in env if e.startswith(b"HOME=")), None)
                    value = value.replace("~", home, 1) if home else os.path.expanduser(value)
                elif value.startswith("~"):
                    value = os.path.expanduser(value)
                if not os.path.isabs(value):
                    value = os.path.join(os.readlink(f"/proc/{pid}/cwd"), value)
                return bool(value) and os.path.samefile(value, run_dir)
            except OSError:
                return False
    return False


def starting_trainer(run_dir: Path, commands: list[tuple[int, list[str]]] | None = None) -> str | None:
    """A `mixsep train` process that names this run as its --run-dir and is alive, "process N (its command)", or
    None; None where no /proc can say (macOS). A trainer takes the run's lock once Python has loaded mixsep (a
    tenth of a second on an idle machine, seconds on a busy one): before that only its command line says so.
    ``commands``: ``_train_commands()``, read once for many runs."""
    for pid, argv in _train_commands() if commands is None else commands:
        if _names_run_dir(argv, pid, Path(run_dir)):
            return f"process {pid} ({' '.join(mask_secrets(argv))})"
    return None


def holds_lock(pid: int, path: Path) -> bool | None:
    """Whether process ``pid`` holds a flock on the file ``path`` through a descriptor it has open (/proc/PID/fd and
    fdinfo), or None where no /proc can say (macOS). The file is matched by device and inode, whatever mount or
    name it was opened by (a runs folder bind-mounted elsewhere); once removed (the file, or its folder), by the path
    /proc gives a removed file, "PATH (deleted)", and no link left to it. A link put in place of the file names
    nothing, and a descriptor without the lock (`tail -f .lock`) is no trainer's."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    try:
        st = path.lstat()
        here = (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None
    except OSError:
        here = None
    gone = os.path.join(os.path.realpath(path.parent), path.name) + " (deleted)"
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except OSError:  # gone, or a process this user may not look into
        return False
    for fd in names:
        try:
            opened = os.stat(f"{fds}/{fd}")  # the open file itself
            if (opened.st_dev, opened.st_ino) != here and not (
                    opened.st_nlink == 0 and os.readlink(f"{fds}/{fd}") == gone):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                if any(line.startswith("lock:") for line in info):
                    return True
        except OSError:
            continue
    return False


def alive_holding(record: dict, lock: Path) -> bool:
    """Whether the process a status.json or sweep.json names is alive and is the one that holds ``lock``: the very
    process (pid and start time) holding the lock through a descriptor of its own (``holds_lock``). A file written
    by hand, or copied with a run from another machine, may name any process here (pid 1's start time is easy to
    guess): the Train page took such a run for its job, and Stop sent that process SIGTERM. Where no /proc can say
    (macOS), the pid and start time."""
    return is_alive(record) and holds_lock(int(record["pid"]), lock) is not False


def trainer_alive(run_dir: Path, status: dict) -> bool:
    """Whether the process a run's status.json names is its trainer, alive: the holder of the run's lock, as a
    trainer is for its life, however the file or the folder is removed meanwhile (``alive_holding``)."""
    return alive_holding(status, Path(run_dir) / LOCK)


# --------------------------------------------------------------------------- status


def open_regular(path: Path):
    """``path`` opened for reading (binary) if it is a regular file (or a link to one): reading a FIFO put there by
    hand would block for ever (a trainer's resume, the dashboard's run list). Anything else is an OSError, as a
    missing file is, to the readers that treat one as unreadable. The file opened is the one checked: opening
    does not wait on a FIFO (O_NONBLOCK), so one put in place of the file after a look cannot block either."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class FileTooLarge(OSError):
    """A file larger than its reader takes (``read_regular``'s limit)."""


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of ``path`` if it is a regular file (open_regular); FileTooLarge past ``limit`` bytes: a 1 GB
    status.json made every page that lists its run read it whole, at each poll (2.8 GB for the server)."""
    with open_regular(path) as f:
        if limit is None:
            return f.read()
        data = f.read(limit + 1)
        if len(data) > limit:
            raise FileTooLarge(errno.EFBIG, f"larger than {limit // (1 << 20)} MB", str(path))
        return data


def read_status(run_dir: Path) -> dict:
    """status.json as a dict; {"state": "unknown", ...} when missing or unreadable."""
    try:
        status = json.loads(read_regular(Path(run_dir) / STATUS, JSON_LIMIT))
        if isinstance(status, dict) and isinstance(status.get("state"), str):
            bad = [f"{k} is {kind}" for k, (fits, kind) in _STATUS_FIELDS.items() if not fits(status.get(k))]
            if not bad:
                return status
            return {"state": State.UNKNOWN.value, "message": f"status.json is damaged ({bad[0]})"}
    except FileTooLarge as e:
        return {"state": State.UNKNOWN.value, "message": f"status.json is damaged ({e.strerror}; a trainer writes "
                                                          "a few hundred bytes)"}
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deeply to read
        pass
    return {"state": State.UNKNOWN.value, "message": "status.json is missing or half written"}


def _count(v) -> bool:
    """A status field that may be absent (None) or a whole number >= 0 that a float holds (COUNT_LIMIT, as
    metrics.csv's: a total_steps of 400 digits failed the Train page's progress bar), never text or a bool."""
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < COUNT_LIMIT)


def _number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < COUNT_LIMIT)  # NaN: no


# the fields of status.json that pages and commands read, each with its type: a file written by someone else
# (or damaged) with another type reads as damaged, not as a traceback on every page that lists the run
_STATUS_FIELDS = {
    "step": (_count, "not a count"), "total_steps": (_count, "not a count"), "pid": (_count, "not a count"),
    "message": (lambda v: v is None or isinstance(v, str), "not text"),
    "updated": (_number, "not a time"),
    "pretrained_loaded": (lambda v: v is None or isinstance(v, bool), "not true or false"),
    "warnings": (lambda v: v is None or (isinstance(v, list) and all(isinstance(w, str) for w in v)), "not a list of text"),
    "validation": (lambda v: v is None or (isinstance(v, dict) and _number(v.get("best_psnr"))),
                   "not a sweep trial's scores"),
}


def write_status(run_dir: Path, state: State | str, message: str = "", **extra) -> None:
    """Record the run's state, naming this process as its trainer (pid and start time)."""
    status = {"state": State(state).value, "message": message, "updated": time.time(), **identity(), **extra}
    write_json(Path(run_dir) / STATUS, status)


def last_error(log: Path) -> str | None:
    """The sentence of the ``error: ...`` line a trainer's output (a dashboard child's worker.log) ends with, how the
    CLI refuses or fails, or None."""
    try:
        with open_regular(log) as f:  # a FIFO put there by hand would block the page
            f.seek(max(0, f.seek(0, os.SEEK_END) - (1 << 16)))  # a refusal is its output's last line
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1][len("error: "):] if lines and lines[-1].startswith("error: ") else None


def live_status(run_dir: Path) -> dict:
    """read_status, but a "running" run whose trainer is gone reads as "interrupted"."""
    status = read_status(run_dir)
    if status.get("state") == State.RUNNING and not trainer_alive(run_dir, status):
        saved = status.get("step")  # the trainer records its newest checkpoint's step with each one
        if not list_checkpoints(run_dir):  # "from its last checkpoint" said of a run that has none
            resume = "it wrote no checkpoint, so a resume starts from step 0; or start a new run."
        else:
            resume = f"resume it from its last checkpoint{f' (step {saved})' if type(saved) is int and saved > 0 else ''}" \
                     " or start a new run."
        # one that ended on an error it could not record (its folder moved while it trained) said it in worker.log,
        # which moves with the folder: "killed" blamed someone else (QA)
        said = last_error(Path(run_dir) / LOG)
        try:  # written after its trainer's last word in status.json, not an older trainer's refusal
            said = said if os.stat(Path(run_dir) / LOG).st_mtime >= float(status.get("updated") or 0) else None
        except (OSError, TypeError, ValueError):
            said = None
        if said:  # its own advice (train --run-dir with the new place; start a new run): not said twice (QA)
            message = f"Its training process is gone; it last said: {said.rstrip('.')}."
        else:
            message = f"Its training process is gone (killed, or the server or machine stopped); {resume}"
        status = dict(status, state=State.INTERRUPTED.value, message=message)
    return status


def request_stop(run_dir: Path) -> None:
    (Path(run_dir) / STOP).touch()


def stop_requested(run_dir: Path) -> bool:
    return (Path(run_dir) / STOP).exists()


def clear_stop(run_dir: Path) -> None:
    (Path(run_dir) / STOP).unlink(missing_ok=True)


def _stop_file(run_dir: Path) -> tuple | None:
    """Which STOP file is there (inode, size, modification and change times), or None: a touch of the same file
    changes it too."""
    try:
        st = (Path(run_dir) / STOP).lstat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


# --------------------------------------------------------------------------- metrics


class MetricsLog:
    """metrics.csv for the lock holder: truncate to the resumed step, then append rows."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS
        self._f = None
        self._writer = None

    def open(self, keep_through_step: int) -> "MetricsLog":
        """Keep rows with step <= ``keep_through_step`` (the checkpoint resumed from; 0 = none), atomically."""
        try:  # read once: the rows to keep, and whether the file already holds just those
            old = read_regular(self.path)
        except OSError:
            old = None
        rows = [r for r in (_records(parse_metrics(old)) if old else []) if r["step"] <= keep_through_step]
        # rows must count 1..step without a gap or a repeat; anything else was a writer's bug
        rows = [r for i, r in enumerate(rows) if r["step"] == i + 1]
        buf = io.StringIO()
        w = csv.DictWriter(buf, METRIC_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: r[k] for k in METRIC_FIELDS} for r in rows)
        data = buf.getvalue().encode()
        # nothing to drop: no rewrite (which a full disk would refuse). A link (a run copied with `cp -rs`)
        # is replaced by the run's own file, as config.json and last.pt are: appending through it wrote
        # this run's rows into the file it leads to, another run's metrics.csv say
        if old != data or self.path.is_symlink():
            atomic_write(self.path, lambda f: f.write(data))
        try:  # never through a link: one put in place since the line above would be written through
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            self._f = os.fdopen(fd, "a", newline="")
        except OSError as e:
            raise RunWriteError(describe_os_error(e, self.path) + ".", e.errno) from None
        self._writer = csv.DictWriter(self._f, METRIC_FIELDS, lineterminator="\n")
        return self

    def write(self, row: dict) -> None:
        try:
            self._writer.writerow({k: row[k] for k in METRIC_FIELDS})
            self._f.flush()  # a reader (the dashboard) sees each step as it happens
        except OSError as e:
            said = describe_os_error(e, self.path)
            raise RunWriteError(said + "; rows up to the last checkpoint are kept.", e.errno, cause=said) from None

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None


TAIL_LIMIT = 4 << 20  # last_metric_row reads at most this much of metrics.csv's end


def last_metric_row(run_dir: Path) -> dict | None:
    """metrics.csv's last row (metric_frame's rule), or None if it has none: read from its header and its end
    only, 4 KB first, a wider window while none of its lines is a row, up to 4 MB. The run list asks this of
    every run on every page, so its cost must not grow with the run (a 20-epoch run has 15,000 rows; a file of
    a gigabyte was read whole, taking seconds and gigabytes of the server's memory), and a file that has not
    changed since (the same inode, size and time: a trainer appends, a resume renames a new file in) is not
    parsed again (with 150 runs, parsing each one's end took most of a second of every page's rerun)."""
    path = Path(run_dir) / METRICS
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return None
        # the change time too: a rewrite that puts the old mtime back (cp -p, rsync -a --inplace) changes it
        row = _last_metric_row(str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:  # not kept: a file unreadable now (its mode, a passing I/O error) is read again next time
        return None
    return dict(row) if row is not None else None


@functools.lru_cache(maxsize=4096)
def _last_metric_row(path: str, *version) -> dict | None:
    """last_metric_row of the file ``path`` as it is at ``version`` (device, inode, size, times); OSError raised."""
    path = Path(path)
    with open_regular(path) as f:
        header = f.readline(1 << 20)  # a header of more than a megabyte is no mixsep header
        end = f.seek(0, os.SEEK_END)
        for window in (4 << 10, 64 << 10, 1 << 20, TAIL_LIMIT):
            start = max(len(header), end - window)
            f.seek(start - 1 if start > len(header) else start)  # from the byte before the window: see below
            tail = f.read(end - f.tell())
            if start > len(header):  # drop up to the first newline: a line the window cut at its start
                tail = tail[tail.find(b"\n") + 1:] if b"\n" in tail else b""
            rows = parse_metrics(header + tail)
            if len(rows) or start <= len(header):
                break
    return _records(rows.tail(1))[0] if len(rows) else None


def last_logged_step(run_dir: Path) -> int:
    """The step of metrics.csv's last row (0 if none), reading only its header and its end (last_metric_row)."""
    row = last_metric_row(run_dir)
    return int(row["step"]) if row else 0


def read_metric_frame(path: Path):
    """A metrics.csv's rows as a frame (metric_frame's rule); empty, with the right columns, when it is absent,
    half written or not a regular file (a FIFO would be read until a writer came, for ever)."""
    try:
        data = read_regular(path)
    except OSError:
        data = b""
    return parse_metrics(data)


def _csv_rows(path: Path) -> list[dict]:
    """The rows of a metrics.csv (metric_frame's rule)."""
    return _records(read_metric_frame(path))


# --------------------------------------------------------------------------- the rows of metrics.csv: one rule

# A step or an epoch from here on is no count a float holds exactly: a hand edit, never the trainer's
# (a step of 1e30 overflowed int64 and was drawn at step -9223372036854775808)
COUNT_LIMIT = 2 ** 53
LOSS_FIELDS = ["loss_mnist", "loss_cifar", "loss"]


def metric_lines(data: bytes) -> list[str]:
    """The complete lines of metrics.csv's bytes, as text (odd bytes replaced): a line ends at a newline, or at an
    editor's carriage return; what follows the last newline is a row still being written, read once it is whole."""
    text = data[: data.rfind(b"\n") + 1].decode(errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]


def metric_header(line: str) -> list[str]:
    """The field names of metrics.csv's first line (an editor's byte order mark dropped)."""
    return line.removeprefix("\ufeff").split(",")


def parse_metrics(data: bytes):
    """metrics.csv's bytes as a frame of its rows (metric_frame's rule); empty, with the right columns, when none."""
    lines = metric_lines(data)
    return metric_frame(metric_header(lines[0]) if lines else [], lines[1:])


def metric_frame(fields: list[str], lines: list[str]):
    """The lines of metrics.csv under the header ``fields`` that are steps, as a frame of numbers: the one rule
    of every reader of the file (the run list and Compare's curves, the Train page's tail, a resume, the
    Train page's step). A line that is not a step is skipped; its neighbours stay.

    A step has as many fields as the header (numbers only: no quoting, so a stray quote swallows nothing),
    each a finite number; its step is a whole number from 1 and its epoch one from 0, both below 2**53; its
    losses, MSEs, are not negative. The trainer writes nothing else: anything else was cut short or edited.
    """
    import numpy as np
    import pandas as pd

    place = {name: i for i, name in reversed(list(enumerate(fields)))}  # a name given twice: its first column
    lines = [line for line in lines if line.count(",") == len(fields) - 1]
    if not set(METRIC_FIELDS) <= place.keys() or not lines:
        return pd.DataFrame(columns=METRIC_FIELDS)
    # every line has the header's fields, so none is taken for an index (a first row of one field more was)
    df = pd.read_csv(io.StringIO("\n".join(lines)), header=None, names=range(len(fields)), quoting=csv.QUOTE_NONE,
                     skip_blank_lines=False, low_memory=False)
    df = df[[place[k] for k in METRIC_FIELDS]].set_axis(METRIC_FIELDS, axis=1)
    # numbers, each; anything else is NaN (text, and a column of True and False that the parser took for booleans)
    df = df.apply(lambda c: pd.Series(np.nan, index=c.index) if c.dtype == bool else pd.to_numeric(c, errors="coerce"))

    def count(v, low):
        return (v >= low) & (v < COUNT_LIMIT) & (v % 1 == 0)

    step = (np.isfinite(df).all(axis=1) & count(df["step"], 1) & count(df["epoch"], 0)
            & (df[LOSS_FIELDS] >= 0).all(axis=1))
    return df[step].astype({k: "int64" if k in ("step", "epoch") else "float64" for k in METRIC_FIELDS}
                           ).reset_index(drop=True)


def _records(frame) -> list[dict]:
    """A metrics frame's rows as dicts of Python numbers, as a reader that polls gets them."""
    return [dict(zip(METRIC_FIELDS, values)) for values in zip(*(frame[k].tolist() for k in METRIC_FIELDS))]


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def last_checkpoint(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / LAST


def epoch_checkpoint(run_dir: Path, epoch: int) -> Path:
    return checkpoint_dir(run_dir) / f"epoch-{epoch}.pt"


def save_checkpoint(path: Path, model, config, step: int, epoch: int, optimizer=None, parents: bool = True,
                    trained_s: float | None = None) -> None:
    """Write atomically: a crash or a full disk mid-write leaves the previous checkpoint intact.

    A trainer passes ``parents=False``: it makes the checkpoints folder, never its run folder, so a
    run folder deleted mid-run is not made again, half."""
    import torch

    path = Path(path)
    try:
        path.parent.mkdir(parents=parents, exist_ok=True)
    except OSError as e:
        raise RunWriteError(describe_os_error(e, path) + ".", e.errno) from None
    state = {"version": CHECKPOINT_VERSION, "config": config.to_dict(), "step": step, "epoch": epoch,
             "model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if trained_s is not None:  # seconds trained up to here, across resumes: what the time budget counts
        state["trained_s"] = float(trained_s)
    atomic_write(path, lambda f: torch.save(state, f))


class UnreadableCheckpoint(ResumeRefused):
    """A checkpoint file that is there but cannot be used: truncated, corrupt, or not mixsep's."""


class NewerCheckpoint(UnreadableCheckpoint):
    """A good checkpoint this mixsep or this torch is too old to read: never to be copied over, nor retrained."""

    def __init__(self, what: str, upgrade: str):
        self.what, self.upgrade = what, upgrade  # "X was written by a newer mixsep (...)", "upgrade mixsep"
        super().__init__(f"{what}; {upgrade} to read it.")


def newest_readable(run_dir: Path, skip: Path) -> str:
    """A clause naming the run's newest checkpoint other than ``skip`` that reads, or '' if none does."""
    for p in list_checkpoints(run_dir):
        if p == skip:
            continue
        try:
            state = read_checkpoint(p)
        except MixsepError:
            continue
        return f"its newest readable checkpoint is {p} (step {state.get('step', 0)})"
    return ""


def _bare_pickle(path: Path) -> bool:
    """Whether ``path`` looks like one pickle.dump (not torch.save's zip file, nor its older format, which starts
    with a pickled magic number), from its first bytes and its last, the STOP opcode; nothing in it is built or
    run. Protocols 0 and 1 have no header: their opcodes are read through, in a small file only (reading a
    100 MB pickle of small items that way took 25 s)."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            return False
        with open_regular(path) as f:
            head = f.read(3)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - 1, 0))
            stop = f.read(1) == b"."
            if len(head) == 3 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO n
                return stop and head[2] != 0x8A  # LONG1: the legacy torch.save's magic number
            if not stop or size > 1 << 20:
                return False
            f.seek(0)
            last = collections.deque(pickletools.genops(f), maxlen=1)  # stops at the first STOP
            return bool(last) and last[0][0].name == "STOP" and not f.read(1)
    except Exception:  # cut short, or not a pickle at all
        return False


def read_checkpoint(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    """A checkpoint's contents, loaded as data only (weights_only): a checkpoint cannot run code.

    ``mmap``: the tensors are mapped from the file, not read: a look at the settings and the weights' shapes
    reads a few kilobytes of a 139 MB file (damage inside a tensor's bytes is then found only by a full read)."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise MixsepError(f"Checkpoint {path} is a folder; name a .pt file inside a run's checkpoints folder.")
    if not path.is_file():
        if path.exists():  # a FIFO would block torch.load, /dev/zero would fill memory
            raise MixsepError(f"Checkpoint {path} is not a regular file (a FIFO or a device, say); name a .pt file "
                              "inside a run's checkpoints folder.")
        raise MissingCheckpoint(path)
    try:
        with warnings.catch_warnings():  # a bare pickle of protocol 4 or 5 made torch print two lines of its own
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        if "Weights only load failed" in str(e) and "GLOBAL" in str(e):  # it names a function or class to build
            raise UnreadableCheckpoint(f"{path} holds Python objects other than weights, which mixsep refuses to "
                                       "load (a checkpoint is loaded as data only); it was not written by mixsep. "
                                       "Pick another checkpoint or retrain.") from None
        if _bare_pickle(path):  # not "truncated or corrupt" (protocols 1 to 3 fail on torch's magic number)
            raise UnreadableCheckpoint(f"{path} is a bare Python pickle, not a PyTorch file as mixsep writes its "
                                       "checkpoints, and mixsep loads a checkpoint as data only; it was not written "
                                       "by mixsep. Pick another checkpoint or retrain.") from None
        newer = re.search(r"read a PyTorch file with version (\d+), but the maximum supported version for reading "
                          r"is (\d+)", str(e))
        if newer:  # a good file from a newer torch: not "corrupt", which would have it thrown away
            raise NewerCheckpoint(f"{path} was written by a newer PyTorch (file format {newer[1]}; this torch, "
                                  f"{torch.__version__}, reads up to {newer[2]})", "upgrade torch") from None
        raise UnreadableCheckpoint(f"{path} is not a readable mixsep checkpoint ({e.__class__.__name__}); "
                                   "it may be truncated or corrupt. Pick another checkpoint or retrain.") from None
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("config"), dict):
        raise UnreadableCheckpoint(f"{path} is a PyTorch file but not a mixsep checkpoint (no model and config "
                                   f"inside); name a checkpoint from a run's {CHECKPOINTS} folder (a plain state_dict "
                                   "is not one).")
    version = state.get("version", CHECKPOINT_VERSION)
    if type(version) is int and version > CHECKPOINT_VERSION:  # its settings or layout may mean other things
        raise NewerCheckpoint(f"{path} was written by a newer mixsep (checkpoint format {version}; this one reads "
                              f"format {CHECKPOINT_VERSION})", "upgrade mixsep")
    step, optimizer = state.get("step", 0), state.get("optimizer", {"state": {}, "param_groups": []})
    wrong = ("its weights are not a dict of tensors" if not isinstance(state["model"], dict)
             or not all(isinstance(v, torch.Tensor) for v in state["model"].values())
             else f"its format version is {version!r}, not a whole number" if type(version) is not int or version < 1
             else "its config names no model" if not isinstance(state["config"].get("model"), str)
             else f"its step is {step!r}, not a whole number" if type(step) is not int or step < 0
             else "its optimizer state is not Adam's" if not isinstance(optimizer, dict)
             or not {"state", "param_groups"} <= optimizer.keys() else None)
    if wrong:
        raise UnreadableCheckpoint(f"{path} is not a mixsep checkpoint as mixsep writes them ({wrong}); "
                                   "pick another checkpoint or retrain.")
    from .config import TrainConfig

    try:  # every reader builds a TrainConfig from it: a damaged value is named with its file, here
        TrainConfig.from_dict(state["config"], saved=True)
    except MixsepError as e:
        reason = str(e).split("; write it like")[0].rstrip(".")
        raise UnreadableCheckpoint(f"{path} holds damaged saved settings ({reason}); "
                                   "pick another checkpoint or retrain.") from None
    return state


def _epoch_of(p: Path) -> int:
    tail = p.stem.split("-", 1)[-1]
    return int(tail) if tail.isascii() and tail.isdigit() else -1  # "epoch-².pt": a stray name


def checkpoints_not_a_folder(run_dir: Path) -> str:
    """Why the run can hold no checkpoint at all, in a clause ("its checkpoints is a file, not a folder"), or ''."""
    folder = checkpoint_dir(run_dir)
    if folder.exists() and not folder.is_dir():
        return f"its {CHECKPOINTS} is {'a file' if folder.is_file() else 'a FIFO or a device'}, not a folder"
    return ""


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Newest first: last.pt, then epoch checkpoints from the latest."""
    folder = checkpoint_dir(run_dir)
    try:
        if not folder.is_dir():
            return []
        last = [folder / LAST] if (folder / LAST).is_file() else []
        epochs = sorted((p for p in folder.glob("epoch-*.pt") if _epoch_of(p) >= 0), key=_epoch_of, reverse=True)
    except OSError:
        return []
    return last + epochs


def prune_epoch_checkpoints(run_dir: Path, keep_every: int) -> list[Path]:
    """Remove epoch checkpoints that the retention rule does not keep: the latest always stays,
    older ones only when their epoch is a multiple of ``keep_every`` (0 keeps none of them)."""
    epochs = [p for p in list_checkpoints(run_dir) if p.name != LAST]  # newest first: epochs[0] stays
    return unlink_all(p for p in epochs[1:] if keep_every <= 0 or _epoch_of(p) % keep_every != 0)


def delete_run(runs_dir: Path, name: str) -> Path:
    """Delete run ``name`` (or a whole group, e.g. a study's folder): inside the runs folder only,
    never while a trainer holds one of its runs. Returns the deleted folder."""
    import shutil

    path = resolve_run(runs_dir, name)
    if not path.is_dir():
        raise MixsepError(f"There is no run named '{name}' in {Path(runs_dir).resolve()}.")
    inside = [Path(top, d) for top, dirs, _ in os.walk(path) for d in dirs]
    inside = [p for p in inside if not p.is_symlink()]  # rmtree takes a link, never what it leads to
    runs = [p for p in (path, *inside) if is_run(p)]  # a run trained into another run's folder, or a study's, too
    from .sweep import live_sweeps  # a sweep between two trials holds no run's lock

    for sweep in live_sweeps(runs_dir):
        if Path(sweep["folder"]).resolve().is_relative_to(path):
            raise MixsepError(f"Sweep '{Path(sweep['folder']).name}' is running in '{name}'; stop it on the Sweep page "
                              "(or wait for it to finish) before deleting it.")
    if not runs and any(path.iterdir()):
        raise MixsepError(f"'{name}' is not a run folder (no config.json inside); delete it by hand if you mean it.")
    commands = _train_commands()  # the live `mixsep train` processes, read from /proc once for all the runs inside
    for run in runs:
        what = 'it' if run == path else f'the folder {name} it is in'
        if lock_holder(run) is not None:  # said as a second trainer's refusal says it: whose process it is
            raise MixsepError(f"Run '{run_name(runs_dir, run)}' is training now, in {holder_text(run)}; stop it "
                              f"before deleting {what}.")
        if live_status(run).get("state") == State.RUNNING:  # "running" and its trainer alive
            raise MixsepError(f"Run '{run_name(runs_dir, run)}' is training now; stop it before deleting {what}.")
        # another dashboard's Resume (or a terminal's) still loading: no lock yet, only its command line
        starting = starting_trainer(run, commands)
        if starting is not None:
            raise MixsepError(f"Run '{run_name(runs_dir, run)}' is starting to train, in {starting}; stop it before "
                              f"deleting {what}.")
    try:
        shutil.rmtree(path)
    except OSError as e:
        raise MixsepError(f"Could not delete {path} ({e.strerror}).") from None
    return path


def remove_unstarted(run_dir: Path, made: Path | None, run=None, existed: frozenset | None = None) -> bool:
    """Remove a run folder made for a new run (by ``train``, or by the dashboard for its child), when the
    run never wrote a checkpoint or a step.

    Only mixsep's own files go (the lock, status.json, an empty metrics.csv or checkpoints
    folder, config.json, the dashboard child's worker.log), then the folders that were made
    (``made``: the run folder or a parent of it), when empty; anything else keeps the folder,
    and the failure is recorded in it instead. True when the folder was removed.

    ``existed``: the names a folder that was there, holding no run, had before this run (``train --run-dir``
    into a folder of the user's): only what the run added goes, and the folder stays, as it was.
    """
    if made is None and existed is None:
        return False
    run_dir = run_dir.absolute()
    try:
        names = {p.name for p in run_dir.iterdir()} - (existed or set())
        ckpt = run_dir / CHECKPOINTS
        if not names <= {LOCK, STATUS, CONFIG, METRICS, CHECKPOINTS, LOG} or \
                (CHECKPOINTS in names and ckpt.is_dir() and any(ckpt.iterdir())):
            return False
        metrics = run_dir / METRICS
        if METRICS in names and metrics.is_file() and len(metrics.read_bytes().splitlines()) > 1:
            return False
        if run is not None:
            run.close(restore_lock=LOCK not in names)  # the lock goes with its file, or keeps its old line
        for name in names - {CHECKPOINTS}:
            (run_dir / name).unlink()
        if CHECKPOINTS in names and ckpt.is_dir():
            ckpt.rmdir()
        if made is None:
            return True
        made = made.absolute()  # the parents it made go too, never a folder above those
        stop_at = made if made == run_dir or made in run_dir.parents else run_dir
        folder = run_dir
        while True:
            folder.rmdir()
            if folder == stop_at:
                break
            folder = folder.parent
            if any(folder.iterdir()):
                break
    except OSError:
        return False
    return True


def disk_usage(run_dir: Path) -> int:
    """Bytes used by a run folder (its files, links not followed)."""
    total = 0
    for root, _, files in os.walk(run_dir):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


@dataclass
class Run:
    """A run folder opened by its trainer: the lock, the metrics log, status writes.

    ``open()`` takes the lock (refusing a second trainer), removes temp files of writers
    that died; the trainer then calls ``start(step)`` once it knows the step it resumes
    from. Leaving the ``with`` block releases the lock.
    """

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        self.lock = RunLock(self.path)
        self.metrics = MetricsLog(self.path)
        self.warnings: list[str] = []
        self.facts: dict = {}  # recorded with every status (e.g. whether ImageNet weights loaded)
        self._old_stop: tuple | None = None  # the STOP there when the lock was taken (open): an earlier stop's
        self.touched = False  # whether this trainer has written the run's status or metrics yet

    def open(self) -> "Run":
        check_run_dir(self.path)
        # the STOP there before the lock is taken is an earlier stop's; one written once the lock is seen held asks
        # this trainer to stop. Read after the lock, a STOP written in the few ms between was taken for an earlier
        # one and removed unread (the suite's terminal-resume test, once, on a busy machine)
        old_stop = _stop_file(self.path)
        self.lock.acquire()
        try:
            check_layout(self.path)
        except MixsepError:
            self.lock.release(restore=True)  # refused before anything was written
            raise
        remove_stale_temps(self.path)
        self._old_stop = old_stop
        return self

    def clear_old_stop(self) -> None:
        """Remove the STOP file an earlier stop left (there when the lock was taken), and only that one: a STOP
        written while this trainer loads its data and model asks it to stop (it was removed unread, and the run
        trained to its end)."""
        if self._old_stop is not None and _stop_file(self.path) == self._old_stop:
            clear_stop(self.path)

    def close(self, restore_lock: bool = False) -> None:
        """Release the folder; ``restore_lock``: nothing was done, so .lock gets its previous holder's line back."""
        self.metrics.close()
        self.lock.release(restore=restore_lock)

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def status(self, state: State | str, message: str = "", **extra) -> None:
        self.touched = True
        extra = {**self.facts, **extra}
        if self.warnings:
            extra.setdefault("warnings", self.warnings)
        write_status(self.path, state, message, **extra)

    def fail(self, message: str, **extra) -> None:
        """Record a failure in the trainer's own words; best effort (the disk may be full)."""
        old = read_status(self.path)
        extra = {"step": old.get("step", 0), "total_steps": old.get("total_steps", 0), **extra}
        try:
            self.status(State.FAILED, message, error=message, **extra)
        except RunWriteError:
            # a full disk has no room for the temp file: rewrite status.json in place, in the
            # blocks it already has (a reader may see it half written and reads "unknown", never
            # a stale "running")
            status = {"state": State.FAILED.value, "message": message, "error": message, "updated": time.time(),
                      **identity(), **extra}
            try:
                with open(self.path / STATUS, "r+b") as f:
                    f.truncate(0)
                    f.write(json.dumps(status).encode())
            except OSError:
                pass



# --------------------------------------------------------------------------- following a live run


class Appended(NamedTuple):
    """What one poll of a MetricsTail found."""

    rows: list[dict]   # complete rows appended since the last poll, in file order
    restarted: bool    # the file was replaced or cut (a resume): drop every row read before


class MetricsTail:
    """metrics.csv for a reader that polls (the dashboard): each poll returns only what was appended.

    A poll costs what was appended since the last one, not the file's length (a 20-epoch run
    has 15,000 rows). It keeps the offset after the last complete line, so a line the trainer
    is still writing is read whole on a later poll. A resume rewrites the file through
    atomic_write (a new inode, usually shorter): the tail notices the new inode, a size below
    its offset, or a last-read line that is no longer where it was (an inode number reused),
    starts over from the header and says so. A missing file reads as no rows.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS
        self._forget()

    def _forget(self) -> None:
        self._inode: int | None = None
        self._offset = 0                  # bytes of complete lines read so far
        self._last = b""                  # the last complete line read, to recognise the same file
        self._fields: list[str] | None = None

    def _same_file(self, f, st: os.stat_result) -> bool:
        if st.st_ino != self._inode or st.st_size < self._offset:
            return False
        if not self._last:
            return True
        start = self._offset - len(self._last) - 1
        return os.pread(f.fileno(), len(self._last) + 1, start) == self._last + b"\n"

    def poll(self) -> Appended:
        try:
            f = open_regular(self.path)
        except OSError:
            restarted = self._inode is not None
            self._forget()
            return Appended([], restarted)
        with f:
            st = os.fstat(f.fileno())
            restarted = self._inode is not None and not self._same_file(f, st)
            if restarted:
                self._forget()
            self._inode = st.st_ino
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # past the last complete line; the rest waits for its newline
        if end == 0:
            return Appended([], restarted)
        self._offset += end
        self._last = data[:end - 1].rsplit(b"\n", 1)[-1]
        lines = metric_lines(data[:end])
        if self._fields is None:
            self._fields, lines = metric_header(lines[0]), lines[1:]
        return Appended(_records(metric_frame(self._fields, lines)), restarted)
