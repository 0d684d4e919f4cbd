"""Train: the report's settings as sliders, Start/Stop, live loss curves of the current run."""
import math
import shlex

import streamlit as st

import mixsep_ui as ui
from mixsep import MixsepError, TrainConfig
from mixsep.run import METRICS, State, list_checkpoints, process_age, read_status, resolve_run
from mixsep.runs import no_rows_note, progress
from ui_settings import settings_widgets

data_root, runs_dir = ui.setup("Train")
jobs = ui.registry(runs_dir)

# a new tab (or a reload) while a run trains starts from that run's settings, not the defaults:
# the sidebar then says what the curves on the page are, and Start after it repeats it
shown_run, initial = jobs.running(), None
if shown_run is not None and "train_config" not in st.session_state:
    try:
        initial = TrainConfig.load(shown_run.run_dir / "config.json", of_run=True).to_dict()  # as its trainer reads it
    except MixsepError:
        pass
with st.sidebar:  # one widget per setting, drawn from its metadata in mixsep/config.py; kept across pages
    st.subheader("Settings")
    values = settings_widgets("train_", initial=initial, after_model=ui.recipe_button)

config = TrainConfig(data_root=str(data_root), **values)
st.session_state["train_config"] = config.to_dict()

# one row that wraps, each control as wide as its label: columns of fixed shares cut Start and Stop to "S.." at 800 px
row = st.container(horizontal=True, vertical_alignment="center")
refused = None
if row.button("Start", type="primary", icon=":material/play_arrow:", width="content"):
    st.session_state.pop("train_start_refused", None)
    try:  # jobs.start refuses a data root without training data before it makes a run folder
        run = jobs.start(config)
        st.session_state["train_started"] = (run.name, config.to_dict())
        st.toast(f"Started {ui.literal(run.name)}")
    except MixsepError as e:
        refused = str(e)
now = jobs.running() if refused is not None or "train_start_refused" in st.session_state else None
if refused is not None and now is not None and st.session_state.get("train_started") == (now.name, config.to_dict()):
    refused = None  # Start clicked twice: the run asked for is the one this tab has just started, not a refusal
if refused is not None:  # kept while what refused it lasts (the run training then, the settings): a rerun drew it
    # once; keyed on the run alone (None when none trains) it outlived a setting fixed since (a seed of 2.5 made 7)
    st.session_state["train_start_refused"] = (refused, now.name if now else None, config.to_dict())
start_refused = st.session_state.get("train_start_refused")
if start_refused:
    if start_refused[1:] == (now.name if now else None, config.to_dict()):
        st.error(ui.sentence(start_refused[0]))
    else:
        del st.session_state["train_start_refused"]
last_job = jobs.poll()
if last_job.removed and not st.session_state.get("train_start_refused"):
    # its trainer refused the new run before its first step (damaged data, say): its folder is gone, as the
    # CLI's train removes it, and what it said stays here (every tab followed it) until the next start
    st.error(ui.sentence(last_job.message))
if row.button("Stop", icon=":material/stop:", width="content") and not jobs.stop():
    st.info("No training is running.")  # a stopping run says so itself, below, in every tab, while it stops
with st.expander("Config of the next run"):
    st.json(config.to_dict())


# Watching must not slow the training it shows (they share the CPU). In headless Chromium a
# rerun of the status costs the browser about 0.1 CPU-seconds and a redrawn chart about 0.3, and
# an open Streamlit page about 0.02 cores even when nothing changes (bench/dashboard_bench.py).
# So the status polls every ui.LIVE_UPDATES seconds while a run trains (Auto: 5 s, then 15 s once the trainer has
# trained 5 minutes) and the chart at a fifth of that pace; "Paused" polls nothing (the page is then as cheap as
# any open page; a click refreshes it).
# When nothing trains the status polls at the same pace to notice a run started elsewhere, and
# the chart waits for a change.
RESUME_HELP = ("Continues with the run's saved settings; the settings above are for a new run. A resume may "
               "change the time budget, device or precision from the command line: python -m mixsep train "
               "--run-dir RUN --max-minutes M (or --device, --cpu-bf16, --checkpoint-every).")
# kept in the URL too (?train_refresh=Paused), so a reload or a bookmark keeps the pace chosen (it went back to Auto)
pace = row.radio("Live updates", list(ui.LIVE_UPDATES), index=0, horizontal=True, key="train_refresh",
                 persist_state="session", bind="query-params",
                 help="How often the status and the progress refresh while a run trains; the loss chart refreshes "
                      "at a fifth of that pace. Auto: every 5 s for the trainer's first 5 minutes, then every 15 s. "
                      "Each refresh takes a little CPU from the training on a machine with few cores.")
live_job = jobs.running()
training = live_job is not None


def trained_s(job) -> float | None:
    """How long the job's trainer has trained: the elapsed_s of its newest metrics row, but never more than the
    trainer's process has lived (a resume's first step: the newest row is still the last trainer's); None while it
    starts, before its first row."""
    if job is None or not job.alive or job.state == "starting" or not job.run_dir.is_dir():
        return None
    rows = ui.live_metrics(job.run_dir)
    if not len(rows):
        return None
    age = process_age(read_status(job.run_dir).get("pid_start"))
    return min(float(rows["elapsed_s"].iloc[-1]), age if age is not None else math.inf)


refresh = ui.live_pace(pace, trained_s(live_job))  # seconds, or None: paused

# The run this tab shows: the one training (every tab follows it), else the one picked here, by
# default the last one started. A sweep's trials are not offered: their sweep resumes them.
listed = ui.runs_table(runs_dir)
runs = {r["run"]: r for r in listed if "/" not in r["run"]}
# a link to this page (?run=NAME, as Samples and Metrics take it) picks that run; a sidebar switch keeps the pick
wanted = ui.url_link("_train_run_in_url")
if wanted:
    if wanted in runs and live_job is not None and live_job.name in runs and wanted != live_job.name:
        st.info(ui.literal(f"Run '{live_job.name}' is training, so this page shows it; '{wanted}' can be picked "
                           "once it ends."))
    elif wanted in runs:
        st.session_state["train_run"] = wanted
    elif any(r["run"] == wanted for r in listed):  # a run in a group folder: a sweep's trial, or one put there
        group = ui.study_of(wanted)
        st.warning(ui.sentence(f"'{wanted}' is a trial of the sweep '{group}', which resumes it (the Sweep page); its "
                              "curves are on Metrics and Compare." if (runs_dir / group / "sweep.json").is_file() else
                              f"'{wanted}' is a run inside the folder '{group}', which this page does not train; its "
                              f"curves are on Metrics and Compare, and `python -m mixsep train --run-dir "
                              f"{runs_dir / wanted}` resumes it.", wanted))
    else:  # a name no run can have says why, as every page says it (QA: "There is no run named '-dash'" here)
        try:
            resolve_run(runs_dir, wanted)
        except MixsepError as e:
            st.error(f"{ui.literal(e)} Pick a run below.")
        else:
            st.error(ui.literal(f"There is no run named '{wanted}' in {runs_dir.resolve()}; pick one below."))
if live_job is not None and live_job.name in runs:
    st.session_state["train_run"] = live_job.name
elif st.session_state.get("train_run") not in runs:
    said = (last_job.removed or last_job.alive) and last_job.run_dir.name == st.session_state.get("train_run")
    if st.session_state.get("train_run") is not None and runs and not said:  # said as Samples says it, not
        # switched in silence; a new run its trainer refused was removed, not deleted, and a run deleted while
        # it trains is still the one shown: the sentence below each says so
        st.warning(ui.literal(f"Run '{st.session_state['train_run']}' is gone (deleted?); showing the latest run "
                              "instead."))
    last = jobs.poll().run_dir
    st.session_state["train_run"] = last.name if last is not None and last.name in runs else next(iter(runs), None)
if runs:  # by name only: Streamlit keeps a pick by its label, and one with the run's state lost it once the state
    # changed (the first Resume click after a Stop was lost); the page says the picked run's state below
    st.selectbox("Run", list(runs), key="train_run", disabled=training, persist_state="session",
                 on_change=ui.run_picked, args=("train_run",),  # a pick goes into the URL (a link shows it) and
                 # is the run shown last, which a page opened from the sidebar shows (Samples, Metrics, Separate)
                 help="The run whose progress and curves this page shows; a stopped one can be resumed here. "
                      "While a run trains the page shows it.")


def current_job():
    """The job this tab shows, or None (after saying so) when the runs folder holds no run."""
    live = jobs.running()  # also a run started since this script began (in another tab)
    if live is not None or training:  # training, or just ended: poll() has its last state
        return live or jobs.poll()
    name = st.session_state.get("train_run")
    if name is None:
        st.info("No run yet: choose the settings in the sidebar and press Start.")
        return None
    return jobs.view(runs_dir / name)


ENDED = {s.value for s in State if s.ended}


@st.fragment(run_every=refresh)
def status():
    job = current_job()
    if job is None:
        return
    # a run started or ended: a full rerun sets the chart's pace and redraws it; the run shown was
    # deleted: a full rerun shows another
    if job.alive != training or not (job.alive or job.run_dir.is_dir()):
        st.rerun()
    st.subheader(f"{ui.STATE_ICON.get(job.state, '')} {ui.literal(job.name)}")  # names and messages as text
    if job.alive and not job.run_dir.is_dir():  # deleted while it trains: no progress left to read
        st.warning(ui.sentence(job.message))
        return
    if job.state == "failed":
        st.error(ui.sentence(job.message))
    elif job.state in ("stopped", "interrupted"):
        st.warning(f"Run {job.state} at step {job.step}: {ui.sentence(job.message)}")
    elif job.state == "finished" and job.message:  # its time budget: why at 16%, and how to train on (QA)
        how = ui.code_span(f"python -m mixsep train --run-dir {shlex.quote(str(job.run_dir))} --max-minutes M")
        st.info(f"Finished early: {ui.sentence(job.message)}" + (f": {how}." if job.step < job.total_steps else "."))
    elif job.state == "finished":
        st.success(f"Finished: {job.step} steps.")
    elif job.stopping:
        st.info("Stopping after the current step; a checkpoint will be kept.")
    elif job.state == "starting":
        st.info("Starting: loading the data and the model…")
    elif job.state == "unknown":
        st.warning(f"This run folder is incomplete ({ui.sentence(job.message)}); it cannot be shown in full.")
    starting = job.state == "starting"  # a resume loading: status.json and the speed are still the last trainer's
    for w in [] if starting else job.warnings:  # recorded by the trainer in status.json, in its own words
        st.warning(ui.sentence(w))
    p = progress(ui.live_metrics(job.run_dir), job.total_steps, taken=job.step)  # reads only the rows appended since the last poll
    sps = f"{p['samples_per_s']:.0f} samples/s" if p["samples_per_s"] and not starting else "… samples/s"
    # by the state, as the banner above goes: the trainer writes "finished" a moment before its process ends
    eta = f"ETA {ui.duration(p['eta_s'])}" if job.alive and job.state not in ENDED and not starting else job.state
    st.progress(min(p["fraction"], 1.0), text=f"step {p['step']}/{p['total_steps'] or '?'} · {sps} · {eta}")
    if job.alive and refresh is None:  # nothing polls: say so, or a started run looks frozen at "Starting"
        st.caption("Live updates are paused: pick a pace above to follow the run (any click refreshes it once).")
    elif job.alive and job.state not in ENDED:  # (a trainer writes "finished" a moment before its process ends)
        # the chart's own pace is said too: a curve still at its first steps while the bar moved looked frozen (QA)
        chart = lambda s: f"the loss chart every {s * ui.CHART_EVERY:g} s"
        if not ui.is_auto(pace):
            st.caption(f"Live updates every {refresh:g} s, {chart(refresh)}.")
        else:
            now, (fast, slow) = ui.live_pace(pace, trained_s(job)), ui.LIVE_UPDATES[pace]
            minutes = ui.AUTO_SLOWS_AFTER_S // 60
            if now != refresh and training:  # the run passed its first minutes: a full rerun sets the slower pace
                st.rerun()
            st.caption(f"Live updates every {fast:g} s, {chart(fast)}; once the run has trained {minutes} minutes, "
                       f"every {slow:g} s and {chart(slow)} (Auto)." if now == fast else
                       f"Live updates every {slow:g} s, {chart(slow)}: the run has trained over {minutes} minutes (Auto).")
    # a run stopped before its first step has no total and no checkpoint: it starts again, in its own folder
    can_resume = not job.alive and job.state in ("stopped", "failed", "interrupted") and (
        job.step < job.total_steps or not job.total_steps)
    if can_resume and (note := ui.resume_data_note(job.run_dir, data_root)):
        st.caption(note)
    if can_resume and st.button("Resume this run" if list_checkpoints(job.run_dir) else "Start this run again",
                                icon=":material/replay:", help=RESUME_HELP):  # the folder is listed only when the button shows
        try:
            jobs.start(run_dir=job.run_dir, data_root=data_root)  # read where the run's own is not here
            st.session_state.pop("train_refused", None)
            st.rerun()
        except MixsepError as e:  # kept: the fragment's next refresh would wipe a message drawn once
            st.session_state["train_refused"] = (str(job.run_dir), str(e))
    refused = st.session_state.get("train_refused")
    if refused and refused[0] == str(job.run_dir) and not job.alive:
        st.error(ui.sentence(refused[1]))


def has_rows() -> bool:
    name = st.session_state.get("train_run")
    return name is not None and (runs_dir / name).is_dir() and len(ui.live_metrics(runs_dir / name)) > 0


# until a new run's first steps are logged the chart polls at the status's pace, so a short run
# shows its curve as soon as there is one (at a fifth of the pace it could end before the first draw)
waiting = not has_rows()


@st.fragment(run_every=(refresh if waiting else ui.CHART_EVERY * refresh) if training and refresh else None)
def chart():
    job = current_job() if runs else None
    if job is None or not job.run_dir.is_dir():
        return
    metrics = ui.live_metrics(job.run_dir)
    if metrics.empty:
        if job.alive:
            st.info("The loss curves appear here with the run's first steps.")
        elif job.step:  # status.json counts steps that metrics.csv does not hold: not a run that never stepped
            why = no_rows_note(job.run_dir / METRICS) or "metrics.csv holds no readable row (cut short?)"
            st.warning(f"Run {ui.literal(job.name)} took {job.step} steps, but {ui.literal(why)}: there is no "
                       "loss to draw.")
        else:
            st.info(f"Run {ui.literal(job.name)} ended before its first step: there is no loss to draw.")
        return
    if waiting and training:  # the first rows are in: a full rerun puts the chart on its slower pace
        st.rerun()
    smoothing = st.slider("EMA smoothing", 0.0, 0.99, 0.9, 0.01, key="ema",
                          help="Weight of the past in the exponential moving average; 0 shows the raw losses.")
    st.plotly_chart(ui.live_loss_figure(metrics, smoothing, "Training loss"), key="live_curves")


status()
chart()
