"""Hyper-parameter sweeps: an Optuna study whose trials are ordinary run folders.

A study searches the sweepable settings of ``mixsep.config.settings()`` (by default the
Train page's sliders: learning rate, Adam's betas) with a seeded TPE sampler. Each trial
trains through ``mixsep.train.Training`` into a run folder of its own, so Samples,
Metrics, Compare, ``evaluate`` and ``train --run-dir`` (resume) work on it unchanged.
During a trial the validation PSNR is reported every ``report_every`` steps and a
pruner (median or successive halving) stops the trial early when it trails the others.

The objective is the mean PSNR of the two sources (direct recovery, ``data_range=1.0``)
on a validation split carved from the training data: the last ``val_size`` pairs of the
training sets (index N - V .. N - 1, N the shorter set's length). Trials train on the
first N - V pairs only, and never with ``repair`` (fresh MNIST partners would be drawn
from the whole MNIST set, validation digits included). The test split is never touched:
``python -m mixsep evaluate`` scores the best trial on it.

On disk (the runs folder is RUNS_DIR):

  RUNS_DIR/optuna.journal             the default storage: every study of this runs folder
  RUNS_DIR/<study>/sweep.json         the last sweep command on this machine: pid, state, message
  RUNS_DIR/<study>/sweep.log          the dashboard's sweep child output
  RUNS_DIR/<study>/trial-0003/        trial 3's run folder (its name is "<study>/trial-0003")

Storage. Without ``--storage`` the study lives in Optuna's journal file in the runs
folder: Optuna advises against SQLite for parallel optimisation (its writers lock the
whole database), and its journal file backend is an append-only log under a file lock
meant for several processes on one machine. Any SQLAlchemy URL works too, PostgreSQL
first: the same command started on several machines joins the same study.

Dead workers. With a database, each running trial sends a heartbeat; a trial whose
heartbeat stops is failed by the next worker that looks, and requeued with the same
parameters (Optuna's RetryHeartbeatStaleTrialCallback). The journal has no heartbeat, but
it serves one machine: each trial records its worker's pid and start time, and a worker
fails and requeues any running trial of this machine whose process is gone. Either way a
requeued trial resumes its run folder from the last checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import errno
import functools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import TrainConfig, default_data_root, saved_data_root, settings
from .errors import EARLY_SIGNALS, MixsepError, SecondInterrupt, one_line

JOURNAL = "optuna.journal"
SWEEP_FILE, SWEEP_LOG = "sweep.json", "sweep.log"
SWEEP_LOCK = ".sweep.lock"  # each sweep command of the study holds a shared flock on it for its life
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
ATTR = "mixsep"               # the study's user attribute holding its space and fixed settings
# the sweep's flags that make the study what it is, and their defaults: a study keeps those it was made with
# (--sampler-seed and --heartbeat belong to each command: machines joining one study give their own seeds)
SWEEP_FLAGS = {"report_every": 0, "pruner": "median"}
# settings each machine chooses for itself when it joins a study
LOCAL = ("data_root", "device", "amp", "cpu_bf16", "compile", "cuda_graphs")
MAX_RETRY = 3                 # requeues of a trial whose worker died, before it counts as failed (stops don't count)
PSNR_CAP = 100.0              # dB; a pixel-perfect image is +inf PSNR and would swamp the mean
POLL_S = 2.0                  # how often an idle worker looks at the others' trials
STORAGE_ENV = "MIXSEP_SWEEP_STORAGE"  # keeps a database password off the command line
_CHILD_ENV = "MIXSEP_SWEEP_WORKER"  # set in a worker child: its parent speaks for the command


# --------------------------------------------------------------------------- the search space


@dataclass(frozen=True)
class Dimension:
    """One swept setting: a numeric range (low..high, maybe log-scaled) or a list of values."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def text(self) -> str:
        """The dimension as --space writes it, read back by parse_space as this same dimension: its ends in full
        (repr: the shortest text that reads back as the same float; ':g' kept 6 digits, and a study of a narrow
        range read back as an empty one) and its scale whenever it is not the setting's own (':linear' was lost)."""
        if self.choices is not None:
            return f"{self.name}=" + "|".join(str(c) for c in self.choices)
        own = getattr(sweepable().get(self.name), "log", False)
        scale = ":log" if self.log else ":linear" if own else ""
        return f"{self.name}={self.low!r}:{self.high!r}{scale}"

    def suggest(self, trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def _unordered(space: dict[str, Dimension]) -> dict:
    """A space as a set of ranges: the same settings, ranges and choices in any order compare equal."""
    return {name: dataclasses.replace(dim, choices=frozenset(dim.choices)) if dim.choices else dim
            for name, dim in space.items()}


def sweepable(resolve: bool = True) -> dict:
    """The settings a sweep may vary, by name (those whose metadata gives a default sweep); ``resolve=False``: all but
    the model, whose choices import torch (config.settings)."""
    return {s.name: s for s in settings(resolve) if s.sweep is not None}


def default_space() -> dict[str, Dimension]:
    """The Train page's sliders: every sweepable setting with a numeric range."""
    return {n: _default_dimension(s) for n, s in sweepable().items() if not s.categorical}


def _default_dimension(s) -> Dimension:
    if s.categorical:
        return Dimension(s.name, choices=tuple(s.sweep))
    low, high = s.sweep
    return Dimension(s.name, s.type(low), s.type(high), s.log)


def format_space(space: dict[str, Dimension]) -> str:
    return ",".join(d.text() for d in space.values())


def parse_space(text: str | None) -> dict[str, Dimension]:
    """``lr=1e-4:1e-2:log,beta1=0.8:0.99,model=faithful|unet`` -> dimensions; None = the default space.

    ``name`` alone takes the setting's default sweep; ``:log`` or ``:linear`` overrides the
    setting's scale. Raises MixsepError with one sentence for anything else.
    """
    if text is None:
        return default_space()
    # the models' names import torch: only for a space that names one of them, or a setting that is not a light one
    # (its sentence lists them all); `sweep --best` read a stored lr,beta1 space in 2 s, 1.3 of them importing torch
    light = sweepable(resolve=False)
    named = {e.partition("=")[0].strip().replace("-", "_") for e in text.split(",") if e.strip()}
    known = light if named <= set(light) else sweepable()
    space: dict[str, Dimension] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, equals, spec = (p.strip() for p in entry.partition("="))
        name = name.replace("-", "_")
        if name not in known:
            hint = "it cannot be swept; give it as a fixed flag" if name in {s.name for s in settings()} \
                else "no such setting"
            raise MixsepError(f"--space names '{name}' ({hint}); settings that can be swept: {', '.join(known)}.")
        if name in space:
            raise MixsepError(f"--space names '{name}' twice; give each setting once.")
        if equals and not spec:
            example = "|".join(str(v) for v in known[name].sweep[:3]) if known[name].categorical \
                else f"{known[name].sweep[0]:g}:{known[name].sweep[1]:g}"
            raise MixsepError(f"--space gives '{name}=' with nothing after '='; write {name}={example}, "
                              f"or {name} alone for its default sweep.")
        space[name] = _dimension(known[name], spec) if spec else _default_dimension(known[name])
    if not space:
        raise MixsepError(f"--space is empty; name at least one of: {', '.join(known)}.")
    return space


def _dimension(s, spec: str) -> Dimension:
    if s.categorical:
        if ":" in spec:
            raise MixsepError(f"{s.name} takes a list of values separated by '|', for example "
                              f"{s.name}={'|'.join(str(v) for v in s.sweep[:3])}; not a range.")
        values = tuple(dict.fromkeys(_value(s, v.strip()) for v in spec.split("|") if v.strip()))
        if len(values) < 2:
            raise MixsepError(f"Sweeping {s.name} over {len(values)} value{'' if len(values) == 1 else 's'} is no sweep; give two or more "
                              f"separated by '|', or set it with the fixed flag {s.flag}.")
        return Dimension(s.name, choices=values)
    parts = [p.strip() for p in spec.split(":")]
    scale = parts.pop() if len(parts) == 3 else None
    if len(parts) != 2 or scale not in (None, "log", "linear"):
        raise MixsepError(f"{s.name} takes a range low:high (or low:high:log), for example "
                          f"{s.name}={s.sweep[0]:g}:{s.sweep[1]:g}; got '{spec}'.")
    low, high = (_parsed(s, p) for p in parts)
    for v in (low, high):
        if v != v:  # NaN compares false with everything: the setting's own sentence says what is wrong
            s.check(v)
    if not low < high:  # before the values' own checks: 1:0 is a range the wrong way round, not a bad 0
        raise MixsepError(f"The range {s.name}={low:g}:{high:g} is "
                          f"{'empty' if low == high else 'inverted: its low end is above its high end'}; "
                          "give the low end first and make it smaller than the high end.")
    for v in (low, high):
        s.check(v)
    log = s.log if scale is None else scale == "log"
    if log and low <= 0:
        raise MixsepError(f"A log-scaled range needs a positive low end ({s.name}={low:g}:{high:g}); "
                          "raise it or add ':linear'.")
    return Dimension(s.name, low, high, log)


def _parsed(s, text: str):
    """A value of setting ``s`` in its type (not yet range-checked), or MixsepError with one sentence."""
    try:
        return s.parse(text)
    except argparse.ArgumentTypeError as e:
        raise MixsepError(f"In --space, {e}") from None


def _value(s, text: str):
    """A value of setting ``s`` in its type and valid range, or MixsepError with the setting's own sentence."""
    value = _parsed(s, text)
    s.check(value)
    return value


# --------------------------------------------------------------------------- the validation split


def available_pairs(data_root: Path) -> int:
    """Training pairs the data root holds: the shorter of the two training sets."""
    from .data import load_split

    return min(len(load_split(Path(data_root), "mnist", "train")[0]), len(load_split(Path(data_root), "cifar", "train")[0]))


def validation_pairs(data_root: Path, count: int):
    """The last ``count`` training pairs (index N - count .. N - 1): no trial trains on them."""
    from .data import PairData, load_split

    m, ml = load_split(Path(data_root), "mnist", "train")
    c, cl = load_split(Path(data_root), "cifar", "train")
    end = min(len(m), len(c))
    if not 0 < count < end:
        raise MixsepError(f"The validation split must hold from 1 to {end - 1} of the {end} training pairs "
                          f"(got --val-size {count}).")
    return PairData(m[end - count:end], ml[end - count:end], c[end - count:end], cl[end - count:end])


def validate(model, pairs, batch_size: int = 256) -> dict:
    """Mean PSNR (dB, capped at PSNR_CAP) and SSIM of each head's direct output on ``pairs``."""
    import torch

    from .metrics import predict, psnr, ssim

    was_training = model.training
    model.eval()
    sums = {k: 0.0 for k in ("psnr_mnist", "psnr_cifar", "ssim_mnist", "ssim_cifar")}
    for m_u8, c_u8 in pairs.eval_batches(batch_size):
        mnist, cifar, _, mnist_hat, cifar_hat = predict(model, m_u8, c_u8)
        for source, pred, target in (("mnist", mnist_hat.clamp(0, 1), mnist), ("cifar", cifar_hat.clamp(0, 1), cifar)):
            sums[f"psnr_{source}"] += float(torch.clamp(psnr(pred, target), max=PSNR_CAP).sum())
            sums[f"ssim_{source}"] += float(ssim(pred, target).sum())
    model.train(was_training)
    out = {k: v / len(pairs) for k, v in sums.items()}
    out["psnr"] = (out["psnr_mnist"] + out["psnr_cifar"]) / 2
    return out


# --------------------------------------------------------------------------- storage


def storage_label(url: str | None, runs_dir: Path) -> str:
    """The storage as people may see it: a journal path, or the URL with its password hidden
    (also in a string that is not a URL at all: whatever stands between ':' and '@' is masked)."""
    if not url:
        return str(Path(runs_dir).resolve() / JOURNAL)
    return _mask_to_last_at(_storage_label(url))


def storage_key(url: str | None, runs_dir: Path) -> str:
    """Which storage ``url`` names, the same for two spellings of one (a relative or an absolute SQLite path, a
    driver named or not, a default port written or not, a query): what the Sweep page compares with the key a
    sweep records in its sweep.json. No password in it. A relative SQLite path is this process's working
    folder's, as the sweep opens it."""
    if not url:
        return f"journal:{Path(runs_dir).resolve() / JOURNAL}"
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        backend = u.get_backend_name().lower()
        if backend == "sqlite":
            db = u.database or ""
            return "sqlite:" + (str(Path(db).expanduser().resolve()) if db and db != ":memory:" else db)
        backend = "mysql" if backend == "mariadb" else backend  # one dialect of two names
        port = u.port or {"postgresql": 5432, "mysql": 3306}.get(backend)
        host = u.host or str(u.query.get("host") or "")  # ?host=/var/run/postgresql: a server by its socket
        return f"{backend}://{u.username or ''}@{host.lower()}:{port}/{u.database or ''}"
    except Exception:  # not a URL at all: only the same text names the same storage
        return _mask_to_last_at(url)


def recorded_storage(record: dict) -> str:
    """The storage a sweep.json names, as it can be typed under the Sweep page's Storage: an SQLite file by its
    absolute path (the key's; a relative one is the sweep's working folder's, not the server's), another by its
    label (its password hidden)."""
    key = str(record.get("storage_key") or "")
    return f"sqlite:///{key[len('sqlite:'):]}" if key.startswith("sqlite:/") else str(record.get("storage"))


def _mask_to_last_at(label: str) -> str:
    """A URL's password hidden up to the last '@' in it: an unencoded '/', '?' or '@' in a password made the
    parsers end it early, and its tail was shown (over-masking a query's '@' hides nothing secret)."""
    return re.sub(r"^([^:/@]*://[^:/@]*):.*@", r"\1:***@", label, flags=re.S)


_QUERY_PASSWORD = re.compile(r"(?i)([?&][^&=]*password=)[^&]*")  # ?password=, &sslpassword=, ...


def _storage_label(url: str) -> str:
    from sqlalchemy.engine import make_url

    if _extra_at(url):  # SQLAlchemy would take the password's tail for the host: mask up to the last '@'
        url = _QUERY_PASSWORD.sub(r"\1***", url)
        head, _, rest = url.partition("://") if "://" in url else ("", "", url)
        user, _, host = rest.rpartition("@")
        user = user.split(":", 1)[0] + ":***" if ":" in user else "***"
        return (head + "://" if head else "") + f"{user}@{host}"
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":  # a file, no password: as typed (rendered, "ü" read "%C3%BC")
            return _QUERY_PASSWORD.sub(r"\1***", url)
        # libpq also takes a password (and sslpassword) as a query parameter: masked as in the fallbacks
        return _QUERY_PASSWORD.sub(r"\1***", parsed.render_as_string(hide_password=True))
    except Exception:  # ArgumentError, or ValueError for a port that is not a number
        url = _QUERY_PASSWORD.sub(r"\1***", url)
        from .run import PASSWORD_KEYWORD

        url = PASSWORD_KEYWORD.sub(r"\1***", url)  # libpq's keyword form: "host=h password='p q' dbname=d"
        return re.sub(r"^((?:[^/@:]*://)?[^/@:]*):[^@]*@", r"\1:***@", url)


def _extra_at(url: str) -> bool:
    """Whether the URL's user and password hold an '@' that is not written as %40 (or its query does: refused
    alike, as the two cannot be told apart)."""
    rest = url.partition("://")[2] if "://" in url else url
    return rest.count("@") > 1  # anywhere: a '/' or '?' in the password ended the part looked at


_SQLITE_QUERY = ("mode", "timeout")  # the query options of a sqlite:/// storage that take effect (_connect_url)
_SQLITE_MODES = ("ro", "rw", "rwc")  # SQLite's own: read-only, read-write, read-write-create (its default)


def check_storage(url: str | None, timeout_s: int = 10, writes: bool = True,
                  default: str = "leave --storage out (and MIXSEP_SWEEP_STORAGE unset)") -> None:
    """Refuse an unknown scheme or an unreachable database, writing nothing anywhere; ``writes``: the command
    writes the study (a sweep, not --best), so a read-only storage is refused too. ``default``: how the user
    asks for the journal file instead (the Sweep page has a box, not --storage)."""
    if not url:
        return
    if _extra_at(url):
        raise MixsepError(f"The storage '{storage_label(url, Path('.'))}' has more than one '@' before its host; "
                          "write an '@' in the user name or password as %40.")
    import sqlalchemy

    try:
        parsed = database_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        why = "" if isinstance(e, sqlalchemy.exc.ArgumentError) else " (its host or port does not parse)"
        raise MixsepError(f"The storage '{storage_label(url, Path('.'))}' is not a database URL{why}; write it like "
                          f"postgresql://user@host/dbname, or {default} for the journal file in the runs folder.") from None
    shown = storage_label(url, Path("."))
    def missing(name: str) -> str:  # PostgreSQL's driver is mixsep's own requirement (psycopg2-binary): the URL is right
        if parsed.drivername == "postgresql":
            return f"{shown} needs PostgreSQL's Python driver psycopg2, which is not installed; `pip install " \
                   "psycopg2-binary` installs it (mixsep's requirements hold it)."
        return f"{shown} needs the Python database driver '{name}', which is not installed; install it, or use " \
               "postgresql://, whose driver mixsep installs."
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise MixsepError(f"Unknown storage URL scheme '{parsed.drivername}' in {shown}; use postgresql://, "
                          f"mysql://, sqlite:///, or {default} for the journal file.") from None
    except ImportError as e:
        raise MixsepError(missing(e.name)) from None
    if parsed.get_backend_name() == "sqlite":  # connecting would create the file: check its folder only
        if parsed.database in (None, "", ":memory:"):
            raise MixsepError(f"{shown} is an in-memory database that other processes cannot share; name a file.")
        _check_sqlite_query(parsed.query, shown, writes)
        file = Path(parsed.database).expanduser().resolve()
        if not file.parent.is_dir():
            raise MixsepError(f"The folder {file.parent} of {shown} does not exist; create it or choose another path.")
        if file.is_dir():
            raise MixsepError(f"{shown} names a folder, not a database file; name a file in it.")
        try:
            with open(file, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except FileNotFoundError:
            mode = parsed.query.get("mode")
            if mode in ("ro", "rw"):  # SQLite opens only a file that is there, and says just 'unable to open'
                fix = f", or drop '?mode={mode}' to make a new one" if writes else ""
                raise MixsepError(f"There is no database file {file}, and {shown} opens only one that is there "
                                  f"(mode={mode}); name the database of an earlier sweep{fix}.") from None
            return
        except OSError as e:
            raise MixsepError(f"Cannot read the database file of {shown} ({e.strerror}); "
                              "check its permissions.") from None
        if head and head != SQLITE_HEADER:  # SQLite makes an empty file a new database
            raise MixsepError(f"{file} is not an SQLite database, so {shown} cannot hold a study; name a new file "
                              "or the database of an earlier sweep.")
        return
    try:
        engine = sqlalchemy.create_engine(parsed, **_engine_kwargs(parsed, timeout_s))
        with engine.connect():
            pass
        engine.dispose()
    except ImportError as e:
        raise MixsepError(missing(e.name)) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise MixsepError(f"Cannot reach the database {shown} ({_reason(e)}); start it, or check the host, port, "
                          "user, password and database name in the storage URL.") from None


def _check_sqlite_query(query, shown: str, writes: bool) -> None:
    """Refuse a sqlite:/// storage's query option that would not take effect (SQLite's driver silently drops all
    but its own, and its 'uri' reads the path as another file), and a read-only one for a command that writes."""
    for key, value in query.items():
        if key not in _SQLITE_QUERY:
            raise MixsepError(f"{shown} has the query option '{key}', which a SQLite storage does not take (its driver "
                              "would ignore it); drop it: one takes mode=ro|rw|rwc and timeout=SECONDS.")
        if not isinstance(value, str):
            raise MixsepError(f"{shown} gives '{key}' {len(value)} times; give it once.")
    mode, timeout = query.get("mode"), query.get("timeout")
    if mode is not None and mode not in _SQLITE_MODES:
        raise MixsepError(f"{shown} has mode={mode}; a SQLite storage takes mode=ro (read-only), rw or rwc "
                          "(read-write).")
    if timeout is not None and not re.fullmatch(r"\d+(\.\d*)?", timeout):
        raise MixsepError(f"{shown} has timeout={timeout}; give the seconds a worker waits for another's write, "
                          "such as timeout=30.")
    if mode == "ro" and writes:
        raise MixsepError(f"{shown} opens the database read-only (mode=ro), and a sweep writes its study there; drop "
                          "'?mode=ro' to run it (--best, which only reads, takes it).")


def _connect_url(parsed):
    """The URL SQLAlchemy connects to: a sqlite:/// storage's mode (mode=ro: read-only) is an option of SQLite's
    own URI filenames, which its driver passes on only with uri=true; from a plain path it drops it silently."""
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return parsed
    if "mode" not in parsed.query:  # ~ is the home folder, as the checks before took it (SQLite took a folder ~)
        return parsed.set(database=str(Path(parsed.database).expanduser()))
    from urllib.parse import quote

    file = Path(parsed.database).expanduser().resolve()
    return parsed.set(database="file:" + quote(str(file)), query={**parsed.query, "uri": "true"})


def database_url(url: str):
    """The SQLAlchemy URL; a plain postgresql:// goes through psycopg2 when psycopg 3 is not installed."""
    import importlib.util

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        parsed = parsed.set(drivername="postgresql+psycopg2")  # SQLAlchemy 2.1 defaults to psycopg 3
    return parsed


def _engine_kwargs(parsed, timeout_s: int) -> dict:
    kwargs = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": timeout_s}
    return kwargs


def open_storage(url: str | None, runs_dir: Path, heartbeat_s: int = 30, create: bool = True):
    """The Optuna storage: the runs folder's journal file, or an RDB with heartbeats.

    ``create=False`` returns None where opening would write (a journal file or tables
    that do not exist yet): the study cannot exist there.
    """
    import optuna

    # at each open, not once per process: a caller's catch_warnings (a test's) drops a filter set before it
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="The reported value is ignored because",
                            category=UserWarning)  # a resumed trial reports again the steps after its checkpoint
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints one line per trial itself
    _quiet_interrupts()
    if not url:
        return _open_journal(Path(runs_dir), create)
    import sqlalchemy

    parsed = database_url(url)
    shown = storage_label(url, Path(runs_dir))
    if not create and parsed.get_backend_name() == "sqlite" and not Path(parsed.database).expanduser().is_file():
        return None
    sqlite, new_file = sqlite_file(url)
    if not new_file:  # what is there is looked at first, without writing: Optuna makes its tables as it opens
        engine = sqlalchemy.create_engine(_connect_url(parsed), **_engine_kwargs(parsed, 10))
        try:
            tables = sqlalchemy.inspect(engine)
            if tables.has_table("studies") and not (
                    tables.has_table("version_info")
                    and {"study_id", "study_name"} <= {c["name"] for c in tables.get_columns("studies")}):
                # another program's database: Optuna added its 23 tables beside the owner's, then failed on the
                # foreign "studies" (a page that only reads did so, with a traceback)
                raise MixsepError(f"The database {shown} holds a table named 'studies' that is not Optuna's, so it is "
                                  "not a sweep's storage; nothing was written there. Name a database of the sweep's "
                                  "own (or none: the journal file in the runs folder).")
            if not create and not tables.has_table("studies"):
                return None
        except sqlalchemy.exc.SQLAlchemyError as e:
            # SQLite's file locked by a worker making the tables: the attempts below wait for it; any other
            # database that cannot be read here cannot be written either (one wait for an unreachable host, not 3)
            if not create or sqlite is None:
                raise _unusable_database(shown, e) from None
        finally:
            engine.dispose()
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                _connect_url(parsed).render_as_string(hide_password=False), engine_kwargs=_engine_kwargs(parsed, 10),
                heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=lambda study, trial: requeue(
                    study, trial, stopped=ended_cleanly(runs_dir, trial)))
        except sqlalchemy.exc.SQLAlchemyError as e:
            # workers started together race to create Optuna's tables, and the loser retries; a full disk does not
            # get emptier, and is not the URL's fault: it named a file on a disk with no room for Optuna's tables
            if _disk_full(e):
                raise _full_disk_for_database(sqlite, new_file, shown) from None
            if attempt == 2:
                if new_file and sqlite.is_file() and sqlite.stat().st_size == 0:  # leave nothing made here
                    sqlite.unlink()
                raise _unusable_database(shown, e) from None
            time.sleep(1 + attempt)


def sqlite_file(url: str | None) -> tuple[Path | None, bool]:
    """The SQLite file a storage URL names (None for another database), and whether it is new (this command makes
    it)."""
    if not url:
        return None, False
    parsed = database_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None, False
    path = Path(parsed.database).expanduser()
    return path, not path.exists()


def _disk_full(e: BaseException) -> bool:
    return "disk is full" in _reason(e)  # SQLite's SQLITE_FULL: "database or disk is full"


def _full_disk_for_database(sqlite: Path | None, new: bool, shown: str) -> MixsepError:
    """The sentence for a database that a full disk stopped; a ``new`` SQLite file (this command made it) goes,
    with the files SQLite keeps beside it."""
    for path in (sqlite, *(sqlite.with_name(sqlite.name + x) for x in ("-journal", "-wal", "-shm"))) if new else ():
        with contextlib.suppress(OSError):
            path.unlink()
    where = f"The disk holding {sqlite.parent}" if sqlite is not None else "The disk holding the database"
    what = "could not be made" if new else "could not take the study's rows"
    return MixsepError(f"{where} is full, so the sweep's database {shown} {what}; free some space and run the "
                       "command again.")


def _lost_database(p: Plan, e: BaseException, then: str, when: str = "") -> DatabaseLost:
    """The sentence of a sweep whose database went away (``when``: " just after trial N ended"), and what the same
    command does once it is back (``then``)."""
    return DatabaseLost(f"The sweep lost its database {storage_label(p.storage, p.runs_dir)} ({_reason(e)}){when}; "
                        f"once it is back, run the same command: {then}.")


class DatabaseLost(MixsepError):
    """A sweep's database went away while it ran: the same command resumes once it is back (sweep.json: stopped)."""


@contextlib.contextmanager
def database_errors_as(sentence: Callable[[BaseException], MixsepError]):
    """Around reads and writes of a storage: an error of its database (Optuna raises StorageInternalError from a
    lost connection, a traceback where it was not caught) is ``sentence(error)``; a MixsepError, said already,
    passes as it is."""
    try:
        yield
    except MixsepError:
        raise
    except Exception as e:
        if _database_error(e) is None:
            raise
        raise sentence(e) from None


def unreadable_database(e: BaseException, url: str | None, runs_dir: Path) -> MixsepError:
    """The sentence for a storage that a reader (the Sweep page) opened and can no longer read."""
    return MixsepError(f"Cannot read the sweep's database {storage_label(url, Path(runs_dir))} ({_reason(e)}); "
                       "the page reads it again as it refreshes (or reload it once the database is back).")


def _unusable_database(shown: str, e) -> MixsepError:
    return MixsepError(f"Cannot use the database {shown} as a sweep's storage ({_reason(e)}); check the storage URL, "
                       "or leave it out for the journal file in the runs folder.")


# Optuna's journal holds one JSON object per line (json.dumps: ASCII), appended under its lock file;
# a cut-off last line is moved to JOURNAL + _CUT_SUFFIX + a timestamp before the next append.
_CUT_SUFFIX = ".cut-"


def _journal_damaged(path: Path, line: int, why: str) -> MixsepError:
    return MixsepError(f"The sweep journal {path} is damaged: line {line} {why}; move the file away (or restore "
                       "it from a backup) and run the sweep again.")


def _check_journal_lines(path: Path, data: bytes) -> None:
    """Refuse (one sentence naming the line) any complete line of ``data`` that is not an Optuna journal record."""
    import json

    try:  # a private module: without it any integer op_code passes here and Optuna's replay judges it
        from optuna.storages.journal._storage import JournalOperation

        known = {int(op) for op in JournalOperation}
    except ImportError:
        known = None
    for n, line in enumerate(data.splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            raise _journal_damaged(path, n, "is not JSON text") from None
        except RecursionError:
            raise _journal_damaged(path, n, "is JSON nested too deeply to read") from None
        if not isinstance(record, dict):
            raise _journal_damaged(path, n, "is not a JSON object")
        op = record.get("op_code")
        if type(op) is not int or (known is not None and op not in known):
            raise _journal_damaged(path, n, f"has no operation Optuna knows (op_code {json.dumps(op)})")


def _looks_cut(tail: bytes) -> bool:
    """Whether bytes after the last newline are the start of a record (a write cut short), not garbage."""
    return tail.startswith(b"{") and tail.isascii() and b"\0" not in tail


def _check_journal(path: Path) -> tuple[int, bytes]:
    """Validate the journal's complete records; returns (end of the last complete one, the bytes after it).

    A cut-off last line that looks like the start of a record is returned as the tail (Optuna's
    reader skips it); anything else is refused with one sentence. Writes nothing.
    """
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise _journal_is_a_folder(path) from None
    except OSError as e:
        raise MixsepError(f"Cannot read the sweep journal {path} ({e.strerror}); check its permissions.") from None
    end = data.rfind(b"\n") + 1
    _check_journal_lines(path, data[:end])
    tail = data[end:]
    if tail and not _looks_cut(tail):
        raise _journal_damaged(path, data[:end].count(b"\n") + 1, "is not an Optuna journal record")
    return end, tail


def _journal_unwritable(path: Path, e: OSError) -> MixsepError:
    return MixsepError(f"Cannot write the sweep journal {path} ({e.strerror}); choose a writable --runs-dir "
                       "(or MIXSEP_RUNS_DIR).")


def _journal_is_a_folder(path: Path) -> MixsepError:
    return MixsepError(f"{path} is a folder, but a sweep keeps its journal file there; move the folder away "
                       "or choose another --runs-dir.")


def _open_journal(runs_dir: Path, create: bool):
    """The journal storage of a runs folder, checked before Optuna reads or writes it."""
    import optuna
    from optuna.storages.journal import JournalFileOpenLock

    path = runs_dir / JOURNAL
    if path.is_dir():
        raise _journal_is_a_folder(path)
    if path.exists():  # read only here: `--best` reads a journal on a read-only disk too
        _check_journal(path)
    elif not create:
        return None
    else:
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
            open(path, "ab").close()
        except OSError as e:
            raise _journal_unwritable(path, e) from None
    backend = _journal_backend()(str(path), lock_obj=JournalFileOpenLock(str(path)))
    try:
        return optuna.storages.JournalStorage(backend)
    except (KeyError, TypeError, ValueError, AssertionError, IndexError, AttributeError):
        raise _journal_damaged(path, backend.line, "is a record Optuna cannot replay") from None


@functools.lru_cache(maxsize=None)
def _journal_backend():
    """The journal backend class (made on first use: importing mixsep.sweep imports no Optuna)."""
    from optuna.storages.journal import JournalFileBackend

    class JournalFile(JournalFileBackend):
        """Optuna's journal file, which first drops a cut-off last line (a killed or full-disk write)
        under Optuna's own lock, so that a new record never lands on a half-written one."""

        line = 0  # the last record read (1-based): where a replay failed

        def read_logs(self, log_number_from: int):
            for self.line, log in enumerate(super().read_logs(log_number_from), start=log_number_from + 1):
                yield log

        def append_logs(self, logs: list) -> None:
            import json

            path = Path(self._file_path)
            try:  # the lock file and the journal: a read-only disk fails at the first
                self._lock.acquire()  # Optuna's own lock (public acquire/release), as its append takes it
                try:
                    _drop_cut_tail(path)
                    text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
                    with open(path, "ab") as f:
                        f.write(text.encode("utf-8"))
                        f.flush()
                        os.fsync(f.fileno())
                finally:
                    self._lock.release()
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):  # a record cut short here is dropped next time
                    raise MixsepError(f"Cannot write the sweep journal {path} ({e.strerror}); free some space, "
                                      "then run the same command to resume.") from None
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                raise _journal_unwritable(path, e) from None

    return JournalFile


def _said_under_optunas_assert(e: BaseException) -> MixsepError | None:
    """The MixsepError under Optuna's ``assert False, "Should not reach."``: when recording a trial's end raises
    (the journal's append on a full disk), Optuna's optimize finds the trial still running and asserts over it."""
    seen = 0
    while isinstance(e, AssertionError) and seen < 4:
        e, seen = e.__context__, seen + 1
        if isinstance(e, MixsepError):
            return e
    return None


def _drop_cut_tail(path: Path) -> None:
    """Under the journal's lock (no append is half done): cut bytes after the last newline away,
    keeping them in a side file and saying so once; refuse a journal that is not one."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
    end, tail = _check_journal(path)
    if not tail:
        return
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for i in range(1000):
        side = path.with_name(f"{path.name}{_CUT_SUFFIX}{stamp}" + (f"-{i}" if i else ""))
        try:
            with open(side, "xb") as f:
                f.write(tail)
                f.flush()
                os.fsync(f.fileno())
            break
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            side.unlink(missing_ok=True)
            raise MixsepError(f"The sweep journal {path} ends in a cut-off record, which could not be kept in "
                              f"{side.name} ({e.strerror}); free some space, then run the sweep again.") from None
    else:
        raise MixsepError(f"The sweep journal {path} ends in a cut-off record, and {path.name}{_CUT_SUFFIX}{stamp} "
                          "is taken a thousand times over; move those files away and run the sweep again.")
    with open(path, "r+b") as f:
        f.truncate(end)
        os.fsync(f.fileno())
    print(f"note: dropped a cut-off last record ({len(tail)} bytes) from {path}, left by a killed or full-disk "
          f"write; kept in {side.name}.", file=sys.stderr, flush=True)


def list_studies(storage) -> list:
    """Optuna's summaries of every study in a storage (newest first)."""
    import optuna

    if storage is None:
        return []
    found = optuna.get_all_study_summaries(storage, include_best_trial=False)
    return sorted(found, key=lambda s: s.datetime_start or datetime.datetime.min, reverse=True)


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Everything a sweep will do, checked before anything is written."""

    study: str
    storage: str | None          # a database URL, or None for the runs folder's journal
    runs_dir: Path
    space: dict[str, Dimension]
    config: TrainConfig          # the fixed settings of every trial; train_size excludes the validation pairs
    fixed: dict                  # the training flags given when the study was made (compared on resume)
    trials: int                  # the study's target of finished trials
    val_size: int
    report_every: int            # steps between validation reports; 0 = once per epoch
    pruner: str
    sampler_seed: int
    heartbeat: int
    workers: int
    exists: bool = False         # the study is in the storage already (this command resumes it)
    worker_index: int = 0
    pairs: int = 0               # the training pairs of the data root: its last val_size are the validation pairs
    trials_held: int | None = None  # a worker child's: the trials its command found (sampler_seed); else counted

    @property
    def folder(self) -> Path:
        return Path(self.runs_dir) / self.study

    @property
    def storage_label(self) -> str:
        return storage_label(self.storage, self.runs_dir)

    def attrs(self) -> dict:
        return {"space": format_space(self.space), "config": self.config.to_dict(), "fixed": self.fixed,
                "val_size": self.val_size, "trials": self.trials, **({"pairs": self.pairs} if self.pairs else {}),
                "flags": {name: getattr(self, name) for name in SWEEP_FLAGS}}


def plan(args, data_root: str | None = None) -> Plan:
    """Check a `sweep` command's arguments, data, storage and study; write nothing.

    ``data_root``: the default data root instead of MIXSEP_DATA_ROOT or ./data (a dashboard's: its server's), read
    where --data-root is not given and a resumed study's own is not a folder here; nothing is printed then.
    Raises MixsepError with one sentence for the first problem found.
    """
    study, runs_dir = args.study, Path(args.runs_dir).expanduser().resolve()
    _check_flags(args, runs_dir)
    names = [s.name for s in settings(resolve=False)]
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    local = {n: given.pop(n) for n in LOCAL if n in given}

    check_storage(args.storage, writes=not getattr(args, "best", False))
    storage = open_storage(args.storage, runs_dir, args.heartbeat, create=False)
    stored = _stored(storage, study)
    if stored is not None and "data_root" not in local and not getattr(args, "best", False):
        # as a run's resume does (QA: it read ./data, and said to download 180 MB there)
        local["data_root"], said = saved_data_root(stored["config"].get("data_root"), "the study's", data_root)
        if said and data_root is None:
            print(one_line(said), file=sys.stderr, flush=True)
    local.setdefault("data_root", data_root or default_data_root())
    local["data_root"] = str(Path(local["data_root"]).expanduser().resolve())
    if stored is None and getattr(args, "best", False):  # before checks that only a new study needs
        raise MixsepError(f"There is no study '{study}' in {storage_label(args.storage, runs_dir)}; "
                          "start it without --best.")
    if stored is None:  # trial folders of an earlier study of this name (its journal deleted, another storage):
        from .run import is_run

        left = sorted(d.name for d in (runs_dir / study).glob("trial-*") if is_run(d))  # trial 0 would train on in one
        if left:
            raise MixsepError(f"{runs_dir / study} holds {left[0]}{' and more' if len(left) > 1 else ''} from an "
                              f"earlier study named '{study}' that {storage_label(args.storage, runs_dir)} does not "
                              "know; move that folder away or choose another study name.")
    if stored is not None:
        space = parse_space(stored["space"])
        if args.space is not None and _unordered(parse_space(args.space)) != _unordered(space):  # in any order
            given_space = format_space(parse_space(args.space))
            raise MixsepError(f"Study '{study}' exists with the space {stored['space']}, not {given_space}; "
                              "resume it without --space (or with that one), or choose another study name.")
        # --best resumes nothing: told to "resume it without" a flag, a user asked what resuming had to do with it
        best = getattr(args, "best", False)
        without = "ask for its best trial without" if best else "resume it without"
        other = "" if best else ", or choose another study name"  # (another name has no best trial to give: QA)
        swept = [n for n in given if n in space]  # its trials drew it: "made with lr=0.001" (the default) was false
        if swept:
            flags = ", ".join("--" + n.replace("_", "-") for n in swept)
            raise MixsepError(f"Study '{study}' sweeps {', '.join(swept)} (its space is {stored['space']}); {without} "
                              f"{flags}{other}.")
        for name, value in given.items():
            was = stored["fixed"].get(name, TrainConfig.__dataclass_fields__[name].default)
            if value != was:
                raise MixsepError(f"Study '{study}' was made with {name}={was}, not {value}; {without} "
                                  f"--{name.replace('_', '-')}{other}.")
        if args.val_size is not None and args.val_size != stored["val_size"]:
            raise MixsepError(f"Study '{study}' validates on {stored['val_size']} pairs, not {args.val_size}; "
                              "resume it without --val-size, or choose another study name.")
        for name, was in stored.get("flags", {}).items():  # studies made before these were kept: any value
            value = getattr(args, name)
            if value is not None and value != was:
                raise MixsepError(f"Study '{study}' was made with --{name.replace('_', '-')} {was}, not {value}; "
                                  f"{without} --{name.replace('_', '-')}{other}.")
        own = {**SWEEP_FLAGS, **stored.get("flags", {})}
        fixed, val_size = stored["fixed"], stored["val_size"]
        config = TrainConfig.from_dict({**stored["config"], **local}, saved=True)
        trials = args.trials or stored["trials"]
        # lowered below what is done; the same target passes, even where two workers' race overshot it by one
        if args.trials is not None and args.trials < stored["trials"] and not getattr(args, "best", False):
            import optuna

            loaded = optuna.load_study(study_name=study, storage=storage)
            c = counts(loaded)
            lost = len(_lost_requeues(loaded.get_trials(deepcopy=False)))  # queued again at the start
            done, queued = c["done"] - lost, c["waiting"] + lost
            if args.trials < done + queued:  # "5 of 2 trials done", and trials queued by a stop left waiting for good
                raise MixsepError(f"Study '{study}' has {done} trials done" + (f" and {queued} queued to resume" if queued
                                  else "") + f", more than --trials {args.trials}; give --trials {done + queued} or more "
                                  "(--best names its best trial).")
    else:
        space = parse_space(args.space)
        fixed, val_size, trials = given, args.val_size or 2000, args.trials or 20
        own = dict(SWEEP_FLAGS)
        config = TrainConfig(**{**given, **local})
    clash = sorted(set(space) & set(given))
    if clash:
        flags = ", ".join("--" + n.replace("_", "-") for n in clash)
        raise MixsepError(f"{flags} both fixed and swept; drop the flag or take {', '.join(clash)} out of --space.")
    if config.repair:
        raise MixsepError("A sweep validates on the last training digits, which --repair would draw as training "
                          "partners; drop --repair for a sweep (retrain the winner with it if you like).")
    best = getattr(args, "best", False)  # --best reads the study only: it trains nothing, so none of what follows
    # (validate() imports torch to know the models: 1.3 s of --best's 2 s)
    if not best:  # a swept setting's default is never trained with: check the others beside a value it can take,
        # then every value it can take (a batch size of 128 on 64 pairs is no reason to refuse 16|32)
        drawn = dataclasses.replace(config, **{name: (dim.choices or (dim.low,))[0] for name, dim in space.items()})
        drawn.validate()
        for name, dim in space.items():  # a trial's config must pass validate() with any value drawn
            for v in dim.choices or (dim.low, dim.high):
                dataclasses.replace(drawn, **{name: v}).validate()

    pairs = 0
    if not best:  # no data is needed to print its winner
        config, pairs = _split(config, space, val_size, stored["config"]["train_size"] if stored is not None else None)
        was = (stored or {}).get("pairs")  # studies made before it was kept: not known
        if isinstance(was, int) and was != pairs:  # the validation pairs are the last val_size: others, on other data
            raise MixsepError(f"Study '{study}' validates on the last {val_size} of the {was:,} training pairs of the "
                              f"data it was made on, and {config.data_root} holds {pairs:,}, so its trials would be "
                              "scored on other pairs; give --data-root naming the study's data (or a copy of it).")
    workers = args.workers or (1 if best else default_workers(config.device))
    # each is a Python process holding torch and the data: thousands would swamp the machine (--best refuses them
    # too, as it did); the GPUs, which import torch to count, are asked only past the cores
    cores = os.cpu_count() or 1
    if workers > cores:
        gpus = gpu_count(config.device)
        if workers > max(cores, gpus):
            raise MixsepError(f"--workers {workers} is more than this machine can run side by side (it has {cores} "
                              f"CPU cores and {gpus} GPUs); give at most {max(cores, gpus)}.")
    own.update({name: getattr(args, name) for name in SWEEP_FLAGS if getattr(args, name) is not None})
    return Plan(study, args.storage, runs_dir, space, config, fixed, trials, val_size, own["report_every"],
                own["pruner"], args.sampler_seed, args.heartbeat, workers, stored is not None,
                args.worker_index or 0, pairs, getattr(args, "trials_held", None))


def _check_flags(args, runs_dir: Path) -> None:
    """The sweep's own flags: a study name that is one folder of the runs folder, counts that make sense."""
    from .run import check_runs_dir, name_fault, resolve_run, shown_name

    study = args.study
    check_runs_dir(runs_dir)
    if "/" in study:
        raise MixsepError(f"'{study}' is not a usable study name: no '/' (it names one folder in the runs folder).")
    try:
        resolve_run(runs_dir, study)
    except MixsepError:  # the reason itself: every refusal read as a character outside the allowed ones
        why = name_fault(study)
        if why:
            raise MixsepError(f"'{shown_name(study)}' is not a usable study name: it names a folder in the runs "
                              f"folder, so {why}.") from None  # (cut: QA, a 200-character name printed whole)
        raise MixsepError(f"'{study}' is not a usable study name here: {Path(runs_dir) / study} is a link that leads "
                          "out of the runs folder or to another folder in it; move it away or choose another "
                          "name.") from None
    if study == JOURNAL or study.startswith(JOURNAL + "."):  # the journal and its lock and side files
        raise MixsepError(f"'{study}' is the name of the runs folder's sweep journal; choose another study name.")
    if (runs_dir / study).exists() and not (runs_dir / study).is_dir():
        raise MixsepError(f"{runs_dir / study} is a file, and a study keeps its trials in a folder of its name; "
                          "choose another study name.")
    if (runs_dir / study / "config.json").is_file():
        raise MixsepError(f"A training run named '{study}' already exists in {runs_dir}; choose another study name.")
    if args.trials is not None and args.trials < 1:
        raise MixsepError(f"--trials must be at least 1 (got {args.trials}): a study needs trials to run.")
    if args.workers is not None and args.workers < 1:
        raise MixsepError(f"--workers must be at least 1 (got {args.workers}).")
    if args.val_size is not None and args.val_size < 1:
        raise MixsepError(f"--val-size must be at least 1 validation pair (got {args.val_size}).")
    if args.report_every is not None and args.report_every < 0:
        raise MixsepError(f"--report-every must be 0 (once per epoch) or a number of steps (got {args.report_every}).")
    if not 1 <= args.heartbeat <= 86400:  # Optuna's heartbeat thread waits on it: past a day it overflowed
        raise MixsepError(f"--heartbeat must be from 1 second to 86400 (a day) (got {args.heartbeat}).")
    workers = args.workers or 1
    last = 2**32 - workers  # worker k seeds its sampler with seed + k, and numpy takes 0 .. 2**32 - 1
    if not 0 <= args.sampler_seed <= last:
        with_workers = f" with {workers} workers" if workers > 1 else ""
        raise MixsepError(f"--sampler-seed must be from 0 to {last}{with_workers} (got {args.sampler_seed}).")


def _split(config: TrainConfig, space: dict, val_size: int, train_size: int | None) -> tuple[TrainConfig, int]:
    """The trials' config with train_size set so that no trial reaches the last val_size pairs, and how many
    training pairs the data root holds."""
    available = available_pairs(Path(config.data_root))
    if val_size >= available:
        raise MixsepError(f"--val-size {val_size} leaves no training pairs: the data root holds {available}; "
                          "lower --val-size.")
    train_size = train_size or config.train_size or available - val_size
    if train_size > available - val_size:
        raise MixsepError(f"--train-size {train_size} would train on validation pairs: {available} pairs less "
                          f"{val_size} held out leaves {available - val_size}; lower --train-size or --val-size.")
    biggest = max(dim_values(space.get("batch_size")) or [config.batch_size])
    if biggest > train_size:
        raise MixsepError(f"Batch size {biggest} is larger than the {train_size} pairs a trial trains on "
                          f"({val_size} of {available} are held out for validation); lower it.")
    return dataclasses.replace(config, train_size=train_size), available


def dim_values(dim: Dimension | None) -> list:
    return list(dim.choices) if dim is not None and dim.choices is not None else []


def _stored(storage, study: str) -> dict | None:
    """The study's mixsep attributes, or None when the study does not exist."""
    import optuna

    if storage is None:
        return None
    try:
        attrs = optuna.load_study(study_name=study, storage=storage).user_attrs
    except KeyError:
        return None
    if ATTR not in attrs:
        raise MixsepError(f"Study '{study}' exists in this storage but was not made by `python -m mixsep sweep`; "
                          "choose another study name.")
    return attrs[ATTR]


def default_workers(device: str) -> int:
    """One worker per visible GPU; on a CPU one worker, which uses every core."""
    return max(1, gpu_count(device))


def gpu_count(device: str) -> int:
    """GPUs the workers may spread over: none for a CPU or one named GPU."""
    if device not in ("auto", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count()


# --------------------------------------------------------------------------- the study


def create_study(p: Plan, say: Callable[[str], None] | None = None):
    """Create (or load) the study and its folder; the first write of a sweep.

    The process that creates the study queues the report's defaults (each searched
    setting's TrainConfig default, when the space holds it) as trial 0: the baseline
    every other trial is measured against. A default outside the space is said (``say``).
    """
    sqlite, new = sqlite_file(p.storage)  # an SQLite file this command makes: a full disk takes it back
    storage = open_storage(p.storage, p.runs_dir, p.heartbeat)
    try:
        study = _create_study(p, storage, say)
    except Exception as e:  # the tables were made, and the study's first rows found the disk full
        if _database_error(e) is None:
            raise
        if _disk_full(e):
            raise _full_disk_for_database(sqlite, new, storage_label(p.storage, p.runs_dir)) from None
        raise _unusable_database(storage_label(p.storage, p.runs_dir), e) from None
    p.folder.mkdir(parents=True, exist_ok=True)
    return study


def _create_study(p: Plan, storage, say):
    import optuna

    try:
        study = optuna.create_study(study_name=p.study, storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:  # resumed, or another worker made it first
        study = optuna.load_study(study_name=p.study, storage=storage)
        kept = study.user_attrs.get(ATTR)
        if not p.exists:  # planned as new, made meanwhile by another command: the same study, or refused
            kept = _made_meanwhile(study, p)
        if kept is not None and (kept.get("trials"), kept.get("flags")) != (p.trials, p.attrs()["flags"]):
            study.set_user_attr(ATTR, {**kept, "trials": p.trials, "flags": p.attrs()["flags"]})
    else:
        study.set_user_attr(ATTR, p.attrs())
        baseline = baseline_params(p.space)
        if baseline is not None:
            study.enqueue_trial(baseline, user_attrs={"baseline": True})
        elif say is not None:
            outside = defaults_outside(p.space)
            named = [f"{d.name} {v}" for d, v in outside]
            named = ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]
            say(f"note: no baseline trial: the default{'s' * (len(outside) > 1)} {named} "
                f"lie{'s' * (len(outside) == 1)} outside --space {format_space({d.name: d for d, _ in outside})}, "
                "so trial 0 is a draw like the others (widen the space to hold the defaults for one)")
    return study


def _made_meanwhile(study, p: Plan, wait_s: float = 30.0) -> dict:
    """The attributes of a study another command created after this one's plan found none.

    Its creator sets them just after creating it; a command that planned another space, other
    fixed settings, another validation set or other pruning rules must not add its trials to that
    study (they would be compared with trials of another problem, or judged otherwise), so it is
    refused as plan() refuses a resume.
    """
    deadline = time.monotonic() + wait_s
    while (kept := study.user_attrs.get(ATTR)) is None:
        if time.monotonic() > deadline:
            raise MixsepError(f"Study '{p.study}' appeared in {p.storage_label} while this sweep started, but not "
                              "as `python -m mixsep sweep` makes one; choose another study name.")
        time.sleep(0.2)  # user_attrs reads the storage again each time
    mine = p.attrs()
    differs = [what for what, same in (
        ("space", _unordered(parse_space(kept["space"])) == _unordered(p.space)),
        # compared as plan() compares a resume, value by value: `--checkpoint-seconds 10` spells out the default
        ("fixed settings", _shared(kept["config"]) == _shared(mine["config"])),
        ("validation pairs", kept["val_size"] == mine["val_size"] and kept.get("pairs") == mine.get("pairs")),
        # the joiner's trials were judged by its own rules: one study held trials pruned and never checked
        ("--pruner or --report-every", kept.get("flags", mine["flags"]) == mine["flags"]))
        if not same]
    if differs:
        raise MixsepError(f"Study '{p.study}' was just made by another command with another {' and '.join(differs)}; "
                          "run the same command as that one to join it, or choose another study name.")
    return kept


def _shared(config: dict) -> dict:
    """A config's settings less those each machine chooses for itself (LOCAL): what machines must agree on."""
    return {k: v for k, v in config.items() if k not in LOCAL}


def baseline_params(space: dict[str, Dimension]) -> dict | None:
    """The report's defaults of the searched settings, or None when one lies outside its range."""
    defaults = TrainConfig()
    return None if defaults_outside(space) else {name: getattr(defaults, name) for name in space}


def defaults_outside(space: dict[str, Dimension]) -> list[tuple[Dimension, object]]:
    """The dimensions whose setting's TrainConfig default lies outside them, with that default."""
    defaults = TrainConfig()
    pairs = [(d, getattr(defaults, name)) for name, d in space.items()]
    return [(d, v) for d, v in pairs if not (v in d.choices if d.choices is not None else d.low <= v <= d.high)]


def sampler_seed(p: Plan, index: int, held: int) -> int:
    """The seed of worker ``index``'s sampler in a command that finds ``held`` trials in its study (those that
    drew their parameters: not the ones waiting in the queue, such as the report's defaults or a requeued copy). A new
    study's first command seeds as before (--sampler-seed + the worker's index); a later command (a resume after a
    Ctrl-C, a Stop, a full disk or a lost database) mixes in the trials already there. With the same seed every
    command drew the same points again: a resumed study re-trained its first trials' parameters, one by one, and
    searched less of its space than --trials promised."""
    if held == 0:
        return p.sampler_seed + index
    import numpy as np

    return int(np.random.SeedSequence([p.sampler_seed, index, held]).generate_state(1)[0])


def trials_held(study) -> int:
    """The trials of ``study`` that drew their parameters: all but those waiting in the queue (the report's defaults,
    a requeued copy)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=tuple(s for s in TrialState if s != TrialState.WAITING)))


def load_study(p: Plan, index: int = 0):
    import optuna

    n_startup = max(1, min(10, p.trials // 3))
    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=max(1, min(5, p.trials // 4)), n_warmup_steps=0),
              "halving": _halving()(),
              "none": optuna.pruners.NopPruner()}[p.pruner]
    study = optuna.load_study(study_name=p.study, storage=open_storage(p.storage, p.runs_dir, p.heartbeat),
                              pruner=pruner)
    held = trials_held(study) if p.trials_held is None else p.trials_held  # a child: what its command found
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(p, index, held), n_startup_trials=n_startup,
                                               constant_liar=True)
    return study


@functools.lru_cache(maxsize=None)
def _halving():
    """Optuna's successive halving pruner, blind to the trials a requeued copy continues (made on first use)."""
    from optuna.pruners import SuccessiveHalvingPruner

    class Halving(SuccessiveHalvingPruner):
        """A rung counts the values every trial reached there, failed ones too; a trial whose worker died (or
        that was stopped) is failed and continued by its copy, which carries its rung values on (requeue), so
        the original is left out: it counted twice against the others."""

        def prune(self, study, trial) -> bool:
            return super().prune(_LatestTries(study), trial)

    return Halving


class _LatestTries:
    """A study seen without the trials that a requeued copy continues (the copy stands for them)."""

    def __init__(self, study):
        self._study = study

    def __getattr__(self, name):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None) -> list:
        import copy

        trials = self._study.get_trials(deepcopy=False)  # read once: on a database, every trial comes over
        continued = _requeued(trials)
        kept = [t for t in trials if t.number not in continued and (states is None or t.state in states)]
        return copy.deepcopy(kept) if deepcopy else kept


def counts(study) -> dict:
    """Trials by what they mean for the target: done (complete, pruned, failed for good), running, waiting."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = _requeued(trials)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.number not in retried) for t in trials)
    return {"done": done, "running": sum(t.state == TrialState.RUNNING for t in trials),
            "waiting": sum(t.state == TrialState.WAITING for t in trials)}


def _requeued(trials) -> set[int]:
    """The numbers of the trials that another trial continues (its copy in the queue, or later)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def crashes(trial) -> int:
    """How many times the workers of this trial's chain died (its requeues that were not stops)."""
    return len(trial.system_attrs.get("retry_history", [])) - trial.system_attrs.get("stops", 0)


def requeue(study, trial, stopped: bool = False) -> bool:
    """Queue a copy of a trial that did not finish, with its parameters and run folder, to be resumed.

    ``stopped``: the sweep was asked to stop, or could not write (a full disk): the trial
    always comes back. A trial whose worker died comes back MAX_RETRY times, then it counts
    as failed; returns whether it was queued. Also Optuna's heartbeat callback for a database.
    """
    import optuna

    if trial.number in _requeued(study.get_trials(deepcopy=False)):  # queued already: by the worker that took it
        return True                                                    # over while this one stalled, say
    if not stopped and crashes(trial) >= MAX_RETRY:
        return False
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    user_attrs = {k: v for k, v in trial.user_attrs.items()
                  if k not in ("host", "pid", "pid_start", "halted", "error")}  # the try's own, not the trial's
    # successive halving's values at the rungs the trial reached: the copy goes on from its rung (_halving)
    rungs = {k: v for k, v in trial.system_attrs.items() if k.startswith("completed_rung_")}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=user_attrs, intermediate_values=trial.intermediate_values,
        system_attrs={**rungs, "failed_trial": history[0], "retry_history": history,
                      "stops": trial.system_attrs.get("stops", 0) + stopped}))
    return True


def ended_cleanly(runs_dir: Path | None, trial) -> bool:
    """Whether the trial's run folder (here) says its trainer ended on its own (a stop, a lost database,
    a full disk) rather than died mid-step (kill -9, OOM: "running"): its requeue is then a stop,
    which never uses up the retries. A folder this machine does not hold counts as a death."""
    from .run import State, read_status, resolve_run

    run = trial.user_attrs.get("run")
    if runs_dir is None or not isinstance(run, str):
        return False
    try:
        state = read_status(resolve_run(runs_dir, run)).get("state")
    except MixsepError:
        return False
    return state in (State.STOPPED.value, State.FAILED.value)


STOPPED_MARK = "stopped"  # the "halted" mark of a trial stopped by request (a write error's is its sentence)


def _mark_halted(trial, mark: str) -> None:
    """Mark a trial about to fail as one to come back (``requeue_halted``), before Optuna writes its FAIL.
    Best effort: on a full disk even this write may fail, and then so does the FAIL (the trial stays running
    and comes back as a dead worker's)."""
    try:
        if "halted" not in trial.user_attrs:
            trial.set_user_attr("halted", mark)
    except Exception:
        pass


def _lost_requeues(trials) -> list:
    """The trials halted (by a write error or a stop) whose requeue record was lost: failed, marked, and continued
    by no copy."""
    from optuna.trial import TrialState

    requeued = _requeued(trials)
    return [t for t in trials if t.state == TrialState.FAIL and "halted" in t.user_attrs and t.number not in requeued]


def requeue_halted(study) -> list[tuple[int, bool]]:
    """Requeue each trial halted by a write error (a full disk) or stopped by request whose requeue record was
    lost: the journal's own disk can take the trial's FAIL and cut off the copy that follows it, and a kill
    can land between the two. (number, whether it was a stop) for each."""
    lost = _lost_requeues(study.get_trials(deepcopy=False))
    for t in lost:
        requeue(study, t, stopped=True)
    return [(t.number, t.user_attrs["halted"] == STOPPED_MARK) for t in lost]


def worker_gone(trial) -> bool:
    """Whether a trial that reads running was started by a worker of this machine that is gone (its pid and start
    time name no live process): a killed sweep's trial, failed and queued again when the study next runs."""
    from optuna.trial import TrialState

    from .run import is_alive

    a = trial.user_attrs
    return trial.state == TrialState.RUNNING and "pid" in a and a.get("host") == socket.gethostname() \
        and not is_alive(a)


def fail_dead_trials(study, journal: bool, runs_dir: Path | None = None) -> list[tuple[int, bool, bool]]:
    """Fail (and requeue) running trials whose worker is gone; returns (number, queued again, its run folder says
    its trainer ended on its own: ended_cleanly) for each.

    A database has heartbeats (Optuna fails stale trials and calls the retry callback).
    The journal serves one machine: a running trial of this host whose process is not
    the one that started it (pid and start time) is dead; one that never named its
    worker is dead after ten minutes.
    """
    import optuna
    from optuna.trial import TrialState

    if not journal:
        before = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        # those the heartbeat failed: a trial another worker completed (or pruned) meanwhile left RUNNING too, and
        # was said to be "queued again" after a dead worker
        failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        clean = {n: ended_cleanly(runs_dir, before[n]) for n in (set(before) - after) & failed}
        return [(n, clean[n] or crashes(before[n]) < MAX_RETRY, clean[n]) for n in sorted(clean)]
    dead = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        named = "pid" in t.user_attrs
        if named and not worker_gone(t):
            continue
        if not named and (t.datetime_start is None or now - t.datetime_start < datetime.timedelta(minutes=10)):
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        clean = ended_cleanly(runs_dir, t)
        dead.append((t.number, requeue(study, t, stopped=clean), clean))
    return dead


class SweepInterrupted(Exception):
    """The sweep was asked to stop during a trial; the trial is requeued to resume later."""


def _halted(e, number: int) -> str:
    """A write error that halts the sweep (a RunWriteError), and what becomes of its trial, in one sentence: the
    trainer's own "...; no checkpoint was written yet: free some space and resume." followed by "Trial 0 is queued
    to resume from its last checkpoint: fix that" said two things twice (QA)."""
    return f"{e.cause}: trial {number} is queued to resume where it stopped; {e.advice_to('run the same command')}."


class SweepHalted(SweepInterrupted):
    """A trial could not write its run folder (a full disk, a read-only one): the sweep stops with
    that sentence, and the trial is requeued to resume once the disk is fixed."""


class TrialTakenOver(SweepInterrupted):
    """Another worker failed this worker's trial (its heartbeat went stale while this worker stalled) and
    requeued it: the trial is no longer this worker's, which leaves it as it is and goes on."""


class TrialRefused(SweepInterrupted):
    """A trial refused for something the user must fix (its run folder busy, damaged or another run's, the
    data gone), not for its parameters: failing it for good spent it, and the next trial met the same
    refusal. The sweep stops with that sentence; the trial is requeued to train once it is fixed."""


class FolderTaken(TrialRefused):
    """A trial's run folder holds a run of other settings: not this trial's, nor one of its earlier tries.
    The sweep stops with that sentence; the trial is requeued to train once the folder is moved away."""


def _check_own_folder(folder: Path, config: TrainConfig, number: int) -> None:
    """Refuse to train trial ``number`` in a folder that trained other settings.

    A journal restored from a copy (what its damaged-journal message advises), or replaced, no
    longer knows the trials that made the newest folders; the same numbers come again with other
    parameters, and reopening such a folder would credit its old results to the new parameters.
    The settings each machine chooses for itself (LOCAL) may differ: a trial resumed elsewhere.
    """
    from .run import CONFIG

    if not (folder / CONFIG).is_file():
        return
    # nor do those a resume may change (checkpoint cadence, time budget): `train --run-dir TRIAL
    # --checkpoint-seconds 0` changed what it writes, not what it computes
    mechanics = {s.name for s in settings() if s.on_resume}
    theirs, ours = _shared(TrainConfig.load(folder / CONFIG).to_dict()), _shared(config.to_dict())
    differ = sorted(k for k in ours if k not in mechanics and theirs.get(k) != ours[k])
    if differ:
        raise FolderTaken(f"{folder} holds a run with other settings ({', '.join(differ[:3])}) than trial {number} "
                          "of this study, whose journal no longer knows it (restored from a copy, or replaced?); "
                          "move that folder away, then run the same command: the trial is queued to resume.")


def _save_local(folder: Path, config: TrainConfig) -> None:
    """A trial resumed with this machine's own LOCAL settings (another device, --cpu-bf16, data root) saves
    them to its config.json, as `train --run-dir` saves the settings a resume may change; the others are
    equal (_check_own_folder). Called under the folder's lock."""
    from .run import CONFIG, write_json

    path = folder / CONFIG
    if path.is_file() and TrainConfig.load(path).to_dict() != config.to_dict():
        write_json(path, config.to_dict())


class _QuietInterrupts(logging.Filter):
    """Optuna logs a trial that ends in SweepInterrupted as a failure, with the traceback, and then
    "Trial N failed with value None."; the sweep says in one line that the trial stopped and resumes
    from its checkpoint, so both records are dropped (every other record passes)."""

    def __init__(self):
        super().__init__()
        self.stopped: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        number = re.match(r"Trial (\d+) failed", message)
        if record.exc_info and isinstance(record.exc_info[1], (SweepInterrupted, KeyboardInterrupt)) and number:
            self.stopped.add(number.group(1))
            return False
        if number and message.endswith("failed with value None.") and number.group(1) in self.stopped:
            self.stopped.discard(number.group(1))
            return False
        return True


@functools.lru_cache(maxsize=None)
def _quiet_interrupts() -> None:
    """Once per process, on the logger of Optuna's optimize loop (where both records come from);
    and a database lost by Optuna's heartbeat thread is one line, not that thread's traceback
    (the worker itself then stops with one sentence, at its next write)."""
    logging.getLogger("optuna.study._optimize").addFilter(_QuietInterrupts())
    default = threading.excepthook

    def hook(args):
        if _database_error(args.exc_value) and "heartbeat" in (args.thread.name if args.thread else ""):
            print(f"warning: the sweep's heartbeat lost the database ({_reason(args.exc_value)})", file=sys.stderr)
            return
        default(args)

    threading.excepthook = hook


def _database_error(e: BaseException | None):
    """The SQLAlchemy error behind ``e`` (Optuna may raise another error while handling it), or None."""
    try:
        import sqlalchemy
    except ImportError:
        return None
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, sqlalchemy.exc.SQLAlchemyError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _reason(e: BaseException) -> str:
    e = _database_error(e) or e
    return " ".join(str(getattr(e, "orig", e) or e).split())[:200]


@dataclass
class Worker:
    """One process's share of a study: trials one after another until the target is met."""

    plan: Plan
    should_stop: Callable[[], bool] = lambda: False
    index: int = 0
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))

    def run(self) -> None:
        p = self.plan
        self.study = load_study(p, self.index)
        self.val, self.last, self.trial_id = None, None, None
        # lost between trials, or while waiting for others' trials (a trial's own loss is said in _trials)
        with database_errors_as(lambda e: _lost_database(p, e, "the study goes on from there")):
            self._trials()

    def _trials(self) -> None:
        from optuna.trial import TrialState

        p = self.plan
        journal = not p.storage
        waiting_said = False
        while not self.should_stop():
            for n, stopped in requeue_halted(self.study):
                self.say(f"trial {n}: {'stopped' if stopped else 'halted by a write error'}, and its place in the "
                         "queue was lost with the journal's last record; queued again to resume")
            for n, queued, clean in fail_dead_trials(self.study, journal, p.runs_dir):
                self.say(f"trial {n}: stopped, and its worker ended before the study could record it (as when "
                         "its database was lost); queued again to resume" if queued and clean else
                         f"trial {n}: its worker is gone; marked failed and queued again to resume" if queued else
                         f"trial {n}: its worker is gone; marked failed for good (its workers died {MAX_RETRY} "
                         "times before)")
            c = counts(self.study)
            if c["done"] >= p.trials:
                break
            if c["waiting"] == 0 and c["done"] + c["running"] >= p.trials:
                if not waiting_said:  # stay: a dead worker's trial comes back as waiting
                    self.say(f"waiting for {c['running']} running trial(s) of other workers")
                    waiting_said = True
                time.sleep(POLL_S)
                continue
            waiting_said = False
            self.trial_id, self.raised = None, None  # the objective sets them: a trial of this very call
            try:
                try:
                    self.study.optimize(self.objective, n_trials=1, catch=(MixsepError,), gc_after_trial=True)
                except Exception as e:
                    said = _said_under_optunas_assert(e)
                    if said is not None:  # a journal that a full disk refused the trial's end: its one sentence,
                        raise said from None  # not Optuna's "Should not reach." over it, exit 1 (QA)
                    if _database_error(e) is not None:
                        raise _lost_database(p, e, "the trial that was running resumes from its last checkpoint") \
                            from None
                    if not self._taken_over(e):
                        raise
                    copy = next((t.number for t in self.study.get_trials(deepcopy=False)
                                 if self.last in t.system_attrs.get("retry_history", [])), None)
                    self.say(f"trial {self.last}: another worker took it over while this one stalled past its "
                             f"heartbeat ({'it continues as trial ' + str(copy) if copy is not None else 'failed'}); "
                             "this worker leaves it to that one and goes on")
                    continue
            except KeyboardInterrupt:  # a second Ctrl-C: the trial comes back when the sweep does
                trial = self.study._storage.get_trial(self.trial_id) if self.trial_id is not None else None
                if trial is not None and trial.state == TrialState.FAIL:
                    requeue(self.study, trial, stopped=True)
                raise
            except TrialRefused as e:  # every later trial may be refused alike (its number taken): stop, lose nothing
                requeue(self.study, self.study._storage.get_trial(self.trial_id), stopped=True)
                raise MixsepError(str(e)) from None
            except SweepInterrupted as e:
                trial = self.study._storage.get_trial(e.args[0])
                if trial.state == TrialState.FAIL:
                    requeue(self.study, trial, stopped=True)
                if isinstance(e, SweepHalted):  # one sentence, composed where it was raised
                    raise MixsepError(e.args[1]) from None
                self.say(f"trial {trial.number}: stopped; it resumes from its last checkpoint when the sweep does")
                break
            if self.last is not None:
                try:  # it reads the storage: a database lost just after the trial ended is that sentence too
                    self._report(self.last)
                except Exception as e:
                    if _database_error(e) is None:
                        raise
                    raise _lost_database(p, e, "the study goes on from there", f" just after trial {self.last} ended") \
                        from None

    def _taken_over(self, e: Exception) -> bool:
        """Whether optimize() ended in ``e`` because another worker finished this worker's trial meanwhile: the
        objective did not raise ``e`` (Optuna's tell refused a finished trial), and the trial is failed."""
        from optuna.trial import TrialState

        if e is self.raised or self.trial_id is None:
            return False
        return self.study._storage.get_trial(self.trial_id).state == TrialState.FAIL

    def _report(self, number: int) -> None:
        t = next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)
        params = " ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        score = f"{t.user_attrs['val_psnr']:.2f} dB (mnist {t.user_attrs['val_psnr_mnist']:.2f}, cifar " \
                f"{t.user_attrs['val_psnr_cifar']:.2f})" if "val_psnr" in t.user_attrs else t.user_attrs.get("error", "")
        self.say(f"trial {t.number} {t.state.name.lower()}: {score}  {params}  [{t.user_attrs.get('run', '')}]")

    def objective(self, trial) -> float:
        """Train one trial into its run folder, reporting validation PSNR; return the final one."""
        import optuna

        self.last, self.trial_id, self.raised = trial.number, trial._trial_id, None
        try:
            return self._objective(trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # a write to a trial another worker took over
            self.raised = TrialTakenOver(trial._trial_id)  # a SweepInterrupted: Optuna's log of it is dropped
            raise self.raised from None
        except MixsepError as e:  # a refusal (a diverged trial is pruned): no result of the trial's parameters
            trial.set_user_attr("error", str(e))
            self.raised = TrialRefused(f"{str(e).rstrip('.')}. Trial {trial.number} is queued to train again: once "
                                       "that is fixed, run the same command.")
            _mark_halted(trial, STOPPED_MARK)
            raise self.raised from None
        except BaseException as e:
            self.raised = e
            if isinstance(e, (KeyboardInterrupt, SweepInterrupted)) and not isinstance(e, TrialTakenOver):
                # a second Ctrl-C, a refused folder, a run folder that cannot be opened: the worker requeues
                # the trial after Optuna's FAIL, and a kill or a cut-off journal between the two would lose it
                _mark_halted(trial, e.args[1] if isinstance(e, SweepHalted) else STOPPED_MARK)
            raise

    def _objective(self, trial) -> float:
        import optuna

        from .run import Run, RunWriteError, identity, resolve_run

        p = self.plan
        params = {name: dim.suggest(trial) for name, dim in p.space.items()}
        run_name = trial.user_attrs.get("run") or f"{p.study}/trial-{trial.number:04d}"
        before = trial.user_attrs.get("runs_dir")  # where the try it continues trained (of this machine, or another)
        # the runs folder, for --best run from another folder, and a requeue on another command's runs folder
        here = str(Path(p.runs_dir).resolve())
        for k, v in {"run": run_name, "host": socket.gethostname(), "runs_dir": here, **identity()}.items():
            trial.set_user_attr(k, v)
        if self.val is None:
            self.val = validation_pairs(Path(p.config.data_root), p.val_size)
        raw = Path(p.runs_dir) / run_name  # a file or a link put where the trial's folder was: named as such (it read
        if os.path.islink(raw) or (os.path.lexists(raw) and not raw.is_dir()):  # "--run-dir", or "it is not shown")
            what = f"a link to {os.readlink(raw)}" if os.path.islink(raw) else "a file"
            raise FolderTaken(f"Trial {trial.number}'s run folder {raw} is {what}, not a folder; move it away, then run "
                              "the same command: the trial is queued to train again.")
        config, folder = dataclasses.replace(p.config, **params).validate(), resolve_run(p.runs_dir, run_name)
        copy = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("retry_history")  # of a trial to resume
        # said, not silent: its old intermediate values stay in the study (a folder its worker never made, killed
        # before it could, is not "gone": the copy trains from step 0 as the first try would have)
        if copy and not os.path.lexists(folder) and trial.user_attrs.get("folder_made"):
            self.say(f"trial {trial.number}: its run folder {run_name} is " + (  # (QA: "gone" of one that was not)
                f"in another runs folder, {before}" if isinstance(before, str) and before != here
                else "gone (moved or deleted)") + ", so it trains again from step 0")
        _check_own_folder(folder, config, trial.number)
        try:
            run = Run(folder).open()  # a second trainer of this folder is refused here
        except RunWriteError as e:
            raise SweepHalted(trial._trial_id, _halted(e, trial.number)) from None
        except MixsepError as e:  # busy (`train --run-dir` on it, or a stalled worker's): failed for good before
            raise FolderTaken(f"{str(e).rstrip('.')}. Trial {trial.number} is queued to resume from its last "
                              "checkpoint: once that is over, run the same command.") from None
        try:
            if not trial.user_attrs.get("folder_made"):  # carried to a requeued copy, as "run" is
                trial.set_user_attr("folder_made", True)
            return self._train(trial, config, run)
        except RunWriteError as e:  # every later trial would fail the same way: stop, and resume this one later
            raise SweepHalted(trial._trial_id, _halted(e, trial.number)) from None  # marked "halted" by objective()
        except MixsepError as e:
            if "non-finite" in str(e):  # diverged: a real, bad result the sampler should learn from
                trial.set_user_attr("error", str(e))
                raise optuna.TrialPruned() from None
            raise
        finally:
            run.close()

    def _train(self, trial, config: TrainConfig, run) -> float:
        import optuna

        from .run import State, read_status
        from .train import Training

        p, pruned, start = self.plan, [False], time.time()
        training = Training(config, run, should_stop=lambda: pruned[0] or self.should_stop())
        _save_local(run.path, config)  # once the trial has loaded: a resume refused before that writes nothing
        self.val.to(training.device)
        every = p.report_every or training.steps_per_epoch
        scores, at = None, -1
        steps = training.steps()
        try:
            for r in steps:
                if not pruned[0] and (r.step % every == 0 or r.step == r.total_steps):
                    scores, at = validate(training.model, self.val), r.step
                    try:
                        trial.report(scores["psnr"], r.step)
                        # at the last step there is nothing left to save: the trial is complete, whatever it trails
                        pruned[0] = r.step < r.total_steps and trial.should_prune()
                    except optuna.exceptions.UpdateFinishedTrialError:  # failed by another worker, which requeued it
                        steps.close()
                        run.status(State.STOPPED, f"stopped at step {r.step}: another worker took trial {trial.number} "
                                   f"of sweep '{p.study}' over while this one stalled past its heartbeat; the last "
                                   f"checkpoint (step {training.last_good}) is kept", step=training.last_good,
                                   total_steps=training.total_steps)
                        raise
        finally:  # under the folder's lock: an error here left the generator to write its status after run.close()
            steps.close()
        if not pruned[0] and read_status(run.path).get("state") == State.STOPPED:
            # marked "halted" by objective(), as a write error is: a kill, or a journal cut off, between Optuna's
            # FAIL and the requeue that follows it lost the trial for good, and the study counted it done
            raise SweepInterrupted(trial._trial_id)  # by this sweep's stop, or a STOP file from outside
        if at != training.step:
            scores = validate(training.model, self.val)
        reports = self.study._storage.get_trial(trial._trial_id).intermediate_values  # a resumed trial's too
        best = max([scores["psnr"], *reports.values()])
        for k, v in {**{f"val_{k}": v for k, v in scores.items()}, "val_best_psnr": best, "step": training.step,
                     "duration_s": training.trained_before + time.time() - start}.items():  # a resumed trial's all
            trial.set_user_attr(k, v)
        # the run folder keeps its validation figures too, so Compare shows them without the study
        status = read_status(run.path)
        state, message = (State.STOPPED, f"pruned by sweep '{p.study}' at step {training.step}: validation PSNR "
                          f"{scores['psnr']:.2f} dB trailed the other trials") if pruned[0] \
            else (status.get("state", State.FINISHED), status.get("message", ""))
        run.status(state, message, step=training.step, total_steps=training.total_steps,
                   validation={**scores, "best_psnr": best, "study": p.study, "trial": trial.number})
        if pruned[0]:
            raise optuna.TrialPruned()
        return scores["psnr"]


def _short(v) -> str:
    """Three significant digits, more where three would round a fraction to a whole number (beta2 0.9998 read
    "1", outside its own range and meaningless for Adam)."""
    if not isinstance(v, float):
        return str(v)
    for digits in range(3, 18):
        s = f"{v:.{digits}g}"
        if v.is_integer() or not float(s).is_integer():
            return s
    return repr(v)


# --------------------------------------------------------------------------- the command


def best_trial(study):
    """The complete trial with the highest validation PSNR, or None."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: t.value) if done else None


def _read_sweep(folder: Path) -> dict:
    import json

    from .config import JSON_LIMIT
    from .run import read_regular

    try:  # a regular file only: a FIFO named sweep.json blocked the page (and the registry's lock) for good
        d = json.loads(read_regular(Path(folder) / SWEEP_FILE, JSON_LIMIT))
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deeply to read
        return {}


def sweep_command(folder: Path, record: dict) -> bool:
    """Whether the process a record of sweep.json names (pid and start time) is alive and is a sweep command of the
    study in ``folder``: it holds the study's SWEEP_LOCK open. A sweep.json written by hand may name any process
    here, and a Stop sent it SIGTERM. Where no /proc can say (macOS), the pid and start time."""
    from .run import alive_holding

    return alive_holding(record, Path(folder) / SWEEP_LOCK)


def _hold_sweep_lock(folder: Path) -> int | None:
    """The descriptor of a shared flock on the study's SWEEP_LOCK, held until closed (``sweep_command``); None where
    it cannot be made (then writing sweep.json fails too, and says why)."""
    import fcntl

    try:
        fd = os.open(Path(folder) / SWEEP_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    return fd


def _other_commands(was: dict, folder: Path) -> list[dict]:
    """The other sweep commands of a study that sweep.json (``was``) knows to run here: the one it names, and
    those that command found running when it started ("others"). Only the live ones, each with its identity
    and its own --workers and --trials (what the record shows once it names that one)."""
    from .run import identity

    if was.get("host") != socket.gethostname():
        return []
    me, seen, out = identity(), set(), []
    for o in [was if was.get("state") == "running" else {},
              *(was.get("others") if isinstance(was.get("others"), list) else [])]:
        if isinstance(o, dict) and type(o.get("pid")) is int and o["pid"] != me["pid"] and o["pid"] not in seen \
                and sweep_command(folder, o):
            seen.add(o["pid"])
            out.append({"pid": o["pid"], "pid_start": o.get("pid_start"),
                        **{k: o[k] for k in ("workers", "trials") if isinstance(o.get(k), int)}})
    return out


def write_sweep_status(p: Plan, state: str, message: str = "") -> None:
    """sweep.json: the command's state and the pid a Stop signals (the parent's: it stops its workers).

    Two commands may run one study from one runs folder (two terminals, or the page and a terminal): the one
    started last is named, and keeps the others it found running under "others". One that ends while another
    still runs leaves the study "running", named by a live one, so that every page still sees the sweep and
    its Stop reaches each of them."""
    if os.environ.get(_CHILD_ENV):  # a worker child: its parent speaks for the command, and must stay the pid named
        return
    import fcntl

    try:
        folder = os.open(p.folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise MixsepError(f"Cannot open the study's folder {p.folder} ({e.strerror}).") from None
    try:  # read, changed and written by one command at a time: two at once each lost the other's record
        fcntl.flock(folder, fcntl.LOCK_EX)
        _write_sweep_status(p, state, message)
    finally:
        os.close(folder)  # and the lock with it


def _write_sweep_status(p: Plan, state: str, message: str) -> None:
    from .run import identity, write_json

    path, me = p.folder / SWEEP_FILE, identity()
    was = _read_sweep(p.folder)
    others = _other_commands(was, p.folder)
    record = {"study": p.study, "storage": storage_label(p.storage, p.runs_dir),
              "storage_key": storage_key(p.storage, p.runs_dir), "host": socket.gethostname(),
              "workers": p.workers, "trials": p.trials, "updated": time.time()}
    if state == "running" or not others:
        write_json(path, {**record, "state": state, "message": message, **me, "others": others})
    elif was.get("pid") != me["pid"] and sweep_command(p.folder, was):  # another command is named: it speaks for it
        write_json(path, {**was, "others": [o for o in others if o["pid"] != was["pid"]], "updated": time.time()})
    else:  # this command was named, and ends while others run on: the first of them is named now, with its own
        # --workers and --trials; the message says how the one named before ended
        write_json(path, {**record, "state": "running", "message": f"another command of this study runs on (the "
                          f"one named before ended: {message or state})", **others[0], "others": others[1:]})


def live_sweeps(runs_dir: Path) -> list[dict]:
    """sweep.json of every study in runs_dir whose sweep process still runs on this machine."""
    root = Path(runs_dir)
    found = []
    for f in sorted(root.glob(f"*/{SWEEP_FILE}")) if root.is_dir() else []:
        if not f.parent.resolve().is_relative_to(root.resolve()):  # a study of another runs folder, linked here
            continue
        d = _read_sweep(f.parent)
        if d.get("state") != "running" or d.get("host") != socket.gethostname():
            continue
        if sweep_command(f.parent, d):
            found.append(dict(d, folder=str(f.parent)))
        elif others := _other_commands({**d, "state": None}, f.parent):  # the named one killed: another runs on
            found.append(dict(d, folder=str(f.parent), **others[0]))
    return found


def _stop_with_parent() -> None:
    """A worker child: a SIGTERM (a stop: its trial checkpoints and is requeued) when its parent command dies,
    by kill -9 too, which sends its children nothing: they trained on where no page could see or stop them."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != os.environ.get(_CHILD_ENV):  # it died before that
        os.kill(os.getpid(), signal.SIGTERM)


def run_sweep(p: Plan, say: Callable[[str], None] | None = None) -> int:
    """Run the study to its target with p.workers processes (this one, or children); 0 when it got there."""
    lock: list[int] = []  # the study's SWEEP_LOCK, held from when its folder is there to the last word
    try:
        return _run_sweep(p, say, lock)
    finally:
        for fd in lock:
            os.close(fd)


def _run_sweep(p: Plan, say: Callable[[str], None] | None, lock: list[int]) -> int:
    if EARLY_SIGNALS:  # a Ctrl-C while torch or Optuna loaded, whose KeyboardInterrupt Python dropped
        raise KeyboardInterrupt
    stop = {"flag": False}

    def on_signal(signum, frame):  # finish this step, checkpoint the trial, requeue it, exit
        if stop["flag"] and signum == signal.SIGINT:  # a second Ctrl-C: quit at once (the trial is requeued)
            raise SecondInterrupt
        first, stop["flag"] = not stop["flag"], True  # set before the line: a second Ctrl-C may land inside it
        if signum == signal.SIGINT and first and not os.environ.get(_CHILD_ENV):  # one line per command
            print("\nstopping: the running trial finishes its step and is queued to resume (Ctrl-C again to quit "
                  "at once)", file=sys.stderr, flush=True)
        for child in children:
            try:
                child.send_signal(signal.SIGTERM)
            except OSError:
                pass

    children: list[subprocess.Popen] = []
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    if os.environ.get(_CHILD_ENV) and previous:
        _stop_with_parent()
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    study = create_study(p, say)
    if not os.environ.get(_CHILD_ENV):  # a worker child: its parent command holds it
        lock.extend(fd for fd in [_hold_sweep_lock(p.folder)] if fd is not None)
    if p.workers > 1:  # counted once, before any worker starts: each seeds its sampler from the same count
        p = dataclasses.replace(p, trials_held=trials_held(study))
    write_sweep_status(p, "running")
    try:
        if p.workers == 1:
            Worker(p, lambda: stop["flag"], p.worker_index, say).run()
        else:
            for i in range(p.workers):
                if stop["flag"]:  # asked to stop while starting them: start no more (the started ones were told)
                    break
                children.append(_spawn(p, i))
            codes = [c.wait() for c in children]
            failed = sum(c not in (0, -signal.SIGTERM) for c in codes)
            with database_errors_as(lambda e: DatabaseLost(  # each worker said it in full above: this line is short
                    f"{failed} of {p.workers} sweep workers lost the database (said above); once it is back, run "
                    "the same command.")):
                done = counts(study)["done"] if failed and not stop["flag"] else 0
            if failed and not stop["flag"] and done >= p.trials:  # the others finished it
                say(f"{failed} of {p.workers} sweep workers ended early (exit codes {codes}); the others finished "
                    "the study")
            elif failed and not stop["flag"]:
                raise MixsepError(f"{sum(c != 0 for c in codes)} of {p.workers} sweep workers failed "
                                  f"(exit codes {codes}); see their output above, then run the same command to resume.")
        with database_errors_as(lambda e: _lost_database(p, e, "the study goes on from there")):
            c = counts(study)
    except BaseException as e:
        try:
            if isinstance(e, KeyboardInterrupt):
                write_sweep_status(p, "stopped", "quit at once by a second Ctrl-C; run the same command to resume")
            else:  # a lost database stopped it: nothing failed, and the same command goes on
                write_sweep_status(p, "stopped" if isinstance(e, DatabaseLost) else "failed",
                                   str(e) if isinstance(e, MixsepError) else f"{e.__class__.__name__}: {e}")
        except MixsepError:
            pass  # a full disk: the error being raised says so
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    finished = c["done"] >= p.trials
    write_sweep_status(p, "finished" if finished else "stopped",
                       trials_done(c["done"], p.trials) + ("" if finished else "; run the same command to resume"))
    return 0 if finished else 1


def trials_done(done: int, target: int) -> str:
    """'3 of 20 trials done', '1 of 1 trial done': a study's progress as the CLI and the Sweep page say it."""
    return f"{done} of {target} trial{'' if target == 1 else 's'} done"


def _spawn(p: Plan, index: int) -> subprocess.Popen:
    """A worker child: the same study, one GPU each (or an equal share of the CPU cores)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{_CHILD_ENV: str(os.getpid())})  # the parent, for _stop_with_parent
    if p.storage:
        env[STORAGE_ENV] = p.storage  # not on the command line, where `ps` would show a password
    gpus = gpu_count(p.config.device)
    if gpus:  # by the ids this process sees, which may already be a subset of the machine's
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = (visible or [str(i) for i in range(gpus)])[index % gpus]
    else:
        threads = str(max(1, (os.cpu_count() or 1) // p.workers))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    from .config import setting_by_name

    # every setting this machine chooses (LOCAL), as this command has it: a child left to the study's stored
    # values trained with --cpu-bf16 where --no-cpu-bf16 was given here
    own = [word for name in LOCAL for word in setting_by_name(name, resolve=False).argv(getattr(p.config, name))]
    cmd = [sys.executable, "-m", "mixsep", "sweep", "--study", p.study, "--runs-dir", str(p.runs_dir), *own,
           "--trials", str(p.trials),
           "--workers", "1", "--worker-index", str(index), "--report-every", str(p.report_every),
           "--pruner", p.pruner, "--sampler-seed", str(p.sampler_seed), "--heartbeat", str(p.heartbeat),
           "--trials-held", str(p.trials_held or 0)]
    # a terminal's Ctrl-C reaches the whole process group: one that landed while a child's interpreter started
    # printed "Fatal Python error: init_import_site" and a traceback. The child ignores SIGINT until its handler is
    # in place (mixsep.cli.main); this command forwards the stop to it as SIGTERM meanwhile
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, preexec_fn=_ignore_sigint)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def trials_frame(study):
    """One row per trial: number, state, parameters, validation figures, duration, run folder."""
    import pandas as pd

    rows, trials = [], study.get_trials(deepcopy=False)
    by_number, continued = {t.number: t for t in trials}, {}  # a trial that did not finish -> its copy in the queue
    for t in trials:
        for n in t.system_attrs.get("retry_history", []):
            continued.setdefault(n, t.number)
    for t in trials:
        a = t.user_attrs
        then, state = None, t.state.name.lower()
        if t.number in continued:  # a stop (or a dead worker) is no failure: say where the trial went on
            copy = by_number[continued[t.number]]
            stopped = copy.system_attrs.get("stops", 0) > t.system_attrs.get("stops", 0)
            then = f"{'stopped' if stopped else 'its worker died'}; continues as trial {copy.number}"
            state = "stopped" if stopped else "interrupted"  # as its run reads on Compare (Optuna's state: "fail")
        elif worker_gone(t):  # a killed sweep's trial reads "running" until the study runs again (QA: the page
            state = "interrupted"  # counted it running, Home said interrupted)
            then = "its worker is gone; it resumes from its last checkpoint when the sweep runs again"
        # a trial continued as another: blank, its training counts in the other's (its end was when the sweep
        # came back, a day later perhaps)
        dur = a.get("duration_s")  # a resumed trial's training before the resume too
        if dur is None and t.datetime_complete and t.datetime_start and then is None:
            dur = (t.datetime_complete - t.datetime_start).total_seconds()
        came = t.system_attrs.get("retry_history")  # a copy: its number is not its run folder's (QA)
        if isinstance(came, list) and came and isinstance(came[-1], int):
            then = "; ".join(filter(None, [f"continues trial {came[-1]}", then]))
        rows.append({"trial": t.number, "state": state, **t.params,
                     "val PSNR": a.get("val_psnr"), "MNIST PSNR": a.get("val_psnr_mnist"),
                     "CIFAR PSNR": a.get("val_psnr_cifar"), "MNIST SSIM": a.get("val_ssim_mnist"),
                     "CIFAR SSIM": a.get("val_ssim_cifar"), "step": a.get("step"), "duration_s": dur,
                     "run": a.get("run", ""),
                     "note": "; ".join(filter(None, [a.get("error"), then,
                                                      "the report's defaults" if a.get("baseline") else ""]))})
    frame = pd.DataFrame(rows)
    numbers = ["val PSNR", "MNIST PSNR", "CIFAR PSNR", "MNIST SSIM", "CIFAR SSIM", "step", "duration_s"]
    if len(frame):  # a trial that failed has none of them: NaN (a blank cell), not None (the word)
        frame[numbers] = frame[numbers].apply(pd.to_numeric, errors="coerce")
    return frame


# --------------------------------------------------------------------------- the dashboard's child


class SweepRegistry:
    """Start, stop and poll the dashboard's sweep child (``python -m mixsep sweep ...``).

    Like mixsep.jobs.JobRegistry for training: the child is the CLI, its study folder on
    disk (sweep.json) is the source of truth, and a restarted server adopts a sweep that
    still runs. One sweep or one training at a time per runs folder.
    """

    def __init__(self, runs_dir: Path, python: str = sys.executable, env: dict | None = None):
        self.runs_dir = Path(runs_dir).resolve()
        self.python, self.env = python, env
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._study: str | None = None

    def running(self) -> dict | None:
        """The live sweep of this runs folder (this server's child or any other on this machine), or None."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return {"study": self._study, "pid": self._proc.pid, "state": "running"}
            live = live_sweeps(self.runs_dir)
            return live[0] if live else None

    def start(self, argv: list[str], storage: str | None = None, busy: str | None = None,
              data_root: Path | None = None) -> Path:
        """Check the sweep flags ``argv`` as the CLI would, then start the child; MixsepError if not.

        ``storage`` reaches the child through its environment, so a database password stays
        off the command line. ``busy``: why another job of the runs folder forbids a start. ``data_root``: the
        server's, read where ``argv`` gives no --data-root and a resumed study's own is not a folder here (as
        `sweep` reads MIXSEP_DATA_ROOT then); the child is given the one chosen.
        """
        from .cli import build_parser

        with self._lock:
            live = self.running()
            if live is not None:
                raise MixsepError(f"Sweep '{live['study']}' is already running in this runs folder; one sweep or "
                                  "training at a time: stop it or wait for it to finish.")
            if busy:
                raise MixsepError(busy)
            where = ["--runs-dir", str(self.runs_dir)] + (["--storage", storage] if storage else [])
            p = plan(build_parser().parse_args(["sweep", *where, *argv]),  # bad input stops here, nothing written
                     None if data_root is None else str(data_root))
            if data_root is not None and "--data-root" not in argv:
                argv = [*argv, "--data-root", p.config.data_root]
            p.folder.mkdir(parents=True, exist_ok=True)
            from .jobs import child_env

            env = child_env(self.env)  # the mixsep this server runs
            env.pop(STORAGE_ENV, None)
            if storage:
                env[STORAGE_ENV] = storage
            cmd = [self.python, "-m", "mixsep", "sweep", "--runs-dir", str(self.runs_dir), *argv]
            with open(p.folder / SWEEP_LOG, "ab") as log:
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=env)
            self._study = p.study
            return p.folder

    def stop(self) -> bool:
        """Ask the live sweep to stop: the running trial checkpoints and is requeued; False when none runs."""
        with self._lock:
            live = self.running()
            if live is None:
                return False
            folder = Path(live["folder"]) if "folder" in live else self.runs_dir / str(live["study"])
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
            elif sweep_command(folder, live):  # adopted: still the very process that wrote sweep.json, a sweep's
                os.kill(int(live["pid"]), signal.SIGTERM)
            for other in _other_commands(_read_sweep(folder), folder):  # commands of the same study from a terminal
                if other["pid"] != live.get("pid"):
                    os.kill(int(other["pid"]), signal.SIGTERM)
            return True

    def wait(self, timeout: float = 120.0, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while self.running() is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep still running after {timeout} s")
            time.sleep(interval)

    def error(self) -> str | None:
        """The child's `error: ...` sentence, if it printed one."""
        if self._study is None:
            return None
        try:
            lines = (self.runs_dir / self._study / SWEEP_LOG).read_text(errors="replace").splitlines()
        except OSError:
            return None
        errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
        return errors[-1] if errors else None
