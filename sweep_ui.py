"""Streamlit helpers of the Sweep page: the sweep registry, the space from the setting widgets, the figures.

The sweep itself runs in a child process (``python -m mixsep sweep ...``) that mixsep.sweep
starts and watches; this module only draws. Studies are read from their Optuna storage,
which ``st.cache_resource`` keeps open so a journal file is replayed incrementally.
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import pandas as pd
import streamlit as st

import mixsep_ui as ui
from mixsep.config import setting_by_name
from mixsep.errors import MixsepError
from mixsep.run import open_regular
from mixsep.sweep import (ATTR, JOURNAL, LOCAL, STORAGE_ENV, SweepRegistry, check_storage, database_errors_as,
                          list_studies, open_storage, sqlite_file, storage_label, sweepable, unreadable_database)
from ui_settings import setting_widget

BUDGET = ("epochs", "train_size", "max_minutes")  # the per-trial budget, fixed for every trial
SHARED = ("pretrained", "cpu_bf16", "compile", "cuda_graphs")  # other settings every trial shares, drawn with the Train page's widget


@st.cache_resource(show_spinner=False)
def _registry(runs_dir: str) -> SweepRegistry:
    return SweepRegistry(Path(runs_dir))


def registry(runs_dir: Path) -> SweepRegistry:
    """The one sweep registry of this runs folder, shared by every session of the server."""
    return _registry(str(Path(runs_dir).resolve()))


@st.cache_resource(show_spinner=False, max_entries=4)
def _storage(url: str, runs_dir: str, journal: tuple | bool):
    check_storage(url or None, writes=False, default="empty the Storage box")  # one sentence for a bad URL or a
    # database that is down (not cached)
    return open_storage(url or None, Path(runs_dir), create=False)


_JOURNALS: dict[Path, tuple] = {}  # a journal's path: (identity, size, the bytes before that size, replacements)
_JOURNALS_LOCK = threading.Lock()
_WINDOW = 512  # bytes of a journal remembered just before the size last seen


def _journal_version(path: Path) -> tuple | bool:
    """What the cached storage of the journal at ``path`` is keyed on: False while there is none, then a version
    that changes whenever the file holds another journal than the one read so far. A storage replays a journal from
    where it last read, so another file read from the old one's offset lost its first studies and kept listing the
    gone ones, or failed on half a record. Another journal is another file (a new inode: moved away and made anew,
    as the damaged-journal sentence advises), another first record (a new journal on a reused inode; a journal's
    first record holds its first writer's random id), or a file whose bytes just before the size last seen are no
    longer the same (a backup restored over it in place, also when it has grown past that size since; the records
    there hold times and trial numbers)."""
    with _JOURNALS_LOCK:  # one look at a time: two tabs' looks out of order read as a shrink
        try:
            with open_regular(path) as f:
                first = f.readline(65536)
                size = os.fstat(f.fileno())
                ident = (size.st_dev, size.st_ino, hash(first))
                seen_ident, seen_size, seen_tail, replaced = _JOURNALS.get(path, (ident, 0, b"", 0))
                f.seek(max(0, seen_size - len(seen_tail)))
                was = f.read(len(seen_tail))
                f.seek(max(0, size.st_size - _WINDOW))
                tail = f.read(_WINDOW)
        except OSError:
            return False
        if ident != seen_ident or size.st_size < seen_size or was != seen_tail:
            replaced += 1
        _JOURNALS[path] = (ident, size.st_size, tail, replaced)
    return ident + (replaced,)


def storage(url: str, runs_dir: Path):
    """The study storage for reading (None while it does not exist yet); reopened once it appears, and again
    whenever its journal file is replaced."""
    runs_dir = Path(runs_dir).resolve()
    return _storage(url, str(runs_dir), _journal_version(runs_dir / JOURNAL) if not url else True)


def reading(url: str, runs_dir: Path):
    """Around the page's reads of the storage: a database that went away after the page opened it is one
    sentence (a MixsepError), not Optuna's StorageInternalError and its traceback."""
    return database_errors_as(lambda e: unreadable_database(e, url or None, runs_dir))


def mixsep_studies(store) -> tuple[list[str], int]:
    """(the studies `python -m mixsep sweep` made in ``store``, newest first; how many other studies it holds).

    A storage may be shared (a PostgreSQL database, a journal other scripts write): a study without
    mixsep's attributes has no target, no run folders and no space to draw, and mixsep cannot resume it.
    """
    found = list_studies(store)
    ours = [s.study_name for s in found if isinstance(s.user_attrs.get(ATTR), dict)]
    return ours, len(found) - len(ours)


def made_by_mixsep(store, name: str) -> bool:
    """Whether ``store`` holds the study ``name`` with mixsep's attributes (set just after it is created)."""
    import optuna

    if store is None:
        return False
    try:
        return isinstance(optuna.load_study(study_name=name, storage=store).user_attrs.get(ATTR), dict)
    except (KeyError, AttributeError):  # as the page's load_study
        return False


def check_writes_here(url: str, runs_dir: Path) -> None:
    """Start and Resume write the study into the storage under Storage. The server writes only inside its runs
    folder (and the data root and its caches): an SQLite file typed in the box must be in the runs folder, or be
    the server's own MIXSEP_SWEEP_STORAGE, which whoever started the server chose. Else a visitor could make the
    server create a database file anywhere it may write, or add Optuna's tables to another program's database.
    A database server (postgresql://...) is no file of this machine; the box may name one."""
    if not url or url == os.environ.get(STORAGE_ENV, "").strip():
        return
    try:
        sqlite, _ = sqlite_file(url)
    except Exception:  # not a database URL: the sweep says so, in its own sentence
        return
    runs = Path(runs_dir).resolve()
    if sqlite is not None and not sqlite.resolve().is_relative_to(runs):
        raise MixsepError(f"The dashboard writes studies only inside its runs folder ({runs}), and the SQLite file "
                          f"{sqlite} is not in it; name a file there (sqlite:///{runs}/NAME.db), or run the sweep in "
                          f"a terminal (`python -m mixsep sweep --storage URL`), or start the server with {STORAGE_ENV} "
                          "set to that URL.")


def storage_url() -> str:
    """The storage the page uses. The server's own (``MIXSEP_SWEEP_STORAGE``) is shown with its
    password hidden, never sent to the browser, and used while the box still shows it."""
    server = os.environ.get(STORAGE_ENV, "").strip()
    shown = storage_label(server, Path(".")) if server else ""
    typed = st.text_input("Storage", value=shown, key="sweep_storage", persist_state="session",
                          placeholder="the journal file in the runs folder",
                          help="Empty: Optuna's journal file in the runs folder. Or a database URL such as "
                               "postgresql://user@host/db, which several machines can share. A password is "
                               f"best kept in the server's {STORAGE_ENV}: the box then shows it as ***.").strip()
    return server if server and typed == shown else typed


def space_widgets() -> tuple[list[str], list[str]]:
    """A range widget per sweepable setting; returns (--space entries, fixed flags).

    A range with two different ends, or two or more values, is searched; a single value
    is a fixed setting of every trial (the categorical ones start fixed at their default).
    """
    space, fixed = [], []
    for name, s in sweepable().items():
        value = None if not s.categorical else ((s.default, s.default) if s.widget == "select_slider" else (s.default,))
        got = tuple(setting_widget(s, "sweep_", value=value, range_=True))
        values = tuple(dict.fromkeys(got))
        if len(values) >= 2 and s.categorical:
            space.append(f"{name}=" + "|".join(str(v) for v in values))
        elif len(values) >= 2:
            space.append(f"{name}={values[0]:g}:{values[1]:g}")
        elif values:
            fixed += s.argv(values[0])
    return space, fixed


def budget_widgets() -> tuple[list[str], list[str]]:
    """The per-trial budget (epochs, training pairs, time limit) and the shared settings, as fixed flags for Start;
    and this machine's own choices among them (LOCAL: --cpu-bf16, --compile, --cuda-graphs), always given, for Resume: a study
    resumed here trains as the page shows, not as the machine that started it chose."""
    flags, local = [], []
    for name in SHARED:
        s = setting_by_name(name)
        v = setting_widget(s, "sweep_")
        if v != s.default:
            flags += s.argv(v)
        if name in LOCAL:
            local += s.argv(v)
    for name in BUDGET:
        s = setting_by_name(name)
        if s.widget:
            v = setting_widget(s, "sweep_")
        else:
            v = st.number_input(s.label + " per trial", 0.0, 24 * 60.0, 0.0, 1.0, key="sweep_" + name,
                                help=s.help + " (0 = no limit)")
        if v != s.default:
            flags += s.argv(v)
    return flags, local


def study_settings(attrs: dict) -> str:
    """What a study searches, how each of its trials trains and how many it aims at, from its stored attributes, as
    three lines of markdown.

    Resume goes on with these, not with the sidebar, which sets up a new study: with a study picked, the sidebar's
    defaults read as if they were its settings (QA). Values come from the storage, which others may write: as text.
    """
    def text(v) -> str:
        return ui.literal(ui.setting_text("", v) if isinstance(v, float) else v)

    searched, names = [], set()
    for entry in str(attrs.get("space") or "").split(","):
        name, _, spec = entry.partition("=")
        if not name:
            continue
        names.add(name)
        try:  # as the sidebar names it
            name = setting_by_name(name).label
        except KeyError:
            pass
        if "|" in spec:
            searched.append(f"{ui.literal(name)} among {', '.join(map(ui.literal, spec.split('|')))}")
        else:
            lo, _, rest = spec.partition(":")
            hi, _, scale = rest.partition(":")
            searched.append(f"{ui.literal(name)} from {ui.literal(lo)} to {ui.literal(hi)}"
                            + (f" ({ui.literal(scale)} scale)" if scale else ""))
    config = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
    fixed = attrs.get("fixed") if isinstance(attrs.get("fixed"), dict) else {}
    shown = {name: config[name] for name in ("model", *BUDGET, "batch_size") if name in config}
    shown |= {name: v for name, v in fixed.items() if name not in LOCAL}  # every flag given when it was made
    shown = {name: v for name, v in shown.items() if name not in names}  # a searched one is the trial's own (QA)
    trial = []
    for name, v in shown.items():
        try:
            s = setting_by_name(name)
        except KeyError:  # a setting of another mixsep version
            trial.append(f"{ui.literal(name)}: {text(v)}")
            continue
        value = ("on" if v else "off") if isinstance(v, bool) else s.zero if v == 0 and s.zero else \
            ui.literal(ui.setting_text(name, v))
        trial.append(f"{s.label}: {value}")
    ends = [f"{text(attrs['trials'])} trial{'' if attrs['trials'] == 1 else 's'}" if "trials" in attrs else "",
            f"{text(attrs['val_size'])} validation pairs" if "val_size" in attrs else ""]
    toggles = [setting_by_name(n).label for n in LOCAL if n in SHARED]
    return "  \n".join(filter(None, [  # a line each: one paragraph of it was hard to scan (QA)
        "This study searches " + (", ".join(searched) if searched else "nothing (every trial alike)") + ".",
        "Each trial: " + "; ".join(trial) + "." if trial else "",
        " ".join(filter(None, [" on ".join(filter(None, ends)) + "." if any(ends) else "",
                               "Resume goes on with these. The sidebar sets up a new study: of it, only "
                               f"{', '.join(toggles[:-1])} and {toggles[-1]} apply to Resume."]))]))


def trials_table(frame: pd.DataFrame, key: str) -> str | None:
    """The live trials table; returns the run name of the selected row."""
    if frame.empty:
        st.info("No trial has started yet.")
        return None
    frame = frame.assign(duration=[ui.duration(v) if pd.notna(v) else "" for v in frame.pop("duration_s")])
    # what the validation figures are, where Compare and Metrics show test pairs in each source's best mode
    how = ("on the validation pairs (held out of the trial's training data, never test pairs), each head's direct "
           "output, SSIM as torchmetrics computes it")
    fmt = {c: st.column_config.NumberColumn(format="%.2f dB", help=(
        "The mean of the MNIST and CIFAR PSNRs" if c == "val PSNR" else f"Mean {c}") + f", {how}.")
        for c in frame if c.endswith("PSNR")}
    fmt |= {c: st.column_config.NumberColumn(format="%.3f", help=f"Mean {c}, {how}.") for c in frame
            if c.endswith("SSIM")}
    for c in frame:  # a searched setting as the Train page's slider shows it (lr 0.0012: it read 1.20e-3 here)
        if ui.setting_format(c) and pd.api.types.is_numeric_dtype(frame[c]):
            fmt[c] = st.column_config.NumberColumn(format=ui.setting_format(c))
    picked = st.dataframe(frame, hide_index=True, placeholder="", column_config=fmt, key=key, on_select="rerun",
                          selection_mode="single-row")
    rows = picked.selection.rows if picked is not None else []
    return str(frame["run"].iloc[rows[0]]) if rows else None


def figures(study, space: list[str]) -> None:
    """Optuna's plotly views of the study, each with a note when there are too few trials for it."""
    import optuna.visualization as vis
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = [p for t in done for p in t.params]
    tabs = st.tabs(["Optimisation history", "Parallel coordinates", "Contour lr × beta1", "Importances"])
    if not done:
        for tab in tabs:
            tab.info("The figures appear once a trial completes.")
        return
    target = "validation PSNR (dB)"

    def draw(tab, key: str, plot, **kw) -> None:
        # a study another tool wrote to (a value of 1e308, a learning rate of 1e-300) can break a view:
        # that view says so, the others and the page stay
        try:
            fig = plot(study, target_name=target, **kw)
        except (ArithmeticError, RuntimeError, TypeError, ValueError) as e:
            tab.info(f"This view cannot be drawn for this study's values ({e.__class__.__name__}: {e}).")
            return
        # in the page's words: the tab names the view (Optuna's title said it again, in other words), trials are
        # whole numbers (two trials had ticks at 0.2, 0.4...), and the best line is "Best so far", as above it
        fig.update_layout(title=None, margin={"t": 30}, meta={"view": key})  # which view, for a script that looks
        for trace in fig.data:
            trace.name = {"Best Value": "Best so far"}.get(trace.name, trace.name)
            if trace.name == "Infeasible Trial" and not len(getattr(trace, "x", None) or ()):
                trace.showlegend = False  # no constraints here: always empty
        if key == "sweep_hist":
            fig.update_xaxes(tickformat="d", dtick=1 if len(done) <= 20 else None, title="trial")
        if key == "sweep_par":
            _readable_parallel(fig, done)
        tab.plotly_chart(fig, key=key)

    draw(tabs[0], "sweep_hist", vis.plot_optimization_history)
    draw(tabs[1], "sweep_par", vis.plot_parallel_coordinate)
    if {"lr", "beta1"} <= set(names) and len(done) >= 2:
        draw(tabs[2], "sweep_contour", vis.plot_contour, params=["lr", "beta1"])
    else:
        tabs[2].info("The contour needs lr and beta1 in the space and two completed trials.")
    if len(set(names)) >= 2 and len(done) >= 3:
        draw(tabs[3], "sweep_imp", vis.plot_param_importances)
    else:
        tabs[3].info("Importances need two or more searched settings and three completed trials.")


# Optuna colours each trial's line on plotly's Blues, whose low end is white: the worst trial vanished into the
# page. Its lines take the scale's upper 60% here, from a mid blue to the darkest.
_PAR_LOW = 0.4


def _readable_parallel(fig, trials: list) -> None:
    """Optuna's parallel coordinates made readable: each trial's line coloured by its value (its height on the
    objective axis, 0 to 1) on a scale with no white in it, the objective axis's ticks with the decimals that
    tell them apart (three significant digits made 13.41 to 13.46 read "13.4" five times), and the parameters'
    (``_parameter_ticks``); ``trials``: the completed ones, which Optuna draws."""
    from plotly.colors import sample_colorscale

    values = [t.value for t in trials]
    _parameter_ticks(fig, trials)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    # decimals enough for the ticks' step (a quarter of the span): two places labelled ticks 0.0125 apart 13.41,
    # 13.42, 13.44, 13.45, 13.46, uneven steps for even ones (regression pass)
    digits = 2 if hi == lo else min(6, max(2, 1 - math.floor(math.log10((hi - lo) / 4))))

    def value_at(height: float) -> str:  # the objective at a height (0 to 1) of its axis
        return f"{lo + (hi - lo) * float(height):.{digits}f}"

    def shade(height: float) -> str:
        return sample_colorscale("Blues", _PAR_LOW + (1 - _PAR_LOW) * float(height))[0]

    for trace in fig.data:
        if trace.mode == "lines" and trace.y and trace.y[0] is not None:
            trace.line.color = shade(trace.y[0])
            trace.opacity = 0.85  # Optuna's 0.5 washed the lighter lines out further
            if finite and trace.customdata is not None and len(trace.customdata):  # the hover's value, as the axis
                trace.customdata = [[trace.customdata[0][0], value_at(trace.y[0])],
                                    *[list(c) for c in trace.customdata[1:]]]
        elif trace.mode == "markers" and trace.marker.colorscale:  # the colour bar
            trace.marker.colorscale = [[i / 8, shade(i / 8)] for i in range(9)]
    if not finite:
        return
    for note in fig.layout.annotations:
        if note.x == 0 and note.y is not None:  # a tick of the objective axis, at its height
            note.text = value_at(note.y)


_TICK_ROOM = 0.06  # of an axis's height: two tick labels closer than this overlap (10 px type on a 400 px chart)


def _parameter_ticks(fig, trials: list) -> None:
    """The parameter axes' ticks of Optuna's parallel coordinates, readable with many trials: each label on a pale
    ground (90 trials' lines crossed them out), with the fewest significant digits (three or more) that put it
    within a thousandth of the axis of its value (three read 0.9998, the highest beta2 tried, as "1", which no beta2
    can be), and on a log axis a decade too close to the lowest or highest value tried is not labelled (0.0001 was
    printed over 7.43e-05). Optuna puts a numeric axis's ticks at five even steps from the lowest value tried to the
    highest, or on a log axis at those two and the decades between, whether or not some trial lacks the setting
    (its own tick, "None", is left as it is); a categorical axis keeps its labels."""
    from optuna.distributions import CategoricalDistribution

    names = list(fig.layout.xaxis.ticktext or ())
    notes = list(fig.layout.annotations)
    for note in notes:
        note.bgcolor = "rgba(255, 255, 255, 0.8)"
    dropped = set()
    for axis, name in enumerate(names):
        have = [t for t in trials if name in t.params and name in t.distributions]
        if axis == 0 or not have or any(isinstance(t.distributions[name], CategoricalDistribution) for t in have):
            continue
        log = any(getattr(t.distributions[name], "log", False) for t in have)
        tried = [float(t.params[name]) for t in have]
        lo, hi = min(tried), max(tried)
        if log:
            edges = [math.log10(lo), math.log10(hi)]
            ticks = [edges[0], *range(math.ceil(edges[0]), math.floor(edges[1]) + 1), edges[1]]
            ticks = [10 ** v for v in dict.fromkeys(float(v) for v in ticks)]
        else:
            edges = [lo, hi]
            ticks = [lo] if lo == hi else [lo + (hi - lo) * i / 4 for i in range(5)]
        tol = (edges[1] - edges[0]) / 1000

        def label(v: float) -> str:
            for digits in (3, 4, 5, 6):
                text = f"{v:.{digits}g}"
                off = abs(math.log10(float(text)) - math.log10(v)) if log else abs(float(text) - v)
                if off <= tol:
                    return text
            return f"{v:.6g}"

        on_axis = [n for n in notes if n.x == axis and n.y is not None]
        matched = {}  # id of a tick's annotation -> its value, found by Optuna's own three-digit label
        rest = list(ticks)
        for note in on_axis:
            hit = next((v for v in rest if f"{v:.3g}" == note.text), None)
            if hit is not None:
                rest.remove(hit)
                matched[id(note)] = hit
        ends = [float(n.y) for n in on_axis if matched.get(id(n)) in (ticks[0], ticks[-1])]
        for note in on_axis:
            if id(note) not in matched:
                continue
            value = matched[id(note)]
            note.text = label(value)
            if log and value not in (ticks[0], ticks[-1]) and any(abs(float(note.y) - e) < _TICK_ROOM for e in ends):
                dropped.add(id(note))  # a decade next to the range's end, which is labelled
    fig.layout.annotations = [n for n in notes if id(n) not in dropped]


def open_links(run: str | None) -> None:
    """One click from the selected trial to Samples or Metrics."""
    if run is None:
        st.caption("Select a trial in the table to open it in Samples or Metrics.")
        return
    row = st.container(horizontal=True)
    for title in ("Samples", "Metrics"):
        ui.page_link(title, f"{title} of {ui.literal(run)}", where=row, query_params={"run": run})
