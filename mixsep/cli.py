"""`python -m mixsep {train,evaluate,grid,separate,info,download,sweep}`: thin wrappers over the library."""
from __future__ import annotations

import argparse
import collections
import errno
import io
import json
import os
import re
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path

from . import __version__
from .config import (SEPARATE_MODES, TrainConfig, add_train_flags, config_from_args, default_data_root, saved_data_root,
                     default_runs_dir, given_settings, settings, whole_number)
from .errors import (EARLY_SIGNALS, MissingCheckpoint, MixsepError, SecondInterrupt, StoppedBeforeTraining,
                     Terminated, interrupts_never_dropped, one_line, unreachable)

GRID_MAX_N = 100  # columns of `grid`: the report's shows 20; 100,000 once took 98 s, 7.8 GB and a 661,000-px PNG


def _add_data_root(p, of_run: bool = False):
    if of_run:  # a run knows where its data is: the default is that folder, not ./data
        p.add_argument("--data-root", default=None,
                       help="folder with MNIST/ and cifar-10-batches-py/ or cifar10/*.npz; default: the run's own "
                            "(its config.json) where that folder exists, else env MIXSEP_DATA_ROOT, else ./data")
        return
    p.add_argument("--data-root", default=default_data_root(),
                   help="folder with MNIST/ and cifar-10-batches-py/ or cifar10/*.npz (env MIXSEP_DATA_ROOT; default ./data)")


def _data_root_of(args, cfg: TrainConfig) -> Path:
    """--data-root if given; else the folder the run trained on (its config.json's, which a resume with
    --data-root updates, else its checkpoint's), if it is there; else the usual default."""
    if args.data_root is not None:
        return Path(args.data_root)
    from .run import CONFIG

    try:
        root = TrainConfig.load(_run_folder_of(args.run_dir) / CONFIG).data_root
    except MixsepError:  # config.json lost or damaged: the checkpoint's settings
        root = cfg.data_root
    root, said = saved_data_root(root, "the run's")
    if said:
        print(one_line(said), file=sys.stderr)
    return Path(root)


class _Parser(argparse.ArgumentParser):
    """argparse, whose mistakes read as every other mistake here: one line, exit 2 (not a usage block
    of a dozen lines, with the flag named twice)."""

    commands: dict = {}  # the top-level parser's subcommands, by name (build_parser)
    argv: list = []  # the words being parsed: a file named like a flag is named in the mistake it causes

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown flag after a command is that command's mistake: its --help lists the
        options (`python -m mixsep --help` lists only the commands)."""
        _Parser.argv = list(sys.argv[1:] if args is None else args)
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self.commands.get(getattr(ns, "command", None), self).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def error(self, message: str):
        said = re.match(r"argument ([^:]+): (.*)$", message, re.S)
        if said and said.group(2).startswith(said.group(1).split("/")[0]):  # "argument --epochs: --epochs takes ..."
            message = said.group(2)
        words = _Parser.argv[:_Parser.argv.index("--")] if "--" in _Parser.argv else _Parser.argv  # after --: files
        dashed = next((w for w in words if isinstance(w, str) and w.startswith("-") and len(w) > 1
                       and w not in self._option_string_actions and os.path.isfile(w)), None)
        if dashed is not None:  # `separate RUN -x.png` said only that no image was given
            taken = [o for o in self._option_string_actions if o.startswith(dashed.split("=", 1)[0])]
            how = f"as the flag {taken[0]}" if len(taken) == 1 else "as an option"  # argparse takes abbreviations
            self.exit(2, f"error: {message.rstrip('.')}; {dashed} is a file whose name begins with '-', so it was read "
                         f"{how}: write it as ./{dashed}, or put -- before the file names.\n")
        self.exit(2, f"error: {message.rstrip('.')}; `{self.prog} --help` lists the options.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m mixsep", description="Separate MNIST digits from CIFAR-10 images in their pixel-wise mean.")
    parser.add_argument("--version", action="version", version=f"mixsep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a separator; prints the run folder as its last line")
    t.add_argument("--runs-dir", default=default_runs_dir(), help="where run folders go (env MIXSEP_RUNS_DIR; default ./runs)")
    t.add_argument("--run-dir", default=None,
                   help="train into (or resume) this exact folder instead of a new one; a resume keeps the run's "
                        "settings, and only " + ", ".join(s.flag for s in settings(resolve=False) if s.on_resume) +
                        " may change them")
    # one flag per TrainConfig field, from its metadata; left out = its default
    add_train_flags(t, defaults=False, whose="the run's")
    t.add_argument("--recipe", action="store_true",
                   help="start from the settings the model's results in the README were trained with "
                        "(`python -m mixsep info --model NAME` prints them); the flags you give still win (a new run)")
    t.add_argument("--config", default=None,
                   help="read every training setting from this config.json (a run's own, or one the dashboard wrote); "
                        "beside it only the flags of where and how the run runs apply ("
                        + ", ".join(s.flag for s in settings(resolve=False) if s.on_resume) + "); others are refused")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="PSNR/SSIM of every recovery mode, honest and audited")
    e.add_argument("run_dir", help="a run folder (or a checkpoint file inside one)")
    _add_data_root(e, of_run=True)
    e.add_argument("--samples", type=whole_number, default=0, help="test pairs to score; 0 = the whole test split")
    e.add_argument("--mnist-test", default=None, help="score these MNIST images instead (idx or npz)")
    e.add_argument("--cifar-test", default=None, help="score these CIFAR images instead (batch or npz)")
    e.add_argument("--checkpoint", default=None, help="a checkpoint file; default: the run's latest")
    e.add_argument("--batch-size", type=whole_number, default=256,
                   help="pairs scored at once (default 256); lower it if memory runs short")
    e.add_argument("--json", default=None, help="also write the results to this JSON file")
    e.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    e.add_argument("--overwrite", action="store_true", help="replace --json and --markdown files that exist already")
    e.add_argument("--as-model", default=None, metavar="MODEL",
                   help="score the weights as another model that holds them (a unet_fraction run as unet_digit)")

    g = sub.add_parser("grid", help="the report's labelled sample grid as a PNG")
    g.add_argument("run_dir", help="a run folder (or a checkpoint file inside one)")
    _add_data_root(g, of_run=True)
    g.add_argument("--n", type=whole_number, default=20,
                   help=f"samples (columns), at most {GRID_MAX_N} (default 20, as the report's grid)")
    g.add_argument("--out", default="grid.png", help="PNG to write (default ./grid.png)")
    g.add_argument("--overwrite", action="store_true", help="replace an --out file that exists already")
    g.add_argument("--seed", type=whole_number, default=None, help="shuffle the samples with this seed; default: the first n")
    g.add_argument("--split", choices=["test", "train"], default="test",
                   help="the split the samples come from (default test)")
    g.add_argument("--checkpoint", default=None, help="a checkpoint file; default: the run's latest")
    g.add_argument("--errors", action="store_true", help="add rows of absolute error maps")
    g.add_argument("--no-direct", action="store_true", help="omit the row of direct CIFAR estimates")

    s = sub.add_parser("separate", help="separate your own 32x32 mixture images into a digit and a CIFAR-like image")
    s.add_argument("run_dir", help="a run folder (or a checkpoint file inside one)")
    s.add_argument("images", nargs="+", help="mixture images (PNG, JPEG, ...: 32x32, the mean of a grey digit and a colour image)")
    s.add_argument("--out", default="separated", help="folder for <name>.mnist.png and <name>.cifar.png (default ./separated)")
    s.add_argument("--mode", default=SEPARATE_MODES[0], choices=SEPARATE_MODES,
                   help="recovery mode (default projection_uniform: what the heads leave over is split evenly, so the "
                        "two outputs average to the mixture up to the clip to [0, 1] and the grey digit; "
                        "for interval models such as unet_digit every mode gives the same images)")
    s.add_argument("--overwrite", action="store_true", help="replace outputs that exist already")
    s.add_argument("--checkpoint", default=None, help="a checkpoint file; default: the run's latest")
    s.add_argument("--as-model", default=None, metavar="MODEL", help="load the weights as another model that holds them")

    i = sub.add_parser("info", help="parameters, FLOPs per sample, device and data found")
    _add_data_root(i)
    i.add_argument("--model", default=None, help="one model; default: all")
    i.add_argument("--check", action="store_true",
                   help="also read every data file found through and count its images; exit 2 if a split is missing "
                        "or does not read")

    dl = sub.add_parser("download", help="fetch MNIST and CIFAR-10 with torchvision's downloaders")
    _add_data_root(dl)
    _add_sweep(sub)
    parser.commands = dict(sub.choices)
    return parser


def _add_sweep(sub) -> None:
    s = sub.add_parser("sweep", help="search hyper-parameters with Optuna; each trial is a run folder, "
                                     "the last line printed is the best trial's")
    s.add_argument("--study", required=True, help="the study's name; also its folder in the runs folder. "
                                                  "Run the same command again (or on another machine) to resume or join it")
    s.add_argument("--storage", default=os.environ.get("MIXSEP_SWEEP_STORAGE") or None,
                   help="a database URL (postgresql://user@host/db) shared by every machine of the study; "
                        "default: the journal file optuna.journal in the runs folder (env MIXSEP_SWEEP_STORAGE)")
    s.add_argument("--runs-dir", default=default_runs_dir(),
                   help="where the trials' run folders go (env MIXSEP_RUNS_DIR; default ./runs)")
    s.add_argument("--trials", type=whole_number, default=None, help="finished trials the study aims at, across all workers "
                                                            "(default 20; on resume, the study's own)")
    s.add_argument("--workers", type=whole_number, default=None,
                   help="worker processes on this machine (default: one per GPU, or one using every CPU core)")
    s.add_argument("--space", default=None,
                   help='what to search, e.g. "lr=1e-4:1e-2:log,beta1=0.8:0.99,model=faithful|unet"; a bare name '
                        "takes that setting's default range (default: lr=1e-05:0.1:log,beta1=0.5:0.999,beta2=0.9:0.9999)")
    s.add_argument("--val-size", type=whole_number, default=None,
                   help="validation pairs held out from the end of the training data (default 2000)")
    s.add_argument("--report-every", type=whole_number, default=None,
                   help="steps between validation reports that the pruner judges; 0 = once per epoch "
                        "(default 0; on resume, the study's own)")
    s.add_argument("--pruner", choices=["median", "halving", "none"], default=None,
                   help="stop trials early: median (below the median of earlier trials) or successive halving "
                        "(default median; on resume, the study's own)")
    s.add_argument("--sampler-seed", type=whole_number, default=0,
                   help="seed of this command's TPE sampler, worker i adds i (give each machine its own; default 0)")
    s.add_argument("--heartbeat", type=whole_number, default=30,
                   help="seconds between a database trial's heartbeats; one silent for 3x that is failed and requeued "
                        "(default 30)")
    s.add_argument("--best", action="store_true", help="train nothing: print the best trial's run folder")
    s.add_argument("--worker-index", type=whole_number, default=None, help=argparse.SUPPRESS)  # set on a worker child
    s.add_argument("--trials-held", type=whole_number, default=None, help=argparse.SUPPRESS)  # its command's count
    add_train_flags(s, defaults=False, whose="the study's")  # the fixed settings of every trial


def cmd_train(args) -> int:
    """Train into --run-dir (resuming it) or a new folder; the folder's lock is taken before anything else.

    Every setting is read and checked before anything is written: a mistake leaves an existing run
    as it was, and a folder this command made for a run that never took a step is removed again.
    """
    from .errors import ResumeRefused
    from .run import Run, RunWriteError, remove_unstarted

    # no torch before the lock of --run-dir: importing it took seconds, in which a Delete on the dashboard saw
    # no trainer and removed the run this command was about to resume (which then began anew, in its place)
    if args.run_dir:
        from .run import CHECKPOINTS, CONFIG, LAST, METRICS, STATUS, is_mixsep_run, is_run, run_lives_in

        given = Path(args.run_dir).resolve()  # a link to it, or RUN/checkpoints/.
        run_files = (CONFIG, METRICS, STATUS, CHECKPOINTS + "/" + LAST)
        for inside in (given, *given.parents):  # before a lock file is made in there
            if inside.name == CHECKPOINTS and any((inside.parent / f).exists() for f in run_files):
                raise MixsepError(f"{args.run_dir} is inside the checkpoints folder of the run {inside.parent}; give "
                                  f"--run-dir {inside.parent} to resume it.")
            if inside != given and run_lives_in(inside):  # as a runs folder is checked: a project's files are no run
                raise _inside_a_run(args.run_dir, inside)
        from .sweep import SWEEP_FILE

        if (given / SWEEP_FILE).is_file():
            raise MixsepError(f"{args.run_dir} is the folder of the sweep study '{given.name}', which keeps its trials "
                              "in it (a run there would stop the study from resuming); name another folder, or one of "
                              "its trial folders to resume that trial.")
        study = next((a for a in given.parents if (a / SWEEP_FILE).is_file()), None)
        if study is not None and not is_run(given):  # a trial's own folder resumes; a new run there is in the way
            raise MixsepError(f"{args.run_dir} is inside the folder of the sweep study '{study.name}', where the sweep "
                              "makes its trials' folders (a run there would stop the study from resuming); name a "
                              "folder outside it, or a trial's own folder to resume that trial.")
        if not is_run(given):  # (a config.json that is a link to nothing or a FIFO: check_layout says so)
            _a_new_runs_folder(args.run_dir, given)
        held = _held_run(given)
        if held is not None:
            raise _holds_a_run(args.run_dir, held.relative_to(given))
        made = _missing_ancestor(Path(args.run_dir))  # the folder (or a parent) this command makes, if any
        # a folder of the user's that holds no run: a refusal leaves it as it was (not a .lock and a failed status)
        existed = frozenset(os.listdir(given)) if made is None and given.is_dir() and not is_mixsep_run(given) \
            else None
        run = Run(Path(args.run_dir)).open()  # a second trainer on this folder stops here, with the holder's name
        try:
            _no_trainer_around(args.run_dir, given)
            cfg = _train_config(args)
        except BaseException:
            run.close(restore_lock=True)  # refused: the run's files byte for byte as they were, .lock included
            remove_unstarted(run.path, made, existed=existed)
            raise
        _say_if_unlisted(run.path, Path(args.runs_dir))
    else:  # a bad setting or missing data stops here, before any folder is made
        from .data import require_split
        from .run import check_runs_dir
        from .train import new_run_dir

        cfg = _train_config(args)  # a bad setting is said first
        check_runs_dir(Path(args.runs_dir))
        require_split(Path(cfg.data_root), "train")
        top = _missing_ancestor(Path(args.runs_dir))  # a --runs-dir this command makes goes too, if nothing trains
        run = Run(new_run_dir(Path(args.runs_dir), cfg)).open()
        made, existed = top or run.path, None
    try:
        return _train(args, cfg, run)
    except ResumeRefused:  # found before anything was written: the run stays as it was, .lock included
        run.close(restore_lock=True)
        raise
    except MixsepError as e:
        if made is None and existed is None and (not run.touched or _finished(run.path)):
            # a run that exists, refused before this trainer wrote to it (a mistyped or damaged --data-root, --device
            # cuda with no GPU: its "stopped" was recorded "failed"; a finished run trains no step): it stays as it was
            run.close(restore_lock=True)
        elif not remove_unstarted(run.path, made, run, existed):  # a new run that never started (no GPU, corrupt data)
            _record_failure(run, str(e))
        elif isinstance(e, RunWriteError) and e.head is not None:  # a full disk at the start
            # the folder told to resume is gone: what to do is to run the command again
            raise MixsepError(f"{e.head}: {e.advice_to('run this command again')}; the new run's folder {run.path} "
                              "was removed again, as it held no step.") from None
        raise
    except StoppedBeforeTraining:
        if not remove_unstarted(run.path, made, run, existed):  # a resume keeps its folder: stopped, as it was
            _record_stop(run, "stopped by Ctrl-C or SIGTERM before training began")
        raise
    except KeyboardInterrupt:
        if not remove_unstarted(run.path, made, run, existed):
            _record_failure(run, "Training was force-quit before its first step.", only_if_not_ended=True)
        raise
    finally:
        run.close()


def _too_long(args, filename) -> str:
    """The path a user gave that a name too long came from: the path itself where it is the one refused, or is
    too long itself; else the deepest folder given that holds it (--run-dir X was refused naming X/sweep.json, a
    file mixsep looks for inside it, as if the user had typed that)."""
    if not filename:
        return "a path given"
    full = os.path.abspath(os.fsdecode(filename))
    given = [w for v in vars(args).values() for w in (v if isinstance(v, (list, tuple)) else [v])
             if isinstance(w, str) and w and "://" not in w]

    def too_long(path: str) -> bool:
        return len(os.fsencode(path)) >= 4096 or any(len(os.fsencode(c)) > 255 for c in Path(path).parts)
    for w in given:  # a path typed that is the name refused, lies under it, or holds it and is too long itself, or
        a = os.path.abspath(w)  # is too long itself and the name refused sits in a folder on its way (X/config.json
        on_its_way = (a + os.sep).startswith(os.path.dirname(full) + os.sep)  # looked for in each folder above it)
        if a == full or a.startswith(full + os.sep) or (too_long(a) and (full.startswith(a + os.sep) or on_its_way)):
            return w
    holding = [w for w in given if full.startswith(os.path.abspath(w) + os.sep)]
    if holding:
        w = max(holding, key=lambda w: len(os.path.abspath(w)))
        return f"{w} (with {Path(full).name} in it, a name mixsep writes or reads there)"
    return os.fsdecode(filename)


def _inside_a_run(run_dir: str, outer: Path) -> MixsepError:
    return MixsepError(f"{run_dir} is inside the run folder {outer}, and a run holds no other run (the dashboard would "
                       "not list it, and deleting that run would take this one); name a folder outside it.")


def _holds_a_run(run_dir: str, held: Path) -> MixsepError:
    return MixsepError(f"{run_dir} holds the run or study {held}, and a run folder holds no other run (is it the runs "
                       "folder?); name a new folder, or a run's own folder to resume it.")


def _a_new_runs_folder(run_dir: str, given: Path) -> None:
    """A --run-dir that holds no run yet (``given``, resolved) can take a new one: not the top of the file system or
    the home folder (a script's "$BASE/" with BASE unset trained into /, and every run below was then refused as a
    run inside a run), and no files of the user's under the names a run writes."""
    from .run import users_own_files

    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no HOME and no passwd entry
        home = None
    top = given == Path(given.anchor)
    if top or given == home:
        where = "the top of the file system" if top else "your home folder"
        raise MixsepError(f"--run-dir {run_dir} is {where}, and a run folder holds one run's files alone; name a new "
                          "folder for the run.")
    theirs = users_own_files(given)
    if theirs:
        names = " and ".join(filter(None, [", ".join(theirs[:-1]), theirs[-1]]))
        raise MixsepError(f"{run_dir} holds no mixsep run but holds {names} of its own, which a new run "
                          f"there would write over; move {'it' if len(theirs) == 1 else 'them'} away, or give --run-dir "
                          "a new or empty folder.")


def _no_trainer_around(run_dir: str, given: Path) -> None:
    """The nesting look again once this run holds its lock, a folder whose lock is held counting as a run: two
    trainers started at once in A and A/B both passed the first look (neither had written a thing yet) and both
    trained. Of two such, the later to take its lock sees the other's held, and is refused."""
    from .run import is_mixsep_run, lock_holder, run_lives_in

    def a_run(folder: Path) -> bool:
        return lock_holder(folder) is not None or is_mixsep_run(folder)
    outer = next((p for p in given.parents if run_lives_in(p)), None)  # a held lock counts there too
    if outer is not None:
        raise _inside_a_run(run_dir, outer)
    held = _held_run(given, a_run=a_run)
    if held is not None:
        raise _holds_a_run(run_dir, held.relative_to(given))


HELD_LOOK = 2000  # folders below a --run-dir looked through for a run or study it would hold


def _held_run(folder: Path, a_run=None, look: int = HELD_LOOK) -> Path | None:
    """The shallowest run (``a_run``, by default a folder mixsep trained in) or sweep study in ``folder`` (a
    --run-dir), at any depth, of the first ``look`` folders below it (breadth first); links are not followed. Three
    folders down was the limit once: a folder whose runs lay deeper became a run, and each of them was then refused
    its resume as a run inside a run."""
    from .run import CHECKPOINTS, is_mixsep_run
    from .sweep import SWEEP_FILE

    a_run = a_run or is_mixsep_run
    todo = collections.deque([folder])
    while todo and look > 0:
        look -= 1
        try:
            children = sorted(c for c in todo.popleft().iterdir()
                              if c.is_dir() and not c.is_symlink() and c.name != CHECKPOINTS)
        except OSError:  # not a folder yet, or unreadable: Run.open says what is wrong
            continue
        found = next((c for c in children if a_run(c) or (c / SWEEP_FILE).is_file()), None)
        if found is not None:
            return found
        todo.extend(children)
    return None


def _missing_ancestor(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist yet (None: ``path`` exists)."""
    path, missing = path.absolute(), None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def _say_if_unlisted(run_dir: Path, runs_dir: Path) -> None:
    """A --run-dir inside the runs folder that the dashboard (and --run NAME) cannot list says so."""
    from .run import resolve_run

    try:
        name = run_dir.resolve().relative_to(runs_dir.resolve()).as_posix()
    except ValueError:
        return  # another folder: the dashboard of another runs folder shows it
    try:
        resolve_run(runs_dir, name)
    except MixsepError as e:
        print(one_line(f"warning: the dashboard will not list this run: {e}"), file=sys.stderr)


def _finished(run_dir: Path) -> bool:
    from .run import State, read_status

    return read_status(run_dir).get("state") == State.FINISHED


def _record_stop(run, message: str) -> None:
    """A run stopped before it trained: "stopped", keeping the step and total its status had."""
    from .run import RunWriteError, State, read_status

    old = read_status(run.path)
    try:
        run.status(State.STOPPED, message, step=old.get("step", 0), total_steps=old.get("total_steps", 0))
    except RunWriteError:
        pass  # a full disk: the status stays what it was (never "running": this trainer had not written it)


def _record_failure(run, message: str, only_if_not_ended: bool = False) -> None:
    """The error in status.json, in the trainer's own words, unless the loop already recorded it."""
    from .run import State, read_status

    status = read_status(run.path)
    if status.get("state") == State.FAILED and status.get("message") == message:
        return
    if only_if_not_ended and status.get("state") in (State.STOPPED, State.FAILED, State.FINISHED):
        return
    run.fail(message)


def _train_config(args) -> TrainConfig:
    """The settings to train with: the flags (or --config, or --recipe) for a new run; for a run that
    exists, the settings it was started with, where flags may change only where and how it runs."""
    import dataclasses

    from .run import CONFIG
    from .train import read_resume_point

    flags = [s.flag for s in settings(resolve=False) if getattr(args, s.name, None) is not None and not s.on_resume]
    if getattr(args, "config", None):
        # a file that is not there (or does not read) is said first: dropping the flags would only lead to it
        TrainConfig.load(Path(args.config))
    if getattr(args, "config", None) and (flags or getattr(args, "recipe", False)):  # where and how it runs may differ
        raise MixsepError(f"--config {args.config} holds every setting, so {', '.join(flags or ['--recipe'])} would be "
                          "ignored; drop them, or drop --config and give the settings as flags.")
    run_dir = Path(args.run_dir) if args.run_dir else None
    # the point a resume continues from, read before anything is written: a damaged one changes nothing
    state = read_resume_point(run_dir) if run_dir is not None else None
    if run_dir is not None and (run_dir / CONFIG).is_file():
        saved, where = TrainConfig.load(run_dir / CONFIG, of_run=True).validate(), "its saved config"
        if state is not None:
            _config_as_trained(run_dir, saved, state)
    elif state is not None:
        # config.json lost, the checkpoint still holds the settings it was trained with
        saved = TrainConfig.from_dict(state["config"], saved=True)
        where = f"the config saved in its checkpoint ({CONFIG} is missing)"
    else:
        cfg = config_from_args(args)  # a relative data root would break a resume from another folder
        return dataclasses.replace(cfg, data_root=str(Path(cfg.data_root).resolve()))
    cfg = _resume_settings(args, run_dir, saved)
    # a folder with a config.json and no checkpoint yet: the Train page's new run (it writes the config first), or
    # a run stopped before its first checkpoint; either trains from step 0
    print(one_line(f"resuming {args.run_dir} with {where}" if state is not None else
                   f"training {args.run_dir} from step 0 with {where} (no checkpoint yet)"), file=sys.stderr)
    return cfg


def _config_as_trained(run_dir: Path, saved: TrainConfig, state: dict) -> None:
    """Refuse a config.json whose settings that shape the run differ from those its last.pt trained with: it
    was edited by hand, and a resume took the edit mid-run without a word (then wrote it into last.pt)."""
    from .run import CONFIG

    try:
        trained = TrainConfig.from_dict(state["config"], saved=True)
    except (MixsepError, TypeError, ValueError, KeyError):
        return  # a checkpoint whose settings do not read: the resume's own checks name it
    if trained.model != saved.model:
        return  # a last.pt of another model: refused as a damaged last.pt, naming the newest that reads (check_fits)
    by_name = {s.name: s for s in settings(resolve=False)}
    differ = [k for k, s in by_name.items() if not s.on_resume and getattr(saved, k) != getattr(trained, k)]
    if differ:
        shown = ", ".join(f"{k} {_word(getattr(saved, k))} (its checkpoint trained with {_word(getattr(trained, k))})"
                          for k in differ)
        raise MixsepError(f"{run_dir / CONFIG} says {shown}: it was edited after the run began, so the run is left as "
                          "it was; put those values back to resume it, or start a new run with the new ones.")


def _resume_settings(args, run_dir: Path, saved: TrainConfig) -> TrainConfig:
    """``saved`` with the settings given on the command line that a resume may change (Setting.on_resume:
    where the data is, the device, the checkpoint cadence, the time budget), written back to config.json;
    one sentence, and nothing written, when a given setting that shapes the run differs from it."""
    import dataclasses

    from .run import CONFIG

    by_name = {s.name: s for s in settings(resolve=False)}
    given = given_settings(args, model=saved.model)  # --config's file, or the flags over --recipe's
    source = f"--config {args.config} changes" if getattr(args, "config", None) else "the flags change"
    if getattr(args, "data_root", None) is None and given.get("data_root", saved.data_root) == saved.data_root:
        # read as evaluate, grid and a study's resume read it: the run's folder where it is on this machine, else
        # the usual default (a dashboard's child: its server's), said (QA: a run copied from another machine was
        # told to download into a folder that is not here, and never of --data-root)
        root, said = saved_data_root(saved.data_root, "the run's")
        if root != saved.data_root:
            from .data import require_split

            try:
                require_split(Path(root), "train")
            except MixsepError:
                where = root if Path(root).is_absolute() else f"{root} ({Path(root).resolve()})"  # ./data: whose? (QA)
                raise MixsepError(f"{run_dir} trained on the data root {saved.data_root}, which is not a folder on "
                                  f"this machine, and {where} holds no training data either; resume it with "
                                  "--data-root DIR naming a folder that holds MNIST and CIFAR-10.") from None
            print(one_line(said), file=sys.stderr, flush=True)
            given["data_root"] = root
    if "data_root" in given:
        given["data_root"] = str(Path(given["data_root"]).resolve())
    changed = {k: v for k, v in given.items() if v != getattr(saved, k)}
    fixed = [k for k in changed if not by_name[k].on_resume]
    typed = {k for k in fixed if getattr(args, k, None) is not None}  # (QA: "the flags change --batch-size 128",
    cooked = set()  # none typed; and "drop them", where --recipe set them too, was refused again)
    if getattr(args, "recipe", False) and not getattr(args, "config", None):
        from .config import recipe

        cooked = set(fixed) & set(recipe(saved.model))
    if cooked:
        source, drop = ("--recipe changes", "--recipe") if not typed else ("the flags and --recipe change",
                                                                            "them and --recipe")
    else:
        drop = "them"
    if fixed:
        shown = ", ".join(f"{_words(by_name[k], changed[k])} (the run's: {_was(by_name[k], getattr(saved, k))})"
                          for k in fixed)
        raise MixsepError(f"{run_dir} resumes with the settings it was started with, and {source} "
                          f"{shown}; leave out --run-dir to start a new run with them, or drop {drop} to resume.")
    if not changed:
        return saved
    cfg = dataclasses.replace(saved, **changed).validate()
    # saved once the run has loaded (its data, model and last.pt): a resume refused before that writes nothing
    args.save_resumed = (run_dir / CONFIG, cfg, "resuming with " + ", ".join(
        _words(by_name[k], v) for k, v in changed.items()) + f" (saved in {run_dir / CONFIG})")
    return cfg


def _word(value) -> str:
    return json.dumps(value) if isinstance(value, str) and not value else str(value)


def _words(setting, value) -> str:
    """The flag as a user would type it: ``--no-cpu-bf16`` for a switch turned off, ``--lr 0.01`` otherwise."""
    return " ".join(setting.argv(value)) if setting.type is bool else f"{setting.flag} {_word(value)}"


def _was(setting, value) -> str:
    """A run's saved value beside the flag that would change it: the switch's flag, else the value alone."""
    return " ".join(setting.argv(value)) if setting.type is bool else _word(value)


class StdoutFailed(OSError):
    """A write to standard output failed (other than a reader closing the pipe): `> /dev/full`, a full disk."""


class _Stdout:
    """sys.stdout, whose failed writes say that they were stdout's: an OSError from a bare print() names no file,
    and came out as a traceback."""

    def __init__(self, stream):
        self._stream = stream

    def _do(self, how, *args):
        try:
            return how(*args)
        except BrokenPipeError:  # the reader has all it wanted: main() says nothing
            raise
        except OSError as e:
            raise StdoutFailed(e.errno, e.strerror or e.__class__.__name__) from None

    def write(self, text):
        return self._do(self._stream.write, text)

    def flush(self):
        return self._do(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _early_signal(signum, frame):
    """train's and sweep's handler from their first line until their own (importing torch, reading the settings
    and data): as Python's own for Ctrl-C (KeyboardInterrupt), a stop for SIGTERM (train's only: the page's
    Stop), and remembered in EARLY_SIGNALS, since Python may drop the exception (errors.EARLY_SIGNALS)."""
    EARLY_SIGNALS.append(signum)
    raise KeyboardInterrupt if signum == signal.SIGINT else StoppedBeforeTraining


def _terminated(signum, frame):
    """SIGTERM to a command that trains nothing: the Ctrl-C path, which removes its half-written files."""
    raise Terminated


def _train(args, cfg: TrainConfig, run) -> int:
    from tqdm import tqdm

    from .run import State, read_status
    from .train import Training

    stop = {"flag": False, "training": False, "done": False}

    def on_signal(signum, frame):
        # the first Ctrl-C or SIGTERM finishes this step, checkpoints and exits cleanly;
        # a second Ctrl-C quits at once (the last checkpoint stays the resume point).
        # Before the first step (building the model, fetching its weights, loading the data) there is
        # no step to finish: stop at once (a stalled download never reached one, nor the page's Stop)
        if stop["done"]:  # the loop has ended and saved everything: nothing is left to stop or to quit
            return
        if not stop["training"]:
            EARLY_SIGNALS.append(signum)  # kept as well as raised: Python may drop the exception
            raise StoppedBeforeTraining
        if stop["flag"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        # said in the stopped run's status, which other pages read: a Ctrl-C in the terminal of the dashboard that
        # started the run reaches it too, and read "stopped by request" where no one had pressed Stop (QA)
        stop["flag"] = "stopped by Ctrl-C (SIGINT)" if signum == signal.SIGINT else True
        if signum == signal.SIGINT:
            print("\nstopping after this step (Ctrl-C again to quit at once)", file=sys.stderr)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if EARLY_SIGNALS:  # while torch loaded, its exception dropped
        raise StoppedBeforeTraining

    run_dir = run.path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training = Training(cfg, run, should_stop=lambda: stop["flag"])
    if EARLY_SIGNALS:  # a stop asked for while loading, whose exception Python dropped
        raise StoppedBeforeTraining
    if getattr(args, "save_resumed", None):
        from .run import write_json

        path, saved, message = args.save_resumed
        run.touched = True  # the resume's new settings, in its config.json
        write_json(path, saved.to_dict())
        print(one_line(message), file=sys.stderr)
    stop["training"] = True
    for w in caught:
        print(one_line(f"warning: {w.message}"), file=sys.stderr)
    print(one_line(f"run folder: {run_dir}"), file=sys.stderr)  # (stdout's last line is the path itself, as data)
    bar = tqdm(total=training.total_steps, initial=training.step, disable=args.quiet, unit="step", file=sys.stderr)

    said = len(training.run.warnings)

    def each(r):
        nonlocal said
        for w in training.run.warnings[said:]:  # said during training (a compile that failed at the first step)
            bar.write(f"warning: {w}", file=sys.stderr)
        said = len(training.run.warnings)
        bar.update(1)
        bar.set_postfix(loss=f"{r.loss:.4f}", mnist=f"{r.loss_mnist:.4f}", cifar=f"{r.loss_cifar:.4f}",
                        sps=f"{r.samples_per_s:.0f}")
    r = follow(training.steps(), each)
    stop["done"] = True  # a Ctrl-C from here on raised inside tqdm's or torch's exit code: a traceback
    bar.close()
    if r is not None:
        print(f"final step {r.step}/{r.total_steps}: loss {r.loss:.4f} (mnist {r.loss_mnist:.4f}, cifar {r.loss_cifar:.4f})",
              file=sys.stderr)
    status = read_status(run_dir) if training.step < training.total_steps else None
    if status is not None and (r is None or status.get("state") == State.FINISHED):
        # a run its time budget ended (or a resume that trained nothing, the budget spent): why, and how to go on
        print(one_line(f"note: {run_dir}: {status.get('message', '')}."), file=sys.stderr)
    elif r is None:  # a finished run resumed: its bar stood at the end, and nothing said so
        print(one_line(f"note: {run_dir} had already finished ({training.step}/{training.total_steps} steps); "
                       "nothing was trained."), file=sys.stderr)
    print(run_dir)
    return 0


def follow(steps, each):
    """Run ``each`` on every step of a training loop; the last step's result (None when there was none).

    A second Ctrl-C raises KeyboardInterrupt wherever it lands. One that lands here, between steps,
    is thrown into the loop, which records the force-quit as it does for one that lands inside it
    (merely closing the loop would record "stopped by its caller").
    """
    r = None
    try:
        for r in steps:
            each(r)
    except KeyboardInterrupt:
        try:
            steps.throw(KeyboardInterrupt)
        except (KeyboardInterrupt, StopIteration):
            pass
        raise
    return r


def _one_checkpoint(args) -> None:
    """A checkpoint file as RUN_DIR and a --checkpoint naming another: refused, not one of them quietly read."""
    given = Path(args.run_dir)
    if args.checkpoint and given.is_file() and given.resolve() != Path(args.checkpoint).resolve():
        raise MixsepError(f"RUN_DIR {args.run_dir} is a checkpoint and --checkpoint names another, {args.checkpoint}; "
                          "give the checkpoint once.")


def _require_run_path(run_dir: str, checkpoint: str | None = None) -> None:
    """The run (and a --checkpoint) named are there: a typo is said first, not an output it would have written."""
    from .train import require_run_path

    require_run_path(run_dir)
    if checkpoint and not os.path.lexists(checkpoint) and not unreachable(checkpoint):  # (a name too long: said
        raise MissingCheckpoint(checkpoint)  # so where it is read)


def _load_model(args):
    from .train import load_run_model, pick_device

    return load_run_model(Path(args.run_dir), Path(args.checkpoint) if args.checkpoint else None, pick_device("auto"),
                          getattr(args, "as_model", None))


def not_empty(value, flag: str, what: str) -> None:
    """"" given for a flag: refused, never read as the current folder (Path("") is ".") or as the default."""
    if value == "":
        raise MixsepError(f"{flag} is empty; name {what} (or leave the flag out for its default).")


def output_file(path: str | None, flag: str, suffix: str | None = None) -> Path | None:
    """A file the user named for output, checked before any work: its folder exists, it is not a folder."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise MixsepError(f"{flag} {p} is a folder; name a file in it.")
    if not p.parent.is_dir():
        if p.parent.is_symlink():  # a link to nothing, or one that leads back to itself
            raise MixsepError(f"Folder {p.parent} is a link that leads nowhere (to a missing folder, or back to "
                              f"itself); fix or remove it, or choose another {flag}.")
        if p.parent.exists():
            raise MixsepError(f"{p.parent} is not a folder; choose another {flag}.")
        raise MixsepError(f"Folder {p.parent} does not exist; create it or choose another {flag}.")
    if suffix and p.suffix.lower() != suffix:
        raise MixsepError(f"{flag} must name a {suffix} file (got {p.name}).")
    return p


def _run_folder_of(run_dir: str) -> Path:
    """The run folder that RUN_DIR names (a run folder, its checkpoints folder or a checkpoint in it),
    as load_run_model reads it."""
    from .run import CHECKPOINTS

    p = Path(run_dir)
    if p.is_file():
        p = p.parent.parent
    elif p.name == CHECKPOINTS:
        p = p.parent
    return p.resolve()


def new_output(path: str | None, flag: str, overwrite: bool, run_dir: str | None = None, inputs=(),
               suffix: str | None = None) -> Path | None:
    """An output file of evaluate, grid or a bench script, checked before the slow work (output_file's checks and more):
    never one of a run's own files (config.json, status.json, metrics.csv, .lock, worker.log, STOP, or
    anything in its checkpoints folder), a sweep's journal, a study's own files or an SQLite database, nor an
    input of this command; a file that exists only with --overwrite; and its folder must take a new file."""
    import tempfile

    from .run import CHECKPOINTS, CONFIG, LOCK, LOG, METRICS, STATUS, STOP, TMP_SUFFIX, in_checkpoints, is_run

    p = output_file(path, flag, suffix)
    if p is None:
        return None
    where = p.parent.resolve() / p.name  # where the write lands, through any symlinked folder
    this_run = _run_folder_of(run_dir) if run_dir else None  # a bench script may read no run

    def a_run(folder: Path) -> bool:  # this command's run is one even when its config.json is lost
        return folder == this_run or is_run(folder)

    if where.name in (CONFIG, STATUS, METRICS, LOCK, LOG, STOP) and a_run(where.parent):
        raise MixsepError(f"{flag} {p} is the run's own {where.name}, which no output flag replaces; "
                          f"choose another {flag}.")
    if in_checkpoints(where.parent, this_run):
        raise MixsepError(f"{flag} {p} is in the run's {CHECKPOINTS} folder, which only training writes; "
                          f"choose another {flag}.")
    from .sweep import _CUT_SUFFIX, JOURNAL, SWEEP_FILE, SWEEP_LOG, _read_sweep

    if where.name in (JOURNAL, JOURNAL + ".lock") or where.name.startswith(JOURNAL + _CUT_SUFFIX):  # Optuna's lock
        raise MixsepError(f"{flag} {p} is named as a sweep's journal, which holds every study of its runs folder "
                          f"and which no output flag replaces; choose another {flag}.")
    study = _read_sweep(where.parent) if where.name in (SWEEP_FILE, SWEEP_LOG) else {}
    if isinstance(study.get("study"), str) and "storage" in study:  # a study's sweep.json, as a sweep writes it
        raise MixsepError(f"{flag} {p} is the sweep study's own {where.name}, which no output flag "
                          f"replaces; choose another {flag}.")
    base = where.with_name(where.name.rsplit("-", 1)[0]) if where.name.endswith(("-journal", "-wal", "-shm")) else where
    if _is_sqlite(base):  # a sweep's sqlite:/// storage holds every study in it: --overwrite is no reason to lose them
        raise MixsepError(f"{flag} {p} is {'a file of ' * (base != where)}an SQLite database (a sweep's storage, say), "
                          f"which no output flag replaces; choose another {flag}.")
    if any(i and where == Path(i).resolve() for i in inputs):
        raise MixsepError(f"{flag} {p} is a file this command reads; choose another {flag}.")
    if (p.exists() or p.is_symlink()) and not p.is_file():  # --overwrite replaces files, never anything else
        raise MixsepError(f"{p} exists and is not a file; move it away or choose another {flag}.")
    if p.exists() and not overwrite:
        raise MixsepError(f"{p} exists already; pass --overwrite to replace it, or choose another {flag}.")
    try:  # a read-only folder, found now and not after the whole evaluation
        fd, probe = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # the folder is fine: the hidden name written beside it first is not
            raise MixsepError(f"{flag} {p.name} is too long a name here: mixsep writes it under a longer hidden "
                              f"name first; choose a shorter {flag}.") from None
        raise MixsepError(f"Folder {p.parent} is not writable ({e.strerror or e.__class__.__name__}); "
                          f"choose another {flag}.") from None
    return p


def _is_sqlite(path: Path) -> bool:
    """Whether ``path`` is an SQLite database file (by its header; a FIFO or a missing file is not)."""
    from .run import open_regular
    from .sweep import SQLITE_HEADER

    try:
        with open_regular(path) as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _not_a_data_file(root: Path, *outputs: tuple[Path | None, str]) -> None:
    """Refuse an output that is, or would become, one of the data root's files (known only once the run's data
    root is read): with --overwrite, `evaluate --markdown DATA/MNIST/raw/train-images-idx3-ubyte.gz` replaced the
    images, a data file this run does not read (the .npz beside the pickles, CIFAR-10's batches.meta) was replaced
    too, and a new `DATA/cifar10/cifar10_test_0.npz` was read as the test split by every later command. So: the
    data files there, any name the .npz readers would take, and anything in the downloaders' folders."""
    from .data import is_data_path

    for out, flag in outputs:
        if out is not None and is_data_path(root, out):
            raise MixsepError(f"{flag} {out} is one of the data files under {root}, or a name its readers would take "
                              f"for one; choose another {flag}.")


def cmd_evaluate(args) -> int:
    import pandas as pd

    from .data import calibration_pairs, labels_beside, load_pairs
    if args.samples < 0:
        raise MixsepError(f"--samples must be 0 (all) or positive (got {args.samples}).")
    if args.batch_size < 1:
        raise MixsepError(f"--batch-size must be at least 1 (got {args.batch_size}).")
    _require_run_path(args.run_dir, args.checkpoint)  # a typo is named first, not an output it would write
    _one_checkpoint(args)
    inputs = (args.checkpoint, args.run_dir, args.mnist_test, args.cifar_test,
              args.mnist_test and labels_beside(args.mnist_test))  # the labels read beside the images
    json_out = new_output(args.json, "--json", args.overwrite, args.run_dir, inputs)
    markdown_out = new_output(args.markdown, "--markdown", args.overwrite, args.run_dir, inputs)
    if json_out and markdown_out and json_out.resolve() == markdown_out.resolve():
        raise MixsepError(f"--json and --markdown both name {json_out}; the second would overwrite the first: "
                          "give each its own file.")
    model, cfg, info = _load_model(args)
    root = _data_root_of(args, cfg)
    _not_a_data_file(root, (json_out, "--json"), (markdown_out, "--markdown"))
    pairs = load_pairs(root, "test", mnist_path=args.mnist_test, cifar_path=args.cifar_test)
    if args.samples > len(pairs):
        print(f"note: the test split holds {len(pairs)} pairs, so evaluate scores {len(pairs)}, not {args.samples}",
              file=sys.stderr)
    from .metrics import evaluate  # torchmetrics takes seconds to import: a bad run or file is refused first

    from tqdm import tqdm

    # on a terminal, how far it is (the full CIFAR-10 test split takes a minute or two on a CPU, which looked like
    # a hang); none where stderr is a file or a pipe
    with tqdm(desc="scoring", unit="pair", total=min(args.samples or len(pairs), len(pairs)), file=sys.stderr,
              disable=None, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)
        result = evaluate(model, pairs, count=args.samples, batch_size=args.batch_size,
                          calibration=calibration_pairs(root), progress=progress)
    pd.set_option("display.width", 140)
    scored_as = f", scored as {args.as_model}" if args.as_model else ""
    try:  # the table first (a failed write below still leaves it on screen), but a reader that stops early
        # (`| head`) costs no file: the files are written all the same, then the closed pipe ends the command
        pairs = f"{result.n} test pair{'' if result.n == 1 else 's'}"
        print(f"checkpoint {info['path']} (step {info['step']}{scored_as}), {pairs}, data_range=1.0")
        # no interval (one pair) is a blank, not "NaN" (QA); an infinite mean (a pair predicted exactly) stays inf
        print(result.table().to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep=""))
        print(f"optimal projection weights: mnist {result.weights['mnist']:.3f}, cifar {result.weights['cifar']:.3f} "
              f"(fitted on {result.weights['fitted_on']})")
        print("audit, the report's error (data_range=255 on [0, 1] images), direct mode:")
        for a in result.audit:
            print(f"  {a['source']}: PSNR {a['psnr_data_range_255']:.2f} dB, SSIM {a['ssim_data_range_255']:.4f}  (not a real score)")
        sys.stdout.flush()
        closed = None
    except (BrokenPipeError, StdoutFailed) as e:  # the files are written all the same
        closed = e
    from .run import json_bytes, write_all

    files = []
    if json_out:
        obj = result.to_json() | {"checkpoint": info, "config": cfg.to_dict(), "scored_as": args.as_model or cfg.model}
        files.append((json_out, json_bytes(obj)))
    if markdown_out:
        files.append((markdown_out, result.to_markdown().encode()))
    write_all(files, overwrite=args.overwrite)  # both or neither
    if closed is not None:
        raise closed
    for path, _ in files:
        print(f"wrote {path}")
    return 0


def cmd_grid(args) -> int:
    from .data import load_pairs
    from .grid import grid_image, sample_indices
    if not 1 <= args.n <= GRID_MAX_N:
        raise MixsepError(f"--n must lie in [1, {GRID_MAX_N}] (got {args.n}); the report's grid shows 20.")
    if args.seed is not None:  # the training seed's rule: torch takes no seed past 64 bits
        from .config import setting_by_name

        setting_by_name("seed", resolve=False).check(args.seed)
    _require_run_path(args.run_dir, args.checkpoint)  # a typo is named first, not an output it would write
    _one_checkpoint(args)
    out = new_output(args.out, "--out", args.overwrite, args.run_dir, (args.checkpoint, args.run_dir), suffix=".png")
    model, cfg, info = _load_model(args)
    pairs = load_pairs(_data_root_of(args, cfg), args.split)  # (no data file is a .png, the only --out grid takes)
    idx = sample_indices(len(pairs), args.n, args.seed)
    if args.n > len(pairs):
        print(f"note: the {args.split} split holds {len(pairs)} pairs, so the grid shows {len(idx)}, not {args.n}",
              file=sys.stderr)
    img = grid_image(model, pairs, idx, show_direct=not args.no_direct, show_errors=args.errors,
                     title=f"{Path(info['path']).parent.parent.name}  step {info['step']}  ({args.split} split)")
    from .run import write_all

    png = io.BytesIO()
    img.save(png, format="PNG")
    write_all([(out, png.getvalue())], overwrite=args.overwrite)  # not over a file written since the check
    print(out)
    return 0


def cmd_separate(args) -> int:
    from .separate import prepare, separate, write_outputs

    if "" in args.images:  # Path("") is the current folder: ". does not exist or is not a file"
        raise MixsepError("An image path given is empty; name each mixture image to separate.")
    _require_run_path(args.run_dir, args.checkpoint)  # a typo is named first, not an output it would write
    _one_checkpoint(args)
    pixels, paths = prepare([Path(p) for p in args.images], args.out, args.overwrite,  # before the model loads
                            this_run=_run_folder_of(args.run_dir), reads=[p for p in (args.checkpoint, args.run_dir) if p])
    model, _, info = _load_model(args)
    write_outputs(paths, *separate(model, pixels, args.mode), overwrite=args.overwrite)
    print(one_line(f"checkpoint {info['path']} (step {info['step']}), mode {args.mode}: {len(paths)} mixture(s) "
                   "separated"), file=sys.stderr)
    for d in paths:
        print(d["mnist"])
        print(d["cifar"])
    return 0


def cmd_info(args) -> int:
    import torch

    from .config import RECIPES, recipe_flags, thread_wait
    from .data import SOURCE_NAMES, data_status, load_files, root_is_a_file
    from .model import MODELS, build_model, count_parameters, flops_per_sample, known_model

    names = [known_model(args.model)] if args.model is not None else list(MODELS)  # refused before any line
    print(f"torch {torch.__version__}; device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if torch.cuda.is_available() else 'cpu'}"
          f", {torch.get_num_threads()} threads ({thread_wait()})")
    for name in names:  # --model "" is a name, and refused
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = build_model(name, pretrained=False)
        flops, executed = flops_per_sample(m), flops_per_sample(m, executed=True)
        skipped = f"; {executed / 1e6:.0f} multiplied, the rest meet only zero padding" if executed < flops else ""
        n = count_parameters(m)
        print(f"model {name}: " + (f"{n / 1e6:.2f} M" if n >= 10_000 else f"{n:,}") + " parameters, "
              f"{flops / 1e6:.0f} MFLOPs per sample forward{skipped} (about 3x that per training sample)")
        if name in RECIPES:
            print(f"  recipe (train --recipe): {' '.join(recipe_flags(name))}")
    print(f"data root {Path(args.data_root).resolve()}:")
    a_file = root_is_a_file(Path(args.data_root))
    if a_file and not args.check:  # why all four read "missing"
        print(f"  note: {a_file}")
    bad, missing = [], []
    for row in data_status(Path(args.data_root)):
        where = ", ".join(row["files"]) if row["found"] else f"missing (expected {row['expected']})"
        print(f"  {row['source']:5s} {row['split']:5s} {where}")
        name = f"{SOURCE_NAMES[row['source']]} {row['split']}"
        if args.check and not row["found"]:
            missing.append(name)
        elif args.check:  # found is not readable: a truncated archive is found all the same
            try:
                images, _ = load_files([Path(f) for f in row["files"]], row["source"])
                print(f"              reads: {len(images):,} images")
            except MixsepError as e:
                print(f"              does not read: {e}")
                bad.append(name)
    if missing and a_file:  # not "missing, run download", which says so
        raise MixsepError(a_file)
    if bad or missing:  # `download` fetches only what is not there: a damaged file must go first
        said = "; ".join(filter(None, [f"the {' and '.join(bad)} files do not read (remove them first)" if bad
                                       else "", f"the {' and '.join(missing)} files are missing" if missing else ""]))
        raise MixsepError(f"Under {args.data_root}, {said}; {'then run' if bad else 'run'} `python -m mixsep download "
                          f"--data-root {shlex.quote(str(args.data_root))}` where the internet is reachable, or copy "
                          "the files there.")
    return 0


def cmd_download(args) -> int:
    from .data import download

    download(Path(args.data_root))
    return 0


def cmd_sweep(args) -> int:
    """Check everything (writing nothing on bad input), run the study, print the best trial's run folder."""
    from .sweep import best_trial, load_study, plan, run_sweep

    p = plan(args)
    code = 0
    if not args.best:
        code = run_sweep(p)
        if args.worker_index is not None:  # a worker child: its parent reports
            return code
    elif not p.exists:
        raise MixsepError(f"There is no study '{p.study}' in {p.storage_label}; start it without --best.")
    best = best_trial(load_study(p))
    if best is None:
        if code:
            return code
        raise MixsepError(f"No trial of study '{p.study}' has completed yet; run the sweep (longer) first.")
    a = best.user_attrs
    if not isinstance(a.get("run"), str) or not a["run"]:  # a trial others added to the study by hand
        raise MixsepError(f"The best trial of study '{p.study}', trial {best.number}, names no run folder: it was not "
                          "trained by `python -m mixsep sweep`.")
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    heads = ", ".join(f"{s} {a[f'val_psnr_{s}']:.2f}" for s in ("mnist", "cifar")
                      if isinstance(a.get(f"val_psnr_{s}"), (int, float)))
    print(f"best: trial {best.number}, validation PSNR {best.value:.2f} dB{f' ({heads})' if heads else ''}, {params}",
          file=sys.stderr)
    folder = p.runs_dir / a["run"]
    if not folder.is_dir():  # a database study whose trial ran elsewhere, or a deleted folder
        import socket

        host, trained_in = a.get("host", "?"), a.get("runs_dir")
        there = Path(trained_in) / a["run"] if isinstance(trained_in, str) and host == socket.gethostname() else None
        if there is not None and there.is_dir():  # the study's runs folder is another: its folder, which evaluates
            print(one_line(f"note: trial {best.number} trained in the runs folder {trained_in}, not {p.runs_dir} "
                           "(--runs-dir or MIXSEP_RUNS_DIR); its folder is named from there"), file=sys.stderr)
            folder = there  # (QA: a path that was not there, exit 0, and "moved or deleted" of a folder that was not)
        else:
            where = (f"it trained on this machine ({host}), so its folder was moved or deleted; put it back"
                     if host == socket.gethostname() else
                     f"trial {best.number} trained on {host}; copy its run folder into this runs folder (or use "
                     "--runs-dir)")
            print(one_line(f"note: {folder} is not there: {where} to evaluate it"), file=sys.stderr)
    print(folder)
    return code


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "grid": cmd_grid, "separate": cmd_separate, "info": cmd_info,
            "download": cmd_download, "sweep": cmd_sweep}


# every flag that names a thing, and what it names
NAMED_FLAGS = {"runs_dir": "a folder", "data_root": "a folder", "run_dir": "a folder", "checkpoint": "a file",
               "mnist_test": "a file", "cifar_test": "a file", "json": "a file", "markdown": "a file",
               "config": "a file", "out": "a file", "as_model": "a model", "storage": "a database URL"}


def main(argv=None, restore_signals: bool = True) -> int:
    args = build_parser().parse_args(argv)
    previous = {}
    if args.command in ("train", "sweep") and threading.current_thread() is threading.main_thread():
        EARLY_SIGNALS.clear()  # a sweep's worker children are ended by SIGTERM in start-up too: its default stays
        signals = (signal.SIGINT, signal.SIGTERM) if args.command == "train" else (signal.SIGINT,)
        previous = {s: signal.signal(s, _early_signal) for s in signals}
    elif threading.current_thread() is threading.main_thread():
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _terminated)}
    stdout, sys.stdout = sys.stdout, _Stdout(sys.stdout)
    try:
        # "" is never meant: Path("") is the current folder, and a file or model read as not given took the
        # default (`--checkpoint "$CKPT"` with CKPT unset scored another checkpoint). ~ in a folder or a file is
        # the home folder here as on the dashboard and in a sweep's storage, also where no shell expanded it
        # (quoted, or MIXSEP_RUNS_DIR='~/runs'): it made a folder named ~ in the current one, whose removal by
        # `rm -r ~` would take the home folder
        for name, what in NAMED_FLAGS.items():
            if name == "run_dir" and args.command != "train" and getattr(args, name, None) == "":  # positional
                raise MixsepError("RUN_DIR is empty; name a run folder (or a checkpoint file inside one).")
            if name != "out" or args.command == "grid":  # separate's --out, a folder, says so in its own sentence
                not_empty(getattr(args, name, None), f"--{name.replace('_', '-')}", what)
            if what in ("a folder", "a file") and isinstance(getattr(args, name, None), str):
                setattr(args, name, os.path.expanduser(getattr(args, name)))
        if isinstance(getattr(args, "images", None), list):  # separate's mixtures
            args.images = [os.path.expanduser(i) for i in args.images]
        with interrupts_never_dropped():
            code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a stdout that cannot be written fails here, not in the interpreter's exit
        return code
    except MixsepError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)  # one line, whatever the names it quotes hold
        return 2
    except KeyboardInterrupt as e:
        # train and sweep finish their step on a first Ctrl-C once their handler is in place (it raises
        # on the second); a first Ctrl-C before that (loading torch, reading the data) ends here too
        trains = args.command in ("train", "sweep")
        if args.command == "sweep" and os.environ.get("MIXSEP_SWEEP_WORKER"):  # a worker child: its parent says it
            return 130
        if isinstance(e, StoppedBeforeTraining):
            said = "train stopped before training began (Ctrl-C or SIGTERM); nothing was trained."
        elif trains and (isinstance(e, SecondInterrupt) or
                         signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, _early_signal)):
            said = "quit at once by a second Ctrl-C; a resume continues from the last checkpoint."
        else:
            said = f"{args.command} interrupted by {'SIGTERM' if isinstance(e, Terminated) else 'Ctrl-C'}" + (
                " before training began." if trains else ".")
        print(f"error: {said}", file=sys.stderr)
        return 130
    except ValueError as e:  # a path holding a NUL character (from a --config file, say)
        if "embedded null byte" not in str(e):
            raise
        print("error: a path given holds a NUL character, which no file name can hold; remove it.", file=sys.stderr)
        return 2
    except RuntimeError as e:  # pathlib's resolve() of a link that leads back to itself (Python 3.11)
        loop = "Symlink loop from "
        if not str(e).startswith(loop):
            raise
        path = str(e)[len(loop):]
        path = path[1:-1] if path[:1] in "'\"" and path[-1:] == path[:1] else path  # pathlib quotes it as repr
        print(one_line(f"error: {path} is a link that leads back to itself; remove it or name another path."),
              file=sys.stderr)
        return 2
    except (BrokenPipeError, StdoutFailed) as e:  # `| head -1`: the reader has all it wanted, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail again
        if isinstance(e, StdoutFailed):  # `> /dev/full`, or a full disk or quota under a redirect
            print(f"error: could not write to standard output ({e.strerror}); what {args.command} printed there "
                  "is lost.", file=sys.stderr)
        return 1
    except OSError as e:  # (after the two above) a path no file system takes: a name past its length limit
        if e.errno != errno.ENAMETOOLONG:
            raise
        print(one_line(f"error: {_too_long(args, e.filename)} has a name too long for the file system; choose a "
                       "shorter one."), file=sys.stderr)
        return 2
    finally:
        if not restore_signals and threading.current_thread() is threading.main_thread():
            # as the program (__main__): the command is done, so a Ctrl-C or SIGTERM from here ends it at once, as
            # the operating system does. Restoring Python's own SIGINT handler first let a Ctrl-C raise
            # KeyboardInterrupt while the next handler was put back, a traceback after "final step ..."
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_DFL)
        sys.stdout = stdout
        for s, h in previous.items():  # called in-process (a notebook, the tests): the caller's handlers again
            if h is not None and restore_signals:
                signal.signal(s, h)
        if previous:
            EARLY_SIGNALS.clear()
