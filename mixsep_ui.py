"""Streamlit helpers shared by the dashboard pages.

The ``mixsep`` package never imports Streamlit; this module is the one place that
joins the two: cached resources (the job registry, data, models), cached
evaluations, the run picker that keeps names inside the runs folder, and the
plotly figures. Pages stay short and hold no ML.
"""
from __future__ import annotations

import gc
import math
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
import streamlit as st
from streamlit import net_util

from mixsep.config import TrainConfig, default_data_root, default_runs_dir, saved_data_root, setting_by_name
from mixsep.errors import MixsepError, unreachable
from mixsep.jobs import JobRegistry
from mixsep.run import METRIC_FIELDS, MetricsTail, State
from mixsep.run import checkpoints_not_a_folder, live_status, lock_holder, resolve_run
from mixsep.runs import display_rows, downsample, list_runs

# Streamlit runs gc.collect(2) after every script run (runner.postScriptGC), and the Train page
# reruns every second. With torch, pandas and plotly imported, that full pass walks ~400,000
# objects: 0.1-0.3 s of CPU each time, most of the server's CPU while a run is watched (py-spy).
# Those objects live as long as the server: frozen, the pass skips them (CPython's gc.freeze).
gc.collect()
gc.freeze()

# A websocket from an Origin that is not this page's is admitted by Streamlit only when it names this machine,
# and to learn the machine's public address it asks checkip.amazonaws.com (a blocking GET of http, then https,
# on the server's event loop, kept only when answered): any page in the user's browser could make the server
# call out, and stall it two seconds a knock offline. No setting turns the lookup off (Streamlit 1.67,
# server_util.is_url_from_allowed_origins), and this server needs no answer from it: it is served by its loopback
# names, and a page opened by the machine's own address is same-origin. Unknown, the address admits nothing.
# Set when the server runs its first page (dashboard.py imports this module first): under `streamlit run` nothing
# of ours runs earlier, so until a page has been opened once, Streamlit's own lookup stands.
net_util.get_external_ip = lambda: None

# (file, title, icon) of every page, in the sidebar's order; dashboard.py routes with st.navigation
PAGES = [("home.py", "Home", ":material/home:"),
         ("app_pages/1_Train.py", "Train", ":material/model_training:"),
         ("app_pages/2_Samples.py", "Samples", ":material/grid_view:"),
         ("app_pages/6_Separate.py", "Separate", ":material/call_split:"),
         ("app_pages/3_Metrics.py", "Metrics", ":material/analytics:"),
         ("app_pages/4_Compare.py", "Compare", ":material/stacked_line_chart:"),
         ("app_pages/5_Sweep.py", "Sweep", ":material/tune:")]


def page_link(title: str, label: str, where=st, **kwargs) -> None:
    """A link to the page ``title`` of PAGES, with that page's file and icon (``where``: a container)."""
    path, icon = next((path, icon) for path, t, icon in PAGES if t == title)
    where.page_link(path, label=label, icon=icon, **kwargs)


LOSSES = {"loss_cifar": "CIFAR head", "loss_mnist": "MNIST head", "loss": "total"}
SOURCE = {"mnist": "MNIST", "cifar": "CIFAR"}  # a source as every page names it (the data keep mnist, cifar)
COLORS = {"loss_cifar": "#1f77b4", "loss_mnist": "#d62728", "loss": "#2ca02c"}
RUN_DASHES = ("solid", "dash", "dot", "dashdot")


def _luminance(hex_colour: str) -> float:
    """WCAG relative luminance of '#RRGGBB'."""
    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (linear(int(hex_colour[i: i + 2], 16) / 255) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


# Dark24's colours that keep a 3:1 contrast on the light theme's white and the dark theme's #0E1117 alike
# (luminance 0.12 to 0.30): 15 of its 24
RUN_COLOURS = tuple(c for c in qualitative.Dark24 if 0.12 <= _luminance(c) <= 0.30)


def run_lines(names, shown=None) -> dict[str, dict]:
    """Each run's line on a chart of runs, by its name, among all the runs a chart can show (``names``); of the runs
    ``shown`` only, when given.

    Plotly's own ten colours repeat from the 11th run; here 15 colours and then, for each further 15 runs, the
    next dash tell 60 runs apart. A run's colour comes from a hash of its name, or the next free one where a run
    earlier by name holds it: a run keeps its colour when another is left out of the chart, added, or deleted
    (its place among all runs, as before, moved every run after a deleted one: QA), unless the two wanted one.
    Past 60 runs two runs share a line: of two such runs shown, the later by name takes the next line that none
    shown holds (QA: five runs picked among 77, all solid orange).
    """
    import zlib

    slots = len(RUN_COLOURS) * len(RUN_DASHES)

    def free(wanted: int, taken: set) -> int:
        return next((s % slots for s in range(wanted, wanted + slots) if s % slots not in taken), wanted)

    taken, slot_of = set(), {}
    for name in sorted(names):
        slot_of[name] = free(zlib.crc32(name.encode()) % len(RUN_COLOURS), taken)  # a plain line first: dashes
        taken.add(slot_of[name])  # only past 15 runs
    if shown is not None:
        held = set()
        for name in sorted(shown):
            if slot_of[name] in held:
                slot_of[name] = free(slot_of[name], held)
            held.add(slot_of[name])
    return {name: dict(color=RUN_COLOURS[slot_of[name] % len(RUN_COLOURS)],
                       dash=RUN_DASHES[slot_of[name] // len(RUN_COLOURS)], width=2)
            for name in (names if shown is None else shown)}


# The Train page's "Live updates" choices: the status's refresh in seconds (None: paused); the loss chart refreshes
# every CHART_EVERY of them (bench/watch_cores.py measures what each choice costs). "Auto", the default, is the
# 5 s pace for a trainer's first AUTO_SLOWS_AFTER_S seconds (a run is watched most as it starts) and the 15 s pace
# after, which keeps watching a long run under 3% of 2 cores.
LIVE_UPDATES = {"Auto": (5.0, 15.0), "2 s": 2.0, "5 s": 5.0, "15 s": 15.0, "Paused": None}
AUTO_SLOWS_AFTER_S = 300
CHART_EVERY = 5


def is_auto(choice: str) -> bool:
    """Whether a Live updates choice changes its pace as the run goes on (Auto: a pair of paces)."""
    return isinstance(LIVE_UPDATES[choice], tuple)


def live_pace(choice: str, elapsed_s: float | None) -> float | None:
    """The status's refresh in seconds for a Live updates choice, while a trainer that has trained ``elapsed_s``
    seconds (None: not yet a step) runs; None: paused."""
    if is_auto(choice):
        fast, slow = LIVE_UPDATES[choice]
        return fast if elapsed_s is None or not elapsed_s >= AUTO_SLOWS_AFTER_S else slow
    return LIVE_UPDATES[choice]
STATE_ICON = {"running": ":material/play_circle:", "starting": ":material/hourglass_top:",
              "finished": ":material/check_circle:", "stopped": ":material/stop_circle:", "failed": ":material/error:",
              "interrupted": ":material/warning:", "unknown": ":material/help:"}  # for markdown text


# --------------------------------------------------------------------------- user text in markdown

# Streamlit renders most text as markdown: links, images, emphasis, $math$, :color[...] and
# :material/icon: directives, GFM autolinks (https://..., www...., a@b.c), even "->" as an arrow.
# A run name, an uploaded file's name or an error quoting them is data: ``literal`` makes it read as typed.
_MARKUP = re.compile(r"([\\`*_\[\]<>#!|~$:&@])")  # backslash-escaped: shown as the character itself
_BLOCK_START = re.compile(r"^(\s*)(?:([-+=])|(\d+)([.)]))")  # a list, a heading underline: only at the start
# Rewrites that run on the parsed text, after the escapes are gone (remark-gfm's autolink literals,
# Streamlit's :streamlit: logo, emoji shortcodes, its arrows and dashes), are broken with a WORD
# JOINER: U+2060, invisible and zero-width, after each ':' and '@', in "www." and in "->"-like pairs.
_JOINER = "\u2060"
_REWRITTEN = re.compile(r"(?<=[:@])|(?i:(?<=www)(?=\.))|(?<=[-<>~])(?=[-<>=])")


def literal(text) -> str:
    """``text`` as markdown that shows exactly those characters (a name, a file name, an error quoting them)."""
    text = " ".join(str(text).splitlines())  # no line may start a heading, a list or a quote
    text = _REWRITTEN.sub(_JOINER, text)
    text = _MARKUP.sub(r"\\\1", text)
    return _BLOCK_START.sub(lambda m: m[1] + (f"\\{m[2]}" if m[2] else f"{m[3]}\\{m[4]}"), text, count=1)


_CODE = re.compile(r"`([^`]+)`")  # a command quoted in mixsep's sentences, as the CLI prints it: `python -m ...`


def sentence(text, *names) -> str:
    """A sentence of mixsep's own (an error, a run's message) as markdown: the commands it quotes between
    backticks shown as code, everything else as ``literal`` text (``literal`` alone showed the backticks).

    ``names``: what a user typed that the sentence quotes (a study's name), shown as typed wherever it occurs:
    a name holding backticks lost them, its middle shown as code."""
    text = " ".join(str(text).splitlines())
    names = sorted({" ".join(str(n).splitlines()) for n in names if n}, key=len, reverse=True)
    if names:
        split = re.compile("(" + "|".join(map(re.escape, names)) + ")").split(text)
        return "".join(literal(part) if i % 2 else sentence(part) for i, part in enumerate(split))
    parts = _CODE.split(text)
    return "".join(f"`{part}`" if i % 2 else literal(part) for i, part in enumerate(parts))


FOLDER_FLAGS = (("data root", "--data-root", "MIXSEP_DATA_ROOT"), ("runs folder", "--runs-dir", "MIXSEP_RUNS_DIR"))
ROOT = Path(__file__).resolve().parent  # the project: `streamlit run dashboard.py` runs its dashboard.py


# Streamlit's server sends no X-Frame-Options nor frame-ancestors, and no setting adds them: any web site open in the
# user's browser could show the dashboard in a frame of its own under a decoy and have its clicks land on Delete,
# Start or Stop. Inside another page's frame, the page is blanked and says why.
NOT_IN_A_FRAME = """<style>[data-testid="stElementContainer"]:has(#mixsep-frame-guard) { display: none; }</style>
<span id="mixsep-frame-guard"></span><script>
if (window.top !== window.self) {
  const said = document.createElement("p");
  said.textContent = "The mixsep dashboard does not work inside another page's frame (a site could have your clicks " +
    "land on Delete, Start or Stop). Open it in a tab of its own.";
  said.style.cssText = "font: 16px sans-serif; margin: 2em; color: #262730; background: #fff";
  document.body.replaceChildren(said);
}
</script>"""


_SAID_IN_TERMINAL: set[str] = set()  # the server's own mistakes, printed once per server process


def setup(title: str) -> tuple[Path, Path]:
    """Page config, title and the sidebar's folders; returns (data_root, runs_dir)."""
    st.set_page_config(page_title=f"{title} · mixsep", page_icon="🧩", layout="wide")
    try:
        data_root, runs_dir = folders()
    except MixsepError as e:  # a mistyped flag after `--`: every page says it, and nothing runs on a folder not meant
        if str(e) not in _SAID_IN_TERMINAL:  # and the terminal that started the server, once (it said nothing: QA)
            _SAID_IN_TERMINAL.add(str(e))
            print(f"mixsep: {e}", file=sys.stderr, flush=True)
        st.title(title)
        show_error(e, literal_text=True)
    # a folder no file system call takes (a link that leads back to itself, a name too long) raised on every page
    # (resolve(), the data's stat): one sentence each says so, and the page stops there
    wrong = [(path, f"The {what} {path} {why}; start the server with another {flag} (or {variable}).")
             for path, (what, flag, variable) in zip((data_root, runs_dir), FOLDER_FLAGS) if (why := unreachable(path))]
    data_shown, runs_shown = (p.absolute() if p in {w for w, _ in wrong} else p.resolve() for p in (data_root, runs_dir))
    with st.sidebar:  # the pages (see dashboard.py), then the folders: short names here, the full paths on hover
        for path, label, icon in PAGES:
            st.page_link(path, label=label, icon=icon)
        st.divider()
        st.caption(f"Data {code_span(data_shown.name)} · runs {code_span(runs_shown.name)}",
                   help=f"Data root: {literal(data_shown)}  \nRuns folder: {literal(runs_shown)}  \n"
                        "Set them when starting the server: `streamlit run dashboard.py -- --data-root DIR "
                        "--runs-dir DIR`, or MIXSEP_DATA_ROOT and MIXSEP_RUNS_DIR.")
        st.html(NOT_IN_A_FRAME, unsafe_allow_javascript=True)  # in the sidebar, hidden: no gap in the page
    st.title(title)
    for _, said in wrong:
        st.error(literal(said))  # the path as typed, never markdown
    if wrong:
        st.stop()
    return data_root, runs_dir


def folders() -> tuple[Path, Path]:
    """(data root, runs folder), fixed when the server starts: the only places the dashboard writes.

    A page never lets a visitor choose another folder (the Download button writes into the
    data root), so the server's owner decides where it may write. The words after ``--`` of
    ``streamlit run dashboard.py -- ...`` are checked as the CLI checks its own: a flag it does
    not know (``--data-rot``) or an empty folder raise MixsepError (the server fell back to
    ./data without a word, and took ``--runs-dir ""`` for its own folder). Where the app does not
    run as ``dashboard.py`` (AppTest, under pytest's own arguments), only the two flags are read.
    """
    import argparse
    import sys

    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    p.add_argument("--data-root", default=default_data_root())
    p.add_argument("--runs-dir", default=default_runs_dir())
    ours = Path(sys.argv[0]).name == "dashboard.py" and Path(sys.argv[0]).resolve().parent == ROOT
    takes = "the dashboard takes `--data-root DIR` and `--runs-dir DIR` after `--`"  # as code: copied as typed
    try:
        args, extras = p.parse_known_args(sys.argv[1:])
    except argparse.ArgumentError as e:  # a flag without its folder
        raise MixsepError(f"The server was started with `{e.argument_name}` and no folder after it; {takes}. "
                          "Start it again with the folder.") from None
    if ours and extras:
        # a mistyped flag is told its right spelling: "without them" sent the user to drop --data-root (QA)
        import difflib

        given = {a.split("=")[0] for a in sys.argv[1:]}  # one already typed right is not suggested twice (QA)
        meant = {x: m[0] for x in extras if x.startswith("-")
                 for m in [difflib.get_close_matches(x.split("=")[0], ["--data-root", "--runs-dir"], n=1, cutoff=0.6)]
                 if m and m[0] not in given}
        fix = " and ".join(f"`{m}` for `{x.split('=')[0]}`" for x, m in meant.items())
        rest = [x for x in extras if x not in meant and x.startswith("-")]
        mend = (f"Start it again with {fix}" + (f", and without `{' '.join(rest)}`" if rest else "") + "."
                if meant else f"Start the server again without {'it' if len(extras) == 1 else 'them'}.")
        raise MixsepError(f"The server was started with `{' '.join(extras)}`, which the dashboard does not know; "
                          f"{takes}. {mend}")
    for flag, value in (("--data-root", args.data_root), ("--runs-dir", args.runs_dir)):
        if ours and value == "":
            raise MixsepError(f"The server was started with an empty `{flag}` (it would be the server's own folder); "
                              "start it again with a folder there, or without the flag for the default.")
    return Path(args.data_root or default_data_root()).expanduser(), Path(args.runs_dir or default_runs_dir()).expanduser()


@st.cache_resource(show_spinner=False)
def _registry(runs_dir: str) -> JobRegistry:
    return JobRegistry(Path(runs_dir))


def registry(runs_dir: Path) -> JobRegistry:
    """The one job registry of this runs folder, shared by every session of the server."""
    return _registry(str(Path(runs_dir).resolve()))


def data_key(data_root: Path) -> tuple:
    """Changes when the data files do, so cached data never goes stale."""
    from mixsep.data import data_status

    files = [Path(f) for row in data_status(data_root) for f in row["files"]]
    return tuple((str(f), f.stat().st_mtime_ns) for f in files if f.exists())


# Data and models are big tensors used read-only: st.cache_resource shares them instead of
# pickling a copy on every rerun, as st.cache_data would. Evaluations (small frames) use cache_data.
@st.cache_resource(show_spinner="Loading data…", max_entries=3)
def _pairs(data_root: str, split: str, key: tuple):
    from mixsep.data import load_pairs

    return load_pairs(Path(data_root), split)


def pairs(data_root: Path, split: str):
    return _pairs(str(Path(data_root).resolve()), split, data_key(data_root))


@st.cache_resource(show_spinner=False, max_entries=1)
def _calibration(data_root: str, key: tuple):
    from mixsep.data import calibration_pairs

    return calibration_pairs(Path(data_root))


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _model(checkpoint: str, mtime_ns: int):
    from mixsep.train import load_run_model, pick_device

    return load_run_model(Path(checkpoint).parent.parent, Path(checkpoint), pick_device("auto"))


def _mtime(checkpoint: Path) -> int:
    try:
        return checkpoint.stat().st_mtime_ns
    except OSError:
        raise MixsepError(f"Checkpoint {checkpoint} was deleted; pick another one.") from None


def model(checkpoint: Path):
    """(model, config, info) of a checkpoint; reloaded when the file changes."""
    return _model(str(checkpoint), _mtime(checkpoint))


class _Scoring:
    """One scoring of one checkpoint version, in a thread of its own: a user who leaves the page (the script is
    stopped) or closes the tab does not stop it, and the page shows it where it has got to on the next visit. In
    the page's own run a 90 s first scoring of the full test split started again from pair 0 each time."""

    started = 0  # scorings begun since the server started (the tests read it)

    def __init__(self, work):
        self.done, self.n, self.result, self.error = 0, 0, None, None
        type(self).started += 1
        self.thread = threading.Thread(target=self._run, args=(work,), name="mixsep-scoring", daemon=True)
        self.thread.start()

    def _run(self, work) -> None:
        try:
            self.result = work(self._progress)
        except BaseException as e:  # said on the page that waits for it (the next visit tries again)
            self.error = e

    def _progress(self, done: int, n: int) -> None:
        self.done, self.n = done, n


@st.cache_resource(show_spinner=False, max_entries=16)
def _scoring(checkpoint: str, mtime_ns: int, data_root: str, count: int, key: tuple) -> _Scoring:
    from mixsep.metrics import evaluate

    m, _, _ = _model(checkpoint, mtime_ns)  # a corrupt checkpoint, a damaged training split: said here, at once
    calibration = _calibration(data_root, data_key(Path(data_root)))
    test = _pairs(data_root, "test", key)
    return _Scoring(lambda progress: evaluate(m, test, count=count, calibration=calibration, progress=progress))


def _evaluation(checkpoint: str, mtime_ns: int, data_root: str, count: int, key: tuple):
    job = _scoring(checkpoint, mtime_ns, data_root, count, key)
    if job.thread.is_alive():  # a bar, drawn here, for as long as the page waits
        bar = st.progress(job.done / job.n if job.n else 0.0, text="Scoring…")
        while job.thread.is_alive():
            job.thread.join(0.25)  # each update is also where Streamlit stops this script when the page is left
            bar.progress(job.done / job.n if job.n else 0.0,
                         text=f"Scoring: {job.done}/{job.n} test pairs" if job.n else "Scoring…")
        bar.empty()
    if job.error is not None:
        _scoring.clear(checkpoint, mtime_ns, data_root, count, key)
        raise job.error
    return job.result


def evaluation(checkpoint: Path, data_root: Path, count: int):
    """(evaluation, config, info): every recovery mode's PSNR/SSIM on the first ``count`` test pairs
    (0 = all), cached, a bar while it scores (in the background: see ``_Scoring``); config and info are those of
    the very version of the checkpoint it scored (a trainer may replace last.pt meanwhile: the page must not name
    a newer step)."""
    mtime = _mtime(checkpoint)
    _, config, info = _model(str(checkpoint), mtime)  # a corrupt checkpoint is a MixsepError here, first
    ev = _evaluation(str(checkpoint), mtime, str(Path(data_root).resolve()), count, data_key(data_root))
    return ev, config, info


# --------------------------------------------------------------------------- pickers


def lr_column():
    """A table's learning-rate column, shown as the Train page's slider shows it (0.012, not 1e-2)."""
    return st.column_config.NumberColumn("lr", format=setting_format("lr"))


def setting_format(name: str) -> str | None:
    """The printf format the Train page shows a setting's value in (lr 0.0012, beta1 0.974), or None for a name
    that is no setting or has none: tables and sentences write a value as the slider does."""
    try:
        return setting_by_name(name).fmt
    except KeyError:
        return None


def setting_text(name: str, value) -> str:
    """A setting's value as the Train page shows it (``setting_format``); another float to 4 digits."""
    if isinstance(value, float):
        fmt = setting_format(name)
        return fmt % value if fmt else f"{value:.4g}"
    return str(value)


def runs_table(runs_dir: Path) -> list[dict]:
    """list_runs with live states: a 'running' run whose process died reads 'interrupted'."""
    rows = list_runs(runs_dir)
    for r in rows:
        s = live_status(Path(r["path"]))
        r["state"] = s.get("state", r["state"])
        if s.get("message") and s["message"] not in r["message"]:  # an interrupted run: said beside a bad config
            r["message"] = "; ".join(filter(None, [s["message"], r["message"]]))
    return rows


def url_follows(key: str, memo: str | None = None) -> None:
    """The on_change of a run box: the pick goes into the URL (?run=NAME; Compare's runs, ?run=A&run=B), so a link
    to the page shows it, and ``memo`` (default ``_KEY_in_url``) keeps what was written, which is no link to follow.

    Only a pick does: Streamlit pushes a history entry for each change of the URL, and a page that wrote its run
    there as it opened (from the sidebar) made two entries, so Back had to be pressed twice to leave it."""
    st.query_params["run"] = st.session_state[memo or f"_{key}_in_url"] = st.session_state[key]


def url_link(memo: str, many: bool = False, fresh: bool = False):
    """The run a link in the URL names (``many``: Compare's runs, ?run=A&run=B), once; else None.

    A link, a typed URL and the browser's Back and Forward show their run. ``memo`` keeps what the page wrote there
    itself (``url_follows``) or followed last: the same URL again is no link (a rerun, a pick here). A URL with no
    run (a page opened from the sidebar) clears it, so Back to a ?run= is a link again. ``fresh``: follow the URL
    even when it holds the run kept (the page's box holds no pick yet)."""
    wanted = [n for n in st.query_params.get_all("run") if n] if many else st.query_params.get("run")
    if not wanted:  # ?run= with nothing is no link either
        st.session_state[memo] = None
        return None
    if wanted == st.session_state.get(memo) and not fresh:
        return None
    st.session_state[memo] = wanted  # followed once
    return wanted


def run_picked(key: str) -> None:
    """The run box's on_change: the pick goes into the URL, and is the run shown last (``last_run``) at once. Set
    only as the page ran on, a sidebar click that stopped the page's rerun before that line left the run shown
    before, and the next page opened showed it (once, in the browser test, on a loaded machine)."""
    url_follows(key)
    st.session_state["last_run"] = st.session_state[key]


def pick_run(runs_dir: Path, key: str = "run") -> tuple[Path, str] | None:
    """A run of the runs folder and its name there (a sweep's trial: STUDY/trial-0001), from the URL
    (?run=NAME) or a select box; None after a message."""
    rows = {r["run"]: r for r in runs_table(runs_dir)}
    # a link (the Sweep page's "Samples of TRIAL") shows its run, not the one picked earlier in the session; a page
    # opened from the sidebar (no ?run=) keeps the pick, as does a rerun after a pick here
    wanted = url_link(f"_{key}_in_url", fresh=key not in st.session_state)
    if wanted:
        try:
            path = resolve_run(runs_dir, wanted)
        except MixsepError as e:  # a link to no run: say so, and offer the runs there are (the link's words as text)
            st.error(f"{literal(e)} Pick a run below.")
        else:
            if not (path / "config.json").is_file():
                st.error(literal(f"There is no run named '{wanted}' in {Path(runs_dir).resolve()}; pick one below."))
            else:
                st.session_state[key] = wanted
    elif not st.query_params.get("run") and st.session_state.get("last_run") in rows:
        # a page opened from the sidebar (its URL has no ?run=) shows the run shown last, whatever the box's own
        # state holds: a pick that came from a link was set before the box on its first page and did not
        # outlive the switch (the next page showed the newest run)
        st.session_state[key] = st.session_state["last_run"]
    if not rows:
        st.info(f"No runs yet in {code_span(Path(runs_dir).resolve())}. Start one on the Train page.")
        page_link("Train", "Go to Train")
        return None
    if st.session_state.get(key) not in rows:
        if key in st.session_state:
            st.warning(literal(f"Run '{st.session_state[key]}' is gone (deleted?); showing the latest run instead."))
        st.session_state[key] = st.session_state.get("last_run") if st.session_state.get("last_run") in rows \
            else next(iter(rows))
    # the names alone: Streamlit keeps a pick by its label, and a label with the run's state in it stopped
    # matching once the state changed (the run read as gone); the state is said beneath
    name = st.selectbox("Run", list(rows), key=key, persist_state="session",  # kept from page to page
                        on_change=run_picked, args=(key,))
    st.caption(f"State: {literal(rows[name]['state'])}")
    st.session_state["last_run"] = name
    try:
        return resolve_run(runs_dir, name), name
    except MixsepError as e:  # renamed or relinked since it was listed
        st.error(literal(e))
        return None


def pick_checkpoint(run_dir: Path, key: str = "checkpoint", runs_dir: Path | None = None) -> Path | None:
    from mixsep.run import list_checkpoints

    found = list_checkpoints(run_dir)
    if not found:
        name, state, wrong = literal(run_dir.name), live_status(run_dir).get("state"), checkpoints_not_a_folder(run_dir)
        if wrong:  # none can come, and none was removed
            st.info(f"Run {name} holds no checkpoint: {wrong}; move it away before training this run again. "
                    "Pick another run.")
        elif training_now(run_dir, state, runs_dir):
            st.info(f"Run {name} holds no checkpoint yet: a run writes one {_checkpoint_cadence(run_dir)}, "
                    "and when it ends. Wait for it (this page shows it once it is written), or pick another run.")
            _show_when_a_checkpoint_comes(str(run_dir))
        else:  # no checkpoint will come: waiting would be in vain
            st.info(f"Run {name} holds no checkpoint: its checkpoints folder has none (they were removed, or never "
                    f"written) and the run is not training ({literal(state)}). Pick another run.")
        return None
    # The options are names, joined to this run's folder below: a path kept from the run shown
    # before (Streamlit keeps a choice whose label is still offered) would show that run's model
    # under this run's name. The same name (last.pt) stays chosen from run to run.
    # A pick that is gone (removed by a run's --keep-epochs, or not in the run picked now) is set to the newest,
    # not popped: popped, the box in the browser kept the gone name above the newest checkpoint's grid or scores.
    by_name = {p.name: p for p in found}
    picked = st.session_state.get(key)
    if picked not in by_name:
        st.session_state[key] = next(iter(by_name))
    chosen = by_name[st.selectbox("Checkpoint", list(by_name), key=key)]
    if picked is not None and picked not in by_name:
        st.caption(f"{literal(picked)} is not in run {literal(run_dir.name)} (now); showing {literal(chosen.name)}.")
    return chosen


@st.fragment(run_every=2.0)
def _show_when_a_checkpoint_comes(run_dir: str) -> None:
    """Look again every 2 s while a training run has no checkpoint, and show the page once it has one
    ("wait for it" was never answered: the page stayed as it was until the user reloaded it)."""
    from mixsep.run import list_checkpoints

    if list_checkpoints(Path(run_dir)):
        st.rerun()


def pick_run_and_checkpoint(runs_dir: Path):
    """The header row of the Samples, Metrics and Separate pages: (run folder, its name, checkpoint, a third
    column for the page).

    Stops the page (after saying why) when there is no run or no checkpoint to show.
    """
    top = st.columns([2, 1, 1])
    with top[0]:
        picked = pick_run(runs_dir)
    if picked is None:
        st.stop()
    run_dir, name = picked
    with top[1]:
        checkpoint = pick_checkpoint(run_dir, runs_dir=runs_dir)
    return run_dir, name, checkpoint, top[2]


def training_now(run_dir: Path, state: str | None, runs_dir: Path | None = None) -> bool:
    """Whether the run (its live state: runs_table's, live_status's) is training, so a checkpoint may yet come.

    "unknown" (no readable status.json) is a run being written only while a trainer holds its lock, or
    while the Train page's job starts it (its child loads torch and the data for seconds before that:
    other pages called its checkpoints "removed").
    """
    if state in (State.RUNNING, "starting"):
        return True
    if state != State.UNKNOWN:
        return False
    if lock_holder(run_dir) is not None:
        return True
    here = Path(run_dir).resolve()
    if runs_dir is None or here.parent != Path(runs_dir).resolve():
        return False  # a sweep's trial: its sweep, not the Train page, starts it
    job = registry(runs_dir).running()
    return job is not None and Path(job.run_dir).resolve() == here


def other_data_root(run_dir: Path, config, data_root: Path) -> str | None:
    """The data root a run trained on when it is not the server's, whose pairs the pages score and show; None when
    they are one folder, or the run names none. Its config.json says it (a resume with --data-root moves it there),
    else ``config``, its checkpoint's. `evaluate` and `grid` read the run's own, so the same checkpoint scored
    11.59 dB there and 11.49 dB on Metrics, without a word (QA)."""
    try:
        trained_on = TrainConfig.load(Path(run_dir) / "config.json", of_run=True).data_root
    except MixsepError:
        trained_on = getattr(config, "data_root", None)
    if not isinstance(trained_on, str) or not trained_on:
        return None
    try:
        return None if Path(trained_on).resolve() == Path(data_root).resolve() else trained_on
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL
        return trained_on


def _read_there(other: str, data_root: Path) -> bool:
    """Whether a resume of a run trained on ``other`` reads that folder (it is one on this machine) rather than the
    server's: saved_data_root's choice, which the resumed trainer makes too."""
    return saved_data_root(other, "the run's", str(data_root))[0] == other


def code_span(text) -> str:
    """``text`` (a folder's path, a command naming one) as a code span that shows any character, a backtick
    included (markdown's longer fence)."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def data_root_note(run_dir: Path, config, data_root: Path, what: str) -> str | None:
    """The sentence a page shows beside ``what`` ("these test pairs") of a run trained on another data root than the
    server's (``other_data_root``), or None."""
    other = other_data_root(run_dir, config, data_root)
    if other is None:
        return None
    return (f"This run trained on the data root {code_span(other)}" + ("" if _read_there(other, data_root) else
            ", which is not a folder on this machine") + f"; {what} come from this server's, {code_span(data_root)} "
            "(`python -m mixsep evaluate` and `grid` read the run's own where it is here).")


def resume_data_note(run_dir: Path, data_root: Path) -> str | None:
    """Which data a Resume trains on, when it is not this server's data root: the run's own (a folder here), or, where
    that is not on this machine, the server's, as `train --run-dir` reads it (QA: the page's Resume of a run copied
    from another machine was refused, and told to download into the other machine's folder)."""
    other = other_data_root(run_dir, None, data_root)
    if other is None:
        return None
    if _read_there(other, data_root):
        return f"Resume trains on the run's own data root, {code_span(other)}, not on this server's."
    return (f"The run's data root, {code_span(other)}, is not a folder on this machine: Resume trains it on this "
            f"server's, {code_span(data_root)}.")


def no_checkpoint_note(run_dir: Path, state: str | None, runs_dir: Path | None = None) -> str:
    """Compare's note for a run without a checkpoint to score."""
    wrong = checkpoints_not_a_folder(run_dir)
    if wrong:
        return f"no checkpoint: {wrong}"
    return "no checkpoint yet" if training_now(run_dir, state, runs_dir) else "no checkpoint: removed, or never written"


def _checkpoint_cadence(run_dir: Path) -> str:
    try:
        cfg = TrainConfig.load(run_dir / "config.json", of_run=True)  # a run's own: an old one's cadence is its version's
    except MixsepError:
        return "every few hundred steps and at the end of each epoch"
    floor = f", at most once in {cfg.checkpoint_seconds:g} s" if cfg.checkpoint_seconds else ""
    return f"every {cfg.checkpoint_every} steps and at the end of each epoch{floor}"


# --------------------------------------------------------------------------- figures


def loss_figure(metrics: pd.DataFrame, smoothing: float, title: str = "Training loss",
                max_points: int = 1500) -> go.Figure:
    """Raw per-step losses (faint) and their EMA (solid), x in whole steps.

    The EMA runs over every row; then a long run's traces are thinned for display, each its own way (runs.display_rows:
    the last third at full resolution, older steps by each bucket's lowest and highest rows), so a trace never has more
    than ``max_points`` points and drawing step 15,000 costs what drawing step 1,500 did.
    """
    fig = go.Figure()
    if len(metrics):
        shown = metrics[["step", *LOSSES]].copy()
        for col in LOSSES:
            shown[f"{col}_ema"] = shown[col].ewm(alpha=1 - smoothing).mean() if smoothing > 0 else shown[col]
        steps = shown["step"].to_numpy()

        def trace(column: str) -> tuple[np.ndarray, np.ndarray]:
            values = shown[column].to_numpy()
            rows = display_rows(values, keep=max_points // 3, cap=max_points)
            return steps[rows], values[rows]

        # the interval models return cifar = 2 * mean - digit, so the two heads' losses are equal at
        # every step: the CIFAR curve is drawn dashed over the MNIST one, and says so, not hidden under it
        # (float32 sums: equal to about 1e-7, not bit for bit)
        same = bool(np.allclose(metrics["loss_cifar"], metrics["loss_mnist"], rtol=1e-5, atol=0))
        order = ["loss_mnist", "loss_cifar", "loss"] if same else list(LOSSES)
        for col in order:
            name, dash = LOSSES[col], None
            if same and col == "loss_cifar":
                name, dash = f"{name} (= MNIST head: 2·mixture − digit)", "dash"
            x, y = trace(col)
            fig.add_scatter(x=x, y=y, name=f"{name} (raw)", mode=line_mode(x),
                            line=dict(color=COLORS[col], width=1), opacity=0.3, legendgroup=col, showlegend=False)
            x, y = trace(f"{col}_ema")
            fig.add_scatter(x=x, y=y, name=name, mode=line_mode(x),
                            line=dict(color=COLORS[col], width=2, dash=dash), legendgroup=col)
    return style(fig, title, "step", "MSE loss")


def live_metrics(run_dir: Path) -> pd.DataFrame:
    """Every metrics row of the run so far, for this session.

    A session follows one run through a MetricsTail kept in st.session_state: each call reads
    only the rows appended since the previous one (a 20-epoch run has 15,000 rows, read once),
    and starts over when a resume rewrites the file.
    """
    run_dir = Path(run_dir).resolve()
    live = st.session_state.get("_live_metrics")
    if live is None or live["run"] != run_dir:
        live = {"run": run_dir, "tail": MetricsTail(run_dir), "frame": pd.DataFrame(columns=METRIC_FIELDS)}
        st.session_state["_live_metrics"] = live
    new = live["tail"].poll()
    if new.restarted:
        live["frame"] = pd.DataFrame(columns=METRIC_FIELDS)
    if new.rows:
        rows = pd.DataFrame(new.rows, columns=METRIC_FIELDS)
        live["frame"] = pd.concat([live["frame"], rows], ignore_index=True) if len(live["frame"]) else rows
    return live["frame"]


def live_loss_figure(metrics: pd.DataFrame, smoothing: float, title: str) -> go.Figure:
    """loss_figure, built again only when the rows, the smoothing or the title changed.

    Streamlit ties a chart's identity to its spec: a new figure makes the browser build the
    plot from scratch, the same one costs it (and the server) next to nothing.
    """
    key = (title, smoothing, len(metrics), int(metrics["step"].iloc[-1]) if len(metrics) else 0)
    cached = st.session_state.get("_live_figure")
    if cached is None or cached["key"] != key:
        cached = st.session_state["_live_figure"] = {"key": key, "fig": loss_figure(metrics, smoothing, title)}
    return cached["fig"]


def line_mode(x) -> str:
    """A curve's plotly mode: a line, with a marker where it has one point (a line through one point is not drawn)."""
    return "lines+markers" if len(x) == 1 else "lines"


LOG_TICKS_MAX = 8  # decades a log axis labels, at most


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis from ``lo`` to ``hi``: the decades, else 1-2-5, else 1-2-3-5-7, else every digit, the
    first of these that puts 3 ticks on it ([] when none does). Plotly's own labelled each digit, which "~g" wrote
    out in full, so 0.06 to 0.1 and 0.005 to 0.01 ran into each other on a run's chart of 1-2 decades (QA)."""
    if not (0 < lo <= hi < math.inf):
        return []
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    if len(decades) > LOG_TICKS_MAX:  # a hand-edited loss of 1e308: a label at each of 300 decades, run together, and
        every = math.ceil(len(decades) / LOG_TICKS_MAX)  # the top ones "Infinity" (QA); every k-th decade instead
        inside = range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)
        return [float(f"1e{k}") for k in inside[::every]]
    for digits in ((1,), (1, 2, 5), (1, 2, 3, 5, 7), range(1, 10)):
        ticks = [v for k in decades for d in digits if lo <= (v := float(f"{d}e{k}")) <= hi]
        if len(ticks) >= 3:
            return ticks
    return []


def style(fig: go.Figure, title: str, x: str, y: str, height: int = 380) -> go.Figure:
    # a few short entries sit in a row beside the title; more, or long ones (Compare's sweep trials, three
    # "sweep-20261130/trial-0002" covered the title at a laptop's width), wrap onto it, so they go under the plot
    names = [t.name or "" for t in fig.data if t.showlegend is not False]
    # the title counts too: a 115-character run name in it ran under the legend
    beside = len(names) <= 4 and sum(map(len, names)) <= 40 and sum(map(len, names)) + len(title) <= 70
    # many runs (Compare with a sweep's trials) go in a column on the right, which scrolls: in rows under the plot
    # 76 entries took most of its height, left a strip to draw in and covered the axis's title (QA)
    legend = dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1) if beside else \
        dict(orientation="h", yanchor="top", y=-0.3, xanchor="left", x=0) if len(names) <= 12 else \
        dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02)
    # a loss falls from 0.15 to 0.005 and on: on a linear axis every step after the first few lay flat at the
    # bottom, falling or not (QA), so the losses are drawn on a log scale, which the axis says
    log = y == "MSE loss"
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=f"{y} (log scale)" if log else y, height=height,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(legend, title_text=""), showlegend=True)
    if log:  # every tick labelled in full: plotly's own labelled 0.3 and 0.03 both "3"; and only as many as fit
        ys = [np.asarray(t.y, dtype=float) for t in fig.data if t.y is not None and len(t.y)]
        ys = np.concatenate(ys) if ys else np.array([])
        ys = ys[np.isfinite(ys) & (ys > 0)]
        lo, hi = (ys.min(), ys.max()) if len(ys) else (None, None)
        if lo is not None and lo == hi:  # one value (a run's first step): plotly spread it over decades, a label a
            lo, hi = lo / 2, min(hi * 2, sys.float_info.max)  # digit; a factor of 2 either way instead
            fig.update_yaxes(range=[math.log10(lo), math.log10(hi)])
        ticks = log_ticks(lo, hi) if lo is not None else []
        fig.update_yaxes(type="log", tickformat="~g", **(dict(tickmode="array", tickvals=ticks) if ticks else {}))
    if x == "step":
        # steps are whole numbers: no 2.5 on a short run's axis, and a span under 10 gets a tick per step (plotly's
        # ticks every half step, labelled as whole numbers, read "1 2 2 3 3 4 4"), on every chart of steps
        steps = [np.asarray(t.x, dtype=float) for t in fig.data if t.x is not None and len(t.x)]
        span = max(v.max() for v in steps) - min(v.min() for v in steps) if steps else 0
        fig.update_xaxes(tickformat="d", dtick=1 if span < 10 else None)
    return fig


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s"


def show_error(e: Exception, literal_text: bool = False) -> None:
    """One clear sentence for what the user can fix; st.stop() ends the page there.

    ``literal_text``: show it as typed, for a message that quotes a user's names (``sentence``).
    """
    st.error(sentence(e) if literal_text else str(e))
    st.stop()


# the recovery modes as the charts' ticks name them; the caption under the table gives each in full. At a phone's
# width "subtraction projection projection" ran together into one line (five ticks of 60 px each)
MODE_TICK = {"subtraction": "subtract", "projection_uniform": "proj.<br>uniform", "projection_optimal": "proj.<br>optimal"}


def metric_figures(ev, metric: str) -> tuple[go.Figure, go.Figure]:
    """(mean with 95% CI per mode, per-image distribution per mode) for 'psnr' or 'ssim'."""
    import plotly.express as px

    unit = "PSNR (dB)" if metric == "psnr" else "SSIM"
    table, per_image = ev.table(), ev.per_image.copy()
    for df in (table, per_image):  # short, in two lines where two words: no rotated tick labels on a laptop, and
        df["mode"] = df["mode"].map(lambda m: MODE_TICK.get(m, m))  # five that fit side by side on a phone
        df["source"] = df["source"].map(SOURCE)
    colours = {SOURCE["mnist"]: COLORS["loss_mnist"], SOURCE["cifar"]: COLORS["loss_cifar"]}
    bars = px.bar(table, x="mode", y=f"{metric}_mean", color="source", barmode="group", error_y=f"{metric}_ci95",
                  color_discrete_map=colours)
    boxes = px.box(per_image, x="mode", y=metric, color="source", points=False, color_discrete_map=colours)
    name = unit.split(" ")[0]
    return (style(bars, f"Mean {name} ± 95% CI (n={ev.n})", "recovery mode", unit),
            style(boxes, f"Per-image {name}", "recovery mode", unit))


# --------------------------------------------------------------------------- sweeps


def study_of(run: str) -> str:
    """The study a run belongs to ("demo" for "demo/trial-0003"), or "" for a run of its own."""
    return run.split("/", 1)[0] if "/" in run else ""


COMPARE_POINTS = 24_000  # points Compare's chart sends in all: 76 runs of 1,250 points took 1 s a click to redraw


def curve_points(runs: int) -> int:
    """The points each of ``runs`` curves on one chart may have: 1,500 for up to 16 runs, fewer beyond, at least 300
    (a curve 700 px wide)."""
    return max(300, min(1500, COMPARE_POINTS // max(1, runs)))


@st.cache_resource(show_spinner=False, max_entries=512)  # read-only frames, shared (cache_data would copy them)
def _loss_curve(run_dir: str, stamp, loss: str, smoothing: float, points: int) -> tuple[pd.DataFrame, float | None]:
    from mixsep.runs import read_metrics

    m = read_metrics(Path(run_dir))
    if not len(m):
        return pd.DataFrame(columns=["step", "ema"]), None
    # the EMA over every row, then at most ``points`` points a run for the browser to draw
    curve = downsample(pd.DataFrame({"step": m["step"], "ema": m[loss].ewm(alpha=1 - smoothing).mean()}), "ema",
                       keep=points // 3, cap=points)
    return curve, float(m["loss"].ewm(alpha=1 - smoothing).mean().min())


def loss_curve(run_dir: Path, loss: str, smoothing: float, points: int = 1500) -> tuple[pd.DataFrame, float | None]:
    """A run's EMA-smoothed ``loss`` for a chart of runs (at most ``points`` points: ``curve_points``) and its lowest
    smoothed total loss.

    Read again only when metrics.csv changed (its size, time or inode): Compare redrew every picked run from its
    whole file on each click, 0.7 s of a rerun with 76 runs picked (QA)."""
    from mixsep.run import METRICS

    try:
        st_ = (Path(run_dir) / METRICS).stat()
        stamp = (st_.st_mtime_ns, st_.st_size, st_.st_ino)
    except OSError:
        stamp = None
    return _loss_curve(str(run_dir), stamp, loss, smoothing, points)


def best_scores(run_dir: Path, best_loss: float | None) -> dict:
    """The lowest EMA-smoothed training loss (``loss_curve``'s), and a sweep trial's best validation PSNR (None for
    other runs)."""
    from mixsep.run import read_status

    val = read_status(run_dir).get("validation")
    return {"best_loss": best_loss, "val_psnr": val.get("best_psnr") if isinstance(val, dict) else None}


def use_recipe(model: str, key_prefix: str = "train_") -> None:
    """The recipe button's callback: the settings the recipe names take its values (mixsep.config.RECIPES).

    Set in the widgets' own state, in a callback because it runs before the page is drawn: the
    browser then shows them (dropping the state instead changed nothing there, though AppTest
    saw it change). Settings the recipe leaves alone (data, seed, device...) keep the user's.
    """
    from mixsep.config import recipe

    for name, value in recipe(model).items():
        st.session_state[key_prefix + name] = value


def recipe_button(model: str) -> None:
    """Under the Train page's model: a button that sets the model's recipe (``use_recipe``), if it has one."""
    from mixsep.config import RECIPES, recipe_flags

    if model not in RECIPES:
        return
    flags = " ".join(recipe_flags(model))
    budget = "" if model == "faithful" else " (its epochs: what 15 minutes held on a 2-core CPU)"
    st.button(f"Use {model}'s recipe", icon=":material/restaurant_menu:", width="stretch", on_click=use_recipe,
              args=(model,), help=f"The settings {model}'s results in the README were trained with: `{flags}`"
                                  f"{budget}. Data, seed and device stay as they are.")


def delete_runs(runs_dir: Path, url_memo: str | None = None) -> None:
    """The Delete button's callback: delete the picked runs (the job registry refuses what it must: a run
    that trains, or that another tab has just started or resumed and whose trainer is still loading).

    Then the confirmation is unticked and the pick cleared, in a callback because it runs before
    the page is drawn: set afterwards, the browser kept the box ticked and the next pick went
    with one click. Refusals are kept for the page to show (``delete_errors``). The runs deleted leave the
    page's URL (?run=A&run=B, ``url_memo`` as url_follows keeps it): a reload or a shared link named them.
    """
    picked, done, gone, errors = st.session_state.get("delete_runs", []), [], [], []
    for name in picked:
        if not os.path.lexists(runs_dir / name):  # gone since it was picked (Delete clicked twice, another
            gone.append(name)  # tab): what was asked is done, not "there is no run named ..."
            continue
        try:
            registry(runs_dir).delete(name)
            done.append(name)
        except MixsepError as e:
            errors.append(str(e))
    st.session_state["delete_sure"] = False
    st.session_state["delete_runs"] = [n for n in picked if n not in done and n not in gone]
    # deleted here: Compare drops them from its pick without saying they are gone (its note for a run deleted by hand)
    st.session_state["deleted_runs"] = set(st.session_state.get("deleted_runs", ())) | set(done + gone)
    st.session_state["delete_errors"] = errors
    linked = st.query_params.get_all("run")
    if url_memo is not None and set(linked) & set(done + gone):
        st.query_params["run"] = st.session_state[url_memo] = [n for n in linked if n not in done and n not in gone]
    if done:
        st.toast(literal(f"Deleted {', '.join(done)}"))
