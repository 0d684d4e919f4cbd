"""Train: the report's settings as sliders, Start/Stop, live loss curves of the current run."""
import streamlit as st

import mixsep_ui as ui
from mixsep import MixsepError, TrainConfig
from mixsep.data import data_status, missing_message
from mixsep.runs import progress
from mixsep.train import list_checkpoints
from ui_settings import settings_widgets

data_root, runs_dir = ui.setup("Train")
jobs = ui.registry(runs_dir)

with st.sidebar:  # one widget per setting, drawn from its metadata in mixsep/config.py; kept across pages
    st.subheader("Settings")
    values = settings_widgets("train_")

config = TrainConfig(data_root=str(data_root), **values)
st.session_state["train_config"] = config.to_dict()

left, right, _ = st.columns([1, 1, 4])
if left.button("Start", type="primary", icon=":material/play_arrow:", width="stretch"):
    missing = [r for r in data_status(data_root) if r["split"] == "train" and not r["found"]]
    try:
        if missing:
            raise MixsepError(missing_message(data_root, missing[0]["source"], "train"))
        run = jobs.start(config)
        st.toast(f"Started {run.name}")
    except MixsepError as e:
        st.error(str(e))
if right.button("Stop", icon=":material/stop:", width="stretch"):
    if jobs.stop():
        st.info("Stopping after the current step; a checkpoint will be kept.")
    else:
        st.info("No training is running.")
with st.expander("Config of the next run"):
    st.json(config.to_dict())


training = jobs.running() is not None


# every second while a run trains (the progress line shows each step), every 5 s otherwise
@st.fragment(run_every=1.0 if training else 5.0)
def live():
    job = jobs.poll()
    if job.alive != training:  # a run started or ended: a full rerun sets the other pace
        st.rerun()
    if job.run_dir is None or not (job.alive or job.run_dir.is_dir()):  # a server restart, a deleted run
        latest = ui.runs_table(runs_dir)
        if not latest:
            st.info("No run yet: choose the settings on the left and press Start.")
            return
        jobs.select(latest[0]["path"])
        job = jobs.poll()
    st.subheader(f"{ui.STATE_ICON.get(job.state, '')} {job.name}")
    if job.state == "failed":
        st.error(job.message)
    elif job.state in ("stopped", "interrupted"):
        st.warning(f"Run {job.state} at step {job.step}: {job.message}")
    elif job.state == "finished":
        st.success(f"Finished: {job.step} steps.")
    elif job.state == "starting":
        st.info("Starting: loading the data and the model…")
    elif job.state == "unknown":
        st.warning(f"This run folder is incomplete ({job.message}); it cannot be shown in full.")
    for w in job.warnings:  # recorded by the trainer in status.json, in its own words
        st.warning(w)
    m = ui.live_metrics(job.run_dir)  # only the rows appended since the last poll are read
    p = progress(m, job.total_steps)
    sps = f"{p['samples_per_s']:.0f} samples/s" if p["samples_per_s"] else "… samples/s"
    eta = f"ETA {ui.duration(p['eta_s'])}" if job.alive else job.state
    st.progress(min(p["fraction"], 1.0), text=f"step {p['step']}/{p['total_steps'] or '?'} · {sps} · {eta}")
    smoothing = st.slider("EMA smoothing", 0.0, 0.99, 0.9, 0.01, key="ema",
                          help="Weight of the past in the exponential moving average; 0 shows the raw losses.")
    st.plotly_chart(ui.live_loss_figure(m, smoothing, f"Training loss · {job.name}", settled=not job.alive),
                    key="live_curves")
    can_resume = not job.alive and job.state in ("stopped", "failed", "interrupted") and job.step < job.total_steps
    if can_resume and list_checkpoints(job.run_dir) and st.button("Resume this run", icon=":material/replay:"):
        try:
            jobs.start(run_dir=job.run_dir)
            st.rerun(scope="fragment")
        except MixsepError as e:
            st.error(str(e))


live()
