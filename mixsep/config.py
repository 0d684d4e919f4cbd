"""The one configuration dataclass, saved with every run and checkpoint, and each setting's metadata.

Every ``TrainConfig`` field declares itself once with ``setting(...)``: its help, range, choices,
scale and whether a sweep may vary it. From that declaration come ``validate()``, the ``train``
command's flags (``add_train_flags``), the Train page's widgets (ui_settings.py) and a sweep's
search space (``Setting.sweep``). A new setting is one line here.
"""
from __future__ import annotations

import argparse
import dataclasses
import decimal
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MixsepError

JSON_LIMIT = 1 << 20  # the most a run's or a study's JSON file is read of (config.json and status.json hold < 4 KB)
SEED_MAX = 2**63 - 1  # torch.manual_seed takes a signed or unsigned 64-bit seed; JSON tools keep signed ones exact
TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
GROUPS = ("model", "optimiser", "data", "mechanics")  # the order the Train page draws them in
# recovery modes for separating a user's own mixtures: those that need no training data (the first is the default)
SEPARATE_MODES = ("projection_uniform", "direct", "subtraction")


# How torch's OpenMP threads wait for each other at the end of every operation. libgomp's default
# spins about 300,000 pause loops first: the quickest hand-over on an idle machine, but with one
# more runnable process than cores (a second run, a test suite, other people's jobs) the spinning
# thread holds a core the late thread needs. Asleep at once, the faithful step ran 2.2-2.8x faster
# beside a second trainer and 5-15% slower alone (bench/contention.py); the shared case wins here.
THREAD_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}
USER_THREAD_WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # set by the user: their choice stands


def choose_thread_wait(environ=os.environ) -> None:
    """Put ``THREAD_WAIT`` in the environment unless the user chose how threads wait.

    libgomp reads it once, when torch loads it, so this runs before torch is imported:
    ``import mixsep`` calls it first (the CLI, the dashboard, every process mixsep starts,
    which inherit it). A program that imported torch before mixsep keeps libgomp's default.
    """
    if not any(name in environ for name in USER_THREAD_WAIT):
        environ.update(THREAD_WAIT)


def thread_wait(environ=os.environ) -> str:
    """How this process's OpenMP threads were told to wait, as the environment says it."""
    return ", ".join(f"{name}={environ[name]}" for name in USER_THREAD_WAIT if name in environ) or "libgomp's default"


def default_data_root() -> str:
    """MIXSEP_DATA_ROOT, its ~ the home folder as a shell would make it (a quoted value keeps it), else ./data."""
    return os.path.expanduser(os.environ.get("MIXSEP_DATA_ROOT") or "./data")  # set but empty: the default, not "."


def saved_data_root(root, whose: str, default: str | None = None) -> tuple[str, str | None]:
    """(data root, the line saying so) for a resume without --data-root: the folder a run or study (``whose``: "the
    run's", "the study's") was made on when it is a folder here, else the usual default (``default``: a server's
    own), said why; no line where it names no folder of its own."""
    default = default_data_root() if default is None else default
    if not isinstance(root, str) or root == default:
        return default, None
    try:
        here = Path(root).is_dir()
    except OSError:  # a name too long for this system, say
        here = False
    if here:
        return root, f"data root {root} ({whose}; --data-root chooses another)"
    return default, f"note: {whose} data root {root} is not a folder here; reading {default} (--data-root chooses another)"


def default_runs_dir() -> str:
    return os.path.expanduser(os.environ.get("MIXSEP_RUNS_DIR") or "./runs")


@dataclass(frozen=True)
class Setting:
    """One training setting as the CLI, the dashboard and a sweep see it."""

    name: str
    type: type                       # int, float, bool or str
    default: typing.Any
    help: str                        # the CLI's help and the widget's tooltip
    label: str                       # the widget's label; also names the setting in error messages
    group: str                       # one of GROUPS
    choices: tuple | None = None     # the only valid values (str settings)
    low: float | None = None         # valid range, inclusive; None = unbounded
    high: float | None = None
    log: bool = False                # log scale: widgets step by 1-2-5 per decade, sweeps sample log-uniformly
    sweep: tuple | None = None       # default sweep: (low, high) for a number, the values to try for a categorical
    widget: str | None = None        # "slider", "select_slider", "toggle", "select", "number"; None: not on the Train page
    advanced: bool = False           # on the Train page, under "Beyond the report"
    options: tuple | None = None     # a select_slider's values when they are not the choices or a log grid
    span: tuple | None = None        # a slider's or number box's (min, max) when not the sweep range or valid range
    step: float | None = None        # a slider's step
    fmt: str | None = None           # printf format of a slider or number box
    zero: str | None = None          # what 0 means, shown instead of 0 ("all", "no limit")
    pattern: str | None = None       # a regex a str value must match in full, when there are no fixed choices
    rule: str | None = None          # the error sentence for an out-of-range value ({value} is filled in)
    why: str | None = None           # appended to the out-of-range sentence: the reason for the limit
    on_resume: bool = False          # a resumed run may change it (where and how it runs, not what it computes)
    only_for: str | None = None      # a model class attribute this setting needs (the ResNet encoder's weights):
                                     # for a model without it the Train page shows the toggle off and greyed
    before: typing.Any = None        # what a run saved before this setting existed did, for a saved config that
                                     # lacks it (None: today's default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def argv(self, value) -> list[str]:
        """The command-line words that set this setting to ``value``, in add_train_flags' form."""
        if self.type is bool:
            return [self.flag if value else "--no-" + self.flag.removeprefix("--")]
        return [self.flag, str(value)]

    @property
    def categorical(self) -> bool:
        """A sweep of this setting picks among listed values rather than from a numeric range."""
        return self.sweep is not None and (self.type in (str, bool) or self.options is not None)

    def check_type(self, value) -> None:
        """Raise MixsepError with one sentence when ``value`` is not of this setting's type."""
        if not _is_type(value, self.type):
            shown = json.dumps(value) if _jsonable(value) else repr(value)
            what = "null" if value is None else f"the {_json_kind(value)} {shown}"
            raise MixsepError(f"Setting '{self.name}' must be {TYPE_NAMES[self.type]}, not {what}; "
                              f"write it like its default, {json.dumps(self.default)}.")
        if self.type is float and isinstance(value, int) and not _fits_float(value):
            digits = int(abs(value).bit_length() * math.log10(2)) + 1  # str() refuses past 4,300 digits
            raise MixsepError(f"Setting '{self.name}' is a whole number of about {digits:,} digits, too large for a "
                              f"float; write it like its default, {json.dumps(self.default)}.")

    def check(self, value) -> None:
        """Raise MixsepError with one sentence when ``value`` is not valid for this setting."""
        self.check_type(value)
        if self.type is float and not math.isfinite(value):
            raise MixsepError(f"{self.label} must be a finite number (got {value}); the default is {self.default:g}.")
        if self.choices is not None and value not in self.choices:
            raise MixsepError(f"Unknown {self.label.lower()} '{value}'; choose one of: {', '.join(map(str, self.choices))}.")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise MixsepError(self.rule.format(value=value))
        if self.type in (int, float) and not _in_range(value, self.low, self.high):
            if self.rule:
                raise MixsepError(self.rule.format(value=value))
            if self.low is not None and self.high is not None:
                limit = f"lie in [{self.low:g}, {self.high:g}]" if self.type is float else \
                    f"lie in [{self.low}, {self.high}]"
            elif self.low is not None:
                limit = f"be at least {self.low:g}"
            else:
                limit = f"be at most {self.high:g}"
            raise MixsepError(f"{self.label} must {limit} (got {value}){self.why or ''}.")

    def parse(self, text: str):
        """A command-line value of this setting's type, or argparse.ArgumentTypeError with one sentence.

        Only the type is checked here; ranges and choices are validate()'s, so a value out of
        range reads the same from a flag, a config file or the dashboard.
        """
        try:
            return _convert(text, self.type)
        except _TooLarge:
            if self.low is not None and self.high is not None:  # as validate() says it of a number it can print
                raise argparse.ArgumentTypeError(
                    f"{self.label} must lie in [{self.low}, {self.high}] (got {text}){self.why or ''}.") from None
            raise argparse.ArgumentTypeError(
                f"{self.flag} takes a whole number no larger than {SEED_MAX} (got '{text}'), for example "
                f"{_show(self.default)}.") from None
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{self.flag} takes {TYPE_NAMES[self.type]} (got '{text}'), for example {_show(self.default)}.") from None

    def distribution(self, sweep: tuple | None = None):
        """The optuna distribution for ``sweep`` (default: this setting's own sweep)."""
        import optuna  # late import: only sweeps need it

        sweep = tuple(sweep if sweep is not None else self.sweep or ())
        if self.categorical:
            return optuna.distributions.CategoricalDistribution(sweep)
        low, high = sweep
        if self.type is int:
            return optuna.distributions.IntDistribution(int(low), int(high), log=self.log)
        return optuna.distributions.FloatDistribution(float(low), float(high), log=self.log)


def _is_type(value, kind: type) -> bool:
    if isinstance(value, bool):  # bool is an int subclass: True is not a batch size
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _fits_float(value: int) -> bool:
    try:
        float(value)
        return True
    except OverflowError:  # a JSON file may hold a whole number of 400 digits
        return False


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _in_range(value, low, high) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


class _TooLarge(ValueError):
    """A whole number past what any setting holds (torch's seeds stop at 2**63 - 1)."""


def _convert(text: str, kind: type):
    """ValueError when ``text`` does not spell a value of ``kind``."""
    if kind is float:
        return float(text)
    if kind is int:
        try:
            value = int(text)
        except ValueError:
            try:  # 5e4 is a fine way to write 50000; read exactly, where a float rounds 12345678901234567.0
                d = decimal.Decimal(text)
            except decimal.InvalidOperation:
                raise ValueError(text) from None
            if not d.is_finite() or d != d.to_integral_value():
                raise ValueError(text) from None
            if d.adjusted() > 18:  # before int(): 1e4300 would be a number no message can print
                raise _TooLarge(text) from None
            value = int(d)
        if abs(value) > SEED_MAX:
            raise _TooLarge(text)
        return value
    return text


def whole_number(text: str) -> int:
    """argparse's type for the commands' own whole-number flags: written as the settings' are (5e4, 1_000)."""
    try:
        return _convert(text, int)
    except _TooLarge:
        raise argparse.ArgumentTypeError(f"takes a whole number no larger than {SEED_MAX} (got '{text}')") from None


whole_number.__name__ = "whole number"  # argparse: "invalid whole number value: '2.5'"


def setting(default, help: str, label: str = "", group: str = "mechanics", **meta):
    """A dataclass field that carries its Setting metadata (everything but name and type)."""
    meta = {"help": help, "label": label, "group": group, **meta}
    if callable(default):
        return field(default_factory=default, metadata={"setting": meta})
    return field(default=default, metadata={"setting": meta})


LR_SWEEP = (1e-5, 1e-1)


@dataclass
class TrainConfig:
    # data
    data_root: str = setting(default_data_root, "folder with MNIST/ and cifar-10-batches-py/ or cifar10/*.npz "
                             "(env MIXSEP_DATA_ROOT)", "Data root", "data", on_resume=True)
    train_size: int = setting(0, "training pairs per epoch; 0 = all (the shorter of the two training sets)",
                              "Training pairs per epoch", "data", low=0, widget="select_slider", zero="all",
                              options=(128, 256, 512, 1024, 2048, 5000, 10000, 20000, 50000, 0),
                              rule="Training size must be 0 (all) or a positive number of pairs (got {value}).")
    repair: bool = setting(False, "draw fresh MNIST partners for the CIFAR images every epoch (seeded): more "
                           "distinct mixtures", "Fresh MNIST partners every epoch", "data", widget="toggle",
                           advanced=True)
    # model
    model: str = setting("faithful", "separator architecture (see `python -m mixsep info`)", "Model", "model",
                         widget="select", sweep=())  # choices and sweep: mixsep.model.MODELS, filled in by settings()
    pretrained: bool = setting(True, "ImageNet weights for the ResNet-18 encoder, downloaded once and cached; without "
                               "them the encoder starts from random weights and the run says so",
                               "ImageNet-pretrained encoder", "model", widget="toggle", only_for="RESNET_ENCODER")
    # optimisation: the report's settings are the defaults
    epochs: int = setting(1, "passes over the training pairs", "Epochs", "optimiser", low=1, high=100_000,
                          why=": fewer trains nothing, and more is surely a typo (a recipe's 15 CPU minutes hold 34)",
                          widget="slider", span=(1, 20))
    batch_size: int = setting(128, "pairs per step", "Batch size", "optimiser", low=2,
                              why=": BatchNorm needs two samples per channel to train", widget="select_slider",
                              options=(16, 32, 64, 128, 256, 512), sweep=(16, 32, 64, 128, 256, 512))
    lr: float = setting(1e-3, "Adam learning rate", "Learning rate", "optimiser", low=1e-6, high=1.0, log=True,
                        sweep=LR_SWEEP, widget="select_slider", fmt="%.2g",
                        rule="Learning rate must be a positive number from 1e-06 to 1 (got {value}); the report used 1e-3.")
    beta1: float = setting(0.9, "Adam beta1: decay of the gradient's running mean", "Adam beta1", "optimiser",
                           low=0.0, high=0.9999, sweep=(0.5, 0.999), widget="slider", step=0.001, fmt="%.3f",
                           why="; Adam's defaults are beta1=0.9, beta2=0.999")
    beta2: float = setting(0.999, "Adam beta2: decay of the squared gradient's running mean", "Adam beta2",
                           "optimiser", low=0.0, high=0.99999, sweep=(0.9, 0.9999), widget="slider", step=0.0001,
                           fmt="%.4f", why="; Adam's defaults are beta1=0.9, beta2=0.999")
    weight_decay: float = setting(0.0, "Adam weight decay (L2 penalty on the weights)", "Weight decay", "optimiser",
                                  low=0.0, high=1.0, widget="number", span=(0.0, 1.0), step=1e-5, fmt="%.1e", advanced=True,
                                  why="; 0 turns it off, and beyond 1 it only pulls every weight to zero")
    schedule: str = setting("constant", "learning-rate schedule: constant, or onecycle (5% linear warm-up, then cosine "
                            "decay to zero)", "Learning-rate schedule", "optimiser", choices=("constant", "onecycle"),
                            sweep=("constant", "onecycle"), widget="select", advanced=True)
    loss: str = setting("mse", "mse: the report's summed MSE; log_mse: mean per-image log MSE, what mean PSNR "
                        "averages", "Loss", "optimiser", choices=("mse", "log_mse"), sweep=("mse", "log_mse"),
                        widget="select", advanced=True)
    # run mechanics
    seed: int = setting(0, "seed for initialisation, order and pairing", "Seed", "mechanics", low=0, high=SEED_MAX,
                        widget="number", span=(0, 2**31 - 1))
    device: str = setting("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N", "Device", "mechanics",
                          pattern=r"auto|cpu|cuda(:\d+)?", rule="Unknown device '{value}'; choose auto, cpu or cuda.",
                          on_resume=True)
    amp: bool = setting(True, "bfloat16 autocast on CUDA; on the CPU, cpu_bf16 decides (off: fp32)",
                        "Mixed precision (CUDA)", "mechanics", on_resume=True)
    cpu_bf16: bool = setting(False, "bfloat16 autocast on the CPU too: faster where the CPU computes bf16 itself "
                             "(AMX, as on Xeon Sapphire Rapids and later: 1.3 to 2x a step; AVX512-BF16, as on AMD Zen 4: 1.3 "
                             "to 1.6x), emulated where it "
                             "does not; results then differ from fp32's from the first step (bf16 keeps 8 bits "
                             "of mantissa, fp32 24)", "Mixed precision on the CPU (bf16)", "mechanics",
                             on_resume=True, widget="toggle", advanced=True)
    compile: bool = setting(False, "torch.compile the network for training: the first step compiles it (30 to 60 s "
                            "on a 2-core CPU, seconds once inductor's cache holds it), then each step runs 1.04 to "
                            "1.08 times faster there, so it pays for runs longer than about 600 to 1,200 steps of the "
                            "report's network and 5,000 to 8,000 of unet_hf_silu's (bench/compile.py measures it on your "
                            "machine); where "
                            "compiling fails the run trains without it and says so",
                            "Compile the network (torch.compile)", "mechanics", on_resume=True, widget="toggle",
                            advanced=True)
    cuda_graphs: bool = setting(True, "on CUDA, record the training step's forward and backward once as a CUDA graph "
                                "and replay it: one launch instead of hundreds of small kernels, the same arithmetic. "
                                "The first 3 steps run as usual, Adam's step stays outside the graph; off when compile is "
                                "on, no effect on the CPU; where recording fails the run trains without it and says so",
                                "CUDA graphs (CUDA)", "mechanics", on_resume=True, widget="toggle", advanced=True)
    checkpoint_every: int = setting(200, "steps between checkpoints, at most one in checkpoint_seconds (one is "
                                         "always written at the end)",
                                    "Steps between checkpoints", "mechanics", low=1, on_resume=True)
    checkpoint_seconds: float = setting(10.0, "write checkpoints (every checkpoint_every steps and at each epoch's "
                                        "end) at most once in this many seconds; the run's end, a stop and the "
                                        "epochs keep_epochs >= 2 asks for are always written. On a GPU an epoch can take a third of a second, and a checkpoint "
                                        "every epoch took a fifth of a run; 0 = at every epoch's end",
                                        "Minimum seconds between checkpoints", "mechanics", low=0.0,
                                        zero="no minimum", on_resume=True, advanced=True, widget="number", before=0.0,
                                        span=(0.0, 3600.0), step=1.0, fmt="%g")
    keep_epochs: int = setting(1, "keep every k-th epoch checkpoint (weights only; the latest is always kept, and "
                                  "last.pt holds the optimiser state a resume needs); 0 = only the latest. k >= 2 "
                                  "writes the checkpoint of every k-th epoch however soon after the last one it "
                                  "comes (checkpoint seconds); k = 1 keeps every epoch checkpoint written",
                               "Keep epoch checkpoints every", "mechanics", low=0, zero="only the latest",
                               rule="--keep-epochs must be 0 (keep only the latest epoch checkpoint) or k >= 1 "
                                    "(keep every k-th); got {value}.",
                               on_resume=True)
    max_minutes: float = setting(0.0, "stop cleanly after this many minutes of training in all (a resume counts those "
                                 "trained before it); 0 = no limit", "Time limit (minutes)",
                                 "mechanics", low=0.0, zero="no limit", on_resume=True)

    def validate(self) -> "TrainConfig":
        """Raise MixsepError with one clear sentence for the first value that is not valid."""
        for s in settings():
            s.check(getattr(self, s.name))
        if self.train_size and self.batch_size > self.train_size:  # before a run folder is made for it
            raise MixsepError(f"Batch size {self.batch_size} is larger than the {self.train_size} training pairs; "
                              "lower it.")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d, saved: bool = False) -> "TrainConfig":
        """``saved``: a run's own config (its config.json, its checkpoint's, a study's): a setting it lacks takes
        what the version that wrote it did (``before``), where today's default would change the run (QA: an old
        run resumed without a word into checkpoints at most every 10 s, and lost epoch checkpoints)."""
        if not isinstance(d, dict):
            raise MixsepError(f"A mixsep config is a JSON object of settings, not a {_json_kind(d)}; "
                              "use a config.json written by `python -m mixsep train` or the dashboard.")
        # Unknown keys come from other versions: drop them rather than fail, so old
        # runs stay readable; missing keys take today's defaults.
        declared = {s.name: s for s in settings(resolve=False)}
        for k, v in d.items():  # a value out of range is validate()'s; one of another type no version wrote
            if k in declared:
                declared[k].check_type(v)
        if saved:
            d = {**{k: s.before for k, s in declared.items() if s.before is not None}, **d}
        return cls(**{k: float(v) if declared[k].type is float else v for k, v in d.items() if k in declared})

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path, strict: bool = False, of_run: bool = False) -> "TrainConfig":
        """A config.json; ``strict`` refuses keys that name no setting (a file the user wrote); ``of_run``: a run
        folder's own, refused when it names no setting at all (a project's own config.json, which a resume took
        for a run's with every setting at its default, then trained into its folder and wrote over)."""
        path = Path(path)

        def half() -> str:  # only a run's own config.json may be half written
            in_run = (path.parent / "checkpoints").exists() or (path.parent / "metrics.csv").exists()
            return "; the run folder may be half written" if in_run else ""

        twice: list[str] = []
        try:
            if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO would block the read forever
                raise MixsepError(f"{path} is not a regular file; give a config.json file.")
            if path.is_file() and path.stat().st_size > JSON_LIMIT:  # read whole at every poll of every page
                raise MixsepError(f"{path} is not a readable mixsep config (larger than {JSON_LIMIT >> 20} MB, "
                                  f"where a config.json holds about 1 KB){half()}.")
            # a byte-order mark (Windows editors) is no error
            d = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=lambda kv: _note_twice(kv, twice))
        except FileNotFoundError:
            if path.name != "config.json":  # a config file the user named, not a run folder's
                raise MixsepError(f"There is no config file {path}; check the path.") from None
            raise MixsepError(f"No config.json in {path.parent}: this is not a mixsep run folder.") from None
        except IsADirectoryError:
            raise MixsepError(f"{path} is a folder; give the config.json file inside a run folder.") from None
        except RecursionError:
            raise MixsepError(f"{path} is not a readable mixsep config (nested too deeply){half()}.") from None
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, or a number too long to convert
            raise MixsepError(f"{path} is not a readable mixsep config ({e}){half()}.") from None
        except OSError as e:
            raise MixsepError(f"{path} cannot be read ({e.strerror or e.__class__.__name__}).") from None
        if not isinstance(d, dict):
            raise MixsepError(f"{path} holds a JSON {_json_kind(d)}, not an object of settings; "
                              "it is not a mixsep config.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in known]
        if twice:  # JSON keeps the last, silently; mixsep never writes a key twice: a hand edited it
            names = ", ".join(repr(k) for k in twice[:5]) + (", …" if len(twice) > 5 else "")
            raise MixsepError(f"{path} gives {names} more than once; keep one of each (JSON would silently take "
                              "the last).")
        if of_run and len(unknown) == len(d):
            names = ", ".join(repr(k) for k in unknown[:5]) + (", …" if len(unknown) > 5 else "")
            raise ForeignConfig(f"{path} names no mixsep setting ({names or 'it is empty'}), so it is not a mixsep "
                                "run's config.json", "give --run-dir a run folder, or a new or empty folder for a new run")
        if strict and unknown:
            names = ", ".join(repr(k) for k in unknown[:5]) + (", …" if len(unknown) > 5 else "")
            raise MixsepError(f"{path} names {'a setting' if len(unknown) == 1 else 'settings'} mixsep does not "
                              f"know ({names}); the settings are {', '.join(known)}.")
        try:
            return cls.from_dict(d, saved=of_run)
        except MixsepError as e:  # name the file: a page lists many runs
            raise MixsepError(f"{path}: {e}") from None


def _note_twice(pairs, twice: list) -> dict:
    """json's object_pairs_hook: the object, noting into ``twice`` each key given more than once."""
    d: dict = {}
    for k, v in pairs:
        if k in d and k not in twice:
            twice.append(k)
        d[k] = v
    return d


class ForeignConfig(MixsepError):
    """A run folder's config.json of another tool or project. ``fact`` says so without the command line's advice
    (a page has no --run-dir to give: QA)."""

    def __init__(self, fact: str, advice: str):
        super().__init__(f"{fact}; {advice}.")
        self.fact = f"{fact}."


def _json_kind(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


def settings(resolve: bool = True) -> list[Setting]:
    """Every TrainConfig field's Setting, in field order.

    ``resolve`` fills in the model's choices from mixsep.model.MODELS, which imports torch;
    the CLI's parser passes False so ``--help`` and a mistyped flag stay quick (validate()
    still checks the model).
    """
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata["setting"])
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if f.name == "model" and resolve:
            from .model import MODELS  # late import: model imports torch, config must stay light

            meta.update(choices=tuple(MODELS), sweep=tuple(MODELS))
        elif f.name == "model":
            meta.update(sweep=None)
        out.append(Setting(name=f.name, type=hints[f.name], default=default, **meta))
    return out


def setting_by_name(name: str, resolve: bool = True) -> Setting:
    for s in settings(resolve):
        if s.name == name:
            return s
    raise KeyError(name)


# --------------------------------------------------------------------------- recipes

# The settings each separator's results in the README were trained with, declared once:
# `train --recipe` and the Train page's recipe button start from them, and bench/quality.py
# trains with them (sizing the U-Nets' epochs to its time budget instead). The U-Nets' epochs
# are what a 15-minute budget held on a 2-core CPU; a GPU affords many more (--epochs).
_UNET_RECIPE = {"epochs": 11, "batch_size": 64, "lr": 3e-3, "schedule": "onecycle", "repair": True, "loss": "log_mse"}
RECIPES: dict[str, dict] = {
    "faithful": {"epochs": 1, "batch_size": 128, "lr": 1e-3, "schedule": "constant", "repair": False, "loss": "mse"},
    **{name: _UNET_RECIPE for name in ("unet", "unet_fraction", "unet_digit", "unet_digit_rich")},
    # a quarter of the FLOPs, three times the steps, a larger step: on the validation split 6e-3
    # scored +0.19 dB over 3e-3, 1.2e-2 +0.10 more, 2.4e-2 +0.04 more (a seed's spread: not taken)
    "unet_narrow": _UNET_RECIPE | {"epochs": 34, "lr": 1.2e-2},
    "unet_hf": _UNET_RECIPE | {"epochs": 33, "lr": 1.2e-2},  # unet_narrow's lr; 33 epochs: its 15-minute runs
    "unet_hf_silu": _UNET_RECIPE | {"epochs": 33, "lr": 1.2e-2},  # unet_hf's
}


def recipe(model: str) -> dict:
    """The settings ``model``'s results were trained with (RECIPES), or one sentence naming the models that have one."""
    if model not in RECIPES:
        raise MixsepError(f"No recipe for model '{model}'; models with one: {', '.join(RECIPES)}.")
    return dict(RECIPES[model])


def recipe_flags(model: str) -> list[str]:
    """The train flags of ``model``'s recipe (what `info` prints and the Train page's button shows)."""
    return [word for name, value in recipe(model).items() for word in setting_by_name(name).argv(value)]


# --------------------------------------------------------------------------- the command line


def add_train_flags(parser: argparse.ArgumentParser, defaults: bool = True, whose: str | None = None) -> None:
    """One flag per setting: --batch-size for batch_size, --repair/--no-repair for a bool.

    ``defaults=False`` leaves every default as None, so a caller (a sweep) can tell the
    flags the user gave from the ones left alone. ``whose`` ("the run's"): what a resume reads its data root
    from when --data-root is not given (saved_data_root), said in that flag's help.
    """
    for s in settings(resolve=False):
        default = s.default if defaults else None
        resumed = f"; on resume, {whose} own where that folder is on this machine" if whose and s.name == "data_root" \
            else ""
        shown = f"default {s.zero if s.zero and not s.default else _show(s.default)}{resumed}"
        env = re.fullmatch(r"(.*) \((env \w+)\)", s.help)  # one bracket: "(env X; default Y)", not "(env X) (default Y)"
        help = (f"{env[1]} ({env[2]}; {shown})" if env else f"{s.help} ({shown})").replace("%", "%%")  # argparse's %
        if s.type is bool:
            parser.add_argument(s.flag, action=argparse.BooleanOptionalAction, default=default, help=help)
        else:
            metavar = "{" + ",".join(s.choices) + "}" if s.choices else s.name.upper()
            parser.add_argument(s.flag, type=s.parse, default=default, metavar=metavar, help=help)


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def given_settings(args: argparse.Namespace, model: str | None = None) -> dict:
    """The settings parsed ``train`` flags give, by name.

    Flags left out are None (``add_train_flags(defaults=False)``) and absent here; with
    ``--recipe`` the recipe of the flag's model (else ``model``, else the default model) fills
    them, and a flag given wins. With ``--config FILE``: the file's settings, and beside them only
    the flags of where and how a run runs (Setting.on_resume: data root, device, ...); the CLI
    refuses the others there.
    """
    flags = {s.name: getattr(args, s.name) for s in settings(resolve=False) if getattr(args, s.name, None) is not None}
    if getattr(args, "config", None):
        where = {s.name for s in settings(resolve=False) if s.on_resume}
        # a file the user wrote must name known settings (a typo would train with the default unseen);
        # a run's own config.json may hold keys of another version, and resumes all the same
        run_dir = getattr(args, "run_dir", None)
        own = bool(run_dir) and Path(args.config).resolve() == (Path(run_dir) / "config.json").resolve()
        saved = TrainConfig.load(Path(args.config), strict=not own, of_run=own)
        return saved.to_dict() | {k: v for k, v in flags.items() if k in where}
    if getattr(args, "recipe", False):
        flags = recipe(flags.get("model", model or TrainConfig.model)) | flags
    return flags


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed ``train`` flags, or of ``--config FILE`` when given (``given_settings``);
    a setting no flag gives takes its default."""
    return TrainConfig.from_dict(given_settings(args)).validate()
